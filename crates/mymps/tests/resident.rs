//! End to end: server-resident tensors (`put`, `fetch`, `free`, `share`,
//! `refs` / `keep` in `exec`, graphs) against a real server (libtorch,
//! TCP on loopback), through the Rust client.

mod common;

use std::time::{Duration, Instant};

use common::{randn, start, start_with};
use mymps::client::{Call, Caller, Client};
use mymps::protocol::rpc::{Free, Put, RegisterGraph, RunGraph, Share};
use mymps::protocol::{Graph, GraphStep, HandleInfo, Keep, Source, TensorRef};
use mymps::{DType, ErrorCode, Tensor};

fn f32s(v: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape).unwrap()
}

async fn put(c: &Client, t: Tensor) -> HandleInfo {
    c.put(t).await.unwrap().remove(0)
}

async fn resident(c: &Client) -> (u64, u64) {
    let h = c.health().await.unwrap();
    (h.resident_tensors, h.resident_bytes)
}

/// Waits (bounded) until the server holds `n` resident tensors.
async fn wait_resident(c: &Client, n: u64) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = resident(c).await;
        if r.0 == n || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The chain of the benchmark: 4 × (matmul by `w`, relu).
fn chain_graph() -> Graph {
    let mut steps = Vec::new();
    let mut x = Source::Input("x".into());
    for i in 0..4u32 {
        steps.push(GraphStep {
            op: "matmul".into(),
            inputs: [
                ("0".to_owned(), x.clone()),
                ("1".to_owned(), Source::Input("w".into())),
            ]
            .into(),
            kwargs: Default::default(),
        });
        steps.push(GraphStep {
            op: "relu".into(),
            inputs: [("0".to_owned(), Source::Step(2 * i, "output".into()))].into(),
            kwargs: Default::default(),
        });
        x = Source::Step(2 * i + 1, "output".into());
    }
    Graph {
        steps,
        outputs: vec![("y".into(), x)],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_kept_on_the_server_gives_the_bytes_of_the_chain_shipped() {
    let (server, addr) = start().await;
    let c = Client::connect(&addr).await.unwrap();
    let n = 64;
    let x = f32s(randn(n * n, 1), &[n, n]);
    let w = f32s(randn(n * n, 2), &[n, n]);

    // Shipped: every step sends its input and gets its result back.
    let mut shipped = x.clone();
    for _ in 0..4 {
        let y = c
            .call(Call::new("matmul").arg(shipped).arg(w.clone()))
            .await
            .unwrap();
        shipped = c
            .call(Call::new("relu").arg(y.output().unwrap().clone()))
            .await
            .unwrap()
            .output()
            .unwrap()
            .clone();
    }

    // Kept: one upload each, every step on handles, one download.
    let hx = put(&c, x.clone()).await;
    let hw = put(&c, w.clone()).await;
    assert_eq!(
        (hx.dtype.as_str(), hx.shape.as_slice()),
        ("float32", &[64u64, 64][..])
    );
    assert_eq!(hx.device, common::device());
    let mut cur = hx.clone();
    let mut made = Vec::new();
    for _ in 0..4 {
        let y = c
            .call(
                Call::new("matmul")
                    .arg_ref(&cur)
                    .arg_ref(&hw)
                    .keep(Keep::All),
            )
            .await
            .unwrap();
        assert!(y.tensors.is_empty(), "kept results are not sent");
        let y = y.handle("output").unwrap().clone();
        let r = c
            .call(Call::new("relu").arg_ref(&y).keep(Keep::All))
            .await
            .unwrap();
        made.push(y);
        cur = r.handle("output").unwrap().clone();
        made.push(cur.clone());
    }
    let kept = c.fetch(vec![(&cur).into()]).await.unwrap().remove(0);
    assert_eq!(kept.shape(), shipped.shape());
    assert!(
        kept.data() == shipped.data(),
        "kept and shipped chains differ"
    );

    // One request: the same chain as a graph, inline and registered.
    let run = RunGraph::inline(chain_graph())
        .input("x", x.clone())
        .input_ref("w", &hw);
    let g = c.call(run).await.unwrap();
    assert!(g.get("y").unwrap().data() == shipped.data(), "inline graph");
    let id = c.call(RegisterGraph(chain_graph())).await.unwrap();
    for _ in 0..3 {
        let g = c
            .call(
                RunGraph::registered(id)
                    .input_ref("x", &hx)
                    .input_ref("w", &hw),
            )
            .await
            .unwrap();
        assert!(
            g.get("y").unwrap().data() == shipped.data(),
            "registered graph"
        );
    }
    // A graph's output kept.
    let g = c
        .call(
            RunGraph::registered(id)
                .input_ref("x", &hx)
                .input_ref("w", &hw)
                .keep(Keep::All),
        )
        .await
        .unwrap();
    let hy = g.handle("y").unwrap().clone();
    let y = c.fetch(vec![(&hy).into()]).await.unwrap().remove(0);
    assert!(y.data() == shipped.data());

    // Everything made is freed in one request; the budget is back to zero.
    let (count, bytes) = resident(&c).await;
    assert_eq!(count, 2 + 8 + 1);
    assert_eq!(bytes, 11 * 64 * 64 * 4);
    let m = c.metrics().await.unwrap();
    assert_eq!(m.resident_tensors, count);
    assert!(m.memory_budget_used_bytes >= bytes, "{m:?}");
    let mut refs: Vec<TensorRef> = made.iter().map(Into::into).collect();
    refs.extend([(&hx).into(), (&hw).into(), (&hy).into()]);
    let freed = c.call(Free { refs }).await.unwrap();
    assert_eq!((freed.freed, freed.unknown.len()), (11, 0));
    assert_eq!(resident(&c).await, (0, 0));
    assert_eq!(c.metrics().await.unwrap().memory_budget_used_bytes, 0);
    // A freed handle is a typed error; the connection goes on.
    let e = c.call(Call::new("neg").arg_ref(&hx)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownTensor, "{e}");
    assert!(e.message.contains(&format!("handle {}", hx.handle)), "{e}");
    c.health().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dtype_is_kept_and_fetched_byte_for_byte() {
    let (server, addr) = start().await;
    let c = Client::connect(&addr).await.unwrap();
    for dtype in DType::ALL {
        let n = 7 * 3;
        let bytes: Vec<u8> = (0..n * dtype.itemsize())
            .map(|i| match dtype {
                DType::Bool => (i % 2) as u8,
                // Finite, non-NaN floats: small positive bytes.
                _ => (i % 61) as u8,
            })
            .collect();
        let t = Tensor::new(dtype, &[7, 3], bytes.clone()).unwrap();
        let h = put(&c, t).await;
        assert_eq!(h.dtype, dtype.name());
        let back = c.fetch(vec![(&h).into()]).await.unwrap().remove(0);
        assert_eq!((back.dtype(), back.shape()), (dtype, &[7usize, 3][..]));
        assert_eq!(&back.data()[..], &bytes[..], "{dtype}");
        // An op on the handle, kept: the same dtype and bytes as shipped.
        let kept = c
            .call(
                Call::new("transpose")
                    .arg_ref(&h)
                    .kwarg("dim0", 0)
                    .kwarg("dim1", 1)
                    .keep(Keep::All),
            )
            .await
            .unwrap();
        let hk = kept.handle("output").unwrap();
        assert_eq!(hk.shape, vec![3, 7]);
        let k = c.fetch(vec![hk.into()]).await.unwrap().remove(0);
        let shipped = c
            .call(
                Call::new("transpose")
                    .arg(Tensor::new(dtype, &[7, 3], bytes.clone()).unwrap())
                    .kwarg("dim0", 0)
                    .kwarg("dim1", 1),
            )
            .await
            .unwrap();
        let s = shipped.output().unwrap();
        assert_eq!(
            k.contiguous().unwrap().data(),
            s.contiguous().unwrap().data(),
            "{dtype}"
        );
        c.call(Free {
            refs: vec![(&h).into(), hk.into()],
        })
        .await
        .unwrap();
    }
    assert_eq!(resident(&c).await, (0, 0));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_belong_to_their_connection_and_go_with_it() {
    let (server, addr) = start().await;
    let a = Client::connect(&addr).await.unwrap();
    let b = Client::connect(&addr).await.unwrap();
    let big = f32s(randn(1 << 20, 3), &[1024, 1024]);
    let ha = put(&a, big.clone()).await;
    let hs = put(&a, f32s(vec![1.0, 2.0, 3.0], &[3])).await;
    assert_eq!(wait_resident(&b, 2).await, (2, (4 << 20) + 12));
    // Another connection's handle is refused, and cannot be freed.
    let e = b.call(Call::new("neg").arg_ref(&ha)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownTensor, "{e}");
    assert!(e.message.contains("another connection"), "{e}");
    let f = b.free(vec![(&ha).into()]).await.unwrap();
    assert_eq!(
        (f.freed, f.unknown),
        (0, vec![TensorRef::Handle(ha.handle)])
    );
    // Shared under a name: every connection may use it, and it outlives
    // the connection that made it.
    let shared = a
        .call(Share {
            handle: hs.handle,
            name: "weights".into(),
        })
        .await
        .unwrap();
    assert_eq!(shared.name, "weights");
    let e = a
        .call(Share {
            handle: ha.handle,
            name: "weights".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadArgument, "{e}");
    let by_name = TensorRef::Shared("weights".into());
    let y = b
        .call(Call::new("neg").arg_ref(by_name.clone()))
        .await
        .unwrap();
    assert_eq!(
        y.output().unwrap().to_vec::<f32>().unwrap(),
        vec![-1.0, -2.0, -3.0]
    );
    // The connection closes: its own handle is freed, the shared one stays.
    a.close();
    drop(a);
    assert_eq!(wait_resident(&b, 1).await, (1, 12));
    let back = b.fetch(vec![by_name.clone()]).await.unwrap().remove(0);
    assert_eq!(back.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
    let f = b.free(vec![by_name.clone()]).await.unwrap();
    assert_eq!(f.freed, 1);
    assert_eq!(resident(&b).await, (0, 0));
    let e = b.fetch(vec![by_name]).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownTensor, "{e}");
    assert_eq!(b.metrics().await.unwrap().memory_budget_used_bytes, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_give_typed_errors_and_the_connection_goes_on() {
    let (server, addr) = start_with(|c| {
        c.resident.per_connection = 3;
        c.resident.per_connection_bytes = 1 << 20;
    })
    .await;
    let c = Client::connect(&addr).await.unwrap();
    let small = || f32s(vec![1.0; 4], &[4]);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(put(&c, small()).await);
    }
    let e = c.put(small()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::LimitReached, "{e}");
    assert!(e.message.contains("at most 3"), "{e}");
    // A kept result counts too: refused, and nothing is left behind.
    let e = c
        .call(Call::new("neg").arg_ref(&held[0]).keep(Keep::All))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::LimitReached, "{e}");
    assert_eq!(resident(&c).await.0, 3);
    let h = held.pop().unwrap();
    // Bytes: a tensor over the connection's byte cap.
    c.free(vec![(&h).into()]).await.unwrap();
    let e = c
        .put(f32s(vec![0.0; 300_000], &[300_000]))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::LimitReached, "{e}");
    assert!(e.message.contains("bytes"), "{e}");
    // Still serving, the same connection.
    let y = c.call(Call::new("neg").arg(small())).await.unwrap();
    assert_eq!(y.output().unwrap().to_vec::<f32>().unwrap(), vec![-1.0; 4]);
    assert_eq!(resident(&c).await.0, 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_sent_before_a_put_makes_room_for_it_without_waiting_for_its_reply() {
    // One resident tensor per connection: each put needs the free sent
    // just before it (not yet answered) to have run first.
    let (server, addr) = start_with(|c| c.resident.per_connection = 1).await;
    let c = Client::connect(&addr).await.unwrap();
    let mut h = put(&c, f32s(vec![1.0; 4], &[4])).await;
    for i in 0..50 {
        let free = c.free(vec![(&h).into()]);
        let next = c.put(f32s(vec![i as f32; 4], &[4]));
        let (freed, put) = tokio::join!(free, next);
        assert_eq!(freed.unwrap().freed, 1, "round {i}");
        h = put.unwrap_or_else(|e| panic!("round {i}: {e}")).remove(0);
    }
    assert_eq!(resident(&c).await.0, 1);
    let got = c.fetch(vec![(&h).into()]).await.unwrap();
    assert_eq!(got[0].to_vec::<f32>().unwrap(), vec![49.0; 4]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_tells_a_handle_or_a_shared_name_what_it_is() {
    let (server, addr) = start().await;
    let a = Client::connect(&addr).await.unwrap();
    let b = Client::connect(&addr).await.unwrap();
    let x = put(&a, f32s(vec![1.0; 6], &[2, 3])).await;
    let y = put(&a, Tensor::from_vec(vec![1i64, 2], &[2]).unwrap()).await;
    let shared = a
        .call(Share {
            handle: y.handle,
            name: "ids".into(),
        })
        .await
        .unwrap();
    let got = a
        .describe(vec![(&x).into(), TensorRef::Shared("ids".into())])
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].handle, got[0].name.as_str()), (x.handle, ""));
    assert_eq!(
        (got[0].dtype.as_str(), got[0].shape.as_slice()),
        ("float32", &[2u64, 3][..])
    );
    assert_eq!(got[0].device, x.device);
    assert_eq!(
        (got[1].handle, got[1].name.as_str()),
        (shared.handle, "ids")
    );
    assert_eq!(
        (got[1].dtype.as_str(), got[1].shape.as_slice()),
        ("int64", &[2u64][..])
    );
    // Another connection: the shared name yes, the handle no.
    let by_name = b
        .describe(vec![TensorRef::Shared("ids".into())])
        .await
        .unwrap();
    assert_eq!(by_name, vec![got[1].clone()]);
    for r in [
        (&x).into(),
        TensorRef::Shared("nope".into()),
        TensorRef::Handle(1 << 40),
    ] {
        let e = b.describe(vec![r]).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownTensor, "{e}");
    }
    assert_eq!(b.health().await.unwrap().status, "ok");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_is_checked_whole_and_errors_name_the_step() {
    let (server, addr) = start().await;
    let c = Client::connect(&addr).await.unwrap();
    let x = f32s(randn(16, 4), &[4, 4]);
    let step = |op: &str, inputs: Vec<(&str, Source)>| GraphStep {
        op: op.into(),
        inputs: inputs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        kwargs: Default::default(),
    };
    let input = |n: &str| Source::Input(n.into());
    let out = |i: u32| Source::Step(i, "output".into());
    let check = |g: Graph, code: ErrorCode, needle: &'static str| {
        let c = c.clone();
        let x = x.clone();
        async move {
            let e = c
                .call(RunGraph::inline(g).input("x", x).keep(Keep::All))
                .await
                .unwrap_err();
            assert_eq!(e.code, code, "{e}");
            assert!(e.message.contains(needle), "{needle:?} not in {e}");
        }
    };
    // An unknown op, a wrong argument, a reference forward, to a result a
    // step does not have: refused before anything runs.
    let g = |steps| Graph {
        steps,
        outputs: vec![("y".into(), out(1))],
    };
    check(
        g(vec![
            step("neg", vec![("0", input("x"))]),
            step("frobnicate", vec![("0", out(0))]),
        ]),
        ErrorCode::UnknownOp,
        "step 1 (frobnicate)",
    )
    .await;
    check(
        g(vec![
            step("neg", vec![("0", input("x"))]),
            step("neg", vec![("weight", out(0))]),
        ]),
        ErrorCode::BadArgument,
        "step 1 (neg)",
    )
    .await;
    check(
        g(vec![
            step("neg", vec![("0", out(1))]),
            step("neg", vec![("0", out(0))]),
        ]),
        ErrorCode::BadArgument,
        "step 0 (neg): refers to step 1",
    )
    .await;
    check(
        g(vec![
            step("neg", vec![("0", input("x"))]),
            step("neg", vec![("0", Source::Step(0, "1".into()))]),
        ]),
        ErrorCode::BadArgument,
        "result '1' of step 0",
    )
    .await;
    // A step that fails as it runs (shapes) is named too.
    let y = f32s(randn(15, 5), &[3, 5]);
    let e = c
        .call(
            RunGraph::inline(Graph {
                steps: vec![
                    step("relu", vec![("0", input("x"))]),
                    step("matmul", vec![("0", out(0)), ("1", input("y"))]),
                ],
                outputs: vec![("z".into(), out(1))],
            })
            .input("x", x.clone())
            .input("y", y),
        )
        .await
        .unwrap_err();
    assert!(e.message.starts_with("step 1 (matmul): "), "{e}");
    // Inputs missing or unknown.
    let e = c
        .call(RunGraph::inline(g(vec![
            step("neg", vec![("0", input("x"))]),
            step("neg", vec![("0", out(0))]),
        ])))
        .await
        .unwrap_err();
    assert!(e.message.contains("input 'x' is not given"), "{e}");
    // Nothing of those graphs was kept, and the connection goes on.
    assert_eq!(resident(&c).await, (0, 0));
    let e = c
        .call(RunGraph::registered(77).input("x", x))
        .await
        .unwrap_err();
    assert!(e.message.contains("no graph 77"), "{e}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_handles_are_freed_in_one_request() {
    let (server, addr) = start().await;
    let c = Client::connect(&addr).await.unwrap();
    let mut handles = Vec::new();
    // 100 puts of 100 tensors each.
    for i in 0..100 {
        let put = Put {
            tensors: (0..100)
                .map(|j| (j.to_string(), f32s(vec![(i * 100 + j) as f32], &[1])))
                .collect(),
        };
        handles.extend(c.call(put).await.unwrap());
    }
    assert_eq!(handles.len(), 10_000);
    assert_eq!(resident(&c).await, (10_000, 40_000));
    let last = c.fetch(vec![(&handles[9_999]).into()]).await.unwrap();
    assert_eq!(last[0].to_vec::<f32>().unwrap(), vec![9_999.0]);
    let f = c
        .free(handles.iter().map(Into::into).collect())
        .await
        .unwrap();
    assert_eq!(f.freed, 10_000);
    assert_eq!(resident(&c).await, (0, 0));
    server.shutdown().await;
}
