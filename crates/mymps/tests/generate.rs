//! End to end: `generate`, `encode` and `decode` against a real server
//! (libtorch on the CPU, TCP on loopback) through the Rust client, with
//! tiny random GPT-2 models written by transformers (`.venv`): the whole
//! result in one reply and streamed step by step, a cancelled stream that
//! stops the server's work while the connection goes on, and bad requests
//! that get typed errors.

mod common;

use std::path::PathBuf;

use mymps::ErrorCode;
use mymps::client::{Caller, Client, Service};
use mymps::model::{FinishReason, GenerateRequest, LoadRequest, Prompt};
use serde_json::Value;

/// The models (`common::generate::models`): the reference models of
/// `mymps-models`' own generate test and `long`, for a generation long
/// enough to cancel.
fn models() -> &'static (PathBuf, Value) {
    common::generate::models()
}

async fn server() -> (mymps::server::ServerHandle, Client) {
    let (server, addr) = common::start_with_models(mymps_models::loaders()).await;
    let client = Client::connect(&addr).await.unwrap();
    let (dir, _) = models();
    for name in ["gpt2", "long"] {
        client
            .load_model(LoadRequest {
                name: name.into(),
                model_type: "huggingface".into(),
                model_path: Some(dir.join(name).display().to_string()),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    (server, client)
}

#[tokio::test]
async fn greedy_ids_equal_transformers_in_one_reply_and_streamed() {
    let (_server, c) = server().await;
    let (prompts, max_new_tokens, want) = common::generate::greedy_case();
    let request = GenerateRequest {
        prompts,
        max_new_tokens: Some(max_new_tokens),
        ..Default::default()
    };

    let whole = c.generate("gpt2", request.clone()).await.unwrap();
    let got: Vec<Vec<i64>> = whole.sequences.iter().map(|s| s.ids.clone()).collect();
    assert_eq!(got, want);

    // Streamed: one step per frame, the same ids, then the same summary.
    let mut g = c.generate_stream("gpt2", request).await.unwrap();
    let mut steps = Vec::new();
    while let Some(step) = g.next().await {
        steps.push(step.unwrap());
    }
    let summary = g.summary().cloned().expect("a summary ends the stream");
    assert_eq!(summary, whole);
    common::generate::check_steps(&steps, &summary);
    assert!(g.next().await.is_none(), "nothing after the summary");
}

#[tokio::test]
async fn text_pieces_add_up_and_the_tokenizer_answers_over_the_wire() {
    let (_server, c) = server().await;
    let (_, r) = models();
    for case in r["tokenizer"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let special = case["add_special_tokens"].as_bool().unwrap();
        let want = common::generate::ids(&case["ids"]);
        assert_eq!(
            c.encode("gpt2", text, special).await.unwrap(),
            want,
            "{text:?}"
        );
        assert_eq!(
            c.decode("gpt2", &want, true).await.unwrap(),
            case["decoded"],
            "{text:?}"
        );
    }
    let request = GenerateRequest {
        prompts: vec![Prompt::Text("The quick brown fox".into())],
        max_new_tokens: Some(12),
        do_sample: Some(true),
        seed: Some(3),
        ..Default::default()
    };
    let mut g = c.generate_stream("gpt2", request.clone()).await.unwrap();
    let mut pieces = String::new();
    while let Some(step) = g.next().await {
        pieces.push_str(&step.unwrap().tokens[0].text);
    }
    let summary = g.summary().unwrap();
    assert_eq!(Some(pieces.as_str()), summary.sequences[0].text.as_deref());
    assert_eq!(summary.seed, Some(3));
    // The same seed gives the same tokens.
    let again = c.generate("gpt2", request).await.unwrap();
    assert_eq!(again.sequences[0].ids, summary.sequences[0].ids);
}

#[tokio::test]
async fn a_cancelled_stream_stops_the_servers_work_and_the_connection_goes_on() {
    let (_server, c) = server().await;
    const MAX: usize = 3000;
    let request = GenerateRequest {
        prompts: vec![Prompt::Ids(vec![1, 2, 3])],
        max_new_tokens: Some(MAX),
        ignore_eos: true,
        ..Default::default()
    };
    let mut g = c.generate_stream("long", request.clone()).await.unwrap();
    for _ in 0..3 {
        g.next().await.unwrap().unwrap();
    }
    g.cancel().await;
    let mut after = 0;
    while let Some(step) = g.next().await {
        step.unwrap();
        after += 1;
    }
    let s = g.summary().cloned().unwrap();
    assert_eq!(s.sequences[0].finish, FinishReason::Cancelled);
    assert_eq!(s.steps, 3 + after);
    assert_eq!(s.sequences[0].ids.len(), s.steps);
    // The server stopped: far fewer passes than the request asked for
    // (those run while the cancel travelled), and none after the summary.
    assert!(s.forward_passes < MAX / 2, "{s:?}");
    assert_eq!(s.forward_passes, s.steps);

    // Dropping a stream cancels it too, and the connection serves on.
    let mut g = c.generate_stream("long", request).await.unwrap();
    g.next().await.unwrap().unwrap();
    drop(g);
    let short = GenerateRequest {
        prompts: vec![Prompt::Ids(vec![4, 5])],
        max_new_tokens: Some(4),
        ignore_eos: true,
        ..Default::default()
    };
    let s = c.generate("long", short).await.unwrap();
    assert_eq!(s.sequences[0].ids.len(), 4);
    assert_eq!(s.sequences[0].finish, FinishReason::Length);
    c.health().await.unwrap();
}

#[tokio::test]
async fn bad_generate_requests_get_typed_errors_and_the_connection_goes_on() {
    let (_server, c) = server().await;
    let cases = [
        ("nope", GenerateRequest::default(), ErrorCode::ModelNotFound),
        ("gpt2", GenerateRequest::default(), ErrorCode::BadArgument),
        (
            "gpt2",
            GenerateRequest {
                prompts: vec![Prompt::Ids(vec![1 << 40])],
                ..Default::default()
            },
            ErrorCode::BadArgument,
        ),
        (
            "gpt2",
            GenerateRequest {
                prompts: vec![Prompt::Ids(vec![1])],
                max_new_tokens: Some(1 << 30),
                ..Default::default()
            },
            ErrorCode::LimitReached,
        ),
        (
            // No tokenizer for a text prompt.
            "long",
            GenerateRequest {
                prompts: vec![Prompt::Text("hi".into())],
                ..Default::default()
            },
            ErrorCode::Unsupported,
        ),
    ];
    for (name, request, code) in cases {
        let e = c.generate(name, request.clone()).await.unwrap_err();
        assert_eq!(e.code, code, "{name} {request:?}: {e}");
        // Streamed, the error is the stream's one reply.
        let mut g = c.generate_stream(name, request).await.unwrap();
        let e = g.next().await.unwrap().unwrap_err();
        assert_eq!(e.code, code, "{e}");
        assert!(g.next().await.is_none());
    }
    let e = c.encode("long", "hi", true).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unsupported, "{e}");
    let e = c.decode("gpt2", &[1 << 20], true).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::BadArgument, "{e}");
    c.health().await.unwrap();
    // Every reply of every stream was read: nothing is left waiting.
    assert!(!c.is_closed());
    let _ = c
        .send(mymps::protocol::Request::Health, vec![])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generate_past_the_server_s_deadline_stops_and_is_answered_timeout() {
    // A limit far below what 4,000 steps of `long` take on any machine
    // (the cancel test above stops it after 3 of them for that reason).
    let (_server, addr) = common::generate::start_on_with_models("tcp", |c| {
        c.request_timeout = Some(std::time::Duration::from_millis(300));
    })
    .await;
    let c = Client::connect(&addr).await.unwrap();
    let (dir, _) = models();
    c.load_model(LoadRequest {
        name: "long".into(),
        model_type: "huggingface".into(),
        model_path: Some(dir.join("long").display().to_string()),
        ..Default::default()
    })
    .await
    .expect("load_model has no deadline");
    const MAX: usize = 4000;
    let request = GenerateRequest {
        prompts: vec![Prompt::Ids(vec![1, 2, 3])],
        max_new_tokens: Some(MAX),
        ignore_eos: true,
        ..Default::default()
    };

    // Streamed: the steps computed before the deadline, then `Timeout` —
    // answered once the work has stopped, so the steps are all it did.
    let mut g = c.generate_stream("long", request.clone()).await.unwrap();
    let mut steps = 0;
    let error = loop {
        match g.next().await {
            Some(Ok(step)) => {
                assert_eq!(step.index, steps, "steps in order");
                steps += 1;
            }
            Some(Err(e)) => break e,
            None => panic!("the stream ended without its timeout: {:?}", g.summary()),
        }
    };
    assert_eq!(error.code, ErrorCode::Timeout, "{error}");
    assert!(steps < MAX, "{steps} steps: the generation was not stopped");
    assert!(g.next().await.is_none(), "nothing after the error");

    // In one reply: `Timeout` at the deadline, and the server's work ends
    // too (nothing left in flight but the metrics request itself).
    let e = c.generate("long", request).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Timeout, "{e}");
    let mut in_flight = u64::MAX;
    for _ in 0..300 {
        in_flight = c.metrics().await.unwrap().requests_in_flight;
        if in_flight <= 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(in_flight <= 1, "{in_flight} requests still in flight");

    // The connection goes on serving, generation included.
    let s = c
        .generate(
            "long",
            GenerateRequest {
                prompts: vec![Prompt::Ids(vec![4, 5])],
                max_new_tokens: Some(4),
                ignore_eos: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(s.sequences[0].ids.len(), 4);
    assert_eq!(s.sequences[0].finish, FinishReason::Length);
}
