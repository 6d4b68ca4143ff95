//! Text generation on the Python engine (`mymps-bridge`), through
//! transformers' own `generate`: tiny random causal LMs of architectures
//! the native engine does not cover (`gpt_neox` with a tokenizer trained
//! for the test, `opt` without one), made by `bridge_generate_reference.py`
//! with the project's `.venv`, loaded with `engine = "python"` and driven
//! through `Model::generate`: greedy ids equal transformers' `generate`
//! run in that script (a text prompt; a left-padded batch of 3 with a
//! repetition penalty), seeded sampling equals `torch.manual_seed(seed)`
//! then `generate`, the steps add up to the summary, `Control::Stop` after
//! 3 steps stops it (3 forward passes, `Cancelled`), stop ids and strings
//! end their sequences, and bad options, limits and missing tokenizers are
//! typed errors.
//!
//! Needs the engine library built first: `cargo build -p mymps-bridge`
//! (this test finds `libmymps_bridge.so` beside its own target folder's
//! artifacts and names it in `MYMPS_BRIDGE`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mymps_core::ErrorCode;
use mymps_core::model::{
    Control, FinishReason, GenerateLimits, GenerateRequest, GenerateSummary, LoadRequest, Model,
    Prompt, Step,
};
use serde_json::Value;

/// The reference folder, made once per test binary; the engine library
/// found and named for the launcher.
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
        // target/<profile>/deps/<this test> → target/<profile>.
        let exe = std::env::current_exe().unwrap();
        let lib = exe
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .join("libmymps_bridge.so");
        assert!(
            lib.is_file(),
            "{} is missing: build the Python engine first (cargo build -p mymps-bridge)",
            lib.display()
        );
        let built = lib.metadata().unwrap().modified().unwrap();
        for src in ["lib.rs", "bridge.py"] {
            let p = root.join("crates/mymps-bridge/src").join(src);
            assert!(
                p.metadata().unwrap().modified().unwrap() <= built,
                "{} is older than {}: rebuild it (cargo build -p mymps-bridge)",
                lib.display(),
                p.display()
            );
        }
        // SAFETY: set once, before the launcher (the only reader) starts the
        // engine, under this OnceLock; no other thread of this test binary
        // writes the environment.
        unsafe { std::env::set_var("MYMPS_BRIDGE", &lib) };
        let dir =
            std::env::temp_dir().join(format!("mymps-bridge-generate-{}", std::process::id()));
        let out = std::process::Command::new(&python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bridge_generate_reference.py"))
            .arg(&dir)
            .output()
            .expect("run bridge_generate_reference.py");
        assert!(
            out.status.success(),
            "bridge_generate_reference.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json = std::fs::read(dir.join("reference.json")).unwrap();
        (dir, serde_json::from_slice(&json).unwrap())
    })
}

/// The models loaded so far, by name.
type Loaded = std::sync::Mutex<Vec<(String, &'static dyn Model)>>;

/// One model of the reference folder on the Python engine, loaded once.
fn model(name: &str) -> &'static dyn Model {
    static MODELS: OnceLock<Loaded> = OnceLock::new();
    let (dir, _) = reference();
    let mut models = MODELS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some((_, m)) = models.iter().find(|(n, _)| n == name) {
        return *m;
    }
    let path = std::fs::canonicalize(dir.join(name)).unwrap();
    let req = LoadRequest {
        name: name.into(),
        model_type: "huggingface".into(),
        model_path: Some(path.display().to_string()),
        engine: Some("python".into()),
        ..Default::default()
    };
    let m: &'static dyn Model = Box::leak(mymps_models::bridge::load(&req, "cpu").unwrap());
    assert_eq!(m.metadata()["engine"], "python");
    models.push((name.to_owned(), m));
    m
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

/// The steps' ids and texts, row by row, equal the summary's, and each
/// row's finish comes at its last step.
fn check_steps_add_up(s: &GenerateSummary, steps: &[Step]) {
    assert_eq!(s.steps, steps.len());
    for (i, step) in steps.iter().enumerate() {
        assert_eq!(step.index, i);
        assert_eq!(step.tokens.len(), s.sequences.len());
    }
    for (row, seq) in s.sequences.iter().enumerate() {
        let got: Vec<i64> = steps.iter().filter_map(|st| st.tokens[row].id).collect();
        assert_eq!(got, seq.ids, "row {row}");
        let text: String = steps
            .iter()
            .map(|st| st.tokens[row].text.as_str())
            .collect();
        assert_eq!(
            Some(text),
            seq.text.clone().or(Some(String::new())),
            "row {row}"
        );
        let last = &steps[seq.ids.len() - 1].tokens[row];
        if seq.finish != FinishReason::Cancelled {
            assert_eq!(last.finish, Some(seq.finish), "row {row}");
        }
    }
}

#[test]
fn greedy_ids_equal_transformers_generate() {
    let (_, r) = reference();
    let m = model("neox");
    assert_eq!(m.metadata()["generate"], "true");
    let neox = &r["neox"];
    // A text prompt: the tokenizer's ids, then transformers' greedy ids.
    let req = GenerateRequest {
        prompts: vec![Prompt::Text(neox["prompt"].as_str().unwrap().into())],
        max_new_tokens: Some(12),
        ..Default::default()
    };
    let (s, steps) = run(m, &req);
    check_steps_add_up(&s, &steps);
    let seq = &s.sequences[0];
    assert_eq!(seq.prompt_ids, ids(&neox["prompt_ids"]));
    assert_eq!(seq.ids, ids(&neox["greedy_text_ids"]));
    assert_eq!(seq.text.as_deref(), neox["greedy_text"].as_str());
    assert_eq!(seq.finish, FinishReason::Length);
    assert_eq!((s.steps, s.forward_passes, s.seed), (12, 12, None));
    let plan = m.plan_generate(&req, &GenerateLimits::default()).unwrap();
    assert_eq!(plan.prompt_tokens, vec![seq.prompt_ids.len()]);
    assert_eq!(plan.max_new_tokens, 12);
    assert_eq!(plan.cache_bytes, s.cache_bytes);
    // 2 layers × (k + v) × 4 heads × 8 dims × (10 + 12) positions × 4 bytes.
    assert_eq!(plan.cache_bytes, 2 * 2 * 4 * 8 * 22 * 4);
    assert!(plan.peak_bytes > plan.cache_bytes);
    // Not under what transformers' generate left in its cache.
    assert!(plan.cache_bytes >= neox["cache_bytes"].as_u64().unwrap());

    // A left-padded batch of id prompts with a repetition penalty.
    let rows: Vec<Vec<i64>> = neox["batch"].as_array().unwrap().iter().map(ids).collect();
    let req = GenerateRequest {
        prompts: rows.iter().cloned().map(Prompt::Ids).collect(),
        max_new_tokens: Some(10),
        repetition_penalty: Some(1.3),
        ..Default::default()
    };
    let (s, steps) = run(m, &req);
    check_steps_add_up(&s, &steps);
    let want: Vec<Vec<i64>> = neox["batch_penalty_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    for (row, seq) in s.sequences.iter().enumerate() {
        assert_eq!(seq.prompt_ids, rows[row]);
        assert_eq!(seq.ids, want[row], "row {row}");
    }

    // A model without a tokenizer: ids in, ids out, no text.
    let m = model("opt");
    let req = GenerateRequest {
        prompts: vec![Prompt::Ids(ids(&r["opt"]["prompt_ids"]))],
        max_new_tokens: Some(15),
        ignore_eos: true,
        ..Default::default()
    };
    let (s, steps) = run(m, &req);
    check_steps_add_up(&s, &steps);
    assert_eq!(s.sequences[0].ids, ids(&r["opt"]["greedy_ids"]));
    assert_eq!(s.sequences[0].text, None);
}

#[test]
fn seeded_sampling_equals_transformers_and_repeats() {
    let (_, r) = reference();
    let neox = &r["neox"];
    let m = model("neox");
    let req = GenerateRequest {
        prompts: vec![Prompt::Text(neox["prompt"].as_str().unwrap().into())],
        max_new_tokens: Some(10),
        do_sample: Some(true),
        temperature: Some(0.9),
        top_k: Some(40),
        seed: neox["seed"].as_u64(),
        ignore_eos: true,
        ..Default::default()
    };
    let (a, _) = run(m, &req);
    let (b, _) = run(m, &req);
    assert_eq!(a.seed, neox["seed"].as_u64());
    assert_eq!(a.sequences[0].ids, ids(&neox["sampled_ids"]));
    assert_eq!(a.sequences, b.sequences);
    // Without a seed one is chosen, and passing it back repeats the run.
    let fresh = GenerateRequest {
        seed: None,
        ..req.clone()
    };
    let (c, _) = run(m, &fresh);
    let seed = c.seed.expect("a sampled run reports its seed");
    let (d, _) = run(
        m,
        &GenerateRequest {
            seed: Some(seed),
            ..req
        },
    );
    assert_eq!(c.sequences, d.sequences);
}

#[test]
fn seeded_runs_side_by_side_repeat() {
    let (_, r) = reference();
    let neox = &r["neox"];
    let m = model("neox");
    let seeded = GenerateRequest {
        prompts: vec![Prompt::Text(neox["prompt"].as_str().unwrap().into())],
        max_new_tokens: Some(10),
        do_sample: Some(true),
        temperature: Some(0.9),
        top_k: Some(40),
        seed: neox["seed"].as_u64(),
        ignore_eos: true,
        ..Default::default()
    };
    // Seeded runs and unseeded ones, greedy ones and forward passes at
    // once on one model: every seeded run gets transformers' ids.
    let want = ids(&neox["sampled_ids"]);
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..4)
            .map(|i| {
                let req = match i % 2 {
                    0 => seeded.clone(),
                    _ => GenerateRequest {
                        seed: None,
                        ..seeded.clone()
                    },
                };
                s.spawn(move || (i, run(m, &req).0))
            })
            .collect();
        let greedy = s.spawn(|| {
            run(
                m,
                &GenerateRequest {
                    prompts: vec![Prompt::Ids(vec![5, 6, 7])],
                    max_new_tokens: Some(8),
                    ..Default::default()
                },
            )
        });
        for h in runs {
            let (i, summary) = h.join().unwrap();
            if i % 2 == 0 {
                assert_eq!(summary.sequences[0].ids, want, "run {i}");
            }
        }
        assert_eq!(greedy.join().unwrap().0.sequences[0].ids.len(), 8);
    });
}

#[test]
fn stopping_after_three_steps_stops_transformers() {
    let (_, r) = reference();
    let m = model("neox");
    let rows: Vec<Vec<i64>> = r["neox"]["batch"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    let req = GenerateRequest {
        prompts: rows.into_iter().map(Prompt::Ids).collect(),
        max_new_tokens: Some(30),
        ignore_eos: true,
        ..Default::default()
    };
    let mut steps = Vec::new();
    let s = m
        .generate(&req, &GenerateLimits::default(), &mut |step| {
            steps.push(step);
            if steps.len() == 3 {
                Control::Stop
            } else {
                Control::Continue
            }
        })
        .unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!((s.steps, s.forward_passes), (3, 3));
    for seq in &s.sequences {
        assert_eq!(seq.finish, FinishReason::Cancelled);
        assert_eq!(seq.ids.len(), 3);
    }
    check_steps_add_up(&s, &steps);
}

#[test]
fn stop_ids_and_stop_strings_end_their_sequences() {
    let (_, r) = reference();
    let neox = &r["neox"];
    let m = model("neox");
    let greedy = ids(&neox["greedy_text_ids"]);
    let prompt = Prompt::Text(neox["prompt"].as_str().unwrap().into());
    // A stop id: the third greedy token ends it (kept as its last).
    let req = GenerateRequest {
        prompts: vec![prompt.clone(), prompt.clone()],
        max_new_tokens: Some(12),
        stop_ids: vec![greedy[2]],
        ..Default::default()
    };
    let (s, steps) = run(m, &req);
    check_steps_add_up(&s, &steps);
    for seq in &s.sequences {
        assert_eq!(seq.ids, greedy[..3]);
        assert_eq!(seq.finish, FinishReason::StopId);
    }
    assert_eq!(s.steps, 3);
    // A stop string: the first token whose text completes it ends it.
    let text = neox["greedy_text"].as_str().unwrap();
    let stop: String = text
        .chars()
        .filter(|c| c.is_ascii_alphabetic())
        .take(1)
        .collect();
    assert!(!stop.is_empty(), "{text:?}");
    let req = GenerateRequest {
        prompts: vec![prompt],
        max_new_tokens: Some(12),
        stop_strings: vec![stop.clone()],
        ..Default::default()
    };
    let (s, steps) = run(m, &req);
    check_steps_add_up(&s, &steps);
    let seq = &s.sequences[0];
    assert_eq!(seq.finish, FinishReason::StopString);
    let t = seq.text.as_deref().unwrap();
    assert!(t.ends_with(&stop) || t.contains(&stop), "{t:?}");
    assert!(greedy.starts_with(&seq.ids) && seq.ids.len() < greedy.len());
}

#[test]
fn encode_and_decode_use_the_tokenizer() {
    let (_, r) = reference();
    let neox = &r["neox"];
    let m = model("neox");
    let prompt = neox["prompt"].as_str().unwrap();
    let got = m.encode(prompt, true).unwrap();
    assert_eq!(got, ids(&neox["prompt_ids"]));
    assert_eq!(m.decode(&got, true).unwrap(), prompt);
    let e = m.decode(&[100_000], true).unwrap_err();
    assert_eq!(e.code, ErrorCode::BadArgument, "{e}");
    let e = model("opt").encode("hello", true).unwrap_err();
    assert_eq!(e.code, ErrorCode::Unsupported, "{e}");
}

#[test]
fn bad_options_and_limits_are_typed_errors() {
    let m = model("neox");
    let ok = GenerateRequest {
        prompts: vec![Prompt::Ids(vec![5, 6, 7])],
        max_new_tokens: Some(4),
        ..Default::default()
    };
    let limits = GenerateLimits::default();
    let cases: Vec<(GenerateRequest, ErrorCode, &str)> = vec![
        (
            GenerateRequest {
                temperature: Some(0.7),
                ..ok.clone()
            },
            ErrorCode::BadArgument,
            "only apply when sampling",
        ),
        (
            GenerateRequest {
                do_sample: Some(true),
                temperature: Some(-1.0),
                ..ok.clone()
            },
            ErrorCode::BadArgument,
            "temperature",
        ),
        (
            GenerateRequest {
                do_sample: Some(true),
                top_p: Some(f64::NAN),
                ..ok.clone()
            },
            ErrorCode::BadArgument,
            "top_p",
        ),
        (
            GenerateRequest {
                max_new_tokens: Some(0),
                ..ok.clone()
            },
            ErrorCode::BadArgument,
            "max_new_tokens",
        ),
        (
            GenerateRequest {
                prompts: vec![Prompt::Ids(vec![5, 100_000])],
                ..ok.clone()
            },
            ErrorCode::BadArgument,
            "outside the vocabulary",
        ),
        (
            GenerateRequest {
                prompts: vec![],
                ..ok.clone()
            },
            ErrorCode::BadArgument,
            "at least one prompt",
        ),
        (
            GenerateRequest {
                max_new_tokens: Some(100),
                ..ok.clone()
            },
            ErrorCode::BadArgument,
            "positions",
        ),
        (
            GenerateRequest {
                stop_strings: vec![String::new()],
                ..ok.clone()
            },
            ErrorCode::BadArgument,
            "stop strings",
        ),
        (
            GenerateRequest {
                max_new_tokens: Some(5000),
                ..ok.clone()
            },
            ErrorCode::LimitReached,
            "at most 4096",
        ),
        (
            GenerateRequest {
                prompts: vec![Prompt::Ids(vec![5]); 65],
                ..ok.clone()
            },
            ErrorCode::LimitReached,
            "at most 64",
        ),
    ];
    for (req, code, text) in cases {
        for e in [
            m.plan_generate(&req, &limits).unwrap_err(),
            m.generate(&req, &limits, &mut |_| Control::Continue)
                .unwrap_err(),
        ] {
            assert_eq!(e.code, code, "{req:?}: {e}");
            assert!(e.message.contains(text), "{req:?}: {e}");
        }
    }
    // Over the byte budget: refused before it runs.
    let tight = GenerateLimits {
        max_bytes: 1000,
        ..limits
    };
    let mut called = false;
    let e = m
        .generate(&ok, &tight, &mut |_| {
            called = true;
            Control::Continue
        })
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::LimitReached, "{e}");
    assert!(!called);
    // Text needs a tokenizer.
    let e = model("opt")
        .generate(
            &GenerateRequest {
                prompts: vec![Prompt::Text("hello".into())],
                ..Default::default()
            },
            &limits,
            &mut |_| Control::Continue,
        )
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unsupported, "{e}");
    // The model serves on after all of it.
    assert_eq!(run(m, &ok).0.sequences[0].ids.len(), 4);
}
