//! BERT and RoBERTa (`BertModel`, `RobertaModel`, `XLMRobertaModel`): the
//! same encoder; RoBERTa numbers positions from `pad_token_id + 1`, skipping
//! padding tokens.

use mymps_core::Result;
use tch::{Kind, Tensor};

use super::layers::{
    Activation, Embedding, LayerNorm, Linear, Mask, Tx, attention, head_dim, merge_heads,
    split_heads,
};
use super::{Arch, Bound, Build, Inputs};
use crate::convert::model_error;

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    inter: Linear,
    out: Linear,
    out_norm: LayerNorm,
}

struct Bert {
    roberta: bool,
    vocab: i64,
    max_pos: i64,
    type_vocab: i64,
    pad: i64,
    heads: i64,
    head_dim: i64,
    act: Activation,
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
    pooler: Option<Linear>,
}

/// Which of the two encoders: their position ids and defaults differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Variant {
    /// Positions `0..seq`; vocabulary 30522, padding id 0.
    Bert,
    /// Positions from `pad_token_id + 1`, skipping padding; vocabulary
    /// 50265, padding id 1 (RoBERTa, XLM-RoBERTa).
    Roberta,
}

pub(super) fn build(b: &mut Build, variant: Variant) -> Result<Box<dyn Arch>> {
    let cfg = b.cfg;
    let roberta = variant == Variant::Roberta;
    let pos_type = cfg.string("position_embedding_type", "absolute")?;
    if pos_type != "absolute" {
        return Err(model_error(format!(
            "config.json: position_embedding_type '{pos_type}' is not supported (only 'absolute')"
        )));
    }
    if cfg.boolean("is_decoder", false)? || cfg.boolean("add_cross_attention", false)? {
        return Err(model_error(
            "config.json: is_decoder / add_cross_attention are not supported: this loader runs the encoder",
        ));
    }
    let hidden = cfg.size("hidden_size", Some(768), Bound::Width)?;
    let n_layers = cfg.size("num_hidden_layers", Some(12), Bound::Layers)?;
    let heads = cfg.size("num_attention_heads", Some(12), Bound::Heads)?;
    let inter = cfg.size("intermediate_size", Some(3072), Bound::Width)?;
    let vocab = cfg.size(
        "vocab_size",
        Some(if roberta { 50265 } else { 30522 }),
        Bound::Vocab,
    )?;
    let max_pos = cfg.size("max_position_embeddings", Some(512), Bound::Positions)?;
    let type_vocab = cfg.size("type_vocab_size", Some(2), Bound::Vocab)?;
    let eps = cfg.float("layer_norm_eps", 1e-12)?;
    let pad = cfg.int("pad_token_id", Some(if roberta { 1 } else { 0 }))?;
    let act = Activation::from_config(cfg, "hidden_act", "gelu")?;
    let d = head_dim(hidden, heads)?;
    let ws = &mut *b.ws;
    ws.check_layers("num_hidden_layers", n_layers, |i| {
        format!("encoder.layer.{i}.attention.self.query.weight")
    })?;
    let word = Embedding::load(ws, "embeddings.word_embeddings.weight", vocab, hidden)?;
    let position = Embedding::load(ws, "embeddings.position_embeddings.weight", max_pos, hidden)?;
    let token_type = Embedding::load(
        ws,
        "embeddings.token_type_embeddings.weight",
        type_vocab,
        hidden,
    )?;
    let emb_norm = LayerNorm::load(ws, "embeddings.LayerNorm", hidden, eps)?;
    let layers = (0..n_layers)
        .map(|i| {
            let p = format!("encoder.layer.{i}");
            Ok(Layer {
                query: Linear::load(
                    ws,
                    &format!("{p}.attention.self.query"),
                    hidden,
                    hidden,
                    true,
                )?,
                key: Linear::load(ws, &format!("{p}.attention.self.key"), hidden, hidden, true)?,
                value: Linear::load(
                    ws,
                    &format!("{p}.attention.self.value"),
                    hidden,
                    hidden,
                    true,
                )?,
                attn_out: Linear::load(
                    ws,
                    &format!("{p}.attention.output.dense"),
                    hidden,
                    hidden,
                    true,
                )?,
                attn_norm: LayerNorm::load(
                    ws,
                    &format!("{p}.attention.output.LayerNorm"),
                    hidden,
                    eps,
                )?,
                inter: Linear::load(ws, &format!("{p}.intermediate.dense"), hidden, inter, true)?,
                out: Linear::load(ws, &format!("{p}.output.dense"), inter, hidden, true)?,
                out_norm: LayerNorm::load(ws, &format!("{p}.output.LayerNorm"), hidden, eps)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let pooler = if ws.has("pooler.dense.weight") {
        Some(Linear::load(ws, "pooler.dense", hidden, hidden, true)?)
    } else {
        None
    };
    Ok(Box::new(Bert {
        roberta,
        vocab,
        max_pos,
        type_vocab,
        pad,
        heads,
        head_dim: d,
        act,
        word,
        position,
        token_type,
        emb_norm,
        layers,
        pooler,
    }))
}

impl Bert {
    /// transformers' default position ids: `0..seq` for BERT; for RoBERTa
    /// `pad + cumsum(ids != pad) * (ids != pad)`, so padding gets `pad`.
    fn default_positions(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, s) = (ids.size()[0], ids.size()[1]);
        let pos = if self.roberta {
            let m = ids
                .f_ne(self.pad)
                .and_then(|m| m.f_to_kind(Kind::Int64))
                .tx()?;
            m.f_cumsum(1, Kind::Int64)
                .and_then(|c| c.f_mul(&m))
                .and_then(|c| c.f_add_scalar(self.pad))
                .tx()?
        } else {
            Tensor::f_arange(s, (Kind::Int64, ids.device()))
                .and_then(|a| a.f_unsqueeze(0))
                .and_then(|a| a.f_expand([b, s], false))
                .tx()?
        };
        let max = pos.f_max().and_then(|m| m.f_int64_value(&[])).tx()?;
        if max >= self.max_pos {
            return Err(super::layers::bad_input(format!(
                "the sequence is too long: position {max} is past max_position_embeddings ({})",
                self.max_pos
            )));
        }
        Ok(pos)
    }
}

impl Arch for Bert {
    fn inputs(&self) -> &'static [&'static str] {
        &[
            "input_ids",
            "attention_mask",
            "token_type_ids",
            "position_ids",
        ]
    }

    fn outputs(&self) -> Vec<&'static str> {
        let mut v = vec!["last_hidden_state"];
        if self.pooler.is_some() {
            v.push("pooler_output");
        }
        v
    }

    fn forward(&self, inputs: &mut Inputs) -> Result<Vec<(String, Tensor)>> {
        let ids = inputs.token_ids("input_ids", self.vocab)?;
        let (b, s) = (ids.size()[0], ids.size()[1]);
        let mask = inputs.attention_mask(b, s)?;
        let tt = match inputs.index_like(
            "token_type_ids",
            b,
            s,
            Some((self.type_vocab, "type_vocab_size")),
        )? {
            Some(t) => t,
            None => Tensor::f_zeros([b, s], (Kind::Int64, ids.device())).tx()?,
        };
        let pos = match inputs.index_like(
            "position_ids",
            b,
            s,
            Some((self.max_pos, "max_position_embeddings")),
        )? {
            Some(p) => p,
            None => self.default_positions(&ids)?,
        };
        let (w, t, p) = (
            self.word.forward(&ids)?,
            self.token_type.forward(&tt)?,
            self.position.forward(&pos)?,
        );
        let emb = w.f_add(&t).and_then(|e| e.f_add(&p)).tx()?;
        let mut h = self.emb_norm.forward(&emb)?;
        let m = Mask::padding(mask.as_ref())?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        for l in &self.layers {
            let q = split_heads(&l.query.forward(&h)?, self.heads, self.head_dim)?;
            let k = split_heads(&l.key.forward(&h)?, self.heads, self.head_dim)?;
            let v = split_heads(&l.value.forward(&h)?, self.heads, self.head_dim)?;
            let ctx = merge_heads(&attention(&q, &k, &v, &m, scale)?)?;
            let a = l
                .attn_norm
                .forward(&l.attn_out.forward(&ctx)?.f_add(&h).tx()?)?;
            let i = self.act.forward(&l.inter.forward(&a)?)?;
            h = l.out_norm.forward(&l.out.forward(&i)?.f_add(&a).tx()?)?;
        }
        let mut out = Vec::new();
        if let Some(p) = &self.pooler {
            let first = h.f_select(1, 0).tx()?;
            out.push((
                "pooler_output".to_owned(),
                p.forward(&first)?.f_tanh().tx()?,
            ));
        }
        out.insert(0, ("last_hidden_state".to_owned(), h));
        Ok(out)
    }
}
