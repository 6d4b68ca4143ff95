//! Llama and its close relatives (`LlamaModel`, `MistralModel`,
//! `Qwen2Model`, and `logits` for their `...ForCausalLM` checkpoints):
//! RMSNorm, rotary position embeddings (`rope_theta`; `rope_scaling` of type
//! `default`, `linear` or `llama3`), grouped-query attention
//! (`num_key_value_heads`), a SwiGLU-style MLP. Qwen2 has biases on q/k/v;
//! Llama's `attention_bias` and `mlp_bias` are honoured; Mistral's
//! `sliding_window` and Qwen2's sliding layers (`layer_types`, or
//! `use_sliding_window` with `max_window_layers`) mask keys outside the
//! window as transformers does.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use mymps_core::Result;
use serde_json::Value as Json;
use tch::{Device, Kind, Tensor};

use super::layers::{
    Activation, Embedding, Linear, Mask, RmsNorm, Tx, attention, merge_heads, repeat_kv,
    split_heads,
};
use super::{Arch, Bound, Build, Config, Inputs, check_size};
use crate::convert::{Weight, model_error};
use crate::generate::{CacheLayout, Decoder, Dims, KvCache};

struct Layer {
    input_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    /// The sliding window of this layer, if it has one.
    window: Option<i64>,
}

struct Llama {
    vocab: i64,
    hidden: i64,
    inner: i64,
    /// `max_position_embeddings`: the longest sequence generated.
    max_positions: i64,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    act: Activation,
    /// Rotary inverse frequencies `[head_dim / 2]`, float32, on the device.
    inv_freq: Weight,
    /// `attention_scaling` of the rope type (1 for those supported).
    rope_scale: f64,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
}

/// The rotary inverse frequencies as transformers computes them (float32).
pub(super) fn rope(cfg: &Config, head_dim: i64, device: Device) -> Result<(Tensor, f64)> {
    let partial = cfg.float("partial_rotary_factor", 1.0)?;
    if partial != 1.0 {
        return Err(model_error(
            "config.json: partial_rotary_factor other than 1 is not supported",
        ));
    }
    // transformers 5 writes `rope_parameters` — `rope_type`, `rope_theta`
    // and the scaling's own numbers in one object — where 4.x wrote a
    // top-level `rope_theta` and `rope_scaling`. Read either.
    let params = match cfg.value("rope_parameters") {
        None | Some(Json::Null) => None,
        Some(Json::Object(o)) if o.contains_key("rope_type") || o.contains_key("rope_theta") => {
            Some(o)
        }
        Some(Json::Object(_)) => {
            return Err(model_error(
                "config.json: rope_parameters per layer type are not supported natively (engine=\"python\" runs the model through transformers)",
            ));
        }
        Some(_) => {
            return Err(model_error(
                "config.json: rope_parameters must be an object",
            ));
        }
    };
    let theta = match params.and_then(|o| o.get("rope_theta")) {
        Some(v) => v.as_f64().ok_or_else(|| {
            model_error("config.json: rope_parameters.rope_theta must be a number")
        })?,
        None => cfg.float("rope_theta", 10000.0)?,
    };
    let base = Tensor::f_arange_start_step(0, head_dim, 2, (Kind::Int64, Device::Cpu))
        .and_then(|a| a.f_to_kind(Kind::Float))
        .and_then(|a| a.f_div_scalar(head_dim as f64))
        .and_then(|e| Tensor::f_pow_scalar(theta, &e))
        .and_then(|p| p.f_reciprocal())
        .tx()?;
    let scaling = match (params, cfg.value("rope_scaling")) {
        (Some(o), _) => Some(o),
        (None, None | Some(Json::Null)) => None,
        (None, Some(Json::Object(o))) => Some(o),
        (None, Some(_)) => return Err(model_error("config.json: rope_scaling must be an object")),
    };
    let rope_type = scaling
        .and_then(|o| o.get("rope_type").or_else(|| o.get("type")))
        .and_then(Json::as_str)
        .unwrap_or("default");
    let num = |key: &str| -> Result<f64> {
        scaling
            .and_then(|o| o.get(key))
            .and_then(Json::as_f64)
            .ok_or_else(|| model_error(format!("config.json: rope_scaling needs a number '{key}'")))
    };
    let inv = match rope_type {
        "default" => base,
        "linear" => base.f_div_scalar(num("factor")?).tx()?,
        "llama3" => {
            let factor = num("factor")?;
            let low = num("low_freq_factor")?;
            let high = num("high_freq_factor")?;
            let old_ctx = num("original_max_position_embeddings")?;
            let (low_wl, high_wl) = (old_ctx / low, old_ctx / high);
            let wavelen = base
                .f_reciprocal()
                .and_then(|r| r.f_mul_scalar(2.0 * std::f64::consts::PI))
                .tx()?;
            let scaled = base.f_div_scalar(factor).tx()?;
            let long = wavelen.f_gt(low_wl).tx()?;
            let inv_llama = scaled.f_where_self(&long, &base).tx()?;
            let smooth = wavelen
                .f_reciprocal()
                .and_then(|r| r.f_mul_scalar(old_ctx))
                .and_then(|t| t.f_sub_scalar(low))
                .and_then(|t| t.f_div_scalar(high - low))
                .tx()?;
            let smoothed = smooth
                .f_rsub_scalar(1.0)
                .and_then(|t| t.f_mul(&inv_llama))
                .and_then(|t| t.f_div_scalar(factor))
                .and_then(|t| t.f_add(&smooth.f_mul(&inv_llama)?))
                .tx()?;
            let medium = wavelen
                .f_lt(high_wl)
                .and_then(|s| s.f_logical_not())
                .and_then(|s| s.f_logical_and(&long.f_logical_not()?))
                .tx()?;
            smoothed.f_where_self(&medium, &inv_llama).tx()?
        }
        other => {
            return Err(model_error(format!(
                "config.json: rope_scaling type '{other}' is not supported (default, linear, llama3)"
            )));
        }
    };
    Ok((inv.f_to_device(device).tx()?, 1.0))
}

/// The config's `sliding_window`, if any: a positive number of positions.
fn sliding_window(cfg: &Config) -> Result<Option<i64>> {
    cfg.opt_int("sliding_window")?
        .map(|w| check_size("sliding_window", w, Bound::Positions))
        .transpose()
}

/// What sets the Llama relatives apart: config defaults, which projections
/// have biases, and which layers attend through a sliding window.
#[derive(Debug, Clone, Copy)]
pub(super) struct Variant {
    /// `vocab_size` when the config gives none.
    vocab: i64,
    /// `intermediate_size` when the config gives none.
    intermediate: i64,
    /// `max_position_embeddings` when the config gives none.
    positions: i64,
    /// `num_key_value_heads` when the config gives none (`None`: one per
    /// attention head).
    kv_heads: Option<i64>,
    biases: Biases,
    windows: Windows,
}

/// Which projections have biases.
#[derive(Debug, Clone, Copy)]
enum Biases {
    /// As the config's `attention_bias` (q/k/v/o) and `mlp_bias` say (Llama).
    FromConfig,
    /// On q/k/v only (Qwen2).
    Qkv,
    /// None (Mistral).
    None,
}

/// Which layers use a sliding window.
#[derive(Debug, Clone, Copy)]
enum Windows {
    /// None (Llama).
    None,
    /// Every layer, of the config's `sliding_window` (Mistral).
    All,
    /// As Qwen2's `layer_types`, or `use_sliding_window` with
    /// `max_window_layers`.
    Qwen2,
}

/// `LlamaModel`.
pub(super) const LLAMA: Variant = Variant {
    vocab: 32000,
    intermediate: 11008,
    positions: 2048,
    kv_heads: None,
    biases: Biases::FromConfig,
    windows: Windows::None,
};

/// `MistralModel`.
pub(super) const MISTRAL: Variant = Variant {
    vocab: 32000,
    intermediate: 14336,
    positions: 4096 * 32,
    kv_heads: Some(8),
    biases: Biases::None,
    windows: Windows::All,
};

/// `Qwen2Model`.
pub(super) const QWEN2: Variant = Variant {
    vocab: 151936,
    intermediate: 22016,
    positions: 32768,
    kv_heads: None,
    biases: Biases::Qkv,
    windows: Windows::Qwen2,
};

/// The sliding window of each layer, as transformers decides it.
fn windows(cfg: &Config, windows: Windows, n_layers: i64) -> Result<Vec<Option<i64>>> {
    let n = n_layers as usize;
    match windows {
        Windows::All => Ok(vec![sliding_window(cfg)?; n]),
        Windows::Qwen2 => {
            let window = if cfg.boolean("use_sliding_window", false)? {
                sliding_window(cfg)?
            } else {
                None
            };
            if let Some(Json::Array(types)) = cfg.value("layer_types") {
                if types.len() != n {
                    return Err(model_error(format!(
                        "config.json: layer_types has {} entries for {n} layers",
                        types.len()
                    )));
                }
                return types
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("full_attention") => Ok(None),
                        Some("sliding_attention") => Ok(window),
                        _ => Err(model_error(format!(
                            "config.json: unsupported layer type {t} (full_attention, sliding_attention)"
                        ))),
                    })
                    .collect();
            }
            let full = cfg.int("max_window_layers", Some(28))?;
            Ok((0..n_layers)
                .map(|i| {
                    if window.is_some() && i >= full {
                        window
                    } else {
                        None
                    }
                })
                .collect())
        }
        Windows::None => Ok(vec![None; n]),
    }
}

pub(super) fn build(b: &mut Build, variant: &Variant) -> Result<Box<dyn Arch>> {
    let cfg = b.cfg;
    let hidden = cfg.size("hidden_size", Some(4096), Bound::Width)?;
    let inter = cfg.size(
        "intermediate_size",
        Some(variant.intermediate),
        Bound::Width,
    )?;
    let n_layers = cfg.size("num_hidden_layers", Some(32), Bound::Layers)?;
    let heads = cfg.size("num_attention_heads", Some(32), Bound::Heads)?;
    let kv_heads = cfg.size(
        "num_key_value_heads",
        Some(variant.kv_heads.unwrap_or(heads)),
        Bound::Heads,
    )?;
    if heads % kv_heads != 0 {
        return Err(model_error(format!(
            "config.json: num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv_heads})"
        )));
    }
    let head_dim = match cfg.opt_int("head_dim")? {
        Some(d) if d > 0 => check_size("head_dim", d, Bound::Width)?,
        _ => {
            if hidden % heads != 0 {
                return Err(model_error(format!(
                    "config.json: hidden_size {hidden} is not a multiple of num_attention_heads {heads} (and there is no head_dim)"
                )));
            }
            hidden / heads
        }
    };
    if head_dim % 2 != 0 {
        return Err(model_error(format!(
            "config.json: the head size {head_dim} is odd; rotary embeddings need an even one"
        )));
    }
    let vocab = cfg.size("vocab_size", Some(variant.vocab), Bound::Vocab)?;
    let eps = cfg.float("rms_norm_eps", 1e-6)?;
    let act = Activation::from_config(cfg, "hidden_act", "silu")?;
    let (qkv_bias, o_bias, mlp_bias) = match variant.biases {
        Biases::Qkv => (true, false, false),
        Biases::None => (false, false, false),
        Biases::FromConfig => {
            let a = cfg.boolean("attention_bias", false)?;
            (a, a, cfg.boolean("mlp_bias", false)?)
        }
    };
    b.ws.check_layers("num_hidden_layers", n_layers, |i| {
        format!("layers.{i}.self_attn.q_proj.weight")
    })?;
    let windows = windows(cfg, variant.windows, n_layers)?;
    let (inv_freq, rope_scale) = rope(cfg, head_dim, b.ws.device)?;
    let ws = &mut *b.ws;
    let embed = Embedding::load(ws, "embed_tokens.weight", vocab, hidden)?;
    let (qd, kvd) = (heads * head_dim, kv_heads * head_dim);
    let layers = windows
        .into_iter()
        .enumerate()
        .map(|(i, window)| {
            let p = format!("layers.{i}");
            Ok(Layer {
                input_norm: RmsNorm::load(ws, &format!("{p}.input_layernorm"), hidden, eps)?,
                q: Linear::load(ws, &format!("{p}.self_attn.q_proj"), hidden, qd, qkv_bias)?,
                k: Linear::load(ws, &format!("{p}.self_attn.k_proj"), hidden, kvd, qkv_bias)?,
                v: Linear::load(ws, &format!("{p}.self_attn.v_proj"), hidden, kvd, qkv_bias)?,
                o: Linear::load(ws, &format!("{p}.self_attn.o_proj"), qd, hidden, o_bias)?,
                post_norm: RmsNorm::load(
                    ws,
                    &format!("{p}.post_attention_layernorm"),
                    hidden,
                    eps,
                )?,
                gate: Linear::load(ws, &format!("{p}.mlp.gate_proj"), hidden, inter, mlp_bias)?,
                up: Linear::load(ws, &format!("{p}.mlp.up_proj"), hidden, inter, mlp_bias)?,
                down: Linear::load(ws, &format!("{p}.mlp.down_proj"), inter, hidden, mlp_bias)?,
                window,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let norm = RmsNorm::load(ws, "norm", hidden, eps)?;
    let lm_head = if !b.lm_head {
        None
    } else if cfg.boolean("tie_word_embeddings", false)? {
        Some(Linear::from_weight(embed.shared()))
    } else {
        ws.opt("lm_head.weight", &[vocab, hidden])?
            .map(Linear::from_weight)
    };
    Ok(Box::new(Llama {
        vocab,
        hidden,
        inner: inter,
        max_positions: cfg.size(
            "max_position_embeddings",
            Some(variant.positions),
            Bound::Positions,
        )?,
        heads,
        kv_heads,
        head_dim,
        act,
        inv_freq: Weight(inv_freq),
        rope_scale,
        embed,
        layers,
        norm,
        lm_head,
    }))
}

/// `x * cos + rotate_half(x) * sin`, `rotate_half(x) = cat(-x2, x1)`.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.size()[3] / 2;
    let x1 = x.f_narrow(3, 0, half).tx()?;
    let x2 = x.f_narrow(3, half, half).tx()?;
    let rot = Tensor::f_cat(&[x2.f_neg().tx()?, x1], 3).tx()?;
    x.f_mul(cos).and_then(|a| a.f_add(&rot.f_mul(sin)?)).tx()
}

impl Llama {
    /// cos and sin `[batch or 1, 1, seq, head_dim]` for the positions.
    fn rotary(&self, pos: &Tensor, kind: Kind) -> Result<(Tensor, Tensor)> {
        let freqs = pos
            .f_to_kind(Kind::Float)
            .and_then(|p| p.f_unsqueeze(-1))
            .and_then(|p| p.f_mul(&self.inv_freq))
            .tx()?;
        let emb = Tensor::f_cat(&[&freqs, &freqs], -1).tx()?;
        let f = |t: Tensor| -> Result<Tensor> {
            t.f_mul_scalar(self.rope_scale)
                .and_then(|t| t.f_to_kind(kind))
                .and_then(|t| t.f_unsqueeze(1))
                .tx()
        };
        Ok((f(emb.f_cos().tx()?)?, f(emb.f_sin().tx()?)?))
    }
}

impl Llama {
    /// The decoder layers over `ids` `[batch, s]` at positions `pos`, the
    /// queries at cache positions `past..past + s` seeing the keys that
    /// `padding` (`[batch, past + s]`, if any) allows; keys and values of
    /// earlier positions come from `cache` (and this pass's are written
    /// into it) when given. The hidden states before the final norm.
    fn layers(
        &self,
        ids: &Tensor,
        pos: &Tensor,
        past: i64,
        padding: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let s = ids.size()[1];
        let dev = ids.device();
        let mut h = self.embed.forward(ids)?;
        let (cos, sin) = self.rotary(pos, h.kind())?;
        // One generated token (its own key visible): the step mask.
        let mask = |window| match (s, padding, cache.is_some()) {
            (1, Some(p), true) => Mask::step(past, dev, p, window),
            _ => Mask::causal_at(s, past, dev, padding, window),
        };
        let full = mask(None)?;
        let mut masks = BTreeMap::new();
        for w in self.layers.iter().filter_map(|l| l.window) {
            if let Entry::Vacant(e) = masks.entry(w) {
                e.insert(mask(Some(w))?);
            }
        }
        let rep = self.heads / self.kv_heads;
        let scale = (self.head_dim as f64).powf(-0.5);
        for (i, l) in self.layers.iter().enumerate() {
            let m = l.window.and_then(|w| masks.get(&w)).unwrap_or(&full);
            let x = l.input_norm.forward(&h)?;
            let q = split_heads(&l.q.forward(&x)?, self.heads, self.head_dim)?;
            let k = split_heads(&l.k.forward(&x)?, self.kv_heads, self.head_dim)?;
            let v = split_heads(&l.v.forward(&x)?, self.kv_heads, self.head_dim)?;
            let q = apply_rope(&q, &cos, &sin)?;
            let k = apply_rope(&k, &cos, &sin)?;
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => c.append(i, &k, &v)?,
                None => (k, v),
            };
            let k = repeat_kv(&k, rep)?;
            let v = repeat_kv(&v, rep)?;
            let ctx = merge_heads(&attention(&q, &k, &v, m, scale)?)?;
            h = h.f_add(&l.o.forward(&ctx)?).tx()?;
            let x = l.post_norm.forward(&h)?;
            let g = self.act.forward(&l.gate.forward(&x)?)?;
            let f = l.down.forward(&g.f_mul(&l.up.forward(&x)?).tx()?)?;
            h = h.f_add(&f).tx()?;
        }
        Ok(h)
    }
}

impl Decoder for Llama {
    fn max_positions(&self) -> i64 {
        self.max_positions
    }

    fn layout(&self) -> CacheLayout {
        CacheLayout {
            layers: self.layers.len() as i64,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        }
    }

    fn dims(&self) -> Dims {
        Dims {
            hidden: self.hidden,
            inner: self.inner,
            heads: self.heads,
            vocab: self.vocab,
        }
    }

    fn decode(
        &self,
        ids: &Tensor,
        pos: &Tensor,
        keys: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let head = self
            .lm_head
            .as_ref()
            .ok_or_else(|| model_error("no LM head"))?;
        let s = ids.size()[1];
        let past = cache.past();
        let h = self.layers(ids, pos, past, Some(keys), Some(cache))?;
        let last = self.norm.forward(&h.f_narrow(1, s - 1, 1).tx()?)?;
        head.forward(&last)?
            .f_squeeze_dim(1)
            .and_then(|l| l.f_to_kind(Kind::Float))
            .tx()
    }
}

impl Arch for Llama {
    fn decoder(&self) -> Option<&dyn Decoder> {
        self.lm_head.as_ref().map(|_| self as &dyn Decoder)
    }

    fn inputs(&self) -> &'static [&'static str] {
        &["input_ids", "attention_mask", "position_ids"]
    }

    fn outputs(&self) -> Vec<&'static str> {
        let mut v = vec!["last_hidden_state"];
        if self.lm_head.is_some() {
            v.push("logits");
        }
        v
    }

    fn forward(&self, inputs: &mut Inputs) -> Result<Vec<(String, Tensor)>> {
        let ids = inputs.token_ids("input_ids", self.vocab)?;
        let (b, s) = (ids.size()[0], ids.size()[1]);
        let dev = ids.device();
        let mask = inputs.attention_mask(b, s)?;
        let pos = match inputs.index_like("position_ids", b, s, None)? {
            Some(p) => p,
            None => Tensor::f_arange(s, (Kind::Int64, dev))
                .and_then(|a| a.f_unsqueeze(0))
                .tx()?,
        };
        let h = self.layers(&ids, &pos, 0, mask.as_ref(), None)?;
        let h = self.norm.forward(&h)?;
        let mut out = Vec::new();
        if let Some(head) = &self.lm_head {
            out.push(("logits".to_owned(), head.forward(&h)?));
        }
        out.insert(0, ("last_hidden_state".to_owned(), h));
        Ok(out)
    }
}
