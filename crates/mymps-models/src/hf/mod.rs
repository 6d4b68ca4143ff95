//! The `huggingface` loader: a model directory as `save_pretrained` writes
//! it, run by architectures written in Rust on tch (no Python, no hub).
//!
//! The directory holds `config.json` and the weights: `model.safetensors`,
//! a sharded `model.safetensors.index.json`, `pytorch_model.bin` or a
//! sharded `pytorch_model.bin.index.json` (searched in that order). Every
//! file read must lie inside the directory (a symlink that leads out is
//! refused). The architecture is chosen by the config's `model_type`:
//!
//! | `model_type` | base class | inputs | outputs |
//! |---|---|---|---|
//! | `bert` | `BertModel` | `input_ids`, `attention_mask`, `token_type_ids`, `position_ids` | `last_hidden_state`, `pooler_output` |
//! | `roberta`, `xlm-roberta` | `RobertaModel`, `XLMRobertaModel` | as bert | as bert |
//! | `distilbert` | `DistilBertModel` | `input_ids`, `attention_mask` | `last_hidden_state` |
//! | `gpt2` | `GPT2Model` | `input_ids`, `attention_mask`, `token_type_ids`, `position_ids` | `last_hidden_state` (+ `logits`) |
//! | `llama`, `mistral`, `qwen2` | `LlamaModel`, ... | `input_ids`, `attention_mask`, `position_ids` | `last_hidden_state` (+ `logits`) |
//! | `vit` | `ViTModel` | `pixel_values` | `last_hidden_state`, `pooler_output` |
//!
//! `pooler_output` comes when the checkpoint has the pooler's weights;
//! `logits` when `architectures` names a causal LM (`...ForCausalLM`,
//! `...LMHeadModel`) and the output projection is in the checkpoint or tied
//! to the input embeddings. Inputs may also be given by position, in the
//! order of transformers' `forward` (`"0"` is `input_ids` or
//! `pixel_values`).

mod bert;
mod distilbert;
mod gpt2;
pub mod hub;
mod layers;
mod llama;
mod vit;

#[cfg(test)]
mod decode_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use mymps_backend_tch::Converter;
use mymps_core::model::{LoadRequest, Model, ModelLoader};
use mymps_core::{Error, Result};
use mymps_ops::torch_error;
use serde_json::Value as Json;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::read_state_dict;
use crate::convert::{Weight, clip, device, download, float_kind, list, model_error};
pub(crate) use layers::Tx;
use layers::bad_input;

use crate::generate::{Decoder, GenerationConfig, TextModel, TextTokenizer};
use mymps_core::model::{
    Control, GenerateLimits, GeneratePlan, GenerateRequest, GenerateSummary, Step,
};

/// An architecture this loader runs: everything the loader knows of it
/// apart from the code that builds it.
pub struct Architecture {
    /// The config's `model_type`.
    pub model_type: &'static str,
    /// transformers' base class (the model's `architecture` when the config
    /// names none).
    pub base_class: &'static str,
    /// The key prefix of the base model inside `...ForXxx` checkpoints
    /// (weights are looked up under it first, then without it).
    pub prefix: &'static str,
    /// Builds it from the config and the weights.
    build: fn(&mut Build) -> Result<Box<dyn Arch>>,
}

/// The architectures this loader runs, sorted by `model_type`: one entry
/// each, and nothing about an architecture anywhere else.
pub const ARCHITECTURES: &[Architecture] = &[
    Architecture {
        model_type: "bert",
        base_class: "BertModel",
        prefix: "bert.",
        build: |b| bert::build(b, bert::Variant::Bert),
    },
    Architecture {
        model_type: "distilbert",
        base_class: "DistilBertModel",
        prefix: "distilbert.",
        build: distilbert::build,
    },
    Architecture {
        model_type: "gpt2",
        base_class: "GPT2Model",
        prefix: "transformer.",
        build: gpt2::build,
    },
    Architecture {
        model_type: "llama",
        base_class: "LlamaModel",
        prefix: "model.",
        build: |b| llama::build(b, &llama::LLAMA),
    },
    Architecture {
        model_type: "mistral",
        base_class: "MistralModel",
        prefix: "model.",
        build: |b| llama::build(b, &llama::MISTRAL),
    },
    Architecture {
        model_type: "qwen2",
        base_class: "Qwen2Model",
        prefix: "model.",
        build: |b| llama::build(b, &llama::QWEN2),
    },
    Architecture {
        model_type: "roberta",
        base_class: "RobertaModel",
        prefix: "roberta.",
        build: |b| bert::build(b, bert::Variant::Roberta),
    },
    Architecture {
        model_type: "vit",
        base_class: "ViTModel",
        prefix: "vit.",
        build: vit::build,
    },
    Architecture {
        model_type: "xlm-roberta",
        base_class: "XLMRobertaModel",
        prefix: "roberta.",
        build: |b| bert::build(b, bert::Variant::Roberta),
    },
];

impl Architecture {
    /// The architecture of `model_type`.
    pub fn get(model_type: &str) -> Option<&'static Architecture> {
        ARCHITECTURES.iter().find(|a| a.model_type == model_type)
    }
}

impl std::fmt::Debug for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Architecture")
            .field("model_type", &self.model_type)
            .field("base_class", &self.base_class)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Loads HuggingFace model directories.
#[derive(Debug, Clone, Copy, Default)]
pub struct HuggingFaceLoader;

/// What a config integer counts, which sets the most it may be: config
/// values drive loops and allocations (a layer count of 2³¹ once asked for
/// a 32 GiB vector, and a failed allocation aborts the process), so each is
/// bounded, far above any real model, before anything is built from it.
/// With these bounds a product of two sizes cannot overflow an `i64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    /// Layers (real models: up to a few hundred).
    Layers,
    /// Attention heads (real models: up to 128).
    Heads,
    /// Hidden, intermediate and head sizes, channels (real models: up
    /// to some 10⁵).
    Width,
    /// Vocabulary and token type counts (real models: up to some 10⁶).
    Vocab,
    /// Positions and windows (real models: up to some 10⁷).
    Positions,
    /// Image and patch sides, in pixels.
    Pixels,
}

impl Bound {
    /// The largest value allowed.
    pub const fn max(self) -> i64 {
        match self {
            Bound::Layers => 1 << 12,
            Bound::Heads => 1 << 12,
            Bound::Width => 1 << 22,
            Bound::Vocab => 1 << 24,
            Bound::Positions => 1 << 26,
            Bound::Pixels => 1 << 16,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Bound::Layers => "a number of layers",
            Bound::Heads => "a number of heads",
            Bound::Width => "a width",
            Bound::Vocab => "a vocabulary size",
            Bound::Positions => "a number of positions",
            Bound::Pixels => "a number of pixels",
        }
    }
}

/// `v` if it lies in `1..=bound.max()`.
pub(crate) fn check_size(key: &str, v: i64, bound: Bound) -> Result<i64> {
    if v <= 0 || v > bound.max() {
        return Err(model_error(format!(
            "config.json: '{key}' must be positive and at most {} ({}), not {v}",
            bound.max(),
            bound.what()
        )));
    }
    Ok(v)
}

/// The largest `config.json` read (16 MiB; real ones take a few KiB, with
/// label maps up to about a MiB).
pub(crate) const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// The largest `*.index.json` of a sharded checkpoint read (64 MiB; some
/// 100 bytes a tensor).
pub(crate) const MAX_INDEX_BYTES: u64 = 64 << 20;

/// A text file of at most `max` bytes, checked before it is read (and read
/// with a bounded `take`).
fn read_text(path: &Path, max: u64) -> Result<String> {
    use std::io::Read;
    let cannot = |e: std::io::Error| model_error(format!("cannot read '{}': {e}", path.display()));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let len = file.metadata().map_err(cannot)?.len();
    if len > max {
        return Err(model_error(format!(
            "'{}' has {len} bytes, more than the {max} allowed",
            path.display()
        )));
    }
    let mut text = String::new();
    file.take(max).read_to_string(&mut text).map_err(cannot)?;
    Ok(text)
}

/// A model's `config.json`, with typed accessors whose errors name the key.
pub(crate) struct Config {
    json: Json,
}

impl Config {
    fn get(&self, key: &str) -> Option<&Json> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    /// An integer; `default` when absent (or null), an error when absent
    /// without a default.
    pub fn int(&self, key: &str, default: Option<i64>) -> Result<i64> {
        match self.get(key) {
            None => default.ok_or_else(|| model_error(format!("config.json has no '{key}'"))),
            Some(v) => v
                .as_i64()
                .ok_or_else(|| model_error(format!("config.json: '{key}' must be an integer"))),
        }
    }

    /// A positive integer (a size), at most `bound`'s maximum.
    pub fn size(&self, key: &str, default: Option<i64>, bound: Bound) -> Result<i64> {
        check_size(key, self.int(key, default)?, bound)
    }

    /// The first of `keys` that the config has, as a positive integer at
    /// most `bound`'s maximum (configs may use a class's own name or the
    /// common one).
    pub fn size_any(&self, keys: &[&str], default: i64, bound: Bound) -> Result<i64> {
        self.size(self.first_of(keys), Some(default), bound)
    }

    /// The first of `keys` that the config has (else the first of them):
    /// the key [`Config::size_any`] reads.
    pub fn first_of<'k>(&self, keys: &[&'k str]) -> &'k str {
        keys.iter()
            .copied()
            .find(|k| self.get(k).is_some())
            .unwrap_or(keys[0])
    }

    /// An optional integer.
    pub fn opt_int(&self, key: &str) -> Result<Option<i64>> {
        self.get(key).map(|_| self.int(key, None)).transpose()
    }

    /// A number.
    pub fn float(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| model_error(format!("config.json: '{key}' must be a number"))),
        }
    }

    /// A string.
    pub fn string(&self, key: &str, default: &str) -> Result<String> {
        match self.get(key) {
            None => Ok(default.to_owned()),
            Some(v) => v
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| model_error(format!("config.json: '{key}' must be a string"))),
        }
    }

    /// A boolean.
    pub fn boolean(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| model_error(format!("config.json: '{key}' must be true or false"))),
        }
    }

    /// A raw value (objects and lists).
    pub fn value(&self, key: &str) -> Option<&Json> {
        self.get(key)
    }

    /// The first entry of `architectures`, if any.
    fn architecture(&self) -> Option<String> {
        self.get("architectures")?
            .as_array()?
            .first()?
            .as_str()
            .map(str::to_owned)
    }
}

/// The checkpoint's tensors, handed to the architectures by name.
///
/// A name is looked up under the base model's prefix first (`bert.`,
/// `model.`, `transformer.`, ...: the keys of a `...ForXxx` checkpoint),
/// then as is (a base model's own checkpoint). Each tensor is checked
/// against the shape the config implies, converted to the model's dtype and
/// moved to its device when first taken; the parameter count is the sum over
/// distinct tensors taken.
pub(crate) struct Weights {
    map: BTreeMap<String, Tensor>,
    prefix: &'static str,
    taken: BTreeSet<String>,
    params: usize,
    kind: Kind,
    device: Device,
}

impl Weights {
    fn key(&self, name: &str) -> Option<String> {
        let prefixed = format!("{}{name}", self.prefix);
        if self.map.contains_key(&prefixed) {
            Some(prefixed)
        } else if self.map.contains_key(name) {
            Some(name.to_owned())
        } else {
            None
        }
    }

    /// Whether the checkpoint has `name` (under the prefix or not).
    pub fn has(&self, name: &str) -> bool {
        self.key(name).is_some()
    }

    /// The tensor `name` of shape `shape`.
    pub fn get(&mut self, name: &str, shape: &[i64]) -> Result<Weight> {
        self.opt(name, shape)?.ok_or_else(|| {
            let also = if self.prefix.is_empty() {
                String::new()
            } else {
                format!(" (nor '{}{name}')", self.prefix)
            };
            model_error(format!(
                "missing weight '{name}'{also} in the checkpoint; its keys start with: {}",
                self.sample_keys()
            ))
        })
    }

    /// The tensor `name` of shape `shape`, if the checkpoint has it.
    pub fn opt(&mut self, name: &str, shape: &[i64]) -> Result<Option<Weight>> {
        let Some(key) = self.key(name) else {
            return Ok(None);
        };
        let t = &self.map[&key];
        if t.size() != shape {
            return Err(model_error(format!(
                "weight '{key}' has shape {:?} in the checkpoint, the config implies {shape:?}",
                t.size()
            )));
        }
        if self.taken.insert(key.clone()) {
            let mut t = self.map.remove(&key).expect("present");
            if matches!(
                t.kind(),
                Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
            ) {
                t = t.f_to_kind(self.kind).tx()?;
            }
            t = t.f_to_device(self.device).tx()?;
            self.params += t.numel();
            self.map.insert(key.clone(), t);
        }
        Ok(Some(Weight(self.map[&key].shallow_clone())))
    }

    /// Checks that the checkpoint has the `n` layers that config key `key`
    /// claims, before anything is built for them: `weight(i)` names a
    /// weight that layer `i` has.
    pub fn check_layers(&self, key: &str, n: i64, weight: impl Fn(i64) -> String) -> Result<()> {
        if self.has(&weight(n - 1)) {
            return Ok(());
        }
        let have = (0..n).take_while(|&i| self.has(&weight(i))).count();
        Err(model_error(format!(
            "config.json says {key} = {n}, but the checkpoint has {have} layers (no weight '{}')",
            weight(n - 1)
        )))
    }

    fn sample_keys(&self) -> String {
        let roots: BTreeSet<&str> = self
            .map
            .keys()
            .map(|k| k.split('.').next().unwrap_or(k))
            .collect();
        list(roots.into_iter().take(12), ", ")
    }
}

/// A built architecture.
pub(crate) trait Arch: Send + Sync {
    /// The inputs it takes, in the order of transformers' `forward` (the
    /// order of positional inputs `"0"`, `"1"`, ...).
    fn inputs(&self) -> &'static [&'static str];
    /// How many of [`Arch::inputs`] may be given by position (transformers'
    /// `forward` may have other parameters in between).
    fn positional(&self) -> usize {
        self.inputs().len()
    }
    /// The outputs it returns.
    fn outputs(&self) -> Vec<&'static str>;
    /// A forward pass (autograd is off).
    fn forward(&self, inputs: &mut Inputs) -> Result<Vec<(String, Tensor)>>;
    /// The decoder that generates text, for a causal LM whose head is in
    /// the checkpoint. Default: none.
    fn decoder(&self) -> Option<&dyn Decoder> {
        None
    }
}

/// What an architecture is built from.
pub(crate) struct Build<'a> {
    pub cfg: &'a Config,
    pub ws: &'a mut Weights,
    /// Whether `architectures` names a causal LM (give `logits`).
    pub lm_head: bool,
}

/// The inputs of one forward pass, on the model's device, with checks that
/// name the input.
pub(crate) struct Inputs {
    map: BTreeMap<String, Tensor>,
    accepted: &'static [&'static str],
}

fn is_int(k: Kind) -> bool {
    matches!(
        k,
        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8
    )
}

impl Inputs {
    fn missing(&self, name: &str) -> Error {
        bad_input(format!(
            "missing input '{name}' (this model takes: {})",
            self.accepted.join(", ")
        ))
    }

    /// Token ids `[batch, seq]` (required), as int64, each in `[0, vocab)`.
    pub fn token_ids(&mut self, name: &str, vocab: i64) -> Result<Tensor> {
        let t = self.map.remove(name).ok_or_else(|| self.missing(name))?;
        let s = t.size();
        if s.len() != 2 || !is_int(t.kind()) {
            return Err(bad_input(format!(
                "'{name}' must be a 2-D integer array (batch, sequence); got shape {s:?} of {:?}",
                t.kind()
            )));
        }
        if s[0] == 0 || s[1] == 0 {
            return Err(bad_input(format!("'{name}' is empty (shape {s:?})")));
        }
        let t = t.f_to_kind(Kind::Int64).tx()?;
        check_range(&t, name, 0, vocab, "the vocabulary size")?;
        Ok(t)
    }

    /// An optional integer input shaped like the ids, `[batch, seq]` or
    /// `[1, seq]` (broadcast over the batch), as int64; values in
    /// `[0, limit)` when a limit is given.
    pub fn index_like(
        &mut self,
        name: &str,
        batch: i64,
        seq: i64,
        limit: Option<(i64, &str)>,
    ) -> Result<Option<Tensor>> {
        let Some(t) = self.map.remove(name) else {
            return Ok(None);
        };
        let s = t.size();
        if !is_int(t.kind()) || s.len() != 2 || s[1] != seq || (s[0] != batch && s[0] != 1) {
            return Err(bad_input(format!(
                "'{name}' must be an integer array of shape [{batch}, {seq}] (like input_ids); got {s:?} of {:?}",
                t.kind()
            )));
        }
        let t = t
            .f_to_kind(Kind::Int64)
            .and_then(|t| t.f_expand([batch, seq], false))
            .tx()?;
        if let Some((limit, what)) = limit {
            check_range(&t, name, 0, limit, what)?;
        }
        Ok(Some(t))
    }

    /// The optional `attention_mask` `[batch, seq]` of any numeric dtype,
    /// as booleans (nonzero = attend).
    pub fn attention_mask(&mut self, batch: i64, seq: i64) -> Result<Option<Tensor>> {
        let Some(t) = self.map.remove("attention_mask") else {
            return Ok(None);
        };
        if t.size() != [batch, seq] {
            return Err(bad_input(format!(
                "'attention_mask' must have the shape of input_ids, [{batch}, {seq}]; got {:?}",
                t.size()
            )));
        }
        Ok(Some(t.f_ne(0).tx()?))
    }

    /// A float input (already in the model's dtype) of shape `shape`.
    pub fn float(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.map.remove(name).ok_or_else(|| self.missing(name))?;
        let ok = t.size().len() == shape.len()
            && t.size().iter().zip(shape).all(|(a, b)| *b < 0 || a == b);
        if !ok || !t.is_floating_point() {
            let want: Vec<String> = shape
                .iter()
                .map(|d| if *d < 0 { "N".into() } else { d.to_string() })
                .collect();
            return Err(bad_input(format!(
                "'{name}' must be a float array of shape [{}]; got {:?} of {:?}",
                want.join(", "),
                t.size(),
                t.kind()
            )));
        }
        Ok(t)
    }
}

/// Errors unless every value of `t` lies in `[lo, hi)`.
fn check_range(t: &Tensor, name: &str, lo: i64, hi: i64, what: &str) -> Result<()> {
    let min = t.f_min().and_then(|m| m.f_int64_value(&[])).tx()?;
    let max = t.f_max().and_then(|m| m.f_int64_value(&[])).tx()?;
    if min < lo || max >= hi {
        return Err(bad_input(format!(
            "'{name}' has values in [{min}, {max}], outside [{lo}, {hi}) ({what} is {hi})"
        )));
    }
    Ok(())
}

struct HfModel {
    arch: Box<dyn Arch>,
    device: Device,
    kind: Kind,
    metadata: BTreeMap<String, String>,
    /// `tokenizer.json`, if the directory has one.
    tokenizer: Option<TextTokenizer>,
    /// Generation defaults (`generation_config.json`, `config.json`).
    generation: GenerationConfig,
}

/// A file of the model directory; it must resolve inside it.
fn inside(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    let p = Path::new(name);
    if p.components().count() != 1
        || !matches!(p.components().next(), Some(std::path::Component::Normal(_)))
    {
        return Err(model_error(format!(
            "'{}' is not a file name in the model directory",
            clip(name)
        )));
    }
    let joined = dir.join(p);
    if !joined.exists() {
        return Ok(None);
    }
    let real = std::fs::canonicalize(&joined)
        .map_err(|e| model_error(format!("'{}' cannot be opened: {e}", joined.display())))?;
    // A snapshot of the Hugging Face cache links into its repository.
    if !real.starts_with(hub::bound(dir)) {
        return Err(model_error(format!(
            "'{}' leads out of the model directory (to '{}'); copy the files in (e.g. cp -L)",
            joined.display(),
            real.display()
        )));
    }
    if !real.is_file() {
        return Err(model_error(format!("'{}' is not a file", joined.display())));
    }
    // The name in the directory, not its target: a cache's blobs have no
    // extension, and readers tell formats by it.
    Ok(Some(joined))
}

/// The shard files of a `*.index.json`, in order, each once.
fn shards(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    let text = read_text(index, MAX_INDEX_BYTES)?;
    let json: Json = serde_json::from_str(&text)
        .map_err(|e| model_error(format!("'{}' is not JSON: {e}", index.display())))?;
    let map = json
        .get("weight_map")
        .and_then(Json::as_object)
        .ok_or_else(|| model_error(format!("'{}' has no weight_map", index.display())))?;
    // Each file once, sorted (a set: an index may name a million).
    let mut files: BTreeSet<&str> = BTreeSet::new();
    for v in map.values() {
        let f = v.as_str().ok_or_else(|| {
            model_error(format!(
                "'{}': weight_map values must be file names",
                index.display()
            ))
        })?;
        files.insert(f);
    }
    files
        .into_iter()
        .map(|f| {
            inside(dir, f)?.ok_or_else(|| {
                model_error(format!(
                    "shard '{}' named by '{}' is missing",
                    clip(f),
                    index.display()
                ))
            })
        })
        .collect()
}

/// Reads the weights of a model directory (on the CPU) and says where from.
fn read_weights(dir: &Path) -> Result<(BTreeMap<String, Tensor>, String)> {
    let files: Vec<PathBuf>;
    let source: String;
    if let Some(f) = inside(dir, "model.safetensors")? {
        files = vec![f];
        source = "model.safetensors".into();
    } else if let Some(i) = inside(dir, "model.safetensors.index.json")? {
        files = shards(dir, &i)?;
        source = format!("model.safetensors.index.json ({} shards)", files.len());
    } else if let Some(f) = inside(dir, "pytorch_model.bin")? {
        files = vec![f];
        source = "pytorch_model.bin".into();
    } else if let Some(i) = inside(dir, "pytorch_model.bin.index.json")? {
        files = shards(dir, &i)?;
        source = format!("pytorch_model.bin.index.json ({} shards)", files.len());
    } else {
        return Err(model_error(format!(
            "no weights in '{}': expected model.safetensors, model.safetensors.index.json (sharded), pytorch_model.bin or pytorch_model.bin.index.json",
            dir.display()
        )));
    }
    let mut map = BTreeMap::new();
    for f in files {
        let path = f.display().to_string();
        let sd = read_state_dict(&path, Device::Cpu)?;
        map.extend(sd);
    }
    Ok((map, source))
}

fn supported() -> String {
    ARCHITECTURES
        .iter()
        .map(|a| format!("{} ({})", a.model_type, a.base_class))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ModelLoader for HuggingFaceLoader {
    fn model_type(&self) -> &str {
        "huggingface"
    }

    /// A hub name (`bert-base-uncased`, `org/name`) in the local Hugging
    /// Face cache ([`hub`]).
    fn locate(&self, path: &str) -> Option<Result<PathBuf>> {
        hub::locate(path)
    }

    fn load(&self, request: &LoadRequest, device_name: &str) -> Result<Box<dyn Model>> {
        let dir = Path::new(request.path());
        if !dir.is_dir() {
            return Err(model_error(format!(
                "'{}' is not a directory: a huggingface model is a directory with config.json and model.safetensors (or pytorch_model.bin); models are not downloaded from a hub",
                dir.display()
            )));
        }
        let engine = crate::bridge::requested(request)?;
        if engine == Some(crate::bridge::Engine::Python) {
            return crate::bridge::load(request, device_name);
        }
        let config_path = inside(dir, "config.json")?.ok_or_else(|| {
            model_error(format!(
                "no config.json in '{}' (a huggingface model directory, as save_pretrained writes it, has config.json and the weights; models are not downloaded from a hub)",
                dir.display()
            ))
        })?;
        let text = read_text(&config_path, MAX_CONFIG_BYTES)?;
        let json: Json = serde_json::from_str(&text)
            .map_err(|e| model_error(format!("config.json is not JSON: {e}")))?;
        if !json.is_object() {
            return Err(model_error("config.json must hold a JSON object"));
        }
        let cfg = Config { json };
        let model_type = cfg.string("model_type", "")?;
        let architecture = cfg.architecture();
        let Some(entry) = Architecture::get(&model_type) else {
            let unsupported = format!(
                "model_type '{}'{} has no native implementation (native: {})",
                clip(&model_type),
                architecture
                    .as_deref()
                    .map(|a| format!(" ({})", clip(a)))
                    .unwrap_or_default(),
                supported()
            );
            if engine == Some(crate::bridge::Engine::Native) {
                return Err(model_error(format!(
                    "{unsupported}; engine=\"python\" runs it through transformers"
                )));
            }
            // Not native: transformers runs it, through the Python engine.
            return match crate::bridge::available() {
                Ok(()) => crate::bridge::load(request, device_name),
                Err(why) => Err(model_error(format!(
                    "{unsupported}, and the Python engine that would run it through transformers is not available: {why}"
                ))),
            };
        };
        let dev = device(device_name)?;
        let kind = float_kind(request.dtype.as_deref())?.unwrap_or(if dev == Device::Cpu {
            Kind::Float
        } else {
            Kind::Half
        });
        let lm_head = architecture
            .as_deref()
            .is_some_and(|a| a.ends_with("ForCausalLM") || a.ends_with("LMHeadModel"));
        let (map, source) = read_weights(dir)?;
        let mut ws = Weights {
            map,
            prefix: entry.prefix,
            taken: BTreeSet::new(),
            params: 0,
            kind,
            device: dev,
        };
        let mut b = Build {
            cfg: &cfg,
            ws: &mut ws,
            lm_head,
        };
        let arch: Box<dyn Arch> = tch::no_grad(|| (entry.build)(&mut b))?;
        let dtype = mymps_ops::dtype_of(kind).map_or("other", |d| d.name());
        let tokenizer = match inside(dir, "tokenizer.json")? {
            Some(t) => Some(TextTokenizer::load(
                &t,
                inside(dir, "tokenizer_config.json")?.as_deref(),
                read_text,
            )?),
            None => None,
        };
        let generation = match inside(dir, "generation_config.json")? {
            Some(g) => {
                let g: Json = serde_json::from_str(&read_text(&g, MAX_CONFIG_BYTES)?)
                    .map_err(|e| model_error(format!("generation_config.json is not JSON: {e}")))?;
                GenerationConfig::read(&cfg.json, Some(&g))?
            }
            None => GenerationConfig::read(&cfg.json, None)?,
        };
        let mut metadata = BTreeMap::from([
            (
                "architecture".to_owned(),
                architecture.unwrap_or_else(|| entry.base_class.to_owned()),
            ),
            ("hf_model_type".to_owned(), model_type.clone()),
            ("parameters".to_owned(), ws.params.to_string()),
            ("dtype".to_owned(), dtype.to_owned()),
            ("device".to_owned(), device_name.to_owned()),
            ("path".to_owned(), request.path().to_owned()),
            ("weights".to_owned(), source),
            ("inputs".to_owned(), arch.inputs().join(", ")),
            ("outputs".to_owned(), arch.outputs().join(", ")),
            ("engine".to_owned(), "native".to_owned()),
        ]);
        if arch.decoder().is_some() {
            metadata.insert("generate".to_owned(), "true".to_owned());
            let eos: Vec<String> = generation.eos.iter().map(i64::to_string).collect();
            metadata.insert("eos_token_id".to_owned(), eos.join(", "));
        }
        if let Some(t) = &tokenizer {
            metadata.insert(
                "tokenizer".to_owned(),
                format!("tokenizer.json ({} tokens)", t.vocab()),
            );
        }
        Ok(Box::new(HfModel {
            arch,
            device: dev,
            kind,
            metadata,
            tokenizer,
            generation,
        }))
    }
}

impl Model for HfModel {
    fn forward(
        &self,
        inputs: Vec<(String, mymps_core::Tensor)>,
    ) -> Result<Vec<(String, mymps_core::Tensor)>> {
        let accepted = self.arch.inputs();
        let mut conv = Converter::new(self.device);
        let mut map = BTreeMap::new();
        for (name, t) in inputs {
            let key = match name.parse::<usize>() {
                Ok(i) if name == i.to_string() => {
                    let positional = &accepted[..self.arch.positional()];
                    *positional.get(i).ok_or_else(|| {
                        bad_input(format!(
                            "positional input \"{i}\": this model takes {} positional input(s) ({}); name the others",
                            positional.len(),
                            positional.join(", ")
                        ))
                    })?
                }
                _ => *accepted.iter().find(|a| **a == name).ok_or_else(|| {
                    bad_input(format!(
                        "unknown input '{}'; this model takes: {}",
                        clip(&name),
                        accepted.join(", ")
                    ))
                })?,
            };
            let is_float = t.dtype().is_float();
            let mut x = conv.upload(t)?;
            if is_float {
                x = x.f_to_kind(self.kind).map_err(torch_error)?;
            }
            if map.insert(key.to_owned(), x).is_some() {
                return Err(bad_input(format!(
                    "input '{key}' is given twice (by name and by position)"
                )));
            }
        }
        let mut inputs = Inputs { map, accepted };
        let out = tch::no_grad(|| self.arch.forward(&mut inputs))?;
        download(&conv, out)
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        self.metadata.clone()
    }

    fn generate(
        &self,
        request: &GenerateRequest,
        limits: &GenerateLimits,
        on_step: &mut dyn FnMut(Step) -> Control,
    ) -> Result<GenerateSummary> {
        self.text_model()?.generate(request, limits, on_step)
    }

    fn plan_generate(
        &self,
        request: &GenerateRequest,
        limits: &GenerateLimits,
    ) -> Result<GeneratePlan> {
        self.text_model()?.plan(request, limits)
    }

    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        self.tokenizer()?.encode(text, add_special_tokens)
    }

    fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer()?.decode(ids, skip_special_tokens)
    }
}

impl HfModel {
    fn tokenizer(&self) -> Result<&TextTokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::new(
                mymps_core::ErrorCode::Unsupported,
                "this model's directory has no tokenizer.json",
            )
        })
    }

    /// The decoder with its tokenizer and defaults, or why it cannot
    /// generate.
    fn text_model(&self) -> Result<TextModel<'_>> {
        let decoder = self.arch.decoder().ok_or_else(|| {
            Error::new(
                mymps_core::ErrorCode::Unsupported,
                format!(
                    "{} does not generate text: generation needs a causal LM (gpt2, llama, mistral, qwen2) whose checkpoint has its LM head ('architectures' naming ...ForCausalLM or ...LMHeadModel)",
                    self.metadata.get("architecture").map_or("this model", String::as_str)
                ),
            )
        })?;
        Ok(TextModel {
            decoder,
            tokenizer: self.tokenizer.as_ref(),
            config: &self.generation,
            kind: self.kind,
            device: self.device,
        })
    }
}
