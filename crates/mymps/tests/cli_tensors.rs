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
    fn start(args: &[&str]) -> Served {
        let device = std::env::var("MYMPS_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--device", &device, "--log", "warn"])
            .args(["--listen", "tcp://127.0.0.1:0"])
            .args(args);
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
    let s = Served::start(&[]);
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

/// An MLP 6 → 8 → 3 saved as safetensors with PyTorch's state_dict names
/// (the `checkpoint` loader's `mlp` class).
fn write_mlp(path: &std::path::Path) {
    use tch::{Device, Kind};
    tch::manual_seed(7);
    let t = |s: &[i64]| tch::Tensor::randn(s, (Kind::Float, Device::Cpu));
    let (w0, b0, w1, b1) = (t(&[8, 6]), t(&[8]), t(&[3, 8]), t(&[3]));
    tch::Tensor::write_safetensors(
        &[
            ("layers.0.weight", &w0),
            ("layers.0.bias", &b0),
            ("layers.1.weight", &w1),
            ("layers.1.bias", &b1),
        ],
        path,
    )
    .unwrap();
}

#[test]
fn exec_and_infer_take_shared_tensors_and_share_their_results() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let s = Served::start(&["--model-root", root]);
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let x = Tensor::from_vec((0..18).map(|i| (i as f32 - 9.0) / 4.0).collect(), &[3, 6]).unwrap();
    let w = Tensor::from_vec((0..12).map(|i| (i % 5) as f32 - 2.0).collect(), &[6, 2]).unwrap();
    npy::write(std::path::Path::new(&p("x.npy")), &x).unwrap();
    npy::write(std::path::Path::new(&p("w.npy")), &w).unwrap();
    s.ok(&["put", &p("x.npy"), "--name", "x"]);
    s.ok(&["put", &p("w.npy"), "--name", "w"]);

    // exec on shared tensors, the result kept and shared, not sent back.
    let text = s.ok(&["exec", "matmul", "0=@x", "1=@w", "--share", "output=xw"]);
    assert!(
        text.contains("kept, shared as xw  float32 [3, 2]  on "),
        "{text}"
    );
    let shipped = s.json(&[
        "exec",
        "matmul",
        &format!("0={}", p("x.npy")),
        &format!("1={}", p("w.npy")),
        "--out",
        &p("d"),
    ]);
    assert_eq!(shipped["shared"], serde_json::json!([]));
    s.ok(&["get", "xw", "-o", &p("xw.npy")]);
    let kept = std::fs::read(p("xw.npy")).unwrap();
    assert_eq!(
        kept,
        std::fs::read(dir.path().join("d/output.npy")).unwrap()
    );
    // Mixed: data and a shared tensor; the chain goes on from the kept one.
    let text = s.ok(&["exec", "neg", "0=@xw", "--out", &p("n")]);
    assert!(text.contains("output  float32 [3,2]"), "{text}");
    let neg = npy::read(&dir.path().join("n/output.npy"))
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    let xw = npy::read(std::path::Path::new(&p("xw.npy")))
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
    assert_eq!(neg, xw.iter().map(|v| -v).collect::<Vec<_>>());

    // infer on a shared tensor: the bytes of infer on the file.
    write_mlp(&dir.path().join("mlp.safetensors"));
    s.ok(&[
        "models",
        "load",
        "m",
        "--type",
        "checkpoint",
        "--path",
        &p("mlp.safetensors"),
        "--class",
        "mlp",
        "--config",
        r#"{"activation": "gelu"}"#,
    ]);
    s.ok(&[
        "infer",
        "m",
        &format!("input={}", p("x.npy")),
        "--out",
        &p("i"),
    ]);
    let text = s.ok(&["infer", "m", "input=@x", "--share", "output=y"]);
    assert!(text.contains("kept, shared as y  float32 [3, 3]"), "{text}");
    s.ok(&["get", "y", "-o", &p("y.npy")]);
    assert_eq!(
        std::fs::read(p("y.npy")).unwrap(),
        std::fs::read(dir.path().join("i/output.npy")).unwrap()
    );

    // Errors: an unknown shared input, a result the op lacks, an empty name;
    // nothing is left behind.
    let before = s.json(&["tensors"])["resident_tensors"].clone();
    assert_eq!(before, 4);
    let (_, err) = s.fails(&["exec", "neg", "0=@nope"]);
    assert!(err.contains("'nope' is not shared"), "{err}");
    let (_, err) = s.fails(&["exec", "neg", "0=@x", "--share", "nope=z"]);
    assert!(err.contains("keep names 'nope'"), "{err}");
    let (_, err) = s.fails(&["exec", "neg", "0=@"]);
    assert!(err.contains("after '@'"), "{err}");
    let (_, err) = s.fails(&["exec", "neg", "0=@x", "--share", "output=x"]);
    assert!(err.contains("already shared as 'x'"), "{err}");
    assert_eq!(s.json(&["tensors"])["resident_tensors"], before);
    s.ok(&["free", "x", "w", "xw", "y"]);
    assert_eq!(s.json(&["tensors"])["resident_tensors"], 0);
}
