//! Where a small op's time goes on an accelerator server (issue 17), in
//! the same run as the main tables (`--gpu` on a CUDA server):
//!
//! - **the same cases against a CPU server** started from the same binary
//!   on the same host: `add` 4×4 p50 from the async, blocking and Python
//!   clients, and one client's requests/s — the targets are ratios to it;
//! - **the server's own time**: the mean time the server records for an
//!   `add` (frame read to reply written, from its metrics) against the
//!   client's mean for the same calls, so wire + client = the difference;
//! - **the backend's part**, in this process: `add` 4×4 through the tch
//!   backend (host tensors in, host tensors out) called directly, from the
//!   blocking pool (`spawn_blocking`, the old request path) and in place on
//!   a runtime worker (`block_in_place`, the server's path now), next to
//!   plain libtorch doing the same two uploads, the add and the download;
//! - **the wait's own cost**: a raw TCP echo whose thread spins `d` µs
//!   before it answers (the server's work, on a thread that stays awake),
//!   so that the client's p50 minus `d` is the round trip of a client that
//!   slept through a wait of `d`: what a slower server costs beyond its
//!   own time, on this host.

use std::sync::Arc;

use mymps::client::{Call, Caller, Client};
use serde_json::{Value, json};

use crate::{Args, Plan, closed_loop, ones, start_server, summary, time_calls, time_n};

/// The server-side and client-side mean of `n` calls of `add` 4×4 on
/// `client`, microseconds (the server's from the change of its `add`
/// latency sum and count over the calls).
fn server_share(rt: &tokio::runtime::Runtime, client: &Client, n: usize) -> Value {
    let add_sum = |c: &Client| -> Option<(f64, u64)> {
        let m = rt.block_on(c.metrics()).ok()?;
        let op = m.ops.iter().find(|o| o.op == "add")?;
        Some((op.latency.sum_s, op.count))
    };
    let Some((s0, n0)) = add_sum(client) else {
        return json!({"skipped": "no metrics from the server"});
    };
    let a = ones(16, &[4, 4]);
    let times = time_calls(rt, client, n, 0, move || {
        Call::new("add").arg(a.clone()).arg(a.clone())
    });
    let Some((s1, n1)) = add_sum(client) else {
        return json!({"skipped": "no metrics from the server"});
    };
    let calls = (n1 - n0).max(1) as f64;
    let server_us = (s1 - s0) / calls * 1e6;
    let client_us = times.iter().sum::<f64>() / times.len() as f64 * 1e6;
    json!({
        "calls": n1 - n0,
        "server_mean_us": server_us,
        "client_mean_us": client_us,
        "wire_and_client_us": client_us - server_us,
    })
}

/// `add` 4×4 through the tch backend in this process, three ways, and
/// libtorch doing the same copies and kernel; p50s.
fn backend_path(rt: &tokio::runtime::Runtime, device: &str, n: usize) -> Value {
    let backend = match mymps_backend_tch::TchBackend::new(device) {
        Ok(b) => Arc::new(b),
        Err(e) => return json!({"skipped": format!("no backend on {device}: {e}")}),
    };
    let entry = match mymps::Backend::ops(&*backend).lookup("add") {
        Ok(e) => e,
        Err(e) => return json!({"skipped": e.to_string()}),
    };
    let a = ones(16, &[4, 4]);
    let call = {
        let (backend, a) = (backend.clone(), a.clone());
        move || {
            let args = mymps::ops::bind(
                &entry.spec,
                vec![("0".to_owned(), a.clone()), ("1".to_owned(), a.clone())],
                Default::default(),
            )
            .expect("bind");
            let out = mymps::Backend::exec(&*backend, entry, args).expect("add");
            assert_eq!(out.outputs.len(), 1);
        }
    };
    let direct = summary(time_n(n, 200, call.clone()));
    let pool = {
        let call = call.clone();
        let task = crate::time_n_async(n, 200, move || {
            let call = call.clone();
            async move { tokio::task::spawn_blocking(call).await.expect("pool") }
        });
        summary(rt.block_on(rt.spawn(task)).expect("task"))
    };
    let in_place = {
        let call = call.clone();
        let task = crate::time_n_async(n, 200, move || {
            let call = call.clone();
            async move { tokio::task::block_in_place(call) }
        });
        summary(rt.block_on(rt.spawn(task)).expect("task"))
    };
    let dev = crate::tch_device(device);
    let local = {
        let _g = tch::no_grad_guard();
        let h = tch::Tensor::ones([4, 4], (tch::Kind::Float, tch::Device::Cpu));
        summary(time_n(n, 200, || {
            let x = h.to(dev);
            let y = h.to(dev);
            let _ = (&x + &y).to(tch::Device::Cpu);
        }))
    };
    json!({
        "op": "add 4x4 float32, host tensors in and out",
        "local_tch_copies_and_add": local,
        "backend_exec_direct": direct,
        "backend_exec_blocking_pool": pool,
        "backend_exec_block_in_place": in_place,
    })
}

/// The raw echo's p50 with the answer delayed by 0, 25, 50, 100 and 200
/// µs, and that p50 minus the delay: a blocking client's round trip after
/// a wait of that long (see the module's doc).
fn delayed_echo(n: usize) -> Value {
    let rows: Vec<Value> = [0u64, 25, 50, 100, 200]
        .into_iter()
        .map(|d| {
            let addr = crate::start_echo_after(std::time::Duration::from_micros(d));
            let p = p50(&summary(crate::echo_small(addr, n))).unwrap_or(f64::NAN);
            json!({"delay_us": d, "p50_us": p, "p50_minus_delay_us": p - d as f64})
        })
        .collect();
    Value::Array(rows)
}

/// The small-op cases against a CPU server of the same binary, started
/// for this: async, blocking and Python clients' `add` 4×4, one client's
/// requests/s.
fn cpu_server(args: &Args, rt: &tokio::runtime::Runtime, plan: &Plan) -> Value {
    let server = match start_server(args, "cpu") {
        Ok(s) => s,
        Err(e) => return json!({"skipped": format!("cannot start a CPU server: {e}")}),
    };
    let client = match rt.block_on(Client::connect(&server.url)) {
        Ok(c) => c,
        Err(e) => return json!({"skipped": format!("cannot connect to the CPU server: {e}")}),
    };
    let a = ones(16, &[4, 4]);
    let add = {
        let a = a.clone();
        summary(time_calls(rt, &client, plan.n_small, 200, move || {
            Call::new("add").arg(a.clone()).arg(a.clone())
        }))
    };
    let blocking = match mymps::client::blocking::Client::connect(&server.url) {
        Ok(b) => {
            let s = summary(time_n(plan.n_small, 200, || {
                b.call(Call::new("add").arg(a.clone()).arg(a.clone()))
                    .expect("add");
            }));
            b.close();
            s
        }
        Err(e) => json!({"skipped": e.to_string()}),
    };
    let share = server_share(rt, &client, plan.n_small.min(2000));
    let one_client = rt.block_on(async {
        let c = Client::connect(&server.url).await.expect("connect");
        closed_loop(vec![c], a.clone(), plan.conc_secs).await
    });
    let python = if args.no_python {
        json!({"skipped": "--no-python"})
    } else {
        // Latency only: no large tensors.
        let small = Plan {
            sizes_mib: Vec::new(),
            ..plan.clone()
        };
        crate::run_python(args, &server.url, &small)
    };
    client.close();
    json!({
        "url": server.url,
        "add_4x4": add,
        "add_4x4_blocking_client": blocking,
        "server_share": share,
        "python_add_4x4": python["add_4x4"].clone(),
        "one_client_req_per_s": one_client,
    })
}

/// The whole small-op section (see the module's doc).
pub(crate) fn measure(
    args: &Args,
    rt: &tokio::runtime::Runtime,
    client: &Client,
    device: &str,
    plan: &Plan,
) -> Value {
    let n = plan.n_small.min(2000);
    json!({
        "server_share": server_share(rt, client, n),
        "backend_path": backend_path(rt, device, n),
        "cpu_server": cpu_server(args, rt, plan),
        "delayed_echo": delayed_echo(n),
    })
}

/// A summary's p50, microseconds.
fn p50(v: &Value) -> Option<f64> {
    v["p50_us"].as_f64()
}

/// Issue 17's targets, from the report `r` of a CUDA server's run with
/// this section.
pub(crate) fn targets(r: &Value, t: &mut Vec<crate::Target>) {
    let s = &r["small_op"];
    if s.is_null() {
        return;
    }
    let cuda = p50(&r["latency"]["tcp"]["add_4x4"]);
    let rtt = p50(&r["baselines"]["tcp_echo_64b"]);
    let cpu = &s["cpu_server"];
    let mut push =
        |name: &'static str, goal: &'static str, m: Option<(f64, String)>, ok: fn(f64) -> bool| {
            t.push(match m {
                Some((x, text)) => crate::Target {
                    name,
                    measured: text,
                    goal,
                    pass: Some(ok(x)),
                },
                None => crate::Target {
                    name,
                    measured: "not measured".into(),
                    goal,
                    pass: None,
                },
            })
        };
    let ratio = |a: Option<f64>, b: Option<f64>, unit: &str| {
        a.zip(b).map(|(a, b)| {
            (
                a / b,
                format!("{:.2}x ({a:.1} {unit} / {b:.1} {unit})", a / b),
            )
        })
    };
    push(
        "CUDA small-op p50 / raw TCP RTT p50",
        "<= 3x",
        ratio(cuda, rtt, "us"),
        |x| x <= 3.0,
    );
    push(
        "CUDA small-op p50 / CPU server's",
        "<= 1.5x",
        ratio(cuda, p50(&cpu["add_4x4"]), "us"),
        |x| x <= 1.5,
    );
    push(
        "CUDA blocking client p50 / async's",
        "<= 1.5x",
        ratio(
            p50(&r["latency"]["tcp"]["add_4x4_blocking_client"]),
            cuda,
            "us",
        ),
        |x| x <= 1.5,
    );
    push(
        "CUDA 1-client ops/s / CPU server's",
        ">= 50%",
        r["concurrency"]["clients"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["clients"].as_u64() == Some(1)))
            .and_then(|x| x["req_per_s"].as_f64())
            .zip(cpu["one_client_req_per_s"].as_f64())
            .map(|(g, c)| {
                (
                    g / c,
                    format!("{:.0}% ({g:.0}/s / {c:.0}/s)", 100.0 * g / c),
                )
            }),
        |x| x >= 0.5,
    );
}

/// The line of a [`server_share`] result `sh`: the client's mean and the
/// server's part of it (`server`, its label), the rest being wire and
/// client.
fn print_share(label: &str, server: &str, sh: &Value) {
    if let (Some(sv), Some(cl)) = (sh["server_mean_us"].as_f64(), sh["client_mean_us"].as_f64()) {
        println!(
            "  {label}: client {cl:.1} us, of which {server} {sv:.1} us, wire + client {:.1} us",
            cl - sv
        );
    }
}

/// A line per figure of the section, for the printed report.
pub(crate) fn print(s: &Value) {
    if s.is_null() {
        return;
    }
    println!();
    println!("small op on this server (issue 17): where the time goes");
    print_share(
        "add 4x4 mean",
        "the server (frame read to reply written)",
        &s["server_share"],
    );
    let b = &s["backend_path"];
    for (k, label) in [
        (
            "local_tch_copies_and_add",
            "libtorch: 2 uploads + add + download",
        ),
        ("backend_exec_direct", "tch backend exec, this thread"),
        (
            "backend_exec_blocking_pool",
            "tch backend exec, spawn_blocking",
        ),
        (
            "backend_exec_block_in_place",
            "tch backend exec, block_in_place",
        ),
    ] {
        if let Some(v) = p50(&b[k]) {
            println!("  {label:<44} p50 {v:>8.1} us");
        }
    }
    for d in s["delayed_echo"].as_array().into_iter().flatten() {
        if let (Some(delay), Some(p), Some(rest)) = (
            d["delay_us"].as_u64(),
            d["p50_us"].as_f64(),
            d["p50_minus_delay_us"].as_f64(),
        ) {
            println!(
                "  raw echo answered after {delay:>3} us spinning        p50 {p:>8.1} us, less the delay {rest:.1} us"
            );
        }
    }
    let c = &s["cpu_server"];
    print_share("CPU server: add 4x4 mean", "the server", &c["server_share"]);
    for (k, label) in [
        ("add_4x4", "CPU server: add 4x4, async client"),
        (
            "add_4x4_blocking_client",
            "CPU server: add 4x4, blocking client",
        ),
        ("python_add_4x4", "CPU server: add 4x4, Python client"),
    ] {
        if let Some(v) = p50(&c[k]) {
            println!("  {label:<44} p50 {v:>8.1} us");
        }
    }
    if let Some(v) = c["one_client_req_per_s"].as_f64() {
        println!("  {:<44} {v:>12.0}/s", "CPU server: 1 client");
    }
    if let Some(e) = c["skipped"].as_str() {
        println!("  CPU server: skipped: {e}");
    }
}
