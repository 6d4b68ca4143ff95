//! The `ModelLoader` trait. Loaders themselves live in `mymps-models` and
//! are loaded as plugins; this is only the interface they implement.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::tensor::Tensor;

/// What a client asks for when it loads a model (the arguments of
/// `load_model` in the client contract).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadRequest {
    /// Name the model is registered under (may contain `/`).
    pub name: String,
    /// `huggingface`, `torchscript`, `checkpoint`, or a plugin's own type.
    pub model_type: String,
    /// Where the model is on the server's filesystem.
    pub model_path: Option<String>,
    /// Architecture to build, for checkpoints.
    pub model_class: Option<String>,
    /// `float32`, `float16`, `bfloat16`; `None` for the loader's default.
    pub dtype: Option<String>,
    /// Whether code shipped with the model may run (never honoured by
    /// native loaders; kept for the contract).
    pub trust_remote_code: bool,
}

/// A loaded model.
pub trait Model: Send + Sync {
    /// One forward pass. Inputs are named as in `infer` (`"0"`, `"1"`, ...
    /// positional, others by name); outputs are `"output"`, `"0"`, `"1"`, ...
    /// or the model's own names.
    fn forward(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>>;

    /// Loader-specific metadata (architecture, parameter count, dtype, ...).
    fn metadata(&self) -> BTreeMap<String, String>;
}

/// Loads models of one `model_type` onto a device.
pub trait ModelLoader: Send + Sync {
    /// The `model_type` this loader handles.
    fn model_type(&self) -> &str;

    /// Loads a model; blocking. `device` is the backend's device string.
    fn load(&self, request: &LoadRequest, device: &str) -> Result<Box<dyn Model>>;
}
