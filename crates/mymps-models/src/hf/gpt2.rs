//! GPT-2 (`GPT2Model`, and `logits` for `GPT2LMHeadModel` checkpoints):
//! pre-norm decoder blocks with learned positions; the projections are
//! `Conv1D`s (weights stored `[in, out]`).

use mymps_core::Result;
use tch::{Kind, Tensor};

use super::layers::{
    Activation, Embedding, LayerNorm, Linear, Mask, Tx, attention, bad_input, head_dim,
    merge_heads, split_heads,
};
use super::{Arch, Bound, Build, Inputs};
use crate::convert::model_error;
use crate::generate::{CacheLayout, Decoder, Dims, KvCache};

struct Block {
    ln_1: LayerNorm,
    c_attn: Linear,
    attn_proj: Linear,
    ln_2: LayerNorm,
    c_fc: Linear,
    mlp_proj: Linear,
}

struct Gpt2 {
    vocab: i64,
    n_pos: i64,
    embd: i64,
    inner: i64,
    heads: i64,
    head_dim: i64,
    act: Activation,
    scale_attn_weights: bool,
    scale_by_layer: bool,
    wte: Embedding,
    wpe: Embedding,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Option<Linear>,
}

pub(super) fn build(b: &mut Build) -> Result<Box<dyn Arch>> {
    let cfg = b.cfg;
    if cfg.boolean("add_cross_attention", false)? {
        return Err(model_error(
            "config.json: add_cross_attention is not supported (GPT-2 as a decoder of an encoder-decoder model)",
        ));
    }
    let embd = cfg.size_any(&["n_embd", "hidden_size"], 768, Bound::Width)?;
    let layers_key = ["n_layer", "num_hidden_layers"];
    let n_layer = cfg.size_any(&layers_key, 12, Bound::Layers)?;
    let heads = cfg.size_any(&["n_head", "num_attention_heads"], 12, Bound::Heads)?;
    let n_pos = cfg.size_any(
        &["n_positions", "max_position_embeddings"],
        1024,
        Bound::Positions,
    )?;
    let inner = cfg.size("n_inner", Some(4 * embd), Bound::Width)?;
    let vocab = cfg.size("vocab_size", Some(50257), Bound::Vocab)?;
    let eps = cfg.float("layer_norm_epsilon", 1e-5)?;
    let act = Activation::from_config(cfg, "activation_function", "gelu_new")?;
    let d = head_dim(embd, heads)?;
    let ws = &mut *b.ws;
    let key = cfg.first_of(&layers_key);
    ws.check_layers(key, n_layer, |i| format!("h.{i}.attn.c_attn.weight"))?;
    let wte = Embedding::load(ws, "wte.weight", vocab, embd)?;
    let wpe = Embedding::load(ws, "wpe.weight", n_pos, embd)?;
    let blocks = (0..n_layer)
        .map(|i| {
            let p = format!("h.{i}");
            Ok(Block {
                ln_1: LayerNorm::load(ws, &format!("{p}.ln_1"), embd, eps)?,
                c_attn: Linear::load_conv1d(ws, &format!("{p}.attn.c_attn"), embd, 3 * embd)?,
                attn_proj: Linear::load_conv1d(ws, &format!("{p}.attn.c_proj"), embd, embd)?,
                ln_2: LayerNorm::load(ws, &format!("{p}.ln_2"), embd, eps)?,
                c_fc: Linear::load_conv1d(ws, &format!("{p}.mlp.c_fc"), embd, inner)?,
                mlp_proj: Linear::load_conv1d(ws, &format!("{p}.mlp.c_proj"), inner, embd)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let ln_f = LayerNorm::load(ws, "ln_f", embd, eps)?;
    let lm_head = if !b.lm_head {
        None
    } else if cfg.boolean("tie_word_embeddings", true)? {
        Some(Linear::from_weight(wte.shared()))
    } else {
        ws.opt("lm_head.weight", &[vocab, embd])?
            .map(Linear::from_weight)
    };
    Ok(Box::new(Gpt2 {
        vocab,
        n_pos,
        embd,
        inner,
        heads,
        head_dim: d,
        act,
        scale_attn_weights: cfg.boolean("scale_attn_weights", true)?,
        scale_by_layer: cfg.boolean("scale_attn_by_inverse_layer_idx", false)?,
        wte,
        wpe,
        blocks,
        ln_f,
        lm_head,
    }))
}

impl Gpt2 {
    /// The decoder blocks over the embeddings `h` `[batch, s, embd]`, with
    /// the keys and values of earlier positions from `cache` (and this
    /// pass's written into it) when given; the hidden states before `ln_f`.
    fn blocks(&self, mut h: Tensor, m: &Mask, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        for (i, blk) in self.blocks.iter().enumerate() {
            let x = blk.ln_1.forward(&h)?;
            let qkv = blk.c_attn.forward(&x)?.f_split(self.embd, 2).tx()?;
            let q = split_heads(&qkv[0], self.heads, self.head_dim)?;
            let k = split_heads(&qkv[1], self.heads, self.head_dim)?;
            let v = split_heads(&qkv[2], self.heads, self.head_dim)?;
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => c.append(i, &k, &v)?,
                None => (k, v),
            };
            let mut scale = 1.0;
            if self.scale_attn_weights {
                scale /= (self.head_dim as f64).sqrt();
            }
            if self.scale_by_layer {
                scale /= (i + 1) as f64;
            }
            let ctx = merge_heads(&attention(&q, &k, &v, m, scale)?)?;
            h = blk.attn_proj.forward(&ctx)?.f_add(&h).tx()?;
            let x = blk.ln_2.forward(&h)?;
            let f = blk
                .mlp_proj
                .forward(&self.act.forward(&blk.c_fc.forward(&x)?)?)?;
            h = h.f_add(&f).tx()?;
        }
        Ok(h)
    }
}

impl Decoder for Gpt2 {
    fn max_positions(&self) -> i64 {
        self.n_pos
    }

    fn layout(&self) -> CacheLayout {
        CacheLayout {
            layers: self.blocks.len() as i64,
            kv_heads: self.heads,
            head_dim: self.head_dim,
        }
    }

    fn dims(&self) -> Dims {
        Dims {
            hidden: self.embd,
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
        let h = self.wte.forward(ids)?.f_add(&self.wpe.forward(pos)?).tx()?;
        let m = if s == 1 {
            Mask::step(cache.past(), ids.device(), keys, None)?
        } else {
            Mask::causal_at(s, cache.past(), ids.device(), Some(keys), None)?
        };
        let h = self.blocks(h, &m, Some(cache))?;
        let last = self.ln_f.forward(&h.f_narrow(1, s - 1, 1).tx()?)?;
        head.forward(&last)?
            .f_squeeze_dim(1)
            .and_then(|l| l.f_to_kind(Kind::Float))
            .tx()
    }
}

impl Arch for Gpt2 {
    fn decoder(&self) -> Option<&dyn Decoder> {
        self.lm_head.as_ref().map(|_| self as &dyn Decoder)
    }

    fn inputs(&self) -> &'static [&'static str] {
        &[
            "input_ids",
            "attention_mask",
            "token_type_ids",
            "position_ids",
        ]
    }

    /// `GPT2Model.forward(input_ids, past_key_values, ...)`.
    fn positional(&self) -> usize {
        1
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
        let mask = inputs.attention_mask(b, s)?;
        let tt = inputs.index_like("token_type_ids", b, s, Some((self.vocab, "vocab_size")))?;
        let pos =
            match inputs.index_like("position_ids", b, s, Some((self.n_pos, "n_positions")))? {
                Some(p) => p,
                None => {
                    if s > self.n_pos {
                        return Err(bad_input(format!(
                            "the sequence ({s} tokens) is longer than n_positions ({})",
                            self.n_pos
                        )));
                    }
                    Tensor::f_arange(s, (Kind::Int64, ids.device()))
                        .and_then(|a| a.f_unsqueeze(0))
                        .tx()?
                }
            };
        let mut h = self
            .wte
            .forward(&ids)?
            .f_add(&self.wpe.forward(&pos)?)
            .tx()?;
        if let Some(tt) = tt {
            h = h.f_add(&self.wte.forward(&tt)?).tx()?;
        }
        let m = Mask::causal(s, ids.device(), mask.as_ref(), None)?;
        let h = self.ln_f.forward(&self.blocks(h, &m, None)?)?;
        let mut out = Vec::new();
        if let Some(head) = &self.lm_head {
            out.push(("logits".to_owned(), head.forward(&h)?));
        }
        out.insert(0, ("last_hidden_state".to_owned(), h));
        Ok(out)
    }
}
