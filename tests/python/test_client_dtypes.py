"""Dtypes, layouts and the zero-copy paths, against a real server."""

from __future__ import annotations

import numpy as np
import pytest

import mymps
from mymps._native import _copy_counters

RNG = np.random.default_rng(99)

ALL_DTYPES = [
    "bool", "uint8", "int8", "int16", "int32", "int64",
    "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
]


def np_dtype(name):
    if name == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def sample(name, shape):
    dt = np_dtype(name)
    if name == "bool":
        return RNG.integers(0, 2, size=shape).astype(bool)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return RNG.integers(info.min, info.max, size=shape, endpoint=True, dtype=dt)
    if dt.kind == "c":
        return (RNG.standard_normal(shape) + 1j * RNG.standard_normal(shape)).astype(dt)
    return RNG.standard_normal(shape).astype(dt)


def same_bits(a, b):
    """Exact equality, comparing bytes (NaN-safe, and works for bfloat16)."""
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_array_equal(
        np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8)
    )


@pytest.mark.parametrize("name", ALL_DTYPES)
def test_dtype_round_trip_reshape(client, name):
    x = sample(name, (6, 10))
    r = client.exec("reshape", {"0": x}, shape=[3, 20])["output"]
    assert r.dtype == np_dtype(name)
    same_bits(r, x.reshape(3, 20))


@pytest.mark.parametrize("name", ALL_DTYPES)
def test_dtype_round_trip_transpose(client, name):
    x = sample(name, (4, 7, 3))
    r = client.exec("transpose", {"0": x}, dim0=0, dim1=2)["output"]
    same_bits(r, np.swapaxes(x, 0, 2))
    assert r.flags.writeable


def test_bfloat16_values(client):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = np.array([[1.5, -2.0, 3.25], [0.0, 1e-3, 256.0]], dtype=ml_dtypes.bfloat16)
    r = client.exec("mul", {"0": x}, other=2)["output"]
    assert r.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(r.astype(np.float32), x.astype(np.float32) * 2)
    # A bfloat16 result from a float32 input (a dtype argument as a string).
    s = client.exec("sum", {"0": np.ones((4, 8), np.float32)}, dim=[1], dtype="bfloat16")
    assert s["output"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(s["output"].astype(np.float32), np.full(4, 8.0))


def test_argmax_gives_int64(client):
    x = RNG.standard_normal((5, 9)).astype(np.float32)
    r = client.exec("argmax", {"0": x}, dim=1)["output"]
    assert r.dtype == np.int64
    np.testing.assert_array_equal(r, x.argmax(axis=1))


def test_eq_gives_bool(client):
    a = RNG.integers(0, 3, size=(4, 5)).astype(np.int32)
    b = RNG.integers(0, 3, size=(4, 5)).astype(np.int32)
    r = client.exec("eq", {"0": a, "1": b})["output"]
    assert r.dtype == np.bool_
    np.testing.assert_array_equal(r, a == b)


def test_fft_gives_complex64(client):
    x = RNG.standard_normal((3, 16)).astype(np.float32)
    r = client.exec("fft", {"0": x})["output"]
    assert r.dtype == np.complex64
    np.testing.assert_allclose(r, np.fft.fft(x), rtol=1e-4, atol=1e-4)


def test_complex128_math(client):
    a = sample("complex128", (3, 4))
    b = sample("complex128", (4, 2))
    r = client.exec("matmul", {"0": a, "1": b})["output"]
    assert r.dtype == np.complex128
    np.testing.assert_allclose(r, a @ b, rtol=1e-12)


def test_big_endian_input_is_converted(client):
    x = np.arange(12, dtype=">f4").reshape(3, 4)
    r = client.exec("neg", {"0": x})["output"]
    assert r.dtype == np.float32 and r.dtype.isnative
    np.testing.assert_array_equal(r, -x.astype(np.float32))


# ------------------------------------------------------------ layouts

def layouts():
    base = RNG.standard_normal((12, 10)).astype(np.float32)
    return {
        # name: (array, sent without a copy?)
        "transposed": (base.T, True),
        "fortran": (np.asfortranarray(base), True),
        "sliced_step_2": (base[::2], True),
        "sliced_cols": (base[:, 2:7], True),
        "sliced_step_2_3": (base[1::2, ::3], False),  # spans > 2x its data: copied
        "broadcast": (np.broadcast_to(base[0], (1000, 10)), True),
        "broadcast_col": (np.broadcast_to(base[:, :1], (12, 500)), True),
        "negative_rows": (base[::-1], False),
        "negative_both": (base[::-2, ::-1], False),
        "size_one_dims": (base[2:5, None, :], True),
        "column": (base[:, 3:4], False),  # spans the whole array: copied
        "3d_permuted": (RNG.standard_normal((3, 4, 5)).transpose(2, 0, 1), True),
    }


@pytest.mark.parametrize("name", list(layouts()))
def test_non_contiguous_inputs(client, name):
    x, zero_copy = layouts()[name]
    copies_before = _copy_counters()[0]
    r = client.exec("neg", {"0": x})["output"]
    copies_after = _copy_counters()[0]
    np.testing.assert_array_equal(r, -x)
    assert r.shape == x.shape and r.dtype == x.dtype
    assert copies_after - copies_before == (0 if zero_copy else 1)


def test_non_contiguous_matmul(client):
    a = RNG.standard_normal((40, 30))
    b = RNG.standard_normal((50, 40))
    r = client.exec("matmul", {"0": a.T, "1": b[::2].T[:, :10]})["output"]
    np.testing.assert_allclose(r, a.T @ b[::2].T[:, :10], rtol=1e-12)


def test_readonly_input(client):
    x = np.arange(6, dtype=np.int64)
    x.setflags(write=False)
    r = client.exec("neg", {"0": x})["output"]
    np.testing.assert_array_equal(r, -x)
    assert r.flags.writeable


def test_zero_d(client):
    r = client.exec("neg", {"0": np.float32(3.5)})["output"]
    assert r.shape == () and r.dtype == np.float32 and r == -3.5
    r = client.exec("add", {"0": np.array(2, np.int64), "1": np.array(5, np.int64)})["output"]
    assert r.shape == () and r.dtype == np.int64 and r == 7
    s = client.exec("sum", {"0": np.arange(10, dtype=np.float64)})["output"]
    assert s.shape == () and s == 45.0


@pytest.mark.parametrize("shape", [(0,), (0, 3), (4, 0, 2)])
def test_empty(client, shape):
    x = np.zeros(shape, np.float32)
    r = client.exec("neg", {"0": x})["output"]
    assert r.shape == shape and r.dtype == np.float32 and r.size == 0


def test_empty_matmul(client):
    r = client.exec("matmul", {"0": np.zeros((0, 3)), "1": np.ones((3, 2))})["output"]
    assert r.shape == (0, 2) and r.dtype == np.float64
    r = client.exec("matmul", {"0": np.zeros((2, 0)), "1": np.ones((0, 4))})["output"]
    np.testing.assert_array_equal(r, np.zeros((2, 4)))


# ------------------------------------------------------------ results

def test_large_results_are_not_copied(client):
    x = RNG.standard_normal((512, 512)).astype(np.float32)  # 1 MiB
    before = _copy_counters()
    r = client.exec("neg", {"0": x})["output"]
    after = _copy_counters()
    assert after == before, "neither the input nor the result was copied"
    np.testing.assert_array_equal(r, -x)
    # numpy keeps the object it read `__array_struct__` from as the base
    # (with the interface capsule, in a tuple, in numpy 2).
    owner = r.base[0] if isinstance(r.base, tuple) else r.base
    assert type(owner).__name__ == "_ResultBuffer"
    assert owner.nbytes == x.nbytes
    assert r.flags.writeable and r.flags.c_contiguous and r.flags.owndata is False
    assert r.ctypes.data % 16 == 0, "result buffers are aligned"


def test_huge_page_results_are_not_copied_and_stay_writable(client):
    # 2 MiB and more: read into a buffer of the pool, handed to numpy as is.
    x = RNG.standard_normal((3, 1024, 1024)).astype(np.float32)  # 12 MiB
    for _ in range(3):  # the second and third reuse pooled buffers
        before = _copy_counters()
        r = client.exec("neg", {"0": x})["output"]
        assert _copy_counters() == before, "neither the input nor the result was copied"
        np.testing.assert_array_equal(r, -x)
        assert r.flags.writeable and r.flags.c_contiguous and r.flags.owndata is False
        r += x  # writes through to the received buffer
        assert not r.any()
        keep = r  # alive while the next call receives into other memory
    r2 = client.exec("neg", {"0": x})["output"]
    np.testing.assert_array_equal(r2, -x)
    assert not keep.any(), "a live result's memory is never reused"


@pytest.mark.parametrize("op,ref", [("exp", np.exp), ("sqrt", np.sqrt), ("tanh", np.tanh),
                                    ("sigmoid", lambda v: 1 / (1 + np.exp(-v)))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_unary_ops_give_numpys_values(client, op, ref, dtype):
    # 4 MiB: on a CPU server these run in place in the received buffer.
    x = RNG.uniform(0.1, 2.0, size=(1 << 22) // np.dtype(dtype).itemsize).astype(dtype)
    keep = x.copy()
    for _ in range(2):
        r = client.exec(op, {"0": x})["output"]
        assert r.dtype == dtype and r.shape == x.shape
        np.testing.assert_allclose(r, ref(x.astype(np.float64)), rtol=2e-6 if dtype == np.float32 else 1e-12)
    np.testing.assert_array_equal(x, keep)


def test_small_results_are_copied_once(client):
    x = np.ones((4, 4), np.float32)
    before = _copy_counters()[1]
    client.exec("neg", {"0": x})
    assert _copy_counters()[1] - before == 1


def test_results_are_independent_writable_arrays(client):
    x = RNG.standard_normal((256, 256))
    out = client.exec("svd", {"0": x})
    u, s, vh = out["0"], out["1"], out["2"]
    for a in (u, s, vh):
        assert a.flags.writeable
    assert not np.shares_memory(u, vh)
    u[:] = 0
    s += 1
    assert (u == 0).all()
    # The arrays outlive the client and the dict they came in.
    del out
    client.close()
    assert vh.sum() == vh.sum()
    vh *= 2


def test_results_keep_their_memory_after_gc(client):
    import gc

    r = client.exec("neg", {"0": np.arange(100_000, dtype=np.float64)})["output"]
    view = r[10:20]
    del r
    gc.collect()
    np.testing.assert_array_equal(view, -np.arange(10, 20, dtype=np.float64))


# ------------------------------------------------------------ unsupported dtypes

@pytest.mark.parametrize("arr", [
    np.arange(3, dtype=np.uint16),
    np.arange(3, dtype=np.uint64),
    np.array(["a", "b"]),
    np.array([object(), 1], dtype=object),
    np.array(["2020-01-01"], dtype="datetime64[D]"),
], ids=["uint16", "uint64", "str", "object", "datetime"])
def test_unsupported_input_dtypes_raise_invalid_tensor(client, arr):
    with pytest.raises(mymps.InvalidTensorError) as e:
        client.exec("neg", {"0": arr})
    assert str(arr.dtype) in str(e.value)
    assert "supported" in str(e.value)
    assert e.value.code == "invalid_tensor"
    # The client is still fine.
    assert client.exec("neg", {"0": np.ones(2)})["output"].tolist() == [-1, -1]


def _rss_mb():
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="needs /proc")
def test_no_leak_of_inputs_or_results(client):
    x = RNG.standard_normal(1 << 20)  # 8 MiB in, 8 MiB out
    for _ in range(5):
        client.exec("neg", {"0": x})
    before = _rss_mb()
    for _ in range(40):  # 1.3 GB through the client in all: a leak would show
        r = client.exec("neg", {"0": x})["output"]
        y = np.broadcast_to(x[:1000], (1000, 1000))
        client.exec("mul", {"0": y}, other=2)
    after = _rss_mb()
    assert after - before < 150, (before, after)
    np.testing.assert_array_equal(r, -x)
