//! Models end to end: the checkpoint loader linked in (rlib), the loaders as
//! a dynamically loaded plugin (`mymps serve --plugin`), and the plugin
//! header checks with a deliberately mismatched plugin.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mymps::client::Caller;
use mymps::model::LoadRequest;
use mymps::plugin::HostVersions;
use mymps::{DType, ErrorCode, Tensor};
use tch::{Device, Kind};

/// A build artefact beside the test binary's folder (target/debug/NAME).
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

fn host() -> HostVersions {
    HostVersions::with_tch(mymps::backend_tch::TCH_VERSION)
}

fn to_host(t: &tch::Tensor) -> Tensor {
    let t = t.to_kind(Kind::Float).contiguous();
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let mut v = vec![0f32; t.numel()];
    t.copy_data(&mut v, t.numel());
    Tensor::from_vec(v, &shape).unwrap()
}

/// An MLP 6 → 8 → 3 with tch's own ops, saved as safetensors with PyTorch's
/// state_dict names; returns the expected forward for `x`.
fn write_mlp(path: &Path, x: &tch::Tensor) -> tch::Tensor {
    tch::manual_seed(7);
    let w0 = tch::Tensor::randn([8, 6], (Kind::Float, Device::Cpu));
    let b0 = tch::Tensor::randn([8], (Kind::Float, Device::Cpu));
    let w1 = tch::Tensor::randn([3, 8], (Kind::Float, Device::Cpu));
    let b1 = tch::Tensor::randn([3], (Kind::Float, Device::Cpu));
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
    x.linear(&w0, Some(&b0)).gelu("none").linear(&w1, Some(&b1))
}

/// A tiny GPT2LMHeadModel directory as `save_pretrained` writes it (random
/// weights; the comparison with transformers is in tests/python/test_hf.py).
fn write_gpt2(dir: &Path) -> usize {
    let (v, e, n_pos) = (30, 8, 16);
    std::fs::write(
        dir.join("config.json"),
        format!(
            r#"{{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": {v},
                "n_embd": {e}, "n_layer": 1, "n_head": 2, "n_positions": {n_pos}}}"#
        ),
    )
    .unwrap();
    let mut shapes: Vec<(String, Vec<i64>)> = vec![
        ("transformer.wte.weight".into(), vec![v, e]),
        ("transformer.wpe.weight".into(), vec![n_pos, e]),
        ("transformer.ln_f.weight".into(), vec![e]),
        ("transformer.ln_f.bias".into(), vec![e]),
    ];
    for (n, s) in [
        ("ln_1.weight", vec![e]),
        ("ln_1.bias", vec![e]),
        ("attn.c_attn.weight", vec![e, 3 * e]),
        ("attn.c_attn.bias", vec![3 * e]),
        ("attn.c_proj.weight", vec![e, e]),
        ("attn.c_proj.bias", vec![e]),
        ("ln_2.weight", vec![e]),
        ("ln_2.bias", vec![e]),
        ("mlp.c_fc.weight", vec![e, 4 * e]),
        ("mlp.c_fc.bias", vec![4 * e]),
        ("mlp.c_proj.weight", vec![4 * e, e]),
        ("mlp.c_proj.bias", vec![e]),
    ] {
        shapes.push((format!("transformer.h.0.{n}"), s));
    }
    tch::manual_seed(11);
    let ts: Vec<(String, tch::Tensor)> = shapes
        .iter()
        .map(|(n, s)| {
            (
                n.clone(),
                tch::Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu)),
            )
        })
        .collect();
    tch::Tensor::write_safetensors(&ts, dir.join("model.safetensors")).unwrap();
    shapes
        .iter()
        .map(|(_, s)| s.iter().product::<i64>() as usize)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huggingface_models_with_linked_loaders() {
    let (server, addr) = common::start_with_models(mymps_models::loaders()).await;
    let c = mymps::client::Client::connect(&addr).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let params = write_gpt2(dir.path());
    let info = c
        .load_model(LoadRequest {
            name: "org/gpt2".into(),
            model_type: "huggingface".into(),
            model_path: Some(dir.path().display().to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(info.metadata["architecture"], "GPT2LMHeadModel");
    assert_eq!(info.metadata["parameters"], params.to_string());
    assert_eq!(info.metadata["dtype"], "float32");
    assert_eq!(info.metadata["weights"], "model.safetensors");
    let ids = Tensor::from_vec(vec![1i64, 2, 3, 4, 0, 0, 5, 6], &[2, 4]).unwrap();
    let mask = Tensor::from_vec(vec![1i64, 1, 1, 1, 0, 0, 1, 1], &[2, 4]).unwrap();
    let out = c
        .infer(
            "org/gpt2",
            [("input_ids", ids.clone()), ("attention_mask", mask)],
        )
        .await
        .unwrap()
        .into_map();
    assert_eq!(
        out.keys().collect::<Vec<_>>(),
        ["last_hidden_state", "logits"]
    );
    assert_eq!(out["last_hidden_state"].shape(), [2, 4, 8]);
    assert_eq!(out["logits"].shape(), [2, 4, 30]);
    assert_eq!(out["logits"].dtype(), DType::Float32);
    // A forward pass refuses bad inputs and the server goes on.
    let e = c
        .infer("org/gpt2", [("inputs_embeds", ids.clone())])
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadArgument);
    assert!(e.message.contains("unknown input 'inputs_embeds'"), "{e}");
    let e = c
        .load_model(LoadRequest {
            name: "x".into(),
            model_type: "huggingface".into(),
            model_path: Some(dir.path().join("model.safetensors").display().to_string()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Model);
    assert!(e.message.contains("is not a directory"), "{e}");
    assert_eq!(c.health().await.unwrap().models_loaded, 1);
    c.unload_model("org/gpt2").await.unwrap();
    drop(c);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_models_with_linked_loaders() {
    let (server, addr) = common::start_with_models(mymps_models::loaders()).await;
    let c = mymps::client::Client::connect(&addr).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mlp.safetensors");
    let x = tch::Tensor::randn([4, 6], (Kind::Float, Device::Cpu));
    let want = write_mlp(&path, &x);
    let req = |class: &str, config: Option<&str>| LoadRequest {
        name: "org/mlp".into(),
        model_type: "checkpoint".into(),
        model_path: Some(path.display().to_string()),
        model_class: Some(class.into()),
        config: config.map(str::to_owned),
        ..Default::default()
    };
    let info = c
        .load_model(req("mlp", Some(r#"{"activation": "gelu"}"#)))
        .await
        .unwrap();
    assert_eq!(info.name, "org/mlp");
    assert_eq!(info.metadata["architecture"], "mlp");
    assert_eq!(
        info.metadata["parameters"],
        (8 * 6 + 8 + 3 * 8 + 3).to_string()
    );
    let out = c.infer("org/mlp", [("0", to_host(&x))]).await.unwrap();
    let got = out.output().unwrap().to_vec::<f32>().unwrap();
    let want = to_host(&want).to_vec::<f32>().unwrap();
    assert!(
        got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5),
        "{got:?} vs {want:?}"
    );
    assert_eq!(c.list_models().await.unwrap().len(), 1);
    assert_eq!(c.health().await.unwrap().models_loaded, 1);

    // Errors that list what differs (under another name: a loaded name
    // cannot be loaded again).
    let e = c.load_model(req("mlp", None)).await.unwrap_err();
    assert!(e.message.contains("already loaded; unload it first"), "{e}");
    let bad = |class: &str, config: Option<&str>| LoadRequest {
        name: "bad".into(),
        ..req(class, config)
    };
    let e = c
        .load_model(bad("transformer9000", None))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Model);
    assert!(e.message.contains("available: cnn, linear, mlp"), "{e}");
    let e = c
        .load_model(bad("mlp", Some(r#"{"sizes": [6, 9, 3]}"#)))
        .await
        .unwrap_err();
    assert!(
        e.message
            .contains("shape mismatches: layers.0.bias: checkpoint [8], model [9]"),
        "{e}"
    );
    let e = c.load_model(bad("cnn", None)).await.unwrap_err();
    assert!(e.message.contains("no features.N.weight keys"), "{e}");
    let e = c.load_model(bad("linear", None)).await.unwrap_err();
    assert!(
        e.message.contains("missing keys: bias, weight")
            && e.message.contains("unexpected keys: layers.0.bias"),
        "{e}"
    );
    let mut missing = bad("mlp", None);
    missing.model_path = Some(
        std::env::temp_dir()
            .join("nonexistent-x.pt")
            .display()
            .to_string(),
    );
    let e = c.load_model(missing).await.unwrap_err();
    assert!(e.message.contains("cannot be opened"), "{e}");
    let mut unknown = bad("mlp", None);
    unknown.model_type = "onnx".into();
    let e = c.load_model(unknown).await.unwrap_err();
    assert!(
        e.message
            .contains("this server loads: checkpoint, huggingface, torch_export, torchscript"),
        "{e}"
    );
    let e = c.infer("nope", [("0", to_host(&x))]).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::ModelNotFound);
    let e = c
        .infer("org/mlp", [("0", to_host(&x)), ("1", to_host(&x))])
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadArgument);
    let e = c
        .infer(
            "org/mlp",
            [(
                "0",
                to_host(&tch::Tensor::zeros([2, 5], (Kind::Float, Device::Cpu))),
            )],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Model, "{e}");

    // dtype is honoured: parameters and floating inputs become float64.
    let mut f64req = req("mlp", Some(r#"{"activation": "gelu"}"#));
    f64req.dtype = Some("float64".into());
    f64req.name = "mlp64".into();
    assert_eq!(
        c.load_model(f64req).await.unwrap().metadata["dtype"],
        "float64"
    );
    let out = c.infer("mlp64", [("0", to_host(&x))]).await.unwrap();
    assert_eq!(out.output().unwrap().dtype(), DType::Float64);

    c.unload_model("org/mlp").await.unwrap();
    assert_eq!(
        c.unload_model("org/mlp").await.unwrap_err().code,
        ErrorCode::ModelNotFound
    );
    assert_eq!(
        c.model_info("org/mlp").await.unwrap_err().code,
        ErrorCode::ModelNotFound
    );
    server.shutdown().await;
}

#[test]
fn mismatched_and_broken_plugins_are_refused() {
    let fixture = artefact("libmymps_plugin_fixture.so");
    let serve = |plugin: &Path, mode: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_mymps"))
            .args([
                "serve",
                "--listen",
                "tcp://127.0.0.1:0",
                "--device",
                "cpu",
                "--plugin",
            ])
            .arg(plugin)
            .env("MYMPS_FIXTURE_MODE", mode)
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{mode}: the server started with a bad plugin"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let h = host();
    for (mode, theirs, ours) in [
        (
            "abi",
            "built for plugin ABI 999".to_owned(),
            format!(
                "this server speaks plugin ABI {}",
                mymps::plugin::PLUGIN_ABI_VERSION
            ),
        ),
        (
            "mymps",
            "built with mymps 0.0.0-other".into(),
            format!("this server was built with {}", h.mymps),
        ),
        (
            "rustc",
            "built with rustc 0.0.0-other".into(),
            format!("this server was built with {}", h.rustc),
        ),
        (
            "tch",
            "built with tch 0.0.0-other".into(),
            format!("this server was built with {}", h.tch),
        ),
        (
            "register-panic",
            "failed to register: panicked during registration".into(),
            "the fixture panics during registration".into(),
        ),
    ] {
        let err = serve(&fixture, mode);
        assert!(
            err.contains(&theirs) && err.contains(&ours),
            "{mode}: {err}"
        );
    }
    assert!(serve(Path::new("/nonexistent/libx.so"), "ok").contains("cannot load"));
    let libc10 = Path::new(env!("LIBTORCH")).join("lib/libc10.so");
    assert!(serve(&libc10, "ok").contains("not a mymps plugin"));
}

/// The rest runs against a real `mymps serve` with both plugins loaded.
#[test]
fn plugins_loaded_by_the_server_serve_models_and_ops() {
    let models = artefact("libmymps_models.so");
    let fixture = artefact("libmymps_plugin_fixture.so");
    let (mut child, addr, _) = common::spawn_serve(
        Command::new(env!("CARGO_BIN_EXE_mymps"))
            .args([
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
            .arg(&models)
            .arg("--plugin")
            .arg(&fixture),
    );
    let result = std::panic::catch_unwind(|| {
        let c = mymps::client::blocking::Client::connect(&addr).unwrap();
        // The plugin's ops are in the whitelist and run.
        let ops = c.list_ops().unwrap();
        assert!(ops.contains(&"fixture_double".to_owned()));
        let x = Tensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap();
        let out = c
            .exec(
                "fixture_double",
                [("0", x.clone())],
                Vec::<(String, mymps::Value)>::new(),
            )
            .unwrap();
        assert_eq!(
            out.output().unwrap().to_vec::<f32>().unwrap(),
            vec![2.0, 4.0]
        );
        // A plugin op that panics is an error reply, not a dead server.
        let e = c
            .exec(
                "fixture_panic",
                [("0", x.clone())],
                Vec::<(String, mymps::Value)>::new(),
            )
            .unwrap_err();
        assert!(e.message.contains("fixture_panic was called"), "{e}");
        // A loader and a model that panic, likewise.
        let files = tempfile::tempdir().unwrap();
        for f in ["panic", "ok"] {
            std::fs::write(files.path().join(f), b"fixture").unwrap();
        }
        let req = |file: &str| LoadRequest {
            name: "f".into(),
            model_type: "fixture".into(),
            model_path: Some(files.path().join(file).display().to_string()),
            ..Default::default()
        };
        let e = c.load_model(req("panic")).unwrap_err();
        assert_eq!(e.code, ErrorCode::Model);
        assert!(e.message.contains("panics on the path"), "{e}");
        c.load_model(req("ok")).unwrap();
        // Outside the model root: refused before any loader runs.
        let mut outside = req("ok");
        outside.model_path = Some("/etc/hostname".into());
        outside.name = "g".into();
        assert!(
            c.load_model(outside)
                .unwrap_err()
                .message
                .contains("outside the model root")
        );
        let e = c.infer("f", [("panic", x.clone())]).unwrap_err();
        assert!(e.message.contains("panics on an input"), "{e}");
        let out = c.infer("f", [("0", x.clone())]).unwrap();
        assert_eq!(out.get("0").unwrap(), &x);
        // The models plugin serves checkpoints.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mlp.safetensors");
        let xt = tch::Tensor::randn([3, 6], (Kind::Float, Device::Cpu));
        let want = to_host(&write_mlp(&path, &xt)).to_vec::<f32>().unwrap();
        let info = c
            .load_model(LoadRequest {
                name: "m".into(),
                model_type: "checkpoint".into(),
                model_path: Some(path.display().to_string()),
                model_class: Some("mlp".into()),
                config: Some(r#"{"activation": "gelu"}"#.into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(info.device, "cpu");
        let got = c
            .infer("m", [("input", to_host(&xt))])
            .unwrap()
            .output()
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5));
        assert_eq!(c.health().unwrap().status, "ok");

        // The CLI's model commands against the same server.
        let cli = |args: &[&str]| {
            let o = Command::new(env!("CARGO_BIN_EXE_mymps"))
                .args(args)
                .args(["--addr", &addr])
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8(o.stdout).unwrap()
        };
        assert!(cli(&["models", "list"]).contains("m  (checkpoint, on cpu"));
        let x_path = dir.path().join("x.npy");
        mymps::npy::write(&x_path, &to_host(&xt)).unwrap();
        let out_dir = dir.path().join("out");
        cli(&[
            "infer",
            "m",
            &format!("0={}", x_path.display()),
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        let got = mymps::npy::read(&out_dir.join("output.npy"))
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5));
        cli(&[
            "models",
            "load",
            "m2",
            "--type",
            "checkpoint",
            "--path",
            path.to_str().unwrap(),
            "--class",
            "mlp",
        ]);
        assert!(cli(&["models", "info", "m2", "--json"]).contains("\"architecture\": \"mlp\""));
        cli(&["models", "unload", "m2"]);
        assert!(!cli(&["models", "list"]).contains("m2"));
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}
