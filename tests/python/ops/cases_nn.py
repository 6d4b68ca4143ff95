"""Cases: torch.nn.functional (convolution, pooling, normalization, ...)
and losses."""

from __future__ import annotations

from typing import List

from harness import B, CONST, Case, I, N, U, F, np, pos, torch

CASES: List[Case] = []
add = CASES.append

# ------------------------------------------------------------- convolutions
for n, op in [(1, "conv1d"), (2, "conv2d"), (3, "conv3d")]:
    sp = (7,) * n if n < 3 else (5,) * n
    k = (3,) * n
    add(Case(op, pos(N(2, 4, *sp), N(6, 4, *k))))
    add(Case(op, {"0": N(2, 4, *sp), "weight": N(6, 4, *k), "bias": N(6)}, {"stride": 2, "padding": 1}))
    add(Case(op, pos(N(1, 4, *sp), N(6, 2, *k)), {"groups": 2, "dilation": 2, "padding": [2] * n}))
    add(Case(op, pos(N(1, 4, *sp), N(3, 4, *k)), {"padding": "same"}))
    add(Case(op, pos(N(1, 4, *sp), N(3, 4, *k)), {"padding": "valid", "stride": [1] * n}))
    add(Case(op, pos(N(1, 2, *sp, dt="float64"), N(3, 2, *k, dt="float64")), label="float64"))
for n, op in [(1, "conv_transpose1d"), (2, "conv_transpose2d"), (3, "conv_transpose3d")]:
    sp = (4,) * n
    add(Case(op, pos(N(2, 4, *sp), N(4, 3, *(3,) * n))))
    add(Case(op, {"0": N(1, 4, *sp), "weight": N(4, 3, *(3,) * n), "bias": N(3)},
             {"stride": 2, "padding": 1, "output_padding": 1}))
    add(Case(op, pos(N(1, 4, *sp), N(4, 2, *(2,) * n)), {"groups": 2, "dilation": 2}))

# ------------------------------------------------------------------ pooling
for n in (1, 2, 3):
    sp = (6,) * n
    mp, ap = f"max_pool{n}d", f"avg_pool{n}d"
    add(Case(mp, pos(N(2, 3, *sp)), {"kernel_size": 2}))
    add(Case(mp, pos(N(2, 3, *sp)), {"kernel_size": 3, "stride": 1, "padding": 1}))
    add(Case(mp, pos(N(1, 2, *sp)), {"kernel_size": [2] * n, "stride": 2, "dilation": 2}))
    add(Case(mp, pos(N(1, 2, *(5,) * n)), {"kernel_size": 2, "ceil_mode": True}))
    add(Case(ap, pos(N(2, 3, *sp)), {"kernel_size": 2}))
    add(Case(ap, pos(N(2, 3, *sp)), {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False}))
    add(Case(ap, pos(N(1, 2, *(5,) * n)), {"kernel_size": 2, "ceil_mode": True}))
    if n > 1:
        add(Case(ap, pos(N(1, 2, *sp)), {"kernel_size": 2, "divisor_override": 3}))
    for kind in ("avg", "max"):
        op = f"adaptive_{kind}_pool{n}d"
        add(Case(op, pos(N(2, 3, *(7,) * n)), {"output_size": 1}))
        add(Case(op, pos(N(2, 3, *(7,) * n)), {"output_size": [3, 2, 4][:n]}))

# ------------------------------------------------------------ normalization
add(Case("layer_norm", pos(N(2, 3, 4)), {"normalized_shape": [4]}))
add(Case("layer_norm", {"0": N(2, 3, 4), "weight": N(3, 4), "bias": N(3, 4)}, {"normalized_shape": [3, 4], "eps": 1e-3}))
add(Case("rms_norm", pos(N(2, 3, 4)), {"normalized_shape": [4]}))
add(Case("rms_norm", {"0": N(2, 3, 4), "weight": N(3, 4)}, {"normalized_shape": [3, 4], "eps": 1e-2}))
add(Case("group_norm", pos(N(2, 4, 5)), {"num_groups": 2}))
add(Case("group_norm", {"0": N(2, 6, 3, 3), "weight": N(6), "bias": N(6)}, {"num_groups": 3, "eps": 1e-3}))
add(Case("batch_norm", {"0": N(4, 3, 5), "running_mean": N(3), "running_var": U(0.5, 2, 3)}))
add(Case("batch_norm", {"0": N(4, 3), "running_mean": N(3), "running_var": U(0.5, 2, 3), "weight": N(3), "bias": N(3)}, {"eps": 1e-3}))
add(Case("batch_norm", {"0": N(4, 3, 5)}, {"training": True}, ref=lambda x, **kw: F.batch_norm(x, None, None, **kw), label="training-no-stats"))
add(Case("batch_norm", {"0": N(4, 3, 5), "running_mean": N(3), "running_var": U(0.5, 2, 3)}, {"training": True, "momentum": 0.5}, label="training-with-stats"))
add(Case("instance_norm", pos(N(2, 3, 5))))
add(Case("instance_norm", {"0": N(2, 3, 4, 4), "weight": N(3), "bias": N(3)}, {"eps": 1e-3}))
add(Case("instance_norm", {"0": N(2, 3, 5), "running_mean": N(3), "running_var": U(0.5, 2, 3)}, {"use_input_stats": False}))
add(Case("normalize", pos(N(3, 4))))
add(Case("normalize", pos(N(3, 4)), {"p": 1.0, "dim": 0}))
add(Case("normalize", pos(N(3, 4, dt="float64")), {"dim": -1, "eps": 0.5}))

# -------------------------------------------------- linear, embedding, ...
add(Case("linear", pos(N(2, 5), N(3, 5))))
add(Case("linear", {"0": N(2, 4, 5), "weight": N(3, 5), "bias": N(3)}))
add(Case("bilinear", pos(N(4, 2), N(4, 3), N(5, 2, 3))))
add(Case("bilinear", {"0": N(4, 2), "1": N(4, 3), "weight": N(5, 2, 3), "bias": N(5)}))
add(Case("embedding", pos(I(0, 10, 3, 4), N(10, 5))))
add(Case("embedding", pos(I(0, 10, 6), N(10, 5, dt="float64")), {"padding_idx": 0}))
add(Case("one_hot", pos(I(0, 5, 6))))
add(Case("one_hot", pos(I(0, 3, 2, 3)), {"num_classes": 5}))


def SDPA(*q, mask=None):
    def g(r):
        d = {"query": N(2, 3, 4, 8)(r), "key": N(2, 3, 6, 8)(r), "value": N(2, 3, 6, 5)(r)}
        if mask == "bool":
            d["attn_mask"] = r.random((4, 6)) < 0.8
            d["attn_mask"][:, 0] = True
        elif mask == "float":
            d["attn_mask"] = r.standard_normal((2, 1, 4, 6)).astype(np.float32)
        return d

    return g


add(Case("scaled_dot_product_attention", SDPA()))
add(Case("scaled_dot_product_attention", SDPA(), {"is_causal": True}))
add(Case("scaled_dot_product_attention", SDPA(mask="bool"), label="bool-mask"))
add(Case("scaled_dot_product_attention", SDPA(mask="float"), {"scale": 0.5}, label="float-mask-scale"))
add(Case("scaled_dot_product_attention",
         lambda r: {"query": N(1, 4, 3, 8)(r), "key": N(1, 2, 5, 8)(r), "value": N(1, 2, 5, 8)(r)},
         {"enable_gqa": True}, label="gqa"))
add(Case("cosine_similarity", pos(N(3, 4), N(3, 4))))
add(Case("cosine_similarity", pos(N(3, 4), N(1, 4)), {"dim": 0, "eps": 1e-3}))
add(Case("pairwise_distance", pos(N(3, 4), N(3, 4))))
add(Case("pairwise_distance", pos(N(3, 4), N(3, 4)), {"p": 1.0, "keepdim": True}))
add(Case("pairwise_distance", pos(N(3, 4), N(4)), {"eps": 0.0}))
add(Case("pad", pos(N(2, 3, 4)), {"pad": [1, 2]}))
add(Case("pad", pos(N(2, 3, 4)), {"pad": [1, 1, 2, 0], "value": 1.5}))
add(Case("pad", pos(N(1, 2, 4, 4)), {"pad": [1, 2, 2, 1], "mode": "reflect"}))
add(Case("pad", pos(N(1, 2, 4)), {"pad": [2, 3], "mode": "replicate"}))
add(Case("pad", pos(N(1, 2, 4, 4)), {"pad": [1, 1, 1, 1], "mode": "circular"}))
add(Case("pixel_shuffle", pos(N(1, 8, 3, 3)), {"upscale_factor": 2}))
add(Case("pixel_unshuffle", pos(N(1, 2, 4, 6)), {"downscale_factor": 2}))
add(Case("unfold", pos(N(2, 3, 5, 5)), {"kernel_size": 2}))
add(Case("unfold", pos(N(1, 2, 6, 5)), {"kernel_size": [3, 2], "stride": 2, "padding": 1, "dilation": [1, 2]}))
add(Case("interpolate", pos(N(1, 2, 4, 4)), {"size": [6, 8]}))
add(Case("interpolate", pos(N(1, 2, 4, 4)), {"scale_factor": 2.0}))
add(Case("interpolate", pos(N(1, 2, 5)), {"scale_factor": 1.5, "mode": "linear"}))
add(Case("interpolate", pos(N(1, 2, 4, 4)), {"size": 7, "mode": "bilinear", "align_corners": True}))
add(Case("interpolate", pos(N(1, 2, 4, 4)), {"scale_factor": [2.0, 1.5], "mode": "bicubic"}))
add(Case("interpolate", pos(N(1, 1, 3, 3, 3)), {"size": [4, 5, 6], "mode": "trilinear"}))
add(Case("interpolate", pos(N(1, 2, 6, 6)), {"size": 4, "mode": "area"}))
add(Case("interpolate", pos(N(1, 2, 5, 5)), {"size": 7, "mode": "nearest-exact"}))
add(Case("interpolate", pos(N(1, 2, 3, 3, 3)), {"scale_factor": 2.0, "mode": "nearest"}))

# ------------------------------------------------------------------- losses
for red in ("mean", "sum", "none"):
    add(Case("cross_entropy", pos(N(4, 5), I(0, 5, 4)), {"reduction": red}))
    add(Case("nll_loss", pos(lambda r: np.log(r.dirichlet(np.ones(5), 4)).astype(np.float32), I(0, 5, 4)), {"reduction": red}))
    for op in ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "soft_margin_loss"):
        add(Case(op, pos(N(3, 4), N(3, 4)), {"reduction": red}))
    add(Case("binary_cross_entropy", pos(U(0.05, 0.95, 3, 4), U(0, 1, 3, 4)), {"reduction": red}))
    add(Case("binary_cross_entropy_with_logits", pos(N(3, 4), U(0, 1, 3, 4)), {"reduction": red}))
    add(Case("kl_div", pos(lambda r: np.log(r.dirichlet(np.ones(4), 3)).astype(np.float32), lambda r: r.dirichlet(np.ones(4), 3).astype(np.float32)), {"reduction": red}))
    add(Case("poisson_nll_loss", pos(N(3, 4), U(0, 3, 3, 4)), {"reduction": red}))
    add(Case("hinge_embedding_loss", pos(N(3, 4), lambda r: r.choice([-1.0, 1.0], (3, 4)).astype(np.float32)), {"reduction": red}))
    add(Case("margin_ranking_loss", pos(N(5), N(5), lambda r: r.choice([-1.0, 1.0], 5).astype(np.float32)), {"reduction": red}))
    add(Case("cosine_embedding_loss", pos(N(5, 3), N(5, 3), lambda r: r.choice([-1.0, 1.0], 5).astype(np.float32)), {"reduction": red}))
    add(Case("triplet_margin_loss", pos(N(4, 3), N(4, 3), N(4, 3)), {"reduction": red}))
    add(Case("gaussian_nll_loss", pos(N(4, 3), N(4, 3), U(0.1, 2, 4, 3)), {"reduction": red}))
add(Case("cross_entropy", {"0": N(4, 5), "1": I(0, 5, 4), "weight": U(0.5, 2, 5)}, {"ignore_index": 2}))
add(Case("cross_entropy", pos(N(4, 5), I(0, 5, 4)), {"label_smoothing": 0.1}))
add(Case("cross_entropy", pos(N(4, 5), lambda r: r.dirichlet(np.ones(5), 4).astype(np.float32)), label="probabilities"))
add(Case("cross_entropy", pos(N(2, 5, 3), I(0, 5, 2, 3)), label="spatial"))
add(Case("nll_loss", {"0": N(4, 5), "1": I(0, 5, 4), "weight": U(0.5, 2, 5)}, {"ignore_index": 1}))
add(Case("smooth_l1_loss", pos(N(3, 4), N(3, 4)), {"beta": 0.5}))
add(Case("huber_loss", pos(N(3, 4), N(3, 4)), {"delta": 0.5}))
add(Case("binary_cross_entropy", {"0": U(0.05, 0.95, 3, 4), "1": U(0, 1, 3, 4), "weight": U(0, 2, 3, 4)}))
add(Case("binary_cross_entropy_with_logits", {"0": N(3, 4), "1": U(0, 1, 3, 4), "pos_weight": U(0.5, 2, 4), "weight": U(0, 2, 4)}))
add(Case("kl_div", pos(lambda r: np.log(r.dirichlet(np.ones(4), 3)).astype(np.float32), lambda r: r.dirichlet(np.ones(4), 3).astype(np.float32)), {"reduction": "batchmean"}))
add(Case("kl_div", pos(N(3, 4), N(3, 4)), {"reduction": "sum", "log_target": True}))
add(Case("poisson_nll_loss", pos(U(0.1, 3, 3, 4), U(0, 3, 3, 4)), {"log_input": False, "full": True}))
add(Case("hinge_embedding_loss", pos(N(3, 4), lambda r: r.choice([-1.0, 1.0], (3, 4)).astype(np.float32)), {"margin": 0.5}))
add(Case("margin_ranking_loss", pos(N(5), N(5), lambda r: r.choice([-1.0, 1.0], 5).astype(np.float32)), {"margin": 0.3}))
add(Case("cosine_embedding_loss", pos(N(5, 3), N(5, 3), lambda r: r.choice([-1.0, 1.0], 5).astype(np.float32)), {"margin": 0.2}))
add(Case("triplet_margin_loss", pos(N(4, 3), N(4, 3), N(4, 3)), {"margin": 0.5, "p": 1.0, "swap": True}))
add(Case("gaussian_nll_loss", pos(N(4, 3), N(4, 3), U(0.1, 2, 4)), {"full": True, "eps": 1e-3}, label="var-per-sample"))
add(Case("gaussian_nll_loss", pos(N(4, 3), N(4, 3), U(0.1, 2, 4, 1)), label="var-broadcast"))
add(Case("mse_loss", pos(N(3, 4, dt="float64"), N(3, 4, dt="float64")), label="float64"))

_ = (B, CONST, torch)

add(Case("fold", pos(N(2, 12, 9)), {"output_size": [4, 4], "kernel_size": 2, "stride": 1}))
add(Case("fold", pos(N(1, 8, 16)), {"output_size": 6, "kernel_size": 2, "stride": 2, "padding": 1, "dilation": 1}))
add(Case("channel_shuffle", pos(N(1, 6, 2, 2)), {"groups": 2}))
add(Case("channel_shuffle", pos(N(2, 6, 3)), {"groups": 3}))

for n in (1, 2, 3):
    add(Case(f"max_pool{n}d", pos(N(1, 2, *(6,) * n)), {"kernel_size": 2, "return_indices": True}))
    add(Case(f"adaptive_max_pool{n}d", pos(N(1, 2, *(7,) * n)), {"output_size": 3, "return_indices": True}))
add(Case("embedding", pos(I(0, 10, 6), N(10, 4, scale=3)), {"max_norm": 1.0}))
add(Case("embedding", pos(I(0, 10, 6), N(10, 4, scale=3)), {"max_norm": 2.0, "norm_type": 1.0, "scale_grad_by_freq": True, "sparse": False}))
add(Case("interpolate", pos(N(1, 2, 5, 5)), {"scale_factor": 1.7, "mode": "bilinear", "recompute_scale_factor": True}))
add(Case("interpolate", pos(N(1, 2, 8, 8)), {"size": [3, 5], "mode": "bilinear", "antialias": True}))
add(Case("interpolate", pos(N(1, 2, 8, 8)), {"scale_factor": 0.5, "mode": "bicubic", "antialias": True, "align_corners": True}))
