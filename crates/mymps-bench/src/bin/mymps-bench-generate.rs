//! Text generation: mymps's `Model::generate` (the native decoders with
//! their KV cache, in this process, below the wire) against transformers'
//! eager `generate` in its own Python process, in the same run, on the
//! same random models, prompts and device: time to first token and tokens
//! per second, greedy, no EOS (every run makes exactly its new tokens).
//!
//! `src/generate.py` makes the models (tiny and ~100M-parameter GPT-2 and
//! Llama configs), times transformers and writes the prompts; this program
//! then loads each model with the `huggingface` loader and times the same
//! requests, in process and over the wire: a `mymps` server in this
//! process (TCP on loopback), the model loaded through the client, and a
//! streamed `generate` whose time to first token is the first step's
//! arrival at the client.
//!
//! ```text
//! cargo run --release -p mymps-bench --bin mymps-bench-generate -- [--device cuda] [--dtype float16] [--json out.json]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use mymps::client::{Caller, Client, Service};
use mymps::model::{
    Control, GenerateLimits, GenerateRequest, LoadRequest, Model, ModelLoader, Prompt,
};
use mymps_models::hf::HuggingFaceLoader;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(
    name = "mymps-bench-generate",
    about = "Text generation: mymps vs transformers' eager generate"
)]
struct Args {
    /// Device of both sides (cpu, cuda, cuda:N).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Model dtype of both sides (float32, float16, bfloat16).
    #[arg(long, default_value = "float32")]
    dtype: String,
    /// Python with torch and transformers (default: .venv/bin/python).
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,
    /// Smoke run: the tiny models, a few tokens.
    #[arg(long)]
    quick: bool,
    /// Write the results as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One timed `generate`: (time to first token, total) in seconds.
fn time(model: &dyn Model, req: &GenerateRequest) -> Result<(f64, f64), String> {
    let limits = GenerateLimits {
        max_bytes: 16 << 30,
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut first = None;
    let s = model
        .generate(req, &limits, &mut |_| {
            first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
            Control::Continue
        })
        .map_err(|e| e.to_string())?;
    let total = t0.elapsed().as_secs_f64();
    let want = req.max_new_tokens.unwrap_or(0);
    if s.sequences.iter().any(|q| q.ids.len() != want) {
        return Err(format!("a sequence ended before its {want} tokens"));
    }
    Ok((first.unwrap_or(total), total))
}

/// One timed streamed `generate` over the wire: (first step's arrival,
/// summary's arrival) in seconds.
async fn time_wire(
    client: &Client,
    name: &str,
    req: &GenerateRequest,
) -> Result<(f64, f64), String> {
    let t0 = Instant::now();
    let mut g = client
        .generate_stream(name, req.clone())
        .await
        .map_err(|e| e.to_string())?;
    let mut first = None;
    while let Some(step) = g.next().await {
        step.map_err(|e| e.to_string())?;
        first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
    }
    let total = t0.elapsed().as_secs_f64();
    let want = req.max_new_tokens.unwrap_or(0);
    let s = g.summary().ok_or("no summary")?;
    if s.sequences.iter().any(|q| q.ids.len() != want) {
        return Err(format!("a sequence ended before its {want} tokens"));
    }
    Ok((first.unwrap_or(total), total))
}

/// A server in this process on `device`, models under `root`, and a
/// client of it over TCP on loopback.
async fn start_wire(
    device: &str,
    root: &std::path::Path,
) -> Result<(mymps::server::ServerHandle, Client), String> {
    use mymps::server::{Server, ServerConfig};
    let config = ServerConfig {
        listen: vec![mymps::transport::Endpoint::new("tcp", "127.0.0.1", 0)],
        model_root: Some(root.to_owned()),
        generate: GenerateLimits {
            max_bytes: 16 << 30,
            ..Default::default()
        },
        ..ServerConfig::default()
    };
    let backend = mymps_backend_tch::TchBackend::new(device).map_err(|e| e.to_string())?;
    let server = Server::bind(config, std::sync::Arc::new(backend))
        .await
        .map_err(|e| e.to_string())?;
    for l in mymps_models::loaders() {
        server.models().add_loader(l).map_err(|e| e.to_string())?;
    }
    let handle = server.spawn();
    let client = Client::connect(&handle.endpoints()[0].to_string())
        .await
        .map_err(|e| e.to_string())?;
    Ok((handle, client))
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("mymps-bench-generate: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let python = args
        .python
        .clone()
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let script = dir.path().join("generate.py");
    std::fs::write(&script, include_str!("../generate.py")).map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(&python);
    cmd.arg(&script)
        .arg(dir.path())
        .args(["--device", &args.device, "--dtype", &args.dtype]);
    if args.quick {
        cmd.arg("--quick");
    }
    eprintln!("transformers' side ({})...", python.display());
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !status.success() {
        return Err(format!("{} failed ({status})", script.display()));
    }
    let hf: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("transformers.json")).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;

    let threads = tch::get_num_threads();
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let (server, client) = rt.block_on(start_wire(&args.device, dir.path()))?;
    // As many as generate.py's.
    let reps = if args.quick { 1 } else { 2 };
    let mut rows = Vec::new();
    let mut out = serde_json::Map::new();
    for (name, m) in hf["models"].as_object().ok_or("no models")? {
        let path = m["path"].as_str().ok_or("no path")?;
        let req = LoadRequest {
            name: name.clone(),
            model_type: "huggingface".into(),
            model_path: Some(path.to_owned()),
            dtype: Some(args.dtype.clone()),
            ..Default::default()
        };
        let model = HuggingFaceLoader
            .load(&req, &args.device)
            .map_err(|e| format!("{name}: {e}"))?;
        let wire_name = format!("wire-{name}");
        rt.block_on(client.load_model(LoadRequest {
            name: wire_name.clone(),
            ..req.clone()
        }))
        .map_err(|e| format!("{name} over the wire: {e}"))?;
        let new = m["new_tokens"].as_u64().ok_or("no new_tokens")? as usize;
        let mut runs = Vec::new();
        for r in m["runs"].as_array().ok_or("no runs")? {
            let prompts: Vec<Prompt> = r["prompts"]
                .as_array()
                .ok_or("no prompts")?
                .iter()
                .map(|p| {
                    Prompt::Ids(
                        p.as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_i64)
                            .collect(),
                    )
                })
                .collect();
            let batch = prompts.len();
            let request = |n| GenerateRequest {
                prompts: prompts.clone(),
                max_new_tokens: Some(n),
                do_sample: Some(false),
                ignore_eos: true,
                ..Default::default()
            };
            time(&*model, &request(new.min(8)))?; // warm-up
            let times: Vec<(f64, f64)> = (0..reps)
                .map(|_| time(&*model, &request(new)))
                .collect::<Result<_, _>>()?;
            let ttft = median(times.iter().map(|t| t.0).collect());
            let total = median(times.iter().map(|t| t.1).collect());
            let tps = (batch * new) as f64 / total;
            rt.block_on(time_wire(&client, &wire_name, &request(new.min(8))))?; // warm-up
            let wire: Vec<(f64, f64)> = (0..reps)
                .map(|_| rt.block_on(time_wire(&client, &wire_name, &request(new))))
                .collect::<Result<_, _>>()?;
            let wire_ttft = median(wire.iter().map(|t| t.0).collect());
            let wire_total = median(wire.iter().map(|t| t.1).collect());
            let wire_tps = (batch * new) as f64 / wire_total;
            let hf_tps = r["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
            let hf_ttft = r["ttft_s"].as_f64().unwrap_or(f64::NAN);
            rows.push(format!(
                "{name:<11} {:>6} {batch:>5} {new:>4} {:>9.1} {:>9.1} {:>9.1} {:>6.2} {:>10.1} {:>10.1} {:>10.1}",
                m["parameters"]
                    .as_u64()
                    .map_or("?".into(), |p| format!("{:.1}M", p as f64 / 1e6)),
                tps,
                wire_tps,
                hf_tps,
                wire_tps / hf_tps,
                ttft * 1e3,
                wire_ttft * 1e3,
                hf_ttft * 1e3,
            ));
            runs.push(json!({
                "batch": batch, "new_tokens": new,
                "mymps": {"tokens_per_s": tps, "ttft_s": ttft, "total_s": total},
                "mymps_wire": {"tokens_per_s": wire_tps, "ttft_s": wire_ttft, "total_s": wire_total},
                "ratio_wire_tokens_per_s": wire_tps / hf_tps,
                "transformers": {"tokens_per_s": hf_tps, "ttft_s": hf_ttft, "total_s": r["total_s"]},
                "ratio_tokens_per_s": tps / hf_tps,
            }));
        }
        out.insert(
            name.clone(),
            json!({"parameters": m["parameters"], "prompt_tokens": m["prompt_tokens"], "runs": runs}),
        );
        drop(model);
        rt.block_on(client.unload_model(&wire_name))
            .map_err(|e| format!("{name} over the wire: {e}"))?;
    }
    client.close();
    rt.block_on(server.shutdown());
    println!(
        "\ntext generation, greedy, device {} ({}), {threads} libtorch threads here, {} in Python; transformers {} (eager), torch {}{}",
        args.device,
        args.dtype,
        hf["threads"],
        hf["transformers"].as_str().unwrap_or("?"),
        hf["torch"].as_str().unwrap_or("?"),
        if cfg!(debug_assertions) {
            "; DEBUG BUILD: use --release"
        } else {
            ""
        }
    );
    println!(
        "{:<11} {:>6} {:>5} {:>4} {:>9} {:>9} {:>9} {:>6} {:>10} {:>10} {:>10}",
        "model",
        "params",
        "batch",
        "new",
        "mymps t/s",
        "wire t/s",
        "hf t/s",
        "ratio",
        "mymps ttft",
        "wire ttft",
        "hf ttft"
    );
    println!("{:>99}", "(wire/hf)   (ms)       (ms)       (ms)");
    for r in rows {
        println!("{r}");
    }
    if let Some(p) = &args.json {
        let v = json!({
            "device": args.device, "dtype": args.dtype, "threads": threads,
            "transformers": hf["transformers"], "torch": hf["torch"], "models": out,
        });
        std::fs::write(p, serde_json::to_vec_pretty(&v).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
