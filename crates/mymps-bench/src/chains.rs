//! Remote tensors (issue 16): chains of 8 ops on one server, four ways in
//! the same run, against local tch on the same device.
//!
//! - **shipped**: every op sends its inputs and gets its result back (a
//!   plain `exec` per step, as before handles existed);
//! - **kept**: one `put` of the input and the weight, every step on handles
//!   with `keep`, one `fetch` of the last result; each step's input freed
//!   once the next result is kept (sent without waiting for the reply),
//!   the rest at the end (all of it timed);
//! - **graph**: the chain registered once as a graph and run by id, inputs
//!   as data (one request), or as handles (`put`, `run_graph`, `free`);
//! - **local**: the same ops in tch in this process (on a thread of its
//!   own, as the server's kernels run on worker threads) on the same device; on
//!   CUDA with one host-to-device upload of the input and the weight and one
//!   download of the result, synchronized.
//!
//! The ways run interleaved, one of each per iteration, so that a noisy
//! machine weighs on all of them alike. Every result of the kept and graph
//! ways must equal the shipped one byte for byte, or the run fails (once
//! its tables and JSON are out).
//!
//! Also: an add 4x4 on handles (kept) against the same add shipped, its
//! p50 next to the small-op round trip p50 and the kernel's, and each
//! chain op on handles against the round trip plus its kernel.

use std::collections::BTreeMap;
use std::time::Instant;

use indicatif::ProgressBar;
use mymps::Tensor;
use mymps::client::{Call, Caller, Client};
use mymps::protocol::rpc::{Put, RegisterGraph, RunGraph};
use mymps::protocol::{Graph, GraphStep, HandleInfo, Keep, Source, TensorRef};
use serde_json::{Value, json};

use crate::{Args, Target, summary, sync};

/// A chain of ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chain {
    /// 4 x (matmul by the weight, relu).
    MatmulRelu,
    /// Eight element-wise ops, four of them with the weight.
    Elementwise,
}

impl Chain {
    fn name(self) -> &'static str {
        match self {
            Chain::MatmulRelu => "matmul_relu",
            Chain::Elementwise => "elementwise",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Chain::MatmulRelu => "4x(matmul w, relu)",
            Chain::Elementwise => "8 element-wise",
        }
    }

    /// The steps: the op, and whether its second operand is the weight
    /// (else it has one operand, the previous result).
    fn steps(self) -> &'static [(&'static str, bool)] {
        match self {
            Chain::MatmulRelu => &[
                ("matmul", true),
                ("relu", false),
                ("matmul", true),
                ("relu", false),
                ("matmul", true),
                ("relu", false),
                ("matmul", true),
                ("relu", false),
            ],
            Chain::Elementwise => &[
                ("mul", true),
                ("add", true),
                ("tanh", false),
                ("sigmoid", false),
                ("mul", true),
                ("sub", true),
                ("sin", false),
                ("relu", false),
            ],
        }
    }

    /// The distinct ops, in order of first use.
    fn ops(self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = Vec::new();
        for (op, _) in self.steps() {
            if !v.contains(op) {
                v.push(op);
            }
        }
        v
    }

    /// The chain as a graph of inputs `x` and `w` and output `y`.
    fn graph(self) -> Graph {
        let mut steps = Vec::new();
        let mut cur = Source::Input("x".into());
        for (i, &(op, with_w)) in self.steps().iter().enumerate() {
            let mut inputs = BTreeMap::from([("0".to_owned(), cur.clone())]);
            if with_w {
                inputs.insert("1".to_owned(), Source::Input("w".into()));
            }
            steps.push(GraphStep {
                op: op.into(),
                inputs,
                kwargs: Default::default(),
            });
            cur = Source::Step(i as u32, "output".into());
        }
        Graph {
            steps,
            outputs: vec![("y".into(), cur)],
        }
    }

    /// The weight's scale: matmul's keeps the values of order one through
    /// four layers (variance 1/3 in, 1/3 out).
    fn weight_scale(self, side: usize) -> f32 {
        match self {
            Chain::MatmulRelu => (3.0 / side as f32).sqrt(),
            Chain::Elementwise => 1.0,
        }
    }
}

/// The op `op` in local tch, as the server's kernel runs it.
fn local_op(op: &str, a: &tch::Tensor, w: &tch::Tensor) -> tch::Tensor {
    match op {
        "matmul" => a.matmul(w),
        "relu" => a.relu(),
        "mul" => a * w,
        "add" => a + w,
        "sub" => a - w,
        "tanh" => a.tanh(),
        "sigmoid" => a.sigmoid(),
        "sin" => a.sin(),
        other => unreachable!("no local op {other}"),
    }
}

/// One case: a chain on `side` x `side` float32.
struct Case {
    chain: Chain,
    side: usize,
    iters: usize,
    warmup: usize,
    /// Whether the graph is also run on handles (skipped where a round of
    /// the chain takes seconds).
    graph_handles: bool,
}

/// What this section runs.
pub(crate) struct ChainPlan {
    cases: Vec<Case>,
    /// Calls of the small-op comparison (add 4x4, shipped and on handles).
    n_small: usize,
    /// Runs of each op alone, for its kernel time on CUDA.
    kernel_iters: usize,
}

impl ChainPlan {
    /// `quick`: one iteration on 512^2 (the kept path exercised and checked,
    /// in seconds). A CUDA server: many iterations of 1024^2 and 4096^2. A
    /// CPU server: iterations sized for a 2-core machine (one of the matmul
    /// chain on 4096^2, whose round takes tens of seconds there).
    pub(crate) fn new(quick: bool, cuda: bool) -> ChainPlan {
        let case = |chain, side, iters, warmup, graph_handles| Case {
            chain,
            side,
            iters,
            warmup,
            graph_handles,
        };
        use Chain::*;
        if quick {
            return ChainPlan {
                cases: vec![
                    case(MatmulRelu, 512, 1, 0, true),
                    case(Elementwise, 512, 1, 0, true),
                ],
                n_small: 200,
                kernel_iters: 3,
            };
        }
        if cuda {
            ChainPlan {
                cases: vec![
                    case(MatmulRelu, 1024, 30, 3, true),
                    case(Elementwise, 1024, 30, 3, true),
                    case(MatmulRelu, 4096, 10, 2, true),
                    case(Elementwise, 4096, 10, 2, true),
                ],
                n_small: 2000,
                kernel_iters: 20,
            }
        } else {
            ChainPlan {
                cases: vec![
                    case(MatmulRelu, 1024, 7, 1, true),
                    case(Elementwise, 1024, 15, 1, true),
                    case(MatmulRelu, 4096, 1, 0, false),
                    case(Elementwise, 4096, 3, 1, true),
                ],
                n_small: 2000,
                kernel_iters: 0,
            }
        }
    }
}

/// Uniform values in [-scale, scale) from a fixed seed (xorshift64*).
fn uniform(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let r = s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40; // 24 bits
            (r as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Counters of /proc/vmstat (Linux; system-wide): direct compaction
/// stalls and transparent huge page faults. Fresh large allocations that
/// must compact memory first are one cost a CPU server pays where local
/// code reuses what it just freed.
fn vmstat() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/vmstat").ok()?;
    let get = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(' ')?.trim().parse().ok())
    };
    Some((get("compact_stall")?, get("thp_fault_alloc")?))
}

/// Median; the mean of the middle two for an even count.
fn median_of(mut s: Vec<f64>) -> f64 {
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// One chain run through the server.
struct Run {
    total: f64,
    /// Each step's round trip (kept and shipped).
    steps: Vec<f64>,
    /// Each step's time on the server, as its reply says (`elapsed_s`).
    server: Vec<f64>,
    put: f64,
    fetch: f64,
    free: f64,
    out: Tensor,
}

impl Run {
    fn of(total: f64, out: Tensor) -> Run {
        Run {
            total,
            steps: Vec::new(),
            server: Vec::new(),
            put: 0.0,
            fetch: 0.0,
            free: 0.0,
            out,
        }
    }
}

fn err(what: &str) -> impl Fn(mymps::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

async fn shipped(c: Client, chain: Chain, x: Tensor, w: Tensor) -> Result<Run, String> {
    let t0 = Instant::now();
    let mut cur = x;
    let mut steps = Vec::with_capacity(8);
    let mut server = Vec::with_capacity(8);
    for &(op, with_w) in chain.steps() {
        let t = Instant::now();
        let mut call = Call::new(op).arg(cur);
        if with_w {
            call = call.arg(w.clone());
        }
        let out = c.call(call).await.map_err(err("shipped chain"))?;
        cur = out.output().map_err(err("shipped chain"))?.clone();
        steps.push(t.elapsed().as_secs_f64());
        server.push(out.elapsed_s);
    }
    let mut run = Run::of(t0.elapsed().as_secs_f64(), cur);
    run.steps = steps;
    run.server = server;
    Ok(run)
}

/// `put` of x and w in one request.
async fn put_xw(c: &Client, x: Tensor, w: Tensor) -> Result<(HandleInfo, HandleInfo), String> {
    let mut hs = c
        .call(Put {
            tensors: vec![("x".into(), x), ("w".into(), w)],
        })
        .await
        .map_err(err("put"))?;
    if hs.len() != 2 {
        return Err(format!("put of 2 tensors gave {} handles", hs.len()));
    }
    let hw = hs.pop().expect("two");
    Ok((hs.pop().expect("two"), hw))
}

async fn free_all(c: &Client, refs: Vec<TensorRef>) -> Result<(), String> {
    let n = refs.len() as u64;
    let f = c.free(refs).await.map_err(err("free"))?;
    if f.freed != n || !f.unknown.is_empty() {
        return Err(format!(
            "free of {n} handles freed {} ({} unknown)",
            f.freed,
            f.unknown.len()
        ));
    }
    Ok(())
}

async fn kept(c: Client, chain: Chain, x: Tensor, w: Tensor) -> Result<Run, String> {
    let shape: Vec<u64> = x.shape().iter().map(|&d| d as u64).collect();
    let t0 = Instant::now();
    let (hx, hw) = put_xw(&c, x, w).await?;
    let put = t0.elapsed().as_secs_f64();
    if hx.shape != shape || hx.dtype != "float32" {
        return Err(format!(
            "put gave a handle of {} {:?}, sent float32 {shape:?}",
            hx.dtype, hx.shape
        ));
    }
    // Each step's input is freed once the next result is kept, as a
    // careful caller (or Python's garbage collector) does: a request sent
    // without waiting for its reply, which the chain does not wait for
    // either until its end.
    let mut frees = Vec::new();
    let mut cur = hx;
    let mut steps = Vec::with_capacity(8);
    let mut server = Vec::with_capacity(8);
    for &(op, with_w) in chain.steps() {
        let t = Instant::now();
        let mut call = Call::new(op).arg_ref(&cur);
        if with_w {
            call = call.arg_ref(&hw);
        }
        let out = c
            .call(call.keep(Keep::All))
            .await
            .map_err(err("kept chain"))?;
        if !out.tensors.is_empty() {
            return Err(format!("kept {op}: its result came back as data"));
        }
        let prev = std::mem::replace(
            &mut cur,
            out.handle("output")
                .ok_or_else(|| format!("kept {op}: no handle 'output' in the reply"))?
                .clone(),
        );
        steps.push(t.elapsed().as_secs_f64());
        server.push(out.elapsed_s);
        let c = c.clone();
        frees.push(tokio::spawn(async move {
            free_all(&c, vec![(&prev).into()]).await
        }));
    }
    let t = Instant::now();
    let y = c
        .fetch(vec![(&cur).into()])
        .await
        .map_err(err("fetch"))?
        .pop()
        .ok_or("fetch gave no tensor")?;
    let fetch = t.elapsed().as_secs_f64();
    let t = Instant::now();
    free_all(&c, vec![(&cur).into(), (&hw).into()]).await?;
    for f in frees {
        f.await.map_err(|e| format!("free task: {e}"))??;
    }
    let free = t.elapsed().as_secs_f64();
    Ok(Run {
        total: t0.elapsed().as_secs_f64(),
        steps,
        server,
        put,
        fetch,
        free,
        out: y,
    })
}

async fn graph_data(c: Client, id: u64, x: Tensor, w: Tensor) -> Result<Run, String> {
    let t0 = Instant::now();
    let out = c
        .call(RunGraph::registered(id).input("x", x).input("w", w))
        .await
        .map_err(err("graph (data)"))?;
    let y = out.get("y").ok_or("graph (data): no output 'y'")?.clone();
    Ok(Run::of(t0.elapsed().as_secs_f64(), y))
}

async fn graph_handles(c: Client, id: u64, x: Tensor, w: Tensor) -> Result<Run, String> {
    let t0 = Instant::now();
    let (hx, hw) = put_xw(&c, x, w).await?;
    let put = t0.elapsed().as_secs_f64();
    let out = c
        .call(
            RunGraph::registered(id)
                .input_ref("x", &hx)
                .input_ref("w", &hw),
        )
        .await
        .map_err(err("graph (handles)"))?;
    let y = out
        .get("y")
        .ok_or("graph (handles): no output 'y'")?
        .clone();
    let t = Instant::now();
    free_all(&c, vec![(&hx).into(), (&hw).into()]).await?;
    let free = t.elapsed().as_secs_f64();
    let mut run = Run::of(t0.elapsed().as_secs_f64(), y);
    run.put = put;
    run.free = free;
    Ok(run)
}

/// The thread that runs every local case: the server runs its kernels on
/// worker threads, and so does this baseline. (On the 2-core VM, libtorch's
/// two-thread kernels called from a process's main thread took ~8 ms each
/// whatever their size, against 1.2-1.5 ms from another thread: its
/// OpenMP team there wakes late.)
struct LocalThread {
    tx: Option<std::sync::mpsc::Sender<Box<dyn FnOnce() + Send>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalThread {
    fn new() -> Result<LocalThread, String> {
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let thread = std::thread::Builder::new()
            .name("local-tch".into())
            .spawn(move || {
                for f in rx {
                    f();
                }
            })
            .map_err(|e| format!("cannot start the local thread: {e}"))?;
        Ok(LocalThread {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Runs `f` on the thread and waits for its result.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (rtx, rrx) = std::sync::mpsc::sync_channel(1);
        self.tx
            .as_ref()
            .expect("open until dropped")
            .send(Box::new(move || {
                let _ = rtx.send(f());
            }))
            .expect("local thread alive");
        rrx.recv().expect("local thread answered")
    }
}

impl Drop for LocalThread {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The chain in local tch: on CUDA from host tensors (one upload of x and
/// w, one download of the result, synchronized); on the CPU on the tensors
/// as they are. Per-step times only mean kernel times on the CPU.
fn local_chain(
    chain: Chain,
    xh: &tch::Tensor,
    wh: &tch::Tensor,
    dev: tch::Device,
) -> (f64, Vec<f64>, tch::Tensor) {
    let _g = tch::no_grad_guard();
    sync(dev);
    let t0 = Instant::now();
    let (x, w) = if dev == tch::Device::Cpu {
        (xh.shallow_clone(), wh.shallow_clone())
    } else {
        (xh.to(dev), wh.to(dev))
    };
    let mut cur = x;
    let mut steps = Vec::with_capacity(8);
    for &(op, _) in chain.steps() {
        let t = Instant::now();
        cur = local_op(op, &cur, &w);
        steps.push(t.elapsed().as_secs_f64());
    }
    let y = cur.to(tch::Device::Cpu);
    sync(dev);
    (t0.elapsed().as_secs_f64(), steps, y)
}

/// Each op of `chain` alone on the device, synchronized: its kernel time.
fn local_kernels(
    chain: Chain,
    xh: &tch::Tensor,
    wh: &tch::Tensor,
    dev: tch::Device,
    n: usize,
) -> BTreeMap<&'static str, Vec<f64>> {
    let _g = tch::no_grad_guard();
    let (x, w) = (xh.to(dev), wh.to(dev));
    let mut out = BTreeMap::new();
    for op in chain.ops() {
        let times = crate::time_n(n, 2, || {
            let _y = local_op(op, &x, &w);
            sync(dev);
        });
        out.insert(op, times);
    }
    out
}

/// Step times grouped by op.
fn by_op(chain: Chain, runs: &[Vec<f64>]) -> BTreeMap<&'static str, Vec<f64>> {
    let mut m: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for steps in runs {
        for (&(op, _), &t) in chain.steps().iter().zip(steps) {
            m.entry(op).or_default().push(t);
        }
    }
    m
}

fn summaries(m: BTreeMap<&'static str, Vec<f64>>) -> Value {
    Value::Object(
        m.into_iter()
            .map(|(op, v)| (op.to_owned(), summary(v)))
            .collect(),
    )
}

/// Largest absolute difference, and whether the bytes are identical.
fn compare(a: &Tensor, b: &[f32]) -> (bool, f64) {
    let Ok(a) = a.to_vec::<f32>() else {
        return (false, f64::NAN);
    };
    if a.len() != b.len() {
        return (false, f64::INFINITY);
    }
    let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max);
    (same, diff)
}

fn same_bytes(a: &Tensor, b: &Tensor) -> bool {
    a.shape() == b.shape()
        && a.dtype() == b.dtype()
        && match (a.contiguous(), b.contiguous()) {
            (Ok(a), Ok(b)) => a.data() == b.data(),
            _ => false,
        }
}

/// The section: every case of `plan`, then the small-op comparison.
/// Results that differ from the shipped ones are listed under
/// `mismatches` ([`mismatch_error`] fails the run with them).
pub(crate) fn measure(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    dev: tch::Device,
    plan: &ChainPlan,
    pb: &ProgressBar,
) -> Result<Value, String> {
    let spawn = |f: std::pin::Pin<Box<dyn Future<Output = Result<Run, String>> + Send>>| {
        rt.block_on(rt.spawn(f))
            .map_err(|e| format!("benchmark task: {e}"))?
    };
    let local = LocalThread::new()?;
    let mut graphs: BTreeMap<&'static str, u64> = BTreeMap::new();
    // Results that differ from the shipped ones: reported, then the run
    // fails (after its tables and JSON, so that a long run is not lost).
    let mut mismatches: Vec<String> = Vec::new();
    let mut cases = Vec::new();
    for case in &plan.cases {
        let Case {
            chain,
            side,
            iters,
            warmup,
            graph_handles: with_gh,
        } = *case;
        pb.set_message(format!("remote tensors: {} {side}^2", chain.name()));
        let id = match graphs.get(chain.name()) {
            Some(&id) => id,
            None => {
                let id = rt
                    .block_on(client.call(RegisterGraph(chain.graph())))
                    .map_err(err("register_graph"))?;
                graphs.insert(chain.name(), id);
                id
            }
        };
        let n = side * side;
        let xv = uniform(n, 1 + side as u64, 1.0);
        let wv = uniform(n, 2 + side as u64, chain.weight_scale(side));
        let shape = [side, side];
        let x = Tensor::from_slice(&xv, &shape).map_err(|e| e.to_string())?;
        let w = Tensor::from_slice(&wv, &shape).map_err(|e| e.to_string())?;
        let xh = tch::Tensor::from_slice(&xv).view([side as i64, side as i64]);
        let wh = tch::Tensor::from_slice(&wv).view([side as i64, side as i64]);
        drop((xv, wv));

        let mut t_shipped = Vec::new();
        let mut t_kept = Vec::new();
        let mut t_gd = Vec::new();
        let mut t_gh = Vec::new();
        let mut t_local = Vec::new();
        let (mut shipped_steps, mut kept_steps, mut local_steps) =
            (Vec::new(), Vec::new(), Vec::new());
        let (mut shipped_server, mut kept_server) = (Vec::new(), Vec::new());
        let (mut k_put, mut k_fetch, mut k_free) = (Vec::new(), Vec::new(), Vec::new());
        let mut reference: Option<Tensor> = None;
        let (mut kept_equal, mut graph_equal) = (true, true);
        let mut local_cmp = (true, 0.0f64);
        let vm_before = vmstat();
        for it in 0..warmup + iters {
            let timed = it >= warmup;
            let s = spawn(Box::pin(shipped(
                client.clone(),
                chain,
                x.clone(),
                w.clone(),
            )))?;
            let r = reference.get_or_insert_with(|| s.out.clone()).clone();
            let check = |way: &str, got: &Tensor| {
                if same_bytes(got, &r) {
                    Ok(())
                } else {
                    let (_, d) = compare(got, &r.to_vec::<f32>().unwrap_or_default());
                    Err(format!(
                        "{} {side}^2: the {way} result differs from the shipped one (max abs difference {d:e})",
                        chain.name()
                    ))
                }
            };
            let mut note = |way: &str, got: &Tensor| {
                if let Err(e) = check(way, got) {
                    if !mismatches.contains(&e) {
                        mismatches.push(e);
                    }
                    false
                } else {
                    true
                }
            };
            note("shipped (again)", &s.out);
            let k = spawn(Box::pin(kept(client.clone(), chain, x.clone(), w.clone())))?;
            kept_equal &= note("kept", &k.out);
            let g = spawn(Box::pin(graph_data(
                client.clone(),
                id,
                x.clone(),
                w.clone(),
            )))?;
            graph_equal &= note("graph (inputs as data)", &g.out);
            let gh = if with_gh {
                let gh = spawn(Box::pin(graph_handles(
                    client.clone(),
                    id,
                    x.clone(),
                    w.clone(),
                )))?;
                graph_equal &= note("graph (inputs as handles)", &gh.out);
                Some(gh)
            } else {
                None
            };
            let (lt, ls, ly) = {
                let (xh, wh) = (xh.shallow_clone(), wh.shallow_clone());
                local.run(move || local_chain(chain, &xh, &wh, dev))
            };
            if it == 0 {
                let lv = Vec::<f32>::try_from(ly.flatten(0, -1)).unwrap_or_default();
                local_cmp = compare(&r, &lv);
            }
            if timed {
                t_shipped.push(s.total);
                shipped_steps.push(s.steps);
                shipped_server.push(s.server);
                t_kept.push(k.total);
                kept_steps.push(k.steps);
                kept_server.push(k.server);
                k_put.push(k.put);
                k_fetch.push(k.fetch);
                k_free.push(k.free);
                t_gd.push(g.total);
                if let Some(gh) = gh {
                    t_gh.push(gh.total);
                }
                t_local.push(lt);
                local_steps.push(ls);
            }
        }
        let system = match (vm_before, vmstat()) {
            (Some(a), Some(b)) => json!({
                "compact_stall": b.0.saturating_sub(a.0),
                "thp_fault_alloc": b.1.saturating_sub(a.1),
                "what": "system-wide /proc/vmstat deltas over the case (every way, warm-up included)",
            }),
            _ => Value::Null,
        };
        let kernels = if dev == tch::Device::Cpu {
            by_op(chain, &local_steps)
        } else {
            let (xh, wh, n) = (xh.shallow_clone(), wh.shallow_clone(), plan.kernel_iters);
            local.run(move || local_kernels(chain, &xh, &wh, dev, n.max(1)))
        };
        let local = median_of(t_local.clone());
        let way = |t: &Vec<f64>| {
            if t.is_empty() {
                Value::Null
            } else {
                let m = median_of(t.clone());
                json!({"median_s": m, "min_s": t.iter().copied().fold(f64::INFINITY, f64::min),
                       "n": t.len(), "ratio_to_local": m / local})
            }
        };
        let kept_by_op = by_op(chain, &kept_steps);
        let kept_server_by_op = by_op(chain, &kept_server);
        let kernel_p50: BTreeMap<&str, f64> = kernels
            .iter()
            .map(|(op, v)| (*op, median_of(v.clone())))
            .collect();
        let handle_ops: Vec<Value> = chain
            .ops()
            .into_iter()
            .map(|op| {
                json!({
                    "op": op,
                    "on_handles_p50_us": median_of(kept_by_op.get(op).cloned().unwrap_or_default()) * 1e6,
                    "on_server_p50_us": median_of(kept_server_by_op.get(op).cloned().unwrap_or_default()) * 1e6,
                    "kernel_p50_us": kernel_p50.get(op).copied().unwrap_or(f64::NAN) * 1e6,
                })
            })
            .collect();
        let mut kept_v = way(&t_kept);
        kept_v["put_median_s"] = json!(median_of(k_put));
        kept_v["fetch_median_s"] = json!(median_of(k_fetch));
        kept_v["free_median_s"] = json!(median_of(k_free));
        kept_v["steps_median_s"] = json!(median_of(
            kept_steps.iter().map(|s| s.iter().sum()).collect()
        ));
        kept_v["steps"] = summaries(kept_by_op);
        kept_v["server_steps"] = summaries(kept_server_by_op);
        let mut shipped_v = way(&t_shipped);
        shipped_v["steps"] = summaries(by_op(chain, &shipped_steps));
        shipped_v["server_steps"] = summaries(by_op(chain, &shipped_server));
        cases.push(json!({
            "chain": chain.name(),
            "label": chain.label(),
            "ops": chain.steps().iter().map(|(op, _)| *op).collect::<Vec<_>>(),
            "side": side,
            "dtype": "float32",
            "iters": iters,
            "local": {
                "median_s": local,
                "min_s": t_local.iter().copied().fold(f64::INFINITY, f64::min),
                "n": t_local.len(),
                "thread": "a thread of its own, not the main thread",
                "copies": if dev == tch::Device::Cpu { "none (tensors in this process)" }
                          else { "one upload of x and w, one download of the result" },
                "kernels": summaries(kernels),
                "equals_shipped": local_cmp.0,
                "max_abs_diff_to_shipped": local_cmp.1,
            },
            "shipped": shipped_v,
            "kept": kept_v,
            "graph_data": way(&t_gd),
            "graph_handles": way(&t_gh),
            "kept_equals_shipped": kept_equal,
            "graph_equals_shipped": graph_equal,
            "handle_ops": handle_ops,
            "system": system,
        }));
    }

    // An op on handles against the small-op round trip.
    pb.set_message("remote tensors: add 4x4 on handles");
    let small = {
        let c = client.clone();
        let n = plan.n_small;
        rt.block_on(rt.spawn(async move { small_ops(c, n).await }))
            .map_err(|e| format!("benchmark task: {e}"))??
    };
    let n_small = plan.n_small;
    let local_add = local.run(move || {
        let _g = tch::no_grad_guard();
        let a = tch::Tensor::ones([4, 4], (tch::Kind::Float, dev));
        crate::time_n(n_small, 100, || {
            let _y = &a + &a;
            sync(dev);
        })
    });
    let rtt_p50 = median_of(small.0.clone());
    // The chains' ops on handles against the round trip plus their kernel.
    for c in &mut cases {
        for h in c["handle_ops"].as_array_mut().into_iter().flatten() {
            let bound = rtt_p50 * 1e6 + h["kernel_p50_us"].as_f64().unwrap_or(f64::NAN);
            h["rtt_plus_kernel_us"] = json!(bound);
            h["overhead_over_kernel_us"] = json!(
                h["on_handles_p50_us"].as_f64().unwrap_or(f64::NAN)
                    - h["kernel_p50_us"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    Ok(json!({
        "small": {
            "add_4x4_shipped": summary(small.0),
            "add_4x4_on_handles_kept": summary(small.1),
            "local_add_4x4_kernel": summary(local_add),
        },
        "cases": cases,
        "mismatches": mismatches,
    }))
}

/// The error that fails the run when a kept or graph result differed
/// from the shipped one.
pub(crate) fn mismatch_error(r: &Value) -> Option<String> {
    let m: Vec<&str> = r["mismatches"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    (!m.is_empty()).then(|| m.join("; "))
}

/// add 4x4 shipped and on handles (kept), interleaved; the kept results
/// are freed in batches, untimed.
async fn small_ops(c: Client, n: usize) -> Result<(Vec<f64>, Vec<f64>), String> {
    let a = crate::ones(16, &[4, 4]);
    let h = c
        .put(a.clone())
        .await
        .map_err(err("put"))?
        .pop()
        .ok_or("put gave no handle")?;
    let warm = (n / 10).max(10);
    let (mut shipped, mut on_handles) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut pending: Vec<TensorRef> = Vec::new();
    for i in 0..warm + n {
        let t = Instant::now();
        c.call(Call::new("add").arg(a.clone()).arg(a.clone()))
            .await
            .map_err(err("add 4x4"))?;
        let ts = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let out = c
            .call(Call::new("add").arg_ref(&h).arg_ref(&h).keep(Keep::All))
            .await
            .map_err(err("add 4x4 on handles"))?;
        let th = t.elapsed().as_secs_f64();
        pending.push(
            out.handle("output")
                .ok_or("add on handles: no handle 'output'")?
                .into(),
        );
        if pending.len() >= 256 {
            free_all(&c, std::mem::take(&mut pending)).await?;
        }
        if i >= warm {
            shipped.push(ts);
            on_handles.push(th);
        }
    }
    pending.push((&h).into());
    free_all(&c, pending).await?;
    Ok((shipped, on_handles))
}

fn ms(v: &Value) -> String {
    v["median_s"]
        .as_f64()
        .map_or("-".into(), |s| format!("{:.2}", s * 1e3))
}

fn ms_ratio(v: &Value) -> String {
    match (v["median_s"].as_f64(), v["ratio_to_local"].as_f64()) {
        (Some(s), Some(r)) => format!("{:.2} ({r:.2}x)", s * 1e3),
        _ => "-".into(),
    }
}

/// The section's tables.
pub(crate) fn print(r: &Value) {
    let empty = Vec::new();
    let cases = r["cases"].as_array().unwrap_or(&empty);
    if cases.is_empty() {
        return;
    }
    println!();
    println!("remote tensors: one chain of 8 ops on float32, median ms (ratio to local)");
    println!(
        "{:<20} {:>6} {:>4} {:>10} {:>18} {:>18} {:>18} {:>18}",
        "chain", "side", "n", "local", "shipped", "kept", "graph (data)", "graph (handles)"
    );
    for c in cases {
        println!(
            "{:<20} {:>6} {:>4} {:>10} {:>18} {:>18} {:>18} {:>18}",
            c["label"].as_str().unwrap_or(""),
            c["side"].as_u64().unwrap_or(0),
            c["iters"].as_u64().unwrap_or(0),
            ms(&c["local"]),
            ms_ratio(&c["shipped"]),
            ms_ratio(&c["kept"]),
            ms_ratio(&c["graph_data"]),
            ms_ratio(&c["graph_handles"]),
        );
    }
    println!(
        "local: {}",
        cases[0]["local"]["copies"].as_str().unwrap_or("")
    );
    println!();
    println!(
        "{:<20} {:>6} {:>10} {:>12} {:>10} {:>10} {:>18} {:>14}",
        "kept, median ms",
        "side",
        "put",
        "8 steps",
        "fetch",
        "free",
        "local == shipped",
        "compact stalls"
    );
    for c in cases {
        let k = &c["kept"];
        let f = |key: &str| {
            k[key]
                .as_f64()
                .map_or("-".into(), |s| format!("{:.2}", s * 1e3))
        };
        println!(
            "{:<20} {:>6} {:>10} {:>12} {:>10} {:>10} {:>18} {:>14}",
            c["label"].as_str().unwrap_or(""),
            c["side"].as_u64().unwrap_or(0),
            f("put_median_s"),
            f("steps_median_s"),
            f("fetch_median_s"),
            f("free_median_s"),
            if c["local"]["equals_shipped"].as_bool() == Some(true) {
                "bytes equal".to_string()
            } else {
                format!(
                    "max diff {:.1e}",
                    c["local"]["max_abs_diff_to_shipped"]
                        .as_f64()
                        .unwrap_or(f64::NAN)
                )
            },
            c["system"]["compact_stall"]
                .as_u64()
                .map_or("-".into(), |n| n.to_string()),
        );
    }
    println!();
    let s = &r["small"];
    let p50 = |v: &Value| v["p50_us"].as_f64().unwrap_or(f64::NAN);
    println!(
        "{:<32} {:>12} {:>12} {:>14} {:>12} {:>12}",
        "op on handles, p50 us", "on handles", "on server", "small-op RTT", "kernel", "overhead"
    );
    println!(
        "{:<32} {:>12.1} {:>12} {:>14.1} {:>12.1} {:>12.1}",
        "add 4x4 (kept)",
        p50(&s["add_4x4_on_handles_kept"]),
        "-",
        p50(&s["add_4x4_shipped"]),
        p50(&s["local_add_4x4_kernel"]),
        p50(&s["add_4x4_on_handles_kept"]) - p50(&s["local_add_4x4_kernel"]),
    );
    print_mismatches(r);
    let rtt = p50(&s["add_4x4_shipped"]);
    for c in cases {
        for h in c["handle_ops"].as_array().unwrap_or(&empty) {
            let f = |k: &str| h[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "{:<32} {:>12.1} {:>12.1} {:>14.1} {:>12.1} {:>12.1}",
                format!(
                    "{} {}^2 ({})",
                    h["op"].as_str().unwrap_or(""),
                    c["side"],
                    c["chain"].as_str().unwrap_or("")
                ),
                f("on_handles_p50_us"),
                f("on_server_p50_us"),
                rtt,
                f("kernel_p50_us"),
                f("overhead_over_kernel_us"),
            );
        }
    }
}

/// The mismatches, if any, after the tables.
fn print_mismatches(r: &Value) {
    for m in r["mismatches"].as_array().into_iter().flatten() {
        println!("MISMATCH: {}", m.as_str().unwrap_or(""));
    }
}

/// The targets: the kept chain against local (CUDA 1.2x with one
/// upload and one download, CPU 1.5x), and an op on handles against the
/// small-op round trip plus its kernel (a CUDA target; shown on the CPU).
pub(crate) fn targets(r: &Value, server_device: &str, t: &mut Vec<Target>) {
    let cuda = server_device.starts_with("cuda");
    let (goal, limit) = if cuda {
        ("<= 1.2x", 1.2)
    } else {
        ("<= 1.5x", 1.5)
    };
    for c in r["cases"].as_array().into_iter().flatten() {
        let Some(x) = c["kept"]["ratio_to_local"].as_f64() else {
            continue;
        };
        t.push(Target {
            name: match (c["chain"].as_str(), c["side"].as_u64()) {
                (Some("matmul_relu"), Some(1024)) => "kept chain / local, matmul+relu 1024^2",
                (Some("matmul_relu"), Some(4096)) => "kept chain / local, matmul+relu 4096^2",
                (Some("matmul_relu"), _) => "kept chain / local, matmul+relu",
                (_, Some(1024)) => "kept chain / local, element-wise 1024^2",
                (_, Some(4096)) => "kept chain / local, element-wise 4096^2",
                _ => "kept chain / local, element-wise",
            },
            measured: format!(
                "{x:.2}x ({:.2} / {:.2} ms)",
                c["kept"]["median_s"].as_f64().unwrap_or(0.0) * 1e3,
                c["local"]["median_s"].as_f64().unwrap_or(0.0) * 1e3
            ),
            goal,
            pass: Some(x <= limit),
        });
    }
    let s = &r["small"];
    if let (Some(h), Some(rtt), Some(k)) = (
        s["add_4x4_on_handles_kept"]["p50_us"].as_f64(),
        s["add_4x4_shipped"]["p50_us"].as_f64(),
        s["local_add_4x4_kernel"]["p50_us"].as_f64(),
    ) {
        t.push(Target {
            name: "add 4x4 on handles p50 / (RTT + kernel)",
            measured: format!("{:.2}x ({h:.1} / ({rtt:.1} + {k:.1}) us)", h / (rtt + k)),
            goal: "<= 1x (CUDA)",
            pass: cuda.then_some(h <= rtt + k),
        });
    }
    // The chain ops: the worst ratio of on-handles p50 to RTT + kernel.
    let worst = r["cases"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| {
            c["handle_ops"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |h| (c, h))
        })
        .filter_map(|(c, h)| {
            let x = h["on_handles_p50_us"].as_f64()? / h["rtt_plus_kernel_us"].as_f64()?;
            x.is_finite().then_some((x, c, h))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0));
    if let Some((x, c, h)) = worst {
        t.push(Target {
            name: "chain op on handles / (RTT + kernel), worst",
            measured: format!(
                "{x:.2}x ({} {}^2: {:.0} / {:.0} us)",
                h["op"].as_str().unwrap_or(""),
                c["side"],
                h["on_handles_p50_us"].as_f64().unwrap_or(0.0),
                h["rtt_plus_kernel_us"].as_f64().unwrap_or(0.0)
            ),
            goal: "<= 1x (CUDA)",
            pass: cuda.then_some(x <= 1.0),
        });
    }
}

/// `--chains-only`: this section alone, its tables, targets and JSON.
pub(crate) fn run_alone(
    args: &Args,
    rt: &tokio::runtime::Runtime,
    client: &Client,
    device: &str,
    mut notes: Vec<String>,
    load_start: &str,
) -> Result<(), String> {
    let server_device = client.welcome().device.clone();
    let pb = ProgressBar::new(1);
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    let plan = ChainPlan::new(args.quick, server_device.starts_with("cuda"));
    let resident = measure(rt, client, crate::tch_device(device), &plan, &pb)?;
    pb.finish_and_clear();
    notes.push(format!(
        "load average (1, 5, 15 min) at start: {load_start}; at end: {}",
        crate::loadavg()
    ));
    let mut t = Vec::new();
    targets(&resident, &server_device, &mut t);
    let report = json!({
        "machine": crate::machine_name(),
        "date_utc": crate::date_utc(),
        "quick": args.quick,
        "server_device": server_device,
        "resident": resident,
        "targets": t.iter().map(|t| json!({"name": t.name, "measured": t.measured, "goal": t.goal, "pass": t.pass})).collect::<Vec<_>>(),
        "notes": notes,
    });
    println!(
        "mymps-bench --chains-only on {} ({}), server on {server_device}",
        report["machine"].as_str().unwrap_or(""),
        report["date_utc"].as_str().unwrap_or("")
    );
    print(&report["resident"]);
    println!();
    crate::print_targets(&t);
    for n in &notes {
        println!("note: {n}");
    }
    if let Some(p) = &args.json {
        let s = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(p, s).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    client.close();
    match mismatch_error(&report["resident"]) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
