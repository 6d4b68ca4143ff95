"""The HTTP listener against the first mymps's conventions: every route of
the legacy REST API through a client that speaks only HTTP + msgpack
(legacy_http.LegacyClient), bad bodies answered with 400 on a connection
that goes on, authentication, and /metrics counting the requests of both the
HTTP and the TCP listener.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

import ml_dtypes
import numpy as np
import pytest
import torch

from conftest import server_binary

# The device the servers run on (conftest starts them there; "cuda" means cuda:0).
DEVICE = {"cuda": "cuda:0"}.get(os.environ.get("MYMPS_TEST_DEVICE", "cpu"), os.environ.get("MYMPS_TEST_DEVICE", "cpu"))
from legacy_http import HttpServer, LegacyClient, LegacyError, pack, parse_prometheus, sample

rng = np.random.default_rng(0)


@pytest.fixture(scope="module")
def srv():
    s = HttpServer()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def legacy(srv):
    c = LegacyClient(srv.host, srv.port)
    try:
        yield c
    finally:
        c.close()


def test_json_routes(legacy):
    h = legacy.health()
    assert h["status"] == "ok"
    assert h["device"] == DEVICE
    assert h["torch_version"].startswith("2.11")
    assert h["models_loaded"] == 0
    s = legacy.stats()
    for k in ("cpu_percent", "cpu_count", "memory_total_gb", "memory_used_gb", "memory_percent",
              "process_rss_mb", "process_cpu_percent"):
        assert isinstance(s[k], (int, float)), k
    assert len(s["load_avg"]) == 3
    assert 0 < s["memory_used_gb"] <= s["memory_total_gb"]
    ops = legacy.list_ops()
    assert ops == sorted(ops) and {"matmul", "svd", "argmax", "fft"} <= set(ops)
    assert legacy.list_models() == []


def test_exec_results_keep_their_dtype(legacy):
    a = rng.standard_normal((64, 128)).astype(np.float32)
    b = rng.standard_normal((128, 32)).astype(np.float32)
    out = legacy.exec("matmul", {"0": a, "1": b})
    assert list(out) == ["output"]
    np.testing.assert_allclose(out["output"], a @ b, rtol=1e-4, atol=1e-4)
    x_time = float(legacy.last_headers["x-time"])
    assert 0 <= x_time < 60
    assert legacy.last_headers["x-device"] == DEVICE

    x = rng.standard_normal((3, 5)).astype(np.float32)
    s = legacy.exec("sum", {"input": x}, dim=-1, keepdim=True)["output"]
    assert s.shape == (3, 1)
    np.testing.assert_allclose(s, x.sum(-1, keepdims=True), rtol=1e-5)
    p = legacy.exec("permute", {"0": x.reshape(3, 5, 1)}, dims=[2, 0, 1])["output"]
    assert p.shape == (1, 3, 5)
    e = legacy.exec("einsum", {"0": a, "1": b}, equation="ij,jk->ik")["output"]
    np.testing.assert_allclose(e, a @ b, rtol=1e-4, atol=1e-4)

    # The first server turned every result into float32; ours does not.
    am = legacy.exec("argmax", {"0": x}, dim=1)["output"]
    assert am.dtype == np.int64
    np.testing.assert_array_equal(am, x.argmax(1))
    gt = legacy.exec("gt", {"0": x, "1": np.zeros_like(x)})["output"]
    assert gt.dtype == np.bool_
    np.testing.assert_array_equal(gt, x > 0)
    f = legacy.exec("fft", {"0": x})["output"]
    assert f.dtype == np.complex64
    np.testing.assert_allclose(f, np.fft.fft(x), rtol=1e-4, atol=1e-4)
    i = np.arange(6, dtype=np.int32).reshape(2, 3)
    r = legacy.exec("add", {"0": i, "1": i})["output"]
    assert r.dtype == np.int32
    np.testing.assert_array_equal(r, 2 * i)
    h = np.ones(4, dtype=np.float16)
    assert legacy.exec("add", {"0": h, "1": h})["output"].dtype == np.float16
    bf = np.ones(4, dtype=ml_dtypes.bfloat16)
    out = legacy.exec("add", {"0": bf, "1": bf})["output"]
    assert out.dtype == ml_dtypes.bfloat16 and out.astype(np.float32).tolist() == [2.0] * 4

    # A tuple result: "0", "1", "2".
    m = rng.standard_normal((6, 4)).astype(np.float32)
    usv = legacy.exec("svd", {"0": m}, full_matrices=False)
    assert sorted(usv) == ["0", "1", "2"]
    np.testing.assert_allclose((usv["0"] * usv["1"]) @ usv["2"], m, atol=1e-4)


def test_model_routes(legacy, tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x).relu()

    net = Net().eval()
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    name = "org/net"

    loaded = legacy.load_model(name, model_type="torchscript", model_path=str(path))
    assert loaded == {"status": "ok", "name": name, "device": DEVICE}
    models = legacy.list_models()
    assert [set(m) for m in models] == [{"name", "model_type", "device", "loaded_at"}]
    assert models[0]["name"] == name and models[0]["model_type"] == "torchscript"
    info = legacy.model_info(name)
    assert {"name", "model_type", "device", "loaded_at", "metadata"} <= set(info)
    assert info["name"] == name and isinstance(info["metadata"], dict)
    assert legacy.health()["models_loaded"] == 1

    x = rng.standard_normal((5, 4)).astype(np.float32)
    out = legacy.infer(name, {"0": x})
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out["output"], want, rtol=1e-5, atol=1e-6)

    assert legacy.unload_model(name) == {"status": "ok", "name": name}
    for call in (lambda: legacy.unload_model(name), lambda: legacy.model_info(name),
                 lambda: legacy.infer(name, {"0": x})):
        with pytest.raises(LegacyError) as e:
            call()
        assert e.value.status == 404 and name in e.value.body["error"]
    assert legacy.list_models() == []

    # A load that fails is the client's mistake: 400 with a message.
    with pytest.raises(LegacyError) as e:
        legacy.load_model("ghost", model_type="torchscript", model_path=str(tmp_path / "nope.pt"))
    assert e.value.status == 400 and e.value.body["error"]
    with pytest.raises(LegacyError) as e:
        legacy.load_model("x", model_type="no-such-type", model_path=str(path))
    assert e.value.status == 400 and "no-such-type" in e.value.body["error"]


def good(c: LegacyClient) -> None:
    out = c.exec("add", {"0": np.arange(4.0), "1": np.ones(4)})["output"]
    np.testing.assert_array_equal(out, np.arange(4.0) + 1)


def raw(c: LegacyClient, method, path, body=None, headers=None):
    status, h, data = c.request(method, path, body, headers)
    assert h["Content-Type"] == "application/json", (status, h, data)
    return status, json.loads(data)


def test_bad_requests_are_4xx_json_and_the_connection_goes_on(legacy):
    good(legacy)
    sock = legacy.conn.sock
    x = np.ones(3, dtype=np.float32)
    body = lambda **over: msgpack_body(over)  # noqa: E731
    cases = [
        # (method, path, body, headers, status, words in the message)
        ("POST", "/exec", b"this is not msgpack", {"x-op": "add"}, 400, "msgpack"),
        ("POST", "/exec", body(data=b"\0" * 5), {"x-op": "neg"}, 400, "data length"),
        ("POST", "/exec", body(dtype="float128"), {"x-op": "neg"}, 400, "unknown dtype 'float128'"),
        ("POST", "/exec", body(shape=[-1]), {"x-op": "neg"}, 400, "negative"),
        ("POST", "/exec", pack({"0": x}), {"x-op": "neg", "x-kwargs": "{not json"}, 400, "x-kwargs"),
        ("POST", "/exec", pack({"0": x}), {"x-op": "sum", "x-kwargs": "[1, 2]"}, 400, "JSON object"),
        ("POST", "/exec", pack({"0": x}), {"x-op": "sum", "x-kwargs": '{"dim": {"a": 1}}'}, 400, "object"),
        ("POST", "/exec", pack({"0": x}), {}, 400, "x-op"),
        ("POST", "/exec", pack({"0": x}), {"x-op": "frobnicate"}, 400, "unknown op 'frobnicate'"),
        ("POST", "/exec", pack({"0": x}), {"x-op": "sum", "x-kwargs": '{"bogus": 1}'}, 400, "bogus"),
        ("POST", "/exec", pack({"0": np.ones((2, 3), np.float32), "1": np.ones((2, 3), np.float32)}),
         {"x-op": "matmul"}, 400, "cannot be multiplied"),
        ("POST", "/infer", pack({"0": x}), {}, 400, "x-model"),
        ("POST", "/infer", b"\x81\xa10\x80", {"x-model": "m"}, 400, "shape"),
        ("POST", "/models/load", b"{", {}, 400, "load request"),
        ("POST", "/models/load", b"[]", {}, 400, "load request"),
        ("GET", "/nowhere", None, {}, 404, "no route"),
        ("GET", "/exec", None, {}, 405, "allowed: POST"),
        ("PUT", "/health", None, {}, 405, "allowed: GET"),
        ("GET", "/models/x", None, {}, 405, "DELETE"),
    ]
    for method, path, b, headers, status, words in cases:
        got, err = raw(legacy, method, path, b, headers)
        assert got == status, (path, headers, got, err)
        assert words in err["error"], (path, headers, err)
        assert isinstance(err["code"], str)
        # The same socket serves the next request.
        good(legacy)
        assert legacy.conn.sock is sock, f"connection closed after {path} {headers}"
    assert legacy.last_headers.get("Connection", "").lower() != "close"


def msgpack_body(over) -> bytes:
    import msgpack

    t = {"shape": [3], "dtype": "float32", "data": b"\0" * 12}
    t.update(over)
    return msgpack.packb({"0": t}, use_bin_type=True)


def test_oversized_bodies_are_refused_before_they_are_read():
    s = HttpServer("--max-payload", "4096", tcp=False)
    try:
        # A body over the limits by its Content-Length is refused before a
        # byte of it is read (none is sent here), and the connection closes
        # after the answer.
        with socket.create_connection((s.host, s.port), timeout=30) as raw_sock:
            raw_sock.sendall(b"POST /exec HTTP/1.1\r\nHost: x\r\nx-op: neg\r\n"
                             b"Content-Length: 4194400\r\n\r\n")
            answer = b""
            while chunk := raw_sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), answer
        assert b"connection: close" in head.lower()
        assert "at most" in json.loads(body)["error"]
        # A small body whose tensors exceed the payload limit is read, and
        # refused: the connection goes on.
        c = LegacyClient(s.host, s.port)
        good(c)
        sock = c.conn.sock
        status, h, data = c.request("POST", "/exec", pack({"0": np.ones(1100, np.float32)}),
                                    {"x-op": "neg"})
        # The one admission's message, as on every transport (2df92b1).
        err = json.loads(data)
        assert status == 413 and err["code"] == "payload_too_large", data
        assert "exceeds the limit of 4096 bytes" in err["error"], data
        good(c)
        assert c.conn.sock is sock
        c.close()
        # Other connections are served; a body within the limits works.
        c = LegacyClient(s.host, s.port)
        good(c)
        c.close()
    finally:
        s.stop()


def test_bearer_token(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    s = HttpServer("--auth-token-file", str(token_file), tcp=False)
    try:
        anon = LegacyClient(s.host, s.port)
        for path in ("/health", "/metrics", "/api/dashboard"):
            status, h, data = anon.request("GET", path)
            assert status == 401, path
            assert h["WWW-Authenticate"].startswith("Bearer")
            assert "token" in json.loads(data)["error"]
        # The page itself holds no data and loads without a token.
        status, _, page = anon.request("GET", "/")
        assert status == 200 and b"<title>mymps</title>" in page
        wrong = LegacyClient(s.host, s.port, token="nope")
        with pytest.raises(LegacyError) as e:
            wrong.health()
        assert e.value.status == 401
        ok = LegacyClient(s.host, s.port, token="s3cret")
        assert ok.health()["status"] == "ok"
        good(ok)
        # A token over the handshake's limits is refused, not read.
        huge = LegacyClient(s.host, s.port, token="x" * 100_000)
        with pytest.raises(LegacyError) as e:
            huge.health()
        assert e.value.status == 413
        huge.close()
        # A token change on the same connection is checked again.
        ok.token = "nope"
        with pytest.raises(LegacyError):
            ok.health()
        ok.token = "s3cret"
        good(ok)
        for c in (anon, wrong, ok):
            c.close()
    finally:
        s.stop()


def metrics_text(srv) -> str:
    c = LegacyClient(srv.host, srv.port)
    try:
        status, h, data = c.request("GET", "/metrics")
        assert status == 200
        assert h["Content-Type"].startswith("text/plain; version=0.0.4")
        return data.decode()
    finally:
        c.close()


def test_metrics_count_http_and_tcp_requests():
    from mymps import MympsClient, UnknownOpError

    s = HttpServer()
    try:
        before, types = parse_prometheus(metrics_text(s))
        assert types["mymps_requests_total"] == "counter"
        assert types["mymps_request_duration_seconds"] == "histogram"
        assert sample(before, "mymps_requests_total", kind="exec") == 0

        http_c = LegacyClient(s.host, s.port)
        x = np.arange(1000, dtype=np.float32)
        for _ in range(5):
            http_c.exec("neg", {"0": x})
        with pytest.raises(LegacyError):
            http_c.exec("frobnicate", {"0": x})
        # A body that never becomes a request is counted as refused.
        status, _, _ = http_c.request("POST", "/exec", b"not msgpack", {"x-op": "neg"})
        assert status == 400
        tcp_host, tcp_port = s.tcp
        with MympsClient(tcp_host, tcp_port) as tcp_c:
            for _ in range(3):
                tcp_c.exec("neg", {"0": x})
            tcp_c.exec("add", {"0": x, "1": x})
            with pytest.raises(UnknownOpError):
                tcp_c.exec("frobnicate", {"0": x})
            tcp_c.health()
        http_c.health()
        http_c.close()

        m, types = parse_prometheus(metrics_text(s))
        assert sample(m, "mymps_requests_total", kind="exec") == 5 + 1 + 3 + 1 + 1
        assert sample(m, "mymps_request_errors_total", kind="exec") == 2
        assert sample(m, "mymps_requests_total", kind="health") == 2
        assert sample(m, "mymps_op_requests_total", op="neg") == 8
        assert sample(m, "mymps_op_requests_total", op="add") == 1
        assert ("mymps_op_requests_total", frozenset({("op", "frobnicate")})) not in m
        assert sample(m, "mymps_errors_total", code="unknown_op") == 2
        assert sample(m, "mymps_errors_total", code="bad_argument") == 1
        assert sample(m, "mymps_frames_refused_total") == 1
        assert sample(m, "mymps_request_duration_seconds_count", kind="exec") == 11
        assert sample(m, "mymps_op_duration_seconds_bucket", op="neg", le="+Inf") == 8
        assert sample(m, "mymps_request_duration_seconds_sum", kind="exec") > 0
        # Each neg carries 4000 bytes in and out, whatever the transport.
        assert sample(m, "mymps_received_bytes_total", kind="exec") > 9 * 4000
        assert sample(m, "mymps_sent_bytes_total", kind="exec") > 8 * 4000
        assert sample(m, "mymps_connections_total") >= 3
        assert sample(m, "mymps_models_loaded") == 0
        assert sample(m, "mymps_memory_budget_bytes") > 0
        assert sample(m, "mymps_memory_budget_used_bytes") == 0
        assert sample(m, "mymps_info", version="0.1.0", backend="tch", device=DEVICE) == 1
        # The earlier scrape counts too.
        assert sample(m, "mymps_requests_total", kind="metrics") == 1

        # The same figures over the binary protocol, through the CLI.
        out = subprocess.run(
            [str(server_binary()), "metrics", "--addr", f"tcp://{tcp_host}:{tcp_port}"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
        cli, _ = parse_prometheus(out)
        assert sample(cli, "mymps_requests_total", kind="exec") == 11
        assert sample(cli, "mymps_requests_total", kind="metrics") == 2
        out = subprocess.run(
            [str(server_binary()), "metrics", "--json", "--addr", f"tcp://{tcp_host}:{tcp_port}"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
        snap = json.loads(out)
        exec_row = next(r for r in snap["requests"] if r["kind"] == "exec")
        assert exec_row["count"] == 11 and exec_row["errors"] == 2
    finally:
        s.stop()
