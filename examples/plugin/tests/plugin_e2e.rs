//! The example extension both ways, end to end: linked into a custom server
//! through `inventory`, and loaded as a plugin by the stock `mymps serve`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use mymps::client::{Caller, blocking::Client};
use mymps::model::LoadRequest;
use mymps::{Tensor, Value};
use tch::{Device, Kind};

/// target/debug/NAME, beside this test's folder.
fn artefact(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` first",
        p.display()
    );
    p
}

struct Served(Child, String);

impl Served {
    fn start(mut cmd: Command) -> Served {
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("mymps: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Served(child, addr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn to_host(t: &tch::Tensor) -> Tensor {
    let t = t.to_kind(Kind::Float).contiguous();
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let mut v = vec![0f32; t.numel()];
    t.copy_data(&mut v, t.numel());
    Tensor::from_vec(v, &shape).unwrap()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
}

/// Runs the example's op and model class against a server at `addr`.
fn check(addr: &str) {
    let c = Client::connect(addr).unwrap();
    assert!(c.list_ops().unwrap().contains(&"example_swish".to_owned()));
    let x = tch::Tensor::randn([2, 5], (Kind::Float, Device::Cpu));
    let out = c
        .exec(
            "example_swish",
            [("0", to_host(&x))],
            [("beta", Value::Float(1.5))],
        )
        .unwrap();
    let want = &x * (&x * 1.5).sigmoid();
    assert!(close(
        &out.output().unwrap().to_vec::<f32>().unwrap(),
        &to_host(&want).to_vec::<f32>().unwrap()
    ));

    // A SwiGLU checkpoint with PyTorch's key names.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("swiglu.safetensors");
    let (w1, w2, w3) = (
        tch::Tensor::randn([8, 5], (Kind::Float, Device::Cpu)),
        tch::Tensor::randn([8, 5], (Kind::Float, Device::Cpu)),
        tch::Tensor::randn([3, 8], (Kind::Float, Device::Cpu)),
    );
    tch::Tensor::write_safetensors(
        &[("w1.weight", &w1), ("w2.weight", &w2), ("w3.weight", &w3)],
        &path,
    )
    .unwrap();
    let req = |class: &str| LoadRequest {
        name: format!("m-{class}"),
        model_type: "checkpoint".into(),
        model_path: Some(path.display().to_string()),
        model_class: Some(class.into()),
        ..Default::default()
    };
    let info = c.load_model(req("swiglu")).unwrap();
    assert_eq!(info.metadata["architecture"], "swiglu");
    let got = c.infer("m-swiglu", [("0", to_host(&x))]).unwrap();
    let want = (x.linear::<tch::Tensor>(&w1, None).silu() * x.linear::<tch::Tensor>(&w2, None))
        .linear::<tch::Tensor>(&w3, None);
    assert!(close(
        &got.output().unwrap().to_vec::<f32>().unwrap(),
        &to_host(&want).to_vec::<f32>().unwrap()
    ));
    // The built-in classes are there too, and an unknown class lists all.
    let e = c.load_model(req("nope")).unwrap_err();
    assert!(
        e.message.contains("available: cnn, linear, mlp, swiglu"),
        "{e}"
    );
}

#[test]
fn linked_into_a_custom_server_through_inventory() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_custom-server"));
    cmd.arg("tcp://127.0.0.1:0")
        .arg(std::env::temp_dir())
        .env("MYMPS_DEVICE", "cpu");
    let s = Served::start(cmd);
    check(&s.1);
}

#[test]
fn loaded_as_a_plugin_by_the_stock_server() {
    let mut cmd = Command::new(artefact("mymps"));
    cmd.args([
        "serve",
        "--listen",
        "tcp://127.0.0.1:0",
        "--device",
        "cpu",
        "--log",
        "warn",
        "--plugin-dir",
        "/nonexistent",
    ])
    .arg("--model-root")
    .arg(std::env::temp_dir())
    .arg("--plugin")
    .arg(artefact("libmymps_models.so"))
    .arg("--plugin")
    .arg(artefact("libmymps_example_plugin.so"));
    let s = Served::start(cmd);
    check(&s.1);
}
