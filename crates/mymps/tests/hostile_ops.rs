//! Hostile op calls against a real `mymps serve` (issue "No request can
//! kill or starve the server"): each case once killed the server process
//! (SIGFPE, a stack overflow), held a worker for seconds to hours, or sent
//! libtorch's C++ backtrace to the client. The server runs as a child
//! process, so that a crash is a failed assertion naming the case rather
//! than a dead test binary.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mymps::client::{Call, Client, ClientOptions};
use mymps::{DType, Error, ErrorCode, Tensor};

/// `mymps serve` on an ephemeral loopback port, killed on drop.
struct Served {
    child: Child,
    addr: String,
}

impl Served {
    fn start(env: &[(&str, &str)]) -> Served {
        let bin =
            std::env::var("MYMPS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mymps").to_owned());
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--device", &common::device(), "--log", "warn"])
            .args(["--listen", "tcp://127.0.0.1:0"])
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (child, addr, _) = common::spawn_serve(&mut cmd);
        Served { child, addr }
    }

    async fn client(&self) -> Client {
        let options = ClientOptions {
            timeout: Duration::from_secs(30),
            ..ClientOptions::default()
        };
        Client::connect_with(&self.addr, options).await.unwrap()
    }

    /// Panics, naming `case`, if the server process has died; otherwise
    /// checks that `c` still gets answers.
    async fn assert_alive(&mut self, c: &Client, case: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{case}: the server died ({status})");
        }
        let x = Tensor::from_vec(vec![1.0f32, -2.0], &[2]).unwrap();
        let out = c
            .call(Call::new("neg").arg(x))
            .await
            .unwrap_or_else(|e| panic!("{case}: the server stopped answering: {e}"));
        assert_eq!(out.output().unwrap().to_vec::<f32>().unwrap(), [-1.0, 2.0]);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn expect_error(r: mymps::Result<mymps::client::Outputs>, case: &str) -> Error {
    match r {
        Ok(out) => panic!(
            "{case}: expected an error, got {:?}",
            out.tensors
                .iter()
                .map(|(k, _)| k.clone())
                .collect::<Vec<_>>()
        ),
        Err(e) => e,
    }
}

/// What a client may be shown of a libtorch error: its message, without
/// the C++ backtrace (addresses, the server's install paths).
fn assert_clean(e: &Error, case: &str, expected: &str) {
    let m = &e.message;
    for leak in ["frame #", "0x", "Exception raised from", ".so", "libtorch"] {
        assert!(!m.contains(leak), "{case}: {leak:?} in {m:?}");
    }
    assert!(m.len() < 300, "{case}: {} bytes: {m:?}", m.len());
    assert!(m.contains(expected), "{case}: {m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libtorch_errors_reach_clients_without_backtraces() {
    for env in [&[][..], &[("TORCH_SHOW_CPP_STACKTRACES", "1")][..]] {
        let mut s = Served::start(env);
        let c = s.client().await;
        let f32s =
            |shape: &[usize]| Tensor::from_vec(vec![1f32; shape.iter().product()], shape).unwrap();
        let complex = Tensor::new(DType::Complex64, &[2], vec![0u8; 16]).unwrap();
        let cases = [
            // An op on tensors: the error comes back through tch's Result.
            (
                "matmul",
                Call::new("matmul").arg(f32s(&[2, 2])).arg(f32s(&[3, 1])),
                "cannot be multiplied",
            ),
            // An op with a scalar argument: tch frees the scalar before it
            // reads libtorch's error and panics with the whole text.
            (
                "remainder",
                Call::new("remainder").arg(complex).kwarg("other", 2),
                "not implemented for",
            ),
            (
                "masked_fill",
                Call::new("masked_fill")
                    .arg(f32s(&[2, 2]))
                    .input(
                        "mask",
                        Tensor::new(DType::Bool, &[3], vec![1u8; 3]).unwrap(),
                    )
                    .kwarg("value", 1.0),
                "must match",
            ),
        ];
        for (case, call, expected) in cases {
            let case = format!("{case} {env:?}");
            let e = expect_error(c.call(call).await, &case);
            assert_eq!(e.code, ErrorCode::Backend, "{case}: {e}");
            assert_clean(&e, &case, expected);
            s.assert_alive(&c, &case).await;
        }
    }
}
