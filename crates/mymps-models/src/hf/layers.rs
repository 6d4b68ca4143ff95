//! Building blocks shared by the architectures: linear layers, norms,
//! embeddings, activations, attention masks and attention, each written
//! with tch's fallible ops so that a bad tensor becomes an error reply.

use mymps_core::{Error, Result};
use mymps_ops::torch_error;
use tch::{Device, Kind, TchError, Tensor};

use super::{Config, Weights};
use crate::convert::{Weight, model_error};

/// `TchError` → a model error (the orphan rule forbids a `From`).
pub(crate) trait Tx<T> {
    /// The value, or a model error with libtorch's message.
    fn tx(self) -> Result<T>;
}

impl<T> Tx<T> for std::result::Result<T, TchError> {
    fn tx(self) -> Result<T> {
        self.map_err(|e| model_error(torch_error(e).message))
    }
}

/// `nn.Linear`: `y = x Wᵀ + b`, `W` of shape `[out, in]`.
pub(crate) struct Linear {
    w: Weight,
    b: Option<Weight>,
}

impl Linear {
    /// `{prefix}.weight` `[out, in]` and, with `bias`, `{prefix}.bias` `[out]`.
    pub fn load(ws: &mut Weights, prefix: &str, inp: i64, out: i64, bias: bool) -> Result<Linear> {
        let w = ws.get(&format!("{prefix}.weight"), &[out, inp])?;
        let b = if bias {
            Some(ws.get(&format!("{prefix}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear { w, b })
    }

    /// GPT-2's `Conv1D`: `y = x W + b` with `W` stored `[in, out]`; kept
    /// transposed so that it runs as a linear layer.
    pub fn load_conv1d(ws: &mut Weights, prefix: &str, inp: i64, out: i64) -> Result<Linear> {
        let w = ws.get(&format!("{prefix}.weight"), &[inp, out])?;
        let w = Weight(w.f_transpose(0, 1).and_then(|t| t.f_contiguous()).tx()?);
        let b = Some(ws.get(&format!("{prefix}.bias"), &[out])?);
        Ok(Linear { w, b })
    }

    /// A linear layer over an existing weight (a tied output projection).
    pub fn from_weight(w: Weight) -> Linear {
        Linear { w, b: None }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.f_linear(&self.w, self.b.as_deref()).tx()
    }
}

/// `nn.LayerNorm(dim, eps)`.
pub(crate) struct LayerNorm {
    w: Weight,
    b: Weight,
    dim: i64,
    eps: f64,
}

impl LayerNorm {
    /// `{prefix}.weight` and `{prefix}.bias`, both `[dim]`; checkpoints of
    /// the TensorFlow era name them `gamma` and `beta`.
    pub fn load(ws: &mut Weights, prefix: &str, dim: i64, eps: f64) -> Result<LayerNorm> {
        let pick = |ws: &Weights, new: &str, old: &str| {
            let n = format!("{prefix}.{new}");
            let o = format!("{prefix}.{old}");
            if !ws.has(&n) && ws.has(&o) { o } else { n }
        };
        let (wn, bn) = (pick(ws, "weight", "gamma"), pick(ws, "bias", "beta"));
        Ok(LayerNorm {
            w: ws.get(&wn, &[dim])?,
            b: ws.get(&bn, &[dim])?,
            dim,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.f_layer_norm([self.dim], Some(&*self.w), Some(&*self.b), self.eps, true)
            .tx()
    }
}

/// Llama's RMSNorm: computed in float32, cast back, then scaled.
pub(crate) struct RmsNorm {
    w: Weight,
    eps: f64,
}

impl RmsNorm {
    pub fn load(ws: &mut Weights, prefix: &str, dim: i64, eps: f64) -> Result<RmsNorm> {
        Ok(RmsNorm {
            w: ws.get(&format!("{prefix}.weight"), &[dim])?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let kind = x.kind();
        let h = x.f_to_kind(Kind::Float).tx()?;
        let var = h
            .f_square()
            .and_then(|s| s.f_mean_dim(-1, true, None::<Kind>))
            .tx()?;
        let h = var
            .f_add_scalar(self.eps)
            .and_then(|v| v.f_rsqrt())
            .and_then(|r| h.f_mul(&r))
            .and_then(|h| h.f_to_kind(kind))
            .tx()?;
        self.w.f_mul(&h).tx()
    }
}

/// An embedding table `[n, dim]`; ids are checked against `n` before use.
pub(crate) struct Embedding {
    pub w: Weight,
}

impl Embedding {
    pub fn load(ws: &mut Weights, name: &str, n: i64, dim: i64) -> Result<Embedding> {
        Ok(Embedding {
            w: ws.get(name, &[n, dim])?,
        })
    }

    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Tensor::f_embedding(&self.w, ids, -1, false, false).tx()
    }

    /// The table shared with another layer (tied embeddings).
    pub fn shared(&self) -> Weight {
        Weight(self.w.shallow_clone())
    }
}

/// The activations of `transformers.activations.ACT2FN` that the
/// supported architectures use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Activation {
    /// `gelu`, `gelu_python`: exact, with erf.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_python_tanh`: the tanh
    /// approximation.
    GeluTanh,
    /// `gelu_fast`: the tanh approximation written as in transformers.
    GeluFast,
    /// `gelu_10`: exact GELU clipped to [-10, 10].
    Gelu10,
    /// `quick_gelu`: `x * sigmoid(1.702 x)`.
    QuickGelu,
    Relu,
    /// `relu2`: `relu(x)²`.
    Relu2,
    Relu6,
    LeakyRelu,
    /// `silu`, `swish`.
    Silu,
    Mish,
    Sigmoid,
    Tanh,
    /// `linear`: the identity.
    Linear,
}

/// The activation names accepted in a config, sorted.
pub(crate) const ACTIVATIONS: &[&str] = &[
    "gelu",
    "gelu_10",
    "gelu_fast",
    "gelu_new",
    "gelu_python",
    "gelu_python_tanh",
    "gelu_pytorch_tanh",
    "leaky_relu",
    "linear",
    "mish",
    "quick_gelu",
    "relu",
    "relu2",
    "relu6",
    "sigmoid",
    "silu",
    "swish",
    "tanh",
];

impl Activation {
    /// The activation named by config key `key` (default `default`).
    pub fn from_config(cfg: &Config, key: &str, default: &str) -> Result<Activation> {
        let name = cfg.string(key, default)?;
        Ok(match name.as_str() {
            "gelu" | "gelu_python" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_python_tanh" => Activation::GeluTanh,
            "gelu_fast" => Activation::GeluFast,
            "gelu_10" => Activation::Gelu10,
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            "relu2" => Activation::Relu2,
            "relu6" => Activation::Relu6,
            "leaky_relu" => Activation::LeakyRelu,
            "silu" | "swish" => Activation::Silu,
            "mish" => Activation::Mish,
            "sigmoid" => Activation::Sigmoid,
            "tanh" => Activation::Tanh,
            "linear" => Activation::Linear,
            other => {
                return Err(model_error(format!(
                    "config.json: unsupported activation {key} = '{other}' (supported: {})",
                    ACTIVATIONS.join(", ")
                )));
            }
        })
    }

    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Gelu => x.f_gelu("none"),
            Activation::GeluTanh => x.f_gelu("tanh"),
            Activation::GeluFast => {
                // 0.5 x (1 + tanh(x · 0.7978845608 · (1 + 0.044715 x²)))
                x.f_square()
                    .and_then(|x2| x2.f_mul_scalar(0.044715))
                    .and_then(|t| t.f_add_scalar(1.0))
                    .and_then(|t| t.f_mul(x))
                    .and_then(|t| t.f_mul_scalar(0.7978845608))
                    .and_then(|t| t.f_tanh())
                    .and_then(|t| t.f_add_scalar(1.0))
                    .and_then(|t| t.f_mul(x))
                    .and_then(|t| t.f_mul_scalar(0.5))
            }
            Activation::Gelu10 => x.f_gelu("none").and_then(|g| g.f_clamp(-10.0, 10.0)),
            Activation::QuickGelu => x
                .f_mul_scalar(1.702)
                .and_then(|t| t.f_sigmoid())
                .and_then(|s| x.f_mul(&s)),
            Activation::Relu => x.f_relu(),
            Activation::Relu2 => x.f_relu().and_then(|r| r.f_square()),
            Activation::Relu6 => x.f_relu6(),
            Activation::LeakyRelu => x.f_leaky_relu(),
            Activation::Silu => x.f_silu(),
            Activation::Mish => x.f_mish(),
            Activation::Sigmoid => x.f_sigmoid(),
            Activation::Tanh => x.f_tanh(),
            Activation::Linear => Ok(x.shallow_clone()),
        }
        .tx()
    }
}

/// Which keys each query may attend to, for one forward pass.
pub(crate) struct Mask {
    /// Boolean, broadcastable to `[batch, heads, q, k]`: true where a key
    /// is hidden. `None`: every key is visible.
    blocked: Option<Tensor>,
    /// `[batch, 1, q, 1]`, 0 for queries that see no key at all (the left
    /// padding of a decoder), 1 elsewhere; `None` when every query sees one.
    rows: Option<Tensor>,
}

impl Mask {
    /// No mask at all.
    pub fn none() -> Mask {
        Mask {
            blocked: None,
            rows: None,
        }
    }

    /// An encoder's padding mask: `attention_mask` `[batch, seq]` (nonzero =
    /// attend). Queries whose keys are all padding attend uniformly, as with
    /// transformers' additive `finfo.min` mask.
    pub fn padding(mask: Option<&Tensor>) -> Result<Mask> {
        let Some(m) = mask else {
            return Ok(Mask::none());
        };
        let blocked = m
            .f_logical_not()
            .and_then(|b| b.f_unsqueeze(1))
            .and_then(|b| b.f_unsqueeze(1))
            .tx()?;
        Ok(Mask {
            blocked: Some(blocked),
            rows: None,
        })
    }

    /// A decoder's causal mask over `seq` positions, optionally limited to
    /// a sliding window (key `j` visible from query `i` when
    /// `i - window < j <= i`) and combined with a padding mask. As with
    /// transformers' boolean SDPA mask, a query that sees no key gets a zero
    /// attention output.
    pub fn causal(
        seq: i64,
        device: Device,
        padding: Option<&Tensor>,
        window: Option<i64>,
    ) -> Result<Mask> {
        Mask::causal_at(seq, 0, device, padding, window)
    }

    /// The mask of one new token at position `past`, whose own key is
    /// visible (`padding` `[batch, past + 1]` is true at `past`: a
    /// generated token): the padding alone, and the sliding window's old
    /// keys; no query sees nothing, so no row is zeroed.
    pub fn step(past: i64, device: Device, padding: &Tensor, window: Option<i64>) -> Result<Mask> {
        let mut blocked = padding.f_logical_not().tx()?;
        if let Some(w) = window {
            let j = Tensor::f_arange(past + 1, (Kind::Int64, device)).tx()?;
            blocked = blocked.f_logical_or(&j.f_le(past - w).tx()?).tx()?;
        }
        Ok(Mask {
            blocked: Some(blocked.f_unsqueeze(1).and_then(|b| b.f_unsqueeze(1)).tx()?),
            rows: None,
        })
    }

    /// [`Mask::causal`] for `seq` queries at positions `past..past + seq`
    /// over `past + seq` keys (the new tokens of a step through a KV
    /// cache); `padding` is `[batch, past + seq]`.
    pub fn causal_at(
        seq: i64,
        past: i64,
        device: Device,
        padding: Option<&Tensor>,
        window: Option<i64>,
    ) -> Result<Mask> {
        let i = Tensor::f_arange_start(past, past + seq, (Kind::Int64, device))
            .and_then(|t| t.f_unsqueeze(1))
            .tx()?;
        let j = Tensor::f_arange(past + seq, (Kind::Int64, device))
            .and_then(|t| t.f_unsqueeze(0))
            .tx()?;
        // Hidden: j > i, or (sliding window) j <= i - window.
        let mut blocked = j.f_gt_tensor(&i).tx()?;
        if let Some(w) = window {
            let old = j.f_le_tensor(&i.f_sub_scalar(w).tx()?).tx()?;
            blocked = blocked.f_logical_or(&old).tx()?;
        }
        let mut blocked = blocked.f_unsqueeze(0).and_then(|b| b.f_unsqueeze(0)).tx()?;
        let mut rows = None;
        if let Some(p) = padding {
            let pad = p
                .f_logical_not()
                .and_then(|b| b.f_unsqueeze(1))
                .and_then(|b| b.f_unsqueeze(1))
                .tx()?;
            blocked = blocked.f_logical_or(&pad).tx()?;
            rows = Some(
                blocked
                    .f_logical_not()
                    .and_then(|a| a.f_any_dim(-1, true))
                    .and_then(|a| a.f_to_kind(Kind::Float))
                    .tx()?,
            );
        }
        Ok(Mask {
            blocked: Some(blocked),
            rows,
        })
    }
}

/// Scaled dot-product attention: `q` `[batch, heads, q, d]`, `k` and `v`
/// `[batch, heads, k, d]` → `[batch, heads, q, d]`. Scores and softmax are
/// computed in float32, probabilities cast back to the values' dtype.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Mask,
    scale: f64,
) -> Result<Tensor> {
    let mut scores = q
        .f_matmul(&k.f_transpose(-1, -2).tx()?)
        .and_then(|s| s.f_to_kind(Kind::Float))
        .and_then(|s| s.f_mul_scalar(scale))
        .tx()?;
    if let Some(b) = &mask.blocked {
        scores = scores.f_masked_fill(b, f64::from(f32::MIN)).tx()?;
    }
    let mut probs = scores.f_softmax(-1, Kind::Float).tx()?;
    if let Some(r) = &mask.rows {
        probs = probs.f_mul(r).tx()?;
    }
    probs.f_to_kind(v.kind()).and_then(|p| p.f_matmul(v)).tx()
}

/// `[batch, seq, heads · d]` → `[batch, heads, seq, d]`.
pub(crate) fn split_heads(x: &Tensor, heads: i64, d: i64) -> Result<Tensor> {
    let (b, s) = (x.size()[0], x.size()[1]);
    x.f_reshape([b, s, heads, d])
        .and_then(|t| t.f_transpose(1, 2))
        .tx()
}

/// `[batch, heads, seq, d]` → `[batch, seq, heads · d]`.
pub(crate) fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let s = x.size();
    x.f_transpose(1, 2)
        .and_then(|t| t.f_contiguous())
        .and_then(|t| t.f_reshape([s[0], s[2], s[1] * s[3]]))
        .tx()
}

/// Repeats each of `kv_heads` heads `n` times along dim 1 (grouped-query
/// attention): `[b, kv, s, d]` → `[b, kv · n, s, d]`, as `repeat_kv`.
pub(crate) fn repeat_kv(x: &Tensor, n: i64) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.shallow_clone());
    }
    let s = x.size();
    x.f_unsqueeze(2)
        .and_then(|t| t.f_expand([s[0], s[1], n, s[2], s[3]], false))
        .and_then(|t| t.f_reshape([s[0], s[1] * n, s[2], s[3]]))
        .tx()
}

/// Checks that `heads` divides `hidden`; returns the head size.
pub(crate) fn head_dim(hidden: i64, heads: i64) -> Result<i64> {
    if heads <= 0 || hidden % heads != 0 {
        return Err(model_error(format!(
            "config.json: the hidden size {hidden} is not a multiple of the number of attention heads {heads}"
        )));
    }
    Ok(hidden / heads)
}

/// A bad-argument error naming an input.
pub(crate) fn bad_input(msg: impl Into<String>) -> Error {
    Error::bad_argument(msg)
}
