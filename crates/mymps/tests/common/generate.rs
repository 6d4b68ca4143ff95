//! Text generation in the end-to-end tests: tiny random GPT-2 models
//! written by transformers (`.venv`), and the pieces of an HTTP/1.1 client
//! that reads server-sent events.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use mymps::model::{GenerateSummary, Prompt, Step};
use mymps::server::{ServerConfig, ServerHandle};
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// The models' folder, made once per test binary, and the reference
/// (`reference.json`): the reference models of `mymps-models`' own
/// generate test (`gpt2`: tokenizer, greedy ids by transformers), and
/// `long`, a GPT-2 with 4096 positions and no tokenizer, for a generation
/// long enough to cancel. The folder is under the temporary directory,
/// which [`start_on_with_models`] makes the model root.
pub fn models() -> &'static (PathBuf, Value) {
    static DIR: OnceLock<(PathBuf, Value)> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let python = root.join(".venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run scripts/setup.sh (it installs transformers into .venv)",
            python.display()
        );
        let dir = std::env::temp_dir().join(format!("mymps-e2e-generate-{}", std::process::id()));
        let run = |args: &[&std::ffi::OsStr]| {
            let out = std::process::Command::new(&python)
                .args(args)
                .output()
                .expect("run python");
            assert!(
                out.status.success(),
                "python failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let reference = root.join("crates/mymps-models/tests/generate_reference.py");
        run(&[reference.as_os_str(), dir.as_os_str()]);
        let long = dir.join("long");
        run(&[
            "-c".as_ref(),
            "import sys, torch, transformers as tf\n\
             torch.manual_seed(0)\n\
             cfg = tf.GPT2Config(vocab_size=300, n_embd=64, n_layer=2, n_head=4, n_positions=4096)\n\
             tf.GPT2LMHeadModel(cfg).save_pretrained(sys.argv[1])"
                .as_ref(),
            long.as_os_str(),
        ]);
        let json = std::fs::read(dir.join("reference.json")).unwrap();
        (dir, serde_json::from_slice(&json).unwrap())
    })
}

/// Starts a server on `SCHEME://127.0.0.1:0` with `mymps-models`' loaders
/// and the temporary directory as its model root (where [`models`] are),
/// `tweak` applied to its config.
pub async fn start_on_with_models(
    scheme: &str,
    tweak: impl FnOnce(&mut ServerConfig),
) -> (ServerHandle, String) {
    let mut config = ServerConfig {
        listen: vec![mymps::transport::Endpoint::new(scheme, "127.0.0.1", 0)],
        model_root: Some(std::env::temp_dir()),
        ..ServerConfig::default()
    };
    tweak(&mut config);
    let backend = Arc::new(mymps::backend_tch::TchBackend::new(&super::device()).expect("backend"));
    let server = mymps::server::Server::bind(config, backend)
        .await
        .expect("bind");
    for l in mymps_models::loaders() {
        server.models().add_loader(l).unwrap();
    }
    let handle = server.spawn();
    let addr = handle.endpoints()[0].to_string();
    (handle, addr)
}

/// A JSON list of integers.
pub fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// The reference's greedy case "left-padded batch of 3" of `gpt2`: its
/// prompts, `max_new_tokens` and transformers' new ids per prompt.
pub fn greedy_case() -> (Vec<Prompt>, usize, Vec<Vec<i64>>) {
    let (_, r) = models();
    let case = r["generate"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["model"] == "gpt2" && c["case"] == "left-padded batch of 3")
        .unwrap();
    let prompts = case["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Prompt::Ids(ids(p)))
        .collect();
    let want = case["ids"].as_array().unwrap().iter().map(ids).collect();
    (
        prompts,
        case["max_new_tokens"].as_u64().unwrap() as usize,
        want,
    )
}

/// The steps of a streamed generate add up to its summary.
pub fn check_steps(steps: &[Step], summary: &GenerateSummary) {
    assert_eq!(steps.len(), summary.steps);
    for (i, step) in steps.iter().enumerate() {
        assert_eq!(step.index, i);
    }
    for (row, seq) in summary.sequences.iter().enumerate() {
        let streamed: Vec<i64> = steps.iter().filter_map(|s| s.tokens[row].id).collect();
        assert_eq!(streamed, seq.ids, "row {row}");
    }
}

/// Reads an HTTP response's status line and headers.
pub async fn read_head(s: &mut (impl AsyncBufRead + Unpin)) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    s.read_line(&mut line).await.unwrap();
    let status = line
        .split(' ')
        .nth(1)
        .unwrap_or_else(|| panic!("a status line, not {line:?}"))
        .parse()
        .unwrap();
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
    (status, headers)
}

/// The value of header `name`.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// One server-sent event: its `event:` name (`None`: a plain message) and
/// its `data:` as JSON.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: Option<String>,
    pub data: Value,
}

/// The server-sent events of a chunked body (its head already read).
pub struct Events<'a, R> {
    s: &'a mut R,
    buf: Vec<u8>,
    done: bool,
}

impl<'a, R: AsyncBufRead + Unpin> Events<'a, R> {
    pub fn new(s: &'a mut R) -> Events<'a, R> {
        Events {
            s,
            buf: Vec::new(),
            done: false,
        }
    }

    /// The next event; `None` at the body's end (its last chunk read).
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let text = String::from_utf8(self.buf.drain(..end + 2).collect()).unwrap();
                let mut event = Event {
                    name: None,
                    data: Value::Null,
                };
                for line in text.lines() {
                    if let Some(name) = line.strip_prefix("event: ") {
                        event.name = Some(name.to_owned());
                    } else if let Some(data) = line.strip_prefix("data: ") {
                        event.data = serde_json::from_str(data).unwrap();
                    }
                }
                return Some(event);
            }
            if self.done {
                assert!(self.buf.is_empty(), "a partial event at the end");
                return None;
            }
            // One chunk: its size in hex, CRLF, the bytes, CRLF.
            let mut line = String::new();
            self.s.read_line(&mut line).await.unwrap();
            let size = usize::from_str_radix(line.trim_end(), 16)
                .unwrap_or_else(|_| panic!("a chunk size, not {line:?}"));
            let mut chunk = vec![0; size + 2];
            if size == 0 {
                // The last chunk: no trailers, then CRLF.
                self.s.read_exact(&mut chunk).await.unwrap();
                self.done = true;
                continue;
            }
            self.s.read_exact(&mut chunk).await.unwrap();
            assert_eq!(&chunk[size..], b"\r\n");
            self.buf.extend_from_slice(&chunk[..size]);
        }
    }
}
