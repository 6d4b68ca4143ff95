"""Server-resident tensors from Python: RemoteTensor (put, keep=, get, free,
share, remote), graphs, caps, garbage collection, and the cluster, against
real servers."""

from __future__ import annotations

import gc
import os
import re
import subprocess
import time

import numpy as np
import pytest

import mymps
from mymps import MympsClient, MympsCluster, RemoteTensor

from conftest import server_binary

RNG = np.random.default_rng(16)

try:
    import ml_dtypes

    BF16 = [np.dtype(ml_dtypes.bfloat16)]
except ImportError:  # pragma: no cover - ml_dtypes is in the test venv
    BF16 = []

DTYPES = [np.dtype(d) for d in ("bool", "uint8", "int8", "int16", "int32", "int64",
                                "float16", "float32", "float64", "complex64",
                                "complex128")] + BF16


def resident(c) -> int:
    return c.health()["resident_tensors"]


def wait_resident(c, n: int, timeout: float = 10.0) -> int:
    """Waits (bounded) until the server holds `n` resident tensors."""
    deadline = time.monotonic() + timeout
    while True:
        r = resident(c)
        if r == n or time.monotonic() > deadline:
            return r
        time.sleep(0.02)


def requests_served(server, kind: str) -> int:
    """How many requests of `kind` the server answered (its metrics)."""
    out = subprocess.run(
        [str(server_binary()), "metrics", "--addr", server.addr],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    m = re.search(r'^mymps_requests_total\{kind="%s"\} (\S+)$' % kind, out, re.M)
    return int(float(m.group(1))) if m else 0


def frees_served(server) -> int:
    """How many `free` requests the server answered (its metrics)."""
    return requests_served(server, "free")


def test_a_chain_kept_on_the_server_gives_the_bytes_of_the_chain_shipped(client):
    base = resident(client)
    x = RNG.standard_normal((64, 64)).astype(np.float32)
    w = RNG.standard_normal((64, 64)).astype(np.float32)

    # Shipped, as always: every step sends its input and gets arrays back.
    shipped = x
    for _ in range(4):
        out = client.exec("matmul", {"0": shipped, "1": w})
        assert list(out) == ["output"] and isinstance(out["output"], np.ndarray)
        shipped = client.exec("relu", {"0": out["output"]})["output"]

    # Kept: one upload each, every step on handles, one download.
    tx, tw = client.put(x), client.put(w)
    assert isinstance(tx, RemoteTensor)
    assert (tx.shape, tx.dtype, tx.device) == ((64, 64), np.dtype("float32"), client.device)
    assert tx.nbytes == x.nbytes and tx.ndim == 2 and isinstance(tx.handle, int)
    assert re.fullmatch(r"RemoteTensor\(handle=\d+, shape=\(64, 64\), dtype=float32, "
                        r"device='\w+(:\d+)?'\)", repr(tx)), repr(tx)
    cur = tx
    for _ in range(4):
        h = client.exec("matmul", {"0": cur, "1": tw}, keep=True)["output"]
        assert isinstance(h, RemoteTensor) and h.shape == (64, 64)
        cur = client.exec("relu", {"0": h}, keep=True)["output"]
    kept = client.get(cur)
    assert kept.dtype == shipped.dtype and kept.tobytes() == shipped.tobytes()
    assert cur.numpy().tobytes() == shipped.tobytes()
    assert np.asarray(cur).tobytes() == shipped.tobytes()
    # Inputs mix arrays and RemoteTensors; without keep the result is data.
    y = client.exec("matmul", {"0": x, "1": tw})["output"]
    assert isinstance(y, np.ndarray)
    np.testing.assert_array_equal(y, client.exec("matmul", {"0": x, "1": w})["output"])
    # One request: the same chain as a graph, inline, registered, kept.
    g = client.graph()
    gx = g.input("x")
    h = gx
    for _ in range(4):
        h = g.relu(g.matmul(h, tw))
    g.output("y", h)
    assert g.run({"x": x})["y"].tobytes() == shipped.tobytes()
    g.register()
    assert isinstance(g.id, int)
    for _ in range(3):
        assert g.run({"x": tx})["y"].tobytes() == shipped.tobytes()
    ky = g.run({"x": tx}, keep=True)["y"]
    assert isinstance(ky, RemoteTensor) and client.get(ky).tobytes() == shipped.tobytes()

    # keep names some results of a tuple: those are remote, the others data.
    m = RNG.standard_normal((6, 4))
    svd = client.exec("svd", {"0": m}, full_matrices=False, keep=["0", "2"])
    assert list(svd) == ["0", "1", "2"]
    assert isinstance(svd["0"], RemoteTensor) and isinstance(svd["1"], np.ndarray)
    u, s, vh = client.get([svd["0"], svd["1"], svd["2"]])
    np.testing.assert_allclose(u @ np.diag(s) @ vh, m, atol=1e-10)
    assert client.get({"s": svd["1"]})["s"] is svd["1"]  # arrays pass through

    # Free what is left in one request: the server is back to its baseline.
    made = [tx, tw, cur, ky, svd["0"], svd["2"]]
    assert resident(client) > base
    del h
    n = client.free(made)
    assert n == len(made)
    assert all(t.freed for t in made)
    assert client.free(made) == 0  # freed already
    with pytest.raises(mymps.UnknownTensorError, match="was freed"):
        client.exec("neg", {"0": tx})
    with pytest.raises(mymps.UnknownTensorError):
        tx.numpy()
    gc.collect()
    assert wait_resident(client, base) == base
    still = client.exec("neg", {"0": np.ones(3)})["output"]
    np.testing.assert_array_equal(still, -np.ones(3))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_as_a_handle(client, dtype):
    n = 7 * 3 * dtype.itemsize
    raw = (np.arange(n) % (2 if dtype == np.bool_ else 61)).astype(np.uint8)
    a = raw.view(dtype).reshape(7, 3)
    t = client.put(a)
    assert (t.shape, t.dtype) == ((7, 3), dtype)
    back = t.numpy()
    assert back.dtype == dtype and back.tobytes() == a.tobytes()
    kt = client.exec("transpose", {"0": t}, dim0=0, dim1=1, keep="output")["output"]
    assert (kt.shape, kt.dtype) == ((3, 7), dtype)
    shipped = client.exec("transpose", {"0": a}, dim0=0, dim1=1)["output"]
    kept = client.get(kt)
    assert kept.dtype == shipped.dtype
    assert np.ascontiguousarray(kept).tobytes() == np.ascontiguousarray(shipped).tobytes()
    assert client.free([t, kt]) == 2


def test_put_many_and_infer_keep(client):
    ts = client.put_many({"a": np.ones(3, np.float32), "b": np.arange(4)})
    assert set(ts) == {"a", "b"} and ts["b"].dtype == np.int64
    lst = client.put_many([np.zeros(2), np.ones(2)])
    assert [t.shape for t in lst] == [(2,), (2,)]
    np.testing.assert_array_equal(client.get(lst)[1], np.ones(2))
    assert client.put_many([]) == []
    with pytest.raises(mymps.BadArgumentError, match="RemoteTensor"):
        client.put(ts["a"])
    with pytest.raises(mymps.BadArgumentError, match="keep"):
        client.exec("neg", {"0": ts["a"]}, keep=3)
    # A lone RemoteTensor is the one positional argument, as an array is.
    np.testing.assert_array_equal(client.exec("neg", ts["a"])["output"], -np.ones(3))
    with pytest.raises(mymps.ModelNotFoundError):
        client.infer("no-such-model", {"0": ts["a"]}, keep=True)
    client.free(list(ts.values()) + lst)


def test_another_clients_handle_is_refused_and_a_shared_one_is_not(mymps_server):
    a = MympsClient(mymps_server.host, mymps_server.port)
    b = MympsClient(mymps_server.host, mymps_server.port)
    try:
        base = resident(b)
        t = a.put(np.array([1.0, 2.0, 3.0], np.float32))
        u = a.put(np.ones(2, np.float32))
        # b's connection may not use a's handle: refused (not sent, since the
        # same number could name another tensor there).
        with pytest.raises(mymps.UnknownTensorError, match="another MympsClient") as e:
            b.exec("neg", {"0": t})
        assert "input '0'" in str(e.value) and "share" in str(e.value)
        with pytest.raises(mymps.UnknownTensorError):
            b.get(t)
        with pytest.raises(mymps.UnknownTensorError):
            b.free(t)
        # Shared under a name: every connection may use it, and it outlives
        # the connection that made it.
        name = f"weights-{os.getpid()}"
        assert a.share(t, name) is t and t.name == name
        np.testing.assert_array_equal(b.exec("neg", {"0": t})["output"], [-1, -2, -3])
        w = b.remote(name)
        assert (w.handle, w.shape, w.dtype, w.name) == (None, (3,), np.float32, name)
        np.testing.assert_array_equal(b.get(w), [1, 2, 3])
        with pytest.raises(mymps.BadArgumentError, match="already shared"):
            a.share(t, name + "-2")
        with pytest.raises(mymps.BadArgumentError):
            a.share(u, name)  # the name is taken
        del t
        gc.collect()
        a.close()  # u goes with the connection; the shared one stays
        assert wait_resident(b, base + 1) == base + 1
        np.testing.assert_array_equal(b.exec("add", {"0": w, "1": w})["output"], [2, 4, 6])
        assert b.free(w) == 1
        assert resident(b) == base
        # Freed by name: the server says so now, to a new remote(name).
        with pytest.raises(mymps.UnknownTensorError, match="was freed"):
            b.get(w)
        with pytest.raises(mymps.UnknownTensorError, match="not shared"):
            b.remote(name)
        with pytest.raises(mymps.MympsConnectionError):
            u.numpy()  # its client is closed
        del u  # a closed client's handle just goes
        b.health()
    finally:
        a.close()
        b.close()


def test_remote_by_name_knows_shape_dtype_and_device_without_a_fetch(mymps_server):
    a = MympsClient(mymps_server.host, mymps_server.port)
    b = MympsClient(mymps_server.host, mymps_server.port)
    try:
        x = RNG.standard_normal((4, 5))
        name = f"described-{os.getpid()}"
        a.share(a.put(x), name)
        fetches = requests_served(mymps_server, "fetch")
        describes = requests_served(mymps_server, "describe")
        w = b.remote(name)
        assert isinstance(w, RemoteTensor)
        assert (w.shape, w.dtype, w.device) == ((4, 5), np.dtype("float64"), b.device)
        assert (w.ndim, w.nbytes, w.name, w.handle, w.freed) == (2, x.nbytes, name, None, False)
        assert repr(w) == (f"RemoteTensor(name='{name}', shape=(4, 5), dtype=float64, "
                           f"device='{b.device}')"), repr(w)
        # One describe, no data: nothing was fetched.
        assert requests_served(mymps_server, "describe") == describes + 1
        assert requests_served(mymps_server, "fetch") == fetches
        # It is used by name, from b's connection.
        np.testing.assert_array_equal(b.exec("neg", {"0": w})["output"], -x)
        assert b.get(w).tobytes() == x.tobytes()
        assert requests_served(mymps_server, "fetch") == fetches + 1
        # An unknown name: a typed error at once, and the client goes on.
        with pytest.raises(mymps.UnknownTensorError, match=r"'no-such-tensor' is not shared"):
            b.remote("no-such-tensor")
        with pytest.raises(mymps.BadArgumentError):
            b.remote("")
        # Dropping it frees nothing (it is not b's); freeing it does.
        base = resident(b)
        del w
        gc.collect()
        b.health()
        assert resident(b) == base
        assert b.free(b.remote(name)) == 1
        assert resident(b) == base - 1
    finally:
        a.close()
        b.close()


def test_caps_give_typed_errors_and_the_client_goes_on(server_factory):
    s = server_factory("--max-resident-per-connection", "3",
                       "--max-resident-bytes-per-connection", "1000000",
                       "--max-resident", "4")
    c = MympsClient(s.host, s.port)
    d = MympsClient(s.host, s.port)
    small = np.ones(4, np.float32)
    held = [c.put(small) for _ in range(3)]
    with pytest.raises(mymps.LimitReachedError, match="at most 3"):
        c.put(small)
    # A kept result counts too; nothing is left behind.
    with pytest.raises(mymps.LimitReachedError):
        c.exec("neg", {"0": held[0]}, keep=True)
    assert resident(c) == 3
    # Bytes of one connection.
    c.free(held.pop())
    with pytest.raises(mymps.LimitReachedError, match="bytes"):
        c.put(np.zeros(300_000, np.float32))
    # The server's total: 2 of c's and 2 of d's.
    e = d.put_many([small, small])
    with pytest.raises(mymps.LimitReachedError, match="server"):
        d.put(small)
    # Both clients go on.
    np.testing.assert_array_equal(c.exec("neg", {"0": held[0]})["output"], -small)
    np.testing.assert_array_equal(d.exec("add", {"0": e[0], "1": e[1]})["output"], 2 * small)
    assert resident(c) == 4
    c.close()
    d.close()

    s2 = server_factory("--max-resident-bytes", "1000")
    c = MympsClient(s2.host, s2.port)
    first = c.put(np.zeros(200, np.float32))
    with pytest.raises(mymps.LimitReachedError, match="bytes of the server"):
        c.put(np.zeros(200, np.float32))
    # Dropped, it is freed beside the next call (the server may run the two
    # in either order); after that call, there is room.
    del first
    c.health()
    c.put(np.zeros(200, np.float32))
    c.close()


def test_a_graph_is_checked_whole_and_errors_name_the_step(client):
    base = resident(client)
    x = RNG.standard_normal((4, 4)).astype(np.float32)

    g = client.graph()
    h = g.neg(g.input("x"))
    g.output("y", g.frobnicate(h))  # line of step 1
    with pytest.raises(mymps.UnknownOpError) as e:
        g.run({"x": x}, keep=True)
    msg = str(e.value)
    assert msg.startswith("step 1 (frobnicate)"), msg
    assert "step 1 is g.frobnicate(step0) at test_resident.py:" in msg, msg

    g = client.graph()
    g.output("y", g.softmax(g.input("x"), dmi=-1))
    with pytest.raises(mymps.BadArgumentError, match=r"^step 0 \(softmax\)"):
        g.register()
    assert g.id is None

    # A result a step does not have (svd gives "0", "1", "2").
    g = client.graph()
    g.output("y", g.neg(g.svd(g.input("x"))))
    with pytest.raises(mymps.BadArgumentError, match="result 'output' of step 0"):
        g.run({"x": x})

    # A step that fails as it runs (shapes) is named too.
    g = client.graph()
    g.output("z", g.matmul(g.relu(g.input("x")), g.input("y")))
    with pytest.raises(mymps.OpError) as e:
        g.run({"x": x, "y": np.ones((3, 5), np.float32)})
    assert str(e.value).startswith("step 1 (matmul): "), str(e.value)
    assert "step 1 is g.matmul(step0, y) at test_resident.py:" in str(e.value)

    # Inputs missing or unknown.
    with pytest.raises(mymps.BadArgumentError, match="input 'y' is not given"):
        g.run({"x": x})
    with pytest.raises(mymps.BadArgumentError, match="'w' is not an input"):
        g.run({"x": x, "y": x, "w": x})

    # Mistakes the builder catches itself.
    with pytest.raises(mymps.BadArgumentError, match="no outputs"):
        client.graph().run()
    other = client.graph()
    with pytest.raises(mymps.BadArgumentError, match="another graph"):
        g.neg(other.input("x"))
    with pytest.raises(mymps.BadArgumentError, match="already"):
        g.output("z", g.input("x"))
    g.register()
    with pytest.raises(mymps.BadArgumentError, match="registered"):
        g.neg(g.input("x"))

    # Nothing of those graphs was kept, and the client goes on.
    assert resident(client) == base
    np.testing.assert_array_equal(client.exec("neg", {"0": x})["output"], -x)


def test_graph_builder_results_against_numpy(client):
    a = RNG.standard_normal((8, 5))
    b = RNG.standard_normal((5, 3))
    tb = client.put(b)
    bias = np.arange(3.0)

    g = client.graph()
    x = g.input("x")
    r = g.svd(x, full_matrices=False)
    u, s, vh = r[0], r[1], r[2]
    back = g.matmul(g.mul(u, s), vh)             # u @ diag(s) @ vh == x
    y = g.add(g.matmul(back, tb), bias)          # bound: a RemoteTensor, an array
    g.output("y", y)
    g.output("s", s)
    assert len(g.steps) == 5 and "svd(x, full_matrices=False)" in g.steps[0]
    assert "5 steps" in repr(g)
    out = g.run({"x": a})
    np.testing.assert_allclose(out["y"], a @ b + bias, atol=1e-10)
    np.testing.assert_allclose(out["s"], np.linalg.svd(a, compute_uv=False), atol=1e-10)
    g.register()
    for _ in range(3):
        out = g.run({"x": client.put(a)}, keep="y")
        assert isinstance(out["y"], RemoteTensor) and isinstance(out["s"], np.ndarray)
        np.testing.assert_allclose(out["y"].numpy(), a @ b + bias, atol=1e-10)
    # Tensor keyword arguments: nodes and RemoteTensors.
    g = client.graph()
    img = g.input("img")
    g.output("c", g.conv2d(img, weight=client.put(np.ones((2, 1, 3, 3), np.float32))))
    c = g.run({"img": np.ones((1, 1, 5, 5), np.float32)})["c"]
    np.testing.assert_array_equal(c, np.full((1, 2, 3, 3), 9, np.float32))


def test_handles_dropped_by_the_garbage_collector_are_freed_in_few_requests(client, mymps_server):
    base = resident(client)
    frees = frees_served(mymps_server)

    class Holder:
        """A reference cycle: only the cyclic garbage collector frees it."""

        def __init__(self, t):
            self.t = t
            self.me = self

    gc.disable()
    try:
        ts = client.put_many([np.full(4, i, np.float32) for i in range(1000)])
        held = [Holder(t) for t in ts]
        del ts
        assert resident(client) == base + 1000
        del held
        assert resident(client) == base + 1000  # cycles: nothing dropped yet
        gc.collect()
    finally:
        gc.enable()
    # The next call sends them, in one request beside it.
    assert wait_resident(client, base) == base
    assert frees_served(mymps_server) - frees <= 2

    # Many dropped and no call made: a thread of the client sends them
    # (checked through another connection, so that this client makes no
    # call meanwhile); the rest go with the next call.
    other = MympsClient(mymps_server.host, mymps_server.port)
    try:
        ts = [t for _ in range(5) for t in client.put_many([np.zeros(1, np.float32)] * 500)]
        assert resident(other) == base + 2500
        frees = frees_served(mymps_server)
        del ts
        deadline = time.monotonic() + 10
        # The thread sends until fewer than FREE_AT (1024) are queued.
        while resident(other) >= base + 1024 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert resident(other) < base + 1024
        client.health()
        assert wait_resident(other, base) == base
        assert frees_served(mymps_server) - frees <= 4
    finally:
        other.close()


def test_tensors_of_a_closed_client_just_go(mymps_server):
    probe = MympsClient(mymps_server.host, mymps_server.port)
    base = resident(probe)
    c = MympsClient(mymps_server.host, mymps_server.port)
    ts = [c.put(np.ones(8)) for _ in range(5)]
    assert resident(probe) == base + 5
    c.close()
    assert wait_resident(probe, base) == base  # freed with the connection
    with pytest.raises(mymps.MympsConnectionError):
        ts[0].numpy()
    del ts
    gc.collect()
    # A client dropped while its tensors live keeps its connection for them.
    c = MympsClient(mymps_server.host, mymps_server.port)
    t = c.put(np.arange(3.0))
    del c
    gc.collect()
    np.testing.assert_array_equal(t.numpy(), np.arange(3.0))
    del t
    gc.collect()
    assert wait_resident(probe, base) == base
    probe.close()


def test_cluster_handles_stay_on_their_host(server_factory):
    sa, sb = server_factory(), server_factory()
    with MympsCluster([sa.addr, sb.addr], timeout=20, health_interval=0.2) as cl:
        x = RNG.standard_normal((16, 16)).astype(np.float32)
        w = RNG.standard_normal((16, 16)).astype(np.float32)
        ts = [cl.put(x) for _ in range(4)]
        hosts = {t.host for t in ts}
        assert hosts == {sa.addr, sb.addr}, hosts  # least busy, taking turns
        tw = cl.put(w)
        tx = next(t for t in ts if t.host == tw.host)
        cur = tx
        for _ in range(3):
            cur = cl.exec("relu", {"0": cl.exec("matmul", {"0": cur, "1": tw}, keep=True)["output"]},
                          keep=True)["output"]
            assert cur.host == tw.host
        shipped = x
        for _ in range(3):
            shipped = cl.exec("relu", {"0": cl.exec("matmul", {"0": shipped, "1": w})["output"]})["output"]
        assert cl.get(cur).tobytes() == shipped.tobytes()
        # Tensors of two hosts in one call are refused.
        far = next(t for t in ts if t.host != tw.host)
        with pytest.raises(mymps.BadArgumentError, match="different hosts"):
            cl.exec("add", {"0": far, "1": tw})
        # get and free mix hosts.
        got = cl.get([far, tx])
        np.testing.assert_array_equal(got[0], x)
        np.testing.assert_array_equal(got[1], x)
        # A graph runs where its tensors are.
        g = cl.graph()
        g.output("y", g.relu(g.matmul(g.input("x"), tw)))
        g.register()
        for t in ts:
            if t.host == tw.host:
                # numpy's product, not the server's kernels: equal up to
                # rounding (a CUDA server sums in another order).
                np.testing.assert_allclose(g.run({"x": t})["y"], np.maximum(x @ w, 0),
                                           rtol=1e-5, atol=1e-5)
        # The host dies: its handles give a clear error naming it.
        dead = sb if tw.host == sb.addr else sa
        dead.kill()
        with pytest.raises((mymps.UnknownTensorError, mymps.MympsConnectionError)) as e:
            cl.exec("neg", {"0": tw})
        assert dead.addr in str(e.value), str(e.value)
        deadline = time.monotonic() + 10
        while cl.status()[[sa, sb].index(dead)]["state"] != "down" and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(mymps.UnknownTensorError, match=re.escape(dead.addr)):
            cl.get(tw)
        # The other host's tensors are untouched; freeing the dead ones is harmless.
        alive = [t for t in ts if t.host != dead.addr]
        np.testing.assert_array_equal(cl.get(alive[0]), x)
        assert cl.free(ts + [tw, cur]) == len(alive)


def test_cluster_remote_by_name_is_described_on_its_host(server_factory):
    sa, sb = server_factory(), server_factory()
    name = f"on-b-{os.getpid()}"
    x = np.arange(12, dtype=np.int32).reshape(3, 4)
    other = MympsClient(sb.host, sb.port)
    try:
        other.share(other.put(x), name)
        fetches = requests_served(sb, "fetch")
        with MympsCluster([sa.addr, sb.addr], timeout=20, health_interval=0.2) as cl:
            # Looked up host by host; described by the one that holds it.
            for _ in range(3):
                w = cl.remote(name)
                assert (w.shape, w.dtype, w.device, w.name) == ((3, 4), np.int32, other.device, name)
                assert w.host == sb.addr, w.host
                assert f"host='{sb.addr}'" in repr(w)
            assert requests_served(sb, "fetch") == fetches
            np.testing.assert_array_equal(cl.exec("neg", {"0": w})["output"], -x)
            with pytest.raises(mymps.UnknownTensorError, match="no-such-tensor"):
                cl.remote("no-such-tensor")
            assert cl.get(w).tobytes() == x.tobytes()
            assert cl.free(w) == 1
            with pytest.raises(mymps.UnknownTensorError):
                cl.remote(name)
    finally:
        other.close()


def test_the_wheel_and_the_stubs_carry_remote_tensors():
    """The graph builder is in the wheel, and the stubs list every public
    method of the classes (mypy's stubtest checks more where installed)."""
    import zipfile
    from pathlib import Path

    wheels = sorted((Path(__file__).resolve().parents[2] / "target" / "wheels").glob("mymps-*.whl"))
    if wheels:
        names = zipfile.ZipFile(wheels[-1]).namelist()
        assert "mymps/graph.py" in names, names
    stubs = (Path(mymps.__file__).parent / "_native.pyi").read_text()
    for cls in (MympsClient, MympsCluster, RemoteTensor):
        assert f"class {cls.__name__}" in stubs
        for name in dir(cls):
            if not name.startswith("__") or name == "__array__":
                assert f"def {name}(" in stubs or f"def {name}\n" in stubs, (cls.__name__, name)
    assert {"RemoteTensor", "Graph", "Node", "UnknownTensorError",
            "LimitReachedError"} <= set(mymps.__all__)
    for name in ("put", "get", "free", "share", "remote", "graph", "put_many"):
        assert getattr(MympsClient, name).__doc__, name
    assert "keep" in MympsClient.exec.__doc__ and "RemoteTensor" in MympsClient.exec.__doc__
