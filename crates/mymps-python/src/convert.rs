//! numpy arrays ⇄ mymps tensors, and Python scalars → [`Value`]s, without
//! copying tensor data where it can be avoided.
//!
//! # Why `__array_interface__` and not the buffer protocol
//!
//! The wheel is built for the stable ABI of CPython 3.9 (`abi3-py39`), and
//! the buffer protocol (`PyObject_GetBuffer`, `bf_getbuffer` slots) is part
//! of the stable ABI only from 3.11. numpy's array interface works on every
//! version and is as direct:
//!
//! - **In**: the array's `__array_struct__` capsule (numpy's C-level array
//!   interface: one attribute fetch, no dict to build) gives its address,
//!   shape, strides, element kind and byte order. The tensor's [`Bytes`] are built with
//!   [`Bytes::from_owner`] over an [`ArrayBytes`] that holds a reference to
//!   the array, so the memory stays alive (numpy refuses to resize an array
//!   that others reference) until the bytes have been written to the socket.
//!   Non-contiguous arrays (transposed, F-order, sliced with positive steps,
//!   broadcast with stride 0) go as they are, with element strides
//!   ([`Tensor::with_strides`]). A copy is made only for negative strides,
//!   strides that are not a multiple of the item size, non-native byte
//!   order, and views whose memory span is more than twice their data (a
//!   sliced `a[::3]` would otherwise send three times the bytes).
//! - **Out**: a received tensor's buffer becomes a [`ResultBuffer`], a small
//!   object whose `__array_struct__` (and `__array_interface__`) points at
//!   it; `numpy.asarray` makes
//!   a writable array whose `.base` is that object. Large tensors are read
//!   from the socket into a buffer of their own, which is taken over as it
//!   is: [`LargeBuf::reclaim`] makes it the array's alone, and only when
//!   the `Bytes`' reference count says that nothing else refers to it (a
//!   huge-page buffer of 2 MiB and more goes back to the pool when the array
//!   dies); tensors under 64 KiB may be slices of
//!   the connection's read buffer, which a long-lived array must not pin,
//!   and are copied once (a few microseconds, less than the call around
//!   them).
//!
//! [`copy_counters`] counts those copies, so that tests can check the
//! claims above.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use mymps::buffer::LargeBuf;
use mymps::{DType, Tensor, Value};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyCapsule, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use std::ffi::{c_char, c_int, c_void};

use crate::errors::{bad_argument, invalid_tensor, to_py};
use crate::tensor::{Owner, RemoteTensor};
use mymps::protocol::TensorRef;

/// Inputs copied before sending (see the module docs for when).
static INPUT_COPIES: AtomicU64 = AtomicU64::new(0);
/// Results copied after receiving (small ones).
static RESULT_COPIES: AtomicU64 = AtomicU64::new(0);

/// Lists in keyword arguments nest at most this deep (as the server accepts).
const MAX_DEPTH: usize = 8;

static NUMPY: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
static ML_DTYPES_BF16: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static NDARRAY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The `numpy` module (imported once).
pub(crate) fn numpy(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    NUMPY
        .get_or_try_init(py, || py.import("numpy").map(Bound::unbind))
        .map(|m| m.bind(py))
}

/// `numpy.ndarray`.
pub(crate) fn ndarray(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    NDARRAY
        .get_or_try_init(py, || numpy(py)?.getattr("ndarray").map(Bound::unbind))
        .map(|t| t.bind(py))
}

// numpy's `PyArrayInterface` flags.
const NPY_ALIGNED: c_int = 0x0100;
const NPY_NOTSWAPPED: c_int = 0x0200;
const NPY_WRITEABLE: c_int = 0x0400;

/// numpy's `PyArrayInterface`, the struct an `__array_struct__` capsule
/// points at (numpy's "array interface, C-struct access").
#[repr(C)]
struct ArrayInterface {
    /// Always 2.
    two: c_int,
    nd: c_int,
    /// `b`, `i`, `u`, `f`, `c`, `V`, ... (the typestr's kind).
    typekind: c_char,
    itemsize: c_int,
    flags: c_int,
    shape: *mut isize,
    /// Byte strides; may be null for a C-contiguous array.
    strides: *mut isize,
    data: *mut c_void,
    descr: *mut pyo3::ffi::PyObject,
}

/// What an ndarray's `__array_struct__` says of it.
struct ArrayStruct {
    shape: Vec<usize>,
    byte_strides: Vec<isize>,
    ptr: usize,
    typekind: u8,
    itemsize: usize,
    /// Native byte order.
    native: bool,
}

/// Reads `arr.__array_struct__` (a numpy array).
fn array_struct(arr: &Bound<'_, PyAny>) -> PyResult<ArrayStruct> {
    let py = arr.py();
    let attr = arr.getattr(pyo3::intern!(py, "__array_struct__"))?;
    let cap = attr.cast::<PyCapsule>()?;
    let p = cap.pointer_checked(None)?.cast::<ArrayInterface>();
    // SAFETY: numpy's `__array_struct__` capsule holds a `PyArrayInterface`
    // (checked by its `two` field) whose shape and strides have `nd` entries;
    // it stays valid while the capsule (`attr`) is alive, and no Python code
    // runs while it is read.
    unsafe {
        let i = p.as_ref();
        if i.two != 2 || i.nd < 0 || i.itemsize <= 0 {
            return Err(invalid_tensor("the array's __array_struct__ is malformed"));
        }
        let nd = i.nd as usize;
        let shape: Vec<usize> = if nd == 0 {
            Vec::new()
        } else {
            std::slice::from_raw_parts(i.shape, nd)
                .iter()
                .map(|&d| d as usize)
                .collect()
        };
        let itemsize = i.itemsize as usize;
        let byte_strides: Vec<isize> = if nd == 0 {
            Vec::new()
        } else if i.strides.is_null() {
            mymps::tensor::contiguous_strides(&shape)
                .iter()
                .map(|&s| (s * itemsize) as isize)
                .collect()
        } else {
            std::slice::from_raw_parts(i.strides, nd).to_vec()
        };
        Ok(ArrayStruct {
            shape,
            byte_strides,
            ptr: i.data as usize,
            typekind: i.typekind as u8,
            itemsize,
            native: i.flags & NPY_NOTSWAPPED != 0,
        })
    }
}

/// The dtype of numpy's element kind and size, for the plain numeric kinds
/// (bfloat16 and unsupported dtypes are looked up by name).
fn dtype_of_kind(kind: u8, itemsize: usize) -> Option<DType> {
    Some(match (kind, itemsize) {
        (b'b', 1) => DType::Bool,
        (b'u', 1) => DType::UInt8,
        (b'i', 1) => DType::Int8,
        (b'i', 2) => DType::Int16,
        (b'i', 4) => DType::Int32,
        (b'i', 8) => DType::Int64,
        (b'f', 2) => DType::Float16,
        (b'f', 4) => DType::Float32,
        (b'f', 8) => DType::Float64,
        (b'c', 8) => DType::Complex64,
        (b'c', 16) => DType::Complex128,
        _ => return None,
    })
}

fn bfloat16_dtype(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    ML_DTYPES_BF16
        .get_or_try_init(py, || {
            let m = py.import("ml_dtypes").map_err(|_| {
                invalid_tensor(
                    "a result has dtype bfloat16, which numpy supports only through the \
                     ml_dtypes package; install it (pip install ml_dtypes, or mymps[bfloat16])",
                )
            })?;
            m.getattr("bfloat16").map(Bound::unbind)
        })
        .map(|d| d.bind(py))
}

/// `(input copies, result copies)` since the module was loaded.
pub fn copy_counters() -> (u64, u64) {
    (
        INPUT_COPIES.load(Ordering::Relaxed),
        RESULT_COPIES.load(Ordering::Relaxed),
    )
}

// ---------------------------------------------------------------- inputs

/// Tensor bytes that borrow a numpy array's memory, keeping the array alive.
struct ArrayBytes {
    /// Keeps the memory alive; dropped (through PyO3's deferred reference
    /// pool when the GIL is not held) once the bytes have been sent.
    _array: Py<PyAny>,
    /// Address of the first byte (the array's first element).
    ptr: usize,
    /// Bytes from `ptr` to the end of the last element.
    len: usize,
}

impl AsRef<[u8]> for ArrayBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr + len` is the span of a numpy array's elements
        // (non-negative strides, checked in `array_to_tensor`), and the array
        // is kept alive by `_array`. An array referenced from elsewhere
        // cannot be resized by numpy. Writing to the array from another
        // thread while it is being sent is documented as not allowed (the
        // same contract as any zero-copy send).
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

struct Layout {
    shape: Vec<usize>,
    /// Element strides (never negative).
    strides: Vec<usize>,
    ptr: usize,
    /// Elements from the first to the last one, inclusive.
    span: usize,
    numel: usize,
}

/// An array's layout; `None` if it cannot be sent without a copy
/// (negative or unaligned strides, or a span over twice the data).
fn layout(a: ArrayStruct) -> PyResult<Option<Layout>> {
    let ArrayStruct {
        shape,
        byte_strides,
        ptr,
        itemsize,
        ..
    } = a;
    let numel = mymps::tensor::checked_numel(&shape)
        .ok_or_else(|| invalid_tensor(format!("shape {shape:?} is too large")))?;
    let contiguous = mymps::tensor::contiguous_strides(&shape);
    let mut strides = Vec::with_capacity(shape.len());
    let mut span = 1usize;
    for ((&d, &bs), &cs) in shape.iter().zip(&byte_strides).zip(&contiguous) {
        if d <= 1 {
            // The stride of a dimension of size 0 or 1 never matters; the
            // C-order value lets a C-contiguous layout be recognised.
            strides.push(cs);
            continue;
        }
        if bs < 0 || bs as usize % itemsize != 0 {
            return Ok(None);
        }
        let s = bs as usize / itemsize;
        strides.push(s);
        span = (d - 1)
            .checked_mul(s)
            .and_then(|x| span.checked_add(x))
            .ok_or_else(|| invalid_tensor("array strides overflow"))?;
    }
    if numel > 0 && span > numel.saturating_mul(2) {
        return Ok(None);
    }
    Ok(Some(Layout {
        shape,
        strides,
        ptr,
        span,
        numel,
    }))
}

/// One input (a numpy array, or anything `numpy.asarray` accepts) as a
/// tensor that borrows the array's memory.
pub fn array_to_tensor(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<Tensor> {
    let py = obj.py();
    let np = numpy(py)?;
    let mut arr = if obj.is_instance(ndarray(py)?)? {
        obj.clone()
    } else {
        np.call_method1("asarray", (obj,)).map_err(|e| {
            invalid_tensor(format!(
                "input '{name}': cannot make a numpy array of {}: {e}",
                type_name(obj)
            ))
        })?
    };
    let mut st = array_struct(&arr)?;
    let fast = dtype_of_kind(st.typekind, st.itemsize).filter(|_| st.native);
    let dtype = match fast {
        Some(d) => d,
        None => {
            // bfloat16 (ml_dtypes), another byte order, or an unsupported
            // dtype: by name, as numpy spells it.
            let dt = arr.getattr("dtype")?;
            let dname: String = dt.getattr("name")?.extract()?;
            let dtype = DType::from_name(&dname)
                .filter(|d| d.name() == dname)
                .ok_or_else(|| {
                    let shown = dt.str().map_or_else(|_| dname.clone(), |s| s.to_string());
                    invalid_tensor(format!(
                        "input '{name}': dtype {shown} is not supported; supported dtypes: {}",
                        DType::ALL.map(DType::name).join(", ")
                    ))
                })?;
            if st.itemsize != dtype.itemsize() {
                return Err(invalid_tensor(format!(
                    "input '{name}': dtype {dname} has itemsize {}, expected {}",
                    st.itemsize,
                    dtype.itemsize()
                )));
            }
            if !st.native {
                let native = dt.call_method1("newbyteorder", ("=",))?;
                arr = arr.call_method1("astype", (native,))?;
                INPUT_COPIES.fetch_add(1, Ordering::Relaxed);
                st = array_struct(&arr)?;
            }
            dtype
        }
    };
    let itemsize = dtype.itemsize();
    let layout = match layout(st)? {
        Some(l) => l,
        None => {
            let kw = PyDict::new(py);
            kw.set_item("order", "C")?;
            arr = arr.call_method("copy", (), Some(&kw))?;
            INPUT_COPIES.fetch_add(1, Ordering::Relaxed);
            layout(array_struct(&arr)?)?
                .ok_or_else(|| invalid_tensor("a C-contiguous copy has an unexpected layout"))?
        }
    };
    let data = if layout.numel == 0 {
        Bytes::new()
    } else {
        Bytes::from_owner(ArrayBytes {
            _array: arr.unbind(),
            ptr: layout.ptr,
            len: layout.span * itemsize,
        })
    };
    Tensor::with_strides(dtype, &layout.shape, Some(&layout.strides), data).map_err(|e| {
        to_py(mymps::Error::new(
            e.code,
            format!("input '{name}': {}", e.message),
        ))
    })
}

/// The converted `inputs` of a call.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Tensors by argument name.
    pub tensors: Vec<(String, Tensor)>,
    /// Server-resident tensors (`RemoteTensor`s) by argument name.
    pub refs: Vec<(String, TensorRef)>,
    /// Names given `None` (an optional tensor left out, e.g.
    /// `{"bias": None}`); they go as `None` keyword arguments.
    pub none: Vec<String>,
}

impl Inputs {
    /// Adds input `name`: a `RemoteTensor` of `owner` as a reference,
    /// anything else as an array.
    fn add(&mut self, name: String, value: &Bound<'_, PyAny>, owner: &dyn Owner) -> PyResult<()> {
        if let Ok(t) = value.cast::<RemoteTensor>() {
            let r = t.get().reference(owner).map_err(|e| {
                let py = value.py();
                let msg = e.value(py).str().map(|s| s.to_string()).unwrap_or_default();
                crate::errors::unknown_tensor(format!("input '{name}': {msg}"))
            })?;
            self.refs.push((name, r));
        } else {
            let t = array_to_tensor(&name, value)?;
            self.tensors.push((name, t));
        }
        Ok(())
    }
}

/// The `inputs` argument of `exec`: a mapping of names to arrays or
/// `RemoteTensor`s (`"0"`, `"1"`, ... positional; integer keys mean the
/// same; `None` values mean "not given"), a list/tuple of positional
/// ones, one (the one positional argument), or `None`. `RemoteTensor`s
/// must be `owner`'s (or shared).
pub fn inputs(inputs: Option<&Bound<'_, PyAny>>, owner: &dyn Owner) -> PyResult<Inputs> {
    let mut out = Inputs::default();
    let Some(inputs) = inputs.filter(|i| !i.is_none()) else {
        return Ok(out);
    };
    if inputs.is_instance(ndarray(inputs.py())?)? || inputs.cast::<RemoteTensor>().is_ok() {
        // One array: the one positional argument.
        out.add("0".to_owned(), inputs, owner)?;
        return Ok(out);
    }
    if inputs.is_instance_of::<PyList>() || inputs.is_instance_of::<PyTuple>() {
        for (i, item) in inputs.try_iter()?.enumerate() {
            out.add(i.to_string(), &item?, owner)?;
        }
        return Ok(out);
    }
    let items = if let Ok(d) = inputs.cast::<PyDict>() {
        d.call_method0("items")?
    } else if inputs.hasattr("items")? && inputs.hasattr("__getitem__")? {
        inputs.call_method0("items")?
    } else {
        return Err(bad_argument(format!(
            "inputs must be a dict mapping argument names (\"0\", \"1\", ... or keyword names) \
             to numpy arrays, not {}",
            type_name(inputs)
        )));
    };
    for item in items.try_iter()? {
        let item = item?;
        let (key, value) = (item.get_item(0)?, item.get_item(1)?);
        let name = if let Ok(s) = key.cast::<PyString>() {
            s.to_cow()?.into_owned()
        } else if key.is_instance_of::<PyInt>() && !key.is_instance_of::<PyBool>() {
            key.extract::<u64>()
                .map_err(|_| bad_argument(format!("input key {key} is not a valid position")))?
                .to_string()
        } else {
            return Err(bad_argument(format!(
                "input names must be strings (\"0\", \"1\", ... or keyword names), not {}",
                type_name(&key)
            )));
        };
        if value.is_none() {
            out.none.push(name);
            continue;
        }
        out.add(name, &value, owner)?;
    }
    Ok(out)
}

// ---------------------------------------------------------------- kwargs

fn type_name(v: &Bound<'_, PyAny>) -> String {
    v.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_owned())
}

/// One keyword argument as a [`Value`].
pub fn to_value(name: &str, v: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(bad_argument(format!(
            "keyword argument '{name}': lists nest deeper than {MAX_DEPTH} levels"
        )));
    }
    if v.is_none() {
        return Ok(Value::None);
    }
    if let Ok(b) = v.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if v.is_instance_of::<PyInt>() {
        return v.extract::<i64>().map(Value::Int).map_err(|_| {
            bad_argument(format!(
                "keyword argument '{name}': integer {v} does not fit in 64 bits"
            ))
        });
    }
    if v.is_instance_of::<PyFloat>() {
        return Ok(Value::Float(v.extract()?));
    }
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(Value::Str(s.to_cow()?.into_owned()));
    }
    if v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>() {
        let mut items = Vec::new();
        for x in v.try_iter()? {
            items.push(to_value(name, &x?, depth + 1)?);
        }
        return Ok(Value::List(items));
    }
    // numpy scalars (np.int64(3), np.True_) and arrays (dims=np.array([1, 0])).
    let np = numpy(v.py())?;
    if v.is_instance(&np.getattr("generic")?)? || v.is_instance(&np.getattr("ndarray")?)? {
        return to_value(name, &v.call_method0("tolist")?, depth + 1);
    }
    Err(bad_argument(format!(
        "keyword argument '{name}': cannot send a value of type {}; expected None, bool, \
         int, float, str, or a list or tuple of them (tensors go in `inputs`)",
        type_name(v)
    )))
}

/// Tensors with their argument names.
pub type NamedTensors = Vec<(String, Tensor)>;

/// The arguments of an `exec`.
pub struct ExecArgs {
    /// Arrays by argument name.
    pub tensors: NamedTensors,
    /// `RemoteTensor`s by argument name.
    pub refs: Vec<(String, TensorRef)>,
    /// Scalar keyword arguments, with the inputs given as `None` added as
    /// `None` keywords.
    pub kwargs: Vec<(String, Value)>,
}

/// The arguments of an `exec`: `inputs`' arrays and `RemoteTensor`s (of
/// `owner`), and the keyword arguments.
pub fn exec_args(
    inputs: Option<&Bound<'_, PyAny>>,
    kw: Option<&Bound<'_, PyDict>>,
    owner: &dyn Owner,
) -> PyResult<ExecArgs> {
    let inputs = self::inputs(inputs, owner)?;
    let mut kwargs = kwargs(kw)?;
    for name in inputs.none {
        if kwargs.iter().any(|(k, _)| *k == name) {
            return Err(bad_argument(format!(
                "argument '{name}' is given both in inputs and as a keyword argument"
            )));
        }
        kwargs.push((name, Value::None));
    }
    Ok(ExecArgs {
        tensors: inputs.tensors,
        refs: inputs.refs,
        kwargs,
    })
}

/// The inputs of an `infer`: arrays and `RemoteTensor`s (no `None`).
pub fn infer_inputs(
    inputs: Option<&Bound<'_, PyAny>>,
    owner: &dyn Owner,
) -> PyResult<(NamedTensors, Vec<(String, TensorRef)>)> {
    let inputs = self::inputs(inputs, owner)?;
    if let Some(n) = inputs.none.first() {
        return Err(bad_argument(format!(
            "input '{n}' is None; infer takes arrays only"
        )));
    }
    Ok((inputs.tensors, inputs.refs))
}

/// A `load_model` `config`: None, a JSON string as it is, or a dict
/// (anything `json.dumps` takes) as its JSON text.
pub fn model_config(config: Option<&Bound<'_, PyAny>>) -> PyResult<Option<String>> {
    let Some(c) = config.filter(|c| !c.is_none()) else {
        return Ok(None);
    };
    if let Ok(s) = c.extract::<String>() {
        return Ok(Some(s));
    }
    c.py()
        .import("json")?
        .call_method1("dumps", (c,))
        .and_then(|s| s.extract::<String>())
        .map(Some)
        .map_err(|e| bad_argument(format!("config must be a JSON-serialisable dict: {e}")))
}

/// `**kwargs` as scalar arguments.
pub fn kwargs(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<(String, Value)>> {
    let mut out = Vec::new();
    if let Some(kw) = kwargs {
        for (k, v) in kw.iter() {
            let k: String = k.extract()?;
            let value = to_value(&k, &v, 0)?;
            out.push((k, value));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- results

/// The memory of one result array: the buffer received from the server,
/// exposed to numpy through `__array_interface__`. numpy arrays made from
/// it keep it alive as their `.base`.
#[pyclass(module = "mymps._native", name = "_ResultBuffer", frozen)]
pub struct ResultBuffer {
    /// Owns the memory; never read or written through this handle after
    /// construction (numpy writes through `ptr`).
    _buf: Owned,
    ptr: usize,
    len: usize,
    dtype: DType,
    shape: Vec<usize>,
    /// Byte strides; `None` for C order.
    strides: Option<Vec<usize>>,
}

/// A `PyArrayInterface` with the shape and strides it points at, owned by
/// the capsule `ResultBuffer.__array_struct__` returns.
#[repr(C)]
struct OwnedInterface {
    /// First, so that the capsule's pointer is a `PyArrayInterface*`.
    iface: ArrayInterface,
    shape: Vec<isize>,
    strides: Vec<isize>,
}

/// The capsule's destructor: frees its [`OwnedInterface`].
unsafe extern "C" fn free_interface(capsule: *mut pyo3::ffi::PyObject) {
    // SAFETY: the capsule was made by `ResultBuffer::__array_struct__` with
    // no name and a pointer from `Box::into_raw(Box<OwnedInterface>)`.
    unsafe {
        let p = pyo3::ffi::PyCapsule_GetPointer(capsule, std::ptr::null());
        if !p.is_null() {
            drop(Box::from_raw(p.cast::<OwnedInterface>()));
        }
    }
}

/// numpy's element kind (`b`, `u`, `i`, `f`, `c`) and size of a dtype as
/// it travels to numpy (bfloat16 as uint16, viewed as ml_dtypes.bfloat16).
fn numpy_kind(dtype: DType) -> (u8, usize) {
    let kind = match dtype {
        DType::Bool => b'b',
        DType::UInt8 | DType::BFloat16 => b'u',
        d if d.is_complex() => b'c',
        d if d.is_float() => b'f',
        _ => b'i',
    };
    (kind, dtype.itemsize())
}

/// The typestr of `__array_interface__` (`<f4`, `|b1`, ...).
fn typestr(dtype: DType) -> String {
    let (kind, size) = numpy_kind(dtype);
    let order = if size == 1 {
        '|'
    } else if cfg!(target_endian = "little") {
        '<'
    } else {
        '>'
    };
    format!("{order}{}{size}", kind as char)
}

#[pymethods]
impl ResultBuffer {
    /// numpy's array interface (version 3) over the received bytes.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("version", 3)?;
        d.set_item("shape", PyTuple::new(py, &self.shape)?)?;
        d.set_item("typestr", typestr(self.dtype))?;
        d.set_item("data", (self.ptr, false))?;
        match &self.strides {
            Some(s) => d.set_item("strides", PyTuple::new(py, s)?)?,
            None => d.set_item("strides", py.None())?,
        }
        Ok(d)
    }

    /// numpy's C-level array interface over the received bytes: what
    /// `numpy.asarray` reads first, without a dict to build or parse.
    #[getter]
    fn __array_struct__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (typekind, itemsize) = numpy_kind(self.dtype);
        let itemsize = itemsize as c_int;
        let shape: Vec<isize> = self.shape.iter().map(|&d| d as isize).collect();
        let strides: Vec<isize> = match &self.strides {
            Some(s) => s.iter().map(|&x| x as isize).collect(),
            None => mymps::tensor::contiguous_strides(&self.shape)
                .iter()
                .map(|&x| (x as isize) * itemsize as isize)
                .collect(),
        };
        let mut owned = Box::new(OwnedInterface {
            iface: ArrayInterface {
                two: 2,
                nd: shape.len() as c_int,
                typekind: typekind as c_char,
                itemsize,
                flags: NPY_ALIGNED | NPY_NOTSWAPPED | NPY_WRITEABLE,
                shape: std::ptr::null_mut(),
                strides: std::ptr::null_mut(),
                data: self.ptr as *mut c_void,
                descr: std::ptr::null_mut(),
            },
            shape,
            strides,
        });
        owned.iface.shape = owned.shape.as_mut_ptr();
        owned.iface.strides = owned.strides.as_mut_ptr();
        let raw = Box::into_raw(owned);
        // SAFETY: `raw` is a valid pointer that the capsule owns from here
        // on; `free_interface` frees it with the capsule.
        unsafe {
            let cap = pyo3::ffi::PyCapsule_New(
                raw.cast::<c_void>(),
                std::ptr::null(),
                Some(free_interface),
            );
            if cap.is_null() {
                drop(Box::from_raw(raw));
                return Err(PyErr::fetch(py));
            }
            Ok(Bound::from_owned_ptr(py, cap))
        }
    }

    /// Size of the buffer in bytes.
    #[getter]
    fn nbytes(&self) -> usize {
        self.len
    }

    fn __repr__(&self) -> String {
        format!(
            "<mymps result buffer: {} bytes, shape {:?}>",
            self.len, self.shape
        )
    }
}

/// Results smaller than this are copied: they may be slices of the
/// connection's read buffer (64 KiB chunks), which an array must not pin.
const TAKE_OVER_MIN: usize = 64 * 1024;

/// The memory of a result array (held, never read: numpy uses the pointer
/// that comes with it).
#[allow(dead_code)]
enum Owned {
    /// A copy.
    Mut(BytesMut),
    /// The received bytes themselves, held alone (back to the pool of
    /// large buffers, if they came from it, when the array dies).
    Received(LargeBuf),
}

/// The received bytes as a buffer of our own without copying (with the
/// address numpy may write to), when nothing else refers to them and they
/// fill (nearly) all of their allocation; otherwise gives them back, to be
/// copied.
fn take_over(data: Bytes) -> Result<(Owned, usize), Bytes> {
    if data.len() < TAKE_OVER_MIN {
        return Err(data);
    }
    match LargeBuf::reclaim(data) {
        Ok(mut b) if b.is_tight() => {
            let ptr = b.as_mut_slice().as_mut_ptr() as usize;
            Ok((Owned::Received(b), ptr))
        }
        Ok(b) => Err(b.freeze()),
        Err(b) => Err(b),
    }
}

/// A received tensor as a writable numpy array that owns its memory.
pub fn tensor_to_array<'py>(py: Python<'py>, t: Tensor) -> PyResult<Bound<'py, PyAny>> {
    let dtype = t.dtype();
    let shape = t.shape().to_vec();
    let strides = t
        .strides()
        .map(|s| s.iter().map(|&x| x * dtype.itemsize()).collect());
    let data = t.into_data();
    let len = data.len();
    let (buf, ptr) = match take_over(data) {
        Ok(b) => b,
        Err(small_or_shared) => {
            if !small_or_shared.is_empty() {
                RESULT_COPIES.fetch_add(1, Ordering::Relaxed);
            }
            let mut b = BytesMut::from(&small_or_shared[..]);
            let ptr = b.as_mut_ptr() as usize;
            (Owned::Mut(b), ptr)
        }
    };
    let owner = Bound::new(
        py,
        ResultBuffer {
            _buf: buf,
            ptr,
            len,
            dtype,
            shape,
            strides,
        },
    )?;
    let arr = numpy(py)?.call_method1("asarray", (owner,))?;
    if dtype == DType::BFloat16 {
        return arr.call_method1("view", (bfloat16_dtype(py)?,));
    }
    Ok(arr)
}

/// A dtype as numpy names it (bfloat16: `ml_dtypes.bfloat16`).
pub fn numpy_dtype(py: Python<'_>, dtype: DType) -> PyResult<Bound<'_, PyAny>> {
    let np = numpy(py)?;
    if dtype == DType::BFloat16 {
        return np.call_method1("dtype", (bfloat16_dtype(py)?,));
    }
    np.call_method1("dtype", (dtype.name(),))
}

/// Results as a dict in the server's order (`"output"`, or `"0"`, `"1"`, ...).
pub fn outputs<'py>(
    py: Python<'py>,
    tensors: Vec<(String, Tensor)>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, t) in tensors {
        d.set_item(name, tensor_to_array(py, t)?)?;
    }
    Ok(d)
}
