//! ViT (`ViTModel`): patch embeddings by a strided convolution, a class
//! token and learned positions, pre-norm encoder blocks, a final layer norm
//! and (when its weights are present) the pooler. Images must have the
//! configured size (`interpolate_pos_encoding` is not supported).

use mymps_core::Result;
use serde_json::Value as Json;
use tch::Tensor;

use super::layers::{
    Activation, LayerNorm, Linear, Mask, Tx, attention, head_dim, merge_heads, split_heads,
};
use super::{Arch, Bound, Build, Config, Inputs, check_size};
use crate::convert::{Weight, model_error};

struct Layer {
    norm_before: LayerNorm,
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    norm_after: LayerNorm,
    inter: Linear,
    out: Linear,
}

struct Vit {
    channels: i64,
    image: [i64; 2],
    patch: [i64; 2],
    heads: i64,
    head_dim: i64,
    act: Activation,
    cls_token: Weight,
    positions: Weight,
    proj_w: Weight,
    proj_b: Weight,
    layers: Vec<Layer>,
    norm: LayerNorm,
    pooler: Option<(Linear, Activation)>,
}

/// An int or a pair of ints (`image_size`, `patch_size`).
fn pair(cfg: &Config, key: &str, default: i64) -> Result<[i64; 2]> {
    let bad = || {
        model_error(format!(
            "config.json: '{key}' must be a positive integer or a pair of them"
        ))
    };
    let v = match cfg.value(key) {
        None => [default, default],
        Some(Json::Array(a)) if a.len() == 2 => [
            a[0].as_i64().ok_or_else(bad)?,
            a[1].as_i64().ok_or_else(bad)?,
        ],
        Some(v) => {
            let n = v.as_i64().ok_or_else(bad)?;
            [n, n]
        }
    };
    check_size(key, v[0], Bound::Pixels)?;
    check_size(key, v[1], Bound::Pixels)?;
    Ok(v)
}

pub(super) fn build(b: &mut Build) -> Result<Box<dyn Arch>> {
    let cfg = b.cfg;
    let hidden = cfg.size("hidden_size", Some(768), Bound::Width)?;
    let n_layers = cfg.size("num_hidden_layers", Some(12), Bound::Layers)?;
    let heads = cfg.size("num_attention_heads", Some(12), Bound::Heads)?;
    let inter = cfg.size("intermediate_size", Some(3072), Bound::Width)?;
    let eps = cfg.float("layer_norm_eps", 1e-12)?;
    let channels = cfg.size("num_channels", Some(3), Bound::Width)?;
    let image = pair(cfg, "image_size", 224)?;
    let patch = pair(cfg, "patch_size", 16)?;
    let qkv_bias = cfg.boolean("qkv_bias", true)?;
    let act = Activation::from_config(cfg, "hidden_act", "gelu")?;
    let d = head_dim(hidden, heads)?;
    let n_patches = (image[0] / patch[0]) * (image[1] / patch[1]);
    if n_patches == 0 {
        return Err(model_error(
            "config.json: the patches are larger than the image",
        ));
    }
    let ws = &mut *b.ws;
    ws.check_layers("num_hidden_layers", n_layers, |i| {
        format!("encoder.layer.{i}.attention.attention.query.weight")
    })?;
    let cls_token = ws.get("embeddings.cls_token", &[1, 1, hidden])?;
    let positions = ws.get(
        "embeddings.position_embeddings",
        &[1, n_patches + 1, hidden],
    )?;
    let proj_w = ws.get(
        "embeddings.patch_embeddings.projection.weight",
        &[hidden, channels, patch[0], patch[1]],
    )?;
    let proj_b = ws.get("embeddings.patch_embeddings.projection.bias", &[hidden])?;
    let layers = (0..n_layers)
        .map(|i| {
            let p = format!("encoder.layer.{i}");
            Ok(Layer {
                norm_before: LayerNorm::load(ws, &format!("{p}.layernorm_before"), hidden, eps)?,
                query: Linear::load(
                    ws,
                    &format!("{p}.attention.attention.query"),
                    hidden,
                    hidden,
                    qkv_bias,
                )?,
                key: Linear::load(
                    ws,
                    &format!("{p}.attention.attention.key"),
                    hidden,
                    hidden,
                    qkv_bias,
                )?,
                value: Linear::load(
                    ws,
                    &format!("{p}.attention.attention.value"),
                    hidden,
                    hidden,
                    qkv_bias,
                )?,
                attn_out: Linear::load(
                    ws,
                    &format!("{p}.attention.output.dense"),
                    hidden,
                    hidden,
                    true,
                )?,
                norm_after: LayerNorm::load(ws, &format!("{p}.layernorm_after"), hidden, eps)?,
                inter: Linear::load(ws, &format!("{p}.intermediate.dense"), hidden, inter, true)?,
                out: Linear::load(ws, &format!("{p}.output.dense"), inter, hidden, true)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let norm = LayerNorm::load(ws, "layernorm", hidden, eps)?;
    let pooler = if ws.has("pooler.dense.weight") {
        let size = cfg.size("pooler_output_size", Some(hidden), Bound::Width)?;
        Some((
            Linear::load(ws, "pooler.dense", hidden, size, true)?,
            Activation::from_config(cfg, "pooler_act", "tanh")?,
        ))
    } else {
        None
    };
    Ok(Box::new(Vit {
        channels,
        image,
        patch,
        heads,
        head_dim: d,
        act,
        cls_token,
        positions,
        proj_w,
        proj_b,
        layers,
        norm,
        pooler,
    }))
}

impl Arch for Vit {
    fn inputs(&self) -> &'static [&'static str] {
        &["pixel_values"]
    }

    fn outputs(&self) -> Vec<&'static str> {
        let mut v = vec!["last_hidden_state"];
        if self.pooler.is_some() {
            v.push("pooler_output");
        }
        v
    }

    fn forward(&self, inputs: &mut Inputs) -> Result<Vec<(String, Tensor)>> {
        let [ih, iw] = self.image;
        let x = inputs.float("pixel_values", &[-1, self.channels, ih, iw])?;
        let b = x.size()[0];
        let patches = x
            .f_conv2d(
                &self.proj_w,
                Some(&*self.proj_b),
                self.patch,
                [0, 0],
                [1, 1],
                1,
            )
            .and_then(|p| p.f_flatten(2, -1))
            .and_then(|p| p.f_transpose(1, 2))
            .tx()?;
        let cls = self.cls_token.f_expand([b, -1, -1], false).tx()?;
        let mut h = Tensor::f_cat(&[&cls, &patches], 1)
            .and_then(|e| e.f_add(&self.positions))
            .tx()?;
        let m = Mask::none();
        let scale = (self.head_dim as f64).powf(-0.5);
        for l in &self.layers {
            let x = l.norm_before.forward(&h)?;
            let q = split_heads(&l.query.forward(&x)?, self.heads, self.head_dim)?;
            let k = split_heads(&l.key.forward(&x)?, self.heads, self.head_dim)?;
            let v = split_heads(&l.value.forward(&x)?, self.heads, self.head_dim)?;
            let ctx = merge_heads(&attention(&q, &k, &v, &m, scale)?)?;
            h = l.attn_out.forward(&ctx)?.f_add(&h).tx()?;
            let y = self
                .act
                .forward(&l.inter.forward(&l.norm_after.forward(&h)?)?)?;
            h = l.out.forward(&y)?.f_add(&h).tx()?;
        }
        let h = self.norm.forward(&h)?;
        let mut out = Vec::new();
        if let Some((dense, act)) = &self.pooler {
            let first = h.f_select(1, 0).tx()?;
            out.push((
                "pooler_output".to_owned(),
                act.forward(&dense.forward(&first)?)?,
            ));
        }
        out.insert(0, ("last_hidden_state".to_owned(), h));
        Ok(out)
    }
}
