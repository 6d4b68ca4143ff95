//! Dynamically loadable plugins: model loaders and ops in a `cdylib` that a
//! server loads at start (`mymps serve --plugin PATH`).
//!
//! Rust has no stable ABI, so a plugin crosses the boundary through one
//! C-ABI entry point, `mymps_plugin_header`, that returns a
//! [`PluginHeader`] of plain C data: a magic, the plugin-ABI version, and
//! the mymps, rustc and tch versions it was built with. The host compares
//! them with its own and refuses a mismatch with a message naming both
//! sides, **before any Rust type crosses**. Only then does it call the
//! header's `register` function with a [`PluginRegistrar`], to which the
//! plugin hands its loaders and ops explicitly (`inventory` registrations
//! in a dlopen'd library do not reach the host by themselves).
//!
//! Panics: a panic in plugin code cannot be caught by the host (the plugin
//! has its own copy of the standard library), so the plugin side catches
//! them: `register` runs under `catch_unwind`, and every loader and model
//! the registrar receives is wrapped so that its calls do too. A panic
//! becomes an error reply. Plugins are never unloaded.
//!
//! Writing a plugin:
//!
//! ```ignore
//! fn register(r: &mut mymps_core::plugin::PluginRegistrar) -> mymps_core::Result<()> {
//!     r.add_loader(MyLoader);
//!     Ok(())
//! }
//! mymps_core::declare_plugin!(name: "my-plugin", tch_version: c"...", register: register);
//! ```

use std::collections::BTreeMap;
use std::ffi::{CStr, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crate::error::{Error, ErrorCode, Result};
use crate::model::{
    Control, GenerateLimits, GeneratePlan, GenerateRequest, GenerateSummary, LoadRequest, Model,
    ModelLoader, Step,
};
use crate::ops::OpEntry;
use crate::tensor::Tensor;

/// The first bytes of every plugin header.
pub const PLUGIN_MAGIC: [u8; 8] = *b"MYMPSPLG";
/// The layout version of [`PluginHeader`] and [`PluginRegistrar`], and of
/// what crosses through them (`OpSpec`, `ForeignKernel`). 2: ops carry a
/// cost class, and plugin kernels an in-place variant. 3: `Model` has
/// `generate`, `plan_generate`, `encode` and `decode`. 4: `ModelLoader`
/// has `locate`.
pub const PLUGIN_ABI_VERSION: u32 = 4;
/// The entry point a plugin exports: `mymps_plugin_header_<crate>` (what
/// [`declare_plugin!`] writes; the crate name keeps two plugin crates
/// linkable into one program), or plain `mymps_plugin_header`.
pub const HEADER_SYMBOL: &str = "mymps_plugin_header";
/// This build's mymps version (`mymps 0.1.0`), as a C string.
pub const MYMPS_VERSION_C: &CStr = match CStr::from_bytes_with_nul(
    concat!("mymps ", env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
) {
    Ok(s) => s,
    Err(_) => panic!("version has no NUL"),
};
/// The rustc that built this crate, as a C string.
pub const RUSTC_VERSION_C: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("MYMPS_RUSTC_VERSION"), "\0").as_bytes()) {
        Ok(s) => s,
        Err(_) => panic!("version has no NUL"),
    };

/// The C-ABI description a plugin returns from `mymps_plugin_header`.
#[repr(C)]
pub struct PluginHeader {
    /// [`PLUGIN_MAGIC`].
    pub magic: [u8; 8],
    /// [`PLUGIN_ABI_VERSION`] of the plugin's build.
    pub abi_version: u32,
    /// The plugin's name.
    pub name: *const c_char,
    /// mymps version the plugin was built with.
    pub mymps_version: *const c_char,
    /// rustc version the plugin was built with.
    pub rustc_version: *const c_char,
    /// tch / libtorch version the plugin was built with.
    pub tch_version: *const c_char,
    /// Registers the plugin's loaders and ops into the `*mut PluginRegistrar`
    /// given as the first argument; on failure writes a NUL-terminated
    /// message into the buffer (second and third arguments) and returns
    /// non-zero.
    pub register: unsafe extern "C" fn(*mut c_void, *mut c_char, usize) -> i32,
}

// SAFETY: the header is immutable static data.
unsafe impl Sync for PluginHeader {}

/// The versions a host expects a plugin to match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVersions {
    /// mymps version.
    pub mymps: String,
    /// rustc version.
    pub rustc: String,
    /// tch / libtorch version.
    pub tch: String,
}

impl HostVersions {
    /// This build's mymps and rustc versions with the given tch version.
    pub fn with_tch(tch: &str) -> HostVersions {
        HostVersions {
            mymps: MYMPS_VERSION_C.to_string_lossy().into_owned(),
            rustc: RUSTC_VERSION_C.to_string_lossy().into_owned(),
            tch: tch.to_owned(),
        }
    }
}

/// What a plugin registered.
#[derive(Default)]
pub struct PluginRegistrar {
    loaders: Vec<Arc<dyn ModelLoader>>,
    ops: Vec<&'static OpEntry>,
}

impl PluginRegistrar {
    /// Adds a model loader; its calls (and its models' calls) catch panics
    /// on the plugin side.
    pub fn add_loader<L: ModelLoader + 'static>(&mut self, loader: L) {
        self.loaders.push(Arc::new(GuardedLoader(loader)));
    }

    /// Adds an op. Its kernel must catch its own panics (see
    /// `mymps_ops::plugin_ops`).
    pub fn add_op(&mut self, entry: &'static OpEntry) {
        self.ops.push(entry);
    }

    /// The loaders registered.
    pub fn loaders(&self) -> &[Arc<dyn ModelLoader>] {
        &self.loaders
    }

    /// The ops registered.
    pub fn ops(&self) -> &[&'static OpEntry] {
        &self.ops
    }
}

/// A panic payload as text.
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

fn guard<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(Error::new(
            ErrorCode::Model,
            format!(
                "{what} panicked: {}",
                crate::error::brief(&panic_message(&*p))
            ),
        ))
    })
}

struct GuardedLoader<L>(L);

impl<L: ModelLoader> ModelLoader for GuardedLoader<L> {
    fn model_type(&self) -> &str {
        self.0.model_type()
    }

    fn handles(&self, request: &LoadRequest) -> bool {
        catch_unwind(AssertUnwindSafe(|| self.0.handles(request))).unwrap_or(false)
    }

    fn choices(&self) -> Vec<String> {
        catch_unwind(AssertUnwindSafe(|| self.0.choices())).unwrap_or_default()
    }

    fn locate(&self, path: &str) -> Option<Result<std::path::PathBuf>> {
        catch_unwind(AssertUnwindSafe(|| self.0.locate(path))).unwrap_or(None)
    }

    fn load(&self, request: &LoadRequest, device: &str) -> Result<Box<dyn Model>> {
        let model = guard(&format!("loader '{}'", self.0.model_type()), || {
            self.0.load(request, device)
        })?;
        Ok(Box::new(GuardedModel(model)))
    }
}

struct GuardedModel(Box<dyn Model>);

impl Model for GuardedModel {
    fn forward(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
        guard("model", || self.0.forward(inputs))
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        catch_unwind(AssertUnwindSafe(|| self.0.metadata())).unwrap_or_default()
    }

    fn generate(
        &self,
        request: &GenerateRequest,
        limits: &GenerateLimits,
        on_step: &mut dyn FnMut(Step) -> Control,
    ) -> Result<GenerateSummary> {
        guard("model", || self.0.generate(request, limits, on_step))
    }

    fn plan_generate(
        &self,
        request: &GenerateRequest,
        limits: &GenerateLimits,
    ) -> Result<GeneratePlan> {
        guard("model", || self.0.plan_generate(request, limits))
    }

    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        guard("tokenizer", || self.0.encode(text, add_special_tokens))
    }

    fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        guard("tokenizer", || self.0.decode(ids, skip_special_tokens))
    }
}

/// Runs a plugin's registration function; used by [`declare_plugin!`].
///
/// # Safety
/// `registrar` must point to a live `PluginRegistrar` of this build and
/// `buf` to `len` writable bytes.
pub unsafe fn run_register(
    register: fn(&mut PluginRegistrar) -> Result<()>,
    registrar: *mut c_void,
    buf: *mut c_char,
    len: usize,
) -> i32 {
    // SAFETY: per the function's contract.
    let registrar = unsafe { &mut *(registrar as *mut PluginRegistrar) };
    let message = match catch_unwind(AssertUnwindSafe(|| register(registrar))) {
        Ok(Ok(())) => return 0,
        Ok(Err(e)) => e.to_string(),
        Err(p) => format!("panicked during registration: {}", panic_message(&*p)),
    };
    if len > 0 {
        let n = message.len().min(len - 1);
        // SAFETY: `buf` has `len` bytes; we write `n + 1 <= len`.
        unsafe {
            std::ptr::copy_nonoverlapping(message.as_ptr(), buf as *mut u8, n);
            *buf.add(n) = 0;
        }
    }
    1
}

/// Declares this `cdylib` a mymps plugin: exports `mymps_plugin_header`.
///
/// `tch_version` is a `&'static CStr` naming the tch / libtorch build
/// (`mymps_backend_tch::TCH_VERSION_C`); `register` is a
/// `fn(&mut PluginRegistrar) -> Result<()>`.
#[macro_export]
macro_rules! declare_plugin {
    (name: $name:expr, tch_version: $tch:expr, register: $register:path $(,)?) => {
        unsafe extern "C" fn __mymps_plugin_register(
            registrar: *mut ::std::ffi::c_void,
            buf: *mut ::std::ffi::c_char,
            len: usize,
        ) -> i32 {
            // SAFETY: the host passes a registrar of the checked build and a buffer.
            unsafe { $crate::plugin::run_register($register, registrar, buf, len) }
        }

        static __MYMPS_PLUGIN_HEADER: $crate::plugin::PluginHeader = $crate::plugin::PluginHeader {
            magic: $crate::plugin::PLUGIN_MAGIC,
            abi_version: $crate::plugin::PLUGIN_ABI_VERSION,
            name: $name.as_ptr(),
            mymps_version: $crate::plugin::MYMPS_VERSION_C.as_ptr(),
            rustc_version: $crate::plugin::RUSTC_VERSION_C.as_ptr(),
            tch_version: $tch.as_ptr(),
            register: __mymps_plugin_register,
        };

        /// The plugin's C-ABI entry point, named after the crate so that
        /// several plugin crates can also be linked into one program.
        #[unsafe(export_name = concat!("mymps_plugin_header_", env!("CARGO_CRATE_NAME")))]
        pub extern "C" fn __mymps_plugin_header() -> *const $crate::plugin::PluginHeader {
            &__MYMPS_PLUGIN_HEADER
        }
    };
}

/// A loaded plugin: its name and what it registered.
pub struct LoadedPlugin {
    /// The plugin's name.
    pub name: String,
    /// Its file.
    pub path: std::path::PathBuf,
    /// Its loaders and ops.
    pub registrar: PluginRegistrar,
}

/// Loads a plugin file, checks its header against `host`, and runs its
/// registration. The library is never unloaded.
#[cfg(feature = "server")]
pub fn load_plugin(path: &std::path::Path, host: &HostVersions) -> Result<LoadedPlugin> {
    let fail = |m: String| {
        Error::new(
            ErrorCode::Unsupported,
            format!("plugin {}: {m}", path.display()),
        )
    };
    // SAFETY: loading a library runs its initialisers; plugins are trusted
    // code chosen by the operator.
    let lib =
        unsafe { libloading::Library::new(path) }.map_err(|e| fail(format!("cannot load: {e}")))?;
    // `libNAME.so` exports `mymps_plugin_header_NAME` (declare_plugin!) or
    // `mymps_plugin_header`.
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .map(|s| s.strip_prefix("lib").unwrap_or(s).replace('-', "_"))
        .unwrap_or_default();
    let names = [
        format!("{HEADER_SYMBOL}_{stem}\0"),
        format!("{HEADER_SYMBOL}\0"),
    ];
    // SAFETY: the symbol's type is the documented entry point's.
    let header: libloading::Symbol<'_, extern "C" fn() -> *const PluginHeader> = names
        .iter()
        .find_map(|n| unsafe { lib.get(n.as_bytes()) }.ok())
        .ok_or_else(|| {
            fail(format!(
                "not a mymps plugin (no {HEADER_SYMBOL}_{stem} or {HEADER_SYMBOL} symbol; keep the library's file name)"
            ))
        })?;
    let h = header();
    if h.is_null() {
        return Err(fail("its header is null".into()));
    }
    // SAFETY: only `magic` and `abi_version`, whose layout never changes,
    // are read before they are checked.
    let (magic, abi) = unsafe { ((*h).magic, (*h).abi_version) };
    if magic != PLUGIN_MAGIC {
        return Err(fail("bad magic: not a mymps plugin".into()));
    }
    if abi != PLUGIN_ABI_VERSION {
        return Err(fail(format!(
            "built for plugin ABI {abi}; this server speaks plugin ABI {PLUGIN_ABI_VERSION}"
        )));
    }
    // SAFETY: the ABI version matches, so the layout is ours; the strings
    // are NUL-terminated statics of the plugin.
    let h = unsafe { &*h };
    let text = |p: *const c_char| -> String {
        if p.is_null() {
            "?".into()
        } else {
            // SAFETY: see above.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    let name = text(h.name);
    let theirs = HostVersions {
        mymps: text(h.mymps_version),
        rustc: text(h.rustc_version),
        tch: text(h.tch_version),
    };
    for (a, b) in [
        (&theirs.mymps, &host.mymps),
        (&theirs.rustc, &host.rustc),
        (&theirs.tch, &host.tch),
    ] {
        if a != b {
            return Err(fail(format!(
                "'{name}' was built with {a}, but this server was built with {b}; rebuild the plugin against this server's versions"
            )));
        }
    }
    let mut registrar = PluginRegistrar::default();
    let mut buf = vec![0 as c_char; 2048];
    // SAFETY: versions match, so `PluginRegistrar` has the same layout on
    // both sides; the buffer has `buf.len()` bytes.
    let rc = unsafe {
        (h.register)(
            &mut registrar as *mut _ as *mut c_void,
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if rc != 0 {
        // SAFETY: the plugin wrote a NUL-terminated message.
        let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        return Err(fail(format!("'{name}' failed to register: {msg}")));
    }
    std::mem::forget(lib);
    Ok(LoadedPlugin {
        name,
        path: path.to_owned(),
        registrar,
    })
}

/// The plugin files (`*.so`, `*.dylib`, `*.dll`) in `dir`, sorted; none if
/// the folder does not exist.
pub fn plugins_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("so" | "dylib" | "dll")
            )
        })
        .collect();
    v.sort();
    v
}
