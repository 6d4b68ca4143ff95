//! Models: the `ModelLoader` and `Model` traits that loaders (built-in or
//! plugins, see `mymps-models`) implement, and the [`ModelRegistry`] of
//! loaders and loaded models that the server keeps.
//!
//! Models take and return host tensors: a loader converts them to and from
//! its own device tensors, so this crate stays free of any tensor library.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode, Result};
use crate::tensor::Tensor;

/// What a client asks for when it loads a model (the arguments of
/// `load_model` in the client contract).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LoadRequest {
    /// Name the model is registered under (may contain `/`).
    pub name: String,
    /// `huggingface`, `torchscript`, `checkpoint`, or a plugin's own type.
    pub model_type: String,
    /// Where the model is on the server's filesystem (default: the name).
    #[serde(default)]
    pub model_path: Option<String>,
    /// Architecture to build, for checkpoints.
    #[serde(default)]
    pub model_class: Option<String>,
    /// `float32`, `float16`, `bfloat16`; `None` for the loader's default.
    #[serde(default)]
    pub dtype: Option<String>,
    /// Whether code shipped with the model may run. Native loaders never
    /// run model code; the flag is kept for the contract.
    #[serde(default)]
    pub trust_remote_code: bool,
    /// Loader-specific options as a JSON object (e.g. a model class's
    /// config), or `None`.
    #[serde(default)]
    pub config: Option<String>,
}

impl LoadRequest {
    /// `model_path`, else the name.
    pub fn path(&self) -> &str {
        self.model_path.as_deref().unwrap_or(&self.name)
    }
}

/// A loaded model as `list_models` and `model_info` describe it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Registered name.
    pub name: String,
    /// Loader type.
    pub model_type: String,
    /// Device it runs on.
    pub device: String,
    /// When it was loaded, ISO 8601 UTC.
    pub loaded_at: String,
    /// Loader-specific facts: architecture, parameter count, dtype, path...
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// A loaded model.
pub trait Model: Send + Sync {
    /// One forward pass; blocking. Inputs are named as in `infer` (`"0"`,
    /// `"1"`, ... positional, others by name); outputs are `"output"` for one
    /// tensor, `"0"`, `"1"`, ... for a tuple, or the model's own names.
    fn forward(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>>;

    /// Loader-specific metadata (architecture, parameter count, dtype, ...).
    fn metadata(&self) -> BTreeMap<String, String>;
}

/// Loads models of one `model_type` onto a device.
pub trait ModelLoader: Send + Sync {
    /// The `model_type` this loader handles.
    fn model_type(&self) -> &str;

    /// Loads a model; blocking. `device` is the backend's device string
    /// (`cpu`, `cuda:0`, `mps`).
    fn load(&self, request: &LoadRequest, device: &str) -> Result<Box<dyn Model>>;
}

struct Loaded {
    info: ModelInfo,
    model: Arc<dyn Model>,
}

/// The loaders a server knows and the models it has loaded.
#[derive(Default)]
pub struct ModelRegistry {
    loaders: RwLock<BTreeMap<String, Arc<dyn ModelLoader>>>,
    models: RwLock<BTreeMap<String, Loaded>>,
}

fn model_error(e: Error) -> Error {
    match e.code {
        ErrorCode::Internal | ErrorCode::Backend | ErrorCode::Other(_) => {
            Error::new(ErrorCode::Model, e.message)
        }
        _ => e,
    }
}

impl ModelRegistry {
    /// An empty registry.
    pub fn new() -> ModelRegistry {
        ModelRegistry::default()
    }

    /// Adds a loader; a second loader for the same type is refused.
    pub fn add_loader(&self, loader: Arc<dyn ModelLoader>) -> Result<()> {
        let mut l = self.loaders.write().unwrap_or_else(|p| p.into_inner());
        let t = loader.model_type().to_owned();
        if l.contains_key(&t) {
            return Err(Error::internal(format!("two loaders for model_type '{t}'")));
        }
        l.insert(t, loader);
        Ok(())
    }

    /// The model types that can be loaded, sorted.
    pub fn model_types(&self) -> Vec<String> {
        self.loaders
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Loads a model (blocking) and registers it under its name, replacing a
    /// model of the same name.
    pub fn load(&self, request: &LoadRequest, device: &str) -> Result<ModelInfo> {
        if request.name.is_empty() {
            return Err(Error::bad_argument("load_model needs a name"));
        }
        let loader = self
            .loaders
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&request.model_type)
            .cloned();
        let loader = loader.ok_or_else(|| {
            Error::new(
                ErrorCode::Model,
                format!(
                    "unknown model_type '{}'; this server loads: {}",
                    request.model_type,
                    self.model_types().join(", ")
                ),
            )
        })?;
        let model: Arc<dyn Model> = Arc::from(loader.load(request, device).map_err(model_error)?);
        let mut metadata = model.metadata();
        metadata
            .entry("path".into())
            .or_insert_with(|| request.path().to_owned());
        let info = ModelInfo {
            name: request.name.clone(),
            model_type: request.model_type.clone(),
            device: device.to_owned(),
            loaded_at: iso8601_now(),
            metadata,
        };
        let previous = self
            .models
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                request.name.clone(),
                Loaded {
                    info: info.clone(),
                    model,
                },
            );
        if previous.is_some() {
            tracing::info!(name = %request.name, "model replaced");
        }
        Ok(info)
    }

    fn not_found(&self, name: &str) -> Error {
        let names: Vec<String> = self
            .models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        Error::new(
            ErrorCode::ModelNotFound,
            format!(
                "model '{name}' is not loaded (loaded: {})",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ),
        )
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Result<Arc<dyn Model>> {
        // Each guard is gone before `not_found` takes the lock again: a
        // read lock taken twice can deadlock behind a waiting writer.
        let model = self
            .models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|l| l.model.clone());
        model.ok_or_else(|| self.not_found(name))
    }

    /// Runs a forward pass (blocking).
    pub fn infer(
        &self,
        name: &str,
        inputs: Vec<(String, Tensor)>,
    ) -> Result<Vec<(String, Tensor)>> {
        self.get(name)?.forward(inputs).map_err(model_error)
    }

    /// Unloads a model; its memory is freed once requests using it finish.
    pub fn unload(&self, name: &str) -> Result<()> {
        // The guard must be gone before `not_found` takes the lock again.
        let removed = self
            .models
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        removed.map(drop).ok_or_else(|| self.not_found(name))
    }

    /// The description of a loaded model.
    pub fn info(&self, name: &str) -> Result<ModelInfo> {
        let info = self
            .models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|l| l.info.clone());
        info.ok_or_else(|| self.not_found(name))
    }

    /// Every loaded model, sorted by name.
    pub fn list(&self) -> Vec<ModelInfo> {
        self.models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|l| l.info.clone())
            .collect()
    }

    /// Number of loaded models.
    pub fn len(&self) -> usize {
        self.models.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no model is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The current time as ISO 8601 UTC with seconds (`2026-11-26T10:50:00Z`).
pub fn iso8601_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    iso8601(secs)
}

/// Seconds since the epoch as ISO 8601 UTC.
pub fn iso8601(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(1_795_690_200), "2026-11-26T10:50:00Z");
    }

    struct Echo;
    impl Model for Echo {
        fn forward(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
            Ok(inputs)
        }
        fn metadata(&self) -> BTreeMap<String, String> {
            BTreeMap::from([("architecture".to_owned(), "echo".to_owned())])
        }
    }
    struct EchoLoader;
    impl ModelLoader for EchoLoader {
        fn model_type(&self) -> &str {
            "echo"
        }
        fn load(&self, r: &LoadRequest, _: &str) -> Result<Box<dyn Model>> {
            if r.path() == "missing" {
                return Err(Error::internal("no such file"));
            }
            Ok(Box::new(Echo))
        }
    }

    #[test]
    fn registry_lifecycle_and_errors() {
        let r = ModelRegistry::new();
        r.add_loader(Arc::new(EchoLoader)).unwrap();
        assert!(r.add_loader(Arc::new(EchoLoader)).is_err());
        let req = |name: &str, t: &str| LoadRequest {
            name: name.into(),
            model_type: t.into(),
            ..Default::default()
        };
        let e = r.load(&req("a", "nope"), "cpu").unwrap_err();
        assert!(e.message.contains("this server loads: echo"), "{e}");
        assert_eq!(
            r.load(&req("missing", "echo"), "cpu").unwrap_err().code,
            ErrorCode::Model
        );
        let info = r.load(&req("org/m", "echo"), "cpu").unwrap();
        assert_eq!(info.metadata["architecture"], "echo");
        assert_eq!(info.metadata["path"], "org/m");
        let t = Tensor::scalar(1.0f32);
        assert_eq!(
            r.infer("org/m", vec![("0".into(), t.clone())]).unwrap()[0].1,
            t
        );
        assert_eq!(r.list().len(), 1);
        assert_eq!(
            r.infer("x", vec![]).unwrap_err().code,
            ErrorCode::ModelNotFound
        );
        r.unload("org/m").unwrap();
        assert_eq!(
            r.unload("org/m").unwrap_err().code,
            ErrorCode::ModelNotFound
        );
        assert!(r.is_empty());
    }
}
