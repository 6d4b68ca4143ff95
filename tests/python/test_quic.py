"""The Python client over QUIC: a real ``mymps serve`` with a quic://
listener (and its generated certificate), verified by CA file or by a
pinned fingerprint; what happens without either, with a wrong one, and with
tokens."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import mymps
from mymps import AuthenticationError, MympsClient, MympsConnectionError

_QUIC = r"^mymps: listening on quic://(\S+):(\d+)\s*$"
_CERT = r"^mymps: quic certificate (.+) sha256 ([0-9a-f]{64})\s*$"


def start_quic(server_factory, tmp_path: Path, *extra: str):
    """A server with a tcp:// (the fixture's) and a quic:// listener:
    (server, host, port, certificate path, fingerprint)."""
    cert_out = tmp_path / "server-cert.pem"
    s = server_factory("--listen", "quic://127.0.0.1:0", "--tls-cert-out", str(cert_out), *extra)
    m = s.wait_line(_QUIC)
    c = s.wait_line(_CERT)
    assert Path(c.group(1)) == cert_out.resolve()
    return s, m.group(1), int(m.group(2)), c.group(1), c.group(2)


def test_quic_is_compiled_in():
    assert "quic" in mymps.transports()
    assert "tcp" in mymps.transports()


def test_pinned_fingerprint_and_ca_file(server_factory, tmp_path):
    _, host, port, cert, fp = start_quic(server_factory, tmp_path)
    a = np.random.default_rng(0).standard_normal((64, 128), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((128, 32), dtype=np.float32)
    with MympsClient(host, port, transport="quic", tls_fingerprint=fp) as c:
        assert c.transport == "quic"
        out = c.exec("matmul", {"0": a, "1": b})["output"]
        np.testing.assert_allclose(out, a @ b, rtol=1e-4, atol=1e-4)
        assert c.health()["status"] == "ok"
    for ca in (cert, Path(cert)):
        with MympsClient(host, port, transport="quic", tls_ca=ca) as c:
            x = np.arange(6, dtype=np.float32).reshape(2, 3)
            np.testing.assert_array_equal(c.exec("neg", {"0": x})["output"], -x)


def test_unverifiable_servers_are_refused_clearly(server_factory, tmp_path):
    _, host, port, _, fp = start_quic(server_factory, tmp_path)
    with pytest.raises(MympsConnectionError) as e:
        MympsClient(host, port, transport="quic")
    assert "tls_ca=" in str(e.value) and "tls_fingerprint=" in str(e.value)
    wrong = ("0" if fp[0] != "0" else "1") + fp[1:]
    with pytest.raises(MympsConnectionError) as e:
        MympsClient(host, port, transport="quic", tls_fingerprint=wrong)
    assert "does not match the pinned fingerprint" in str(e.value)
    other = tmp_path / "other"
    other.mkdir()
    _, _, _, other_cert, _ = start_quic(server_factory, other)
    with pytest.raises(MympsConnectionError) as e:
        MympsClient(host, port, transport="quic", tls_ca=other_cert)
    assert "not trusted by" in str(e.value)


def test_tokens_over_quic(server_factory, tmp_path):
    token = tmp_path / "token"
    token.write_text("quic-secret\n")
    s, host, port, _, fp = start_quic(server_factory, tmp_path, "--auth-token-file", str(token))
    with pytest.raises(AuthenticationError):
        MympsClient(host, port, transport="quic", tls_fingerprint=fp)
    with pytest.raises(AuthenticationError):
        MympsClient(host, port, transport="quic", tls_fingerprint=fp, token="nope")
    # The refusals are in the server's log.
    assert "wrong authentication token" in s.log_text()
    with MympsClient(host, port, transport="quic", tls_fingerprint=fp, token="quic-secret") as c:
        assert c.health()["status"] == "ok"


def test_threads_share_a_quic_connection_with_a_large_request(server_factory, tmp_path):
    _, host, port, _, fp = start_quic(server_factory, tmp_path)
    big = np.arange(8 << 20, dtype=np.float32)  # 32 MiB
    errors = []
    with MympsClient(host, port, transport="quic", tls_fingerprint=fp) as c:

        def large():
            try:
                out = c.exec("neg", {"0": big})["output"]
                assert out[12345] == -12345.0 and out.shape == big.shape
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        def small(i: int):
            try:
                for j in range(20):
                    x = np.full(3, i * 100 + j, dtype=np.float32)
                    np.testing.assert_array_equal(c.exec("mul", {"0": x}, other=2)["output"], 2 * x)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=large)] + [
            threading.Thread(target=small, args=(i,)) for i in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors, errors
