//! End to end: a real server (libtorch, TCP on loopback) and the Rust
//! client, for what is the client's own. What a client sees over every
//! transport (the contract, dtypes, shapes, requests in flight, errors,
//! caps, tokens, large tensors) is `conformance.rs`.

mod common;

use common::{randn, start};
use mymps::client::{Call, Caller, Client};
use mymps::{ErrorCode, Tensor};

fn f32s(v: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_a_timeout_error_and_the_client_survives_it() {
    let (server, addr) = start().await;
    let opts = mymps::client::ClientOptions {
        timeout: std::time::Duration::from_millis(20),
        ..Default::default()
    };
    let c = Client::connect_with(&addr, opts).await.unwrap();
    // Work that takes well over 20 ms: large matmuls (larger on a GPU).
    let n = if common::device() == "cpu" {
        1500
    } else {
        4096
    };
    let big = f32s(randn(n * n, 11), &[n, n]);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (c, big) = (c.clone(), big.clone());
        set.spawn(async move { c.call(Call::new("matmul").arg(big.clone()).arg(big)).await });
    }
    let mut timeouts = 0;
    while let Some(r) = set.join_next().await {
        if let Err(e) = r.unwrap() {
            assert_eq!(e.code, ErrorCode::Timeout, "{e}");
            timeouts += 1;
        }
    }
    assert!(timeouts > 0, "no request timed out");
    // The same client still works once the server is free; late replies to
    // timed-out requests are dropped, not delivered to later requests.
    // (Bounded retries: other tests share this machine's cores.)
    let mut answered = None;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        match c
            .call(Call::new("neg").arg(f32s(vec![1.0, 2.0], &[2])))
            .await
        {
            Ok(out) => {
                answered = Some(out);
                break;
            }
            Err(e) => assert_eq!(e.code, ErrorCode::Timeout, "{e}"),
        }
    }
    let out = answered.expect("the client answered again within 10 s");
    assert_eq!(
        out.output().unwrap().to_vec::<f32>().unwrap(),
        vec![-1.0, -2.0]
    );
    server.shutdown().await;
}
