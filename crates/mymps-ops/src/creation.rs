//! New tensors shaped like an input, on the input's device: constants and
//! random draws.

use tch::Tensor;

use crate::Outputs::One;
use crate::util::{Out, bad, dtype_arg, one};
use crate::{Args, Param, op, torch_scalar};

const INPUT: Param = Param::tensor("input");
const DTYPE: Param = Param::dtype("dtype").optional();

/// `like(input)` converted to `dtype` when one is given.
fn with_dtype(a: &Args<Tensor>, like: fn(&Tensor) -> Result<Tensor, tch::TchError>) -> Out {
    let x = a.tensor("input")?;
    let t = like(x)?;
    match dtype_arg(a)? {
        Some(k) if k != t.kind() => one(t.f_to_kind(k)?),
        _ => one(t),
    }
}

/// A tch constructor from a shape and options (`Tensor::f_rand`, ...).
type Draw = fn(&[i64], (tch::Kind, tch::Device)) -> Result<Tensor, tch::TchError>;

/// Random `like` ops draw in the requested floating dtype directly.
fn random(a: &Args<Tensor>, draw: Draw) -> Out {
    let x = a.tensor("input")?;
    let kind = dtype_arg(a)?.unwrap_or(x.kind());
    if !crate::util::is_floating(kind) && !crate::util::is_complex(kind) {
        return Err(bad(
            a,
            format!("not implemented for integer or bool dtype {kind:?}; pass a floating dtype"),
        ));
    }
    one(draw(&x.size(), (kind, x.device()))?)
}

op!("zeros_like", "creation", "zeros of input's shape, dtype and device (torch.zeros_like)",
    [INPUT, DTYPE] -> One, |a| with_dtype(a, Tensor::f_zeros_like));
op!("ones_like", "creation", "ones of input's shape, dtype and device (torch.ones_like)",
    [INPUT, DTYPE] -> One, |a| with_dtype(a, Tensor::f_ones_like));

op!("full_like", "creation", "fill_value in input's shape, dtype and device (torch.full_like)",
[INPUT, Param::scalar("fill_value"), DTYPE] -> One,
|a| {
    let x = a.tensor("input")?;
    let kind = dtype_arg(a)?.unwrap_or(x.kind());
    one(Tensor::f_full(x.size(), torch_scalar(a.scalar("fill_value")?), (kind, x.device()))?)
});

op!("rand_like", "creation", "uniform random numbers in [0, 1) of input's shape (torch.rand_like)",
    [INPUT, DTYPE] -> One, |a| random(a, |s, o| Tensor::f_rand(s, o)));
op!("randn_like", "creation", "standard normal random numbers of input's shape (torch.randn_like)",
    [INPUT, DTYPE] -> One, |a| random(a, |s, o| Tensor::f_randn(s, o)));

op!("randint_like", "creation", "uniform random integers in [low, high) of input's shape and dtype (torch.randint_like)",
[INPUT, Param::int("low").or_int(0), Param::int("high"), DTYPE] -> One,
|a| {
    let x = a.tensor("input")?;
    let t = x.f_randint_like_low_dtype(a.int("low")?, a.int("high")?)?;
    match dtype_arg(a)? {
        Some(k) if k != t.kind() => one(t.f_to_kind(k)?),
        _ => one(t),
    }
});

op!("bernoulli", "creation", "draws 0 or 1 with probability input (torch.bernoulli)",
    [INPUT] -> One,
    |a| one(a.tensor("input")?.f_bernoulli()?));

op!("multinomial", "creation", "indices drawn from the rows of input as weights; int64 (torch.multinomial)",
    [INPUT, Param::int("num_samples"), Param::bool("replacement").or_bool(false)] -> One,
    |a| one(a.tensor("input")?.f_multinomial(a.int("num_samples")?, a.bool("replacement")?)?));

op!("normal", "creation", "normal random numbers with per-element mean and std (torch.normal)",
[Param::tensor("mean"), Param::tensor("std")] -> One,
|a| {
    let (mean, std) = (a.tensor("mean")?, a.tensor("std")?);
    // Broadcast shape and promoted dtype of mean and std.
    let like = mean.f_add(std)?;
    let z = Tensor::f_randn(like.size(), (like.kind(), like.device()))?;
    one(mean.f_add(&std.f_mul(&z)?)?)
});
