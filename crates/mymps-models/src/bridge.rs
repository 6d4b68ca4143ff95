//! The launcher of the Python engine (`mymps-bridge`), and the engine
//! choice.
//!
//! The engine is a plugin library that runs models in an embedded CPython.
//! It does not link libpython, so that a server without Python loads this
//! plugin (and the native loaders) all the same. On the first request that
//! needs it, the launcher:
//!
//! 1. finds the interpreter: `$MYMPS_PYTHON`, else the `python3` of the
//!    environment whose torch package holds the libtorch this process runs
//!    (`…/lib/pythonX.Y/site-packages/torch/lib/libtorch_cpu.so` →
//!    `…/bin/python3`), else `python3` on `PATH`; it must import that very
//!    torch (one libtorch in the process is what lets tensors cross without
//!    a copy);
//! 2. asks it (one `python3 -c`, no import of torch) for its version, its
//!    shared library (`sysconfig`: `LIBDIR`, `INSTSONAME`), `sys.base_prefix`
//!    and `sys.path` — the server's import path, `$PYTHONPATH` included;
//! 3. loads libpython with `RTLD_GLOBAL` (the engine's and torch's
//!    extension modules resolve their Python symbols against it), then the
//!    engine (`$MYMPS_BRIDGE`, else `python/libmymps_bridge.so` beside this
//!    plugin, else `plugins/python/` beside the executable), configures it
//!    (`mymps_bridge_configure`: the interpreter starts, without signal
//!    handlers) and registers it as a plugin (the usual version checks).
//!
//! A failure is kept and every later request that needs the engine gets
//! it, saying what to install; restart the server after installing.
//!
//! The choice, per request (`engine`): `"native"` — the Rust loaders only;
//! `"python"` — the bridge; none — native where it covers the model (an
//! architecture of [`crate::hf`], a class of [`crate::checkpoint`], a
//! TorchScript file), else the bridge (other architectures, a
//! `package.Class` model class, `torch_export` programs).

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char, c_void};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mymps_core::model::{LoadRequest, Model, ModelLoader};
use mymps_core::{Error, ErrorCode, Result};

use crate::convert::{clip, model_error};

/// Which engine a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The Rust implementations.
    Native,
    /// The Python bridge.
    Python,
}

/// The request's `engine`: `None` when it leaves the choice to the server.
pub fn requested(request: &LoadRequest) -> Result<Option<Engine>> {
    match request.engine.as_deref() {
        None | Some("") => Ok(None),
        Some("native") => Ok(Some(Engine::Native)),
        Some("python") => Ok(Some(Engine::Python)),
        Some(other) => Err(Error::bad_argument(format!(
            "engine '{}' is not one of: native, python",
            clip(other)
        ))),
    }
}

/// The started engine: its loaders by model type.
struct Started {
    loaders: BTreeMap<String, Arc<dyn ModelLoader>>,
}

static STARTED: OnceLock<std::result::Result<Started, String>> = OnceLock::new();

/// The engine's loader of `model_type`, starting the engine on first use.
/// The error says why the engine is not available and what to install.
pub fn loader(model_type: &str) -> Result<Arc<dyn ModelLoader>> {
    match STARTED.get_or_init(start) {
        Ok(s) => s.loaders.get(model_type).cloned().ok_or_else(|| {
            model_error(format!(
                "the Python engine has no '{model_type}' loader (it has: {})",
                s.loaders.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        }),
        Err(m) => Err(Error::new(
            ErrorCode::Model,
            format!("the Python engine is not available: {m}"),
        )),
    }
}

/// Starts the engine if it has not been; why it cannot be, if so.
pub fn available() -> std::result::Result<(), String> {
    match STARTED.get_or_init(start) {
        Ok(_) => Ok(()),
        Err(m) => Err(m.clone()),
    }
}

/// Loads `request` with the engine's loader of its type.
pub fn load(request: &LoadRequest, device: &str) -> Result<Box<dyn Model>> {
    loader(&request.model_type)?.load(request, device)
}

/// The folder of the torch package whose libtorch_cpu this process runs.
fn torch_dir() -> Option<PathBuf> {
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> i32 {
        // SAFETY: the loader hands a valid info; `data` is our Option.
        unsafe {
            let name = (*info).dlpi_name;
            if name.is_null() {
                return 0;
            }
            let path = CStr::from_ptr(name).to_string_lossy();
            if path.ends_with("/libtorch_cpu.so") {
                *(data as *mut Option<PathBuf>) = Some(PathBuf::from(path.into_owned()));
                return 1;
            }
        }
        0
    }
    let mut found: Option<PathBuf> = None;
    // SAFETY: the callback only reads the info and writes `found`.
    unsafe { libc::dl_iterate_phdr(Some(each), &mut found as *mut _ as *mut c_void) };
    let lib = std::fs::canonicalize(found?).ok()?;
    // …/torch/lib/libtorch_cpu.so → …/torch
    Some(lib.parent()?.parent()?.to_path_buf())
}

/// What the interpreter says of itself.
#[derive(Debug, serde::Deserialize)]
struct Probe {
    version: String,
    executable: String,
    base_prefix: String,
    libdir: Option<String>,
    instsoname: Option<String>,
    ldlibrary: Option<String>,
    path: Vec<String>,
    torch: Option<String>,
}

const PROBE: &str = r#"
import importlib.util, json, os, sys, sysconfig
spec = importlib.util.find_spec("torch")
torch = os.path.dirname(spec.origin) if spec and spec.origin else None
v = sysconfig.get_config_var
print(json.dumps({
    "version": "%d.%d" % sys.version_info[:2],
    "executable": sys.executable,
    "base_prefix": sys.base_prefix,
    "libdir": v("LIBDIR"),
    "instsoname": v("INSTSONAME"),
    "ldlibrary": v("LDLIBRARY"),
    "path": [p for p in sys.path[1:] if p],
    "torch": torch,
}))
"#;

/// Runs the probe with `python`, at most 60 seconds.
fn probe(python: &Path) -> std::result::Result<Probe, String> {
    let mut child = std::process::Command::new(python)
        .args(["-c", PROBE])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} did not answer", python.display()));
            }
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{} failed: {}",
            python.display(),
            clip(err.lines().last().unwrap_or(""))
        ));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{} answered no JSON: {e}", python.display()))
}

/// The interpreters to try, in order.
fn candidates(torch: Option<&Path>) -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("MYMPS_PYTHON").filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(p)];
    }
    let mut v = Vec::new();
    // …/lib/pythonX.Y/site-packages/torch → … (a venv or an installation).
    if let Some(prefix) = torch.and_then(|t| t.ancestors().nth(4)) {
        for name in ["python3", "python"] {
            let p = prefix.join("bin").join(name);
            if p.exists() {
                v.push(p);
            }
        }
    }
    v.push(PathBuf::from("python3"));
    v
}

fn same_dir(a: &str, b: &Path) -> bool {
    std::fs::canonicalize(a).ok().as_deref() == std::fs::canonicalize(b).ok().as_deref()
}

/// Loads libpython with RTLD_GLOBAL; the path it came from.
fn load_libpython(p: &Probe) -> std::result::Result<String, String> {
    let mut names: Vec<String> = Vec::new();
    let shared = |n: &&String| !n.ends_with(".a");
    for n in [&p.instsoname, &p.ldlibrary]
        .into_iter()
        .flatten()
        .filter(shared)
    {
        if let Some(dir) = &p.libdir {
            names.push(Path::new(dir).join(n).display().to_string());
        }
        names.push(
            Path::new(&p.base_prefix)
                .join("lib")
                .join(n)
                .display()
                .to_string(),
        );
        names.push(n.clone());
    }
    names.push(format!("libpython{}.so.1.0", p.version));
    names.dedup();
    let mut errors = Vec::new();
    for n in &names {
        // SAFETY: loading the interpreter's library runs no Python; it is
        // never unloaded.
        match unsafe {
            libloading::os::unix::Library::open(
                Some(n),
                libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
            )
        } {
            Ok(lib) => {
                std::mem::forget(lib);
                return Ok(n.clone());
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(format!(
        "Python {v}'s shared library (libpython{v}.so.1.0) cannot be loaded ({}): install it (Debian/Ubuntu: apt-get install libpython{v}; pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared) or set MYMPS_PYTHON to a python3 built with --enable-shared that has torch",
        clip(&errors.join("; ")),
        v = p.version
    ))
}

/// Where the engine library is.
fn engine_path() -> std::result::Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MYMPS_BRIDGE").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let mut tried = Vec::new();
    let mut here: Option<PathBuf> = None;
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr reads the address of one of our functions.
    if unsafe { libc::dladdr(engine_path as *const c_void, &mut info) } != 0
        && !info.dli_fname.is_null()
    {
        // SAFETY: a NUL-terminated path from the loader.
        let f = unsafe { CStr::from_ptr(info.dli_fname) }
            .to_string_lossy()
            .into_owned();
        here = std::fs::canonicalize(f).ok();
    }
    let exe = std::env::current_exe().ok();
    let dirs = [
        here.as_deref()
            .and_then(Path::parent)
            .map(|d| d.join("python")),
        exe.as_deref()
            .and_then(Path::parent)
            .map(|d| d.join("plugins/python")),
    ];
    for d in dirs.into_iter().flatten() {
        let p = d.join("libmymps_bridge.so");
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p.display().to_string());
    }
    Err(format!(
        "its library libmymps_bridge.so is not installed (looked at {}; scripts/setup.sh builds it, or set MYMPS_BRIDGE)",
        tried.join(", ")
    ))
}

fn allow_remote_code() -> bool {
    std::env::var("MYMPS_ALLOW_REMOTE_CODE")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

fn start() -> std::result::Result<Started, String> {
    // The engine's library first: without it nothing else is worth loading.
    let engine = engine_path()?;
    let torch = torch_dir();
    let mut tried = Vec::new();
    let mut found = None;
    for python in candidates(torch.as_deref()) {
        match probe(&python) {
            Ok(p) => match (&p.torch, &torch) {
                (Some(t), Some(ours)) if same_dir(t, ours) => {
                    found = Some(p);
                    break;
                }
                (t, Some(_)) => tried.push(format!(
                    "{} imports torch from {}",
                    python.display(),
                    t.as_deref().unwrap_or("nowhere")
                )),
                (_, None) => tried.push("this process runs no libtorch_cpu.so".into()),
            },
            Err(e) => tried.push(e),
        }
    }
    let torch = torch.ok_or("this process runs no libtorch_cpu.so of a torch package")?;
    let Some(p) = found else {
        return Err(format!(
            "no Python interpreter with the torch package of this server's libtorch ({}): {}. Install the interpreter of that environment (with its shared library), or set MYMPS_PYTHON to it",
            torch.display(),
            tried.join("; ")
        ));
    };
    let libpython = load_libpython(&p)?;
    let config = serde_json::json!({
        "executable": p.executable,
        "home": p.base_prefix,
        "path": p.path,
        "torch": torch.display().to_string(),
        "allow_remote_code": allow_remote_code(),
    });
    // SAFETY: the engine is our own plugin library; its initialisers run
    // no Python. It is never unloaded.
    let lib = unsafe { libloading::Library::new(&engine) }
        .map_err(|e| format!("cannot load {}: {e}", engine.display()))?;
    {
        type Configure = unsafe extern "C" fn(*const c_char, *mut c_char, usize) -> i32;
        // SAFETY: the symbol's type is the engine's `mymps_bridge_configure`.
        let configure: libloading::Symbol<'_, Configure> =
            unsafe { lib.get(b"mymps_bridge_configure\0") }
                .map_err(|e| format!("{} is not the mymps bridge: {e}", engine.display()))?;
        let text = CString::new(config.to_string()).map_err(|e| e.to_string())?;
        let mut buf = vec![0 as c_char; 4096];
        // SAFETY: a NUL-terminated string and a buffer of its length.
        let rc = unsafe { configure(text.as_ptr(), buf.as_mut_ptr(), buf.len()) };
        if rc != 0 {
            // SAFETY: the engine wrote a NUL-terminated message.
            let m = unsafe { CStr::from_ptr(buf.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            return Err(m);
        }
    }
    std::mem::forget(lib);
    let host = mymps_core::plugin::HostVersions::with_tch(mymps_backend_tch::TCH_VERSION);
    let plugin = mymps_core::plugin::load_plugin(&engine, &host).map_err(|e| e.message)?;
    let loaders = plugin
        .registrar
        .loaders()
        .iter()
        .map(|l| (l.model_type().to_owned(), l.clone()))
        .collect();
    tracing::info!(
        python = %p.executable,
        libpython = %libpython,
        engine = %engine.display(),
        "python engine started"
    );
    Ok(Started { loaders })
}

/// `checkpoint` with a Python class (`model_class="package.Class"`, from
/// the server's import path), or any class with `engine="python"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PythonClassLoader;

impl ModelLoader for PythonClassLoader {
    fn model_type(&self) -> &str {
        "checkpoint"
    }

    fn handles(&self, request: &LoadRequest) -> bool {
        match requested(request) {
            Ok(Some(Engine::Python)) => true,
            Ok(Some(Engine::Native)) => false,
            Ok(None) => request
                .model_class
                .as_deref()
                .is_some_and(|c| c.contains('.')),
            // The error is this loader's to give.
            Err(_) => true,
        }
    }

    fn load(&self, request: &LoadRequest, device: &str) -> Result<Box<dyn Model>> {
        requested(request)?;
        load(request, device)
    }
}

/// `torch_export`: a `.pt2` file written by `torch.export.save` (an
/// `ExportedProgram`) or by AOTInductor (`aoti_compile_and_package`), run by
/// the Python engine.
#[derive(Debug, Clone, Copy, Default)]
pub struct TorchExportLoader;

impl ModelLoader for TorchExportLoader {
    fn model_type(&self) -> &str {
        "torch_export"
    }

    fn load(&self, request: &LoadRequest, device: &str) -> Result<Box<dyn Model>> {
        if requested(request)? == Some(Engine::Native) {
            return Err(model_error(
                "torch_export programs run on the Python engine only (leave engine unset or ask for \"python\")",
            ));
        }
        load(request, device)
    }
}
