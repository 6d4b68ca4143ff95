"""A mymps server spoken to with nothing but pyzmq and msgpack (numpy only
to check the results): the ZeroMQ framing of docs/protocol.md, as a client
in any language would use it.

Each frame is one multipart message: a head part (the 16-byte prefix
``<BBHIQ``: kind, flags, n_tensors, header_len, id; then the msgpack
header), then one part per tensor.

One connection is one session, as on TCP: a refused handshake closes it,
and a DEALER socket reconnects by itself (libzmq's default), so the same
socket starts over on a new connection.
"""

from __future__ import annotations

import struct
import time

import msgpack
import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

HELLO, WELCOME, REQUEST, RESPONSE = 1, 2, 3, 4
PREFIX = struct.Struct("<BBHIQ")
WAIT_MS = 10_000
# Error codes (docs/protocol.md).
INVALID_TENSOR, PAYLOAD_TOO_LARGE, PROTOCOL, UNAUTHENTICATED = 3, 5, 6, 8


def head(kind, req_id, header, n_tensors):
    h = msgpack.packb(header)
    return PREFIX.pack(kind, 0, n_tensors, len(h), req_id) + h


def send(sock, kind, req_id, header, tensors=()):
    sock.send_multipart([head(kind, req_id, header, len(tensors)), *tensors])


def recv(sock, wait_ms=WAIT_MS):
    """(kind, id, header, tensor parts) of the next message."""
    if not sock.poll(wait_ms):
        raise TimeoutError(f"no reply within {wait_ms} ms")
    parts = sock.recv_multipart()
    kind, flags, n, hlen, req_id = PREFIX.unpack_from(parts[0])
    assert flags == 0
    assert len(parts[0]) == PREFIX.size + hlen
    assert len(parts) == 1 + n
    return kind, req_id, msgpack.unpackb(parts[0][PREFIX.size :]), parts[1:]


def meta(name, a):
    return {"name": name, "dtype": str(a.dtype), "shape": list(a.shape)}


def exec_request(op, arrays, kwargs=None):
    """The header and tensor parts of an exec request."""
    header = {
        "type": "exec",
        "op": op,
        "inputs": [meta(str(i), a) for i, a in enumerate(arrays)],
        "kwargs": kwargs or {},
    }
    return header, [np.ascontiguousarray(a).tobytes() for a in arrays]


def decode_outputs(header, parts):
    assert header["type"] == "exec", header
    return {
        m["name"]: np.frombuffer(p, dtype=m["dtype"]).reshape(m["shape"])
        for m, p in zip(header["outputs"], parts)
    }


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def dealer(ctx, server):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"tcp://{server.host}:{server.port}")
    return s


def monitored(ctx, server):
    """A DEALER and the monitor of its connection events."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    monitor = s.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    s.connect(f"tcp://{server.host}:{server.port}")
    return s, monitor


def next_event(monitor, wanted):
    """Waits for the connection event `wanted` (events before it skipped)."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        if monitor.poll(100) and recv_monitor_message(monitor)["event"] == wanted:
            return
    raise TimeoutError(f"no event {wanted} within {WAIT_MS} ms")


def closed_then_reconnected(monitor):
    """The server closed the connection, and libzmq made a new one."""
    next_event(monitor, zmq.EVENT_DISCONNECTED)
    next_event(monitor, zmq.EVENT_HANDSHAKE_SUCCEEDED)


def hello(sock, token=None):
    h = {
        "magic": "mymps",
        "protocol": 1,
        "min_protocol": 1,
        "features": [],
        "agent": "pyzmq-interop/1",
    }
    if token is not None:
        h["token"] = token
    send(sock, HELLO, 0, h)
    return recv(sock)


def welcome(sock, token=None):
    kind, req_id, header, parts = hello(sock, token)
    assert (kind, req_id, parts) == (WELCOME, 0, []), header
    assert header["protocol"] == 1
    return header


def call(sock, req_id, op, arrays, kwargs=None):
    header, tensors = exec_request(op, arrays, kwargs)
    send(sock, REQUEST, req_id, header, tensors)
    kind, got_id, rh, parts = recv(sock)
    assert (kind, got_id) == (RESPONSE, req_id), rh
    return decode_outputs(rh, parts)


def expect_error(sock, req_id, code):
    kind, got_id, header, parts = recv(sock)
    assert (kind, got_id, parts) == (RESPONSE, req_id, []), header
    assert header["type"] == "error", header
    assert header["code"] == code, header
    return header["message"]


def check_add(sock, req_id):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 0.5, dtype=np.float32)
    out = call(sock, req_id, "add", [a, b])
    np.testing.assert_array_equal(out["output"], a + b)


def test_exec_add_and_matmul_with_pyzmq_and_msgpack(ctx, zmq_server):
    s = dealer(ctx, zmq_server)
    w = welcome(s)
    assert w["max_tensors"] >= 2 and w["max_payload"] > 0 and w["device"]
    check_add(s, 1)
    rng = np.random.default_rng(7)
    a = rng.standard_normal((64, 128)).astype(np.float32)
    b = rng.standard_normal((128, 32)).astype(np.float32)
    out = call(s, 2, "matmul", [a, b])
    assert out["output"].dtype == np.float32 and out["output"].shape == (64, 32)
    np.testing.assert_allclose(out["output"], a @ b, rtol=1e-4, atol=1e-4)
    # Scalar kwargs and an integer result.
    x = rng.standard_normal((5, 7)).astype(np.float32)
    out = call(s, 3, "argmax", [x], {"dim": 1})
    np.testing.assert_array_equal(out["output"], x.argmax(axis=1))
    assert out["output"].dtype == np.int64
    # Many requests in flight on one socket; replies matched by id.
    want = {}
    for i in range(10, 40):
        v = np.full((3, 1000 * (i % 4) + 1), i, dtype=np.float32)
        header, tensors = exec_request("mul", [v], {"other": 2})
        send(s, REQUEST, i, header, tensors)
        want[i] = v * 2
    for _ in range(len(want)):
        kind, req_id, header, parts = recv(s)
        assert kind == RESPONSE
        np.testing.assert_array_equal(decode_outputs(header, parts)["output"], want.pop(req_id))
    assert not want
    s.close()


def test_a_request_before_hello_is_refused_then_the_same_socket_starts_over(ctx, zmq_server):
    s, monitor = monitored(ctx, zmq_server)
    next_event(monitor, zmq.EVENT_HANDSHAKE_SUCCEEDED)
    send(s, REQUEST, 42, {"type": "health"})
    assert "Hello" in expect_error(s, 0, PROTOCOL)
    # As on TCP, the server closes the connection; libzmq reconnects.
    closed_then_reconnected(monitor)
    welcome(s)
    check_add(s, 43)


def test_token_refusal_then_the_same_socket_starts_over(ctx, server_factory, tmp_path):
    token = tmp_path / "token"
    token.write_text("interop-token\n")
    server = server_factory("--auth-token-file", str(token), listen="zmq://127.0.0.1:0")
    s, monitor = monitored(ctx, server)
    next_event(monitor, zmq.EVENT_HANDSHAKE_SUCCEEDED)
    kind, req_id, header, _ = hello(s)
    assert (kind, req_id, header["type"], header["code"]) == (RESPONSE, 0, "error", UNAUTHENTICATED)
    closed_then_reconnected(monitor)
    kind, req_id, header, _ = hello(s, token="wrong")
    assert (kind, header["code"]) == (RESPONSE, UNAUTHENTICATED)
    assert "wrong authentication token" in header["message"]
    closed_then_reconnected(monitor)
    # A request on the new connection before its Hello gets an error, not
    # a computation.
    header, tensors = exec_request("neg", [np.ones(3, dtype=np.float32)])
    send(s, REQUEST, 5, header, tensors)
    expect_error(s, 0, PAYLOAD_TOO_LARGE)
    closed_then_reconnected(monitor)
    welcome(s, token="interop-token")
    check_add(s, 6)


def test_bad_multipart_messages_get_errors_and_the_socket_goes_on(ctx, zmq_server):
    s = dealer(ctx, zmq_server)
    welcome(s)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    header, (ta, tb) = exec_request("add", [a, a])
    cases = [
        # A tensor part missing: the prefix says 2, one part follows.
        ("missing tensor part", [head(REQUEST, 100, header, 2), ta], PROTOCOL, "missing"),
        # An extra part beyond those the prefix announces.
        ("extra part", [head(REQUEST, 101, header, 2), ta, tb, b"??"], PROTOCOL, "extra"),
        # A tensor part of the wrong size for its shape and dtype.
        ("wrong size", [head(REQUEST, 102, header, 2), ta, tb[:-4]], INVALID_TENSOR, "bytes"),
        # header_len disagreeing with the head part.
        (
            "header length",
            [PREFIX.pack(REQUEST, 0, 0, 999, 103) + msgpack.packb({"type": "health"})],
            PROTOCOL,
            "header has 999 bytes",
        ),
        # Not msgpack at all.
        ("garbage header", [PREFIX.pack(REQUEST, 0, 0, 3, 104) + b"\xc1\xc1\xc1"], PROTOCOL, "header"),
        # An unknown dtype.
        (
            "unknown dtype",
            [
                head(
                    REQUEST,
                    105,
                    {**header, "inputs": [{**header["inputs"][0], "dtype": "float128"}, header["inputs"][1]]},
                    2,
                ),
                ta,
                tb,
            ],
            INVALID_TENSOR,
            "float128",
        ),
        # A head part shorter than the prefix: answered with id 0.
        ("short head", [b"\x03\x00"], PROTOCOL, "16-byte frame prefix"),
        # An unknown frame kind.
        ("unknown kind", [PREFIX.pack(0x42, 0, 0, 0, 107)], PROTOCOL, "unknown frame kind"),
    ]
    for i, (what, parts, code, text) in enumerate(cases):
        s.send_multipart(parts)
        req_id = 0 if what == "short head" else PREFIX.unpack_from(parts[0])[4]
        message = expect_error(s, req_id, code)
        assert text in message, f"{what}: {message}"
        # The same socket and session then get a correct answer.
        check_add(s, 200 + i)


def test_over_the_limits_an_error_reply_and_far_over_one_and_a_disconnect(ctx, server_factory):
    server = server_factory("--max-payload", "1000000", listen="zmq://127.0.0.1:0")
    s = dealer(ctx, server)
    w = welcome(s)
    assert w["max_payload"] == 1_000_000
    # Over the payload limit: an error reply, sent before the tensor's bytes
    # are read, which are then skipped; the session goes on. So for a part
    # of 17 MiB (up to twice the payload limit and one header are skipped).
    for n, req_id in [(300_000 * 4, 7), (17 << 20, 8)]:
        header, tensors = exec_request("neg", [np.zeros(n, dtype=np.uint8)])
        send(s, REQUEST, req_id, header, tensors)
        assert "exceeds" in expect_error(s, req_id, PAYLOAD_TOO_LARGE)
        check_add(s, req_id + 100)
    # A part of more than the server skips: an error reply, and the server
    # closes the connection.
    s2, monitor = monitored(ctx, server)
    welcome(s2)
    header, tensors = exec_request("neg", [np.zeros(20 << 20, dtype=np.uint8)])
    send(s2, REQUEST, 9, header, tensors)
    assert "closing the connection" in expect_error(s2, 9, PAYLOAD_TOO_LARGE)
    next_event(monitor, zmq.EVENT_DISCONNECTED)
    # Other peers are served as before.
    check_add(s, 10)
    s3 = dealer(ctx, server)
    welcome(s3)
    check_add(s3, 11)


def test_a_heartbeat_gets_no_reply_and_keeps_the_session(ctx, zmq_server):
    s = dealer(ctx, zmq_server)
    welcome(s)
    s.send(b"")
    assert s.poll(300) == 0
    time.sleep(0.1)
    check_add(s, 1)
