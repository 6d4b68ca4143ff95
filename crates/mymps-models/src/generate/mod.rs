//! Text generation for the native decoders (`gpt2`, `llama`, `mistral`,
//! `qwen2` with a language-model head), as transformers' `generate` does
//! it: the prompts left-padded into one batch, with the attention mask and
//! the position ids (`cumsum(mask) - 1`, 1 on padding) transformers gives
//! left padding; one forward pass over the prompts (prefill), then one per
//! new token through a KV cache; the next token chosen by
//! [`sampling::Sampling`] (repetition penalty, temperature, top-k, top-p in
//! transformers' order, greedy or a draw from the request's own
//! generator); a sequence ends at an end-of-sequence or stop id, a stop
//! string, or `max_new_tokens`, and a finished sequence is fed the pad id
//! until the batch ends, as transformers does.
//!
//! The KV cache is allocated once, before the prompts run, for the longest
//! prompt plus `max_new_tokens` (bounded by the model's positions), and its
//! bytes are known before: a request over the caller's limits is refused
//! with `LimitReached` before anything is allocated. Each step hands the
//! caller the new id and text piece of every sequence and reads back
//! whether to go on: a `Stop` returns at once, before the next forward
//! pass.
//!
//! Concurrent requests on one model run side by side, each with its own
//! cache (the weights are shared and read-only); nothing batches separate
//! requests together. A request's own prompts are one batch.

pub(crate) mod sampling;
mod tokenizer;

use std::collections::BTreeSet;

use mymps_core::model::{
    Control, FinishReason, GenerateLimits, GeneratePlan, GenerateRequest, GenerateSummary,
    GeneratedSequence, Prompt, Step, StepToken,
};
use mymps_core::{Error, ErrorCode, Result};
use serde_json::Value as Json;
use tch::{Device, Kind, Tensor};

use crate::convert::{clip, model_error};
use crate::hf::Tx;
use sampling::{Rng, Sampling, Warpers};
pub(crate) use tokenizer::{TextStream, TextTokenizer};

/// The shape of a decoder's KV cache: per layer, keys and values of
/// `[batch, kv_heads, positions, head_dim]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CacheLayout {
    /// Layers.
    pub layers: i64,
    /// Key/value heads.
    pub kv_heads: i64,
    /// Size of a head.
    pub head_dim: i64,
}

/// The sizes of a decoder that bound a forward pass's transients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    /// The residual stream's width.
    pub hidden: i64,
    /// The MLP's inner width.
    pub inner: i64,
    /// Attention (query) heads.
    pub heads: i64,
    /// The vocabulary.
    pub vocab: i64,
}

/// A decoder that generates: an architecture with a language-model head.
pub(crate) trait Decoder: Send + Sync {
    /// The most positions it takes (its position table or
    /// `max_position_embeddings`).
    fn max_positions(&self) -> i64;
    /// Its KV cache's shape.
    fn layout(&self) -> CacheLayout;
    /// Its sizes.
    fn dims(&self) -> Dims;
    /// Runs `ids` `[batch, s]` at positions `pos` `[batch, s]`; `keys`
    /// `[batch, past + s]` (bool) says which positions of the cache and of
    /// the new tokens may be attended to. Writes the new tokens' keys and
    /// values into `cache` at `cache.past()` (the caller advances it) and
    /// returns the logits of the last position, `[batch, vocab]` float32.
    fn decode(
        &self,
        ids: &Tensor,
        pos: &Tensor,
        keys: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor>;
}

/// A KV cache allocated once: keys and values per layer, of `[batch,
/// kv_heads, capacity, head_dim]`; positions `[0, past)` are filled.
pub(crate) struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    past: i64,
    capacity: i64,
}

impl KvCache {
    /// The bytes a cache takes.
    pub fn bytes(layout: CacheLayout, batch: i64, capacity: i64, kind: Kind) -> u128 {
        2 * [
            layout.layers,
            batch,
            layout.kv_heads,
            capacity,
            layout.head_dim,
        ]
        .iter()
        .map(|&d| d.max(0) as u128)
        .product::<u128>()
            * kind.elt_size_in_bytes() as u128
    }

    /// An uninitialised cache (only what is written is ever read).
    pub fn new(
        layout: CacheLayout,
        batch: i64,
        capacity: i64,
        kind: Kind,
        device: Device,
    ) -> Result<KvCache> {
        let shape = [batch, layout.kv_heads, capacity, layout.head_dim];
        let mut k = Vec::with_capacity(layout.layers as usize);
        let mut v = Vec::with_capacity(layout.layers as usize);
        for _ in 0..layout.layers {
            k.push(Tensor::f_empty(shape, (kind, device)).tx()?);
            v.push(Tensor::f_empty(shape, (kind, device)).tx()?);
        }
        Ok(KvCache {
            k,
            v,
            past: 0,
            capacity,
        })
    }

    /// Positions filled.
    pub fn past(&self) -> i64 {
        self.past
    }

    /// Writes layer `layer`'s new keys and values `[batch, kv_heads, s,
    /// head_dim]` at `past()`; returns the layer's keys and values of
    /// positions `[0, past + s)`.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let s = k.size()[2];
        if layer >= self.k.len() || self.past + s > self.capacity {
            return Err(Error::internal(format!(
                "KV cache overrun: layer {layer} of {}, {} + {s} positions of {}",
                self.k.len(),
                self.past,
                self.capacity
            )));
        }
        let n = self.past + s;
        let mut out = Vec::with_capacity(2);
        for (cache, new) in [(&self.k[layer], k), (&self.v[layer], v)] {
            let mut slot = cache.f_narrow(2, self.past, s).tx()?;
            slot.f_copy_(new).tx()?;
            out.push(cache.f_narrow(2, 0, n).tx()?);
        }
        let v = out.pop().expect("two");
        let k = out.pop().expect("two");
        Ok((k, v))
    }

    /// Marks `s` more positions filled (after a forward pass).
    fn advance(&mut self, s: i64) {
        self.past += s;
    }
}

/// A model directory's generation defaults, as transformers'
/// `GenerationConfig` reads them: `generation_config.json`, else
/// `config.json` (`GenerationConfig.from_model_config`), else its own
/// defaults.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GenerationConfig {
    /// `eos_token_id` (an id or a list).
    pub eos: Vec<i64>,
    /// `pad_token_id`.
    pub pad: Option<i64>,
    /// `bos_token_id`.
    pub bos: Option<i64>,
    /// `do_sample` (false).
    pub do_sample: bool,
    /// `temperature` (1).
    pub temperature: f64,
    /// `top_k` (50).
    pub top_k: usize,
    /// `top_p` (1).
    pub top_p: f64,
    /// `repetition_penalty` (1).
    pub repetition_penalty: f64,
    /// `max_new_tokens` (20: transformers' default is a `max_length` of
    /// 20, prompt included; here it is 20 new tokens).
    pub max_new_tokens: usize,
}

impl GenerationConfig {
    /// From `config.json` and, when the directory has one,
    /// `generation_config.json`.
    pub fn read(config: &Json, generation: Option<&Json>) -> Result<GenerationConfig> {
        let get = |key: &str| -> Option<&Json> {
            generation
                .and_then(|g| g.get(key))
                .or_else(|| config.get(key))
                .filter(|v| !v.is_null())
        };
        let bad = |key: &str, what: &str| {
            model_error(format!(
                "generation_config.json / config.json: '{key}' must be {what}"
            ))
        };
        let id = |key: &str| -> Result<Option<i64>> {
            get(key)
                .map(|v| v.as_i64().ok_or_else(|| bad(key, "an integer")))
                .transpose()
        };
        let num = |key: &str, default: f64| -> Result<f64> {
            get(key).map_or(Ok(default), |v| {
                v.as_f64().ok_or_else(|| bad(key, "a number"))
            })
        };
        let count = |key: &str, default: usize| -> Result<usize> {
            get(key).map_or(Ok(default), |v| {
                v.as_u64()
                    .map(|n| n.min(usize::MAX as u64) as usize)
                    .ok_or_else(|| bad(key, "a non-negative integer"))
            })
        };
        let eos = match get("eos_token_id") {
            None => Vec::new(),
            Some(Json::Array(a)) => a
                .iter()
                .map(|v| v.as_i64().ok_or_else(|| bad("eos_token_id", "ids")))
                .collect::<Result<_>>()?,
            Some(v) => vec![v.as_i64().ok_or_else(|| bad("eos_token_id", "an id"))?],
        };
        Ok(GenerationConfig {
            eos,
            pad: id("pad_token_id")?,
            bos: id("bos_token_id")?,
            do_sample: match get("do_sample") {
                None => false,
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| bad("do_sample", "true or false"))?,
            },
            temperature: num("temperature", 1.0)?,
            top_k: count("top_k", 50)?,
            top_p: num("top_p", 1.0)?,
            repetition_penalty: num("repetition_penalty", 1.0)?,
            max_new_tokens: count("max_new_tokens", 20)?,
        })
    }

    /// The id a finished sequence is fed: `pad_token_id`, else the first
    /// EOS id (as transformers sets it for open-end generation), else 0.
    pub fn pad_id(&self) -> i64 {
        self.pad.or(self.eos.first().copied()).unwrap_or(0)
    }
}

/// The most stop strings a request may give.
pub const MAX_STOP_STRINGS: usize = 64;
/// The longest stop string, in bytes.
pub const MAX_STOP_STRING_BYTES: usize = 1024;
/// The most stop ids a request may give.
pub const MAX_STOP_IDS: usize = 1024;

fn limit(msg: String) -> Error {
    Error::new(ErrorCode::LimitReached, msg)
}

fn bad(msg: impl Into<String>) -> Error {
    Error::bad_argument(msg)
}

/// A request, checked and resolved against the model.
struct Resolved {
    prompts: Vec<Vec<i64>>,
    /// The longest prompt: every prompt is left-padded to it.
    width: i64,
    max_new: usize,
    sampling: Sampling,
    seed: Option<u64>,
    stop_ids: BTreeSet<i64>,
    stop_strings: Vec<String>,
    skip_special: bool,
    /// Left padding of the prompts.
    prompt_pad: i64,
    /// Fed to finished sequences.
    pad: i64,
    plan: GeneratePlan,
}

/// A decoder with what generation needs beside it.
pub(crate) struct TextModel<'a> {
    /// The network.
    pub decoder: &'a dyn Decoder,
    /// Its tokenizer, if the directory has one.
    pub tokenizer: Option<&'a TextTokenizer>,
    /// Its defaults.
    pub config: &'a GenerationConfig,
    /// Its dtype (the cache's).
    pub kind: Kind,
    /// Its device.
    pub device: Device,
}

impl TextModel<'_> {
    fn tokenizer(&self, what: &str) -> Result<&TextTokenizer> {
        self.tokenizer.ok_or_else(|| {
            Error::new(
                ErrorCode::Unsupported,
                format!("{what} needs a tokenizer, and this model's directory has no tokenizer.json; send token ids"),
            )
        })
    }

    fn resolve(&self, req: &GenerateRequest, limits: &GenerateLimits) -> Result<Resolved> {
        let vocab = self.decoder.dims().vocab;
        if req.prompts.is_empty() {
            return Err(bad("generate needs at least one prompt"));
        }
        if req.prompts.len() > limits.max_batch {
            return Err(limit(format!(
                "{} prompts in one request; this server takes at most {}",
                req.prompts.len(),
                limits.max_batch
            )));
        }
        let add_special = req.add_special_tokens.unwrap_or(true);
        let mut prompts = Vec::with_capacity(req.prompts.len());
        for (i, p) in req.prompts.iter().enumerate() {
            let ids = match p {
                Prompt::Text(t) => self.tokenizer("a text prompt")?.encode(t, add_special)?,
                Prompt::Ids(ids) => ids.clone(),
            };
            if ids.is_empty() {
                return Err(bad(format!("prompt {i} has no tokens")));
            }
            if let Some(&id) = ids.iter().find(|&&id| id < 0 || id >= vocab) {
                return Err(bad(format!(
                    "prompt {i} has token id {id}, outside the vocabulary [0, {vocab})"
                )));
            }
            prompts.push(ids);
        }
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0) as i64;
        let cfg = self.config;
        let max_new = req.max_new_tokens.unwrap_or(cfg.max_new_tokens);
        if max_new == 0 {
            return Err(bad("max_new_tokens must be at least 1"));
        }
        if max_new > limits.max_new_tokens {
            return Err(limit(format!(
                "max_new_tokens = {max_new}; this server allows at most {}",
                limits.max_new_tokens
            )));
        }
        let positions = self.decoder.max_positions();
        if width as u128 + max_new as u128 > positions as u128 {
            return Err(bad(format!(
                "a prompt of {width} tokens plus max_new_tokens = {max_new} is more than the model's {positions} positions"
            )));
        }
        let sampling = self.sampling(req)?;
        let mut stop_ids: BTreeSet<i64> = BTreeSet::new();
        if req.stop_ids.len() > MAX_STOP_IDS {
            return Err(bad(format!(
                "{} stop ids; at most {MAX_STOP_IDS}",
                req.stop_ids.len()
            )));
        }
        stop_ids.extend(&req.stop_ids);
        if !req.ignore_eos {
            stop_ids.extend(&cfg.eos);
        }
        if req.stop_strings.len() > MAX_STOP_STRINGS {
            return Err(bad(format!(
                "{} stop strings; at most {MAX_STOP_STRINGS}",
                req.stop_strings.len()
            )));
        }
        for s in &req.stop_strings {
            if s.is_empty() || s.len() > MAX_STOP_STRING_BYTES {
                return Err(bad(format!(
                    "stop strings must have 1 to {MAX_STOP_STRING_BYTES} bytes, not {} ('{}')",
                    s.len(),
                    clip(s)
                )));
            }
        }
        if !req.stop_strings.is_empty() {
            self.tokenizer("stop_strings")?;
        }
        let pad = cfg.pad_id();
        let prompt_pad = self.tokenizer.and_then(TextTokenizer::pad).unwrap_or(pad);
        let batch = prompts.len() as i64;
        let capacity = width + max_new as i64 - 1;
        let cache = KvCache::bytes(self.decoder.layout(), batch, capacity, self.kind);
        let peak = cache + self.transient_bytes(batch, width);
        let as_u64 = |b: u128| u64::try_from(b).unwrap_or(u64::MAX);
        if peak > u128::from(limits.max_bytes) {
            return Err(limit(format!(
                "this generation would take {} MiB on the device (a KV cache of {} MiB for {batch} sequence(s) of {width} + {max_new} tokens, and the prompt's forward pass); this server allows {} MiB a request",
                peak.div_ceil(1 << 20),
                cache.div_ceil(1 << 20),
                limits.max_bytes >> 20
            )));
        }
        let plan = GeneratePlan {
            prompt_tokens: prompts.iter().map(Vec::len).collect(),
            max_new_tokens: max_new,
            cache_bytes: as_u64(cache),
            peak_bytes: as_u64(peak),
        };
        Ok(Resolved {
            prompts,
            width,
            max_new,
            seed: sampling
                .sample
                .map(|_| req.seed.unwrap_or_else(Rng::fresh_seed)),
            sampling,
            stop_ids,
            stop_strings: req.stop_strings.clone(),
            skip_special: req.skip_special_tokens.unwrap_or(true),
            prompt_pad,
            pad,
            plan,
        })
    }

    /// An upper estimate of the largest transient of a forward pass over
    /// `batch × seq` tokens (the prompt's): attention scores and
    /// probabilities in float32, the MLP's activations, a few copies of
    /// the residual stream, and the last position's logits as the
    /// sampling steps copy them.
    fn transient_bytes(&self, batch: i64, seq: i64) -> u128 {
        let d = self.decoder.dims();
        let (b, s) = (batch as u128, seq as u128);
        let elt = self.kind.elt_size_in_bytes() as u128;
        let scores = 2 * b * d.heads as u128 * s * s * 4;
        let mlp = 3 * b * s * d.inner as u128 * elt;
        let hidden = 8 * b * s * d.hidden as u128 * elt;
        let logits = 8 * b * d.vocab as u128 * 4;
        scores + mlp + hidden + logits
    }

    fn sampling(&self, req: &GenerateRequest) -> Result<Sampling> {
        let cfg = self.config;
        let penalty = req.repetition_penalty.unwrap_or(cfg.repetition_penalty);
        if !(penalty.is_finite() && penalty > 0.0) {
            return Err(bad(format!(
                "repetition_penalty must be a positive number, not {penalty}"
            )));
        }
        let do_sample = req.do_sample.unwrap_or(cfg.do_sample);
        if !do_sample {
            let set: Vec<&str> = [
                ("temperature", req.temperature.is_some()),
                ("top_k", req.top_k.is_some()),
                ("top_p", req.top_p.is_some()),
            ]
            .into_iter()
            .filter_map(|(n, set)| set.then_some(n))
            .collect();
            if !set.is_empty() {
                return Err(bad(format!(
                    "{} only apply when sampling: pass do_sample = true (this request is greedy)",
                    set.join(", ")
                )));
            }
            return Ok(Sampling {
                repetition_penalty: penalty,
                sample: None,
            });
        }
        let temperature = req.temperature.unwrap_or(cfg.temperature);
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(bad(format!(
                "temperature must be a positive number, not {temperature}"
            )));
        }
        let top_p = req.top_p.unwrap_or(cfg.top_p);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(bad(format!("top_p must lie in (0, 1], not {top_p}")));
        }
        Ok(Sampling {
            repetition_penalty: penalty,
            sample: Some(Warpers {
                temperature,
                top_k: req.top_k.unwrap_or(cfg.top_k),
                top_p,
            }),
        })
    }

    /// What `request` would take.
    pub fn plan(&self, req: &GenerateRequest, limits: &GenerateLimits) -> Result<GeneratePlan> {
        Ok(self.resolve(req, limits)?.plan)
    }

    /// Generates (see the module's doc).
    pub fn generate(
        &self,
        req: &GenerateRequest,
        limits: &GenerateLimits,
        on_step: &mut dyn FnMut(Step) -> Control,
    ) -> Result<GenerateSummary> {
        let r = self.resolve(req, limits)?;
        tch::no_grad(|| self.run(r, on_step))
    }

    fn run(
        &self,
        r: Resolved,
        on_step: &mut dyn FnMut(Step) -> Control,
    ) -> Result<GenerateSummary> {
        let dev = self.device;
        let batch = r.prompts.len();
        let (b, w, n) = (batch as i64, r.width, r.max_new as i64);
        let total = (w + n) as usize;
        // The whole sequences (prompt, then room for the new ids) and their
        // mask, left-padded: the new ids' columns are visible from the start
        // (only those already written are ever read).
        let mut ids = vec![r.prompt_pad; batch * total];
        let mut mask = vec![true; batch * total];
        let mut pos = vec![1i64; batch * w as usize];
        for (row, p) in r.prompts.iter().enumerate() {
            let off = w as usize - p.len();
            let base = row * total;
            ids[base + off..base + w as usize].copy_from_slice(p);
            mask[base..base + off].fill(false);
            for (j, x) in pos[row * w as usize + off..(row + 1) * w as usize]
                .iter_mut()
                .enumerate()
            {
                *x = j as i64;
            }
        }
        let upload = |t: std::result::Result<Tensor, tch::TchError>, shape: [i64; 2]| {
            t.and_then(|t| t.f_reshape(shape))
                .and_then(|t| t.f_to_device(dev))
                .tx()
        };
        let seq = upload(Tensor::f_from_slice(&ids), [b, w + n])?;
        let keys = upload(Tensor::f_from_slice(&mask), [b, w + n])?;
        let pos = upload(Tensor::f_from_slice(&pos), [b, w])?;
        // What stands for the left padding in what the repetition penalty
        // sees: the row's first prompt id, which it penalizes anyway (the
        // padding itself is not penalized, as transformers 5 does it:
        // `prompt_ignore_length` = the padding's length).
        let firsts: Vec<i64> = r
            .prompts
            .iter()
            .map(|p| p.first().copied().unwrap_or(r.prompt_pad))
            .collect();
        let firsts = upload(Tensor::f_from_slice(&firsts), [b, 1])?;
        let lengths: Vec<i64> = r.prompts.iter().map(|p| p.len() as i64).collect();
        let lengths = upload(Tensor::f_from_slice(&lengths), [b, 1])?;

        let mut cache = KvCache::new(self.decoder.layout(), b, w + n - 1, self.kind, dev)?;
        let mut passes = 0;
        let prompt_ids = seq.f_narrow(1, 0, w).tx()?;
        let mut logits =
            self.decoder
                .decode(&prompt_ids, &pos, &keys.f_narrow(1, 0, w).tx()?, &mut cache)?;
        cache.advance(w);
        passes += 1;

        let mut rng = r.seed.map(Rng::new);
        let tok = self.tokenizer;
        let mut streams: Vec<TextStream> = (0..batch).map(|_| TextStream::default()).collect();
        let mut out: Vec<GeneratedSequence> = r
            .prompts
            .iter()
            .map(|p| GeneratedSequence {
                prompt_ids: p.clone(),
                ids: Vec::with_capacity(r.max_new),
                text: tok.map(|_| String::new()),
                finish: FinishReason::Length,
            })
            .collect();
        let mut done = vec![false; batch];
        let mut done_dev: Option<Tensor> = None;
        let mut steps = 0;
        for t in 0..n {
            let mut seen = seq.f_narrow(1, 0, w + t).tx()?;
            if r.sampling.repetition_penalty != 1.0 {
                seen = seen
                    .f_where_self(&keys.f_narrow(1, 0, w + t).tx()?, &firsts)
                    .tx()?;
            }
            let mut next = r.sampling.next(&logits, &seen, |k| {
                let rng = rng.as_mut().expect("a generator when sampling");
                (0..k).map(|_| rng.uniform()).collect()
            })?;
            if let Some(d) = &done_dev {
                next = next.f_masked_fill(d, r.pad).tx()?;
            }
            let mut slot = seq.f_narrow(1, w + t, 1).tx()?;
            slot.f_copy_(&next.f_unsqueeze(1).tx()?).tx()?;
            let host: Vec<i64> = Vec::try_from(next.f_to_device(Device::Cpu).tx()?)
                .map_err(|e| model_error(format!("reading the new ids: {e}")))?;
            let mut tokens = Vec::with_capacity(batch);
            let mut newly_done = false;
            for row in 0..batch {
                if done[row] {
                    tokens.push(StepToken {
                        id: None,
                        text: String::new(),
                        finish: None,
                    });
                    continue;
                }
                let id = host[row];
                let seqn = &mut out[row];
                seqn.ids.push(id);
                let mut text = String::new();
                let mut finish = None;
                if let Some(tok) = tok {
                    text = streams[row].push(tok, id, r.skip_special)?;
                    if !text.is_empty()
                        && stop_string(streams[row].text(), text.len(), &r.stop_strings)
                    {
                        finish = Some(FinishReason::StopString);
                    }
                }
                if r.stop_ids.contains(&id) {
                    finish = Some(FinishReason::StopId);
                } else if finish.is_none() && seqn.ids.len() == r.max_new {
                    finish = Some(FinishReason::Length);
                }
                if let Some(f) = finish {
                    if let Some(tok) = tok {
                        text.push_str(&streams[row].finish(tok, r.skip_special)?);
                    }
                    seqn.finish = f;
                    done[row] = true;
                    newly_done = true;
                }
                if let Some(all) = &mut seqn.text {
                    all.push_str(&text);
                }
                tokens.push(StepToken {
                    id: Some(id),
                    text,
                    finish,
                });
            }
            steps += 1;
            let control = on_step(Step {
                index: t as usize,
                tokens,
            });
            if control == Control::Stop {
                for (row, d) in done.iter().enumerate() {
                    if !d {
                        out[row].finish = FinishReason::Cancelled;
                    }
                }
                break;
            }
            if done.iter().all(|&d| d) || t + 1 == n {
                break;
            }
            if newly_done {
                done_dev = Some(upload_done(&done, dev)?);
            }
            let step_pos = lengths.f_add_scalar(t).tx()?;
            logits = self.decoder.decode(
                &seq.f_narrow(1, w + t, 1).tx()?,
                &step_pos,
                &keys.f_narrow(1, 0, w + t + 1).tx()?,
                &mut cache,
            )?;
            cache.advance(1);
            passes += 1;
        }
        Ok(GenerateSummary {
            sequences: out,
            steps,
            forward_passes: passes,
            cache_bytes: r.plan.cache_bytes,
            seed: r.seed,
        })
    }
}

fn upload_done(done: &[bool], dev: Device) -> Result<Tensor> {
    Tensor::f_from_slice(done)
        .and_then(|t| t.f_to_device(dev))
        .tx()
}

/// Whether `text`, whose last `piece` bytes are new, now holds one of
/// `stops` that it did not hold before (one that ends in the new bytes).
fn stop_string(text: &str, piece: usize, stops: &[String]) -> bool {
    let old = text.len() - piece;
    stops.iter().any(|s| {
        let mut from = old.saturating_sub(s.len() - 1);
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        text[from..].contains(s.as_str())
    })
}
