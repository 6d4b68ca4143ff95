//! The `mymps` command: `mymps serve` runs the server; the other
//! subcommands are a client for shells and scripts.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};
use mymps::client::{ClientOptions, blocking::Client};
use mymps::server::{Server, ServerConfig};
use mymps::transport::Endpoint;
use mymps::{Error, ErrorCode, Tensor, Value, npy};

#[derive(Parser)]
#[command(
    name = "mymps",
    version,
    about = "A remote tensor coprocessor: serve a GPU (or the CPU) to clients over the network"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Server status: device, versions, models loaded.
    Health(ClientArgs),
    /// Host, process and accelerator statistics of the server.
    Stats(ClientArgs),
    /// List the op whitelist, or describe one op.
    Ops {
        /// Show this op's signature and doc.
        #[arg(long, value_name = "OP")]
        describe: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run one op on .npy files: `mymps exec matmul 0=a.npy 1=b.npy --out d`.
    Exec {
        /// The op.
        op: String,
        /// Tensor inputs, NAME=FILE.npy (`0`, `1`, ... positional, other names keyword).
        #[arg(value_name = "NAME=FILE.npy")]
        inputs: Vec<String>,
        /// Scalar argument K=V; V is JSON (`-1`, `true`, `[0, 2, 1]`, `null`),
        /// Python's True/False/None, or else a string.
        #[arg(long = "kwarg", value_name = "K=V")]
        kwargs: Vec<String>,
        /// Write each result to DIR/NAME.npy.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(ClapArgs)]
struct ServeArgs {
    /// Where to listen (repeat for several listeners). Default:
    /// tcp://$MYMPS_HOST:$MYMPS_PORT, else tcp://127.0.0.1:5555.
    #[arg(long, value_name = "URL")]
    listen: Vec<String>,
    /// Device: auto (MPS, then CUDA, then CPU), cpu, cuda, cuda:N, mps.
    #[arg(long, default_value = "auto", env = "MYMPS_DEVICE")]
    device: String,
    /// Largest tensor payload of one request, bytes.
    #[arg(long, value_name = "BYTES")]
    max_payload: Option<u64>,
    /// Cap on tensor bytes held by all requests in flight (default: half the RAM).
    #[arg(long, value_name = "BYTES")]
    memory_budget: Option<u64>,
    /// Backend calls running at once (default: the number of cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Log filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long, default_value = "info", env = "MYMPS_LOG")]
    log: String,
}

#[derive(ClapArgs)]
struct ClientArgs {
    /// Server address.
    #[arg(
        long,
        env = "MYMPS_ADDR",
        default_value = "tcp://127.0.0.1:5555",
        global = true
    )]
    addr: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 300.0, global = true)]
    timeout: f64,
}

impl ClientArgs {
    fn connect(&self) -> Result<Client, Error> {
        let options = ClientOptions {
            timeout: Duration::from_secs_f64(self.timeout),
            ..ClientOptions::default()
        };
        Client::connect_with(&self.addr, options)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(a) => serve(a),
        Command::Health(c) => health(&c),
        Command::Stats(c) => stats(&c),
        Command::Ops { describe, client } => ops(&client, describe.as_deref()),
        Command::Exec {
            op,
            inputs,
            kwargs,
            out,
            client,
        } => exec(&client, &op, &inputs, &kwargs, out.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mymps: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn default_listen() -> String {
    let host =
        std::env::var("MYMPS_HOST").unwrap_or_else(|_| mymps::client::DEFAULT_HOST.to_owned());
    let port =
        std::env::var("MYMPS_PORT").unwrap_or_else(|_| mymps::client::DEFAULT_PORT.to_string());
    format!(
        "tcp://{}",
        Endpoint::new("tcp", &host, 0)
            .host_port()
            .replace(":0", &format!(":{port}"))
    )
}

fn serve(a: ServeArgs) -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&a.log)
                .map_err(|e| Error::bad_argument(format!("bad --log filter: {e}")))?,
        )
        .with_writer(std::io::stderr)
        .init();
    let listen = if a.listen.is_empty() {
        vec![default_listen()]
    } else {
        a.listen
    };
    let mut config = ServerConfig {
        listen: listen.iter().map(|u| u.parse()).collect::<Result<_, _>>()?,
        ..ServerConfig::default()
    };
    if let Some(p) = a.max_payload {
        config.limits.max_payload = p;
    }
    if let Some(b) = a.memory_budget {
        config.memory_budget = b;
    }
    if let Some(w) = a.workers {
        config.workers = w;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mymps-io")
        .build()
        .map_err(|e| Error::internal(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let device = a.device.clone();
        let backend =
            tokio::task::spawn_blocking(move || mymps::backend_tch::TchBackend::new(&device))
                .await
                .map_err(|e| Error::internal(e.to_string()))??;
        tracing::info!(
            ops = mymps::Backend::ops(&backend).len(),
            "op whitelist loaded"
        );
        let server = Server::bind(config, Arc::new(backend)).await?;
        // One line per listener on stdout, for scripts and tests that ask
        // for port 0.
        let mut out = std::io::stdout().lock();
        for ep in server.local_endpoints() {
            let _ = writeln!(out, "mymps: listening on {ep}");
        }
        let _ = out.flush();
        drop(out);
        server.serve(shutdown_signal()).await;
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: finishing requests in flight");
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("serialisable"));
}

fn print_fields(v: &impl serde::Serialize) {
    if let serde_json::Value::Object(m) = serde_json::to_value(v).expect("serialisable") {
        let width = m.keys().map(String::len).max().unwrap_or(0);
        for (k, v) in m {
            let v = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => match n.as_f64() {
                    Some(x) if !n.is_i64() && !n.is_u64() => format!("{x:.2}"),
                    _ => n.to_string(),
                },
                other => other.to_string(),
            };
            println!("{k:width$}  {v}");
        }
    }
}

fn health(c: &ClientArgs) -> Result<(), Error> {
    let h = c.connect()?.health()?;
    if c.json {
        print_json(&h)
    } else {
        print_fields(&h)
    }
    Ok(())
}

fn stats(c: &ClientArgs) -> Result<(), Error> {
    let s = c.connect()?.stats()?;
    if c.json {
        print_json(&s)
    } else {
        print_fields(&s)
    }
    Ok(())
}

fn ops(c: &ClientArgs, describe: Option<&str>) -> Result<(), Error> {
    let client = c.connect()?;
    match describe {
        Some(op) => {
            let info = client.describe_op(op)?;
            if c.json {
                print_json(&info);
            } else {
                println!("{}", info.signature);
                println!("    {}", info.doc);
                println!("    category: {}", info.category);
            }
        }
        None => {
            let ops = client.list_ops_detailed()?;
            if c.json {
                print_json(&ops);
            } else {
                let width = ops.iter().map(|o| o.name.len()).max().unwrap_or(0);
                for o in &ops {
                    println!("{:width$}  {:12}  {}", o.name, o.category, o.doc);
                }
            }
        }
    }
    Ok(())
}

/// Parses a `--kwarg` value: JSON, Python's True/False/None, or a string.
fn parse_value(s: &str) -> Value {
    fn from_json(v: serde_json::Value) -> Option<Value> {
        Some(match v {
            serde_json::Value::Null => Value::None,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64()?),
            },
            serde_json::Value::String(s) => Value::Str(s),
            serde_json::Value::Array(a) => {
                Value::List(a.into_iter().map(from_json).collect::<Option<_>>()?)
            }
            serde_json::Value::Object(_) => return None,
        })
    }
    match s {
        "True" => Value::Bool(true),
        "False" => Value::Bool(false),
        "None" => Value::None,
        _ => serde_json::from_str(s)
            .ok()
            .and_then(from_json)
            .unwrap_or_else(|| Value::Str(s.to_owned())),
    }
}

fn exec(
    c: &ClientArgs,
    op: &str,
    inputs: &[String],
    kwargs: &[String],
    out: Option<&std::path::Path>,
) -> Result<(), Error> {
    let split = |s: &str, what: &str| -> Result<(String, String), Error> {
        s.split_once('=')
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| Error::bad_argument(format!("{what} '{s}' is not NAME=VALUE")))
    };
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for i in inputs {
        let (name, path) = split(i, "input")?;
        tensors.push((name, npy::read(std::path::Path::new(&path))?));
    }
    let mut kw = BTreeMap::new();
    for k in kwargs {
        let (name, v) = split(k, "--kwarg")?;
        kw.insert(name, parse_value(&v));
    }
    let result = c.connect()?.exec(op, tensors, kw)?;
    if let Some(dir) = out {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::bad_argument(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut rows = Vec::new();
    for (name, t) in &result.tensors {
        let path = match out {
            Some(dir) => {
                let p = dir.join(format!("{name}.npy"));
                npy::write(&p, t)?;
                Some(p.display().to_string())
            }
            None => None,
        };
        rows.push(serde_json::json!({
            "name": name, "dtype": t.dtype().name(), "shape": t.shape(), "path": path,
        }));
    }
    if c.json {
        print_json(
            &serde_json::json!({"outputs": rows, "device": result.device, "elapsed_s": result.elapsed_s}),
        );
    } else {
        for r in &rows {
            let shape = r["shape"].to_string();
            match r["path"].as_str() {
                Some(p) => println!(
                    "{}  {} {}  -> {p}",
                    r["name"].as_str().unwrap_or(""),
                    r["dtype"].as_str().unwrap_or(""),
                    shape
                ),
                None => println!(
                    "{}  {} {}",
                    r["name"].as_str().unwrap_or(""),
                    r["dtype"].as_str().unwrap_or(""),
                    shape
                ),
            }
        }
        println!(
            "ran on {} in {:.3} ms",
            result.device,
            result.elapsed_s * 1e3
        );
        if out.is_none() {
            eprintln!("(use --out DIR to write the results as .npy files)");
        }
    }
    if result.tensors.is_empty() {
        return Err(Error::new(
            ErrorCode::Internal,
            "the op returned no results",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kwarg_values() {
        assert_eq!(parse_value("-1"), Value::Int(-1));
        assert_eq!(parse_value("2.5"), Value::Float(2.5));
        assert_eq!(parse_value("true"), Value::Bool(true));
        assert_eq!(parse_value("True"), Value::Bool(true));
        assert_eq!(parse_value("None"), Value::None);
        assert_eq!(
            parse_value("[0, 2, 1]"),
            Value::List(vec![Value::Int(0), Value::Int(2), Value::Int(1)])
        );
        assert_eq!(parse_value("ij,jk->ik"), Value::Str("ij,jk->ik".into()));
        assert_eq!(parse_value("\"same\""), Value::Str("same".into()));
    }
}
