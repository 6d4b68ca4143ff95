"""Every error class raised by a real failure, and the client afterwards."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

import mymps
from mymps import MympsClient


def still_works(c):
    r = c.exec("add", {"0": np.arange(4.0), "1": np.ones(4)})["output"]
    np.testing.assert_array_equal(r, np.arange(4.0) + 1)


def test_hierarchy():
    assert issubclass(mymps.MympsTimeoutError, TimeoutError)
    assert issubclass(mymps.MympsConnectionError, ConnectionError)
    assert issubclass(mymps.BadArgumentError, ValueError)
    assert issubclass(mymps.InvalidTensorError, ValueError)
    assert issubclass(mymps.ModelNotFoundError, mymps.ModelError)
    assert mymps.BackendError is mymps.OpError
    for name in mymps.errors.__all__:
        assert issubclass(getattr(mymps, name), mymps.MympsError)


def test_unknown_op(client):
    with pytest.raises(mymps.UnknownOpError) as e:
        client.exec("definitely_not_an_op", {"0": np.ones(2)})
    assert e.value.code == "unknown_op" and e.value.code_number == 1
    assert "definitely_not_an_op" in e.value.message
    assert str(e.value) == e.value.message
    still_works(client)


def test_bad_argument_from_the_server(client):
    x = np.ones((2, 3), np.float32)
    with pytest.raises(mymps.BadArgumentError) as e:
        client.exec("softmax", {"0": x})  # dim is required
    assert e.value.code == "bad_argument"
    assert "dim" in e.value.message
    with pytest.raises(mymps.BadArgumentError):
        client.exec("softmax", {"0": x}, dim="last")  # wrong type
    with pytest.raises(mymps.BadArgumentError):
        client.exec("softmax", {"0": x}, dim=-1, no_such_kwarg=1)
    with pytest.raises(mymps.BadArgumentError):
        client.exec("matmul", {"0": x})  # missing tensor
    with pytest.raises(ValueError):  # also a ValueError
        client.exec("neg", {"0": x, "1": x})
    still_works(client)


def test_bad_argument_from_the_client(client):
    x = np.ones(3)
    with pytest.raises(mymps.BadArgumentError, match="dict"):
        client.exec("neg", {"0": x}, opts={"a": 1})
    with pytest.raises(mymps.BadArgumentError, match="64 bits"):
        client.exec("mul", {"0": x}, other=2**70)
    with pytest.raises(mymps.BadArgumentError, match="nest"):
        nested = [1]
        for _ in range(20):
            nested = [nested]
        client.exec("neg", {"0": x}, shape=nested)
    with pytest.raises(mymps.BadArgumentError, match="inputs must be"):
        client.exec("neg", 42)
    with pytest.raises(mymps.BadArgumentError, match="names must be strings"):
        client.exec("neg", {1.5: x})
    with pytest.raises(mymps.BadArgumentError):
        MympsClient("127.0.0.1", 0)
    with pytest.raises(mymps.BadArgumentError):
        MympsClient("127.0.0.1", 70000)
    with pytest.raises(mymps.BadArgumentError, match="timeout"):
        MympsClient("127.0.0.1", 5555, timeout=-1)
    with pytest.raises(mymps.BadArgumentError, match="timeout"):
        MympsClient("127.0.0.1", 5555, timeout=float("nan"))
    still_works(client)


def test_invalid_tensor(client):
    with pytest.raises(mymps.InvalidTensorError) as e:
        client.exec("neg", {"0": np.arange(4, dtype=np.uint32)})
    assert e.value.code == "invalid_tensor" and "uint32" in e.value.message
    with pytest.raises(mymps.InvalidTensorError, match="cannot make a numpy array"):
        client.exec("neg", {"0": [[1, 2], [3]]})  # ragged
    still_works(client)


def test_backend_error_from_libtorch(client):
    a = np.ones((2, 3), np.float32)
    b = np.ones((4, 5), np.float32)
    with pytest.raises(mymps.OpError) as e:
        client.exec("matmul", {"0": a, "1": b})
    assert e.value.code == "backend" and e.value.code_number == 4
    assert "2x3" in e.value.message and "4x5" in e.value.message  # libtorch's words
    with pytest.raises(mymps.BackendError):
        client.exec("conv2d", {"input": np.ones((1, 3, 8, 8), np.float32),
                               "weight": np.ones((4, 2, 3, 3), np.float32)})
    still_works(client)


def test_payload_too_large(server_factory):
    server = server_factory("--max-payload", "4096")
    with MympsClient(server.host, server.port) as c:
        small = np.ones(256, np.float32)  # 1 KiB
        np.testing.assert_array_equal(c.exec("neg", {"0": small})["output"], -small)
        with pytest.raises(mymps.PayloadTooLargeError) as e:
            c.exec("neg", {"0": np.ones(2048, np.float32)})  # 8 KiB
        assert e.value.code == "payload_too_large"
        assert "4096" in e.value.message
        # Two inputs that fit alone but not together.
        with pytest.raises(mymps.PayloadTooLargeError):
            c.exec("add", {"0": np.ones(600, np.float32), "1": np.ones(600, np.float32)})
        still_works(c)


def _connect_with_retries(host, port, timeout, attempts=5):
    """Connecting is itself subject to `timeout`; retry a few times on a
    loaded machine."""
    for i in range(attempts):
        try:
            return MympsClient(host, port, timeout=timeout)
        except mymps.MympsTimeoutError:
            if i == attempts - 1:
                raise
            time.sleep(0.2)


def test_timeout(server_factory):
    # A server of its own: the slow op keeps running there after the client
    # gives up, and is stopped with the server.
    server = server_factory()
    c = _connect_with_retries(server.host, server.port, timeout=0.05)
    try:
        a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
        t0 = time.monotonic()
        with pytest.raises(mymps.MympsTimeoutError) as e:
            for _ in range(5):  # 17 GFLOP each: never done in 50 ms here
                c.exec("matmul", {"0": a, "1": a})
        elapsed = time.monotonic() - t0
        assert isinstance(e.value, TimeoutError)
        assert e.value.code == "timeout"
        assert elapsed < 5.0
        assert not c.closed
        # Still usable once the server has time for it again; the late
        # reply of the timed-out request is dropped.
        deadline = time.monotonic() + 60
        while True:
            try:
                r = c.exec("neg", {"0": np.arange(3.0)})["output"]
                break
            except mymps.MympsTimeoutError:
                assert time.monotonic() < deadline, "the client never recovered"
                time.sleep(0.2)
        np.testing.assert_array_equal(r, -np.arange(3.0))
    finally:
        c.close()


def test_the_server_s_request_timeout(server_factory):
    # The client would wait 60 s; the server's own limit answers first, with
    # the typed timeout, and the same connection goes on serving.
    server = server_factory("--request-timeout", "0.3", "--workers", "1")
    with MympsClient(server.host, server.port, timeout=60) as c:
        a = np.random.default_rng(1).standard_normal((4096, 4096)).astype(np.float32)
        t0 = time.monotonic()
        with pytest.raises(mymps.MympsTimeoutError) as e:
            # 137 GFLOP: seconds on any CPU, and the server's deadline is
            # 0.3 s. A graph of three keeps it past the deadline on a fast one.
            g = c.graph()
            x = g.input("x")
            y = g.op("matmul", x, x)
            y = g.op("matmul", y, x)
            g.output("y", g.op("matmul", y, x))
            g.run({"x": a})
        assert time.monotonic() - t0 < 30
        assert e.value.code == "timeout"
        assert "deadline passed" in str(e.value), str(e.value)
        assert not c.closed
        # Once the kernel is done with the one worker, the connection serves.
        r = c.exec("neg", {"0": np.arange(3.0)})["output"]
        np.testing.assert_array_equal(r, -np.arange(3.0))


def test_server_goes_away(server_factory):
    server = server_factory()
    c = MympsClient(server.host, server.port, timeout=30)
    try:
        still_works(c)
        server.kill()
        t0 = time.monotonic()
        with pytest.raises(mymps.MympsConnectionError) as e:
            # The first call may still be written to the socket before the
            # client notices; either way it must fail, not hang.
            for _ in range(3):
                c.exec("neg", {"0": np.ones(3)})
        assert isinstance(e.value, ConnectionError)
        assert e.value.code == "connection"
        assert time.monotonic() - t0 < 10
        assert c.closed
        with pytest.raises(mymps.MympsConnectionError):
            c.health()
    finally:
        c.close()


def test_connection_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on `port` now.
    t0 = time.monotonic()
    with pytest.raises(mymps.MympsConnectionError) as e:
        MympsClient("127.0.0.1", port, timeout=10)
    assert isinstance(e.value, ConnectionError)
    assert str(port) in e.value.message
    assert time.monotonic() - t0 < 10


def test_not_a_mymps_server():
    """A peer that accepts and then says nothing: the handshake times out."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]
        with pytest.raises(mymps.MympsTimeoutError):
            MympsClient("127.0.0.1", port, timeout=0.5)


def test_unknown_transport(mymps_server):
    with pytest.raises(mymps.UnsupportedError) as e:
        MympsClient(mymps_server.host, mymps_server.port, transport="carrier-pigeon")
    assert "tcp" in e.value.message
    assert mymps.transports() == ["quic", "tcp", "tcp+tls", "zmq"]


def test_bfloat16_result_without_ml_dtypes(mymps_server):
    """Without ml_dtypes a bfloat16 result is a clear InvalidTensorError."""
    import subprocess
    import sys

    code = f"""
import sys
sys.modules["ml_dtypes"] = None  # as if it were not installed
import numpy as np, mymps
with mymps.MympsClient({mymps_server.host!r}, {mymps_server.port}) as c:
    try:
        c.exec("sum", {{"0": np.ones((2, 2), np.float32)}}, dim=[1], dtype="bfloat16")
    except mymps.InvalidTensorError as e:
        assert "ml_dtypes" in str(e), e
        print("OK")
    r = c.exec("neg", {{"0": np.ones(2, np.float32)}})["output"]
    assert r.tolist() == [-1.0, -1.0]
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OK"


def test_errors_pickle():
    import pickle

    e = mymps.errors._from_code("backend", 4, "boom")
    assert isinstance(e, mymps.OpError)
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is mymps.OpError and e2.message == "boom" and e2.code == "backend"
    other = mymps.errors._from_code("other", 999, "from a newer server")
    assert type(other) is mymps.MympsError and other.code_number == 999


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_client_after_fork(client, mymps_server):
    """A forked child has the client's memory but not its threads: using it
    raises MympsConnectionError at once, and closing or freeing it (as the
    child's garbage collector may do with a parent's client) does not hang."""
    import gc
    import os
    import warnings

    extra = MympsClient(mymps_server.host, mymps_server.port)
    still_works(extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # the child: report through the exit status only
        code = 3
        try:
            try:
                client.health()
                code = 1
            except mymps.MympsConnectionError as e:
                code = 0 if "fork" in str(e) else 4
            if not client.closed:
                code = 5
            client.close()
            del extra  # freed here: the runtime of the parent must not be shut down
            gc.collect()
            with MympsClient(mymps_server.host, mymps_server.port) as fresh:
                if fresh.health()["status"] != "ok":  # a new client works in the child
                    code = 6
        except BaseException:
            code = 2
        os._exit(code)
    del extra  # the parent's copy goes normally
    gc.collect()
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.05)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert client.health()["status"] == "ok"  # the parent's client is fine


def test_token_authentication(server_factory, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("  tok-123-secret\n")
    s = server_factory("--auth-token-file", str(token_file))
    with pytest.raises(mymps.AuthenticationError) as e:
        MympsClient(s.host, s.port, timeout=10)
    assert isinstance(e.value, PermissionError)
    assert "requires an authentication token" in e.value.message
    with pytest.raises(mymps.AuthenticationError) as e:
        MympsClient(s.host, s.port, timeout=10, token="tok-123-secreT")
    assert "wrong authentication token" in e.value.message
    with MympsClient(s.host, s.port, timeout=10, token="tok-123-secret") as c:
        still_works(c)
    # The refusals are in the server's log, with the peer.
    log = s.log_text()
    assert log.count("handshake refused") >= 2, log
