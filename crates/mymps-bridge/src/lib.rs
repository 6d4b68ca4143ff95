//! # mymps-bridge
//!
//! The Python engine of mymps: model loaders that run models through an
//! embedded CPython — transformers' models of every architecture
//! (`huggingface`), a user's `torch.nn.Module` class from the server's
//! Python path with a state_dict (`checkpoint` with
//! `model_class="package.Class"`), and `torch.export` programs and
//! AOTInductor packages (`torch_export`, `.pt2` files).
//!
//! The interpreter runs in the server's process with the torch package whose
//! libtorch the server itself runs, so tensors cross without a copy: a
//! libtorch tensor of the server becomes a Python `torch.Tensor` sharing its
//! `TensorImpl` (torch's `THPVariable_Wrap`, through libtorch_python, in
//! `src/thp.cpp`), and a Python result becomes a libtorch handle to the same
//! tensor (`THPVariable_Unpack`). On an accelerator the tensors stay there.
//!
//! This library does not link libpython. It is a plugin that
//! `mymps-models`' launcher (`mymps_models::bridge`) loads, after it has
//! found the interpreter at run time and loaded its shared library with
//! `RTLD_GLOBAL`, and configured it through [`mymps_bridge_configure`]
//! (the interpreter's home, executable and `sys.path`). A server without
//! Python never loads it, and its native loaders work as before.
//!
//! The GIL: Rust code holds it only while it calls into Python (wrapping
//! tensors, the model's Python code); uploads and downloads run without it,
//! and torch releases it inside every operator, so concurrent forward passes
//! of one model overlap in their kernels and take turns in Python code.
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::ffi::{CStr, CString, c_char};
use std::sync::{Arc, Mutex, OnceLock};

use mymps_backend_tch::{Converter, parse_device};
use mymps_core::model::{
    Control, GenerateLimits, GeneratePlan, GenerateRequest, GenerateSummary, LoadRequest, Model,
    ModelLoader, Step,
};
use mymps_core::plugin::PluginRegistrar;
use mymps_core::{Error, ErrorCode, Result};
use pyo3::prelude::*;
use pyo3::types::{PyCFunction, PyDict, PyList, PyTuple};
use serde::Deserialize;

/// The Python side (run as the module `mymps_bridge`).
const BRIDGE_PY: &str = include_str!("bridge.py");

#[cfg(not(mymps_no_python_headers))]
unsafe extern "C" {
    fn mymps_thp_wrap(t: *const std::ffi::c_void) -> *mut pyo3::ffi::PyObject;
    fn mymps_thp_check(o: *mut pyo3::ffi::PyObject) -> i32;
    fn mymps_thp_unpack(o: *mut pyo3::ffi::PyObject) -> *mut std::ffi::c_void;
}

// Built without Python's headers (no thp.cpp): the engine refuses to start
// (`start`), so these are never called.
#[cfg(mymps_no_python_headers)]
unsafe fn mymps_thp_wrap(_: *const std::ffi::c_void) -> *mut pyo3::ffi::PyObject {
    std::ptr::null_mut()
}
#[cfg(mymps_no_python_headers)]
unsafe fn mymps_thp_check(_: *mut pyo3::ffi::PyObject) -> i32 {
    0
}
#[cfg(mymps_no_python_headers)]
unsafe fn mymps_thp_unpack(_: *mut pyo3::ffi::PyObject) -> *mut std::ffi::c_void {
    std::ptr::null_mut()
}

/// What the launcher tells the engine about the interpreter it loaded.
#[derive(Debug, Deserialize)]
struct Config {
    /// The interpreter's executable (`sys.executable` of the venv).
    executable: String,
    /// Its installation (`sys.base_prefix`): the standard library's home.
    home: String,
    /// `sys.path` as that interpreter has it (the server's import path).
    path: Vec<String>,
    /// The torch package folder whose libtorch this process runs.
    torch: String,
    /// Whether the operator allowed `trust_remote_code`
    /// (`mymps serve --allow-remote-code`).
    #[serde(default)]
    allow_remote_code: bool,
}

struct Engine {
    module: Py<PyModule>,
    allow_remote_code: bool,
}

static ENGINE: OnceLock<std::result::Result<Engine, String>> = OnceLock::new();

fn engine() -> Result<&'static Engine> {
    match ENGINE.get() {
        Some(Ok(e)) => Ok(e),
        Some(Err(m)) => Err(Error::new(ErrorCode::Model, m.clone())),
        None => Err(Error::new(
            ErrorCode::Model,
            "the Python engine was not configured (it is loaded by mymps-models' launcher)",
        )),
    }
}

/// A Python error as a client's error: the exception's type and the first
/// lines of its message (no traceback, at most 600 bytes). The bridge's own
/// errors keep their code: `BadOption` is a bad argument, `OverLimit` a
/// limit reached, `NoSupport` unsupported, any other a model error.
fn py_error(py: Python<'_>, e: PyErr) -> Error {
    let module = py.import("mymps_bridge").ok();
    let is = |name: &str| {
        module
            .as_ref()
            .and_then(|m| m.getattr(name).ok())
            .is_some_and(|cls| e.get_type(py).is(&cls))
    };
    let code = if is("BadOption") {
        ErrorCode::BadArgument
    } else if is("OverLimit") {
        ErrorCode::LimitReached
    } else if is("NoSupport") {
        ErrorCode::Unsupported
    } else {
        ErrorCode::Model
    };
    let bridge_error = code != ErrorCode::Model || is("BridgeError");
    let text = e.value(py).to_string();
    let mut msg = if bridge_error {
        text
    } else {
        let name = e
            .get_type(py)
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "Exception".into());
        format!("{name}: {text}")
    };
    let lines: Vec<&str> = msg.lines().take(6).collect();
    msg = lines.join("\n");
    if msg.len() > 600 {
        let mut cut = 600;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
        msg.push('…');
    }
    Error::new(code, msg)
}

fn wide(s: &str) -> std::result::Result<*mut libc::wchar_t, String> {
    let c = CString::new(s).map_err(|_| format!("'{s}' holds a NUL"))?;
    // SAFETY: a NUL-terminated string; the result is leaked on purpose
    // (Py_SetPythonHome and Py_SetProgramName keep the pointer).
    let w = unsafe { pyo3::ffi::Py_DecodeLocale(c.as_ptr(), std::ptr::null_mut()) };
    if w.is_null() {
        return Err(format!("cannot decode '{s}'"));
    }
    Ok(w)
}

fn start(config: &Config) -> std::result::Result<Engine, String> {
    if cfg!(mymps_no_python_headers) {
        return Err(
            "this server's Python engine was built without Python's headers (Python.h): install them (Debian/Ubuntu: apt-get install python3-dev) and rebuild (scripts/setup.sh)".into(),
        );
    }
    // SAFETY: before the interpreter starts, from the one thread that
    // starts it (the OnceLock); the strings live for the process.
    unsafe {
        if pyo3::ffi::Py_IsInitialized() == 0 {
            #[allow(deprecated)]
            pyo3::ffi::Py_SetPythonHome(wide(&config.home)?);
            #[allow(deprecated)]
            pyo3::ffi::Py_SetProgramName(wide(&config.executable)?);
        }
    }
    // Py_InitializeEx(0): the server keeps its own signal handlers.
    Python::initialize();
    Python::attach(|py| -> PyResult<std::result::Result<Engine, String>> {
        let sys = py.import("sys")?;
        sys.setattr("path", PyList::new(py, &config.path)?)?;
        sys.setattr("argv", PyList::new(py, ["mymps"])?)?;
        sys.setattr("executable", &config.executable)?;
        let torch = match py.import("torch") {
            Ok(t) => t,
            Err(e) => {
                return Ok(Err(format!(
                    "the Python engine cannot import torch from {}: {}",
                    config.executable,
                    py_error(py, e).message
                )));
            }
        };
        let file: String = torch.getattr("__file__")?.extract()?;
        let dir = std::path::Path::new(&file)
            .parent()
            .and_then(|d| std::fs::canonicalize(d).ok());
        let ours = std::fs::canonicalize(&config.torch).ok();
        if dir.is_none() || dir != ours {
            return Ok(Err(format!(
                "the interpreter {} imports torch from '{}', but this server runs the libtorch of '{}': tensors can only cross within one torch (point MYMPS_PYTHON at the python of that environment)",
                config.executable,
                file,
                config.torch
            )));
        }
        let code = CString::new(BRIDGE_PY).expect("bridge.py holds no NUL");
        let module = PyModule::from_code(py, &code, c"mymps_bridge.py", c"mymps_bridge")?;
        // Importable by name, for the error type check.
        sys.getattr("modules")?.set_item("mymps_bridge", &module)?;
        Ok(Ok(Engine {
            module: module.unbind(),
            allow_remote_code: config.allow_remote_code,
        }))
    })
    .unwrap_or_else(|e| Python::attach(|py| Err(py_error(py, e).message)))
}

/// Configures the engine: starts the embedded interpreter as `json` (a
/// [`Config`]) says. Called once by the launcher, after libpython was
/// loaded with `RTLD_GLOBAL` and before this library is registered as a
/// plugin. Returns 0, or non-zero with a NUL-terminated message in `err`.
///
/// # Safety
/// `json` is a NUL-terminated string; `err` points to `len` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mymps_bridge_configure(
    json: *const c_char,
    err: *mut c_char,
    len: usize,
) -> i32 {
    let result = std::panic::catch_unwind(|| {
        // SAFETY: per the function's contract.
        let text = unsafe { CStr::from_ptr(json) }.to_string_lossy();
        let config: Config =
            serde_json::from_str(&text).map_err(|e| format!("bad bridge configuration: {e}"))?;
        match ENGINE.get_or_init(|| start(&config)) {
            Ok(_) => Ok(()),
            Err(m) => Err(m.clone()),
        }
    })
    .unwrap_or_else(|p| {
        Err(format!(
            "the Python engine panicked while starting: {}",
            mymps_core::plugin::panic_message(&*p)
        ))
    });
    match result {
        Ok(()) => 0,
        Err(m) => {
            if len > 0 {
                let n = m.len().min(len - 1);
                // SAFETY: `err` has `len` bytes; we write `n + 1 <= len`.
                unsafe {
                    std::ptr::copy_nonoverlapping(m.as_ptr(), err as *mut u8, n);
                    *err.add(n) = 0;
                }
            }
            1
        }
    }
}

/// A libtorch tensor as a Python tensor sharing its storage.
fn wrap<'py>(py: Python<'py>, t: &tch::Tensor) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: `as_ptr` is tch's `at::Tensor*`, alive for the call; the
    // result is a new reference or NULL with the error set; the GIL is held.
    unsafe {
        let o = mymps_thp_wrap(t.as_ptr() as *const std::ffi::c_void);
        Bound::from_owned_ptr_or_err(py, o)
    }
}

/// A Python tensor as a libtorch handle to the same tensor.
fn unpack(name: &str, o: &Bound<'_, PyAny>) -> Result<tch::Tensor> {
    // SAFETY: the GIL is held (`o` is bound); torch was imported.
    unsafe {
        if mymps_thp_check(o.as_ptr()) == 0 {
            return Err(Error::new(
                ErrorCode::Model,
                format!("result '{name}' is not a tensor"),
            ));
        }
        let p = mymps_thp_unpack(o.as_ptr());
        if p.is_null() {
            return Err(Error::new(
                ErrorCode::Model,
                format!("result '{name}' cannot be read"),
            ));
        }
        // A new `at::Tensor` handle of ours: tch frees it.
        Ok(tch::Tensor::from_ptr(p.cast()))
    }
}

/// One of the bridge's loaders.
struct BridgeLoader {
    model_type: &'static str,
}

struct PyModel {
    loaded: Py<PyAny>,
    device: tch::Device,
    metadata: BTreeMap<String, String>,
}

impl ModelLoader for BridgeLoader {
    fn model_type(&self) -> &str {
        self.model_type
    }

    fn load(&self, request: &LoadRequest, device_name: &str) -> Result<Box<dyn Model>> {
        let engine = engine()?;
        if request.trust_remote_code && !engine.allow_remote_code {
            return Err(Error::new(
                ErrorCode::Model,
                "trust_remote_code=True runs code that comes with the model; this server does not allow it (start it with mymps serve --allow-remote-code)",
            ));
        }
        let device = parse_device(device_name)?;
        let torch_device = match device {
            tch::Device::Cpu => "cpu".to_owned(),
            tch::Device::Cuda(i) => format!("cuda:{i}"),
            tch::Device::Mps => "mps".to_owned(),
            d => format!("{d:?}").to_lowercase(),
        };
        let path = request.path().to_owned();
        Python::attach(|py| {
            let m = engine.module.bind(py);
            let loaded = match self.model_type {
                "huggingface" => m.call_method1(
                    "load_huggingface",
                    (
                        &path,
                        &torch_device,
                        request.dtype.as_deref(),
                        request.trust_remote_code,
                    ),
                ),
                "checkpoint" => m.call_method1(
                    "load_checkpoint",
                    (
                        &path,
                        request.model_class.as_deref().unwrap_or(""),
                        request.config.as_deref(),
                        &torch_device,
                        request.dtype.as_deref(),
                    ),
                ),
                _ => m.call_method1(
                    "load_torch_export",
                    (&path, &torch_device, request.dtype.as_deref()),
                ),
            }
            .map_err(|e| py_error(py, e))?;
            let md: BTreeMap<String, String> = loaded
                .getattr("metadata")
                .and_then(|d| d.extract())
                .map_err(|e| py_error(py, e))?;
            let mut metadata = md;
            metadata.insert("engine".into(), "python".into());
            metadata.insert("device".into(), device_name.to_owned());
            metadata.insert("path".into(), path.clone());
            Ok(Box::new(PyModel {
                loaded: loaded.unbind(),
                device,
                metadata,
            }) as Box<dyn Model>)
        })
    }
}

impl Model for PyModel {
    fn forward(
        &self,
        inputs: Vec<(String, mymps_core::Tensor)>,
    ) -> Result<Vec<(String, mymps_core::Tensor)>> {
        let engine = engine()?;
        let mut positional: Vec<(usize, tch::Tensor)> = Vec::new();
        let mut named: Vec<(String, tch::Tensor)> = Vec::new();
        let mut conv = Converter::new(self.device);
        // Uploads (a host-to-device copy on an accelerator, a view on the
        // CPU) run before the GIL is taken.
        for (name, t) in inputs {
            let x = conv.upload(t)?;
            match name.parse::<usize>() {
                Ok(i) if name == i.to_string() => positional.push((i, x)),
                _ => named.push((name, x)),
            }
        }
        positional.sort_by_key(|(i, _)| *i);
        if positional.iter().enumerate().any(|(n, (i, _))| n != *i) {
            return Err(Error::bad_argument(
                "positional inputs must be numbered \"0\", \"1\", ... without gaps",
            ));
        }
        let results: Vec<(String, tch::Tensor)> = Python::attach(|py| {
            let run = || -> PyResult<Bound<'_, PyAny>> {
                let args = PyList::empty(py);
                for (_, t) in &positional {
                    args.append(wrap(py, t)?)?;
                }
                let kwargs = PyDict::new(py);
                for (k, t) in &named {
                    kwargs.set_item(k, wrap(py, t)?)?;
                }
                engine.module.bind(py).call_method1(
                    "forward",
                    PyTuple::new(
                        py,
                        [
                            self.loaded.bind(py).clone(),
                            args.into_any(),
                            kwargs.into_any(),
                        ],
                    )?,
                )
            };
            let out = run().map_err(|e| py_error(py, e))?;
            let list = out
                .cast_into::<PyList>()
                .map_err(|_| Error::internal("bridge forward returned no list"))?;
            let mut v = Vec::with_capacity(list.len());
            for item in list.iter() {
                let (name, t): (String, Bound<'_, PyAny>) =
                    item.extract().map_err(|e| py_error(py, e))?;
                let x = unpack(&name, &t)?;
                v.push((name, x));
            }
            Ok::<_, Error>(v)
        })?;
        // Downloads (device to host) without the GIL.
        results
            .into_iter()
            .map(|(n, t)| Ok((n, conv.download(t)?)))
            .collect()
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        self.metadata.clone()
    }

    /// Through transformers' own `generate` (`bridge.py`, "text
    /// generation"): each new token is handed to `on_step` as transformers
    /// produces it, from a `StoppingCriteria` that also stops the
    /// generation when `on_step` answers [`Control::Stop`]. `on_step` runs
    /// without the GIL.
    fn generate(
        &self,
        request: &GenerateRequest,
        limits: &GenerateLimits,
        on_step: &mut dyn FnMut(Step) -> Control,
    ) -> Result<GenerateSummary> {
        let engine = engine()?;
        let (request, limits) = request_json(request, limits)?;
        let erased: *mut (dyn FnMut(Step) -> Control + '_) = on_step;
        // SAFETY: only the lifetime is erased. The pointer lives in `slot`,
        // which `Clear` empties before this function returns (however it
        // returns); the Python function that reads it finds it empty after
        // that (Python may keep the function alive, in a traceback).
        let erased: *mut (dyn FnMut(Step) -> Control + 'static) =
            unsafe { std::mem::transmute(erased) };
        let slot = Arc::new(Mutex::new(Some(StepFn(erased))));
        struct Clear(Arc<Mutex<Option<StepFn>>>);
        impl Drop for Clear {
            fn drop(&mut self) {
                *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
        }
        let _clear = Clear(slot.clone());
        let text = Python::attach(|py| {
            let emit = PyCFunction::new_closure(
                py,
                Some(c"mymps_emit_step"),
                None,
                move |args: &Bound<'_, PyTuple>, _: Option<&Bound<'_, PyDict>>| -> PyResult<bool> {
                    let json: String = args.get_item(0)?.extract()?;
                    let step: Step = serde_json::from_str(&json).map_err(|e| {
                        pyo3::exceptions::PyValueError::new_err(format!("a bad step: {e}"))
                    })?;
                    let guard = slot.lock().unwrap_or_else(|p| p.into_inner());
                    let Some(f) = guard.as_ref() else {
                        return Ok(true);
                    };
                    let f = StepFn(f.0);
                    // The caller's callback may block (a full queue to a
                    // client): other Python work goes on meanwhile.
                    // SAFETY: the callback is alive while `slot` holds it
                    // (see above), and only this thread calls it.
                    let control = args.py().detach(move || unsafe { f.call(step) });
                    Ok(control == Control::Stop)
                },
            )?;
            engine
                .module
                .bind(py)
                .call_method1("generate", (self.loaded.bind(py), request, limits, emit))?
                .extract::<String>()
        });
        let text = text.map_err(|e| Python::attach(|py| py_error(py, e)))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::internal(format!("the bridge's generate summary: {e}")))
    }

    fn plan_generate(
        &self,
        request: &GenerateRequest,
        limits: &GenerateLimits,
    ) -> Result<GeneratePlan> {
        let engine = engine()?;
        let (request, limits) = request_json(request, limits)?;
        let text = Python::attach(|py| {
            engine
                .module
                .bind(py)
                .call_method1("plan_generate", (self.loaded.bind(py), request, limits))
                .and_then(|o| o.extract::<String>())
                .map_err(|e| py_error(py, e))
        })?;
        serde_json::from_str(&text)
            .map_err(|e| Error::internal(format!("the bridge's generate plan: {e}")))
    }

    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        let engine = engine()?;
        Python::attach(|py| {
            engine
                .module
                .bind(py)
                .call_method1("encode", (self.loaded.bind(py), text, add_special_tokens))
                .and_then(|o| o.extract::<Vec<i64>>())
                .map_err(|e| py_error(py, e))
        })
    }

    fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let engine = engine()?;
        Python::attach(|py| {
            engine
                .module
                .bind(py)
                .call_method1(
                    "decode",
                    (self.loaded.bind(py), ids.to_vec(), skip_special_tokens),
                )
                .and_then(|o| o.extract::<String>())
                .map_err(|e| py_error(py, e))
        })
    }
}

/// The caller's step callback, its lifetime erased (see
/// `PyModel::generate`).
struct StepFn(*mut (dyn FnMut(Step) -> Control + 'static));

impl StepFn {
    /// Calls the callback.
    ///
    /// # Safety
    /// It must still be alive, and no other call of it be under way.
    unsafe fn call(self, step: Step) -> Control {
        // SAFETY: per the function's contract.
        unsafe { (*self.0)(step) }
    }
}

// SAFETY: the callback is `FnMut` called from one thread at a time (the
// generating one); it moves between the GIL's holder and `detach`'s
// closure on that same thread.
unsafe impl Send for StepFn {}

/// A request and limits as the bridge's Python reads them (JSON); a
/// non-finite float is a bad argument (JSON has no NaN).
fn request_json(request: &GenerateRequest, limits: &GenerateLimits) -> Result<(String, String)> {
    for (name, v) in [
        ("temperature", request.temperature),
        ("top_p", request.top_p),
        ("repetition_penalty", request.repetition_penalty),
    ] {
        if let Some(v) = v.filter(|v| !v.is_finite()) {
            return Err(Error::bad_argument(format!(
                "{name} must be a finite number, not {v}"
            )));
        }
    }
    let r = serde_json::to_string(request).map_err(|e| Error::bad_argument(e.to_string()))?;
    let l = serde_json::to_string(limits).map_err(|e| Error::internal(e.to_string()))?;
    Ok((r, l))
}

impl Drop for PyModel {
    fn drop(&mut self) {
        // Python objects are released with the GIL held.
        if ENGINE.get().is_some_and(|e| e.is_ok()) {
            Python::attach(|py| {
                let loaded = std::mem::replace(&mut self.loaded, py.None());
                drop(loaded);
            });
        }
    }
}

fn register(r: &mut PluginRegistrar) -> Result<()> {
    for model_type in ["huggingface", "checkpoint", "torch_export"] {
        r.add_loader(BridgeLoader { model_type });
    }
    Ok(())
}

mymps_core::declare_plugin!(
    name: c"mymps-bridge",
    tch_version: mymps_backend_tch::TCH_VERSION_C,
    register: register,
);
