"""The client-api.md contract, against a real server: the snippets its users
run, the constructor, the context manager, list_ops, health and stats."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import mymps
from mymps import MympsClient

RNG = np.random.default_rng(1234)


def expected_device():
    """The device the session's server was started on (conftest: cpu unless
    MYMPS_TEST_DEVICE says otherwise; "cuda" means "cuda:0")."""
    import os

    d = os.environ.get("MYMPS_TEST_DEVICE", "cpu")
    return {"cuda": "cuda:0", "auto": None}.get(d, d)


def check_device(actual):
    want = expected_device()
    if want is None:
        assert actual in ("cpu", "mps") or actual.startswith("cuda:"), actual
    else:
        assert actual == want


@pytest.fixture(params=["tcp", "zmq"])
def any_client(request):
    """A client over each transport (the session's TCP and ZeroMQ servers)."""
    server = request.getfixturevalue("mymps_server" if request.param == "tcp" else "zmq_server")
    c = MympsClient(server.host, server.port, transport=request.param)
    assert c.transport == request.param
    try:
        yield c
    finally:
        c.close()


def test_matmul_snippet(any_client):
    client = any_client
    a = RNG.standard_normal((64, 128)).astype(np.float32)
    b = RNG.standard_normal((128, 32)).astype(np.float32)
    out = client.exec("matmul", {"0": a, "1": b})
    assert list(out) == ["output"]
    r = out["output"]
    assert r.shape == (64, 32) and r.dtype == np.float32
    np.testing.assert_allclose(r, a @ b, rtol=1e-4, atol=1e-4)


def test_softmax_snippet_rows_sum_to_one(any_client):
    client = any_client
    x = RNG.standard_normal((10, 50)).astype(np.float32)
    p = client.exec("softmax", {"0": x}, dim=-1)["output"]
    assert p.shape == x.shape and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=-1), np.ones(10), rtol=1e-5)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(p, e / e.sum(axis=-1, keepdims=True), rtol=1e-5, atol=1e-6)


def test_svd_snippet_reconstructs(any_client):
    client = any_client
    m = RNG.standard_normal((8, 5))
    out = client.exec("svd", {"0": m}, full_matrices=False)
    assert sorted(out) == ["0", "1", "2"]
    u, s, vh = out["0"], out["1"], out["2"]
    assert u.shape == (8, 5) and s.shape == (5,) and vh.shape == (5, 5)
    assert u.dtype == s.dtype == vh.dtype == np.float64
    np.testing.assert_allclose(u @ np.diag(s) @ vh, m, atol=1e-10)
    np.testing.assert_allclose(s, np.linalg.svd(m, compute_uv=False), rtol=1e-10)


def test_conv2d_snippet(any_client):
    client = any_client
    x = RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)
    w = RNG.standard_normal((16, 3, 3, 3)).astype(np.float32)
    y = client.exec("conv2d", {"input": x, "weight": w})["output"]
    assert y.shape == (1, 16, 30, 30) and y.dtype == np.float32
    # One output position computed by hand.
    want = (x[0, :, 4:7, 9:12] * w[7]).sum()
    np.testing.assert_allclose(y[0, 7, 4, 9], want, rtol=1e-4, atol=1e-4)


def test_conv2d_keyword_scalars(client):
    x = RNG.standard_normal((2, 3, 16, 16)).astype(np.float32)
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y = client.exec("conv2d", {"input": x, "weight": w}, stride=[2, 2], padding=[1, 1])["output"]
    assert y.shape == (2, 4, 8, 8)
    y2 = client.exec("conv2d", {"input": x, "weight": w}, padding="same")["output"]
    assert y2.shape == (2, 4, 16, 16)


def test_inputs_as_keywords_and_lists(client):
    a = RNG.standard_normal((3, 4)).astype(np.float32)
    b = RNG.standard_normal((4, 2)).astype(np.float32)
    by_name = client.exec("matmul", {"input": a, "other": b})["output"]
    by_list = client.exec("matmul", [a, b])["output"]
    by_int_keys = client.exec("matmul", {0: a, 1: b})["output"]
    by_kw_inputs = client.exec(op="matmul", inputs={"0": a, "1": b})["output"]
    np.testing.assert_array_equal(client.exec("neg", a)["output"], -a)  # one array
    for r in (by_list, by_int_keys, by_kw_inputs):
        np.testing.assert_array_equal(r, by_name)
    # Python lists and scalars are converted with numpy.asarray.
    r = client.exec("add", {"0": [[1.0, 2.0]], "1": [[10.0, 20.0]]})["output"]
    np.testing.assert_array_equal(r, [[11.0, 22.0]])


def test_kwargs_of_every_scalar_kind(client):
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    # list
    r = client.exec("sum", {"0": x}, dim=[0, 2], keepdim=True)["output"]
    np.testing.assert_array_equal(r, x.sum(axis=(0, 2), keepdims=True))
    # tuple, numpy integers and a numpy bool
    r = client.exec("sum", {"0": x}, dim=(np.int64(1),), keepdim=np.bool_(False))["output"]
    np.testing.assert_array_equal(r, x.sum(axis=1))
    # None, str
    r = client.exec("div", {"0": x, "1": np.full_like(x, 3)}, rounding_mode=None)["output"]
    np.testing.assert_allclose(r, x / 3, rtol=1e-6)
    r = client.exec("div", {"0": x, "1": np.full_like(x, 3)}, rounding_mode="floor")["output"]
    np.testing.assert_array_equal(r, np.floor(x / 3))
    # float and int scalars
    r = client.exec("add", {"0": x, "1": x}, alpha=0.5)["output"]
    np.testing.assert_allclose(r, x * 1.5)
    r = client.exec("mul", {"0": x}, other=2)["output"]
    np.testing.assert_array_equal(r, x * 2)
    # a numpy array as a list argument
    r = client.exec("reshape", {"0": x}, shape=np.array([4, 6]))["output"]
    np.testing.assert_array_equal(r, x.reshape(4, 6))


def test_context_manager_closes(mymps_server):
    with MympsClient(mymps_server.host, mymps_server.port) as c:
        assert isinstance(c, MympsClient)
        assert not c.closed
        r = c.exec("neg", {"0": np.ones(3, np.float32)})["output"]
        np.testing.assert_array_equal(r, -np.ones(3, np.float32))
    assert c.closed
    with pytest.raises(mymps.MympsConnectionError):
        c.exec("neg", {"0": np.ones(3, np.float32)})


def test_context_manager_closes_on_exception(mymps_server):
    with pytest.raises(KeyError):
        with MympsClient(mymps_server.host, mymps_server.port) as c:
            raise KeyError("boom")
    assert c.closed


def test_close_is_idempotent(mymps_server):
    c = MympsClient(mymps_server.host, mymps_server.port)
    c.close()
    c.close()
    assert c.closed
    with pytest.raises(mymps.MympsConnectionError):
        c.health()


def test_constructor_defaults_match_the_contract():
    sig = inspect.signature(MympsClient)
    params = sig.parameters
    assert list(params)[:3] == ["host", "port", "timeout"]
    assert params["host"].default == "127.0.0.1"
    assert params["port"].default == 5555
    assert params["timeout"].default == 300.0
    assert params["transport"].default == "tcp"
    assert params["transport"].kind is inspect.Parameter.KEYWORD_ONLY
    assert mymps.DEFAULT_PORT == 5555 and mymps.DEFAULT_HOST == "127.0.0.1"


def test_constructor_positional_and_properties(mymps_server):
    c = MympsClient(mymps_server.host, mymps_server.port, 12.5, transport="tcp")
    try:
        assert c.host == mymps_server.host
        assert c.port == mymps_server.port
        assert c.timeout == 12.5
        assert c.transport == "tcp"
        check_device(c.device)
        assert c.server_version.startswith("mymps/")
        assert repr(c).startswith("MympsClient(host='127.0.0.1'")
    finally:
        c.close()
    c = MympsClient(mymps_server.host, mymps_server.port, timeout=None)
    try:
        assert c.timeout is None
        assert c.health()["status"] == "ok"
    finally:
        c.close()


def test_list_ops_sorted(client):
    ops = client.list_ops()
    assert isinstance(ops, list) and all(isinstance(o, str) for o in ops)
    assert ops == sorted(ops)
    assert len(ops) == len(set(ops))
    for op in ("matmul", "softmax", "svd", "conv2d"):
        assert op in ops
    assert len(ops) == client.health()["ops"]


def test_describe_op(client):
    d = client.describe_op("softmax")
    assert d["name"] == "softmax"
    assert d["signature"].startswith("softmax(")
    names = [p["name"] for p in d["params"]]
    assert names[:2] == ["input", "dim"]
    assert d["params"][1]["required"] is True
    assert d["outputs"] == ["output"]
    with pytest.raises(mymps.UnknownOpError):
        client.describe_op("no_such_op")


def test_health_fields(client):
    h = client.health()
    assert set(h) == {
        "status", "version", "protocol", "backend", "device", "torch_version",
        "models_loaded", "ops", "uptime_s", "resident_tensors", "resident_bytes",
    }
    assert h["status"] == "ok"
    check_device(h["device"])
    assert h["device"] == client.device
    assert h["backend"] == "tch"
    assert h["torch_version"].startswith("2.")
    assert h["version"] == mymps.__version__
    assert isinstance(h["models_loaded"], int) and h["models_loaded"] == 0
    assert isinstance(h["protocol"], int) and h["protocol"] >= 1
    assert isinstance(h["uptime_s"], float) and h["uptime_s"] >= 0


def test_stats_fields(client):
    s = client.stats()
    assert set(s) == {
        "cpu_percent", "cpu_count", "load_avg", "memory_total_gb", "memory_used_gb",
        "memory_percent", "process_rss_mb", "process_cpu_percent", "device",
        "accelerator_memory_total_mb", "accelerator_memory_used_mb",
        "accelerator_memory_free_mb",
    }
    assert isinstance(s["cpu_count"], int) and s["cpu_count"] >= 1
    assert isinstance(s["load_avg"], list) and len(s["load_avg"]) == 3
    assert all(isinstance(x, float) for x in s["load_avg"])
    assert 0 < s["memory_used_gb"] <= s["memory_total_gb"]
    assert 0 <= s["memory_percent"] <= 100
    assert s["process_rss_mb"] > 0
    check_device(s["device"])
    if s["device"] == "cpu":  # the CPU reports no accelerator memory
        assert s["accelerator_memory_total_mb"] is None
    else:
        assert s["accelerator_memory_total_mb"] > 0


def test_help_is_useful():
    doc = MympsClient.exec.__doc__
    for needle in ('"0", "1"', "**kwargs", "dim=-1", "Returns", "Raises", "OpError",
                   "bfloat16"):
        assert needle in doc, needle
    assert str(inspect.signature(MympsClient.exec)) == "(self, /, op, inputs=None, **kwargs)"
    for name in ("list_ops", "health", "stats", "close", "describe_op"):
        assert getattr(MympsClient, name).__doc__, name
    assert "thread" in MympsClient.__doc__.lower()


def test_package_ships_type_stubs():
    from pathlib import Path

    pkg = Path(mymps.__file__).parent
    for f in ("py.typed", "__init__.pyi", "_native.pyi"):
        assert (pkg / f).is_file(), f


def test_none_input_leaves_an_optional_tensor_out(client):
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    w = RNG.standard_normal((2, 3, 3, 3)).astype(np.float32)
    b = np.array([10.0, -10.0], np.float32)
    no_bias = client.exec("conv2d", {"input": x, "weight": w, "bias": None})["output"]
    as_kwarg = client.exec("conv2d", {"input": x, "weight": w}, bias=None)["output"]
    with_bias = client.exec("conv2d", {"input": x, "weight": w, "bias": b})["output"]
    np.testing.assert_array_equal(no_bias, as_kwarg)
    np.testing.assert_allclose(with_bias - no_bias, np.broadcast_to(b[None, :, None, None], no_bias.shape), rtol=1e-5, atol=1e-4)
    with pytest.raises(mymps.BadArgumentError, match="both"):
        client.exec("conv2d", {"input": x, "weight": w, "bias": None}, bias=None)


def test_stubs_match_the_runtime(tmp_path):
    """mypy's stubtest: the .pyi files describe what the module really has."""
    import subprocess
    import sys

    pytest.importorskip("mypy", reason="mypy is not installed (pip install mypy)")
    out = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--ignore-disjoint-bases", "mymps"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_quickstart_example_runs(mymps_server):
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "python" / "client_quickstart.py"
    out = subprocess.run(
        [sys.executable, str(example), mymps_server.host, str(mymps_server.port)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "matmul: (64, 32) float32" in out.stdout
    assert "svd reconstructs: True" in out.stdout
    assert "conv2d: (1, 16, 30, 30)" in out.stdout
    assert "libtorch said:" in out.stdout


def test_large_tensors_round_trip_exactly(client):
    """Tensors of several MiB (read into memory of their own on the server:
    pinned memory on a CUDA server) come back exact."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 1 << 21)).astype(np.float32)  # 24 MiB
    np.testing.assert_array_equal(client.exec("neg", {"0": x})["output"], -x)
    i = rng.integers(-(1 << 40), 1 << 40, size=(1 << 19) + 3, dtype=np.int64)  # 4 MiB + 24 B
    out = client.exec("add", {"0": i, "1": i})["output"]
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, i + i)
    a = rng.standard_normal((1024, 1024)).astype(np.float32)
    np.testing.assert_allclose(client.exec("matmul", {"0": a, "1": a})["output"], a @ a, rtol=2e-3, atol=2e-3)
