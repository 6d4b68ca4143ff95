//! DistilBERT (`DistilBertModel`): word and position embeddings (no token
//! types), post-norm encoder blocks, no pooler.

use mymps_core::Result;
use tch::{Kind, Tensor};

use super::layers::{
    Activation, Embedding, LayerNorm, Linear, Mask, Tx, attention, bad_input, head_dim,
    merge_heads, split_heads,
};
use super::{Arch, Bound, Build, Inputs};

/// DistilBERT's layer norms use a fixed epsilon.
const EPS: f64 = 1e-12;

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    sa_norm: LayerNorm,
    lin1: Linear,
    lin2: Linear,
    out_norm: LayerNorm,
}

struct DistilBert {
    vocab: i64,
    max_pos: i64,
    heads: i64,
    head_dim: i64,
    act: Activation,
    word: Embedding,
    position: Embedding,
    emb_norm: LayerNorm,
    layers: Vec<Layer>,
}

pub(super) fn build(b: &mut Build) -> Result<Box<dyn Arch>> {
    let cfg = b.cfg;
    let dim = cfg.size("dim", Some(768), Bound::Width)?;
    let n_layers = cfg.size("n_layers", Some(6), Bound::Layers)?;
    let heads = cfg.size("n_heads", Some(12), Bound::Heads)?;
    let hidden = cfg.size("hidden_dim", Some(4 * 768), Bound::Width)?;
    let vocab = cfg.size("vocab_size", Some(30522), Bound::Vocab)?;
    let max_pos = cfg.size("max_position_embeddings", Some(512), Bound::Positions)?;
    let act = Activation::from_config(cfg, "activation", "gelu")?;
    let d = head_dim(dim, heads)?;
    let ws = &mut *b.ws;
    ws.check_layers("n_layers", n_layers, |i| {
        format!("transformer.layer.{i}.attention.q_lin.weight")
    })?;
    let word = Embedding::load(ws, "embeddings.word_embeddings.weight", vocab, dim)?;
    let position = Embedding::load(ws, "embeddings.position_embeddings.weight", max_pos, dim)?;
    let emb_norm = LayerNorm::load(ws, "embeddings.LayerNorm", dim, EPS)?;
    let layers = (0..n_layers)
        .map(|i| {
            let p = format!("transformer.layer.{i}");
            Ok(Layer {
                q: Linear::load(ws, &format!("{p}.attention.q_lin"), dim, dim, true)?,
                k: Linear::load(ws, &format!("{p}.attention.k_lin"), dim, dim, true)?,
                v: Linear::load(ws, &format!("{p}.attention.v_lin"), dim, dim, true)?,
                out: Linear::load(ws, &format!("{p}.attention.out_lin"), dim, dim, true)?,
                sa_norm: LayerNorm::load(ws, &format!("{p}.sa_layer_norm"), dim, EPS)?,
                lin1: Linear::load(ws, &format!("{p}.ffn.lin1"), dim, hidden, true)?,
                lin2: Linear::load(ws, &format!("{p}.ffn.lin2"), hidden, dim, true)?,
                out_norm: LayerNorm::load(ws, &format!("{p}.output_layer_norm"), dim, EPS)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Box::new(DistilBert {
        vocab,
        max_pos,
        heads,
        head_dim: d,
        act,
        word,
        position,
        emb_norm,
        layers,
    }))
}

impl Arch for DistilBert {
    fn inputs(&self) -> &'static [&'static str] {
        &["input_ids", "attention_mask"]
    }

    fn outputs(&self) -> Vec<&'static str> {
        vec!["last_hidden_state"]
    }

    fn forward(&self, inputs: &mut Inputs) -> Result<Vec<(String, Tensor)>> {
        let ids = inputs.token_ids("input_ids", self.vocab)?;
        let (b, s) = (ids.size()[0], ids.size()[1]);
        if s > self.max_pos {
            return Err(bad_input(format!(
                "the sequence ({s} tokens) is longer than max_position_embeddings ({})",
                self.max_pos
            )));
        }
        let mask = inputs.attention_mask(b, s)?;
        let pos = Tensor::f_arange(s, (Kind::Int64, ids.device()))
            .and_then(|a| a.f_unsqueeze(0))
            .tx()?;
        let emb = self
            .word
            .forward(&ids)?
            .f_add(&self.position.forward(&pos)?)
            .tx()?;
        let mut h = self.emb_norm.forward(&emb)?;
        let m = Mask::padding(mask.as_ref())?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        for l in &self.layers {
            let q = split_heads(&l.q.forward(&h)?, self.heads, self.head_dim)?;
            let k = split_heads(&l.k.forward(&h)?, self.heads, self.head_dim)?;
            let v = split_heads(&l.v.forward(&h)?, self.heads, self.head_dim)?;
            let ctx = merge_heads(&attention(&q, &k, &v, &m, scale)?)?;
            let sa = l.sa_norm.forward(&l.out.forward(&ctx)?.f_add(&h).tx()?)?;
            let f = l.lin2.forward(&self.act.forward(&l.lin1.forward(&sa)?)?)?;
            h = l.out_norm.forward(&f.f_add(&sa).tx()?)?;
        }
        Ok(vec![("last_hidden_state".to_owned(), h)])
    }
}
