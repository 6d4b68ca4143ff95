//! Models: the `ModelLoader` and `Model` traits that loaders (built-in or
//! plugins, see `mymps-models`) implement, and the [`ModelRegistry`] of
//! loaders and loaded models that the server keeps.
//!
//! Models take and return host tensors: a loader converts them to and from
//! its own device tensors, so this crate stays free of any tensor library.
//!
//! Text generation ([`Model::generate`]) is driven by a callback: the model
//! runs the prompt (prefill), then one forward pass per new token, and
//! after each one hands the caller a [`Step`] — the new id and the newly
//! complete text of every sequence of the batch — whose answer
//! ([`Control`]) either lets it go on or stops it at once (no further
//! forward pass). A server turns each step into a reply frame and stops on
//! a cancelled request; a caller that wants the whole result ignores the
//! steps and reads the [`GenerateSummary`]. Every size is fixed before the
//! first allocation: [`Model::plan_generate`] says what a request will
//! take (its KV cache, exactly, and the largest transient), and
//! `generate` refuses a request over the caller's [`GenerateLimits`] with
//! `ErrorCode::LimitReached` before it allocates anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

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
    /// Which engine should run the model: `native` (the Rust
    /// implementations) or `python` (the Python bridge: transformers,
    /// user classes, `torch.export` programs). `None`: the native engine
    /// where it covers the model, else the bridge. Absent from the wire when
    /// `None`, so older peers see the request they know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
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

/// A prompt to continue: text (tokenized by the model's tokenizer, on the
/// server) or token ids. On the wire (msgpack, JSON) a string or a list of
/// integers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// Text, encoded with the model's tokenizer.
    Text(String),
    /// Token ids, each in `[0, vocab_size)`.
    Ids(Vec<i64>),
}

/// What to generate: the prompts (a batch, left-padded together) and how
/// to choose each next token.
///
/// The options are transformers' `generate` arguments, with its meanings.
/// An option left `None` takes the model's `generation_config.json` value,
/// else transformers' default (`GenerationConfig`'s): greedy unless
/// `do_sample`; when sampling, `temperature` 1, `top_k` 50, `top_p` 1;
/// `repetition_penalty` 1; `max_new_tokens` 20. Setting `temperature`,
/// `top_k` or `top_p` in a request that does not sample is an error (in
/// transformers they would be ignored, with a warning).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// One prompt per sequence of the batch (at least one).
    pub prompts: Vec<Prompt>,
    /// The most tokens to add to each sequence.
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    /// Sample (`true`) or take the most likely token (`false`, greedy).
    #[serde(default)]
    pub do_sample: Option<bool>,
    /// Divides the logits before sampling; positive.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Sample among the `top_k` most likely tokens only (0: all).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Sample among the most likely tokens whose probabilities add up to
    /// `top_p` (nucleus sampling), in `(0, 1]`.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// transformers' `repetition_penalty` (CTRL's): the logit of every
    /// token already in the sequence (prompt included) is divided by it
    /// when positive, multiplied when negative; positive, 1 = none.
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
    /// Seed of this request's own random generator (sampling only): the
    /// same seed and request give the same tokens. `None`: a fresh seed.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Ids that end a sequence, besides the model's end-of-sequence ids
    /// (the id is kept in the output, as transformers keeps its EOS).
    #[serde(default)]
    pub stop_ids: Vec<i64>,
    /// Texts that end a sequence as soon as its generated text contains
    /// one (the tokens that made it are kept); needs a tokenizer.
    #[serde(default)]
    pub stop_strings: Vec<String>,
    /// Do not stop at the model's end-of-sequence ids (`stop_ids` still
    /// stop): generate `max_new_tokens` tokens, for benchmarks.
    #[serde(default)]
    pub ignore_eos: bool,
    /// Whether text prompts get the tokenizer's special tokens (a BOS, ...),
    /// as `tokenizer(text)` does by default. `None`: true.
    #[serde(default)]
    pub add_special_tokens: Option<bool>,
    /// Whether special tokens (EOS, ...) are left out of the text pieces
    /// and texts. `None`: true.
    #[serde(default)]
    pub skip_special_tokens: Option<bool>,
}

/// What the caller (the server) allows one `generate` request: checked
/// before anything is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerateLimits {
    /// The most bytes the request may take on the model's device: its KV
    /// cache plus the largest transient of a forward pass
    /// ([`GeneratePlan::peak_bytes`]). Over it: `ErrorCode::LimitReached`.
    pub max_bytes: u64,
    /// The most new tokens a sequence may ask for. Over it:
    /// `ErrorCode::LimitReached`.
    pub max_new_tokens: usize,
    /// The most prompts in one request. Over it:
    /// `ErrorCode::LimitReached`.
    pub max_batch: usize,
}

impl Default for GenerateLimits {
    /// 1 GiB, 4096 new tokens, 64 prompts.
    fn default() -> GenerateLimits {
        GenerateLimits {
            max_bytes: 1 << 30,
            max_new_tokens: 4096,
            max_batch: 64,
        }
    }
}

/// What a `generate` request will take, known before it runs
/// ([`Model::plan_generate`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneratePlan {
    /// Tokens of each prompt, once encoded.
    pub prompt_tokens: Vec<usize>,
    /// New tokens each sequence may get (the request's, or the default).
    pub max_new_tokens: usize,
    /// The KV cache, exactly: allocated once, for the longest prompt plus
    /// `max_new_tokens`.
    pub cache_bytes: u64,
    /// The cache plus an upper estimate of the largest transient (the
    /// prompt's forward pass: attention scores, MLP activations, logits).
    pub peak_bytes: u64,
}

/// The caller's answer to a [`Step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Stop now: no further forward pass; unfinished sequences end with
    /// [`FinishReason::Cancelled`].
    Stop,
}

/// Why a sequence ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// It got `max_new_tokens` tokens.
    Length,
    /// It produced an end-of-sequence id or one of the request's
    /// `stop_ids` (kept as its last token).
    StopId,
    /// Its text came to contain one of the request's `stop_strings`.
    StopString,
    /// The caller stopped the generation ([`Control::Stop`]).
    Cancelled,
}

/// One sequence's share of a [`Step`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepToken {
    /// The id it got at this step; `None` once it has finished.
    pub id: Option<i64>,
    /// The text that became complete at this step (decoded incrementally:
    /// a character whose bytes span several tokens comes whole, with the
    /// token that completes it), possibly empty; always empty for a model
    /// without a tokenizer.
    pub text: String,
    /// Set at the step the sequence ends.
    pub finish: Option<FinishReason>,
}

/// One generation step: a new token for every sequence still running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// 0 for the first new token (the one the prompt's forward pass gave).
    pub index: usize,
    /// One entry per prompt, in the request's order.
    pub tokens: Vec<StepToken>,
}

/// One sequence of a finished generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneratedSequence {
    /// The prompt's ids (a text prompt's, once encoded; no padding).
    pub prompt_ids: Vec<i64>,
    /// The new ids (the end-of-sequence or stop id included).
    pub ids: Vec<i64>,
    /// The new ids as text (the concatenated step pieces); `None` for a
    /// model without a tokenizer.
    pub text: Option<String>,
    /// Why it ended.
    pub finish: FinishReason,
}

/// What a `generate` call did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerateSummary {
    /// One per prompt, in the request's order.
    pub sequences: Vec<GeneratedSequence>,
    /// Steps handed to the callback.
    pub steps: usize,
    /// Forward passes run (the prompt's one included).
    pub forward_passes: usize,
    /// The bytes its KV cache took.
    pub cache_bytes: u64,
    /// The seed its sampling drew from (the request's, or the fresh one
    /// chosen: pass it back to repeat the run); `None` when greedy.
    pub seed: Option<u64>,
}

fn no_generation() -> Error {
    Error::new(
        ErrorCode::Unsupported,
        "this model does not generate text (no causal language model head)",
    )
}

fn no_tokenizer() -> Error {
    Error::new(ErrorCode::Unsupported, "this model has no tokenizer")
}

/// A loaded model.
pub trait Model: Send + Sync {
    /// One forward pass; blocking. Inputs are named as in `infer` (`"0"`,
    /// `"1"`, ... positional, others by name); outputs are `"output"` for one
    /// tensor, `"0"`, `"1"`, ... for a tuple, or the model's own names.
    fn forward(&self, inputs: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>>;

    /// Loader-specific metadata (architecture, parameter count, dtype, ...).
    fn metadata(&self) -> BTreeMap<String, String>;

    /// Generates text (blocking): encodes the prompts, runs them, then one
    /// forward pass per new token, calling `on_step` after each with the
    /// new token of every sequence; returns once every sequence has ended
    /// or `on_step` answered [`Control::Stop`] (after which no forward pass
    /// runs). Refuses, before allocating, a request over `limits`
    /// (`ErrorCode::LimitReached`) and bad options
    /// ([`ErrorCode::BadArgument`]). `on_step` must not panic (it may be
    /// called from a plugin, across which a panic cannot unwind).
    ///
    /// Default: [`ErrorCode::Unsupported`].
    fn generate(
        &self,
        request: &GenerateRequest,
        limits: &GenerateLimits,
        on_step: &mut dyn FnMut(Step) -> Control,
    ) -> Result<GenerateSummary> {
        let _ = (request, limits, on_step);
        Err(no_generation())
    }

    /// What `generate` would take for `request` (prompts encoded, options
    /// and `limits` checked), without running it: for a caller that
    /// reserves memory first. Default: [`ErrorCode::Unsupported`].
    fn plan_generate(
        &self,
        request: &GenerateRequest,
        limits: &GenerateLimits,
    ) -> Result<GeneratePlan> {
        let _ = (request, limits);
        Err(no_generation())
    }

    /// `text` as token ids, with the tokenizer's special tokens when
    /// `add_special_tokens`. Default: [`ErrorCode::Unsupported`].
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        let _ = (text, add_special_tokens);
        Err(no_tokenizer())
    }

    /// Token ids as text, without special tokens when
    /// `skip_special_tokens`; an id outside the vocabulary is a
    /// [`ErrorCode::BadArgument`]. Default: [`ErrorCode::Unsupported`].
    fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let _ = (ids, skip_special_tokens);
        Err(no_tokenizer())
    }
}

/// Loads models of one `model_type` onto a device.
///
/// Several loaders may serve one type (the built-in checkpoint classes and a
/// plugin's own, say): the registry asks each whether it
/// [handles](ModelLoader::handles) a request and uses the first that does.
pub trait ModelLoader: Send + Sync {
    /// The `model_type` this loader serves.
    fn model_type(&self) -> &str;

    /// Whether this loader takes `request` (e.g. its `model_class` is one of
    /// this loader's). Default: every request of its type.
    fn handles(&self, _request: &LoadRequest) -> bool {
        true
    }

    /// The choices it offers within its type (model classes), for error
    /// messages. Default: none.
    fn choices(&self) -> Vec<String> {
        Vec::new()
    }

    /// Where this loader finds `path` when the model root has nothing
    /// there: the Hugging Face loader looks a hub name (`org/name`) up in
    /// the local Hugging Face cache. `None`: nowhere else (the default);
    /// `Some(Err(e))`: not found, `e` saying where it looked. A path found
    /// here is the loader's to bound (it lies in a folder the operator
    /// chose, never one a client names).
    fn locate(&self, _path: &str) -> Option<Result<PathBuf>> {
        None
    }

    /// Loads a model; blocking. `device` is the backend's device string
    /// (`cpu`, `cuda:0`, `mps`); `request.model_path` has been resolved to
    /// an existing path under the server's model root (or one that a
    /// loader's [`locate`](ModelLoader::locate) found).
    fn load(&self, request: &LoadRequest, device: &str) -> Result<Box<dyn Model>>;
}

struct Loaded {
    info: ModelInfo,
    model: Arc<dyn Model>,
}

/// The loaders a server knows and the models it has loaded.
pub struct ModelRegistry {
    root: PathBuf,
    loaders: RwLock<BTreeMap<String, Vec<Arc<dyn ModelLoader>>>>,
    models: RwLock<BTreeMap<String, Loaded>>,
    /// Names being loaded right now: a second load of one of them fails at
    /// once instead of racing the first.
    loading: Mutex<BTreeSet<String>>,
}

fn model_error(e: Error) -> Error {
    match e.code {
        ErrorCode::Internal | ErrorCode::Backend | ErrorCode::Other(_) => {
            Error::new(ErrorCode::Model, e.message)
        }
        _ => e,
    }
}

/// Frees a name reserved in `loading` when the load ends, however it ends.
struct Reservation<'a> {
    set: &'a Mutex<BTreeSet<String>>,
    name: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

impl ModelRegistry {
    /// An empty registry whose model files must lie under `root` (a
    /// relative model path is taken relative to it). Fails if `root` does
    /// not exist.
    pub fn new(root: &Path) -> Result<ModelRegistry> {
        let root = std::fs::canonicalize(root)
            .map_err(|e| Error::bad_argument(format!("model root '{}': {e}", root.display())))?;
        Ok(ModelRegistry {
            root,
            loaders: RwLock::default(),
            models: RwLock::default(),
            loading: Mutex::default(),
        })
    }

    /// The model root (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Adds a loader.
    pub fn add_loader(&self, loader: Arc<dyn ModelLoader>) -> Result<()> {
        let t = loader.model_type().to_owned();
        if t.is_empty() {
            return Err(Error::internal("a loader with an empty model_type"));
        }
        self.loaders
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(t)
            .or_default()
            .push(loader);
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

    /// Resolves a model path under the root: relative paths are taken from
    /// the root; the result (symlinks and `..` resolved) must exist and lie
    /// under the root. Nothing is read.
    pub fn resolve(&self, path: &str) -> Result<PathBuf> {
        let p = Path::new(path);
        let joined = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        };
        let real = std::fs::canonicalize(&joined).map_err(|e| {
            Error::new(
                ErrorCode::Model,
                format!("model path '{path}' cannot be opened: {e}"),
            )
        })?;
        if !real.starts_with(&self.root) {
            return Err(Error::new(
                ErrorCode::Model,
                format!(
                    "model path '{path}' is outside the model root '{}' (start the server with --model-root to serve another folder)",
                    self.root.display()
                ),
            ));
        }
        Ok(real)
    }

    /// Loads a model (blocking) and registers it under its name. A name
    /// that is loaded (or being loaded) is an error: unload it first.
    pub fn load(&self, request: &LoadRequest, device: &str) -> Result<ModelInfo> {
        if request.name.is_empty() {
            return Err(Error::bad_argument("load_model needs a name"));
        }
        let taken = || {
            Error::new(
                ErrorCode::Model,
                format!(
                    "a model named '{}' is already loaded; unload it first",
                    request.name
                ),
            )
        };
        let loaded = self
            .models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&request.name);
        if loaded
            || !self
                .loading
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(request.name.clone())
        {
            return Err(taken());
        }
        let _reservation = Reservation {
            set: &self.loading,
            name: request.name.clone(),
        };
        let candidates = self
            .loaders
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&request.model_type)
            .cloned()
            .unwrap_or_default();
        if candidates.is_empty() {
            return Err(Error::new(
                ErrorCode::Model,
                format!(
                    "unknown model_type '{}'; this server loads: {}",
                    request.model_type,
                    self.model_types().join(", ")
                ),
            ));
        }
        let mut resolved = request.clone();
        let path = match self.resolve(request.path()) {
            Ok(p) => p,
            Err(e) => {
                // Not under the root: a loader may know another place.
                let mut looked = vec![e.message];
                let found = candidates
                    .iter()
                    .find_map(|l| match l.locate(request.path()) {
                        Some(Ok(p)) => Some(p),
                        Some(Err(e)) => {
                            looked.push(e.message);
                            None
                        }
                        None => None,
                    });
                found.ok_or_else(|| Error::new(ErrorCode::Model, looked.join("; ")))?
            }
        };
        resolved.model_path = Some(path.display().to_string());
        let loader = candidates
            .iter()
            .find(|l| l.handles(&resolved))
            .ok_or_else(|| {
                let mut choices: Vec<String> =
                    candidates.iter().flat_map(|l| l.choices()).collect();
                choices.sort();
                choices.dedup();
                Error::new(
                    ErrorCode::Model,
                    format!(
                        "unknown model_class '{}' for model_type '{}'; available: {}",
                        request.model_class.as_deref().unwrap_or(""),
                        request.model_type,
                        choices.join(", ")
                    ),
                )
            })?;
        let model: Arc<dyn Model> = Arc::from(loader.load(&resolved, device).map_err(model_error)?);
        let mut metadata = model.metadata();
        metadata
            .entry("path".into())
            .or_insert_with(|| resolved.path().to_owned());
        let info = ModelInfo {
            name: request.name.clone(),
            model_type: request.model_type.clone(),
            device: device.to_owned(),
            loaded_at: iso8601_now(),
            metadata,
        };
        self.models
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                request.name.clone(),
                Loaded {
                    info: info.clone(),
                    model,
                },
            );
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

    /// Generates text with the model called `name` (blocking): see
    /// [`Model::generate`].
    pub fn generate(
        &self,
        name: &str,
        request: &GenerateRequest,
        limits: &GenerateLimits,
        on_step: &mut dyn FnMut(Step) -> Control,
    ) -> Result<GenerateSummary> {
        self.get(name)?
            .generate(request, limits, on_step)
            .map_err(model_error)
    }

    /// What generating `request` with the model called `name` would take:
    /// see [`Model::plan_generate`].
    pub fn plan_generate(
        &self,
        name: &str,
        request: &GenerateRequest,
        limits: &GenerateLimits,
    ) -> Result<GeneratePlan> {
        self.get(name)?
            .plan_generate(request, limits)
            .map_err(model_error)
    }

    /// `text` as ids by the tokenizer of the model called `name`.
    pub fn encode(&self, name: &str, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        self.get(name)?
            .encode(text, add_special_tokens)
            .map_err(model_error)
    }

    /// Ids as text by the tokenizer of the model called `name`.
    pub fn decode(&self, name: &str, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        self.get(name)?
            .decode(ids, skip_special_tokens)
            .map_err(model_error)
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
            if r.path().ends_with("missing") {
                return Err(Error::internal("no such file"));
            }
            Ok(Box::new(Echo))
        }
    }

    /// Finds `hub/NAME` names in a folder of its own, outside the root.
    struct Locating(PathBuf);
    impl ModelLoader for Locating {
        fn model_type(&self) -> &str {
            "located"
        }
        fn locate(&self, path: &str) -> Option<Result<PathBuf>> {
            let name = path.strip_prefix("hub/")?;
            let p = self.0.join(name);
            Some(if p.exists() {
                Ok(p)
            } else {
                Err(Error::new(
                    ErrorCode::Model,
                    format!("not in {}", self.0.display()),
                ))
            })
        }
        fn load(&self, _: &LoadRequest, _: &str) -> Result<Box<dyn Model>> {
            Ok(Box::new(Echo))
        }
    }

    #[test]
    fn a_loader_locates_what_the_root_lacks() {
        let base = std::env::temp_dir().join(format!("mymps-locate-test-{}", std::process::id()));
        let (root, elsewhere) = (base.join("root"), base.join("cache"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(elsewhere.join("m")).unwrap();
        let r = ModelRegistry::new(&root).unwrap();
        r.add_loader(Arc::new(Locating(elsewhere.clone()))).unwrap();
        let req = |name: &str| LoadRequest {
            name: name.into(),
            model_type: "located".into(),
            ..Default::default()
        };
        let info = r.load(&req("hub/m"), "cpu").unwrap();
        assert_eq!(
            info.metadata["path"],
            elsewhere.join("m").display().to_string()
        );
        // Not found: the error says where the root and the loader looked.
        let e = r.load(&req("hub/x"), "cpu").unwrap_err();
        assert!(e.message.contains("cannot be opened"), "{e}");
        assert!(
            e.message
                .contains(&format!("not in {}", elsewhere.display())),
            "{e}"
        );
        // A name the loader does not claim: the root's error alone.
        let e = r.load(&req("other"), "cpu").unwrap_err();
        assert!(!e.message.contains("not in"), "{e}");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn registry_lifecycle_and_errors() {
        let dir = std::env::temp_dir().join(format!("mymps-model-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("org")).unwrap();
        std::fs::write(dir.join("org/m"), b"x").unwrap();
        std::fs::write(dir.join("missing"), b"x").unwrap();
        let r = ModelRegistry::new(&dir).unwrap();
        r.add_loader(Arc::new(EchoLoader)).unwrap();
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
        assert_eq!(
            info.metadata["path"],
            r.root().join("org/m").display().to_string()
        );
        // A second load of a loaded name is an error.
        assert!(
            r.load(&req("org/m", "echo"), "cpu")
                .unwrap_err()
                .message
                .contains("already loaded")
        );
        // Paths stay under the root: `..`, absolute paths elsewhere, missing files.
        for bad in ["../etc/passwd", "/etc/passwd", "nothing-here"] {
            let mut q = req("x", "echo");
            q.model_path = Some(bad.into());
            let e = r.load(&q, "cpu").unwrap_err();
            assert_eq!(e.code, ErrorCode::Model, "{bad}: {e}");
        }
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
        // A model without generation or a tokenizer says so, typed.
        let req = GenerateRequest {
            prompts: vec![Prompt::Text("hi".into())],
            ..Default::default()
        };
        let limits = GenerateLimits::default();
        let mut steps = 0;
        let e = r
            .generate("org/m", &req, &limits, &mut |_| {
                steps += 1;
                Control::Continue
            })
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Unsupported, "{e}");
        assert_eq!(steps, 0);
        assert_eq!(
            r.plan_generate("org/m", &req, &limits).unwrap_err().code,
            ErrorCode::Unsupported
        );
        assert_eq!(
            r.encode("org/m", "hi", true).unwrap_err().code,
            ErrorCode::Unsupported
        );
        assert_eq!(
            r.decode("org/m", &[1], true).unwrap_err().code,
            ErrorCode::Unsupported
        );
        assert_eq!(
            r.encode("x", "hi", true).unwrap_err().code,
            ErrorCode::ModelNotFound
        );
        r.unload("org/m").unwrap();
        assert_eq!(
            r.unload("org/m").unwrap_err().code,
            ErrorCode::ModelNotFound
        );
        assert!(r.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn generate_requests_read_as_the_wire_writes_them() {
        // A prompt is a string or a list of ids; absent options are None.
        let r: GenerateRequest = rmp_serde::from_slice(
            &rmp_serde::to_vec_named(&serde_json::json!({
                "prompts": ["Hello", [1, 2, 3]],
                "max_new_tokens": 5,
                "stop_strings": ["\n"],
            }))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            r.prompts,
            vec![Prompt::Text("Hello".into()), Prompt::Ids(vec![1, 2, 3])]
        );
        assert_eq!(r.max_new_tokens, Some(5));
        assert_eq!(r.temperature, None);
        assert_eq!(r.stop_strings, ["\n"]);
        assert!(!r.ignore_eos);
        let back: GenerateRequest =
            rmp_serde::from_slice(&rmp_serde::to_vec_named(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let f: FinishReason = serde_json::from_str("\"stop_string\"").unwrap();
        assert_eq!(f, FinishReason::StopString);
    }
}
