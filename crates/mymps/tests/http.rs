//! End to end over `http://`: a real server with an HTTP and a TCP
//! listener, a hand-written HTTP/1.1 client on one keep-alive socket, and
//! the metrics read back over TCP (they count both); text generation
//! (`/generate`, streamed as server-sent events, `/encode`, `/decode`)
//! with tiny GPT-2 models by transformers.

mod common;

use mymps::client::{Caller, Client};
use mymps::server::ServerConfig;
use mymps::transport::Endpoint;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        assert_eq!(self.header("content-type"), Some("application/json"));
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Sends one request on `s` and reads its response (Content-Length bodies).
async fn request(
    s: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.get_mut().write_all(head.as_bytes()).await.unwrap();
    s.get_mut().write_all(body).await.unwrap();
    let mut line = String::new();
    s.read_line(&mut line).await.unwrap();
    let status = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        s.read_line(&mut line).await.unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.to_owned(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .expect("a content-length");
    let mut body = vec![0; len];
    s.read_exact(&mut body).await.unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

/// The legacy msgpack body for one float32 vector named "0".
fn msgpack_vector(v: &[f32]) -> Vec<u8> {
    let data: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut b = vec![0x81, 0xa1, b'0', 0x83];
    b.extend(b"\xa5shape\x91");
    b.push(v.len() as u8);
    b.extend(b"\xa5dtype\xa7float32\xa4data\xc4");
    b.push(data.len() as u8);
    b.extend(data);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_routes_on_one_keep_alive_connection_and_metrics_over_tcp() {
    let (server, _) = common::start_with(|c: &mut ServerConfig| {
        c.listen = vec![
            Endpoint::new("http", "127.0.0.1", 0),
            Endpoint::new("tcp", "127.0.0.1", 0),
        ];
    })
    .await;
    let (http, tcp) = (&server.endpoints()[0], &server.endpoints()[1]);
    assert_eq!(http.scheme, "http");
    let mut s = BufReader::new(TcpStream::connect(http.host_port()).await.unwrap());

    let h = request(&mut s, "GET", "/health", &[], b"").await;
    assert_eq!(h.status, 200);
    let h = h.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["device"], common::device());

    let r = request(
        &mut s,
        "POST",
        "/exec",
        &[("x-op", "neg")],
        &msgpack_vector(&[1.0, 2.0]),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/msgpack"));
    assert!(r.header("x-time").unwrap().parse::<f64>().unwrap() >= 0.0);
    // The result is {"output": {"shape": [2], "dtype": "float32", "data": <8 bytes>}}.
    let want: Vec<u8> = [-1.0f32, -2.0]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    assert!(r.body.ends_with(&want));
    assert!(r.body.windows(7).any(|w| w == b"float32"));
    assert!(r.body.windows(6).any(|w| w == b"output"));

    // Errors are JSON 4xx, and the same socket goes on.
    let bad = request(&mut s, "POST", "/exec", &[("x-op", "neg")], b"garbage").await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().contains("msgpack"));
    let bad = request(
        &mut s,
        "POST",
        "/exec",
        &[("x-op", "neg"), ("x-kwargs", "{oops")],
        &msgpack_vector(&[1.0]),
    )
    .await;
    assert_eq!(bad.status, 400);
    let unknown = request(
        &mut s,
        "POST",
        "/exec",
        &[("x-op", "nope")],
        &msgpack_vector(&[1.0]),
    )
    .await;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.json()["code"], "unknown_op");
    let missing = request(&mut s, "GET", "/models/ghost/info", &[], b"").await;
    assert_eq!(missing.status, 404);
    assert_eq!(request(&mut s, "GET", "/ops", &[], b"").await.status, 200);

    let page = request(&mut s, "GET", "/", &[], b"").await;
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("api/dashboard"));
    let text = request(&mut s, "GET", "/metrics", &[], b"").await;
    assert!(
        String::from_utf8_lossy(&text.body).contains("mymps_requests_total{kind=\"exec\"} 2\n")
    );

    // Over TCP: the metrics count the HTTP requests (the two that reached
    // a handler and the two refused by the HTTP front).
    let c = Client::connect(&tcp.to_string()).await.unwrap();
    let m = c.metrics().await.unwrap();
    let exec = m.kind("exec").unwrap();
    assert_eq!((exec.count, exec.errors), (2, 1));
    assert_eq!(m.frames_refused, 2);
    assert_eq!(m.kind("health").unwrap().count, 1);
    assert_eq!(m.kind("metrics").unwrap().count, 1);
    assert_eq!(
        m.ops
            .iter()
            .map(|o| (o.op.as_str(), o.count))
            .collect::<Vec<_>>(),
        [("neg", 1)]
    );
    assert!(m.connections_open >= 2);

    // mymps clients cannot connect to http:// (it serves HTTP clients).
    let e = Client::connect(&http.to_string()).await.unwrap_err();
    assert!(e.message.contains("tcp://"), "{e}");
    server.shutdown().await;
}

/// `POST` a JSON body; the reply (Content-Length bodies).
async fn post_json(s: &mut BufReader<TcpStream>, path: &str, body: &serde_json::Value) -> Reply {
    request(s, "POST", path, &[], body.to_string().as_bytes()).await
}

/// Text generation over HTTP (issue 19): `/encode` and `/decode` give the
/// tokenizer's answers; `/generate` passes the options (a seed repeats a
/// sampled run, `stop_ids` ends a sequence, a list of texts is a batch)
/// and streams text pieces that add up to the summary's text; a request
/// refused before it runs gets its status and JSON error, streamed or
/// not; the keep-alive connection serves on, the msgpack routes included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_encode_and_decode_routes() {
    let (server, _) = common::generate::start_on_with_models("http", |c| {
        c.listen.push(Endpoint::new("tcp", "127.0.0.1", 0));
    })
    .await;
    let (http, tcp) = (&server.endpoints()[0], &server.endpoints()[1]);
    let (dir, reference) = common::generate::models();
    let c = Client::connect(&tcp.to_string()).await.unwrap();
    for name in ["gpt2", "long"] {
        c.load_model(mymps::model::LoadRequest {
            name: name.into(),
            model_type: "huggingface".into(),
            model_path: Some(dir.join(name).display().to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mut s = BufReader::new(TcpStream::connect(http.host_port()).await.unwrap());

    for case in reference["tokenizer"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let special = case["add_special_tokens"].as_bool().unwrap();
        let r = post_json(
            &mut s,
            "/encode",
            &serde_json::json!({"model": "gpt2", "text": text, "add_special_tokens": special}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["ids"], case["ids"], "{text:?}");
        let r = post_json(
            &mut s,
            "/decode",
            &serde_json::json!({"model": "gpt2", "ids": case["ids"]}),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["text"], case["decoded"], "{text:?}");
    }

    // Sampled with a seed, streamed: the pieces add up to the text; the
    // same body without `stream` gives the same ids.
    let mut body = serde_json::json!({
        "model": "gpt2",
        "prompt": "The quick brown fox",
        "max_new_tokens": 12,
        "do_sample": true,
        "top_k": 20,
        "temperature": 0.9,
        "seed": 3,
        "stream": true,
    });
    s.get_mut()
        .write_all(&http_post("/generate", &body))
        .await
        .unwrap();
    let (status, headers) = common::generate::read_head(&mut s).await;
    assert_eq!(status, 200);
    assert_eq!(
        common::generate::header(&headers, "content-type"),
        Some("text/event-stream")
    );
    let mut events = common::generate::Events::new(&mut s);
    let mut pieces = String::new();
    let summary = loop {
        let e = events.next().await.expect("an event");
        match e.name.as_deref() {
            None => pieces.push_str(e.data["tokens"][0]["text"].as_str().unwrap()),
            Some("done") => break e.data,
            other => panic!("unexpected event {other:?}: {e:?}"),
        }
    };
    assert!(events.next().await.is_none(), "nothing after done");
    assert_eq!(summary["sequences"][0]["text"], pieces.as_str());
    assert_eq!(summary["seed"], 3);
    body["stream"] = false.into();
    let again = post_json(&mut s, "/generate", &body).await;
    assert_eq!(again.status, 200);
    assert_eq!(
        again.json()["sequences"][0]["ids"],
        summary["sequences"][0]["ids"]
    );

    // A batch of texts, and `stop_ids`: a stop id ends its sequence.
    let batch = serde_json::json!({
        "model": "gpt2",
        "prompt": ["Hello", "The quick brown fox"],
        "max_new_tokens": 6,
        "ignore_eos": true,
    });
    let r = post_json(&mut s, "/generate", &batch).await.json();
    let seqs = r["sequences"].as_array().unwrap();
    assert_eq!(seqs.len(), 2);
    let ids = common::generate::ids(&seqs[1]["ids"]);
    assert_eq!(ids.len(), 6);
    let mut stopped = batch.clone();
    stopped["stop_ids"] = serde_json::json!([ids[2]]);
    let r = post_json(&mut s, "/generate", &stopped).await.json();
    let first = ids.iter().position(|&i| i == ids[2]).unwrap();
    assert_eq!(
        common::generate::ids(&r["sequences"][1]["ids"]),
        ids[..=first]
    );
    assert_eq!(r["sequences"][1]["finish"], "stop_id");

    // Refused before running: the status and JSON error of the other
    // routes, for a stream too.
    let cases = [
        (
            serde_json::json!({"model": "nope", "prompt": [1]}),
            404,
            "model_not_found",
        ),
        (
            serde_json::json!({"model": "nope", "prompt": [1], "stream": true}),
            404,
            "model_not_found",
        ),
        (
            serde_json::json!({"model": "gpt2", "prompt": [1], "max_tokens": 3}),
            400,
            "bad_argument",
        ),
        (
            serde_json::json!({"model": "gpt2", "prompt": {"a": 1}}),
            400,
            "bad_argument",
        ),
        (
            serde_json::json!({"model": "gpt2", "prompt": [1i64 << 40]}),
            400,
            "bad_argument",
        ),
        (
            serde_json::json!({"model": "gpt2", "prompt": [1], "max_new_tokens": 1 << 30, "stream": true}),
            413,
            "limit_reached",
        ),
        // No tokenizer for a text prompt.
        (
            serde_json::json!({"model": "long", "prompt": "hi"}),
            501,
            "unsupported",
        ),
    ];
    for (body, status, code) in cases {
        let r = post_json(&mut s, "/generate", &body).await;
        assert_eq!(
            r.status,
            status,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["code"], code, "{body}");
    }
    let r = post_json(
        &mut s,
        "/encode",
        &serde_json::json!({"model": "long", "text": "hi"}),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (501, "unsupported".into())
    );
    let r = post_json(
        &mut s,
        "/decode",
        &serde_json::json!({"model": "gpt2", "ids": [1 << 20]}),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (400, "bad_argument".into())
    );
    let r = post_json(&mut s, "/decode", &serde_json::json!({"model": "gpt2"})).await;
    assert_eq!(r.status, 400);
    let r = request(&mut s, "GET", "/generate", &[], b"").await;
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));

    // The same connection serves on, the msgpack routes too.
    let r = request(
        &mut s,
        "POST",
        "/exec",
        &[("x-op", "neg")],
        &msgpack_vector(&[1.0, 2.0]),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        request(&mut s, "GET", "/health", &[], b"").await.status,
        200
    );
    server.shutdown().await;
}

fn http_post(path: &str, body: &serde_json::Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A client that goes away while its (not streamed) `generate` runs stops
/// it: the summary the server then writes, into the void, holds at least
/// a byte per new id, and the metrics count its bytes. (A stream left
/// after 3 events: the conformance case `generate`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_stops_its_generate() {
    const MAX: usize = 3000;
    let (server, _) = common::generate::start_on_with_models("http", |c| {
        c.listen.push(Endpoint::new("tcp", "127.0.0.1", 0));
    })
    .await;
    let (http, tcp) = (&server.endpoints()[0], &server.endpoints()[1]);
    let (dir, _) = common::generate::models();
    let c = Client::connect(&tcp.to_string()).await.unwrap();
    c.load_model(mymps::model::LoadRequest {
        name: "long".into(),
        model_type: "huggingface".into(),
        model_path: Some(dir.join("long").display().to_string()),
        ..Default::default()
    })
    .await
    .unwrap();
    let generated = || async {
        let m = c.metrics().await.unwrap();
        let k = m.kind("generate").unwrap();
        (k.count, k.bytes_out, m.requests_in_flight)
    };
    let before = generated().await;
    let mut s = BufReader::new(TcpStream::connect(http.host_port()).await.unwrap());
    let body = serde_json::json!({
        "model": "long",
        "prompt": [1, 2, 3],
        "max_new_tokens": MAX,
        "ignore_eos": true,
        "stream": false,
    });
    s.get_mut()
        .write_all(&http_post("/generate", &body))
        .await
        .unwrap();
    // Running: in flight beside the metrics request itself.
    let mut running = false;
    for _ in 0..400 {
        if generated().await.2 >= 2 {
            running = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(running, "the generate did not start");
    drop(s);
    let mut after = before;
    for _ in 0..600 {
        after = generated().await;
        if after.0 > before.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(after.0, before.0 + 1, "not answered");
    let bytes = after.1 - before.1;
    assert!(
        bytes < (MAX / 2) as u64,
        "a summary of {bytes} bytes: the generation ran on"
    );
    server.shutdown().await;
}
