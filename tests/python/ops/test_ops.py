"""Every registered op, run through a real mymps server and checked against
PyTorch's Python API on the same inputs with the same arguments.

Inputs are drawn fresh each run from a random seed, printed in every
failure message (``MYMPS_OPS_SEED=<seed>`` reproduces a run). The suite
fails when the server registers an op that has no case here.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cases_math  # noqa: E402
import cases_nn  # noqa: E402
import cases_reduce  # noqa: E402
import cases_dtypes  # noqa: E402
import cases_errors  # noqa: E402
import cases_shape  # noqa: E402
from harness import REF_DEVICE, Case, assert_array, assert_same, call_reference  # noqa: E402

ALL_CASES = (
    cases_math.CASES
    + cases_reduce.CASES
    + cases_nn.CASES
    + cases_shape.CASES
    + cases_dtypes.CASES
    + cases_errors.CASES
)
SEED = int(os.environ.get("MYMPS_OPS_SEED", secrets.randbits(32)))


def case_seed(case_index: int) -> int:
    return (SEED + 7919 * case_index) % 2**32


def _ids() -> list:
    seen: Dict[str, int] = {}
    out = []
    for c in ALL_CASES:
        i = seen.get(c.id, 0)
        seen[c.id] = i + 1
        out.append(c.id if i == 0 else f"{c.id}#{i}")
    return out


def test_every_registered_op_has_a_case(client):
    registered = client.list_ops()
    assert registered == sorted(registered), "list_ops is not sorted"
    covered = {c.op for c in ALL_CASES}
    missing = sorted(set(registered) - covered)
    assert not missing, f"registered ops without a case: {missing}"
    unknown = sorted(covered - set(registered))
    assert not unknown, f"cases for ops the server does not register: {unknown}"


def test_every_op_with_options_has_several_cases(client):
    """Ops with optional parameters are called with more than the defaults."""
    thin = []
    for name in client.list_ops():
        info = client.describe_op(name)
        optional = [p["name"] for p in info["params"] if not p["required"]]
        if not optional:
            continue
        used = {k for c in ALL_CASES if c.op == name for k in c.kwargs}
        used |= {k for c in ALL_CASES if c.op == name and isinstance(c.inputs, dict) for k in c.inputs}
        if not used & set(optional):
            thin.append(name)
    assert not thin, f"ops whose optional arguments no case sets: {thin}"


@pytest.mark.parametrize("index", range(len(ALL_CASES)), ids=_ids())
def test_op(client, index):
    case = ALL_CASES[index]
    seed = case_seed(index)
    ctx = f"{case.id} (MYMPS_OPS_SEED={SEED}, case seed {seed})"
    rng = np.random.default_rng(seed)
    inputs = case.draw(rng)
    kept = {k: v.copy() for k, v in inputs.items()}
    if case.error:
        check_error(client, case, inputs, ctx)
        return
    try:
        want = call_reference(case, inputs, REF_DEVICE)
    except Exception as e:
        raise AssertionError(f"{ctx}: the torch reference failed: {e!r}") from e
    try:
        got = client.exec(case.op, inputs, **case.kwargs)
    except Exception as e:
        raise AssertionError(f"{ctx}: mymps failed where torch succeeded: {e!r}") from e
    for k, v in kept.items():
        np.testing.assert_array_equal(inputs[k], v, err_msg=f"{ctx}: input {k} was modified")
    if case.label.startswith("random"):
        check_random(client, case, inputs, got, want, ctx)
    elif case.check is not None:
        case.check(got, want, inputs, case, ctx)
    else:
        assert_same(got, want, case, ctx)


def check_error(client, case: Case, inputs, ctx: str) -> None:
    """Torch rejects these arguments; the server must reply with an error
    (and keep serving)."""
    from mymps import MympsError

    with pytest.raises(Exception):
        call_reference(case, inputs)
    with pytest.raises(MympsError):
        client.exec(case.op, inputs, **case.kwargs)
        pytest.fail(f"{ctx}: torch raises, mymps answered")


def check_random(client, case: Case, inputs, got, want, ctx: str) -> None:
    """A random op: torch's shape and dtype, values in range, and a second
    call that differs."""
    assert sorted(got) == sorted(want), ctx
    out, ref = got["output"], want["output"]
    assert out.dtype == ref.dtype, f"{ctx}: dtype {out.dtype} != torch's {ref.dtype}"
    assert out.shape == ref.shape, f"{ctx}: shape {out.shape} != torch's {ref.shape}"
    x = inputs["0"]
    op, kw = case.op, case.kwargs
    if op == "rand_like":
        assert ((out >= 0) & (out < 1)).all(), ctx
    elif op == "randn_like":
        assert abs(float(out.mean())) < 0.5 and 0.6 < float(out.std()) < 1.4, ctx
    elif op == "randint_like":
        assert ((out >= kw.get("low", 0)) & (out < kw["high"])).all(), ctx
    elif op == "bernoulli":
        assert set(np.unique(out)) <= {0.0, 1.0}, ctx
    elif op == "multinomial":
        assert ((out >= 0) & (out < x.shape[-1])).all(), ctx
        if not kw.get("replacement", False):
            rows = out.reshape(-1, out.shape[-1])
            assert all(len(set(r)) == len(r) for r in rows), f"{ctx}: repeated draws without replacement"
    elif op == "normal":
        z = (out - x) / inputs["1"]
        assert abs(float(z.mean())) < 0.5 and 0.6 < float(z.std()) < 1.4, ctx
    elif op == "dropout":
        p = kw.get("p", 0.5)
        kept = out != 0
        np.testing.assert_allclose(out[kept], x[kept] / (1 - p), rtol=1e-5, err_msg=ctx)
        assert 0 < kept.mean() < 1, f"{ctx}: dropout kept {kept.mean():.0%}"
    else:
        raise AssertionError(f"{ctx}: no random check for {op}")
    again = client.exec(case.op, inputs, **case.kwargs)["output"]
    assert not np.array_equal(again, out), f"{ctx}: two calls gave the same values"


def test_errors_name_the_op_and_signature(client):
    from mymps import BadArgumentError, MympsError

    a = np.ones((2, 2), np.float32)
    with pytest.raises(BadArgumentError, match=r"clamp\(input: Tensor"):
        client.exec("clamp", {"0": a}, minimum=1.0)
    with pytest.raises(BadArgumentError, match=r"svd\(A: Tensor, full_matrices: bool = True\)"):
        client.exec("svd", {"0": a}, full_matrices="yes")
    # A libtorch error is an error reply, and the server keeps serving.
    with pytest.raises(MympsError, match="mat1 and mat2 shapes cannot be multiplied"):
        client.exec("mm", {"0": np.ones((2, 3), np.float32), "1": np.ones((2, 3), np.float32)})
    with pytest.raises(MympsError):
        client.exec("cholesky", {"0": -np.eye(3, dtype=np.float32)})
    out = client.exec("mm", {"0": a, "1": a})["output"]
    assert_array(out, a @ a, ALL_CASES[0], "mm after errors")
