//! `torch.nn.functional`: convolutions, pooling, normalization, linear
//! layers, embedding, attention, resizing and padding.

use mymps_core::ParamKind;
use tch::Tensor;

use crate::Outputs::{One, Tuple};
use crate::util::{Out, any, bad, int_min, one, tuple};
use crate::{Args, Param, op};

const INPUT: Param = Param::tensor("input");
const WEIGHT: Param = Param::tensor("weight");
const BIAS: Param = Param::tensor("bias").optional();
const STRIDE: Param = Param::ints("stride").or_ints(&[1]);
const DILATION: Param = Param::ints("dilation").or_ints(&[1]);
const GROUPS: Param = Param::int("groups").or_int(1);
const PADDING_OR_MODE: Param = Param::new("padding", ParamKind::IntListOrStr).or_ints(&[0]);

/// `conv1d` / `conv2d` / `conv3d` over `n` spatial dimensions.
fn conv(a: &Args<Tensor>, n: usize) -> Out {
    let x = a.tensor("input")?;
    let w = a.tensor("weight")?;
    let b = a.opt_tensor("bias")?;
    let stride = a.int_list_n("stride", n)?;
    let dilation = a.int_list_n("dilation", n)?;
    let groups = a.int("groups")?;
    match a.int_list_or_str("padding")? {
        Ok(_) => {
            let p = a.int_list_n("padding", n)?;
            one(match n {
                1 => x.f_conv1d(w, b, stride, p, dilation, groups)?,
                2 => x.f_conv2d(w, b, stride, p, dilation, groups)?,
                _ => x.f_conv3d(w, b, stride, p, dilation, groups)?,
            })
        }
        Err(mode @ ("same" | "valid")) => one(match n {
            1 => x.f_conv1d_padding(w, b, stride, mode, dilation, groups)?,
            2 => x.f_conv2d_padding(w, b, stride, mode, dilation, groups)?,
            _ => x.f_conv3d_padding(w, b, stride, mode, dilation, groups)?,
        }),
        Err(other) => Err(bad(
            a,
            format!("padding must be an int, a list of ints, \"same\" or \"valid\", not {other:?}"),
        )),
    }
}

op!("conv1d", "nn", "1-D convolution over (N, C, L) (torch.nn.functional.conv1d)",
    [INPUT, WEIGHT, BIAS, STRIDE, PADDING_OR_MODE, DILATION, GROUPS] -> One, |a| conv(a, 1));
op!("conv2d", "nn", "2-D convolution over (N, C, H, W) (torch.nn.functional.conv2d)",
    [INPUT, WEIGHT, BIAS, STRIDE, PADDING_OR_MODE, DILATION, GROUPS] -> One, |a| conv(a, 2));
op!("conv3d", "nn", "3-D convolution over (N, C, D, H, W) (torch.nn.functional.conv3d)",
    [INPUT, WEIGHT, BIAS, STRIDE, PADDING_OR_MODE, DILATION, GROUPS] -> One, |a| conv(a, 3));

fn conv_transpose(a: &Args<Tensor>, n: usize) -> Out {
    let x = a.tensor("input")?;
    let w = a.tensor("weight")?;
    let b = a.opt_tensor("bias")?;
    let stride = a.int_list_n("stride", n)?;
    let padding = a.int_list_n("padding", n)?;
    let out_pad = a.int_list_n("output_padding", n)?;
    let dilation = a.int_list_n("dilation", n)?;
    let groups = a.int("groups")?;
    one(match n {
        1 => x.f_conv_transpose1d(w, b, stride, padding, out_pad, groups, dilation)?,
        2 => x.f_conv_transpose2d(w, b, stride, padding, out_pad, groups, dilation)?,
        _ => x.f_conv_transpose3d(w, b, stride, padding, out_pad, groups, dilation)?,
    })
}

const PADDING: Param = Param::ints("padding").or_ints(&[0]);
const OUTPUT_PADDING: Param = Param::ints("output_padding").or_ints(&[0]);

op!("conv_transpose1d", "nn", "1-D transposed convolution (torch.nn.functional.conv_transpose1d)",
    [INPUT, WEIGHT, BIAS, STRIDE, PADDING, OUTPUT_PADDING, GROUPS, DILATION] -> One, |a| conv_transpose(a, 1));
op!("conv_transpose2d", "nn", "2-D transposed convolution (torch.nn.functional.conv_transpose2d)",
    [INPUT, WEIGHT, BIAS, STRIDE, PADDING, OUTPUT_PADDING, GROUPS, DILATION] -> One, |a| conv_transpose(a, 2));
op!("conv_transpose3d", "nn", "3-D transposed convolution (torch.nn.functional.conv_transpose3d)",
    [INPUT, WEIGHT, BIAS, STRIDE, PADDING, OUTPUT_PADDING, GROUPS, DILATION] -> One, |a| conv_transpose(a, 3));

const KERNEL: Param = Param::ints("kernel_size");
const POOL_STRIDE: Param = Param::ints("stride").optional();
const CEIL: Param = Param::bool("ceil_mode").or_bool(false);

/// The pooling stride: `None` (or an empty list) means `kernel_size`.
fn pool_stride(a: &Args<Tensor>, n: usize) -> crate::KernelResult<Vec<i64>> {
    match a.opt_int_list("stride")? {
        Some(s) if !s.is_empty() => Ok(a.int_list_n("stride", n)?),
        _ => Ok(a.int_list_n("kernel_size", n)?),
    }
}

/// Whether max_pool1d must run through its with-indices variant, and an
/// error for a window longer than the padded input.
///
/// libtorch's max_pool1d (without indices) computes its output length in
/// 32 bits and visits every kernel position of every output: a window
/// longer than the padded input gave garbage (kernel_size 2^32) or ran for
/// hours (2^40), and one much longer than the input, within padding, ran
/// for as long (2^41 + 1 with padding 2^40). The first is refused; the
/// second runs as max_pool1d_with_indices, which gives the same values
/// (NaN included), checks its arguments' range and only visits the input.
fn max_pool1d_via_indices(
    a: &Args<Tensor>,
    x: &Tensor,
    k: i64,
    p: i64,
    d: i64,
) -> crate::KernelResult<bool> {
    let Some(&len) = x.size().last() else {
        return Ok(false);
    };
    if k < 1 || d < 1 || p < 0 {
        // libtorch refuses these itself.
        return Ok(false);
    }
    let window = i128::from(d) * (i128::from(k) - 1) + 1;
    let padded = i128::from(len) + 2 * i128::from(p);
    if window > padded {
        return Err(bad(
            a,
            format!(
                "the pooling window (dilation × (kernel_size - 1) + 1 = {window}) is longer than the padded input ({padded})"
            ),
        ));
    }
    Ok(k > len)
}

fn max_pool(a: &Args<Tensor>, n: usize) -> Out {
    let x = a.tensor("input")?;
    let k = a.int_list_n("kernel_size", n)?;
    let s = pool_stride(a, n)?;
    let p = a.int_list_n("padding", n)?;
    let d = a.int_list_n("dilation", n)?;
    let c = a.bool("ceil_mode")?;
    let indices = a.bool("return_indices")?;
    if indices || (n == 1 && max_pool1d_via_indices(a, x, k[0], p[0], d[0])?) {
        let (out, idx) = match n {
            1 => x.f_max_pool1d_with_indices(k, s, p, d, c)?,
            2 => x.f_max_pool2d_with_indices(k, s, p, d, c)?,
            _ => x.f_max_pool3d_with_indices(k, s, p, d, c)?,
        };
        return if indices {
            tuple(vec![out, idx])
        } else {
            one(out)
        };
    }
    one(match n {
        1 => x.f_max_pool1d(k, s, p, d, c)?,
        2 => x.f_max_pool2d(k, s, p, d, c)?,
        _ => x.f_max_pool3d(k, s, p, d, c)?,
    })
}

const RETURN_INDICES: Param = Param::bool("return_indices").or_bool(false);

op!("max_pool1d", "nn", "1-D max pooling; stride None: kernel_size; with return_indices (output, indices) (torch.nn.functional.max_pool1d)",
    [INPUT, KERNEL, POOL_STRIDE, PADDING, DILATION, CEIL, RETURN_INDICES] -> Tuple(&["output", "indices"]), |a| max_pool(a, 1));
op!("max_pool2d", "nn", "2-D max pooling; stride None: kernel_size; with return_indices (output, indices) (torch.nn.functional.max_pool2d)",
    [INPUT, KERNEL, POOL_STRIDE, PADDING, DILATION, CEIL, RETURN_INDICES] -> Tuple(&["output", "indices"]), |a| max_pool(a, 2));
op!("max_pool3d", "nn", "3-D max pooling; stride None: kernel_size; with return_indices (output, indices) (torch.nn.functional.max_pool3d)",
    [INPUT, KERNEL, POOL_STRIDE, PADDING, DILATION, CEIL, RETURN_INDICES] -> Tuple(&["output", "indices"]), |a| max_pool(a, 3));

fn avg_pool(a: &Args<Tensor>, n: usize) -> Out {
    let x = a.tensor("input")?;
    let k = a.int_list_n("kernel_size", n)?;
    let s = pool_stride(a, n)?;
    let p = a.int_list_n("padding", n)?;
    let c = a.bool("ceil_mode")?;
    let inc = a.bool("count_include_pad")?;
    let pool = |divisor: Option<i64>| match n {
        1 => x.f_avg_pool1d(&k, &s, &p, c, inc),
        2 => x.f_avg_pool2d(&k, &s, &p, c, inc, divisor),
        _ => x.f_avg_pool3d(&k, &s, &p, c, inc, divisor),
    };
    if n == 1 {
        return one(pool(None)?);
    }
    let divisor = a.opt_int("divisor_override")?;
    if let (Some(-1), Some(min)) = (divisor, int_min(x.kind())) {
        // An integer window sum divided by -1: libtorch's CPU kernel traps
        // (SIGFPE) on MIN / -1. The same result as the negated sum, with
        // MIN refused as an overflow (on every device, like `div`).
        let sum = pool(Some(1))?;
        if any(&sum.f_eq(min)?)? {
            return Err(bad(
                a,
                format!(
                    "integer overflow: a window sums to {min}, and {min} / -1 (divisor_override=-1) does not fit"
                ),
            ));
        }
        return one(sum.f_neg()?);
    }
    one(pool(divisor)?)
}

const INCLUDE_PAD: Param = Param::bool("count_include_pad").or_bool(true);
const DIVISOR: Param = Param::int("divisor_override").optional();

op!("avg_pool1d", "nn", "1-D average pooling; stride None: kernel_size (torch.nn.functional.avg_pool1d)",
    [INPUT, KERNEL, POOL_STRIDE, PADDING, CEIL, INCLUDE_PAD] -> One, |a| avg_pool(a, 1));
op!("avg_pool2d", "nn", "2-D average pooling; stride None: kernel_size; an integer window sum of MIN over divisor_override -1 is an error (torch.nn.functional.avg_pool2d)",
    [INPUT, KERNEL, POOL_STRIDE, PADDING, CEIL, INCLUDE_PAD, DIVISOR] -> One, |a| avg_pool(a, 2));
op!("avg_pool3d", "nn", "3-D average pooling; stride None: kernel_size; an integer window sum of MIN over divisor_override -1 is an error (torch.nn.functional.avg_pool3d)",
    [INPUT, KERNEL, POOL_STRIDE, PADDING, CEIL, INCLUDE_PAD, DIVISOR] -> One, |a| avg_pool(a, 3));

fn adaptive(a: &Args<Tensor>, n: usize, max: bool) -> Out {
    let x = a.tensor("input")?;
    let size = a.int_list_n("output_size", n)?;
    one(match (n, max) {
        (1, false) => x.f_adaptive_avg_pool1d(size)?,
        (2, false) => x.f_adaptive_avg_pool2d(size)?,
        (_, false) => x.f_adaptive_avg_pool3d(size)?,
        (_, true) => {
            let (out, idx) = match n {
                1 => x.f_adaptive_max_pool1d(size)?,
                2 => x.f_adaptive_max_pool2d(size)?,
                _ => x.f_adaptive_max_pool3d(size)?,
            };
            if a.bool("return_indices")? {
                return tuple(vec![out, idx]);
            }
            out
        }
    })
}

const OUTPUT_SIZE: Param = Param::ints("output_size");

op!("adaptive_avg_pool1d", "nn", "1-D average pooling to output_size (torch.nn.functional.adaptive_avg_pool1d)",
    [INPUT, OUTPUT_SIZE] -> One, |a| adaptive(a, 1, false));
op!("adaptive_avg_pool2d", "nn", "2-D average pooling to output_size (torch.nn.functional.adaptive_avg_pool2d)",
    [INPUT, OUTPUT_SIZE] -> One, |a| adaptive(a, 2, false));
op!("adaptive_avg_pool3d", "nn", "3-D average pooling to output_size (torch.nn.functional.adaptive_avg_pool3d)",
    [INPUT, OUTPUT_SIZE] -> One, |a| adaptive(a, 3, false));
op!("adaptive_max_pool1d", "nn", "1-D max pooling to output_size; with return_indices (output, indices) (torch.nn.functional.adaptive_max_pool1d)",
    [INPUT, OUTPUT_SIZE, RETURN_INDICES] -> Tuple(&["output", "indices"]), |a| adaptive(a, 1, true));
op!("adaptive_max_pool2d", "nn", "2-D max pooling to output_size; with return_indices (output, indices) (torch.nn.functional.adaptive_max_pool2d)",
    [INPUT, OUTPUT_SIZE, RETURN_INDICES] -> Tuple(&["output", "indices"]), |a| adaptive(a, 2, true));
op!("adaptive_max_pool3d", "nn", "3-D max pooling to output_size; with return_indices (output, indices) (torch.nn.functional.adaptive_max_pool3d)",
    [INPUT, OUTPUT_SIZE, RETURN_INDICES] -> Tuple(&["output", "indices"]), |a| adaptive(a, 3, true));

const EPS: Param = Param::float("eps").or_float(1e-5);

op!("layer_norm", "nn", "normalizes over the last dimensions normalized_shape (torch.nn.functional.layer_norm)",
    [INPUT, Param::ints("normalized_shape"), Param::tensor("weight").optional(), BIAS, EPS] -> One,
    |a| one(a.tensor("input")?.f_layer_norm(a.int_list("normalized_shape")?, a.opt_tensor("weight")?, a.opt_tensor("bias")?, a.float("eps")?, true)?));

op!("rms_norm", "nn", "root-mean-square normalization over normalized_shape (torch.nn.functional.rms_norm)",
    [INPUT, Param::ints("normalized_shape"), Param::tensor("weight").optional(), Param::float("eps").optional()] -> One,
    |a| one(a.tensor("input")?.f_rms_norm(a.int_list("normalized_shape")?, a.opt_tensor("weight")?, a.opt_float("eps")?)?));

op!("group_norm", "nn", "normalizes over groups of channels (torch.nn.functional.group_norm)",
    [INPUT, Param::int("num_groups"), Param::tensor("weight").optional(), BIAS, EPS] -> One,
|a| {
    let x = a.tensor("input")?;
    let mut groups = a.int("num_groups")?;
    if groups > 1 && x.dim() >= 2 && x.size()[1] == 0 {
        // No channels: any number of groups divides them, and libtorch
        // keeps two statistics per sample and group (2^30 groups: 8 GiB and
        // minutes, for an empty answer). One group gives the same answer.
        groups = 1;
    }
    one(x.f_group_norm(groups, a.opt_tensor("weight")?, a.opt_tensor("bias")?, a.float("eps")?, true)?)
});

/// A running statistic, copied: torch updates it in place when training,
/// and inputs are read-only.
fn running(a: &Args<Tensor>, name: &str) -> crate::KernelResult<Option<Tensor>> {
    Ok(a.opt_tensor(name)?.map(Tensor::f_detach_copy).transpose()?)
}

op!("batch_norm", "nn", "normalizes each channel with running or batch statistics (torch.nn.functional.batch_norm)",
[
    INPUT,
    Param::tensor("running_mean").optional(),
    Param::tensor("running_var").optional(),
    Param::tensor("weight").optional(),
    BIAS,
    Param::bool("training").or_bool(false),
    Param::float("momentum").or_float(0.1),
    EPS,
] -> One,
|a| {
    let (rm, rv) = (running(a, "running_mean")?, running(a, "running_var")?);
    one(a.tensor("input")?.f_batch_norm(
        a.opt_tensor("weight")?, a.opt_tensor("bias")?, rm.as_ref(), rv.as_ref(),
        a.bool("training")?, a.float("momentum")?, a.float("eps")?, true)?)
});

op!("instance_norm", "nn", "normalizes each channel of each sample (torch.nn.functional.instance_norm)",
[
    INPUT,
    Param::tensor("running_mean").optional(),
    Param::tensor("running_var").optional(),
    Param::tensor("weight").optional(),
    BIAS,
    Param::bool("use_input_stats").or_bool(true),
    Param::float("momentum").or_float(0.1),
    EPS,
] -> One,
|a| {
    let (rm, rv) = (running(a, "running_mean")?, running(a, "running_var")?);
    one(a.tensor("input")?.f_instance_norm(
        a.opt_tensor("weight")?, a.opt_tensor("bias")?, rm.as_ref(), rv.as_ref(),
        a.bool("use_input_stats")?, a.float("momentum")?, a.float("eps")?, true)?)
});

op!("normalize", "nn", "input / max(‖input‖_p along dim, eps) (torch.nn.functional.normalize)",
[INPUT, Param::float("p").or_float(2.0), Param::int("dim").or_int(1), Param::float("eps").or_float(1e-12)] -> One,
|a| {
    let x = a.tensor("input")?;
    let norm = x.f_norm_scalaropt_dim(a.float("p")?, [a.int("dim")?], true)?;
    let denom = norm.f_clamp_min(a.float("eps")?)?.f_expand_as(x)?;
    one(x.f_div(&denom)?)
});

op!("linear", "nn", "input @ weightᵀ + bias (torch.nn.functional.linear)",
    [INPUT, WEIGHT, BIAS] -> One,
    |a| one(a.tensor("input")?.f_linear(a.tensor("weight")?, a.opt_tensor("bias")?)?));

op!("bilinear", "nn", "x1ᵀ A x2 + b for each output feature (torch.nn.functional.bilinear)",
    [Param::tensor("input1"), Param::tensor("input2"), WEIGHT, BIAS] -> One,
    |a| one(Tensor::f_bilinear(a.tensor("input1")?, a.tensor("input2")?, a.tensor("weight")?, a.opt_tensor("bias")?)?));

op!("embedding", "nn", "rows of weight at the int indices input; max_norm renormalizes the rows used, on a copy (torch.nn.functional.embedding)",
[
    INPUT,
    WEIGHT,
    Param::int("padding_idx").optional(),
    Param::float("max_norm").optional(),
    Param::float("norm_type").or_float(2.0),
    Param::bool("scale_grad_by_freq").or_bool(false),
    Param::bool("sparse").or_bool(false),
] -> One,
|a| {
    // padding_idx, scale_grad_by_freq and sparse only change gradients;
    // padding_idx is checked like torch does.
    let w = a.tensor("weight")?;
    let idx = a.tensor("input")?;
    crate::util::check_index(a, "index", idx, w.size().first().copied().unwrap_or(0), false)?;
    if let Some(p) = a.opt_int("padding_idx")? {
        let n = w.size().first().copied().unwrap_or(0);
        if p >= n || p < -n {
            return Err(bad(a, "padding_idx must be within num_embeddings"));
        }
    }
    match a.opt_float("max_norm")? {
        // torch renormalizes weight in place; mymps inputs are
        // read-only, so a renormalized copy is used.
        Some(m) => {
            let w = w.f_embedding_renorm(idx, m, a.float("norm_type")?)?;
            one(Tensor::f_embedding(&w, idx, -1, false, false)?)
        }
        None => one(Tensor::f_embedding(w, idx, -1, false, false)?),
    }
});

op!("one_hot", "nn", "one-hot encoding of int64 class indices; num_classes −1: max + 1 (torch.nn.functional.one_hot)",
[Param::tensor("tensor"), Param::int("num_classes").or_int(-1)] -> One,
|a| {
    let (t, n) = (a.tensor("tensor")?, a.int("num_classes")?);
    crate::util::check_index(a, "class", t, if n < 0 { i64::MAX } else { n }, false)?;
    one(t.f_one_hot(n)?)
});

op!("scaled_dot_product_attention", "nn", "softmax(Q Kᵀ × scale + mask) V (torch.nn.functional.scaled_dot_product_attention)",
[
    Param::tensor("query"),
    Param::tensor("key"),
    Param::tensor("value"),
    Param::tensor("attn_mask").optional(),
    Param::float("dropout_p").or_float(0.0),
    Param::bool("is_causal").or_bool(false),
    Param::float("scale").optional(),
    Param::bool("enable_gqa").or_bool(false),
] -> One,
|a| {
    let (q, k, v) = (a.tensor("query")?, a.tensor("key")?, a.tensor("value")?);
    let gqa = a.bool("enable_gqa")?;
    // libtorch divides the query's heads by the key's and the value's
    // (dimension -3) on the host, on every device: none is SIGFPE.
    let heads = |t: &Tensor| t.dim().checked_sub(3).map(|i| t.size()[i]);
    if gqa && (heads(k) == Some(0) || heads(v) == Some(0)) {
        return Err(bad(a, format!(
            "enable_gqa: key and value need at least one head (dimension -3), got key {:?} and value {:?}",
            k.size(), v.size())));
    }
    let (mask, p, causal, scale) =
        (a.opt_tensor("attn_mask")?, a.float("dropout_p")?, a.bool("is_causal")?, a.opt_float("scale")?);
    if [q, k, v].iter().any(|t| t.numel() == 0) {
        // libtorch's fused CPU kernel divides by the number of heads
        // (SIGFPE with none); its reference implementation does not, and
        // on empty inputs costs nothing.
        let (out, _) = Tensor::f_internal_scaled_dot_product_attention_math(
            q, k, v, mask, p, causal, None::<&Tensor>, scale, gqa)?;
        return one(out);
    }
    one(Tensor::f_scaled_dot_product_attention(q, k, v, mask, p, causal, scale, gqa)?)
});

op!("cosine_similarity", "nn", "cosine of the angle between x1 and x2 along dim (torch.nn.functional.cosine_similarity)",
    [Param::tensor("x1"), Param::tensor("x2"), Param::int("dim").or_int(1), Param::float("eps").or_float(1e-8)] -> One,
    |a| one(Tensor::f_cosine_similarity(a.tensor("x1")?, a.tensor("x2")?, a.int("dim")?, a.float("eps")?)?));

op!("pairwise_distance", "nn", "‖x1 − x2 + eps‖_p along the last dimension (torch.nn.functional.pairwise_distance)",
    [Param::tensor("x1"), Param::tensor("x2"), Param::float("p").or_float(2.0), Param::float("eps").or_float(1e-6), Param::bool("keepdim").or_bool(false)] -> One,
    |a| one(Tensor::f_pairwise_distance(a.tensor("x1")?, a.tensor("x2")?, a.float("p")?, a.float("eps")?, a.bool("keepdim")?)?));

op!("pad", "nn", "pads the last dimensions; pad = [left, right, top, bottom, ...]; mode constant, reflect, replicate or circular (torch.nn.functional.pad)",
    [INPUT, Param::ints("pad"), Param::str("mode").or_str("constant"), Param::float("value").optional()] -> One,
    |a| one(a.tensor("input")?.f_pad(a.int_list("pad")?, a.str("mode")?, a.opt_float("value")?)?));

op!("pixel_shuffle", "nn", "(N, C r², H, W) → (N, C, H r, W r) (torch.nn.functional.pixel_shuffle)",
    [INPUT, Param::int("upscale_factor")] -> One,
    |a| one(a.tensor("input")?.f_pixel_shuffle(a.int("upscale_factor")?)?));

op!("pixel_unshuffle", "nn", "(N, C, H r, W r) → (N, C r², H, W) (torch.nn.functional.pixel_unshuffle)",
    [INPUT, Param::int("downscale_factor")] -> One,
    |a| one(a.tensor("input")?.f_pixel_unshuffle(a.int("downscale_factor")?)?));

op!("unfold", "nn", "extracts sliding blocks of (N, C, H, W) into columns, im2col (torch.nn.functional.unfold)",
    [INPUT, KERNEL, DILATION, PADDING, STRIDE] -> One,
    |a| one(a.tensor("input")?.f_im2col(
        a.int_list_n("kernel_size", 2)?, a.int_list_n("dilation", 2)?,
        a.int_list_n("padding", 2)?, a.int_list_n("stride", 2)?)?));

op!("interpolate", "nn", "resizes to size or by scale_factor; mode nearest, nearest-exact, linear, bilinear, bicubic, trilinear or area (torch.nn.functional.interpolate)",
    [
        INPUT,
        Param::ints("size").optional(),
        Param::floats("scale_factor").optional(),
        Param::str("mode").or_str("nearest"),
        Param::bool("align_corners").optional(),
        Param::bool("recompute_scale_factor").optional(),
        Param::bool("antialias").or_bool(false),
    ] -> One,
    interpolate);

fn interpolate(a: &Args<Tensor>) -> Out {
    let x = a.tensor("input")?;
    let n = x.dim().saturating_sub(2);
    if !(1..=3).contains(&n) {
        return Err(bad(
            a,
            format!("input must be 3-D, 4-D or 5-D, got {}-D", x.dim()),
        ));
    }
    let sizes = x.size();
    let (size, scales): (Vec<i64>, Vec<Option<f64>>) =
        match (a.opt_int_list("size")?, a.opt_float_list("scale_factor")?) {
            (Some(_), None) if a.opt_bool("recompute_scale_factor")? == Some(true) => {
                return Err(bad(
                    a,
                    "recompute_scale_factor is not meaningful with an explicit size",
                ));
            }
            (Some(_), None) => (a.int_list_n("size", n)?, vec![None; n]),
            (None, Some(f)) => {
                let f: Vec<f64> = match f.len() {
                    1 => vec![f[0]; n],
                    k if k == n => f.to_vec(),
                    k => {
                        return Err(bad(
                            a,
                            format!("scale_factor needs 1 or {n} values, got {k}"),
                        ));
                    }
                };
                let size = f
                    .iter()
                    .zip(&sizes[2..])
                    .map(|(s, &d)| (d as f64 * s).floor() as i64)
                    .collect();
                if a.opt_bool("recompute_scale_factor")? == Some(true) {
                    // The kernel gets the size alone and works out the scales.
                    (size, vec![None; n])
                } else {
                    (size, f.into_iter().map(Some).collect())
                }
            }
            _ => return Err(bad(a, "exactly one of size and scale_factor must be given")),
        };
    let mode = a.str("mode")?;
    let align = a.opt_bool("align_corners")?;
    let linear = matches!(mode, "linear" | "bilinear" | "bicubic" | "trilinear");
    if align.is_some() && !linear {
        return Err(bad(
            a,
            format!(
                "align_corners option can only be set with the interpolating modes: linear | bilinear | bicubic | trilinear, not {mode:?}"
            ),
        ));
    }
    let ac = align.unwrap_or(false);
    let s = |i: usize| scales[i];
    if a.bool("antialias")? {
        return one(match (mode, n) {
            ("bilinear", 2) => x.f_internal_upsample_bilinear2d_aa(&size, ac, s(0), s(1))?,
            ("bicubic", 2) => x.f_internal_upsample_bicubic2d_aa(&size, ac, s(0), s(1))?,
            _ => {
                return Err(bad(
                    a,
                    "anti-alias option is restricted to bilinear and bicubic modes and requires a 4-D tensor as input",
                ));
            }
        });
    }
    one(match (mode, n) {
        ("nearest", 1) => x.f_upsample_nearest1d(&size, s(0))?,
        ("nearest", 2) => x.f_upsample_nearest2d(&size, s(0), s(1))?,
        ("nearest", 3) => x.f_upsample_nearest3d(&size, s(0), s(1), s(2))?,
        ("nearest-exact", 1) => x.f_internal_upsample_nearest_exact1d(&size, s(0))?,
        ("nearest-exact", 2) => x.f_internal_upsample_nearest_exact2d(&size, s(0), s(1))?,
        ("nearest-exact", 3) => x.f_internal_upsample_nearest_exact3d(&size, s(0), s(1), s(2))?,
        ("area", 1) => x.f_adaptive_avg_pool1d(&size)?,
        ("area", 2) => x.f_adaptive_avg_pool2d(&size)?,
        ("area", 3) => x.f_adaptive_avg_pool3d(&size)?,
        ("linear", 1) => x.f_upsample_linear1d(&size, ac, s(0))?,
        ("bilinear", 2) => x.f_upsample_bilinear2d(&size, ac, s(0), s(1))?,
        ("bicubic", 2) => x.f_upsample_bicubic2d(&size, ac, s(0), s(1))?,
        ("trilinear", 3) => x.f_upsample_trilinear3d(&size, ac, s(0), s(1), s(2))?,
        (m @ ("linear" | "bilinear" | "bicubic" | "trilinear"), _) => {
            return Err(bad(
                a,
                format!("mode {m:?} does not fit a {}-D input", x.dim()),
            ));
        }
        (m, _) => return Err(bad(a, format!("unknown mode {m:?}"))),
    })
}

op!("fold", "nn", "sums sliding-block columns back into (N, C, H, W), col2im (torch.nn.functional.fold)",
    [INPUT, OUTPUT_SIZE, KERNEL, DILATION, PADDING, STRIDE] -> One,
    |a| one(a.tensor("input")?.f_col2im(
        a.int_list_n("output_size", 2)?, a.int_list_n("kernel_size", 2)?, a.int_list_n("dilation", 2)?,
        a.int_list_n("padding", 2)?, a.int_list_n("stride", 2)?)?));

op!("channel_shuffle", "nn", "shuffles (N, C, ...) channels in groups (torch.nn.functional.channel_shuffle)",
    [INPUT, Param::int("groups")] -> One,
    |a| one(a.tensor("input")?.f_channel_shuffle(a.int("groups")?)?));
