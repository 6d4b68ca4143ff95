//! Text generation against transformers itself: tiny random GPT-2 and
//! Llama causal LMs and a tokenizer trained for the test, made by
//! `generate_reference.py` with the project's `.venv` (transformers,
//! tokenizers); the models loaded by the `huggingface` loader and driven
//! through `Model::generate`, whose greedy ids must equal transformers'
//! `generate` exactly (one prompt, a left-padded batch of 3, a repetition
//! penalty, stop ids), and whose tokenizer must equal Python's.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mymps_core::ErrorCode;
use mymps_core::model::{
    Control, FinishReason, GenerateLimits, GenerateRequest, GenerateSummary, LoadRequest, Model,
    ModelLoader, Prompt, Step,
};
use mymps_models::hf::HuggingFaceLoader;
use serde_json::Value;

/// The reference folder, made once per test binary.
fn reference() -> &'static (PathBuf, Value) {
    static REF: OnceLock<(PathBuf, Value)> = OnceLock::new();
    REF.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let python = root.join(".venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run scripts/setup.sh (it installs transformers into .venv)",
            python.display()
        );
        let dir = std::env::temp_dir().join(format!("mymps-generate-ref-{}", std::process::id()));
        let out = std::process::Command::new(&python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/generate_reference.py"))
            .arg(&dir)
            .output()
            .expect("run generate_reference.py");
        assert!(
            out.status.success(),
            "generate_reference.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json = std::fs::read(dir.join("reference.json")).unwrap();
        (dir, serde_json::from_slice(&json).unwrap())
    })
}

fn load(name: &str) -> Box<dyn Model> {
    let (dir, _) = reference();
    let path = std::fs::canonicalize(dir.join(name)).unwrap();
    let req = LoadRequest {
        name: name.into(),
        model_type: "huggingface".into(),
        model_path: Some(path.display().to_string()),
        ..Default::default()
    };
    HuggingFaceLoader.load(&req, "cpu").unwrap()
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// Runs a request, collecting the steps.
fn run(m: &dyn Model, req: &GenerateRequest) -> (GenerateSummary, Vec<Step>) {
    let mut steps = Vec::new();
    let s = m
        .generate(req, &GenerateLimits::default(), &mut |s| {
            steps.push(s);
            Control::Continue
        })
        .unwrap();
    (s, steps)
}

fn id_prompts(v: &[Vec<i64>]) -> Vec<Prompt> {
    v.iter().cloned().map(Prompt::Ids).collect()
}

#[test]
fn greedy_ids_equal_transformers_generate() {
    let (_, r) = reference();
    let eos = r["eos"].as_i64().unwrap();
    let cases = r["generate"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for name in ["gpt2", "llama"] {
        let m = load(name);
        assert_eq!(m.metadata()["generate"], "true");
        for c in cases.iter().filter(|c| c["model"] == name) {
            let prompts: Vec<Vec<i64>> = c["prompts"].as_array().unwrap().iter().map(ids).collect();
            let want: Vec<Vec<i64>> = c["ids"].as_array().unwrap().iter().map(ids).collect();
            let stop_ids = ids(&c["stop_ids"]);
            let max_new = c["max_new_tokens"].as_u64().unwrap() as usize;
            let req = GenerateRequest {
                prompts: id_prompts(&prompts),
                max_new_tokens: Some(max_new),
                repetition_penalty: c["repetition_penalty"].as_f64(),
                stop_ids: stop_ids.clone(),
                ..Default::default()
            };
            let (s, steps) = run(&*m, &req);
            let got: Vec<Vec<i64>> = s.sequences.iter().map(|q| q.ids.clone()).collect();
            assert_eq!(got, want, "{name}, {}", c["case"]);
            // The steps carry the same ids, each row until it ends.
            for (row, q) in s.sequences.iter().enumerate() {
                assert_eq!(q.prompt_ids, prompts[row]);
                let streamed: Vec<i64> = steps.iter().filter_map(|st| st.tokens[row].id).collect();
                assert_eq!(streamed, q.ids, "{name}, {}", c["case"]);
                let last = *q.ids.last().unwrap();
                let stopped = last == eos || stop_ids.contains(&last);
                let want_finish = if stopped {
                    FinishReason::StopId
                } else {
                    FinishReason::Length
                };
                assert_eq!(q.finish, want_finish, "{name}, {}", c["case"]);
                let finish_step = steps.iter().position(|st| st.tokens[row].finish.is_some());
                assert_eq!(finish_step, Some(q.ids.len() - 1));
            }
            let longest = want.iter().map(Vec::len).max().unwrap();
            assert_eq!(s.steps, longest);
            assert_eq!(s.forward_passes, longest, "no pass after the last token");
            assert_eq!(s.seed, None);
        }
    }
}

#[test]
fn the_tokenizer_equals_python_tokenizers() {
    let (_, r) = reference();
    let m = load("gpt2");
    assert!(m.metadata()["tokenizer"].starts_with("tokenizer.json"));
    for c in r["tokenizer"].as_array().unwrap() {
        let text = c["text"].as_str().unwrap();
        let special = c["add_special_tokens"].as_bool().unwrap();
        let want = ids(&c["ids"]);
        assert_eq!(m.encode(text, special).unwrap(), want, "{text:?}");
        assert_eq!(m.decode(&want, true).unwrap(), c["decoded"], "{text:?}");
        assert_eq!(
            m.decode(&want, false).unwrap(),
            c["decoded_special"],
            "{text:?}"
        );
    }
    let e = m.decode(&[1 << 20], true).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadArgument, "{e}");
}

#[test]
fn a_text_prompt_is_its_ids_and_the_pieces_add_up_to_the_text() {
    let m = load("gpt2");
    let text = "déjà vu at the café 🦀";
    let prompt_ids = m.encode(text, true).unwrap();
    let base = GenerateRequest {
        prompts: vec![Prompt::Text(text.into())],
        max_new_tokens: Some(24),
        // Any byte may come: some steps complete no character, some bytes
        // make none at all (U+FFFD), as in the whole decoding.
        do_sample: Some(true),
        seed: Some(7),
        top_k: Some(0),
        ..Default::default()
    };
    let (a, steps) = run(&*m, &base);
    let by_ids = GenerateRequest {
        prompts: vec![Prompt::Ids(prompt_ids.clone())],
        ..base.clone()
    };
    let (b, _) = run(&*m, &by_ids);
    assert_eq!(a.sequences[0].prompt_ids, prompt_ids);
    assert_eq!(a.sequences[0].ids, b.sequences[0].ids);
    let q = &a.sequences[0];
    let pieces: String = steps.iter().map(|s| s.tokens[0].text.as_str()).collect();
    assert_eq!(Some(pieces.as_str()), q.text.as_deref());
    assert_eq!(pieces, m.decode(&q.ids, true).unwrap());
}

#[test]
fn a_stop_string_ends_its_sequence_where_it_completes() {
    let m = load("gpt2");
    let base = GenerateRequest {
        prompts: vec![Prompt::Text("The quick brown fox".into())],
        max_new_tokens: Some(16),
        ignore_eos: true,
        ..Default::default()
    };
    let (full, steps) = run(&*m, &base);
    // A stop string that the text has by the 6th step: its last 3
    // characters then.
    let upto: String = steps[..6]
        .iter()
        .map(|s| s.tokens[0].text.as_str())
        .collect();
    let stop: String = {
        let chars: Vec<char> = upto.chars().collect();
        chars[chars.len().saturating_sub(3)..].iter().collect()
    };
    assert!(!stop.is_empty(), "{steps:?}");
    let req = GenerateRequest {
        stop_strings: vec![stop.clone()],
        ..base.clone()
    };
    let (s, steps) = run(&*m, &req);
    let q = &s.sequences[0];
    assert_eq!(q.finish, FinishReason::StopString);
    let got = q.text.clone().unwrap();
    assert!(got.contains(&stop), "{got:?} {stop:?}");
    // It ended at the first step whose text holds the stop string.
    let last = &steps.last().unwrap().tokens[0];
    assert_eq!(last.finish, Some(FinishReason::StopString));
    assert!(!got[..got.len() - last.text.len()].contains(&stop));
    assert!(q.ids.len() <= 6);
    assert_eq!(q.ids[..], full.sequences[0].ids[..q.ids.len()]);
    // Stop strings need a tokenizer's text, so they are checked.
    let bad = GenerateRequest {
        stop_strings: vec![String::new()],
        ..base
    };
    let e = m
        .generate(&bad, &GenerateLimits::default(), &mut |_| Control::Continue)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadArgument, "{e}");
}

#[test]
fn seeded_sampling_is_reproducible() {
    for name in ["gpt2", "llama"] {
        let m = load(name);
        let req = |seed| GenerateRequest {
            prompts: id_prompts(&[vec![5, 6, 7], vec![8], vec![9, 10]]),
            max_new_tokens: Some(20),
            do_sample: Some(true),
            temperature: Some(1.5),
            top_k: Some(0),
            top_p: Some(0.95),
            seed,
            ignore_eos: true,
            ..Default::default()
        };
        let sample = |seed| -> Vec<Vec<i64>> {
            let (s, _) = run(&*m, &req(seed));
            assert!(s.seed.is_some());
            s.sequences.into_iter().map(|q| q.ids).collect()
        };
        let a = sample(Some(1));
        assert_eq!(a, sample(Some(1)), "{name}: same seed, same ids");
        assert_ne!(a, sample(Some(2)), "{name}: another seed, other ids");
        // Without a seed, the one chosen is reported and repeats the run.
        let (s, _) = run(&*m, &req(None));
        let again = sample(s.seed);
        assert_eq!(
            s.sequences.into_iter().map(|q| q.ids).collect::<Vec<_>>(),
            again
        );
        // Greedy ignores the generator.
        let greedy = GenerateRequest {
            do_sample: Some(false),
            temperature: None,
            top_k: None,
            top_p: None,
            ..req(Some(3))
        };
        assert_eq!(run(&*m, &greedy).0.seed, None);
    }
}

#[test]
fn stopping_after_three_steps_runs_no_further_forward_pass() {
    let m = load("llama");
    let req = GenerateRequest {
        prompts: id_prompts(&[vec![5, 6, 7], vec![8]]),
        max_new_tokens: Some(30),
        ignore_eos: true,
        ..Default::default()
    };
    let mut calls = 0;
    let s = m
        .generate(&req, &GenerateLimits::default(), &mut |st| {
            calls += 1;
            assert_eq!(st.index, calls - 1);
            if calls == 3 {
                Control::Stop
            } else {
                Control::Continue
            }
        })
        .unwrap();
    assert_eq!(calls, 3);
    assert_eq!(s.steps, 3);
    assert_eq!(s.forward_passes, 3, "the prompt's pass and two steps");
    for q in &s.sequences {
        assert_eq!(q.ids.len(), 3);
        assert_eq!(q.finish, FinishReason::Cancelled);
    }
}

#[test]
fn requests_over_the_limits_are_refused_before_they_run() {
    let m = load("llama");
    let req = GenerateRequest {
        prompts: id_prompts(&[vec![5, 6, 7], vec![8]]),
        max_new_tokens: Some(40),
        ..Default::default()
    };
    let plan = m.plan_generate(&req, &GenerateLimits::default()).unwrap();
    assert_eq!(plan.prompt_tokens, [3, 1]);
    assert_eq!(plan.max_new_tokens, 40);
    // 2 layers × K and V × batch 2 × 2 KV heads × (3 + 40 - 1) × 8 × f32.
    assert_eq!(plan.cache_bytes, 2 * 2 * 2 * 2 * 42 * 8 * 4);
    assert!(plan.peak_bytes > plan.cache_bytes);
    let refused = |limits: GenerateLimits| {
        let mut called = false;
        let e = m
            .generate(&req, &limits, &mut |_| {
                called = true;
                Control::Continue
            })
            .unwrap_err();
        assert!(!called);
        e
    };
    let tight = GenerateLimits {
        max_bytes: plan.peak_bytes - 1,
        ..Default::default()
    };
    let e = refused(tight);
    assert_eq!(e.code, ErrorCode::LimitReached, "{e}");
    assert!(e.message.contains("KV cache"), "{e}");
    let enough = GenerateLimits {
        max_bytes: plan.peak_bytes,
        ..Default::default()
    };
    m.generate(&req, &enough, &mut |_| Control::Continue)
        .unwrap();
    let e = refused(GenerateLimits {
        max_new_tokens: 39,
        ..Default::default()
    });
    assert_eq!(e.code, ErrorCode::LimitReached, "{e}");
    let e = refused(GenerateLimits {
        max_batch: 1,
        ..Default::default()
    });
    assert_eq!(e.code, ErrorCode::LimitReached, "{e}");
    // Past the model's 64 positions, or bad options: bad arguments.
    for bad in [
        GenerateRequest {
            max_new_tokens: Some(62),
            ..req.clone()
        },
        GenerateRequest {
            prompts: id_prompts(&[vec![1 << 20]]),
            ..req.clone()
        },
        GenerateRequest {
            prompts: id_prompts(&[vec![]]),
            ..req.clone()
        },
        GenerateRequest {
            prompts: vec![],
            ..req.clone()
        },
        GenerateRequest {
            temperature: Some(0.7),
            ..req.clone()
        },
        GenerateRequest {
            do_sample: Some(true),
            temperature: Some(0.0),
            ..req.clone()
        },
        GenerateRequest {
            do_sample: Some(true),
            top_p: Some(1.5),
            ..req.clone()
        },
        GenerateRequest {
            repetition_penalty: Some(-1.0),
            ..req.clone()
        },
        GenerateRequest {
            max_new_tokens: Some(0),
            ..req.clone()
        },
    ] {
        let mut called = false;
        let e = m
            .generate(&bad, &GenerateLimits::default(), &mut |_| {
                called = true;
                Control::Continue
            })
            .unwrap_err();
        assert!(!called);
        assert_eq!(e.code, ErrorCode::BadArgument, "{bad:?}: {e}");
    }
}
