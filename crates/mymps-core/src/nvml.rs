//! GPU utilisation and memory from NVML (the NVIDIA Management Library),
//! where it is present.
//!
//! The library, `libnvidia-ml.so.1`, comes with the NVIDIA driver; it is
//! opened at run time (no build-time CUDA, no link), so a server on a host
//! without the driver, or on a device that is not CUDA, simply has no
//! [`GpuStats`]: every figure that comes from here is optional, and a
//! failure to load or to call it is a value ([`NvmlError`]), logged once by
//! the server, never an error for a client.
//!
//! The device is the server's CUDA device, found in this order:
//! 1. by PCI bus id, asked of the CUDA runtime when the process has one
//!    loaded (libtorch's; looked up by name, `cudaDeviceGetPCIBusId`), so
//!    that `CUDA_VISIBLE_DEVICES` and `CUDA_DEVICE_ORDER` are honoured as
//!    CUDA itself applies them;
//! 2. else through `CUDA_VISIBLE_DEVICES` ([`Selector::for_device`]): its
//!    N-th entry for `cuda:N`, an NVML index or a `GPU-…` / `MIG-…` UUID;
//! 3. else NVML index N.
//!
//! NVML functions are thread-safe; [`NvmlDevice::sample`] makes two calls
//! into the driver (a few microseconds to a millisecond) and may be called
//! from any thread (the server calls it on its blocking pool).

use serde::{Deserialize, Serialize};

/// One reading of a GPU by NVML.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GpuStats {
    /// The GPU's name (`NVIDIA H200`, ...).
    pub name: String,
    /// Percent of the last sample period (1/6 s to 1 s, by product) during
    /// which a kernel ran on the GPU; absent where NVML does not report it
    /// (MIG instances).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utilization_percent: Option<f64>,
    /// Percent of that period during which device memory was read or
    /// written; absent with `utilization_percent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_utilization_percent: Option<f64>,
    /// Device memory, bytes.
    pub memory_total_bytes: u64,
    /// Device memory in use (by any process), bytes.
    pub memory_used_bytes: u64,
}

/// Which NVML device is the server's CUDA device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// NVML's index (PCI bus order).
    Index(u32),
    /// A `GPU-…` or `MIG-…` UUID.
    Uuid(String),
    /// A PCI bus id (`0000:3b:00.0`).
    PciBusId(String),
}

impl Selector {
    /// The NVML device for a server device name (`cuda`, `cuda:N`), given
    /// the value of `CUDA_VISIBLE_DEVICES`; `None` for a device that is
    /// not CUDA, or a `cuda:N` that the visible list does not have.
    ///
    /// A visible list's entries are NVML indices or UUIDs (a UUID may be
    /// abbreviated to its prefix: given as such, NVML has to match it,
    /// which it does for whole UUIDs only, so a prefix finds no device);
    /// an empty list hides every device.
    pub fn for_device(device: &str, cuda_visible_devices: Option<&str>) -> Option<Selector> {
        let index: u32 = match device.trim() {
            "cuda" => 0,
            d => d.strip_prefix("cuda:")?.parse().ok()?,
        };
        let Some(visible) = cuda_visible_devices else {
            return Some(Selector::Index(index));
        };
        // CUDA stops at the first entry it cannot use; so does this.
        let entry = visible
            .split(',')
            .map(str::trim)
            .take_while(|e| !e.is_empty())
            .nth(index as usize)?;
        if let Ok(i) = entry.parse::<u32>() {
            return Some(Selector::Index(i));
        }
        (entry.starts_with("GPU-") || entry.starts_with("MIG-"))
            .then(|| Selector::Uuid(entry.to_owned()))
    }
}

/// Why NVML gave no figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NvmlError {
    /// The library could not be opened (no NVIDIA driver here).
    Library(String),
    /// The library lacks a function this module needs (a driver too old,
    /// or a library that is not NVML).
    Symbol(&'static str),
    /// A call failed: the function, NVML's return code, its description.
    Call(&'static str, i32, String),
    /// The server's device is not one NVML can be asked about.
    NotCuda(String),
}

impl std::fmt::Display for NvmlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NvmlError::Library(e) => write!(f, "cannot open the NVML library: {e}"),
            NvmlError::Symbol(s) => write!(f, "the NVML library has no {s}"),
            NvmlError::Call(func, code, msg) => write!(f, "{func} failed: {msg} ({code})"),
            NvmlError::NotCuda(d) => write!(f, "the device '{d}' is not a CUDA device"),
        }
    }
}

impl std::error::Error for NvmlError {}

/// NVML's description of a return code, for the codes it documents (the
/// library's own `nvmlErrorString` is used when it is loaded).
pub fn describe_return(code: i32) -> &'static str {
    match code {
        0 => "success",
        1 => "NVML was not initialized",
        2 => "an invalid argument",
        3 => "not supported on this device",
        4 => "no permission",
        6 => "not found",
        7 => "insufficient size",
        8 => "insufficient power",
        9 => "the NVIDIA driver is not loaded",
        10 => "timeout",
        12 => "the NVML shared library could not be loaded",
        13 => "a function is not found in the NVML library",
        15 => "the GPU has fallen off the bus",
        17 => "the GPU is lost",
        18 => "the GPU requires a reset",
        19 => "the GPU is in use by an operation that prevents this one",
        _ => "unknown error",
    }
}

/// Reads a NUL-terminated C string out of a buffer (lossily).
#[cfg_attr(not(feature = "server"), allow(dead_code))]
fn c_buffer_str(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).trim().to_owned()
}

#[cfg(feature = "server")]
pub use loaded::{Nvml, NvmlDevice, cuda_pci_bus_id};

#[cfg(feature = "server")]
mod loaded {
    use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_ulonglong, c_void};
    use std::sync::Arc;

    use super::{GpuStats, NvmlError, Selector, c_buffer_str, describe_return};

    type Ret = c_int;
    type Device = *mut c_void;

    #[repr(C)]
    #[derive(Default)]
    struct Utilization {
        gpu: c_uint,
        memory: c_uint,
    }

    #[repr(C)]
    #[derive(Default)]
    struct Memory {
        total: c_ulonglong,
        free: c_ulonglong,
        used: c_ulonglong,
    }

    /// `nvmlReturn_t NVML_ERROR_NOT_SUPPORTED`.
    const NOT_SUPPORTED: Ret = 3;

    /// The NVML library, loaded and initialised; shut down when dropped.
    pub struct Nvml {
        shutdown: unsafe extern "C" fn() -> Ret,
        error_string: unsafe extern "C" fn(Ret) -> *const c_char,
        by_index: unsafe extern "C" fn(c_uint, *mut Device) -> Ret,
        by_uuid: unsafe extern "C" fn(*const c_char, *mut Device) -> Ret,
        by_pci_bus_id: unsafe extern "C" fn(*const c_char, *mut Device) -> Ret,
        name: unsafe extern "C" fn(Device, *mut c_char, c_uint) -> Ret,
        utilization: unsafe extern "C" fn(Device, *mut Utilization) -> Ret,
        memory: unsafe extern "C" fn(Device, *mut Memory) -> Ret,
        /// `nvmlInit_v2` succeeded: `nvmlShutdown` is owed.
        initialised: bool,
        // Last: the functions above point into it.
        _lib: libloading::Library,
    }

    impl std::fmt::Debug for Nvml {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Nvml").finish_non_exhaustive()
        }
    }

    /// The library's file name.
    #[cfg(target_os = "windows")]
    const LIBRARY: &str = "nvml.dll";
    #[cfg(not(target_os = "windows"))]
    const LIBRARY: &str = "libnvidia-ml.so.1";

    impl Nvml {
        /// Opens the driver's NVML (`libnvidia-ml.so.1`) and initialises it.
        pub fn load() -> Result<Nvml, NvmlError> {
            Nvml::load_from(LIBRARY)
        }

        /// Opens NVML from `path` (a file name is searched for as the
        /// dynamic loader does) and initialises it. A library that is not
        /// NVML is refused by its first missing function, before any is
        /// called.
        pub fn load_from(path: &str) -> Result<Nvml, NvmlError> {
            // SAFETY: opening a shared library runs its initialisers; NVML's
            // (the driver's) are safe to run, and a library given by path is
            // the caller's choice.
            let lib = unsafe { libloading::Library::new(path) }
                .map_err(|e| NvmlError::Library(e.to_string()))?;
            /// Copies a function pointer out of the library (kept alive in
            /// the same struct, dropped last).
            macro_rules! func {
                ($name:literal) => {{
                    // SAFETY: the type is the NVML header's signature for
                    // the function of that name.
                    let s = unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                        .map_err(|_| NvmlError::Symbol($name))?;
                    *s
                }};
            }
            let init: unsafe extern "C" fn() -> Ret = func!("nvmlInit_v2");
            let error_string: unsafe extern "C" fn(Ret) -> *const c_char = func!("nvmlErrorString");
            let mut nvml = Nvml {
                shutdown: func!("nvmlShutdown"),
                error_string,
                by_index: func!("nvmlDeviceGetHandleByIndex_v2"),
                by_uuid: func!("nvmlDeviceGetHandleByUUID"),
                by_pci_bus_id: func!("nvmlDeviceGetHandleByPciBusId_v2"),
                name: func!("nvmlDeviceGetName"),
                utilization: func!("nvmlDeviceGetUtilizationRates"),
                memory: func!("nvmlDeviceGetMemoryInfo"),
                initialised: false,
                _lib: lib,
            };
            // SAFETY: nvmlInit_v2 takes no arguments.
            let r = unsafe { init() };
            if r != 0 {
                // Not initialised: dropped without a shutdown.
                return Err(nvml.error("nvmlInit_v2", r));
            }
            nvml.initialised = true;
            Ok(nvml)
        }

        fn error(&self, func: &'static str, code: Ret) -> NvmlError {
            // SAFETY: nvmlErrorString returns a static string for any code
            // (or null, handled).
            let p = unsafe { (self.error_string)(code) };
            let msg = if p.is_null() {
                describe_return(code).to_owned()
            } else {
                // SAFETY: a NUL-terminated static string.
                unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
            };
            NvmlError::Call(func, code, msg)
        }

        fn check(&self, func: &'static str, code: Ret) -> Result<(), NvmlError> {
            if code == 0 {
                Ok(())
            } else {
                Err(self.error(func, code))
            }
        }

        /// The device a selector names.
        pub fn device(self: &Arc<Self>, selector: &Selector) -> Result<NvmlDevice, NvmlError> {
            let mut handle: Device = std::ptr::null_mut();
            let cstr = |s: &str| {
                CString::new(s).map_err(|_| NvmlError::Call("a device lookup", 2, "NUL".into()))
            };
            // SAFETY: each function writes a device handle through the
            // pointer, or fails and writes nothing.
            match selector {
                Selector::Index(i) => self.check("nvmlDeviceGetHandleByIndex_v2", unsafe {
                    (self.by_index)(*i, &mut handle)
                })?,
                Selector::Uuid(u) => {
                    let u = cstr(u)?;
                    self.check("nvmlDeviceGetHandleByUUID", unsafe {
                        (self.by_uuid)(u.as_ptr(), &mut handle)
                    })?
                }
                Selector::PciBusId(p) => {
                    let p = cstr(p)?;
                    self.check("nvmlDeviceGetHandleByPciBusId_v2", unsafe {
                        (self.by_pci_bus_id)(p.as_ptr(), &mut handle)
                    })?
                }
            }
            let mut buf = [0u8; 96];
            // SAFETY: the buffer's length is given; NVML writes a
            // NUL-terminated name within it.
            let r = unsafe { (self.name)(handle, buf.as_mut_ptr().cast(), buf.len() as c_uint) };
            let name = if r == 0 {
                c_buffer_str(&buf)
            } else {
                String::new()
            };
            Ok(NvmlDevice {
                nvml: self.clone(),
                handle,
                name,
            })
        }
    }

    impl Drop for Nvml {
        fn drop(&mut self) {
            if self.initialised {
                // SAFETY: initialised in `load_from`; balanced here.
                unsafe { (self.shutdown)() };
            }
        }
    }

    // SAFETY: NVML's functions are thread-safe (NVML API reference,
    // "Multi-threading"); the struct holds only function pointers and the
    // library.
    unsafe impl Send for Nvml {}
    // SAFETY: as above.
    unsafe impl Sync for Nvml {}

    /// One GPU, as NVML knows it.
    pub struct NvmlDevice {
        nvml: Arc<Nvml>,
        handle: Device,
        name: String,
    }

    // SAFETY: a device handle is an opaque token valid in any thread while
    // NVML is initialised (the `Arc` keeps it so).
    unsafe impl Send for NvmlDevice {}
    // SAFETY: as above.
    unsafe impl Sync for NvmlDevice {}

    impl std::fmt::Debug for NvmlDevice {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("NvmlDevice")
                .field("name", &self.name)
                .finish_non_exhaustive()
        }
    }

    impl NvmlDevice {
        /// The device of a server device name (`cuda:N`): opens NVML and
        /// finds the device as the module docs say.
        pub fn for_server_device(device: &str) -> Result<NvmlDevice, NvmlError> {
            let index = match device.trim() {
                "cuda" => Some(0),
                d => d.strip_prefix("cuda:").and_then(|i| i.parse::<i32>().ok()),
            }
            .ok_or_else(|| NvmlError::NotCuda(device.to_owned()))?;
            let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
            let selector = match cuda_pci_bus_id(index) {
                Some(bus) => Selector::PciBusId(bus),
                None => Selector::for_device(device, visible.as_deref()).ok_or_else(|| {
                    NvmlError::Call(
                        "a device lookup",
                        6,
                        format!(
                            "{device} is not in CUDA_VISIBLE_DEVICES={}",
                            visible.as_deref().unwrap_or("")
                        ),
                    )
                })?,
            };
            Arc::new(Nvml::load()?).device(&selector)
        }

        /// The GPU's name.
        pub fn name(&self) -> &str {
            &self.name
        }

        /// Reads utilisation and memory. Utilisation that the device does
        /// not report (MIG) is absent; a failure to read memory is an error.
        pub fn sample(&self) -> Result<GpuStats, NvmlError> {
            let n = &self.nvml;
            let mut u = Utilization::default();
            // SAFETY: writes the struct (the header's layout) or fails.
            let r = unsafe { (n.utilization)(self.handle, &mut u) };
            let util = match r {
                0 => Some((u.gpu as f64, u.memory as f64)),
                NOT_SUPPORTED => None,
                r => return Err(n.error("nvmlDeviceGetUtilizationRates", r)),
            };
            let mut m = Memory::default();
            // SAFETY: as above.
            n.check("nvmlDeviceGetMemoryInfo", unsafe {
                (n.memory)(self.handle, &mut m)
            })?;
            Ok(GpuStats {
                name: self.name.clone(),
                utilization_percent: util.map(|u| u.0),
                memory_utilization_percent: util.map(|u| u.1),
                memory_total_bytes: m.total,
                memory_used_bytes: m.used,
            })
        }
    }

    /// The PCI bus id of CUDA device `index`, from the CUDA runtime when
    /// this process has one loaded (libtorch's), by name: `None` without
    /// one, or when it fails.
    pub fn cuda_pci_bus_id(index: i32) -> Option<String> {
        #[cfg(unix)]
        {
            type GetPciBusId = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
            let this = libloading::os::unix::Library::this();
            // SAFETY: the CUDA runtime's documented signature.
            let f: libloading::os::unix::Symbol<GetPciBusId> =
                unsafe { this.get(b"cudaDeviceGetPCIBusId\0") }.ok()?;
            let mut buf = [0u8; 32];
            // SAFETY: the buffer's length is given; the runtime writes a
            // NUL-terminated id within it.
            let r = unsafe { f(buf.as_mut_ptr().cast(), buf.len() as c_int, index) };
            (r == 0)
                .then(|| c_buffer_str(&buf))
                .filter(|s| !s.is_empty())
        }
        #[cfg(not(unix))]
        {
            let _ = index;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_follow_cuda_visible_devices() {
        assert_eq!(
            Selector::for_device("cuda:1", None),
            Some(Selector::Index(1))
        );
        assert_eq!(Selector::for_device("cuda", None), Some(Selector::Index(0)));
        assert_eq!(Selector::for_device("cpu", None), None);
        assert_eq!(Selector::for_device("mps", Some("0")), None);
        assert_eq!(Selector::for_device("cuda:x", None), None);
        assert_eq!(
            Selector::for_device("cuda:1", Some("3, 5")),
            Some(Selector::Index(5))
        );
        assert_eq!(
            Selector::for_device("cuda:0", Some("GPU-8b3e-aa,1")),
            Some(Selector::Uuid("GPU-8b3e-aa".into()))
        );
        assert_eq!(
            Selector::for_device("cuda:0", Some("MIG-1234")),
            Some(Selector::Uuid("MIG-1234".into()))
        );
        // Out of the list, hidden, or after an entry CUDA stops at.
        assert_eq!(Selector::for_device("cuda:2", Some("3,5")), None);
        assert_eq!(Selector::for_device("cuda:0", Some("")), None);
        assert_eq!(Selector::for_device("cuda:1", Some("0,,1")), None);
        assert_eq!(Selector::for_device("cuda:0", Some("nope")), None);
    }

    #[test]
    fn c_strings_and_codes() {
        assert_eq!(c_buffer_str(b"NVIDIA H200\0junk"), "NVIDIA H200");
        assert_eq!(c_buffer_str(b"no nul"), "no nul");
        assert_eq!(describe_return(3), "not supported on this device");
        assert_eq!(describe_return(999), "unknown error");
        let e = NvmlError::Call("nvmlInit_v2", 9, "Driver Not Loaded".into());
        assert_eq!(e.to_string(), "nvmlInit_v2 failed: Driver Not Loaded (9)");
    }

    #[test]
    fn absent_fields_are_left_out() {
        let g = GpuStats {
            name: "g".into(),
            memory_total_bytes: 10,
            memory_used_bytes: 4,
            ..GpuStats::default()
        };
        let v = serde_json::to_value(&g).unwrap();
        assert!(v.get("utilization_percent").is_none(), "{v}");
        assert_eq!(v["memory_used_bytes"], 4);
    }

    #[cfg(feature = "server")]
    #[test]
    fn loading_fails_cleanly() {
        // No such library.
        match Nvml::load_from("libmymps-no-such-nvml.so.1") {
            Err(NvmlError::Library(e)) => assert!(!e.is_empty()),
            other => panic!("{other:?}"),
        }
        // A library that is not NVML: refused by its first missing symbol,
        // nothing called.
        #[cfg(target_os = "linux")]
        match Nvml::load_from("libc.so.6") {
            Err(e) => assert_eq!(e, NvmlError::Symbol("nvmlInit_v2"), "{e}"),
            Ok(_) => panic!("libc loaded as NVML"),
        }
        // No CUDA runtime in this test binary.
        assert_eq!(cuda_pci_bus_id(0), None);
        assert_eq!(
            NvmlDevice::for_server_device("cpu").unwrap_err(),
            NvmlError::NotCuda("cpu".into())
        );
    }

    /// On a machine with the NVIDIA driver, the real library answers; run
    /// with `MYMPS_TEST_NVML=1` there (it fails when NVML is absent, so that
    /// a GPU run cannot skip it silently).
    #[cfg(feature = "server")]
    #[test]
    fn nvml_reads_the_gpu_where_asked() {
        if std::env::var_os("MYMPS_TEST_NVML").is_none() {
            return;
        }
        let dev = NvmlDevice::for_server_device("cuda:0").expect("NVML and a GPU");
        let s = dev.sample().expect("a sample");
        assert!(!s.name.is_empty());
        assert!(s.memory_total_bytes > 0 && s.memory_used_bytes <= s.memory_total_bytes);
        if let Some(u) = s.utilization_percent {
            assert!((0.0..=100.0).contains(&u), "{u}");
        }
        eprintln!("{s:?}");
    }
}
