//! Hostile huggingface model directories (issue 22, "no request can kill
//! or starve the server"): config sizes that would drive huge allocations
//! or loops must be refused, with the key and its bound named, before
//! anything is allocated for them.

use std::path::{Path, PathBuf};

use mymps_core::ErrorCode;
use mymps_core::model::{LoadRequest, ModelLoader};
use mymps_models::hf::HuggingFaceLoader;
use serde_json::json;
use tch::{Device, Kind, Tensor};

/// A fresh folder under the system's temporary one.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mymps-hostile-hf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn hf_load(dir: &Path) -> mymps_core::Result<Box<dyn mymps_core::model::Model>> {
    let req = LoadRequest {
        name: "m".into(),
        model_type: "huggingface".into(),
        model_path: Some(std::fs::canonicalize(dir).unwrap().display().to_string()),
        ..Default::default()
    };
    HuggingFaceLoader.load(&req, "cpu")
}

/// A model directory with `config` and a one-tensor `model.safetensors`.
fn hf_dir(name: &str, config: &serde_json::Value) -> PathBuf {
    let d = scratch(name);
    std::fs::write(d.join("config.json"), config.to_string()).unwrap();
    let t = Tensor::zeros([2, 2], (Kind::Float, Device::Cpu));
    Tensor::write_safetensors(&[("x", &t)], d.join("model.safetensors")).unwrap();
    d
}

fn hf_err(name: &str, config: serde_json::Value) -> String {
    let d = hf_dir(name, &config);
    let r = hf_load(&d);
    let _ = std::fs::remove_dir_all(&d);
    let e = r.map(|_| ()).expect_err("a hostile config must be refused");
    assert_eq!(e.code, ErrorCode::Model, "{e}");
    e.message
}

const MODEL_TYPES: &[&str] = &[
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "gpt2",
    "llama",
    "mistral",
    "qwen2",
    "vit",
];

#[test]
fn hf_layer_counts_of_2_pow_31_are_refused() {
    for mt in MODEL_TYPES {
        let key = match *mt {
            "distilbert" => "n_layers",
            "gpt2" => "n_layer",
            _ => "num_hidden_layers",
        };
        let mut cfg = json!({"model_type": mt, key: 2147483648i64});
        if *mt == "qwen2" {
            cfg["use_sliding_window"] = json!(true);
            cfg["sliding_window"] = json!(4);
        }
        let m = hf_err("layers", cfg);
        assert!(m.contains(key), "{mt}: {m}");
        assert!(m.contains("at most"), "{mt}: {m}");
    }
}

#[test]
fn hf_sizes_past_their_bounds_are_refused() {
    let huge = 1i64 << 31;
    for (mt, key) in [
        ("bert", "hidden_size"),
        ("bert", "num_attention_heads"),
        ("bert", "intermediate_size"),
        ("bert", "vocab_size"),
        ("bert", "max_position_embeddings"),
        ("bert", "type_vocab_size"),
        ("distilbert", "dim"),
        ("distilbert", "n_heads"),
        ("distilbert", "hidden_dim"),
        ("gpt2", "n_embd"),
        ("gpt2", "n_head"),
        ("gpt2", "n_positions"),
        ("gpt2", "n_inner"),
        ("llama", "hidden_size"),
        ("llama", "intermediate_size"),
        ("llama", "num_key_value_heads"),
        ("llama", "head_dim"),
        ("llama", "vocab_size"),
        ("vit", "image_size"),
        ("vit", "patch_size"),
        ("vit", "num_channels"),
    ] {
        let m = hf_err("sizes", json!({"model_type": mt, key: huge}));
        assert!(m.contains(key) && m.contains("at most"), "{mt} {key}: {m}");
    }
}

#[test]
fn hf_configs_that_claim_more_layers_than_the_weights_are_refused() {
    for mt in MODEL_TYPES {
        let key = match *mt {
            "distilbert" => "n_layers",
            "gpt2" => "n_layer",
            _ => "num_hidden_layers",
        };
        let m = hf_err("claims", json!({"model_type": mt, key: 1000}));
        assert!(
            m.contains(&format!("{key} = 1000")) && m.contains("0 layers"),
            "{mt}: {m}"
        );
    }
}

#[test]
fn an_oversized_config_json_is_refused() {
    let d = scratch("big-config");
    let pad = " ".repeat(17 << 20);
    std::fs::write(
        d.join("config.json"),
        format!("{{\"model_type\": \"bert\"{pad}}}"),
    )
    .unwrap();
    let r = hf_load(&d);
    let _ = std::fs::remove_dir_all(&d);
    let m = r.map(|_| ()).unwrap_err().message;
    assert!(m.contains("config.json") && m.contains("16777216"), "{m}");
}

#[test]
fn an_index_naming_50000_shards_is_refused_quickly() {
    // Each shard named once (deduplicating them used to be quadratic).
    let d = scratch("shards");
    std::fs::write(
        d.join("config.json"),
        json!({"model_type": "bert"}).to_string(),
    )
    .unwrap();
    let map: serde_json::Map<String, serde_json::Value> = (0..50_000)
        .map(|i| (format!("w{i}"), json!(format!("model-{i:06}.safetensors"))))
        .collect();
    let index = json!({ "weight_map": map });
    std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let start = std::time::Instant::now();
    let r = hf_load(&d);
    let _ = std::fs::remove_dir_all(&d);
    let m = r.map(|_| ()).unwrap_err().message;
    assert!(
        m.contains("shard 'model-000000.safetensors'") && m.contains("missing"),
        "{m}"
    );
    assert!(start.elapsed().as_secs() < 5, "{:?}", start.elapsed());
}
