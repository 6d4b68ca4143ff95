"""The Python client over TLS on TCP (``tcp+tls://``): a real ``mymps
serve`` with a tcp+tls:// listener beside the fixture's tcp:// one,
verified by its generated certificate, by a pinned fingerprint, and by the
certificate of the usual ``openssl req -x509`` one-liner given as
``tls_ca``; what a wrong certificate, no verification, a plain client on
the TLS port and a wrong token get; a large tensor among small requests
from threads; and a cluster over tcp+tls://."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

import mymps
from mymps import AuthenticationError, MympsClient, MympsCluster, MympsConnectionError

_TLS = r"^mymps: listening on tcp\+tls://(\S+):(\d+)\s*$"
_CERT = r"^mymps: tcp\+tls certificate (.+) sha256 ([0-9a-f]{64})\s*$"


def start_tls(server_factory, tmp_path: Path, *extra: str):
    """A server with a tcp:// (the fixture's) and a tcp+tls:// listener:
    (server, host, port, certificate path, fingerprint)."""
    cert_out = tmp_path / "server-cert.pem"
    s = server_factory(
        "--listen", "tcp+tls://127.0.0.1:0", "--tls-cert-out", str(cert_out), *extra
    )
    m = s.wait_line(_TLS)
    c = s.wait_line(_CERT)
    assert Path(c.group(1)) == cert_out.resolve()
    return s, m.group(1), int(m.group(2)), c.group(1), c.group(2)


def one_liner(tmp_path: Path, stem: str, san: str):
    """The usual self-signed certificate (CA:TRUE, the given
    subjectAltName) and its key, made by openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    cert, key = tmp_path / f"{stem}-cert.pem", tmp_path / f"{stem}-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "30",
         "-subj", "/CN=localhost", "-addext", f"subjectAltName={san}"],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tcp_tls_is_compiled_in():
    assert "tcp+tls" in mymps.transports()


def test_generated_certificate_by_file_and_by_pin(server_factory, tmp_path):
    _, host, port, cert, fp = start_tls(server_factory, tmp_path)
    a = np.random.default_rng(0).standard_normal((64, 128), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((128, 32), dtype=np.float32)
    with MympsClient(host, port, transport="tcp+tls", tls_fingerprint=fp) as c:
        assert c.transport == "tcp+tls"
        out = c.exec("matmul", {"0": a, "1": b})["output"]
        np.testing.assert_allclose(out, a @ b, rtol=1e-4, atol=1e-4)
        assert c.health()["status"] == "ok"
    for ca in (cert, Path(cert)):
        with MympsClient("localhost", port, transport="tcp+tls", tls_ca=ca) as c:
            x = np.arange(6, dtype=np.float32).reshape(2, 3)
            np.testing.assert_array_equal(c.exec("neg", {"0": x})["output"], -x)


def test_the_openssl_one_liner_certificate_as_tls_ca(server_factory, tmp_path):
    cert, key = one_liner(tmp_path, "server", "IP:127.0.0.1")
    s = server_factory(
        "--listen", "tcp+tls://127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key)
    )
    port = int(s.wait_line(_TLS).group(2))
    with MympsClient("127.0.0.1", port, transport="tcp+tls", tls_ca=cert) as c:
        x = np.linspace(-1, 1, 10, dtype=np.float32)
        np.testing.assert_array_equal(c.exec("abs", {"0": x})["output"], np.abs(x))
    # Another self-signed certificate for the same address is not this server's.
    other, _ = one_liner(tmp_path, "other", "IP:127.0.0.1")
    with pytest.raises(MympsConnectionError) as e:
        MympsClient("127.0.0.1", port, transport="tcp+tls", tls_ca=other)
    assert "not trusted by" in str(e.value) and "a pin" in str(e.value)
    # The certificate names 127.0.0.1 only.
    with pytest.raises(MympsConnectionError) as e:
        MympsClient("localhost", port, transport="tcp+tls", tls_ca=cert)
    assert "'localhost'" in str(e.value)


def test_refusals_are_clear_and_the_server_goes_on(server_factory, tmp_path):
    s, host, port, cert, fp = start_tls(server_factory, tmp_path)
    with pytest.raises(MympsConnectionError) as e:
        MympsClient(host, port, transport="tcp+tls")
    assert "tls_ca=" in str(e.value) and "tls_fingerprint=" in str(e.value)
    wrong = ("0" if fp[0] != "0" else "1") + fp[1:]
    with pytest.raises(MympsConnectionError) as e:
        MympsClient(host, port, transport="tcp+tls", tls_fingerprint=wrong)
    assert "does not match the pinned fingerprint" in str(e.value)
    # A plain tcp:// client on the TLS port is told what to use...
    with pytest.raises(MympsConnectionError) as e:
        MympsClient(host, port)
    assert 'transport="tcp+tls"' in str(e.value)
    # ...and a TLS client on the plain port gets no TLS answer.
    with pytest.raises(MympsConnectionError) as e:
        MympsClient(s.host, s.port, transport="tcp+tls", tls_ca=cert)
    assert "TLS handshake failed" in str(e.value)
    with MympsClient(host, port, transport="tcp+tls", tls_ca=cert) as c:
        assert c.health()["status"] == "ok"
    with MympsClient(s.host, s.port) as c:
        assert c.health()["status"] == "ok"


def test_tokens_over_tcp_tls(server_factory, tmp_path):
    token = tmp_path / "token"
    token.write_text("tls-secret\n")
    s, host, port, _, fp = start_tls(server_factory, tmp_path, "--auth-token-file", str(token))
    with pytest.raises(AuthenticationError):
        MympsClient(host, port, transport="tcp+tls", tls_fingerprint=fp)
    with pytest.raises(AuthenticationError):
        MympsClient(host, port, transport="tcp+tls", tls_fingerprint=fp, token="nope")
    assert "wrong authentication token" in s.log_text()
    with MympsClient(host, port, transport="tcp+tls", tls_fingerprint=fp, token="tls-secret") as c:
        assert c.health()["status"] == "ok"


def test_threads_share_a_tls_connection_with_a_large_request(server_factory, tmp_path):
    _, host, port, _, fp = start_tls(server_factory, tmp_path)
    big = np.arange(8 << 20, dtype=np.float32)  # 32 MiB
    errors = []
    with MympsClient(host, port, transport="tcp+tls", tls_fingerprint=fp) as c:

        def large():
            try:
                out = c.exec("neg", {"0": big})["output"]
                assert out.shape == big.shape
                np.testing.assert_array_equal(out[::4099], -big[::4099])
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


def test_a_cluster_over_tcp_tls(server_factory, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, ha, pa, _, fa = start_tls(server_factory, tmp_path / "a")
    _, hb, pb, cert_b, _ = start_tls(server_factory, tmp_path / "b")
    config = tmp_path / "cluster.toml"
    config.write_text(
        f'[[hosts]]\naddr = "tcp+tls://{ha}:{pa}"\nfingerprint = "{fa}"\n'
        f'[[hosts]]\naddr = "tcp+tls://{hb}:{pb}"\nca = "{cert_b}"\n'
    )
    with MympsCluster(config=str(config)) as cluster:
        x = np.arange(12, dtype=np.float32)
        for _ in range(4):
            np.testing.assert_array_equal(cluster.exec("neg", {"0": x})["output"], -x)
        status = cluster.status()
        assert [h["state"] for h in status] == ["up", "up"], status
        # Ties take turns: both hosts served, each verified its own way.
        assert all(h["served"] > 0 for h in status), status
