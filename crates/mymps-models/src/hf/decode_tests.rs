//! Generation through the native decoders, below the `Model` trait, on
//! tiny models with random weights written here: the forward passes a
//! generation runs (counted by a decoder that wraps the real one), the KV
//! cache against forward passes over the whole sequence without one, and
//! what models without a head or a tokenizer answer. (The comparison with
//! transformers' `generate` is in tests/generate.rs.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use mymps_core::ErrorCode;
use mymps_core::model::{
    Control, FinishReason, GenerateLimits, GenerateRequest, LoadRequest, ModelLoader, Prompt,
};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use super::{Arch, Architecture, Build, Config, HuggingFaceLoader, Inputs, Weights, read_weights};
use crate::generate::{
    CacheLayout, Decoder, Dims, GenerationConfig, KvCache, TextModel, TextStream, TextTokenizer,
};

const VOCAB: i64 = 40;

/// A fresh folder (one per call: the tests run in parallel).
fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("mymps-decode-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::canonicalize(&d).unwrap()
}

fn gpt2_shapes(e: i64, layers: i64, positions: i64) -> Vec<(String, Vec<i64>)> {
    let mut v = vec![
        ("transformer.wte.weight".to_owned(), vec![VOCAB, e]),
        ("transformer.wpe.weight".to_owned(), vec![positions, e]),
        ("transformer.ln_f.weight".to_owned(), vec![e]),
        ("transformer.ln_f.bias".to_owned(), vec![e]),
    ];
    for i in 0..layers {
        let p = format!("transformer.h.{i}");
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
            v.push((format!("{p}.{n}"), s));
        }
    }
    v
}

fn llama_shapes() -> Vec<(String, Vec<i64>)> {
    let mut v = vec![
        ("model.embed_tokens.weight".to_owned(), vec![VOCAB, 16]),
        ("model.norm.weight".to_owned(), vec![16]),
        ("lm_head.weight".to_owned(), vec![VOCAB, 16]),
    ];
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
    v
}

/// A model directory with random weights.
fn write(name: &str, config: serde_json::Value, shapes: &[(String, Vec<i64>)]) -> PathBuf {
    let d = scratch(name);
    std::fs::write(d.join("config.json"), config.to_string()).unwrap();
    tch::manual_seed(11);
    let ts: Vec<(String, Tensor)> = shapes
        .iter()
        .map(|(n, s)| {
            let r = Tensor::randn(s.as_slice(), (Kind::Float, Device::Cpu));
            let t = if n.contains("ln_") || n.contains("norm") {
                r * 0.1 + 1.0
            } else {
                r * 0.3
            };
            (n.clone(), t)
        })
        .collect();
    Tensor::write_safetensors(&ts, d.join("model.safetensors")).unwrap();
    d
}

fn gpt2() -> PathBuf {
    let cfg = json!({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": VOCAB,
        "n_embd": 16, "n_layer": 2, "n_head": 2, "n_positions": 32, "eos_token_id": 39});
    write("gpt2", cfg, &gpt2_shapes(16, 2, 32))
}

fn llama() -> PathBuf {
    // A sliding window shorter than the sequences, so that the cached
    // steps' window masks are exercised too.
    let cfg = json!({"model_type": "mistral", "architectures": ["MistralForCausalLM"], "vocab_size": VOCAB,
        "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 64, "sliding_window": 5,
        "eos_token_id": [38, 39]});
    write("mistral", cfg, &llama_shapes())
}

/// The architecture and generation defaults of a directory, as the loader
/// builds them.
fn build(dir: &Path) -> (Box<dyn Arch>, GenerationConfig) {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let cfg = Config { json };
    let entry = Architecture::get(&cfg.string("model_type", "").unwrap()).unwrap();
    let (map, _) = read_weights(dir).unwrap();
    let mut ws = Weights {
        map,
        prefix: entry.prefix,
        taken: BTreeSet::new(),
        params: 0,
        kind: Kind::Float,
        device: Device::Cpu,
    };
    let mut b = Build {
        cfg: &cfg,
        ws: &mut ws,
        lm_head: true,
    };
    let arch = (entry.build)(&mut b).unwrap();
    let defaults = GenerationConfig::read(&cfg.json, None).unwrap();
    (arch, defaults)
}

/// A decoder that counts the forward passes of the one it wraps.
struct Counting<'a> {
    inner: &'a dyn Decoder,
    passes: AtomicUsize,
}

impl Decoder for Counting<'_> {
    fn max_positions(&self) -> i64 {
        self.inner.max_positions()
    }
    fn layout(&self) -> CacheLayout {
        self.inner.layout()
    }
    fn dims(&self) -> Dims {
        self.inner.dims()
    }
    fn decode(
        &self,
        ids: &Tensor,
        pos: &Tensor,
        keys: &Tensor,
        cache: &mut KvCache,
    ) -> mymps_core::Result<Tensor> {
        self.passes.fetch_add(1, Ordering::SeqCst);
        self.inner.decode(ids, pos, keys, cache)
    }
}

fn text_model<'a>(d: &'a dyn Decoder, defaults: &'a GenerationConfig) -> TextModel<'a> {
    TextModel {
        decoder: d,
        tokenizer: None,
        config: defaults,
        kind: Kind::Float,
        device: Device::Cpu,
    }
}

fn prompts() -> Vec<Prompt> {
    vec![
        Prompt::Ids(vec![3, 14, 15, 9, 2, 6, 5]),
        Prompt::Ids(vec![26, 5]),
        Prompt::Ids(vec![35, 8, 9, 7]),
    ]
}

#[test]
fn a_stop_runs_no_further_forward_pass_and_the_last_token_needs_none() {
    for dir in [gpt2(), llama()] {
        let (arch, defaults) = build(&dir);
        let counting = Counting {
            inner: arch.decoder().unwrap(),
            passes: AtomicUsize::new(0),
        };
        let tm = text_model(&counting, &defaults);
        let req = GenerateRequest {
            prompts: prompts(),
            max_new_tokens: Some(12),
            ignore_eos: true,
            ..Default::default()
        };
        let mut steps = 0;
        let s = tm
            .generate(&req, &GenerateLimits::default(), &mut |_| {
                steps += 1;
                if steps == 3 {
                    Control::Stop
                } else {
                    Control::Continue
                }
            })
            .unwrap();
        assert_eq!(steps, 3);
        // The prompt's pass gave the first token, one pass each the next two.
        assert_eq!(counting.passes.load(Ordering::SeqCst), 3);
        assert_eq!(s.forward_passes, 3);
        assert!(
            s.sequences
                .iter()
                .all(|q| q.finish == FinishReason::Cancelled)
        );
        counting.passes.store(0, Ordering::SeqCst);
        let s = tm
            .generate(&req, &GenerateLimits::default(), &mut |_| Control::Continue)
            .unwrap();
        assert_eq!(counting.passes.load(Ordering::SeqCst), 12);
        assert!(s.sequences.iter().all(|q| q.ids.len() == 12));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Full forward passes (no cache) over the left-padded prompt plus the
/// generated ids, with the positions `generate` uses: the arg-max at each
/// position must be the id generated after it.
#[test]
fn cached_steps_equal_forward_passes_over_the_whole_sequence() {
    for dir in [gpt2(), llama()] {
        let (arch, defaults) = build(&dir);
        let tm = text_model(arch.decoder().unwrap(), &defaults);
        let req = GenerateRequest {
            prompts: prompts(),
            max_new_tokens: Some(10),
            ignore_eos: true,
            repetition_penalty: Some(1.0),
            ..Default::default()
        };
        let s = tm
            .generate(&req, &GenerateLimits::default(), &mut |_| Control::Continue)
            .unwrap();
        let width = 7;
        let total = width + 10;
        let mut ids = Vec::new();
        let mut mask = Vec::new();
        let mut pos = Vec::new();
        for q in &s.sequences {
            let pad = width - q.prompt_ids.len();
            ids.extend(std::iter::repeat_n(0, pad));
            ids.extend(&q.prompt_ids);
            ids.extend(&q.ids);
            mask.extend(std::iter::repeat_n(0i64, pad));
            mask.extend(std::iter::repeat_n(1i64, total - pad));
            pos.extend(std::iter::repeat_n(1i64, pad));
            pos.extend(0..(total - pad) as i64);
        }
        let t = |v: Vec<i64>| Tensor::from_slice(&v).reshape([3, total as i64]);
        let mut inputs = Inputs {
            map: BTreeMap::from([
                ("input_ids".to_owned(), t(ids.clone())),
                ("attention_mask".to_owned(), t(mask)),
                ("position_ids".to_owned(), t(pos)),
            ]),
            accepted: arch.inputs(),
        };
        let out = tch::no_grad(|| arch.forward(&mut inputs)).unwrap();
        let logits = &out.iter().find(|(n, _)| n == "logits").unwrap().1;
        let best = logits.argmax(-1, false);
        for (row, q) in s.sequences.iter().enumerate() {
            for (k, &id) in q.ids.iter().enumerate() {
                let at = (width + k - 1) as i64;
                assert_eq!(
                    best.int64_value(&[row as i64, at]),
                    id,
                    "{}: row {row}, new token {k}",
                    dir.display()
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn eos_ids_from_the_config_end_a_sequence_unless_ignored() {
    let dir = llama();
    let (arch, defaults) = build(&dir);
    assert_eq!(defaults.eos, [38, 39]);
    let tm = text_model(arch.decoder().unwrap(), &defaults);
    let base = GenerateRequest {
        prompts: prompts(),
        max_new_tokens: Some(20),
        ignore_eos: true,
        ..Default::default()
    };
    let free = tm
        .generate(&base, &GenerateLimits::default(), &mut |_| {
            Control::Continue
        })
        .unwrap();
    // The first id row 0 generates, declared an end-of-sequence id.
    let first = free.sequences[0].ids[0];
    let mut g2 = defaults.clone();
    g2.eos = vec![first];
    let tm2 = text_model(arch.decoder().unwrap(), &g2);
    let req = GenerateRequest {
        ignore_eos: false,
        ..base.clone()
    };
    let s = tm2
        .generate(&req, &GenerateLimits::default(), &mut |_| Control::Continue)
        .unwrap();
    assert_eq!(s.sequences[0].ids, [first]);
    assert_eq!(s.sequences[0].finish, FinishReason::StopId);
    for (q, f) in s.sequences.iter().zip(&free.sequences) {
        // Each row is the free run up to its first `first`, included.
        let end = f.ids.iter().position(|&i| i == first).map_or(20, |p| p + 1);
        assert_eq!(q.ids, f.ids[..end]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn models_without_a_head_or_a_tokenizer_say_so() {
    let load = |dir: &Path| {
        HuggingFaceLoader
            .load(
                &LoadRequest {
                    model_path: Some(dir.display().to_string()),
                    ..Default::default()
                },
                "cpu",
            )
            .unwrap()
    };
    let base = write(
        "gpt2-base",
        json!({"model_type": "gpt2", "architectures": ["GPT2Model"], "vocab_size": VOCAB,
            "n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 32}),
        &gpt2_shapes(16, 1, 32),
    );
    let m = load(&base);
    assert!(!m.metadata().contains_key("generate"));
    let req = GenerateRequest {
        prompts: vec![Prompt::Ids(vec![1, 2])],
        ..Default::default()
    };
    let e = m
        .generate(&req, &GenerateLimits::default(), &mut |_| Control::Continue)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unsupported, "{e}");
    assert!(
        e.message.contains("GPT2Model does not generate text"),
        "{e}"
    );
    let lm = gpt2();
    let m = load(&lm);
    assert_eq!(m.metadata()["generate"], "true");
    assert_eq!(m.metadata()["eos_token_id"], "39");
    for req in [
        GenerateRequest {
            prompts: vec![Prompt::Text("hi".into())],
            ..Default::default()
        },
        GenerateRequest {
            stop_strings: vec!["x".into()],
            ..req.clone()
        },
    ] {
        let e = m
            .generate(&req, &GenerateLimits::default(), &mut |_| Control::Continue)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Unsupported, "{e}");
        assert!(e.message.contains("no tokenizer.json"), "{e}");
    }
    assert_eq!(
        m.encode("hi", true).unwrap_err().code,
        ErrorCode::Unsupported
    );
    assert!(
        m.generate(&req, &GenerateLimits::default(), &mut |_| Control::Continue)
            .is_ok()
    );
    let _ = std::fs::remove_dir_all(&base);
    let _ = std::fs::remove_dir_all(&lm);
}

#[test]
fn generation_defaults_are_read_as_transformers_reads_them() {
    let config = json!({"eos_token_id": 2, "pad_token_id": null, "bos_token_id": 1, "top_k": 7});
    let g = GenerationConfig::read(&config, None).unwrap();
    assert_eq!(
        (g.eos.clone(), g.pad, g.bos, g.top_k),
        (vec![2], None, Some(1), 7)
    );
    assert_eq!(g.pad_id(), 2, "no pad id: the first EOS");
    assert_eq!(
        (g.do_sample, g.temperature, g.top_p, g.max_new_tokens),
        (false, 1.0, 1.0, 20)
    );
    let file =
        json!({"eos_token_id": [5, 6], "do_sample": true, "temperature": 0.6, "pad_token_id": 0});
    let g = GenerationConfig::read(&config, Some(&file)).unwrap();
    assert_eq!(
        (g.eos.clone(), g.pad, g.bos, g.top_k),
        (vec![5, 6], Some(0), Some(1), 7)
    );
    assert!(g.do_sample && g.temperature == 0.6);
    let e = GenerationConfig::read(&json!({"eos_token_id": "x"}), None).unwrap_err();
    assert!(e.message.contains("'eos_token_id' must be an id"), "{e}");
}

/// A byte-level BPE without merges, as a `tokenizer.json`: one token per
/// byte (GPT-2's byte-to-character table), so every character of more
/// than one byte spans several tokens.
fn byte_tokenizer(dir: &Path) -> TextTokenizer {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let vocab: serde_json::Map<String, serde_json::Value> = bs
        .iter()
        .zip(&cs)
        .map(|(&b, &c)| (char::from_u32(c).unwrap().to_string(), json!(b)))
        .collect();
    let t = json!({"version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 256, "content": "<eos>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []}});
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, t.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"pad_token": {"content": "<eos>"}}"#,
    )
    .unwrap();
    TextTokenizer::load(&path, Some(&dir.join("tokenizer_config.json")), |p, _| {
        Ok(std::fs::read_to_string(p).unwrap())
    })
    .unwrap()
}

#[test]
fn incremental_decoding_never_splits_a_character() {
    let dir = scratch("bytes");
    let tok = byte_tokenizer(&dir);
    assert_eq!(tok.pad(), Some(256));
    let text = "déjà vu — 東京 🦀!";
    let ids = tok.encode(text, true).unwrap();
    assert_eq!(ids.len(), text.len(), "one token per byte");
    let mut stream = TextStream::default();
    let mut pieces = Vec::new();
    for &id in ids.iter().chain(&[256]) {
        pieces.push(stream.push(&tok, id, true).unwrap());
    }
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    // Each character comes whole, with the token of its last byte.
    let whole: Vec<String> = text.chars().map(String::from).collect();
    let nonempty: Vec<&String> = pieces.iter().filter(|p| !p.is_empty()).collect();
    assert_eq!(nonempty.len(), whole.len());
    assert_eq!(pieces.concat(), text);
    assert_eq!(stream.finish(&tok, true).unwrap(), "");
    // A sequence that ends inside a character: the rest comes at the end,
    // as the whole decoding shows it.
    let mut stream = TextStream::default();
    let crab = tok.encode("a🦀", false).unwrap();
    let mut text = String::new();
    for &id in &crab[..3] {
        text.push_str(&stream.push(&tok, id, true).unwrap());
    }
    assert_eq!(text, "a");
    text.push_str(&stream.finish(&tok, true).unwrap());
    assert_eq!(text, tok.decode(&crab[..3], true).unwrap());
    assert!(text.ends_with('\u{FFFD}'));
    // Ids outside the vocabulary are refused.
    assert_eq!(
        tok.decode(&[300], true).unwrap_err().code,
        ErrorCode::BadArgument
    );
    // Ids the tokenizer does not know (a padded vocabulary's) have no text.
    assert_eq!(stream.push(&tok, 300, true).unwrap(), "");
    assert_eq!(stream.push(&tok, -1, true).unwrap(), "");
    let _ = std::fs::remove_dir_all(&dir);
}
