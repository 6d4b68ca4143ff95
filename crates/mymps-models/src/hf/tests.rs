//! Unit tests of the building blocks, and properties of whole tiny models
//! written here with random weights (the comparison with transformers
//! itself is in tests/python/test_hf.py).

use std::path::PathBuf;

use mymps_core::ErrorCode;
use mymps_core::model::{LoadRequest, ModelLoader};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use super::layers::{Activation, Mask, attention, repeat_kv};
use super::{ARCHITECTURES, Architecture, Bound, Config, HuggingFaceLoader, inside, llama};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

fn cfg(v: serde_json::Value) -> Config {
    Config { json: v }
}

fn close(a: &Tensor, b: &Tensor, tol: f64) -> bool {
    a.size() == b.size() && (a - b).abs().max().double_value(&[]) <= tol
}

/// A fresh folder under the system's temporary one.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mymps-hf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn one_entry_per_architecture_sorted_with_its_prefix() {
    let types: Vec<&str> = ARCHITECTURES.iter().map(|a| a.model_type).collect();
    assert!(
        types.windows(2).all(|w| w[0] < w[1]),
        "sorted, unique: {types:?}"
    );
    for a in ARCHITECTURES {
        assert!(
            a.prefix.ends_with('.') && a.base_class.ends_with("Model"),
            "{a:?}"
        );
        assert_eq!(
            Architecture::get(a.model_type).map(|b| b.model_type),
            Some(a.model_type)
        );
        // The module docs' table names every architecture.
        assert!(
            include_str!("mod.rs").contains(&format!("`{}`", a.model_type)),
            "{a:?}"
        );
    }
    assert!(Architecture::get("t5").is_none());
}

#[test]
fn config_accessors_name_the_key() {
    let c = cfg(json!({"hidden_size": 32, "eps": "x", "n": null, "neg": -1}));
    assert_eq!(c.int("hidden_size", None).unwrap(), 32);
    assert_eq!(c.int("n", Some(7)).unwrap(), 7);
    assert!(
        c.int("missing", None)
            .unwrap_err()
            .message
            .contains("no 'missing'")
    );
    assert!(
        c.float("eps", 1.0)
            .unwrap_err()
            .message
            .contains("'eps' must be a number")
    );
    assert!(
        c.size("neg", None, Bound::Width)
            .unwrap_err()
            .message
            .contains("must be positive")
    );
    let huge = cfg(json!({"hidden_size": 1i64 << 40}));
    let e = huge.size("hidden_size", None, Bound::Width).unwrap_err();
    assert!(e.message.contains("at most 4194304"), "{e}");
    let layers = cfg(json!({"num_hidden_layers": 2147483648i64}));
    let e = layers
        .size("num_hidden_layers", None, Bound::Layers)
        .unwrap_err();
    assert!(
        e.message
            .contains("must be positive and at most 4096 (a number of layers)"),
        "{e}"
    );
    assert_eq!(
        c.size_any(&["n_embd", "hidden_size"], 1, Bound::Width)
            .unwrap(),
        32
    );
    assert_eq!(c.size_any(&["n_embd"], 5, Bound::Width).unwrap(), 5);
    assert_eq!(c.first_of(&["n_embd", "hidden_size"]), "hidden_size");
}

#[test]
fn causal_mask_with_a_window_and_left_padding() {
    let pad = Tensor::from_slice(&[false, true, true, true]).reshape([1, 4]);
    let m = Mask::causal(4, Device::Cpu, Some(&pad), Some(2)).unwrap();
    // Visible: j <= i, j > i - 2, j not padding.
    let q = Tensor::zeros([1, 1, 4, 2], CPU);
    let k = Tensor::zeros([1, 1, 4, 2], CPU);
    let v = Tensor::from_slice(&[1f32, 10., 100., 1000.]).reshape([1, 1, 4, 1]);
    let out = attention(&q, &k, &v, &m, 1.0).unwrap().reshape([4]);
    // Row 0 sees nothing (zero, as SDPA's boolean mask gives); row 1 sees
    // key 1; rows 2 and 3 see their last two keys, equally.
    let want = Tensor::from_slice(&[0f32, 10., 55., 550.]);
    assert!(close(&out, &want, 1e-4), "{out}");
    // No window: row 3 sees keys 1..=3.
    let m = Mask::causal(4, Device::Cpu, Some(&pad), None).unwrap();
    let out = attention(&q, &k, &v, &m, 1.0).unwrap().reshape([4]);
    assert!(
        close(&out, &Tensor::from_slice(&[0f32, 10., 55., 370.]), 1e-3),
        "{out}"
    );
}

#[test]
fn an_encoder_row_of_padding_only_attends_uniformly() {
    let pad = Tensor::from_slice(&[false, false]).reshape([1, 2]);
    let m = Mask::padding(Some(&pad)).unwrap();
    let q = Tensor::randn([1, 1, 2, 3], CPU);
    let k = Tensor::randn([1, 1, 2, 3], CPU);
    let v = Tensor::from_slice(&[2f32, 4.]).reshape([1, 1, 2, 1]);
    let out = attention(&q, &k, &v, &m, 1.0).unwrap().reshape([2]);
    assert!(close(&out, &Tensor::from_slice(&[3f32, 3.]), 1e-5), "{out}");
}

#[test]
fn repeat_kv_repeats_each_head_in_place() {
    let x = Tensor::arange(2 * 3 * 4, CPU).reshape([1, 2, 3, 4]);
    let r = repeat_kv(&x, 3).unwrap();
    assert!(close(&r, &x.repeat_interleave_self_int(3, 1, None), 0.0));
}

#[test]
fn activations_follow_transformers() {
    let x = Tensor::linspace(-6.0, 6.0, 101, CPU);
    let gelu_fast = Activation::from_config(&cfg(json!({"a": "gelu_fast"})), "a", "").unwrap();
    assert!(close(
        &gelu_fast.forward(&x).unwrap(),
        &x.gelu("tanh"),
        1e-6
    ));
    let quick = Activation::from_config(&cfg(json!({})), "a", "quick_gelu").unwrap();
    assert!(close(
        &quick.forward(&x).unwrap(),
        &(&x * (&x * 1.702).sigmoid()),
        1e-6
    ));
    let e = Activation::from_config(&cfg(json!({"act": "snake"})), "act", "gelu").unwrap_err();
    assert!(
        e.message.contains("unsupported activation act = 'snake'"),
        "{e}"
    );
    assert!(e.message.contains("gelu_new"), "{e}");
}

#[test]
fn rope_frequencies_match_transformers() {
    // transformers 4.57: ROPE_INIT_FUNCTIONS[...](LlamaConfig(hidden_size=64,
    // num_attention_heads=4, ...)) → head_dim 16.
    let (inv, scale) = llama::rope(&cfg(json!({"rope_theta": 500.0})), 16, Device::Cpu).unwrap();
    let want = [
        1.0,
        0.4598632752895355,
        0.2114742398262024,
        0.09724924713373184,
        0.04472136124968529,
        0.020565712824463844,
        0.009457415901124477,
        0.004349118564277887,
    ];
    assert!(
        close(&inv, &Tensor::from_slice(&want).to_kind(Kind::Float), 1e-7),
        "{inv}"
    );
    assert_eq!(scale, 1.0);
    let llama3 = json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}});
    let (inv, _) = llama::rope(&cfg(llama3), 16, Device::Cpu).unwrap();
    let want = [
        1.0,
        0.24438458681106567,
        0.013042256236076355,
        0.0039528473280370235,
        0.0012499999720603228,
        0.00039528473280370235,
        0.0001250000059371814,
        3.9528473280370235e-05,
    ];
    let rel = ((&inv - Tensor::from_slice(&want).to_kind(Kind::Float)).abs() / inv.abs())
        .max()
        .double_value(&[]);
    assert!(rel < 1e-6, "{inv}");
    let e = llama::rope(
        &cfg(json!({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}})),
        16,
        Device::Cpu,
    )
    .unwrap_err();
    assert!(
        e.message
            .contains("'yarn' is not supported (default, linear, llama3)"),
        "{e}"
    );
}

#[test]
fn files_must_lie_inside_the_model_directory() {
    let d = scratch("inside");
    let out = scratch("inside-out");
    std::fs::write(out.join("w"), b"x").unwrap();
    std::fs::write(d.join("config.json"), b"{}").unwrap();
    std::os::unix::fs::symlink(out.join("w"), d.join("model.safetensors")).unwrap();
    let dir = std::fs::canonicalize(&d).unwrap();
    assert!(inside(&dir, "config.json").unwrap().is_some());
    assert!(inside(&dir, "absent.bin").unwrap().is_none());
    for bad in ["../w", "a/b", "/etc/passwd"] {
        assert!(inside(&dir, bad).is_err(), "{bad}");
    }
    let e = inside(&dir, "model.safetensors").unwrap_err();
    assert!(
        e.message.contains("leads out of the model directory"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&out);
}

/// Writes `config.json` and `model.safetensors` with random weights.
fn write_model(name: &str, config: serde_json::Value, shapes: &[(String, Vec<i64>)]) -> PathBuf {
    let d = scratch(name);
    std::fs::write(d.join("config.json"), config.to_string()).unwrap();
    tch::manual_seed(3);
    let ts: Vec<(String, Tensor)> = shapes
        .iter()
        .map(|(n, s)| {
            let t = if n.contains("norm") || n.contains("LayerNorm") {
                Tensor::randn(s.as_slice(), CPU) * 0.1 + 1.0
            } else {
                Tensor::randn(s.as_slice(), CPU) * 0.3
            };
            (n.clone(), t)
        })
        .collect();
    Tensor::write_safetensors(&ts, d.join("model.safetensors")).unwrap();
    d
}

fn load(dir: &std::path::Path) -> Box<dyn mymps_core::model::Model> {
    let req = LoadRequest {
        name: "m".into(),
        model_type: "huggingface".into(),
        model_path: Some(std::fs::canonicalize(dir).unwrap().display().to_string()),
        ..Default::default()
    };
    HuggingFaceLoader.load(&req, "cpu").unwrap()
}

type Inputs = Vec<(&'static str, Vec<i64>)>;

/// A forward pass on `[batch, seq]` int64 inputs; the outputs as tch tensors.
fn run(m: &dyn mymps_core::model::Model, batch: usize, inputs: Inputs) -> Vec<(String, Tensor)> {
    let inputs = inputs
        .into_iter()
        .map(|(n, v)| {
            let s = v.len() / batch;
            (
                n.to_owned(),
                mymps_core::Tensor::from_vec(v, &[batch, s]).unwrap(),
            )
        })
        .collect();
    m.forward(inputs)
        .unwrap()
        .into_iter()
        .map(|(n, t)| {
            let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
            (
                n,
                Tensor::from_slice(&t.to_vec::<f32>().unwrap()).reshape(shape),
            )
        })
        .collect()
}

fn llama_shapes() -> Vec<(String, Vec<i64>)> {
    let mut v = vec![("model.embed_tokens.weight".to_owned(), vec![50, 16])];
    for i in 0..2 {
        let p = format!("model.layers.{i}");
        for (n, s) in [
            ("input_layernorm.weight", vec![16]),
            ("self_attn.q_proj.weight", vec![16, 16]),
            ("self_attn.k_proj.weight", vec![8, 16]),
            ("self_attn.v_proj.weight", vec![8, 16]),
            ("self_attn.o_proj.weight", vec![16, 16]),
            ("post_attention_layernorm.weight", vec![16]),
            ("mlp.gate_proj.weight", vec![24, 16]),
            ("mlp.up_proj.weight", vec![24, 16]),
            ("mlp.down_proj.weight", vec![16, 24]),
        ] {
            v.push((format!("{p}.{n}"), s));
        }
    }
    v.push(("model.norm.weight".to_owned(), vec![16]));
    v.push(("lm_head.weight".to_owned(), vec![50, 16]));
    v
}

#[test]
fn a_tiny_llama_is_causal_and_left_padding_changes_nothing_for_real_tokens() {
    let config = json!({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 50,
        "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2});
    let d = write_model("llama", config, &llama_shapes());
    let m = load(&d);
    let meta = m.metadata();
    assert_eq!(meta["architecture"], "LlamaForCausalLM");
    assert_eq!(meta["outputs"], "last_hidden_state, logits");
    let total: i64 = llama_shapes()
        .iter()
        .map(|(_, s)| s.iter().product::<i64>())
        .sum();
    assert_eq!(meta["parameters"], total.to_string());
    // Causal: changing the last token changes nothing before it.
    let a = run(&*m, 1, vec![("input_ids", vec![3, 14, 15, 9, 2, 6])]);
    let b = run(&*m, 1, vec![("input_ids", vec![3, 14, 15, 9, 2, 7])]);
    let (ha, hb) = (&a[0].1, &b[0].1);
    assert!(close(&ha.narrow(1, 0, 5), &hb.narrow(1, 0, 5), 1e-6));
    assert!(!close(&ha.narrow(1, 5, 1), &hb.narrow(1, 5, 1), 1e-3));
    // logits = last_hidden_state · lm_headᵀ.
    assert_eq!(a[1].0, "logits");
    assert_eq!(a[1].1.size(), [1, 6, 50]);
    // Left padding, with the positions generate() uses: the real tokens'
    // outputs are those of the sequence alone.
    let alone = run(&*m, 1, vec![("input_ids", vec![14, 15, 9, 2])]);
    let padded = run(
        &*m,
        2,
        vec![
            ("input_ids", vec![0, 0, 14, 15, 9, 2, 3, 14, 15, 9, 2, 6]),
            ("attention_mask", vec![0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
            ("position_ids", vec![1, 1, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5]),
        ],
    );
    for (k, (name, t)) in padded.iter().enumerate() {
        let real = t.narrow(0, 0, 1).narrow(1, 2, 4);
        assert!(close(&real, &alone[k].1, 1e-5), "{name}");
        assert!(close(&t.narrow(0, 1, 1), &a[k].1, 1e-5), "{name}");
    }
    // Inputs are checked before anything runs.
    let e = m
        .forward(vec![(
            "input_ids".into(),
            mymps_core::Tensor::from_vec(vec![1i64, 50], &[1, 2]).unwrap(),
        )])
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadArgument);
    assert!(e.message.contains("outside [0, 50)"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_tiny_bert_ignores_right_padding_and_a_missing_weight_is_named() {
    let h = 16;
    let mut shapes = vec![
        (
            "bert.embeddings.word_embeddings.weight".to_owned(),
            vec![40, h],
        ),
        (
            "bert.embeddings.position_embeddings.weight".to_owned(),
            vec![32, h],
        ),
        (
            "bert.embeddings.token_type_embeddings.weight".to_owned(),
            vec![2, h],
        ),
        ("bert.embeddings.LayerNorm.gamma".to_owned(), vec![h]),
        ("bert.embeddings.LayerNorm.beta".to_owned(), vec![h]),
        ("cls.predictions.bias".to_owned(), vec![40]),
    ];
    let p = "bert.encoder.layer.0";
    for (n, s) in [
        ("attention.self.query", vec![h, h]),
        ("attention.self.key", vec![h, h]),
        ("attention.self.value", vec![h, h]),
        ("attention.output.dense", vec![h, h]),
        ("intermediate.dense", vec![20, h]),
        ("output.dense", vec![h, 20]),
    ] {
        shapes.push((format!("{p}.{n}.weight"), s.clone()));
        shapes.push((format!("{p}.{n}.bias"), vec![s[0]]));
    }
    for n in ["attention.output.LayerNorm", "output.LayerNorm"] {
        shapes.push((format!("{p}.{n}.weight"), vec![h]));
        shapes.push((format!("{p}.{n}.bias"), vec![h]));
    }
    let config = json!({"model_type": "bert", "architectures": ["BertForMaskedLM"], "vocab_size": 40,
        "hidden_size": h, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 20,
        "max_position_embeddings": 32});
    let d = write_model("bert", config.clone(), &shapes);
    let m = load(&d);
    // The masked-LM head is not part of the base model.
    assert_eq!(m.metadata()["outputs"], "last_hidden_state");
    let head: i64 = 40;
    let total: i64 = shapes
        .iter()
        .map(|(_, s)| s.iter().product::<i64>())
        .sum::<i64>()
        - head;
    assert_eq!(m.metadata()["parameters"], total.to_string());
    let alone = run(&*m, 1, vec![("input_ids", vec![5, 6, 7])]);
    let padded = run(
        &*m,
        2,
        vec![
            ("input_ids", vec![5, 6, 7, 0, 0, 9, 8, 7, 6, 5]),
            ("attention_mask", vec![1, 1, 1, 0, 0, 1, 1, 1, 1, 1]),
        ],
    );
    let real = padded[0].1.narrow(0, 0, 1).narrow(1, 0, 3);
    assert!(close(&real, &alone[0].1, 1e-5));
    // Without the mask the padding is attended to, and the outputs differ.
    let unmasked = run(&*m, 1, vec![("input_ids", vec![5, 6, 7, 0, 0])]);
    assert!(!close(&unmasked[0].1.narrow(1, 0, 3), &alone[0].1, 1e-3));

    // A missing weight is named.
    let shapes: Vec<_> = shapes
        .into_iter()
        .filter(|(n, _)| !n.ends_with("key.bias"))
        .collect();
    let d2 = write_model("bert-missing", config, &shapes);
    let req = LoadRequest {
        model_path: Some(d2.display().to_string()),
        ..Default::default()
    };
    let e = HuggingFaceLoader.load(&req, "cpu").err().unwrap();
    assert!(
        e.message.contains("missing weight 'encoder.layer.0.attention.self.key.bias' (nor 'bert.encoder.layer.0.attention.self.key.bias')"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&d2);
}

#[test]
fn an_unknown_architecture_lists_those_supported() {
    let d = scratch("t5");
    std::fs::write(
        d.join("config.json"),
        r#"{"model_type": "t5", "architectures": ["T5Model"]}"#,
    )
    .unwrap();
    let mut req = LoadRequest {
        model_path: Some(d.display().to_string()),
        engine: Some("native".into()),
        ..Default::default()
    };
    let e = HuggingFaceLoader.load(&req, "cpu").err().unwrap();
    assert!(e.message.starts_with("model_type 't5' (T5Model) has no native implementation (native: bert (BertModel), distilbert (DistilBertModel), gpt2"), "{e}");
    assert!(
        e.message
            .ends_with("engine=\"python\" runs it through transformers"),
        "{e}"
    );
    // Left to the server, it goes to the Python engine, which this test
    // program does not have beside it (tests/python/test_bridge.py runs it).
    req.engine = None;
    let e = HuggingFaceLoader.load(&req, "cpu").err().unwrap();
    assert!(e.message.contains("has no native implementation"), "{e}");
    assert!(e.message.contains("the Python engine that would run it through transformers is not available: its library libmymps_bridge.so is not installed"), "{e}");
    req.engine = Some("rust".into());
    let e = HuggingFaceLoader.load(&req, "cpu").err().unwrap();
    assert_eq!(e.code, mymps_core::ErrorCode::BadArgument, "{e}");
    let _ = std::fs::remove_dir_all(&d);
}
