//! `mymps put`, `get`, `free` and `tensors` end to end: shared
//! server-resident tensors from the shell, against `mymps serve` in a
//! child process.

mod common;

use std::process::{Child, Command, Output, Stdio};

use mymps::{Tensor, npy};

fn bin() -> String {
    std::env::var("MYMPS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mymps").to_owned())
}

struct Served {
    child: Child,
    addr: String,
}

impl Served {
    fn start() -> Served {
        let device = std::env::var("MYMPS_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--device", &device, "--log", "warn"])
            .args(["--listen", "tcp://127.0.0.1:0"]);
        let (child, addr, _) = common::spawn_serve(cmd.stderr(Stdio::inherit()));
        Served { child, addr }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .args(["--addr", &self.addr])
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "mymps {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The stdout and stderr of a command that must fail.
    fn fails(&self, args: &[&str]) -> (String, String) {
        let out = self.run(args);
        assert!(!out.status.success(), "mymps {args:?} succeeded");
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn put_get_tensors_and_free_a_shared_tensor_by_name() {
    let s = Served::start();
    let dir = tempfile::tempdir().unwrap();
    let x = Tensor::from_vec((0..6).map(|i| i as f32 * 1.5 - 2.0).collect(), &[2, 3]).unwrap();
    let file = dir.path().join("x.npy");
    npy::write(&file, &x).unwrap();
    let file = file.to_str().unwrap();

    // Nothing resident yet; no name is listed (the protocol has no list).
    let t = s.json(&["tensors"]);
    assert_eq!(t["resident_tensors"], 0, "{t}");
    assert_eq!(t["tensors"], serde_json::json!([]));

    // put: uploaded and shared; it outlives the command's connection.
    let text = s.ok(&["put", file, "--name", "w"]);
    assert_eq!(text.trim(), "w  float32 [2, 3]  on cpu, 24 bytes", "{text}");
    let t = s.json(&["tensors", "w"]);
    assert_eq!(t["resident_tensors"], 1, "{t}");
    assert_eq!(t["resident_bytes"], 24, "{t}");
    assert_eq!(t["tensors"][0]["name"], "w");
    assert_eq!(t["tensors"][0]["dtype"], "float32");
    assert_eq!(t["tensors"][0]["shape"], serde_json::json!([2, 3]));
    let text = s.ok(&["tensors", "w"]);
    assert!(text.contains("1 resident tensors, 24 bytes"), "{text}");
    assert!(text.contains("w  float32 [2, 3]  on cpu"), "{text}");

    // A taken name is refused, and the refused upload leaves nothing.
    let (_, err) = s.fails(&["put", file, "--name", "w"]);
    assert!(err.contains("already shared as 'w'"), "{err}");
    assert_eq!(s.json(&["tensors"])["resident_tensors"], 1);

    // get: the same bytes, as a .npy file.
    let out = dir.path().join("back.npy");
    let text = s.ok(&["get", "w", "-o", out.to_str().unwrap()]);
    assert!(text.starts_with("w  float32 [2, 3]  -> "), "{text}");
    let back = npy::read(&out).unwrap();
    assert_eq!(back.shape(), &[2, 3]);
    assert_eq!(back.to_vec::<f32>().unwrap(), x.to_vec::<f32>().unwrap());

    // Unknown names: typed errors naming them.
    let (_, err) = s.fails(&["get", "nope"]);
    assert!(err.contains("shared tensor 'nope' is not shared"), "{err}");
    let (_, err) = s.fails(&["tensors", "w", "nope"]);
    assert!(err.contains("'nope'"), "{err}");

    // free: the known one is freed, the unknown one reported (and fails).
    let (text, err) = s.fails(&["free", "w", "nope"]);
    assert_eq!(text.trim(), "freed 1");
    assert!(
        err.contains("not shared (unknown, or freed): nope"),
        "{err}"
    );
    assert_eq!(s.json(&["tensors"])["resident_tensors"], 0);
    assert_eq!(s.json(&["tensors"])["resident_bytes"], 0);
    let (_, err) = s.fails(&["get", "w"]);
    assert!(err.contains("not shared"), "{err}");
    let (text, _) = s.fails(&["free", "w", "--json"]);
    let f: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(f, serde_json::json!({"freed": 0, "unknown": ["w"]}));

    // Bad input: a file that is not .npy, an empty name.
    let bad = dir.path().join("bad.npy");
    std::fs::write(&bad, b"not a numpy file").unwrap();
    let (_, err) = s.fails(&["put", bad.to_str().unwrap(), "--name", "b"]);
    assert!(err.starts_with("mymps: error: "), "{err}");
    let (_, err) = s.fails(&["put", file, "--name", ""]);
    assert!(err.contains("--name"), "{err}");
    assert_eq!(s.json(&["tensors"])["resident_tensors"], 0);
}
