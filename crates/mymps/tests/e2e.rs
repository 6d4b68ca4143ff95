//! End to end: a real server (libtorch, TCP on loopback) and the Rust client.

mod common;

use common::{randn, start};

// Tests that say what a client sees run on every transport: one test per
// transport, one shared body taking the URL scheme.
use mymps::client::{Call, Client};
use mymps::{DType, ErrorCode, Tensor};

fn f32s(v: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape).unwrap()
}

async fn four_examples(scheme: &str) {
    let (server, addr) = common::start_on(scheme, |_| {}).await;
    let c = Client::connect(&addr).await.unwrap();
    common::check_the_four_examples(&c).await;
    c.close();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dtype_round_trips_and_result_dtypes_are_torchs() {
    let (server, addr) = start().await;
    let c = Client::connect(&addr).await.unwrap();
    for d in DType::ALL {
        let n = 6 * d.itemsize();
        let bytes: Vec<u8> = (0..n)
            .map(|i| match d {
                DType::Bool => (i % 2) as u8,
                // Avoid NaN patterns, whose bits torch may canonicalise.
                DType::Float16 | DType::BFloat16 if i % 2 == 1 => 0x3c,
                _ => (i * 37 % 251) as u8,
            })
            .collect();
        let t = Tensor::new(d, &[2, 3], bytes.clone()).unwrap();
        let out = c
            .call(Call::new("reshape").arg(t).kwarg("shape", vec![3, 2]))
            .await
            .unwrap();
        let o = out.output().unwrap();
        assert_eq!(o.dtype(), d, "{d}");
        assert_eq!(o.shape(), &[3, 2]);
        assert_eq!(o.data().as_ref(), &bytes[..], "{d} bytes changed");

        // transpose returns a view; the reply must carry the transposed data.
        let t = Tensor::new(d, &[2, 3], bytes.clone()).unwrap();
        let out = c
            .call(
                Call::new("transpose")
                    .arg(t)
                    .kwarg("dim0", 0)
                    .kwarg("dim1", 1),
            )
            .await
            .unwrap();
        let o = out.output().unwrap();
        assert_eq!(o.shape(), &[3, 2]);
        let it = d.itemsize();
        for i in 0..2 {
            for j in 0..3 {
                let src = &bytes[(i * 3 + j) * it..(i * 3 + j + 1) * it];
                let dst = &o.data()[(j * 2 + i) * it..(j * 2 + i + 1) * it];
                assert_eq!(src, dst, "{d} transpose ({i},{j})");
            }
        }
    }

    // argmax answers int64, eq bool, fft complex64.
    let x = f32s(vec![0.5, 3.0, -1.0, 7.0, 2.0, 1.0], &[2, 3]);
    let out = c
        .call(Call::new("argmax").arg(x.clone()).kwarg("dim", 1))
        .await
        .unwrap();
    assert_eq!(out.output().unwrap().to_vec::<i64>().unwrap(), vec![1, 0]);
    let out = c
        .call(Call::new("eq").arg(x.clone()).kwarg("other", 3.0))
        .await
        .unwrap();
    assert_eq!(
        out.output().unwrap().to_bools().unwrap(),
        vec![false, true, false, false, false, false]
    );
    let sig = vec![1.0f32, 2.0, 0.0, -1.0];
    let out = c
        .call(Call::new("fft").arg(f32s(sig.clone(), &[4])))
        .await
        .unwrap();
    let f = out.output().unwrap();
    assert_eq!(f.dtype(), DType::Complex64);
    let f = f.to_vec::<mymps::num_complex::Complex32>().unwrap();
    for (k, z) in f.iter().enumerate() {
        let (mut re, mut im) = (0.0f64, 0.0f64);
        for (t, &v) in sig.iter().enumerate() {
            let ang = -2.0 * std::f64::consts::PI * (k * t) as f64 / 4.0;
            re += v as f64 * ang.cos();
            im += v as f64 * ang.sin();
        }
        assert!(
            (z.re as f64 - re).abs() < 1e-5 && (z.im as f64 - im).abs() < 1e-5,
            "bin {k}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_d_empty_and_strided_tensors() {
    let (server, addr) = start().await;
    let c = Client::connect(&addr).await.unwrap();
    // 0-d + 0-d
    let out = c
        .call(
            Call::new("add")
                .arg(Tensor::scalar(2.5f64))
                .arg(Tensor::scalar(0.25f64)),
        )
        .await
        .unwrap();
    let o = out.output().unwrap();
    assert_eq!(o.shape(), &[] as &[usize]);
    assert_eq!(o.to_vec::<f64>().unwrap(), vec![2.75]);
    // empty
    let e = Tensor::new(DType::Float32, &[0, 3], Vec::<u8>::new()).unwrap();
    let out = c
        .call(Call::new("sum").arg(e).kwarg("dim", 0))
        .await
        .unwrap();
    assert_eq!(out.output().unwrap().to_vec::<f32>().unwrap(), vec![0.0; 3]);
    // A transposed (column-major) operand sent without copying, and a
    // broadcast row (stride 0), give the same result as their dense forms.
    let a = randn(4 * 3, 9); // stored as 3×4, viewed as its 4×3 transpose
    let bytes = bytes::Bytes::copy_from_slice(bytemuck_cast(&a));
    let at = Tensor::with_strides(DType::Float32, &[4, 3], Some(&[1, 4]), bytes).unwrap();
    let dense = at.contiguous().unwrap();
    let b = randn(3 * 2, 10);
    let r1 = c
        .call(Call::new("matmul").arg(at).arg(f32s(b.clone(), &[3, 2])))
        .await
        .unwrap();
    let r2 = c
        .call(Call::new("matmul").arg(dense).arg(f32s(b, &[3, 2])))
        .await
        .unwrap();
    assert_eq!(
        r1.output().unwrap().to_vec::<f32>().unwrap(),
        r2.output().unwrap().to_vec::<f32>().unwrap()
    );
    let row = bytes::Bytes::copy_from_slice(bytemuck_cast(&[1.0f32, 2.0, 3.0]));
    let bcast = Tensor::with_strides(DType::Float32, &[4, 3], Some(&[0, 1]), row).unwrap();
    let out = c
        .call(Call::new("sum").arg(bcast).kwarg("dim", 0))
        .await
        .unwrap();
    assert_eq!(
        out.output().unwrap().to_vec::<f32>().unwrap(),
        vec![4.0, 8.0, 12.0]
    );
    server.shutdown().await;
}

fn bytemuck_cast(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

async fn hundreds_in_flight(scheme: &str) {
    let (server, addr) = common::start_on(scheme, |_| {}).await;
    let c = Client::connect(&addr).await.unwrap();
    common::check_300_requests_in_flight(&c).await;
    server.shutdown().await;
}

async fn typed_errors(scheme: &str) {
    let (server, addr) = common::start_on(scheme, |_| {}).await;
    let c = Client::connect(&addr).await.unwrap();
    let x = || f32s(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let cases: Vec<(Call, ErrorCode, &str)> = vec![
        (
            Call::new("frobnicate").arg(x()),
            ErrorCode::UnknownOp,
            "unknown op 'frobnicate'",
        ),
        (
            Call::new("matmul").arg(x()),
            ErrorCode::BadArgument,
            "missing required argument 'other'",
        ),
        (
            Call::new("softmax").arg(x()).kwarg("dim", "last"),
            ErrorCode::BadArgument,
            "signature: softmax(",
        ),
        (
            Call::new("softmax")
                .arg(x())
                .kwarg("dim", 0)
                .kwarg("temperature", 2.0),
            ErrorCode::BadArgument,
            "unexpected keyword argument 'temperature'",
        ),
        (
            Call::new("matmul")
                .arg(x())
                .arg(f32s(vec![1.0; 3], &[3, 1])),
            ErrorCode::Backend,
            "cannot be multiplied",
        ),
        (
            Call::new("conv2d")
                .arg(x())
                .arg(x())
                .kwarg("padding", "sideways"),
            ErrorCode::BadArgument,
            "padding must be",
        ),
    ];
    for (call, code, text) in cases {
        let e = c.call(call).await.unwrap_err();
        assert_eq!(e.code, code, "{e}");
        assert!(
            e.message.contains(text),
            "{:?} does not contain {text:?}",
            e.message
        );
        // The same connection still answers.
        let ok = c.call(Call::new("neg").arg(x())).await.unwrap();
        assert_eq!(
            ok.output().unwrap().to_vec::<f32>().unwrap(),
            vec![-1.0, -2.0, -3.0, -4.0]
        );
    }
    // describe_op names the signature; list_ops is sorted.
    let info = c.describe_op("svd").await.unwrap();
    assert!(
        info.signature
            .starts_with("svd(A: Tensor, full_matrices: bool = True)"),
        "{}",
        info.signature
    );
    let ops = c.list_ops().await.unwrap();
    assert!(ops.windows(2).all(|w| w[0] < w[1]));
    for op in [
        "matmul",
        "softmax",
        "conv2d",
        "svd",
        "add",
        "sub",
        "mul",
        "div",
        "sum",
        "mean",
        "argmax",
        "eq",
        "fft",
        "relu",
        "reshape",
        "transpose",
    ] {
        assert!(ops.iter().any(|o| o == op), "{op} missing");
    }
    let h = c.health().await.unwrap();
    assert_eq!(
        (
            h.status.as_str(),
            h.device.as_str(),
            h.torch_version.as_str()
        ),
        ("ok", common::device().as_str(), "2.11.0")
    );
    let s = c.stats().await.unwrap();
    assert!(s.cpu_count >= 1 && s.memory_total_gb > 0.0 && s.process_rss_mb > 0.0);
    server.shutdown().await;
}

async fn payload_over_the_cap(scheme: &str) {
    let (server, addr) = common::start_on(scheme, |c| c.limits.max_payload = 1 << 20).await;
    let c = Client::connect(&addr).await.unwrap();
    assert_eq!(c.welcome().max_payload, 1 << 20);
    let big = Tensor::from_vec(vec![0f32; 300_000], &[300_000]).unwrap();
    let e = c.call(Call::new("neg").arg(big)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::PayloadTooLarge);
    server.shutdown().await;
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

async fn token_auth(scheme: &str) {
    let (server, addr) =
        common::start_on(scheme, |c| c.auth_token = Some("s3cret-token".into())).await;
    let with = |token: Option<&str>| mymps::client::ClientOptions {
        token: token.map(str::to_owned),
        ..Default::default()
    };
    let e = Client::connect_with(&addr, with(None)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unauthenticated, "{e}");
    assert!(
        e.message.contains("requires an authentication token"),
        "{e}"
    );
    for wrong in ["s3cret-toke", "s3cret-token!", "S3cret-token", ""] {
        let e = Client::connect_with(&addr, with(Some(wrong)))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthenticated, "{wrong:?}: {e}");
        assert!(e.message.contains("wrong authentication token"), "{e}");
    }
    let c = Client::connect_with(&addr, with(Some("s3cret-token")))
        .await
        .unwrap();
    let out = c
        .call(Call::new("neg").arg(f32s(vec![1.0, -2.0], &[2])))
        .await
        .unwrap();
    assert_eq!(
        out.output().unwrap().to_vec::<f32>().unwrap(),
        vec![-1.0, 2.0]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_four_examples_of_the_client_contract() {
    four_examples("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_requests_in_flight_on_one_connection() {
    hundreds_in_flight("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_errors_and_the_connection_keeps_serving() {
    typed_errors("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_over_the_cap_is_refused_by_client_and_server() {
    payload_over_the_cap("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_server_refuses_missing_and_wrong_tokens_and_serves_the_right_one() {
    token_auth("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_at_once() {
    many_clients("tcp").await;
}

/// 16 clients × 50 requests, each client with several in flight: every
/// reply reaches the client and request that asked for it.
async fn many_clients(scheme: &str) {
    let (server, addr) = common::start_on(scheme, |_| {}).await;
    let mut clients = tokio::task::JoinSet::new();
    for k in 0..16i64 {
        let addr = addr.clone();
        clients.spawn(async move {
            let c = Client::connect(&addr).await.unwrap();
            let mut calls = tokio::task::JoinSet::new();
            for i in 0..50i64 {
                let c = c.clone();
                calls.spawn(async move {
                    let v = (k * 1000 + i) as f32;
                    let n = 1 + (i as usize % 7) * 1000;
                    let x = Tensor::from_vec(vec![v; n], &[n]).unwrap();
                    let y = Tensor::from_vec(vec![1.0f32; n], &[n]).unwrap();
                    let out = c.call(Call::new("add").arg(x).arg(y)).await.unwrap();
                    let got = out.output().unwrap().to_vec::<f32>().unwrap();
                    assert_eq!(got.len(), n);
                    assert!(got.iter().all(|&g| g == v + 1.0), "client {k} request {i}");
                });
            }
            while let Some(r) = calls.join_next().await {
                r.unwrap();
            }
            c.close();
            k
        });
    }
    let mut done = Vec::new();
    while let Some(r) = clients.join_next().await {
        done.push(r.unwrap());
    }
    done.sort();
    assert_eq!(done, (0..16).collect::<Vec<_>>());
    server.shutdown().await;
}

/// The same client-visible behaviour over ZeroMQ (`zmq://`).
#[cfg(feature = "zmq")]
mod over_zmq {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_four_examples_of_the_client_contract() {
        four_examples("zmq").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hundreds_of_requests_in_flight_on_one_connection() {
        hundreds_in_flight("zmq").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn typed_errors_and_the_connection_keeps_serving() {
        typed_errors("zmq").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn payload_over_the_cap_is_refused_by_client_and_server() {
        payload_over_the_cap("zmq").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_server_refuses_missing_and_wrong_tokens_and_serves_the_right_one() {
        token_auth("zmq").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_clients_at_once() {
        many_clients("zmq").await;
    }
}
