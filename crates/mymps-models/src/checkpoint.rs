//! The `checkpoint` loader: a state_dict loaded into a registered model
//! class.
//!
//! A [`ModelClass`] is a Rust architecture registered under a name, built
//! from an optional JSON config (`load_model(..., config=...)`), whose
//! parameter names follow the state_dict keys of the equivalent PyTorch
//! module, so that `torch.save(model.state_dict(), path)` loads as is.
//! Unknown classes, missing or unexpected keys and shape mismatches are
//! errors that list what differs.
//!
//! Built-in classes and their PyTorch equivalents:
//!
//! - `linear`: `nn.Linear(in, out)` — keys `weight`, `bias`.
//! - `mlp`: `self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in
//!   zip(sizes, sizes[1:]))`, the activation (`relu`, `gelu`, `tanh`,
//!   `silu`, `sigmoid`; config `activation`, default `relu`) between layers —
//!   keys `layers.N.weight`, `layers.N.bias`. Config `sizes` is optional
//!   (inferred from the weights).
//! - `cnn`: `self.features = nn.Sequential(*[Conv2d(c, h, k, padding=k//2),
//!   ReLU(), MaxPool2d(2)] per h in channels)`, then global average pooling
//!   and `self.classifier = nn.Linear(channels[-1], num_classes)` — keys
//!   `features.{3i}.weight/bias`, `classifier.weight/bias`. Config
//!   `in_channels`, `channels`, `num_classes`, `kernel_size` (default 3) are
//!   optional (inferred).
//!
//! Third-party crates register more classes with
//! `inventory::submit! { ModelClass { ... } }`.

use std::collections::BTreeMap;
use std::path::Path;

use mymps_backend_tch::Converter;
use mymps_core::model::{LoadRequest, Model, ModelLoader};
use mymps_core::{Error, Result};
use mymps_ops::torch_error;
use serde_json::Value as Json;
use tch::{Device, Kind, Tensor};

use crate::convert::{Weight, clip, device, download, float_kind, list, model_error, upload};

/// Parameters by state_dict key.
pub type StateDict = BTreeMap<String, Tensor>;

/// Expected parameters: `(state_dict key, shape)`.
pub type ParamTable = Vec<(String, Vec<i64>)>;

/// A network built by a [`ModelClass`]: one tensor in, one tensor out.
pub trait Net: Send + Sync {
    /// The forward pass (no autograd is recorded).
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
}

/// A model architecture that checkpoints load into.
pub struct ModelClass {
    /// Name, as `model_class` gives it.
    pub name: &'static str,
    /// One-line description with the equivalent PyTorch module.
    pub doc: &'static str,
    /// The expected `(key, shape)` table for this state_dict and config;
    /// the loader compares it with the state_dict before [`ModelClass::build`].
    pub expected: fn(&StateDict, &Json) -> Result<ParamTable>,
    /// Builds the network from a state_dict that matches `expected`.
    pub build: fn(StateDict, &Json) -> Result<Box<dyn Net>>,
}

inventory::collect!(ModelClass);

/// The registered classes, sorted by name.
pub fn classes() -> Vec<&'static ModelClass> {
    let mut v: Vec<_> = inventory::iter::<ModelClass>.into_iter().collect();
    v.sort_by_key(|c| c.name);
    v
}

/// Loads state_dicts into model classes: all registered ones
/// ([`CheckpointLoader::all`]) or a named few ([`CheckpointLoader::only`],
/// what a plugin that brings its own classes registers).
#[derive(Debug, Clone, Copy)]
pub struct CheckpointLoader {
    only: Option<&'static [&'static str]>,
}

impl CheckpointLoader {
    /// Every class registered in this binary.
    pub const fn all() -> CheckpointLoader {
        CheckpointLoader { only: None }
    }

    /// Only the classes named (a plugin's own: its binary also holds the
    /// built-in classes, which the server's loader already offers).
    pub const fn only(names: &'static [&'static str]) -> CheckpointLoader {
        CheckpointLoader { only: Some(names) }
    }

    fn mine(&self) -> Vec<&'static ModelClass> {
        classes()
            .into_iter()
            .filter(|c| self.only.is_none_or(|o| o.contains(&c.name)))
            .collect()
    }
}

struct CheckpointModel {
    net: Box<dyn Net>,
    device: Device,
    kind: Option<Kind>,
    metadata: BTreeMap<String, String>,
}

/// Reads a state_dict: `.safetensors` (a header parser that checks every
/// offset and size), or a `torch.save` file (zip format; a small unpickler
/// that runs nothing and checks every size the file states against the
/// file before allocating). A hostile or broken file is a model error.
pub fn read_state_dict(path: &str, dev: Device) -> Result<StateDict> {
    if !Path::new(path).is_file() {
        return Err(model_error(format!("no checkpoint file at '{path}'")));
    }
    let tensors = if path.ends_with(".safetensors") {
        crate::safetensors::read(Path::new(path))
            .map_err(|m| model_error(format!("cannot read safetensors '{path}': {m}")))?
            .into_iter()
            .map(|(k, t)| Ok((k, t.f_to_device(dev).map_err(torch_error)?)))
            .collect::<Result<Vec<_>>>()?
    } else {
        // Read through the file (the zip's entries one by one), not into
        // memory whole.
        let file = std::fs::File::open(path)
            .map_err(|e| model_error(format!("cannot read '{path}': {e}")))?;
        crate::torch_pickle::read_state_dict(std::io::BufReader::new(file))
            .map_err(|m| {
                model_error(format!(
                    "cannot read '{path}' as a torch.save state_dict: {m}"
                ))
            })?
            .into_iter()
            .map(|(k, t)| Ok((k, t.f_to_device(dev).map_err(torch_error)?)))
            .collect::<Result<Vec<_>>>()?
    };
    Ok(tensors.into_iter().collect())
}

/// Compares a state_dict with the expected table: every missing key,
/// unexpected key and shape mismatch, in one message.
pub fn check(sd: &StateDict, expected: &[(String, Vec<i64>)], class: &str) -> Result<()> {
    let want: BTreeMap<&str, &Vec<i64>> = expected.iter().map(|(k, s)| (k.as_str(), s)).collect();
    let missing: Vec<&str> = want
        .keys()
        .filter(|k| !sd.contains_key(**k))
        .copied()
        .collect();
    let unexpected: Vec<&str> = sd
        .keys()
        .map(String::as_str)
        .filter(|k| !want.contains_key(k))
        .collect();
    let mismatched: Vec<String> = want
        .iter()
        .filter_map(|(k, s)| {
            let t = sd.get(*k)?;
            (t.size() != **s)
                .then(|| format!("{}: checkpoint {:?}, model {:?}", clip(k), t.size(), s))
        })
        .collect();
    if missing.is_empty() && unexpected.is_empty() && mismatched.is_empty() {
        return Ok(());
    }
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("missing keys: {}", list(missing.into_iter(), ", ")));
    }
    if !unexpected.is_empty() {
        parts.push(format!(
            "unexpected keys: {}",
            list(unexpected.into_iter(), ", ")
        ));
    }
    if !mismatched.is_empty() {
        parts.push(format!(
            "shape mismatches: {}",
            list(mismatched.iter().map(String::as_str), "; ")
        ));
    }
    Err(model_error(format!(
        "the checkpoint does not fit model_class '{class}': {}",
        parts.join("; ")
    )))
}

impl ModelLoader for CheckpointLoader {
    fn model_type(&self) -> &str {
        "checkpoint"
    }

    fn handles(&self, request: &LoadRequest) -> bool {
        // engine="python" is the Python engine's (crate::bridge), and so is
        // an engine of another name, which it refuses.
        if request
            .engine
            .as_deref()
            .is_some_and(|e| !e.is_empty() && e != "native")
        {
            return false;
        }
        match request.model_class.as_deref() {
            Some(c) => self.mine().iter().any(|m| m.name == c),
            // The loader of every class explains that a class is needed.
            None => self.only.is_none(),
        }
    }

    fn choices(&self) -> Vec<String> {
        self.mine().iter().map(|c| c.name.to_owned()).collect()
    }

    fn load(&self, request: &LoadRequest, device_name: &str) -> Result<Box<dyn Model>> {
        let names = || {
            self.mine()
                .iter()
                .map(|c| c.name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let class_name = request.model_class.as_deref().ok_or_else(|| {
            Error::bad_argument(format!(
                "checkpoint models need model_class (one of: {})",
                names()
            ))
        })?;
        let class = self
            .mine()
            .into_iter()
            .find(|c| c.name == class_name)
            .ok_or_else(|| {
                model_error(format!(
                    "unknown model_class '{class_name}'; available: {}",
                    names()
                ))
            })?;
        let config: Json = match request.config.as_deref() {
            None | Some("") => Json::Object(Default::default()),
            Some(s) => serde_json::from_str(s)
                .map_err(|e| Error::bad_argument(format!("config is not JSON: {e}")))?,
        };
        if !config.is_object() {
            return Err(Error::bad_argument("config must be a JSON object"));
        }
        let dev = device(device_name)?;
        let kind = float_kind(request.dtype.as_deref())?;
        let mut sd = read_state_dict(request.path(), dev)?;
        check(&sd, &(class.expected)(&sd, &config)?, class_name)?;
        if let Some(k) = kind {
            for t in sd.values_mut() {
                if matches!(
                    t.kind(),
                    Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
                ) {
                    *t = t.f_to_kind(k).map_err(torch_error)?;
                }
            }
        }
        let count: usize = sd.values().map(Tensor::numel).sum();
        let dtype = sd
            .values()
            .next()
            .and_then(|t| mymps_ops::dtype_of(t.kind()).ok())
            .map_or("none", |d| d.name());
        let metadata = BTreeMap::from([
            ("architecture".to_owned(), class_name.to_owned()),
            ("engine".to_owned(), "native".to_owned()),
            ("parameters".to_owned(), count.to_string()),
            ("dtype".to_owned(), dtype.to_owned()),
            ("path".to_owned(), request.path().to_owned()),
        ]);
        let net = (class.build)(sd, &config)?;
        Ok(Box::new(CheckpointModel {
            net,
            device: dev,
            kind,
            metadata,
        }))
    }
}

impl Model for CheckpointModel {
    fn forward(
        &self,
        inputs: Vec<(String, mymps_core::Tensor)>,
    ) -> Result<Vec<(String, mymps_core::Tensor)>> {
        if inputs.len() != 1 || !matches!(inputs[0].0.as_str(), "0" | "input" | "x") {
            let names: Vec<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
            return Err(Error::bad_argument(format!(
                "checkpoint models take one input, \"0\" (or \"input\"); got [{}]",
                names.join(", ")
            )));
        }
        let mut conv = Converter::new(self.device);
        let x = upload(&mut conv, inputs, self.kind)?.remove(0).1;
        let y = tch::no_grad(|| self.net.forward(&x))?;
        download(&conv, vec![("output".to_owned(), y)])
    }

    fn metadata(&self) -> BTreeMap<String, String> {
        self.metadata.clone()
    }
}

// ---- built-in classes -------------------------------------------------

fn cfg_int(config: &Json, key: &str) -> Result<Option<i64>> {
    match config.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| Error::bad_argument(format!("config '{key}' must be an integer"))),
    }
}

fn cfg_ints(config: &Json, key: &str) -> Result<Option<Vec<i64>>> {
    match config.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_i64().ok_or_else(|| {
                    Error::bad_argument(format!("config '{key}' must be a list of integers"))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(_) => Err(Error::bad_argument(format!(
            "config '{key}' must be a list of integers"
        ))),
    }
}

fn cfg_bias(config: &Json) -> Result<bool> {
    match config.get("bias") {
        None | Some(Json::Null) => Ok(true),
        Some(Json::Bool(b)) => Ok(*b),
        Some(_) => Err(Error::bad_argument("config 'bias' must be true or false")),
    }
}

fn dim(sd: &StateDict, key: &str, axis: usize) -> Option<i64> {
    sd.get(key).and_then(|t| t.size().get(axis).copied())
}

/// Numbered entries `prefix{N}.weight`, in order.
fn numbered(sd: &StateDict, prefix: &str) -> Vec<usize> {
    let mut v: Vec<usize> = sd
        .keys()
        .filter_map(|k| {
            k.strip_prefix(prefix)?
                .strip_suffix(".weight")?
                .parse()
                .ok()
        })
        .collect();
    v.sort_unstable();
    v
}

fn take(sd: &mut StateDict, key: &str) -> Result<Weight> {
    sd.remove(key)
        .map(Weight)
        .ok_or_else(|| model_error(format!("missing key {key}")))
}

fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    x.f_linear(w, b)
        .map_err(|e| model_error(torch_error(e).message))
}

struct Linear {
    w: Weight,
    b: Option<Weight>,
}

impl Net for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        linear(x, &self.w, self.b.as_deref())
    }
}

inventory::submit! {
    ModelClass {
        name: "linear",
        doc: "nn.Linear(in, out): keys weight, bias (config: bias)",
        expected: |sd, cfg| {
            let (o, i) = (dim(sd, "weight", 0).unwrap_or(0), dim(sd, "weight", 1).unwrap_or(0));
            let mut v = vec![("weight".to_owned(), vec![o, i])];
            if cfg_bias(cfg)? {
                v.push(("bias".to_owned(), vec![o]));
            }
            Ok(v)
        },
        build: |mut sd, cfg| {
            let b = if cfg_bias(cfg)? { Some(take(&mut sd, "bias")?) } else { None };
            Ok(Box::new(Linear { w: take(&mut sd, "weight")?, b }))
        },
    }
}

#[derive(Clone, Copy)]
enum Activation {
    Relu,
    Gelu,
    Tanh,
    Silu,
    Sigmoid,
}

fn activation(cfg: &Json) -> Result<Activation> {
    Ok(
        match cfg
            .get("activation")
            .and_then(Json::as_str)
            .unwrap_or("relu")
        {
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            "tanh" => Activation::Tanh,
            "silu" => Activation::Silu,
            "sigmoid" => Activation::Sigmoid,
            other => {
                return Err(Error::bad_argument(format!(
                    "unknown activation '{other}' (relu, gelu, tanh, silu, sigmoid)"
                )));
            }
        },
    )
}

impl Activation {
    fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Relu => x.f_relu(),
            Activation::Gelu => x.f_gelu("none"),
            Activation::Tanh => x.f_tanh(),
            Activation::Silu => x.f_silu(),
            Activation::Sigmoid => x.f_sigmoid(),
        }
        .map_err(|e| model_error(torch_error(e).message))
    }
}

struct Mlp {
    layers: Vec<(Weight, Option<Weight>)>,
    act: Activation,
}

impl Net for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.shallow_clone();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            h = linear(&h, w, b.as_deref())?;
            if i + 1 < self.layers.len() {
                h = self.act.apply(&h)?;
            }
        }
        Ok(h)
    }
}

fn mlp_sizes(sd: &StateDict, cfg: &Json) -> Result<Vec<i64>> {
    if let Some(s) = cfg_ints(cfg, "sizes")? {
        if s.len() < 2 {
            return Err(Error::bad_argument(
                "config 'sizes' needs at least two entries",
            ));
        }
        return Ok(s);
    }
    let idx = numbered(sd, "layers.");
    if idx.is_empty() {
        return Err(model_error(
            "the checkpoint has no layers.N.weight keys (mlp expects self.layers = nn.ModuleList of nn.Linear)",
        ));
    }
    let first = format!("layers.{}.weight", idx[0]);
    let mut sizes = vec![dim(sd, &first, 1).unwrap_or(0)];
    sizes.extend(
        idx.iter()
            .map(|i| dim(sd, &format!("layers.{i}.weight"), 0).unwrap_or(0)),
    );
    Ok(sizes)
}

inventory::submit! {
    ModelClass {
        name: "mlp",
        doc: "nn.ModuleList of nn.Linear as self.layers with an activation between (config: sizes, activation, bias)",
        expected: |sd, cfg| {
            activation(cfg)?;
            let sizes = mlp_sizes(sd, cfg)?;
            let bias = cfg_bias(cfg)?;
            let mut v = Vec::new();
            for (i, w) in sizes.windows(2).enumerate() {
                v.push((format!("layers.{i}.weight"), vec![w[1], w[0]]));
                if bias {
                    v.push((format!("layers.{i}.bias"), vec![w[1]]));
                }
            }
            Ok(v)
        },
        build: |mut sd, cfg| {
            let n = mlp_sizes(&sd, cfg)?.len() - 1;
            let bias = cfg_bias(cfg)?;
            let layers = (0..n)
                .map(|i| {
                    let w = take(&mut sd, &format!("layers.{i}.weight"))?;
                    let b = if bias { Some(take(&mut sd, &format!("layers.{i}.bias"))?) } else { None };
                    Ok((w, b))
                })
                .collect::<Result<_>>()?;
            Ok(Box::new(Mlp { layers, act: activation(cfg)? }))
        },
    }
}

struct Cnn {
    convs: Vec<(Weight, Weight)>,
    padding: i64,
    head: (Weight, Weight),
}

impl Net for Cnn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let err = |e: tch::TchError| model_error(torch_error(e).message);
        let mut h = x.shallow_clone();
        for (w, b) in &self.convs {
            h = h
                .f_conv2d(
                    w,
                    Some(&**b),
                    [1, 1],
                    [self.padding, self.padding],
                    [1, 1],
                    1,
                )
                .and_then(|h| h.f_relu())
                .and_then(|h| h.f_max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false))
                .map_err(err)?;
        }
        let pooled = h
            .f_mean_dim(Some(&[2i64, 3][..]), false, None::<Kind>)
            .map_err(err)?;
        linear(&pooled, &self.head.0, Some(&*self.head.1))
    }
}

struct CnnShape {
    in_channels: i64,
    channels: Vec<i64>,
    num_classes: i64,
    kernel: i64,
}

fn cnn_shape(sd: &StateDict, cfg: &Json) -> Result<CnnShape> {
    let idx = numbered(sd, "features.");
    let channels = match cfg_ints(cfg, "channels")? {
        Some(c) => c,
        None => idx
            .iter()
            .map(|i| dim(sd, &format!("features.{i}.weight"), 0).unwrap_or(0))
            .collect(),
    };
    if channels.is_empty() {
        return Err(model_error(
            "the checkpoint has no features.N.weight keys and the config no channels",
        ));
    }
    Ok(CnnShape {
        in_channels: cfg_int(cfg, "in_channels")?
            .unwrap_or_else(|| dim(sd, "features.0.weight", 1).unwrap_or(0)),
        num_classes: cfg_int(cfg, "num_classes")?
            .unwrap_or_else(|| dim(sd, "classifier.weight", 0).unwrap_or(0)),
        kernel: cfg_int(cfg, "kernel_size")?.unwrap_or(3),
        channels,
    })
}

inventory::submit! {
    ModelClass {
        name: "cnn",
        doc: "small CNN: [Conv2d(k, padding=k//2), ReLU, MaxPool2d(2)] per channel count as self.features, global average pool, self.classifier = nn.Linear (config: in_channels, channels, num_classes, kernel_size)",
        expected: |sd, cfg| {
            let s = cnn_shape(sd, cfg)?;
            let mut v = Vec::new();
            let mut c = s.in_channels;
            for (i, &h) in s.channels.iter().enumerate() {
                v.push((format!("features.{}.weight", 3 * i), vec![h, c, s.kernel, s.kernel]));
                v.push((format!("features.{}.bias", 3 * i), vec![h]));
                c = h;
            }
            v.push(("classifier.weight".to_owned(), vec![s.num_classes, c]));
            v.push(("classifier.bias".to_owned(), vec![s.num_classes]));
            Ok(v)
        },
        build: |mut sd, cfg| {
            let s = cnn_shape(&sd, cfg)?;
            let convs = (0..s.channels.len())
                .map(|i| Ok((take(&mut sd, &format!("features.{}.weight", 3 * i))?, take(&mut sd, &format!("features.{}.bias", 3 * i))?)))
                .collect::<Result<_>>()?;
            let head = (take(&mut sd, "classifier.weight")?, take(&mut sd, "classifier.bias")?);
            Ok(Box::new(Cnn { convs, padding: s.kernel / 2, head }))
        },
    }
}
