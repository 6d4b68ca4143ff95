//! Server-resident tensors through the cluster client, against real
//! servers (libtorch, TCP on loopback): a handle lives on one host and
//! every op on it runs there; tensors of two hosts in one request are
//! refused; fetch and free mix hosts; shared names; and a handle whose
//! host went away (shut down, restarted with handle numbers starting
//! again) is a clear error naming the host, never another tensor.

mod common;

use std::time::{Duration, Instant};

use common::{randn, start_with};
use mymps::client::{Call, Caller, Client};
use mymps::cluster::{Cluster, ClusterConfig, HostState};
use mymps::protocol::rpc::{Put, RegisterGraph, RunGraph, Share};
use mymps::protocol::{Graph, GraphStep, HandleInfo, Keep, Source, TensorRef};
use mymps::server::ServerHandle;
use mymps::transport::Endpoint;
use mymps::{ErrorCode, Tensor};

fn f32s(v: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape).unwrap()
}

/// A server on 127.0.0.1:`port` (0: the system chooses), retrying while a
/// port just released is still taken.
async fn serve_on(port: u16) -> (ServerHandle, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let bound = tokio::spawn(start_with(move |c| {
            c.listen = vec![Endpoint::new("tcp", "127.0.0.1", port)];
        }))
        .await;
        match bound {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot serve on port {port}: {e}"),
        }
    }
}

fn config(addrs: &[&str]) -> ClusterConfig {
    let mut c = ClusterConfig::from_addrs(addrs).unwrap();
    c.health_interval = Duration::from_millis(100);
    c.health_timeout = Duration::from_secs(5);
    c.timeout = Duration::from_secs(30);
    c
}

async fn resident(addr: &str) -> u64 {
    let c = Client::connect(addr).await.unwrap();
    let n = c.health().await.unwrap().resident_tensors;
    c.close();
    n
}

/// Waits (bounded) until the server at `addr` holds `n` resident tensors.
async fn wait_resident(addr: &str, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = resident(addr).await;
        if r == n || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Puts `t` until it lands on `host` (the cluster takes turns).
async fn put_on(cluster: &Cluster, host: &str, t: &Tensor) -> HandleInfo {
    for _ in 0..20 {
        let h = cluster.put(t.clone()).await.unwrap().remove(0);
        if cluster.handle_host(h.handle).as_deref() == Some(host) {
            return h;
        }
        cluster.free(vec![(&h).into()]).await.unwrap();
    }
    panic!("no put landed on {host}");
}

fn chain_graph() -> Graph {
    let step = |op: &str, a: Source, b: Option<Source>| GraphStep {
        op: op.into(),
        inputs: std::iter::once(("0".to_owned(), a))
            .chain(b.map(|b| ("1".to_owned(), b)))
            .collect(),
        kwargs: Default::default(),
    };
    Graph {
        steps: vec![
            step(
                "matmul",
                Source::Input("x".into()),
                Some(Source::Input("w".into())),
            ),
            step("relu", Source::Step(0, "output".into()), None),
        ],
        outputs: vec![("y".into(), Source::Step(1, "output".into()))],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_on_handles_runs_on_the_host_that_holds_them() {
    let (sa, a) = serve_on(0).await;
    let (sb, b) = serve_on(0).await;
    let cluster = Cluster::connect(config(&[&a, &b])).await.unwrap();
    let n = 32;
    let x = f32s(randn(n * n, 1), &[n, n]);
    let w = f32s(randn(n * n, 2), &[n, n]);

    // Shipped through the cluster, as ever.
    let mut shipped = x.clone();
    for _ in 0..3 {
        let y = cluster
            .call(Call::new("matmul").arg(shipped).arg(w.clone()))
            .await
            .unwrap();
        shipped = cluster
            .call(Call::new("relu").arg(y.output().unwrap().clone()))
            .await
            .unwrap()
            .output()
            .unwrap()
            .clone();
    }

    // One put keeps both on one host; the handles say which.
    let hs = cluster
        .call(Put {
            tensors: vec![("x".into(), x.clone()), ("w".into(), w.clone())],
        })
        .await
        .unwrap();
    let (hx, hw) = (hs[0].clone(), hs[1].clone());
    let home = cluster.handle_host(hx.handle).unwrap();
    assert_eq!(
        cluster.handle_host(hw.handle).as_deref(),
        Some(home.as_str())
    );
    assert!(home == a || home == b, "{home}");
    let away = if home == a { b.clone() } else { a.clone() };
    assert_eq!(
        (hx.shape.clone(), hx.dtype.as_str()),
        (vec![32, 32], "float32")
    );
    assert_eq!(wait_resident(&home, 2).await, 2);
    assert_eq!(resident(&away).await, 0);

    // Every step on handles runs at home, whatever the load elsewhere.
    let mut cur = hx.clone();
    let mut made = Vec::new();
    for _ in 0..3 {
        let y = cluster
            .call(
                Call::new("matmul")
                    .arg_ref(&cur)
                    .arg_ref(&hw)
                    .keep(Keep::All),
            )
            .await
            .unwrap();
        let y = y.handle("output").unwrap().clone();
        assert_eq!(
            cluster.handle_host(y.handle).as_deref(),
            Some(home.as_str())
        );
        cur = cluster
            .call(Call::new("relu").arg_ref(&y).keep(Keep::All))
            .await
            .unwrap()
            .handle("output")
            .unwrap()
            .clone();
        made.push(y);
        made.push(cur.clone());
    }
    let kept = cluster.fetch(vec![(&cur).into()]).await.unwrap().remove(0);
    assert!(
        kept.data() == shipped.data(),
        "kept and shipped chains differ"
    );
    assert_eq!(resident(&home).await, 2 + 6);
    assert_eq!(resident(&away).await, 0);

    // A registered graph: registered on one host, run at home (registered
    // there too when it first runs there).
    let id = cluster.call(RegisterGraph(chain_graph())).await.unwrap();
    for _ in 0..3 {
        let g = cluster
            .call(
                RunGraph::registered(id)
                    .input_ref("x", &hx)
                    .input_ref("w", &hw),
            )
            .await
            .unwrap();
        let once = cluster
            .call(Call::new("matmul").arg(x.clone()).arg(w.clone()))
            .await
            .unwrap();
        let once = cluster
            .call(Call::new("relu").arg(once.output().unwrap().clone()))
            .await
            .unwrap();
        assert!(g.get("y").unwrap().data() == once.output().unwrap().data());
    }
    let e = cluster
        .call(RunGraph::registered(id + 100).input("x", x.clone()))
        .await
        .unwrap_err();
    assert!(e.message.contains("no graph"), "{e}");

    // Tensors of two hosts in one request are refused, naming both.
    let hz = put_on(&cluster, &away, &x).await;
    let e = cluster
        .call(Call::new("add").arg_ref(&hz).arg_ref(&hw))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadArgument, "{e}");
    assert!(e.message.contains("different hosts"), "{e}");
    assert!(e.message.contains(&a) && e.message.contains(&b), "{e}");
    // fetch mixes hosts, in the order asked.
    let both = cluster
        .fetch(vec![(&hz).into(), (&cur).into(), (&hw).into()])
        .await
        .unwrap();
    assert!(both[0].data() == x.data() && both[1].data() == shipped.data());
    assert!(both[2].data() == w.data());

    // A shared name: shared on the host that holds it; another client of
    // that server sees it, and the cluster routes by it.
    let shared = cluster
        .call(Share {
            handle: hw.handle,
            name: "w".into(),
        })
        .await
        .unwrap();
    assert_eq!((shared.handle, shared.name.as_str()), (hw.handle, "w"));
    let direct = Client::connect(&home).await.unwrap();
    let back = direct
        .fetch(vec![TensorRef::Shared("w".into())])
        .await
        .unwrap();
    assert!(back[0].data() == w.data());
    let y = cluster
        .call(
            Call::new("neg")
                .arg_ref(TensorRef::Shared("w".into()))
                .keep(Keep::All),
        )
        .await
        .unwrap();
    let hy = y.handle("output").unwrap().clone();
    assert_eq!(
        cluster.handle_host(hy.handle).as_deref(),
        Some(home.as_str())
    );
    // A name shared by someone else, on the other host: looked up.
    let other = Client::connect(&away).await.unwrap();
    let ho = other
        .put(f32s(vec![5.0, 6.0], &[2]))
        .await
        .unwrap()
        .remove(0);
    other
        .call(Share {
            handle: ho.handle,
            name: "elsewhere".into(),
        })
        .await
        .unwrap();
    let got = cluster
        .call(Call::new("neg").arg_ref(TensorRef::Shared("elsewhere".into())))
        .await
        .unwrap();
    assert_eq!(
        got.output().unwrap().to_vec::<f32>().unwrap(),
        vec![-5.0, -6.0]
    );
    // fetch looks names up too, beside handles of another host.
    let hq = other.put(f32s(vec![7.0], &[1])).await.unwrap().remove(0);
    other
        .call(Share {
            handle: hq.handle,
            name: "fetched".into(),
        })
        .await
        .unwrap();
    let got = cluster
        .fetch(vec![(&hx).into(), TensorRef::Shared("fetched".into())])
        .await
        .unwrap();
    assert!(got[0].data() == x.data());
    assert_eq!(got[1].to_vec::<f32>().unwrap(), vec![7.0]);
    // describe: a handle keeps its cluster handle; a name is looked up.
    let d = cluster
        .describe(vec![(&hx).into(), TensorRef::Shared("fetched".into())])
        .await
        .unwrap();
    assert_eq!(d[0].handle, hx.handle);
    assert_eq!(
        (d[0].dtype.as_str(), d[0].shape.clone()),
        ("float32", hx.shape.clone())
    );
    assert_eq!(
        (d[1].name.as_str(), d[1].shape.clone()),
        ("fetched", vec![1])
    );
    let e = cluster
        .describe(vec![TensorRef::Shared("nowhere".into())])
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownTensor, "{e}");
    let e = cluster
        .call(Call::new("neg").arg_ref(TensorRef::Shared("nowhere".into())))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownTensor, "{e}");
    assert!(e.message.contains("no host"), "{e}");

    // Everything freed in one call, on both hosts; the servers are back to
    // their baselines.
    let mut refs: Vec<TensorRef> = made.iter().map(Into::into).collect();
    refs.extend([(&hx).into(), (&hw).into(), (&hz).into(), (&hy).into()]);
    refs.push(TensorRef::Shared("elsewhere".into()));
    refs.push(TensorRef::Shared("fetched".into()));
    let total = refs.len() as u64;
    let freed = cluster.free(refs).await.unwrap();
    assert_eq!((freed.freed, freed.unknown.len() as u64), (total, 0));
    assert_eq!(resident(&home).await, 0);
    assert_eq!(resident(&away).await, 0);
    let e = cluster.fetch(vec![(&hx).into()]).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownTensor, "{e}");
    assert!(e.message.contains(&format!("handle {}", hx.handle)), "{e}");
    let f = cluster.free(vec![(&hx).into()]).await.unwrap();
    assert_eq!((f.freed, f.unknown.len()), (0, 1));
    direct.close();
    other.close();
    cluster.close();
    sa.shutdown().await;
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_on_a_host_that_went_away_is_a_clear_error_never_another_tensor() {
    let (sa, a) = serve_on(0).await;
    let (sb, b) = serve_on(0).await;
    let cluster = Cluster::connect(config(&[&a, &b])).await.unwrap();
    let one = f32s(vec![1.0, 1.0], &[2]);
    let two = f32s(vec![2.0, 2.0], &[2]);
    // The first tensor on each server: server handle 1 on both.
    let ha = put_on(&cluster, &a, &one).await;
    let hb = put_on(&cluster, &b, &one).await;
    assert_ne!(ha.handle, hb.handle);

    // b shuts down: its handle is an error naming it; a's is untouched.
    let port_b = b.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    sb.shutdown().await;
    let e = cluster
        .call(Call::new("neg").arg_ref(&hb))
        .await
        .unwrap_err();
    assert!(
        matches!(e.code, ErrorCode::UnknownTensor | ErrorCode::Connection),
        "{e}"
    );
    assert!(e.message.contains(&b), "{e}");
    cluster
        .wait_for(Duration::from_secs(10), |s| {
            s.iter().any(|h| h.addr == b && h.state == HostState::Down)
        })
        .await
        .unwrap();
    let e = cluster.fetch(vec![(&hb).into()]).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownTensor, "{e}");
    assert!(e.message.contains(&b) && e.message.contains("down"), "{e}");
    let y = cluster.call(Call::new("neg").arg_ref(&ha)).await.unwrap();
    assert_eq!(
        y.output().unwrap().to_vec::<f32>().unwrap(),
        vec![-1.0, -1.0]
    );

    // b comes back on the same port: handle numbers start again there, and
    // its first tensor is server handle 1, as the lost one was. The old
    // handle must not name it.
    let (sb2, b2) = serve_on(port_b).await;
    assert_eq!(b2, b);
    cluster
        .wait_for(Duration::from_secs(10), |s| {
            s.iter().all(|h| h.state == HostState::Up)
        })
        .await
        .unwrap();
    let hb2 = put_on(&cluster, &b, &two).await;
    let e = cluster.fetch(vec![(&hb).into()]).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownTensor, "{e}");
    assert!(e.message.contains(&b) && e.message.contains("lost"), "{e}");
    let e = cluster
        .call(Call::new("add").arg_ref(&hb).arg_ref(&hb2))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownTensor, "{e}");
    let new = cluster.fetch(vec![(&hb2).into()]).await.unwrap().remove(0);
    assert_eq!(new.to_vec::<f32>().unwrap(), vec![2.0, 2.0]);
    // Freeing the lost handle is harmless: reported unknown, forgotten.
    let f = cluster
        .free(vec![(&hb).into(), (&ha).into(), (&hb2).into()])
        .await
        .unwrap();
    assert_eq!(f.freed, 2);
    assert_eq!(f.unknown, vec![TensorRef::Handle(hb.handle)]);
    assert_eq!(resident(&a).await, 0);
    assert_eq!(resident(&b).await, 0);
    cluster.close();
    sa.shutdown().await;
    sb2.shutdown().await;
}
