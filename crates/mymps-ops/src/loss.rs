//! Loss functions (`torch.nn.functional`), with torch's `reduction`.

use tch::Tensor;

use crate::Outputs::One;
use crate::util::{bad, check_targets, one, reduce_loss, reduction};
use crate::{Param, op};

const INPUT: Param = Param::tensor("input");
const TARGET: Param = Param::tensor("target");
const WEIGHT: Param = Param::tensor("weight").optional();
const REDUCTION: Param = Param::str("reduction").or_str("mean");

op!("cross_entropy", "loss", "cross entropy of logits and class indices or probabilities (torch.nn.functional.cross_entropy)",
[INPUT, TARGET, WEIGHT, Param::int("ignore_index").or_int(-100), REDUCTION, Param::float("label_smoothing").or_float(0.0)] -> One,
|a| {
    let (x, target, ignore) = (a.tensor("input")?, a.tensor("target")?, a.int("ignore_index")?);
    check_targets(a, x, target, ignore)?;
    one(x.f_cross_entropy_loss(target, a.opt_tensor("weight")?, reduction(a)?, ignore, a.float("label_smoothing")?)?)
});

op!("nll_loss", "loss", "negative log-likelihood of log-probabilities and class indices (torch.nn.functional.nll_loss)",
[INPUT, TARGET, WEIGHT, Param::int("ignore_index").or_int(-100), REDUCTION] -> One,
|a| {
    let (x, target, ignore) = (a.tensor("input")?, a.tensor("target")?, a.int("ignore_index")?);
    check_targets(a, x, target, ignore)?;
    one(x.f_nll_loss_nd(target, a.opt_tensor("weight")?, reduction(a)?, ignore)?)
});

op!("mse_loss", "loss", "mean squared error (torch.nn.functional.mse_loss)",
    [INPUT, TARGET, REDUCTION] -> One,
    |a| one(a.tensor("input")?.f_mse_loss(a.tensor("target")?, reduction(a)?)?));

op!("l1_loss", "loss", "mean absolute error (torch.nn.functional.l1_loss)",
    [INPUT, TARGET, REDUCTION] -> One,
    |a| one(a.tensor("input")?.f_l1_loss(a.tensor("target")?, reduction(a)?)?));

op!("smooth_l1_loss", "loss", "squared error below beta, absolute above (torch.nn.functional.smooth_l1_loss)",
    [INPUT, TARGET, REDUCTION, Param::float("beta").or_float(1.0)] -> One,
    |a| one(a.tensor("input")?.f_smooth_l1_loss(a.tensor("target")?, reduction(a)?, a.float("beta")?)?));

op!("huber_loss", "loss", "Huber loss with threshold delta (torch.nn.functional.huber_loss)",
    [INPUT, TARGET, REDUCTION, Param::float("delta").or_float(1.0)] -> One,
    |a| one(a.tensor("input")?.f_huber_loss(a.tensor("target")?, reduction(a)?, a.float("delta")?)?));

op!("binary_cross_entropy", "loss", "binary cross entropy of probabilities (torch.nn.functional.binary_cross_entropy)",
    [INPUT, TARGET, WEIGHT, REDUCTION] -> One,
    |a| one(a.tensor("input")?.f_binary_cross_entropy(a.tensor("target")?, a.opt_tensor("weight")?, reduction(a)?)?));

op!("binary_cross_entropy_with_logits", "loss", "binary cross entropy of logits, computed stably (torch.nn.functional.binary_cross_entropy_with_logits)",
    [INPUT, TARGET, WEIGHT, REDUCTION, Param::tensor("pos_weight").optional()] -> One,
    |a| one(a.tensor("input")?.f_binary_cross_entropy_with_logits(a.tensor("target")?, a.opt_tensor("weight")?, a.opt_tensor("pos_weight")?, reduction(a)?)?));

op!("kl_div", "loss", "Kullback–Leibler divergence, input in log space; reduction also \"batchmean\" (torch.nn.functional.kl_div)",
[INPUT, TARGET, REDUCTION, Param::bool("log_target").or_bool(false)] -> One,
|a| {
    let x = a.tensor("input")?;
    let log_target = a.bool("log_target")?;
    if a.str("reduction")? == "batchmean" {
        let s = x.f_kl_div(a.tensor("target")?, tch::Reduction::Sum, log_target)?;
        let n = if x.dim() == 0 { 1 } else { x.size()[0] };
        return one(s.f_div_scalar(n)?);
    }
    one(x.f_kl_div(a.tensor("target")?, reduction(a)?, log_target)?)
});

op!("poisson_nll_loss", "loss", "Poisson negative log-likelihood (torch.nn.functional.poisson_nll_loss)",
    [INPUT, TARGET, Param::bool("log_input").or_bool(true), Param::bool("full").or_bool(false), Param::float("eps").or_float(1e-8), REDUCTION] -> One,
    |a| one(a.tensor("input")?.f_poisson_nll_loss(a.tensor("target")?, a.bool("log_input")?, a.bool("full")?, a.float("eps")?, reduction(a)?)?));

op!("soft_margin_loss", "loss", "log(1 + exp(−target × input)) (torch.nn.functional.soft_margin_loss)",
    [INPUT, TARGET, REDUCTION] -> One,
    |a| one(a.tensor("input")?.f_soft_margin_loss(a.tensor("target")?, reduction(a)?)?));

op!("hinge_embedding_loss", "loss", "input where target is 1, max(0, margin − input) where −1 (torch.nn.functional.hinge_embedding_loss)",
    [INPUT, TARGET, Param::float("margin").or_float(1.0), REDUCTION] -> One,
    |a| one(a.tensor("input")?.f_hinge_embedding_loss(a.tensor("target")?, a.float("margin")?, reduction(a)?)?));

op!("margin_ranking_loss", "loss", "max(0, −target × (input1 − input2) + margin) (torch.nn.functional.margin_ranking_loss)",
    [Param::tensor("input1"), Param::tensor("input2"), TARGET, Param::float("margin").or_float(0.0), REDUCTION] -> One,
    |a| one(Tensor::f_margin_ranking_loss(a.tensor("input1")?, a.tensor("input2")?, a.tensor("target")?, a.float("margin")?, reduction(a)?)?));

op!("cosine_embedding_loss", "loss", "1 − cos(x1, x2) where target is 1, max(0, cos − margin) where −1 (torch.nn.functional.cosine_embedding_loss)",
    [Param::tensor("input1"), Param::tensor("input2"), TARGET, Param::float("margin").or_float(0.0), REDUCTION] -> One,
    |a| one(Tensor::f_cosine_embedding_loss(a.tensor("input1")?, a.tensor("input2")?, a.tensor("target")?, a.float("margin")?, reduction(a)?)?));

op!("triplet_margin_loss", "loss", "max(d(a, p) − d(a, n) + margin, 0) (torch.nn.functional.triplet_margin_loss)",
    [
        Param::tensor("anchor"), Param::tensor("positive"), Param::tensor("negative"),
        Param::float("margin").or_float(1.0), Param::float("p").or_float(2.0),
        Param::float("eps").or_float(1e-6), Param::bool("swap").or_bool(false), REDUCTION,
    ] -> One,
    |a| one(Tensor::f_triplet_margin_loss(a.tensor("anchor")?, a.tensor("positive")?, a.tensor("negative")?,
        a.float("margin")?, a.float("p")?, a.float("eps")?, a.bool("swap")?, reduction(a)?)?));

op!("gaussian_nll_loss", "loss", "Gaussian negative log-likelihood with predicted variance var (torch.nn.functional.gaussian_nll_loss)",
[INPUT, TARGET, Param::tensor("var"), Param::bool("full").or_bool(false), Param::float("eps").or_float(1e-6), REDUCTION] -> One,
|a| {
    let (x, t, var) = (a.tensor("input")?, a.tensor("target")?, a.tensor("var")?);
    // torch: var of input's shape, of input's shape without the last
    // dimension, or with a last dimension of 1; non-negative; clamped to
    // eps; then 0.5 × (log var + (input − target)² / var) [+ 0.5 log 2π].
    let (xs, vs) = (x.size(), var.size());
    let mut var = var.shallow_clone();
    if vs != xs {
        let n = xs.len();
        if n > 0 && vs[..] == xs[..n - 1] {
            var = var.f_unsqueeze(-1)?;
        } else if !(n > 0 && vs.len() == n && vs[..n - 1] == xs[..n - 1] && vs[n - 1] == 1) {
            return Err(bad(a, "var is of incorrect size"));
        }
    }
    if var.f_lt(0)?.f_any()?.f_int64_value(&[])? != 0 {
        return Err(bad(a, "var has negative entry/entries"));
    }
    let var = var.f_clamp_min(a.float("eps")?)?;
    let diff = x.f_sub(t)?;
    let mut l = var.f_log()?.f_add(&diff.f_mul(&diff)?.f_div(&var)?)?.f_mul_scalar(0.5)?;
    if a.bool("full")? {
        l = l.f_add_scalar(0.5 * (2.0 * std::f64::consts::PI).ln())?;
    }
    reduce_loss(a, l)
});
