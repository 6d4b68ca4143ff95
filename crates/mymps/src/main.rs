//! The `mymps` command: `mymps serve` runs the server; the other
//! subcommands are a client for shells and scripts.

mod cluster_cli;
mod tensors_cli;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};
use mymps::client::{Caller, ClientOptions, blocking::Client};
use mymps::server::{Server, ServerConfig};
use mymps::transport::{Endpoint, TransportOptions};
use mymps::{Error, ErrorCode, Value, npy};

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
    /// The server's metrics in the Prometheus text format (--json: as JSON).
    Metrics(ClientArgs),
    /// List the op whitelist, or describe one op.
    Ops {
        /// Show this op's signature and doc.
        #[arg(long, value_name = "OP")]
        describe: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Load, list, describe and unload models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A forward pass of a loaded model on .npy files: `mymps infer NAME 0=x.npy --out d`.
    Infer {
        /// The model's name.
        name: String,
        /// Tensor inputs, NAME=FILE.npy (`0`, `1`, ... positional, other names
        /// keyword), or NAME=@SHARED for a tensor shared on the server.
        #[arg(value_name = "NAME=FILE.npy")]
        inputs: Vec<String>,
        /// Write each result to DIR/NAME.npy.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Keep result RESULT on the server, shared as NAME (repeatable).
        #[arg(long = "share", value_name = "RESULT=NAME")]
        share: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run one op on .npy files: `mymps exec matmul 0=a.npy 1=b.npy --out d`.
    Exec {
        /// The op.
        op: String,
        /// Tensor inputs, NAME=FILE.npy (`0`, `1`, ... positional, other names
        /// keyword), or NAME=@SHARED for a tensor shared on the server.
        #[arg(value_name = "NAME=FILE.npy")]
        inputs: Vec<String>,
        /// Keep result RESULT on the server, shared as NAME (repeatable).
        #[arg(long = "share", value_name = "RESULT=NAME")]
        share: Vec<String>,
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
    /// Upload a .npy file and share it under a name, for later commands
    /// and other clients: `mymps put w.npy --name w`.
    Put {
        /// The .npy file.
        file: PathBuf,
        /// The name to share it under (a command's unnamed tensors go with
        /// its connection, so a name is needed).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Fetch a shared tensor's data: `mymps get w -o w.npy`.
    Get {
        /// Its shared name.
        name: String,
        /// Write it to this .npy file.
        #[arg(short = 'o', long = "out", value_name = "FILE.npy")]
        out: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Free shared tensors by name (for every client): `mymps free w b`.
    Free {
        /// Their shared names.
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Resident tensors: the server's count and bytes, and what the shared
    /// names given are (dtype, shape, device), without fetching them.
    Tensors {
        /// Shared names to describe.
        names: Vec<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Generate text with a loaded model, printed as it comes:
    /// `mymps generate gpt2 "Once upon a time" --max-new-tokens 50`.
    Generate(GenerateArgs),
    /// Several servers as one: `mymps cluster status --hosts tcp://a:5555,tcp://b:5555`.
    Cluster {
        #[command(subcommand)]
        command: cluster_cli::ClusterCommand,
        #[command(flatten)]
        cluster: cluster_cli::ClusterArgs,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// The loaded models.
    List,
    /// One loaded model's description.
    Info {
        /// The model's name.
        name: String,
    },
    /// Load a model on the server.
    Load {
        /// The name to register it under.
        name: String,
        /// huggingface, torchscript, checkpoint, or a plugin's type.
        #[arg(long = "type", default_value = "huggingface")]
        model_type: String,
        /// Where the model is on the server (default: the name).
        #[arg(long = "path")]
        model_path: Option<String>,
        /// The architecture, for checkpoints (mlp, cnn, linear, ...).
        #[arg(long = "class")]
        model_class: Option<String>,
        /// float32, float16 or bfloat16.
        #[arg(long)]
        dtype: Option<String>,
        /// Loader options as a JSON object (a model class's config).
        #[arg(long)]
        config: Option<String>,
        /// The engine: native or python (default: native where it covers
        /// the model, else the Python bridge).
        #[arg(long)]
        engine: Option<String>,
    },
    /// Unload a model.
    Unload {
        /// The model's name.
        name: String,
    },
}

#[derive(ClapArgs)]
struct GenerateArgs {
    /// The model's name.
    name: String,
    /// The prompt: text (tokenized on the server), or with --ids token ids
    /// separated by commas or spaces.
    prompt: String,
    /// The prompt is token ids (`464,2068,7586`), not text.
    #[arg(long)]
    ids: bool,
    /// The most tokens to add (default: the model's generation config, else 20).
    #[arg(long, value_name = "N")]
    max_new_tokens: Option<usize>,
    /// Sample instead of taking the most likely token.
    #[arg(long)]
    sample: bool,
    /// Sampling temperature (with --sample).
    #[arg(long)]
    temperature: Option<f64>,
    /// Sample among the K most likely tokens (with --sample; 0: all).
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,
    /// Nucleus sampling: the most likely tokens up to this probability (with --sample).
    #[arg(long, value_name = "P")]
    top_p: Option<f64>,
    /// transformers' repetition penalty (1: none).
    #[arg(long)]
    repetition_penalty: Option<f64>,
    /// Seed of the sampling (printed at the end when not given).
    #[arg(long)]
    seed: Option<u64>,
    /// A text that ends the generation (repeatable).
    #[arg(long = "stop", value_name = "TEXT")]
    stop: Vec<String>,
    /// A token id that ends the generation (repeatable).
    #[arg(long = "stop-id", value_name = "ID")]
    stop_ids: Vec<i64>,
    /// Do not stop at the model's end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(ClapArgs)]
struct ServeArgs {
    /// Where to listen (repeat for several listeners): tcp://HOST:PORT,
    /// tcp+tls://HOST:PORT (TCP in TLS), quic://HOST:PORT (TLS), zmq://HOST:PORT
    /// (ZeroMQ) or http://HOST:PORT (the first mymps's REST API, dashboard
    /// and /metrics). Default:
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
    /// Seconds a client may pause in the middle of sending a frame before
    /// it is disconnected and the memory it was granted is freed.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    stall_timeout: f64,
    /// Longest a request may take (its own deadline may ask for less):
    /// past it, it is answered `timeout` and its result dropped (a kernel
    /// runs to its end meanwhile). Default: no limit but the clients'.
    #[arg(long, value_name = "SECONDS")]
    request_timeout: Option<f64>,
    /// Close a connection that has nothing in flight and sent nothing for
    /// this long (its resident tensors are freed). Default: never.
    #[arg(long, value_name = "SECONDS")]
    idle_timeout: Option<f64>,
    /// Connections open at once; the one over is answered `busy` in its
    /// handshake and closed.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    max_connections: usize,
    /// Requests one connection may have in flight before the server stops
    /// reading from it.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_in_flight: usize,
    /// Share of the memory budget (0 to 1) that one connection's requests
    /// not yet answered may hold before the server stops reading from it.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.5)]
    connection_share: f64,
    /// Server-resident tensors one connection may hold (default 65536).
    #[arg(long, value_name = "N")]
    max_resident_per_connection: Option<u64>,
    /// Bytes one connection's resident tensors may take (default: no cap
    /// but the memory budget, which they count in).
    #[arg(long, value_name = "BYTES")]
    max_resident_bytes_per_connection: Option<u64>,
    /// Server-resident tensors of all connections, shared ones included
    /// (default 1048576).
    #[arg(long, value_name = "N")]
    max_resident: Option<u64>,
    /// Bytes of all server-resident tensors (default: the memory budget).
    #[arg(long, value_name = "BYTES")]
    max_resident_bytes: Option<u64>,
    /// Device bytes one `generate` may take: its KV cache and largest
    /// transient (default 1 GiB; the memory budget caps it too).
    #[arg(long, value_name = "BYTES")]
    max_generate_bytes: Option<u64>,
    /// New tokens one `generate` sequence may ask for (default 4096).
    #[arg(long, value_name = "N")]
    max_new_tokens: Option<usize>,
    /// Prompts in one `generate` (default 64).
    #[arg(long, value_name = "N")]
    max_generate_batch: Option<usize>,
    /// Seconds between two samples of the server's figures kept for the
    /// dashboard's plots and `GET /history` (at least 0.01).
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    history_interval: f64,
    /// Samples kept (default 600: ten minutes at one a second; at most
    /// 86400).
    #[arg(long, value_name = "N", default_value_t = 600)]
    history_samples: usize,
    /// The folder model files must lie under (default: the current directory).
    #[arg(long, value_name = "DIR", env = "MYMPS_MODEL_ROOT")]
    model_root: Option<PathBuf>,
    /// A plugin to load (a mymps plugin .so, e.g. libmymps_models.so); repeatable.
    #[arg(long = "plugin", value_name = "PATH")]
    plugins: Vec<PathBuf>,
    /// Folder whose plugins are loaded at start (default: $MYMPS_PLUGIN_DIR,
    /// else `plugins/` beside the mymps executable).
    #[arg(long, value_name = "DIR", env = "MYMPS_PLUGIN_DIR")]
    plugin_dir: Option<PathBuf>,
    /// A file holding the shared token clients must present (surrounding
    /// whitespace ignored). Without it, no authentication.
    #[arg(long, value_name = "PATH", env = "MYMPS_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// quic://, tcp+tls://: the certificate chain to present (PEM), with
    /// --tls-key. Without both, a self-signed certificate is generated at
    /// every start.
    #[arg(long, value_name = "PEM", env = "MYMPS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// quic://, tcp+tls://: the private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", env = "MYMPS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// quic://, tcp+tls://: where to write the generated self-signed
    /// certificate for clients (one for every TLS listener; default:
    /// ./mymps-quic-cert.pem; a file mymps did not write is never
    /// overwritten).
    #[arg(long, value_name = "PATH", env = "MYMPS_TLS_CERT_OUT")]
    tls_cert_out: Option<PathBuf>,
    /// Log filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long, default_value = "info", env = "MYMPS_LOG")]
    log: String,
    /// Let clients load Hugging Face models with trust_remote_code=True:
    /// the Python engine then runs the Python code that comes with such a
    /// model. Off by default; only for model folders you trust.
    #[arg(long, env = "MYMPS_ALLOW_REMOTE_CODE")]
    allow_remote_code: bool,
}

#[derive(ClapArgs)]
struct ClientArgs {
    /// Server address: tcp://HOST:PORT, tcp+tls://HOST:PORT, quic://HOST:PORT
    /// or zmq://HOST:PORT.
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
    /// Authentication token, for servers started with --auth-token-file.
    #[arg(long, env = "MYMPS_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// quic://, tcp+tls://: the server's certificate (a pin of exactly that
    /// certificate; self-signed ones too) or its CA (PEM) to verify it with.
    #[arg(long, value_name = "PEM", env = "MYMPS_CA", global = true)]
    ca: Option<PathBuf>,
    /// quic://, tcp+tls://: the server certificate's pinned SHA-256
    /// fingerprint (hex, as `mymps serve` prints it).
    #[arg(long, value_name = "SHA256", env = "MYMPS_FINGERPRINT", global = true)]
    fingerprint: Option<String>,
}

impl ClientArgs {
    fn connect(&self) -> Result<Client, Error> {
        let options = ClientOptions {
            timeout: Duration::from_secs_f64(self.timeout),
            token: self.token.clone(),
            transport: TransportOptions {
                tls_ca: self.ca.clone(),
                tls_fingerprint: self.fingerprint.clone(),
                ..TransportOptions::default()
            },
            ..ClientOptions::default()
        };
        Client::connect_with(&self.addr, options)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve(_)) {
        // SAFETY: no other thread runs yet.
        unsafe { mymps::backend_tch::prefer_huge_pages() };
    } else {
        // A client command whose output goes to a closed pipe (`| head`)
        // ends quietly, as command-line tools do, instead of panicking in
        // println!. (Not the server: its sockets must not raise SIGPIPE.)
        #[cfg(unix)]
        // SAFETY: restoring the default disposition of a signal.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Serve(a) => serve(a),
        Command::Health(c) => health(&c),
        Command::Stats(c) => stats(&c),
        Command::Metrics(c) => metrics(&c),
        Command::Ops { describe, client } => ops(&client, describe.as_deref()),
        Command::Models { command, client } => models(&client, command),
        Command::Infer {
            name,
            inputs,
            out,
            share,
            client,
        } => infer(&client, &name, &inputs, &share, out.as_deref()),
        Command::Exec {
            op,
            inputs,
            share,
            kwargs,
            out,
            client,
        } => exec(&client, &op, &inputs, &share, &kwargs, out.as_deref()),
        Command::Put { file, name, client } => tensors_cli::put(&client, &file, &name),
        Command::Get { name, out, client } => tensors_cli::get(&client, &name, out.as_ref()),
        Command::Free { names, client } => tensors_cli::free(&client, &names),
        Command::Tensors { names, client } => tensors_cli::tensors(&client, &names),
        Command::Generate(args) => generate(args),
        Command::Cluster { command, cluster } => cluster_cli::run(&cluster, command),
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
    if a.allow_remote_code {
        // The Python engine (a plugin) reads the operator's choice here.
        // SAFETY: no other thread runs yet (the runtime and the plugins
        // start below), so nothing reads the environment meanwhile.
        unsafe { std::env::set_var("MYMPS_ALLOW_REMOTE_CODE", "1") };
        tracing::warn!(
            "--allow-remote-code: models loaded with trust_remote_code=True run their own Python code"
        );
    }
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        // Panics in requests are caught and answered (and logged whole);
        // the default hook would also dump each one to stderr, and a
        // libtorch panic's text carries a C++ backtrace of kilobytes.
        std::panic::set_hook(Box::new(|info| {
            let p = info.payload();
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            tracing::error!(%at, "panic: {}", mymps::error::brief(msg));
        }));
    }
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
    let r = &mut config.resident;
    for (given, field) in [
        (a.max_resident_per_connection, &mut r.per_connection),
        (
            a.max_resident_bytes_per_connection,
            &mut r.per_connection_bytes,
        ),
        (a.max_resident, &mut r.total),
        (a.max_resident_bytes, &mut r.total_bytes),
    ] {
        if let Some(n) = given {
            *field = n;
        }
    }
    let g = &mut config.generate;
    if let Some(b) = a.max_generate_bytes {
        g.max_bytes = b;
    }
    if let Some(n) = a.max_new_tokens {
        g.max_new_tokens = n;
    }
    if let Some(n) = a.max_generate_batch {
        g.max_batch = n;
    }
    config.history = mymps::server::HistoryConfig {
        interval: Duration::try_from_secs_f64(a.history_interval)
            .ok()
            .filter(|d| *d >= Duration::from_millis(10))
            .ok_or_else(|| {
                Error::bad_argument(format!(
                    "--history-interval must be at least 0.01 seconds, not {}",
                    a.history_interval
                ))
            })?,
        samples: a.history_samples,
    }
    .clamped();
    config.limits.stall_timeout = Duration::try_from_secs_f64(a.stall_timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            Error::bad_argument(format!(
                "--stall-timeout must be a positive number of seconds, not {}",
                a.stall_timeout
            ))
        })?;
    let secs = |flag: &str, v: Option<f64>| -> Result<Option<Duration>, Error> {
        v.map(|s| {
            Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    Error::bad_argument(format!(
                        "--{flag} must be a positive number of seconds, not {s}"
                    ))
                })
        })
        .transpose()
    };
    config.request_timeout = secs("request-timeout", a.request_timeout)?;
    config.idle_timeout = secs("idle-timeout", a.idle_timeout)?;
    if a.max_connections == 0 || a.max_in_flight == 0 {
        return Err(Error::bad_argument(
            "--max-connections and --max-in-flight must be at least 1",
        ));
    }
    if !(a.connection_share > 0.0 && a.connection_share <= 1.0) {
        return Err(Error::bad_argument(format!(
            "--connection-share must be a fraction above 0 and at most 1, not {}",
            a.connection_share
        )));
    }
    config.max_connections = a.max_connections;
    config.max_in_flight = a.max_in_flight;
    config.connection_share = a.connection_share;
    config.model_root = a.model_root.clone();
    if let Some(path) = &a.auth_token_file {
        config.auth_token = Some(mymps::auth::read_token_file(path)?);
    }
    config.transport = TransportOptions {
        tls_cert: a.tls_cert.clone(),
        tls_key: a.tls_key.clone(),
        tls_cert_out: a.tls_cert_out.clone(),
        ..TransportOptions::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mymps-io")
        .build()
        .map_err(|e| Error::internal(format!("cannot start the runtime: {e}")))?;
    let plugins = load_plugins(&a.plugins, a.plugin_dir.as_deref())?;
    let plugin_ops: Vec<_> = plugins
        .iter()
        .flat_map(|p| p.registrar.ops().iter().copied())
        .collect();
    runtime.block_on(async move {
        let device = a.device.clone();
        let backend = tokio::task::spawn_blocking(move || {
            mymps::backend_tch::TchBackend::with_ops(&device, &plugin_ops)
        })
        .await
        .map_err(|e| Error::internal(e.to_string()))??;
        tracing::info!(
            ops = mymps::Backend::ops(&backend).len(),
            "op whitelist loaded"
        );
        let server = Server::bind(config, Arc::new(backend)).await?;
        for p in &plugins {
            for l in p.registrar.loaders() {
                server.models().add_loader(l.clone())?;
            }
        }
        tracing::info!(model_types = ?server.models().model_types(), "model loaders");
        // The signal handlers go in before the lines below: a script may
        // send SIGTERM as soon as it has read them.
        let shutdown = shutdown_signal()?;
        // One line per listener on stdout, for scripts and tests that ask
        // for port 0.
        let mut out = std::io::stdout().lock();
        for ep in server.local_endpoints() {
            let _ = writeln!(out, "mymps: listening on {ep}");
        }
        // Then, once per TLS scheme (quic://, tcp+tls://), the certificate
        // clients verify the server with (one file for all of them).
        for scheme in ["quic", "tcp+tls"] {
            if !server.local_endpoints().iter().any(|ep| ep.scheme == scheme) {
                continue;
            }
            let path = a.tls_cert.clone().unwrap_or_else(|| {
                a.tls_cert_out
                    .clone()
                    .unwrap_or_else(|| mymps::tls::DEFAULT_CERT_FILE.into())
            });
            let fp = mymps::tls::fingerprint_of_pem_file(&path)
                .map_err(|e| Error::internal(e.to_string()))?;
            let shown = std::fs::canonicalize(&path).unwrap_or(path);
            let _ = writeln!(out, "mymps: {scheme} certificate {} sha256 {fp}", shown.display());
            tracing::info!(cert = %shown.display(), sha256 = %fp, "{scheme} certificate for clients (--ca FILE or --fingerprint SHA256)");
        }
        let _ = out.flush();
        drop(out);
        server.serve(shutdown).await;
        Ok(())
    })
}

/// Loads the plugins named with `--plugin` (a failure is fatal) and those
/// of the plugin folder (a failure is logged and the plugin skipped).
fn load_plugins(
    explicit: &[PathBuf],
    dir: Option<&std::path::Path>,
) -> Result<Vec<mymps::plugin::LoadedPlugin>, Error> {
    let host = mymps::plugin::HostVersions::with_tch(mymps::backend_tch::TCH_VERSION);
    let mut loaded = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let log = |p: &mymps::plugin::LoadedPlugin| {
        tracing::info!(plugin = %p.name, path = %p.path.display(), loaders = p.registrar.loaders().len(), ops = p.registrar.ops().len(), "plugin loaded");
    };
    for path in explicit {
        let p = mymps::plugin::load_plugin(path, &host)?;
        log(&p);
        seen.insert(std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()));
        loaded.push(p);
    }
    let default_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("plugins")));
    if let Some(dir) = dir.map(std::path::Path::to_path_buf).or(default_dir) {
        for path in mymps::plugin::plugins_in(&dir) {
            if !seen.insert(std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone())) {
                continue;
            }
            match mymps::plugin::load_plugin(&path, &host) {
                Ok(p) => {
                    log(&p);
                    loaded.push(p);
                }
                Err(e) => tracing::error!(error = %e, "plugin skipped"),
            }
        }
    }
    Ok(loaded)
}

/// Installs the SIGINT and SIGTERM handlers now, and returns what resolves
/// when either signal comes.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, Error> {
    #[cfg(unix)]
    let wait = {
        use tokio::signal::unix::{SignalKind, signal};
        let handler = |kind: SignalKind| {
            signal(kind).map_err(|e| Error::internal(format!("cannot handle signals: {e}")))
        };
        let (mut int, mut term) = (
            handler(SignalKind::interrupt())?,
            handler(SignalKind::terminate())?,
        );
        async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
    };
    #[cfg(not(unix))]
    let wait = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    Ok(async move {
        wait.await;
        tracing::info!("shutting down: finishing requests in flight");
    })
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

fn metrics(c: &ClientArgs) -> Result<(), Error> {
    let m = c.connect()?.metrics()?;
    if c.json {
        print_json(&m)
    } else {
        print!("{}", mymps::metrics::render_prometheus(&m));
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

fn print_model(info: &mymps::model::ModelInfo) {
    println!(
        "{}  ({}, on {}, loaded {})",
        info.name, info.model_type, info.device, info.loaded_at
    );
    for (k, v) in &info.metadata {
        println!("    {k}: {v}");
    }
}

fn models(c: &ClientArgs, command: ModelsCommand) -> Result<(), Error> {
    let client = c.connect()?;
    match command {
        ModelsCommand::List => {
            let models = client.list_models()?;
            if c.json {
                print_json(&models);
            } else if models.is_empty() {
                println!("no models loaded");
            } else {
                models.iter().for_each(print_model);
            }
        }
        ModelsCommand::Info { name } => {
            let info = client.model_info(&name)?;
            if c.json {
                print_json(&info)
            } else {
                print_model(&info)
            }
        }
        ModelsCommand::Load {
            name,
            model_type,
            model_path,
            model_class,
            dtype,
            config,
            engine,
        } => {
            let info = client.load_model(mymps::model::LoadRequest {
                name,
                model_type,
                model_path,
                model_class,
                dtype,
                trust_remote_code: false,
                config,
                engine,
            })?;
            if c.json {
                print_json(&info)
            } else {
                print_model(&info)
            }
        }
        ModelsCommand::Unload { name } => {
            client.unload_model(&name)?;
            if c.json {
                print_json(&serde_json::json!({"status": "ok", "name": name}));
            } else {
                println!("unloaded {name}");
            }
        }
    }
    Ok(())
}

/// `mymps generate`: the text printed as it comes (with --json, the
/// summary as JSON once it is done); how it ended goes to stderr.
fn generate(a: GenerateArgs) -> Result<(), Error> {
    use mymps::model::{GenerateRequest, Prompt};
    let prompt = if a.ids {
        let ids = a
            .prompt
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<i64>()
                    .map_err(|_| Error::bad_argument(format!("--ids: '{s}' is not a token id")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Prompt::Ids(ids)
    } else {
        Prompt::Text(a.prompt.clone())
    };
    let request = GenerateRequest {
        prompts: vec![prompt],
        max_new_tokens: a.max_new_tokens,
        do_sample: a.sample.then_some(true),
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
        stop_ids: a.stop_ids,
        stop_strings: a.stop,
        ignore_eos: a.ignore_eos,
        ..Default::default()
    };
    let client = a.client.connect()?;
    if a.client.json {
        print_json(&client.generate(&a.name, request)?);
        return Ok(());
    }
    let mut g = client.generate_stream(&a.name, request)?;
    let mut out = std::io::stdout().lock();
    let mut ids_only = true;
    for step in g.by_ref() {
        let token = &step?.tokens[0];
        if !token.text.is_empty() {
            ids_only = false;
            let _ = write!(out, "{}", token.text);
        } else if let (Some(id), true) = (token.id, ids_only) {
            // A model without a tokenizer: its ids.
            let _ = write!(out, "{id} ");
        }
        let _ = out.flush();
    }
    let _ = writeln!(out);
    let summary = g
        .summary()
        .cloned()
        .ok_or_else(|| Error::protocol("the generate stream ended without its summary"))?;
    let seq = &summary.sequences[0];
    let finish = serde_json::to_value(seq.finish)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut end = format!("[{} new tokens, {finish}", seq.ids.len());
    if let (Some(seed), None) = (summary.seed, a.seed) {
        end.push_str(&format!(", seed {seed}"));
    }
    eprintln!("{end}]");
    Ok(())
}

fn split_pair(s: &str, what: &str) -> Result<(String, String), Error> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| Error::bad_argument(format!("{what} '{s}' is not NAME=VALUE")))
}

fn infer(
    c: &ClientArgs,
    name: &str,
    inputs: &[String],
    share: &[String],
    out: Option<&std::path::Path>,
) -> Result<(), Error> {
    let (tensors, refs) = tensors_cli::inputs(inputs)?;
    let (keep, names) = tensors_cli::shares(share)?;
    let mut request = mymps::protocol::rpc::Infer::new(name, tensors);
    request.refs = refs;
    request.keep = keep;
    let client = c.connect()?;
    let result = client.call(request)?;
    let shared = tensors_cli::share_kept(&client, &result.kept, &names)?;
    report(c, result, &shared, out)
}

fn exec(
    c: &ClientArgs,
    op: &str,
    inputs: &[String],
    share: &[String],
    kwargs: &[String],
    out: Option<&std::path::Path>,
) -> Result<(), Error> {
    let (tensors, refs) = tensors_cli::inputs(inputs)?;
    let (keep, names) = tensors_cli::shares(share)?;
    let mut kw = BTreeMap::new();
    for k in kwargs {
        let (name, v) = split_pair(k, "--kwarg")?;
        kw.insert(name, parse_value(&v));
    }
    let mut call = mymps::client::Call::with(op, tensors, kw).keep(keep);
    for (name, r) in refs {
        call = call.input_ref(name, r);
    }
    let client = c.connect()?;
    let result = client.call(call)?;
    let shared = tensors_cli::share_kept(&client, &result.kept, &names)?;
    report(c, result, &shared, out)
}

/// Writes results to `out` (when given) and prints a summary; `shared`:
/// the results kept and shared (`--share`).
fn report(
    c: &ClientArgs,
    result: mymps::client::Outputs,
    shared: &[mymps::protocol::HandleInfo],
    out: Option<&std::path::Path>,
) -> Result<(), Error> {
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
            &serde_json::json!({"outputs": rows, "shared": shared, "device": result.device, "elapsed_s": result.elapsed_s}),
        );
    } else {
        for r in &rows {
            let head = format!(
                "{}  {} {}",
                r["name"].as_str().unwrap_or(""),
                r["dtype"].as_str().unwrap_or(""),
                r["shape"]
            );
            match r["path"].as_str() {
                Some(p) => println!("{head}  -> {p}"),
                None => println!("{head}"),
            }
        }
        for info in shared {
            println!("kept, shared as {}", tensors_cli::line(info));
        }
        println!(
            "ran on {} in {:.3} ms",
            result.device,
            result.elapsed_s * 1e3
        );
        if out.is_none() && !result.tensors.is_empty() {
            eprintln!("(use --out DIR to write the results as .npy files)");
        }
    }
    if result.tensors.is_empty() && shared.is_empty() {
        return Err(Error::new(ErrorCode::Internal, "no results came back"));
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
