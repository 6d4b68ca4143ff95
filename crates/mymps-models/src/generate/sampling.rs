//! Choosing the next token from the logits, as transformers' logits
//! processors do, in the order `generate` applies them: the repetition
//! penalty, then (when sampling) temperature, top-k and top-p, then a
//! draw from the softmax; greedy takes the arg-max. Sampling draws from
//! the request's own generator (one uniform number per sequence and step,
//! made on the host), never from libtorch's global one.

use mymps_core::Result;
use tch::{Kind, Tensor};

use crate::hf::Tx;

/// How the next token is chosen, resolved from a request and the model's
/// defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sampling {
    /// `RepetitionPenaltyLogitsProcessor`'s penalty (1: none).
    pub repetition_penalty: f64,
    /// `None`: greedy.
    pub sample: Option<Warpers>,
}

/// transformers' logits warpers, applied when sampling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Warpers {
    /// `TemperatureLogitsWarper` (1: none).
    pub temperature: f64,
    /// `TopKLogitsWarper` (0: none).
    pub top_k: usize,
    /// `TopPLogitsWarper` (1: none).
    pub top_p: f64,
}

/// `RepetitionPenaltyLogitsProcessor`: the score of every token in
/// `seen` `[batch, n]` (the whole sequence so far, prompt included; the
/// caller puts a prompt id in place of left padding, which transformers 5
/// leaves out) is divided by `penalty` when positive, multiplied when
/// negative.
fn repetition_penalty(scores: &Tensor, seen: &Tensor, penalty: f64) -> Result<Tensor> {
    let s = scores.f_gather(1, seen, false).tx()?;
    let lt = s.f_lt(0.0).tx()?;
    let s = s
        .f_mul_scalar(penalty)
        .and_then(|m| m.f_where_self(&lt, &s.f_div_scalar(penalty)?))
        .tx()?;
    scores.f_scatter(1, seen, &s).tx()
}

/// `TopKLogitsWarper` (min_tokens_to_keep 1): scores below the k-th
/// largest become -inf.
fn top_k(scores: &Tensor, k: usize) -> Result<Tensor> {
    let vocab = scores.size()[1];
    let k = (k as i64).clamp(1, vocab);
    let (values, _) = scores.f_topk(k, -1, true, true).tx()?;
    let kth = values.f_narrow(1, k - 1, 1).tx()?;
    let remove = scores.f_lt_tensor(&kth).tx()?;
    scores.f_masked_fill(&remove, f64::NEG_INFINITY).tx()
}

/// `TopPLogitsWarper` (min_tokens_to_keep 1): in ascending order, the
/// tokens whose cumulative probability is at most `1 - p` become -inf;
/// the most likely token always stays.
fn top_p(scores: &Tensor, p: f64) -> Result<Tensor> {
    let vocab = scores.size()[1];
    let (sorted, order) = scores.f_sort(-1, false).tx()?;
    let cum = sorted
        .f_softmax(-1, Kind::Float)
        .and_then(|s| s.f_cumsum(-1, Kind::Float))
        .tx()?;
    let not_last = Tensor::f_arange(vocab, (Kind::Int64, scores.device()))
        .and_then(|a| a.f_lt(vocab - 1))
        .tx()?;
    let remove = cum
        .f_le(1.0 - p)
        .and_then(|r| r.f_logical_and(&not_last))
        .tx()?;
    let remove = remove.f_scatter(1, &order, &remove).tx()?;
    scores.f_masked_fill(&remove, f64::NEG_INFINITY).tx()
}

impl Sampling {
    /// The next token of each row of `logits` `[batch, vocab]` (float32),
    /// `[batch]` int64 on the logits' device. `seen` `[batch, n]` is the
    /// sequence so far; `uniform` gives one number in `[0, 1)` per row
    /// when sampling.
    pub fn next(
        &self,
        logits: &Tensor,
        seen: &Tensor,
        uniform: impl FnOnce(usize) -> Vec<f32>,
    ) -> Result<Tensor> {
        let mut scores = logits.shallow_clone();
        if self.repetition_penalty != 1.0 {
            scores = repetition_penalty(&scores, seen, self.repetition_penalty)?;
        }
        let Some(w) = self.sample else {
            return scores.f_argmax(-1, false).tx();
        };
        if w.temperature != 1.0 {
            scores = scores.f_div_scalar(w.temperature).tx()?;
        }
        if w.top_k != 0 {
            scores = top_k(&scores, w.top_k)?;
        }
        if w.top_p < 1.0 {
            scores = top_p(&scores, w.top_p)?;
        }
        let batch = scores.size()[0];
        let cdf = scores
            .f_softmax(-1, Kind::Float)
            .and_then(|p| p.f_cumsum(-1, Kind::Float))
            .tx()?;
        let vocab = cdf.size()[1];
        let total = cdf
            .f_narrow(1, vocab - 1, 1)
            .and_then(|t| t.f_contiguous())
            .tx()?;
        let u = Tensor::f_from_slice(&uniform(batch as usize))
            .and_then(|u| u.f_to_device(cdf.device()))
            .and_then(|u| u.f_reshape([batch, 1]))
            .tx()?;
        // The token whose interval of the cdf holds u·total: tokens of
        // probability 0 have empty intervals and are never drawn; the
        // last token of non-zero probability bounds the draw against
        // rounding at the top.
        let v = u.f_mul(&total).tx()?;
        let idx = v
            .f_searchsorted(&cdf, false, true, "right", None::<Tensor>)
            .tx()?;
        let last = total
            .f_searchsorted(&cdf, false, false, "left", None::<Tensor>)
            .tx()?;
        idx.f_minimum(&last).and_then(|i| i.f_reshape([batch])).tx()
    }
}

/// A small, fast generator (SplitMix64 seeding xoshiro256**), one per
/// request: the same seed gives the same numbers on every machine.
#[derive(Debug, Clone)]
pub(crate) struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// Seeded with `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// A fresh seed (the process's random hasher keys and the clock).
    pub fn fresh_seed() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// A number in `[0, 1)` with 24 random bits (exact in float32).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v).reshape([1, v.len() as i64])
    }

    fn vals(t: &Tensor) -> Vec<f32> {
        Vec::try_from(t.reshape([-1])).unwrap()
    }

    const INF: f32 = f32::NEG_INFINITY;

    #[test]
    fn the_processors_are_transformers() {
        // RepetitionPenaltyLogitsProcessor: seen ids (repeats too) divided
        // when positive, multiplied when negative.
        let seen = Tensor::from_slice(&[0i64, 1, 1]).reshape([1, 3]);
        let got = repetition_penalty(&t(&[-1.0, 2.0, 3.0]), &seen, 2.0).unwrap();
        assert_eq!(vals(&got), [-2.0, 1.0, 3.0]);
        // TopKLogitsWarper: below the k-th largest, -inf (ties kept).
        let got = top_k(&t(&[1.0, 4.0, 3.0, 3.0, 2.0]), 2).unwrap();
        assert_eq!(vals(&got), [INF, 4.0, 3.0, 3.0, INF]);
        assert_eq!(vals(&top_k(&t(&[1.0, 2.0]), 9).unwrap()), [1.0, 2.0]);
        // TopPLogitsWarper: softmax([1, 2, 3, 4]) = [.032, .087, .237,
        // .644]; ascending cumulative [.032, .119, .356, 1]; <= 1 - 0.8
        // goes.
        let s = t(&[3.0, 1.0, 4.0, 2.0]);
        assert_eq!(vals(&top_p(&s, 0.8).unwrap()), [3.0, INF, 4.0, INF]);
        assert_eq!(vals(&top_p(&s, 0.5).unwrap()), [INF, INF, 4.0, INF]);
        // The most likely token stays, however small p.
        assert_eq!(vals(&top_p(&s, 1e-9).unwrap()), [INF, INF, 4.0, INF]);
    }

    #[test]
    fn draws_follow_the_distribution_and_skip_what_was_removed() {
        let logits = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 3.0])
            .reshape([1, 4])
            .repeat([4000, 1]);
        let seen = Tensor::zeros([4000, 1], (Kind::Int64, Device::Cpu));
        let sample = |w: Warpers, seed| {
            let s = Sampling {
                repetition_penalty: 1.0,
                sample: Some(w),
            };
            let mut rng = Rng::new(seed);
            let ids = s
                .next(&logits, &seen, |n| (0..n).map(|_| rng.uniform()).collect())
                .unwrap();
            let ids: Vec<i64> = Vec::try_from(ids).unwrap();
            let mut counts = [0usize; 4];
            for i in ids {
                counts[i as usize] += 1;
            }
            counts
        };
        let plain = Warpers {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        };
        // softmax([0, 1, 2, 3]) = [.032, .087, .237, .644]: within 4 sigma.
        let c = sample(plain, 1);
        for (n, p) in c.iter().zip([0.0321f64, 0.0871, 0.2369, 0.6439]) {
            let sd = (4000.0 * p * (1.0 - p)).sqrt();
            assert!((*n as f64 - 4000.0 * p).abs() < 4.0 * sd, "{c:?}");
        }
        assert_eq!(sample(plain, 1), c, "the same seed draws the same");
        assert_ne!(sample(plain, 2), c);
        // top_k 2: only the two most likely are ever drawn.
        let c = sample(Warpers { top_k: 2, ..plain }, 3);
        assert_eq!((c[0], c[1]), (0, 0), "{c:?}");
        // A tiny temperature is greedy.
        let c = sample(
            Warpers {
                temperature: 1e-4,
                ..plain
            },
            4,
        );
        assert_eq!(c, [0, 0, 0, 4000]);
    }

    #[test]
    fn the_generator_is_seeded_and_uniform_lies_in_the_unit_interval() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        assert_eq!(xs, (0..8).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(
            xs,
            (0..8).map(|_| Rng::new(43).next_u64()).collect::<Vec<_>>()
        );
        let mut r = Rng::new(0);
        let us: Vec<f32> = (0..10000).map(|_| r.uniform()).collect();
        assert!(us.iter().all(|&u| (0.0..1.0).contains(&u)));
        let mean = us.iter().sum::<f32>() / us.len() as f32;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }
}
