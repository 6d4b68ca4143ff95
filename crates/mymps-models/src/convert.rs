//! Shared by the loaders: device and dtype arguments, running a forward
//! pass without autograd, and converting results to host tensors.

use mymps_backend_tch::{Converter, parse_device};
use mymps_core::{DType, Error, ErrorCode, Result};
use mymps_ops::{kind_of, torch_error};
use tch::{Device, Kind, Tensor};

/// The device named by the backend.
pub fn device(name: &str) -> Result<Device> {
    parse_device(name)
}

/// A `dtype` argument of `load_model` as a floating-point kind.
pub fn float_kind(dtype: Option<&str>) -> Result<Option<Kind>> {
    let Some(name) = dtype else { return Ok(None) };
    let d: DType = name.parse()?;
    if !d.is_float() {
        return Err(Error::bad_argument(format!(
            "dtype '{name}' is not a floating-point type (float32, float16, bfloat16, float64)"
        )));
    }
    Ok(Some(kind_of(d)))
}

/// How many characters of a name from a file or a request an error
/// message quotes.
pub const CLIP_CHARS: usize = 120;

/// How many names an error message lists.
pub const LIST_NAMES: usize = 20;

/// `s`, cut to [`CLIP_CHARS`] characters (and `…`): error messages quote
/// names that come from files and requests, which may be of any length.
pub fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(CLIP_CHARS) {
        Some((at, _)) => format!("{}…", &s[..at]).into(),
        None => s.into(),
    }
}

/// The first [`LIST_NAMES`] of `names`, clipped, joined by `sep`, and how
/// many more there are.
pub fn list<'a>(names: impl ExactSizeIterator<Item = &'a str>, sep: &str) -> String {
    let n = names.len();
    let mut out: Vec<std::borrow::Cow<'_, str>> = names.take(LIST_NAMES).map(clip).collect();
    if n > LIST_NAMES {
        out.push(format!("… ({} more)", n - LIST_NAMES).into());
    }
    out.join(sep)
}

/// A model error.
pub fn model_error(m: impl Into<String>) -> Error {
    Error::new(ErrorCode::Model, m)
}

/// Uploads inputs; floating-point inputs are cast to `kind` when given (a
/// float16 model takes the float32 arrays clients usually send).
pub fn upload(
    conv: &mut Converter,
    inputs: Vec<(String, mymps_core::Tensor)>,
    kind: Option<Kind>,
) -> Result<Vec<(String, Tensor)>> {
    inputs
        .into_iter()
        .map(|(name, t)| {
            let is_float = t.dtype().is_float();
            let mut x = conv.upload(t)?;
            if let (Some(k), true) = (kind, is_float) {
                x = x.f_to_kind(k).map_err(torch_error)?;
            }
            Ok((name, x))
        })
        .collect()
}

/// Downloads named results.
pub fn download(
    conv: &Converter,
    outputs: Vec<(String, Tensor)>,
) -> Result<Vec<(String, mymps_core::Tensor)>> {
    outputs
        .into_iter()
        .map(|(n, t)| Ok((n, conv.download(t)?)))
        .collect()
}

/// A parameter tensor shared by concurrent forward passes.
pub struct Weight(pub Tensor);

// SAFETY: a `Weight` is never written after the model is built; libtorch
// tensors may be read from several threads at once (reference counts are
// atomic), which is all a forward pass does with them.
unsafe impl Sync for Weight {}

impl std::ops::Deref for Weight {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        &self.0
    }
}
