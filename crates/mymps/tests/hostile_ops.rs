//! Hostile op calls against a real `mymps serve` (issue "No request can
//! kill or starve the server"): each case once killed the server process
//! (SIGFPE, a stack overflow), held a worker for seconds to hours, or sent
//! libtorch's C++ backtrace to the client. The server runs as a child
//! process, so that a crash is a failed assertion naming the case rather
//! than a dead test binary.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mymps::client::{Call, Caller, Client, ClientOptions};
use mymps::{DType, Error, ErrorCode, Tensor, Value};

/// `mymps serve` on an ephemeral loopback port, killed on drop.
struct Served {
    child: Child,
    addr: String,
}

impl Served {
    fn start(env: &[(&str, &str)]) -> Served {
        let bin =
            std::env::var("MYMPS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mymps").to_owned());
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--device", &common::device(), "--log", "warn"])
            .args(["--listen", "tcp://127.0.0.1:0"])
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (child, addr, _) = common::spawn_serve(&mut cmd);
        Served { child, addr }
    }

    async fn client(&self) -> Client {
        let options = ClientOptions {
            timeout: Duration::from_secs(30),
            ..ClientOptions::default()
        };
        Client::connect_with(&self.addr, options).await.unwrap()
    }

    /// Panics, naming `case`, if the server process has died; otherwise
    /// checks that `c` still gets answers.
    async fn assert_alive(&mut self, c: &Client, case: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{case}: the server died ({status})");
        }
        let x = Tensor::from_vec(vec![1.0f32, -2.0], &[2]).unwrap();
        let out = c
            .call(Call::new("neg").arg(x))
            .await
            .unwrap_or_else(|e| panic!("{case}: the server stopped answering: {e}"));
        assert_eq!(out.output().unwrap().to_vec::<f32>().unwrap(), [-1.0, 2.0]);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn expect_error(r: mymps::Result<mymps::client::Outputs>, case: &str) -> Error {
    match r {
        Ok(out) => panic!(
            "{case}: expected an error, got {:?}",
            out.tensors
                .iter()
                .map(|(k, _)| k.clone())
                .collect::<Vec<_>>()
        ),
        Err(e) => e,
    }
}

/// A 1-D tensor of `dtype` holding `values` (each cast to the dtype).
fn ints(dtype: DType, values: &[i64]) -> Tensor {
    let bytes: Vec<u8> = values
        .iter()
        .flat_map(|&v| match dtype {
            DType::UInt8 => vec![v as u8],
            DType::Int8 => (v as i8).to_le_bytes().to_vec(),
            DType::Int16 => (v as i16).to_le_bytes().to_vec(),
            DType::Int32 => (v as i32).to_le_bytes().to_vec(),
            DType::Int64 => v.to_le_bytes().to_vec(),
            other => unreachable!("{other}"),
        })
        .collect();
    Tensor::new(dtype, &[values.len()], bytes).unwrap()
}

/// The values of an integer tensor, widened to i64.
fn values(t: &Tensor) -> Vec<i64> {
    match t.dtype() {
        DType::UInt8 => t
            .to_vec::<u8>()
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect(),
        DType::Int8 => t
            .to_vec::<i8>()
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect(),
        DType::Int16 => t
            .to_vec::<i16>()
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect(),
        DType::Int32 => t
            .to_vec::<i32>()
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect(),
        DType::Int64 => t.to_vec::<i64>().unwrap(),
        other => panic!("not an integer dtype: {other}"),
    }
}

fn min_of(d: DType) -> i64 {
    match d {
        DType::Int8 => i8::MIN.into(),
        DType::Int16 => i16::MIN.into(),
        DType::Int32 => i32::MIN.into(),
        DType::Int64 => i64::MIN,
        _ => 0,
    }
}

/// The integer-dividing ops: name and extra keyword arguments.
const DIVIDING: [(&str, Option<&str>); 5] = [
    ("div", Some("trunc")),
    ("div", Some("floor")),
    ("floor_divide", None),
    ("remainder", None),
    ("fmod", None),
];

fn dividing_call(op: &str, mode: Option<&str>, x: Tensor) -> Call {
    let call = Call::new(op).arg(x);
    match mode {
        Some(m) => call.kwarg("rounding_mode", m),
        None => call,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integer_division_by_zero_and_min_by_minus_one_answer_errors() {
    let mut s = Served::start(&[]);
    let c = s.client().await;
    let signed = [DType::Int8, DType::Int16, DType::Int32, DType::Int64];
    for dtype in signed.into_iter().chain([DType::UInt8]) {
        let min = min_of(dtype);
        for (op, mode) in DIVIDING {
            let name = format!("{op}({dtype}, rounding_mode={mode:?})");
            // Division by zero: a tensor divisor, a scalar one, and a scalar
            // that becomes 0 in the input's dtype (256 in uint8/int8).
            let mut zero_divisors: Vec<(String, Call)> = vec![
                (
                    "tensor 0".into(),
                    dividing_call(op, mode, ints(dtype, &[5, 7])).arg(ints(dtype, &[1, 0])),
                ),
                (
                    "scalar 0".into(),
                    dividing_call(op, mode, ints(dtype, &[5, 7])).kwarg("other", 0),
                ),
                (
                    "scalar False".into(),
                    dividing_call(op, mode, ints(dtype, &[5, 7])).kwarg("other", false),
                ),
            ];
            if dtype != DType::Int64 {
                let wraps_to_zero = 1i64 << (dtype.itemsize() * 8);
                zero_divisors.push((
                    format!("scalar {wraps_to_zero}"),
                    dividing_call(op, mode, ints(dtype, &[5])).kwarg("other", wraps_to_zero),
                ));
            }
            for (what, call) in zero_divisors {
                let case = format!("{name} by {what}");
                let e = expect_error(c.call(call).await, &case);
                assert_eq!(e.code, ErrorCode::BadArgument, "{case}: {e}");
                assert!(e.message.contains("division by zero"), "{case}: {e}");
                s.assert_alive(&c, &case).await;
            }
            if !signed.contains(&dtype) {
                continue;
            }
            // MIN / -1: a tensor divisor, a scalar, a scalar that wraps to
            // -1, and a 0-d int64 tensor whose value wraps to -1 (the result
            // dtype of a 1-D tensor and a 0-d one is the 1-D tensor's).
            let all_ones = match dtype {
                DType::Int64 => -1,
                _ => (1i64 << (dtype.itemsize() * 8)) - 1,
            };
            let overflowing = [
                (
                    "tensor -1".to_owned(),
                    dividing_call(op, mode, ints(dtype, &[min, 6])).arg(ints(dtype, &[-1, -1])),
                ),
                (
                    "scalar -1".into(),
                    dividing_call(op, mode, ints(dtype, &[6, min])).kwarg("other", -1),
                ),
                (
                    format!("scalar {all_ones}"),
                    dividing_call(op, mode, ints(dtype, &[min])).kwarg("other", all_ones),
                ),
                (
                    format!("0-d int64 {all_ones}"),
                    dividing_call(op, mode, ints(dtype, &[min])).arg(Tensor::scalar(all_ones)),
                ),
            ];
            for (what, call) in overflowing {
                let case = format!("{name}: MIN by {what}");
                let r = c.call(call).await;
                if matches!(op, "remainder" | "fmod") {
                    // MIN % -1 is 0 (torch's answer); nothing overflows.
                    let out = r.unwrap_or_else(|e| panic!("{case}: {e}"));
                    let v = values(out.output().unwrap());
                    assert!(v.iter().all(|&x| x == 0), "{case}: {v:?}");
                } else {
                    let e = expect_error(r, &case);
                    assert_eq!(e.code, ErrorCode::BadArgument, "{case}: {e}");
                    assert!(e.message.contains("integer overflow"), "{case}: {e}");
                    assert!(e.message.contains(&format!("{min} / -1")), "{case}: {e}");
                }
                s.assert_alive(&c, &case).await;
            }
        }
    }
    // Ordinary integer divisions still give torch's answers ...
    let x = || ints(DType::Int64, &[7, -7, i64::MIN + 1]);
    let y = || ints(DType::Int64, &[2, 2, -1]);
    for (mode, want) in [("trunc", [3, -3, i64::MAX]), ("floor", [3, -4, i64::MAX])] {
        let out = c
            .call(
                Call::new("div")
                    .arg(x())
                    .arg(y())
                    .kwarg("rounding_mode", mode),
            )
            .await
            .unwrap();
        assert_eq!(values(out.output().unwrap()), want, "{mode}");
    }
    let out = c
        .call(Call::new("remainder").arg(x()).kwarg("other", 3))
        .await
        .unwrap();
    assert_eq!(values(out.output().unwrap()), [1, 2, 2]);
    // ... and so do float ones, where dividing by zero is no error.
    let f = Tensor::from_vec(vec![1.0f32, -1.0], &[2]).unwrap();
    let out = c
        .call(
            Call::new("div")
                .arg(f)
                .kwarg("other", 0)
                .kwarg("rounding_mode", "trunc"),
        )
        .await
        .unwrap();
    assert_eq!(
        out.output().unwrap().to_vec::<f32>().unwrap(),
        [f32::INFINITY, f32::NEG_INFINITY]
    );
    s.assert_alive(&c, "the end").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avg_pool_dividing_int64_by_a_divisor_override_of_minus_one() {
    let mut s = Served::start(&[]);
    let c = s.client().await;
    let pool = |op: &str, v: &[i64], shape: &[usize]| {
        let x = Tensor::new(
            DType::Int64,
            shape,
            v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
        )
        .unwrap();
        Call::new(op)
            .arg(x)
            .kwarg("kernel_size", 1)
            .kwarg("divisor_override", -1)
    };
    for (op, shape) in [
        ("avg_pool2d", &[1usize, 1, 1, 2][..]),
        ("avg_pool3d", &[1, 1, 1, 1, 2]),
    ] {
        let e = expect_error(c.call(pool(op, &[3, i64::MIN], shape)).await, op);
        assert_eq!(e.code, ErrorCode::BadArgument, "{op}: {e}");
        assert!(e.message.contains("integer overflow"), "{op}: {e}");
        s.assert_alive(&c, op).await;
        // Without MIN: torch's answer, sum / -1.
        let out = c.call(pool(op, &[3, -8], shape)).await.unwrap();
        assert_eq!(values(out.output().unwrap()), [-3, 8], "{op}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attention_with_no_heads() {
    let mut s = Served::start(&[]);
    let c = s.client().await;
    let t = |shape: &[usize]| {
        let n = shape.iter().product();
        Tensor::from_vec(vec![0.5f32; n], shape).unwrap()
    };
    for (k, v) in [
        (&[1usize, 0, 2, 8][..], &[1usize, 0, 2, 8][..]),
        (&[1, 0, 2, 8], &[1, 4, 2, 8]),
        (&[1, 4, 2, 8], &[1, 0, 2, 8]),
        (&[0, 2, 8], &[0, 2, 8]),
    ] {
        let q: &[usize] = if k.len() == 3 {
            &[4, 2, 8]
        } else {
            &[1, 4, 2, 8]
        };
        let case = format!("sdpa q {q:?} k {k:?} v {v:?}");
        let call = Call::new("scaled_dot_product_attention")
            .arg(t(q))
            .arg(t(k))
            .arg(t(v))
            .kwarg("enable_gqa", true);
        let e = expect_error(c.call(call).await, &case);
        assert_eq!(e.code, ErrorCode::BadArgument, "{case}: {e}");
        s.assert_alive(&c, &case).await;
    }
    // No heads at all, without grouping (SIGFPE in the fused CPU kernel):
    // an empty answer, as torch's reference implementation gives.
    for dtype in [DType::Float32, DType::Float64] {
        let e = |shape: &[usize]| Tensor::new(dtype, shape, Vec::<u8>::new()).unwrap();
        let call = Call::new("scaled_dot_product_attention")
            .arg(e(&[2, 0, 3, 8]))
            .arg(e(&[2, 0, 3, 8]))
            .arg(e(&[2, 0, 3, 8]))
            .kwarg("is_causal", true);
        let out = c
            .call(call)
            .await
            .unwrap_or_else(|e| panic!("no heads, {dtype}: {e}"));
        assert_eq!(out.output().unwrap().shape(), &[2, 0, 3, 8]);
        s.assert_alive(&c, "no heads").await;
    }
    // Real grouped-query attention still runs: 4 query heads over 2.
    let call = Call::new("scaled_dot_product_attention")
        .arg(t(&[1, 4, 2, 8]))
        .arg(t(&[1, 2, 2, 8]))
        .arg(t(&[1, 2, 2, 8]))
        .kwarg("enable_gqa", true);
    let out = c.call(call).await.unwrap();
    assert_eq!(out.output().unwrap().shape(), &[1, 4, 2, 8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pool1d_windows_larger_than_the_input_are_refused_at_once() {
    let mut s = Served::start(&[]);
    let c = s.client().await;
    let x = || Tensor::from_vec(vec![1.0f32, 5.0, 2.0, 4.0], &[1, 1, 4]).unwrap();
    // libtorch computes the output length in 32 bits and visits every
    // kernel position: 2^32 gave 5 outputs of garbage, 2^40 looped for
    // hours, and so did 2^41 + 1 within a padding of 2^40.
    for (kernel, dilation, padding) in [
        (1i64 << 32, 1i64, 0i64),
        (1 << 40, 1, 0),
        (1 << 62, 1, 0),
        (3, 1 << 61, 0),
        ((1 << 41) + 1, 1, 1 << 40),
    ] {
        let case = format!("max_pool1d kernel {kernel} dilation {dilation} padding {padding}");
        let t0 = Instant::now();
        let r = c
            .call(
                Call::new("max_pool1d")
                    .arg(x())
                    .kwarg("kernel_size", kernel)
                    .kwarg("stride", 1)
                    .kwarg("padding", padding)
                    .kwarg("dilation", dilation),
            )
            .await;
        let e = expect_error(r, &case);
        assert!(
            matches!(e.code, ErrorCode::BadArgument | ErrorCode::Backend),
            "{case}: {e}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "{case}: {:?}",
            t0.elapsed()
        );
        s.assert_alive(&c, &case).await;
    }
    // A window longer than the input, within the padding: torch's values.
    let out = c
        .call(
            Call::new("max_pool1d")
                .arg(x())
                .kwarg("kernel_size", 5)
                .kwarg("stride", 1)
                .kwarg("padding", 2),
        )
        .await
        .unwrap();
    assert_eq!(
        out.output().unwrap().to_vec::<f32>().unwrap(),
        [5.0, 5.0, 5.0, 5.0]
    );
    let out = c
        .call(
            Call::new("max_pool1d")
                .arg(x())
                .kwarg("kernel_size", 2)
                .kwarg("stride", 1),
        )
        .await
        .unwrap();
    assert_eq!(
        out.output().unwrap().to_vec::<f32>().unwrap(),
        [5.0, 5.0, 4.0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_power_of_i64_min_answers_at_once() {
    let mut s = Served::start(&[]);
    let c = s.client().await;
    // A permutation matrix: P^n is defined for every n (P^2 = I).
    let p = || Tensor::from_vec(vec![0.0f64, 1.0, 1.0, 0.0], &[2, 2]).unwrap();
    for n in [i64::MIN, i64::MIN + 1, -(1 << 62), i64::MAX] {
        let case = format!("matrix_power n={n}");
        let t0 = Instant::now();
        let out = c
            .call(Call::new("matrix_power").arg(p()).kwarg("n", n))
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        let want = if n % 2 == 0 {
            [1.0, 0.0, 0.0, 1.0]
        } else {
            [0.0, 1.0, 1.0, 0.0]
        };
        assert_eq!(
            out.output().unwrap().to_vec::<f64>().unwrap(),
            want,
            "{case}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "{case}: {:?}",
            t0.elapsed()
        );
        s.assert_alive(&c, &case).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_norm_of_no_channels_in_a_billion_groups_answers_at_once() {
    let mut s = Served::start(&[]);
    let c = s.client().await;
    let t0 = Instant::now();
    let x = Tensor::new(DType::Float32, &[64, 0, 2, 2], Vec::<u8>::new()).unwrap();
    let out = c
        .call(
            Call::new("group_norm")
                .arg(x)
                .kwarg("num_groups", 1i64 << 24),
        )
        .await
        .unwrap();
    assert_eq!(out.output().unwrap().shape(), &[64, 0, 2, 2]);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    s.assert_alive(&c, "group_norm").await;
}

fn long_list(n: usize, v: i64) -> Value {
    Value::List(vec![Value::Int(v); n])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_dimensions_are_refused_at_once() {
    let mut s = Served::start(&[]);
    let c = s.client().await;
    let one = || Tensor::from_vec(vec![1.0f32], &[1]).unwrap();
    let many = || Tensor::new(DType::Float32, &[1; 20_000], vec![0u8; 4]).unwrap();
    let cases: Vec<(&str, Call)> = vec![
        // 6.5 s in libtorch (quadratic in the number of dimensions).
        (
            "repeat",
            Call::new("repeat")
                .arg(one())
                .kwarg("repeats", long_list(20_000, 1)),
        ),
        (
            "tile",
            Call::new("tile")
                .arg(one())
                .kwarg("dims", long_list(20_000, 1)),
        ),
        (
            "reshape",
            Call::new("reshape")
                .arg(one())
                .kwarg("shape", long_list(20_000, 1)),
        ),
        (
            "broadcast_to",
            Call::new("broadcast_to")
                .arg(one())
                .kwarg("size", long_list(20_000, 1)),
        ),
        (
            "unflatten",
            Call::new("unflatten")
                .arg(one())
                .kwarg("dim", 0)
                .kwarg("sizes", long_list(20_000, 1)),
        ),
        // A stack overflow (SIGSEGV): libtorch rolls one dimension at a time,
        // recursively.
        (
            "roll",
            Call::new("roll")
                .arg(Tensor::from_vec(vec![0f32; 1000], &[1000]).unwrap())
                .kwarg("shifts", long_list(20_000, 1))
                .kwarg("dims", long_list(20_000, 0)),
        ),
        // A 20,000-dimensional input: each op costs ~0.6 s in libtorch.
        ("add", Call::new("add").arg(many()).kwarg("other", 1)),
        ("cumsum", Call::new("cumsum").arg(many()).kwarg("dim", 0)),
    ];
    for (case, call) in cases {
        let t0 = Instant::now();
        let e = expect_error(c.call(call).await, case);
        let took = t0.elapsed();
        assert!(
            matches!(e.code, ErrorCode::BadArgument | ErrorCode::InvalidTensor),
            "{case}: {e}"
        );
        assert!(e.message.contains("64"), "{case}: {e}");
        assert!(took < Duration::from_millis(500), "{case}: {took:?}");
        s.assert_alive(&c, case).await;
    }
    // 64 dimensions are fine.
    let out = c
        .call(
            Call::new("repeat")
                .arg(one())
                .kwarg("repeats", long_list(64, 1)),
        )
        .await
        .unwrap();
    assert_eq!(out.output().unwrap().shape(), &[1; 64]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_into_more_tensors_than_a_reply_carries_is_refused_at_once() {
    let mut s = Served::start(&[]);
    let c = s.client().await;
    let n = 1_000_000;
    let x = || Tensor::new(DType::UInt8, &[n], vec![0u8; n]).unwrap();
    let cases: Vec<(&str, Call)> = vec![
        (
            "split",
            Call::new("split")
                .arg(x())
                .kwarg("split_size_or_sections", 1),
        ),
        ("unbind", Call::new("unbind").arg(x())),
        (
            "tensor_split",
            Call::new("tensor_split")
                .arg(x())
                .kwarg("indices_or_sections", 100_000),
        ),
        (
            "chunk",
            Call::new("chunk").arg(x()).kwarg("chunks", 100_000),
        ),
    ];
    for (case, call) in cases {
        let t0 = Instant::now();
        let e = expect_error(c.call(call).await, case);
        assert_eq!(e.code, ErrorCode::BadArgument, "{case}: {e}");
        assert!(e.message.contains("65535"), "{case}: {e}");
        assert!(t0.elapsed() < Duration::from_millis(500), "{case}");
        s.assert_alive(&c, case).await;
    }
}

/// What a client may be shown of a libtorch error: its message, without
/// the C++ backtrace (addresses, the server's install paths).
fn assert_clean(e: &Error, case: &str, expected: &str) {
    let m = &e.message;
    for leak in ["frame #", "0x", "Exception raised from", ".so", "libtorch"] {
        assert!(!m.contains(leak), "{case}: {leak:?} in {m:?}");
    }
    assert!(m.len() < 300, "{case}: {} bytes: {m:?}", m.len());
    assert!(m.contains(expected), "{case}: {m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libtorch_errors_reach_clients_without_backtraces() {
    for env in [&[][..], &[("TORCH_SHOW_CPP_STACKTRACES", "1")][..]] {
        let mut s = Served::start(env);
        let c = s.client().await;
        let f32s =
            |shape: &[usize]| Tensor::from_vec(vec![1f32; shape.iter().product()], shape).unwrap();
        let complex = Tensor::new(DType::Complex64, &[2], vec![0u8; 16]).unwrap();
        let cases = [
            // An op on tensors: the error comes back through tch's Result.
            (
                "matmul",
                Call::new("matmul").arg(f32s(&[2, 2])).arg(f32s(&[3, 1])),
                "cannot be multiplied",
            ),
            // An op with a scalar argument: tch frees the scalar before it
            // reads libtorch's error and panics with the whole text.
            (
                "remainder",
                Call::new("remainder").arg(complex).kwarg("other", 2),
                "not implemented for",
            ),
            (
                "masked_fill",
                Call::new("masked_fill")
                    .arg(f32s(&[2, 2]))
                    .input(
                        "mask",
                        Tensor::new(DType::Bool, &[3], vec![1u8; 3]).unwrap(),
                    )
                    .kwarg("value", 1.0),
                "must match",
            ),
        ];
        for (case, call, expected) in cases {
            let case = format!("{case} {env:?}");
            let e = expect_error(c.call(call).await, &case);
            assert_eq!(e.code, ErrorCode::Backend, "{case}: {e}");
            assert_clean(&e, &case, expected);
            s.assert_alive(&c, &case).await;
        }
    }
}
