//! Golden encoded frames: the bytes of these messages are part of the
//! protocol. If a change alters them, it changes the protocol.

use super::*;
use crate::Value;
use std::collections::BTreeMap;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn golden(name: &str, frame: &Frame) {
    let path = format!("{}/tests/golden/{name}.hex", env!("CARGO_MANIFEST_DIR"));
    let got = hex(&frame.to_vec());
    if std::env::var_os("MYMPS_BLESS").is_some() {
        std::fs::create_dir_all(std::path::Path::new(&path).parent().unwrap()).unwrap();
        std::fs::write(&path, format!("{got}\n")).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e} (MYMPS_BLESS=1 writes it)"));
    assert_eq!(got, want.trim(), "golden frame {name} changed");
    // And it decodes back to the same frame.
    let (back, used) = Frame::decode(&frame.to_vec(), &Limits::DEFAULT)
        .unwrap()
        .unwrap();
    assert_eq!(used, frame.to_vec().len());
    assert_eq!(&back, frame);
}

#[test]
fn golden_hello() {
    let mut h = hello("mymps-test/1", None);
    h.features = vec!["strided-tensors".into()];
    golden("hello", &encode(FrameKind::Hello, 0, &h, vec![]).unwrap());
}

#[test]
fn golden_exec_request() {
    let a = crate::Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
    let b = crate::Tensor::scalar(7i64);
    let (metas, bufs) = tensors_to_wire(vec![("0".into(), a), ("other".into(), b)]);
    let mut kwargs = BTreeMap::new();
    kwargs.insert("dim".to_owned(), Value::Int(-1));
    kwargs.insert(
        "dims".to_owned(),
        Value::List(vec![Value::Int(0), Value::Int(1)]),
    );
    kwargs.insert("keepdim".to_owned(), Value::Bool(true));
    kwargs.insert("equation".to_owned(), Value::Str("ij->ji".into()));
    kwargs.insert("dtype".to_owned(), Value::None);
    kwargs.insert("alpha".to_owned(), Value::Float(0.5));
    let req = Request::Exec(ExecRequest {
        op: "matmul".into(),
        inputs: metas,
        kwargs,
        ..Default::default()
    });
    golden(
        "exec_request",
        &encode(FrameKind::Request, 42, &req, bufs).unwrap(),
    );
}

#[test]
fn golden_request_with_a_deadline() {
    let a = crate::Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
    let (metas, bufs) = tensors_to_wire(vec![("0".into(), a)]);
    let req = Request::Exec(ExecRequest {
        op: "neg".into(),
        inputs: metas,
        ..Default::default()
    });
    let options = RequestOptions {
        timeout_ms: Some(1500),
    };
    let f = encode_request(42, &req, options, bufs).unwrap();
    golden("exec_timeout_request", &f);
    // The same request, and its options, come back out of it.
    assert_eq!(decode_header::<Request>(&f).unwrap(), req);
    assert_eq!(decode_header::<RequestOptions>(&f).unwrap(), options);
    // A request kind without fields takes them too.
    let h = encode_request(7, &Request::Health, options, vec![]).unwrap();
    assert_eq!(decode_header::<Request>(&h).unwrap(), Request::Health);
    assert_eq!(decode_header::<RequestOptions>(&h).unwrap(), options);
    // Without options the frame is the request's own, byte for byte.
    assert_eq!(
        encode_request(42, &req, RequestOptions::default(), vec![]).unwrap(),
        encode(FrameKind::Request, 42, &req, vec![]).unwrap()
    );
    // Every older golden request has no deadline.
    for name in [
        "exec_request",
        "health_request",
        "metrics_request",
        "put_request",
        "exec_refs_request",
        "free_request",
        "run_graph_request",
        "generate_request",
    ] {
        let path = format!("{}/tests/golden/{name}.hex", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        let bytes: Vec<u8> = (0..text.trim().len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text.trim()[i..i + 2], 16).unwrap())
            .collect();
        let (frame, _) = Frame::decode(&bytes, &Limits::DEFAULT).unwrap().unwrap();
        assert_eq!(
            decode_header::<RequestOptions>(&frame).unwrap(),
            RequestOptions::default(),
            "{name}"
        );
    }
}

#[test]
fn golden_error_response() {
    let e = crate::Error::new(crate::ErrorCode::UnknownOp, "unknown op 'frobnicate'");
    golden(
        "error_response",
        &encode(FrameKind::Response, 7, &Response::Error(e), vec![]).unwrap(),
    );
}

#[test]
fn golden_health_request() {
    golden(
        "health_request",
        &encode(FrameKind::Request, 1, &Request::Health, vec![]).unwrap(),
    );
}

#[test]
fn golden_metrics_request() {
    golden(
        "metrics_request",
        &encode(FrameKind::Request, 2, &Request::Metrics, vec![]).unwrap(),
    );
}

#[test]
fn golden_metrics_response() {
    use crate::metrics::{ErrorCount, HistogramSnapshot, KindSnapshot, OpSnapshot};
    let latency = HistogramSnapshot {
        counts: vec![1, 2, 0],
        sum_s: 0.25,
    };
    let m = MetricsSnapshot {
        version: "0.1.0".into(),
        backend: "tch".into(),
        device: "cpu".into(),
        uptime_s: 12.5,
        latency_buckets_s: vec![0.001, 0.01],
        requests: vec![KindSnapshot {
            kind: "exec".into(),
            count: 3,
            errors: 1,
            bytes_in: 300,
            bytes_out: 200,
            latency: latency.clone(),
        }],
        ops: vec![OpSnapshot {
            op: "matmul".into(),
            count: 3,
            errors: 1,
            latency,
        }],
        errors: vec![ErrorCount {
            code: 1,
            name: "unknown_op".into(),
            count: 1,
        }],
        connections_total: 2,
        connections_open: 1,
        handshakes_refused: 0,
        frames_refused: 0,
        requests_in_flight: 1,
        models_loaded: 0,
        memory_budget_bytes: 1 << 30,
        memory_budget_used_bytes: 4096,
        resident_tensors: 0,
        resident_bytes: 0,
        accelerator_memory_total_bytes: Some(80 << 30),
        accelerator_memory_free_bytes: Some(70 << 30),
        gpu: None,
    };
    let f = encode(
        FrameKind::Response,
        2,
        &Response::Metrics(m.clone()),
        vec![],
    )
    .unwrap();
    golden("metrics_response", &f);
    assert_eq!(decode_header::<Response>(&f).unwrap(), Response::Metrics(m));
}

#[test]
fn headers_round_trip_and_unknown_kinds_are_tolerated() {
    let f = encode(
        FrameKind::Request,
        3,
        &Request::DescribeOp { op: "svd".into() },
        vec![],
    )
    .unwrap();
    assert_eq!(
        decode_header::<Request>(&f).unwrap(),
        Request::DescribeOp { op: "svd".into() }
    );

    // A newer client's request kind, with fields we do not know.
    #[derive(serde::Serialize)]
    struct Future {
        r#type: &'static str,
        handle: u64,
    }
    let f = encode(
        FrameKind::Request,
        4,
        &Future {
            r#type: "graph",
            handle: 9,
        },
        vec![],
    )
    .unwrap();
    assert_eq!(decode_header::<Request>(&f).unwrap(), Request::Unknown);

    // Garbage is a protocol error, not a panic.
    let g = Frame::new(
        FrameKind::Request,
        5,
        bytes::Bytes::from_static(&[0xc1, 0xff, 0x00]),
        vec![],
    );
    assert_eq!(
        decode_header::<Request>(&g).unwrap_err().code,
        crate::ErrorCode::Protocol
    );
}

#[test]
fn wire_tensors_are_validated() {
    let meta = |dtype: &str, shape: Vec<u64>| TensorMeta {
        name: "x".into(),
        dtype: dtype.into(),
        shape,
        strides: None,
    };
    let e = tensors_from_wire(
        vec![meta("float8", vec![1])],
        vec![bytes::Bytes::from(vec![0u8])],
    )
    .unwrap_err();
    assert_eq!(e.code, crate::ErrorCode::InvalidTensor);
    assert!(
        e.message.contains("unknown dtype 'float8'"),
        "{}",
        e.message
    );
    let e = tensors_from_wire(
        vec![meta("float32", vec![3])],
        vec![bytes::Bytes::from(vec![0u8; 11])],
    )
    .unwrap_err();
    assert!(e.message.contains("data length 11"), "{}", e.message);
    let e = tensors_from_wire(vec![meta("float32", vec![1])], vec![]).unwrap_err();
    assert_eq!(e.code, crate::ErrorCode::Protocol);
    let ok = tensors_from_wire(
        vec![meta("complex128", vec![2, 0])],
        vec![bytes::Bytes::new()],
    )
    .unwrap();
    assert_eq!(ok[0].1.numel(), 0);
}

#[test]
fn negotiation() {
    let h = hello("x", None);
    assert_eq!(negotiate(&h).unwrap().0, PROTOCOL_VERSION);
    let mut old = h.clone();
    old.protocol = 0;
    old.min_protocol = 0;
    assert_eq!(
        negotiate(&old).unwrap_err().code,
        crate::ErrorCode::UnsupportedVersion
    );
    let mut future = h.clone();
    future.protocol = 99;
    future.features.push("telepathy".into());
    let (v, f) = negotiate(&future).unwrap();
    assert_eq!(v, PROTOCOL_VERSION);
    assert!(!f.contains(&"telepathy".to_string()));
    let mut alien = h;
    alien.magic = "http".into();
    assert_eq!(
        negotiate(&alien).unwrap_err().code,
        crate::ErrorCode::Protocol
    );
}

/// A bounded, deterministic fuzz of the decoders: random bytes and random
/// mutations of valid frames never panic, and whatever decodes re-encodes
/// to the same bytes.
#[test]
fn decoders_survive_random_and_mutated_input() {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let a = crate::Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3]).unwrap();
    let (metas, bufs) = tensors_to_wire(vec![("0".into(), a)]);
    let req = Request::Exec(ExecRequest {
        op: "neg".into(),
        inputs: metas,
        kwargs: BTreeMap::new(),
        ..Default::default()
    });
    let valid = encode(FrameKind::Request, 9, &req, bufs).unwrap().to_vec();
    let limits = Limits {
        max_header_len: 4096,
        max_tensors: 8,
        max_payload: 1 << 16,
        ..Limits::DEFAULT
    };
    for round in 0..20_000 {
        let mut buf = if round % 2 == 0 {
            let mut b = valid.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            b.truncate(
                (next() as usize) % (b.len() + 1) + if round % 4 == 0 { b.len() } else { 0 },
            );
            b
        } else {
            (0..next() % 96).map(|_| next() as u8).collect()
        };
        if let Ok(Some((frame, used))) = Frame::decode(&buf, &limits) {
            assert_eq!(frame.to_vec(), buf[..used].to_vec());
            if let Ok(Request::Exec(e)) = decode_header::<Request>(&frame) {
                let _ = tensors_from_wire(e.inputs, frame.tensors.clone());
            }
            let _ = decode_header::<Response>(&frame);
            let _ = decode_header::<Hello>(&frame);
        }
        buf.clear();
    }
}

#[test]
fn golden_resident_tensor_frames() {
    // put: one tensor's bytes; the reply names its handle.
    let t = crate::Tensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap();
    let (metas, bufs) = tensors_to_wire(vec![("0".into(), t)]);
    let put = Request::Put { inputs: metas };
    golden(
        "put_request",
        &encode(FrameKind::Request, 5, &put, bufs).unwrap(),
    );
    let handles = Response::Handles {
        handles: vec![HandleInfo {
            handle: 17,
            name: "0".into(),
            dtype: "float32".into(),
            shape: vec![2],
            device: "cuda:0".into(),
        }],
    };
    golden(
        "handles_response",
        &encode(FrameKind::Response, 5, &handles, vec![]).unwrap(),
    );
    // exec on a handle and a shared tensor, its result kept.
    let exec = Request::Exec(ExecRequest {
        op: "matmul".into(),
        refs: [
            ("0".to_owned(), TensorRef::Handle(17)),
            ("1".to_owned(), TensorRef::Shared("w".into())),
        ]
        .into(),
        keep: Keep::All,
        ..Default::default()
    });
    golden(
        "exec_refs_request",
        &encode(FrameKind::Request, 6, &exec, vec![]).unwrap(),
    );
    let free = Request::Free {
        refs: vec![TensorRef::Handle(17), TensorRef::Handle(18)],
    };
    golden(
        "free_request",
        &encode(FrameKind::Request, 7, &free, vec![]).unwrap(),
    );
    // A two-step graph: relu(x) @ w, y kept.
    let graph = Graph {
        steps: vec![
            GraphStep {
                op: "relu".into(),
                inputs: [("0".to_owned(), Source::Input("x".into()))].into(),
                kwargs: BTreeMap::new(),
            },
            GraphStep {
                op: "matmul".into(),
                inputs: [
                    ("0".to_owned(), Source::Step(0, "output".into())),
                    ("1".to_owned(), Source::Input("w".into())),
                ]
                .into(),
                kwargs: BTreeMap::new(),
            },
        ],
        outputs: vec![("y".into(), Source::Step(1, "output".into()))],
    };
    let run = Request::RunGraph(RunGraphRequest {
        graph: GraphSpec::Inline(graph),
        inputs: vec![],
        refs: [
            ("x".to_owned(), TensorRef::Handle(17)),
            ("w".to_owned(), TensorRef::Shared("w".into())),
        ]
        .into(),
        keep: Keep::Some(vec!["y".into()]),
    });
    golden(
        "run_graph_request",
        &encode(FrameKind::Request, 8, &run, vec![]).unwrap(),
    );
}

/// Found by the header fuzz target's corpus test on a worker-sized stack:
/// nesting within rmp-serde's own limit (1024) overflowed a tokio
/// worker's 2 MiB stack in a debug build, aborting the process.
#[test]
fn headers_nested_past_the_depth_limit_are_refused_on_a_worker_s_stack() {
    let header = |nest: usize| {
        let mut v = vec![0x82, 0xa4];
        v.extend_from_slice(b"type");
        v.push(0xa4);
        v.extend_from_slice(b"exec");
        v.push(0xa4);
        v.extend_from_slice(b"junk");
        v.extend(std::iter::repeat_n(0x91, nest));
        v.push(0xc0);
        Frame::new(FrameKind::Request, 1, Bytes::from(v), vec![])
    };
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            for nest in [MAX_HEADER_DEPTH + 1, 1000, 100_000] {
                let f = header(nest);
                let e = decode_header::<Request>(&f).unwrap_err();
                assert_eq!(e.code, crate::ErrorCode::Protocol);
                assert!(e.message.contains("depth limit exceeded"), "{e}");
                assert!(decode_header::<Response>(&f).is_err());
                assert!(decode_header::<Hello>(&f).is_err());
            }
            // Within the limit, unknown fields are skipped as before.
            let e = decode_header::<Request>(&header(MAX_HEADER_DEPTH - 4)).unwrap_err();
            assert!(!e.message.contains("depth limit"), "{e}");
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn golden_generate_frames() {
    use crate::model::{
        FinishReason, GenerateRequest, GenerateSummary, GeneratedSequence, Prompt, Step, StepToken,
    };
    // A streamed generate: a text prompt, two options.
    let generate = Request::Generate(GenerateCall {
        name: "gpt2".into(),
        request: GenerateRequest {
            prompts: vec![Prompt::Text("Hello".into())],
            max_new_tokens: Some(2),
            ..Default::default()
        },
        stream: true,
    });
    let f = encode(FrameKind::Request, 9, &generate, vec![]).unwrap();
    golden("generate_request", &f);
    // It reads back with every absent option None.
    match decode_header::<Request>(&f).unwrap() {
        Request::Generate(g) => {
            assert!(g.stream);
            assert_eq!(g.request.max_new_tokens, Some(2));
            assert_eq!(g.request.temperature, None);
        }
        other => panic!("{other:?}"),
    }
    // Each step: a Response frame of the request's id with MORE.
    let step = Response::GenerateStep(Step {
        index: 0,
        tokens: vec![StepToken {
            id: Some(11),
            text: ",".into(),
            finish: None,
        }],
    });
    let f = encode(FrameKind::Response, 9, &step, vec![])
        .unwrap()
        .with_more();
    assert!(f.more());
    golden("generate_step_response", &f);
    // The summary ends the reply: no MORE.
    let summary = Response::Generated(GenerateSummary {
        sequences: vec![GeneratedSequence {
            prompt_ids: vec![15496],
            ids: vec![11, 314],
            text: Some(", I".into()),
            finish: FinishReason::Length,
        }],
        steps: 2,
        forward_passes: 2,
        cache_bytes: 4096,
        seed: None,
    });
    let f = encode(FrameKind::Response, 9, &summary, vec![]).unwrap();
    assert!(!f.more());
    golden("generated_response", &f);
    // Cancel: kind 5, the request's id, an empty map.
    #[derive(serde::Serialize)]
    struct Empty {}
    golden(
        "cancel",
        &encode(FrameKind::Cancel, 9, &Empty {}, vec![]).unwrap(),
    );
}
