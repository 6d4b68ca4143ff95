"""MympsCluster against three real servers: one killed in the middle of a run
of requests from several threads, every request answered correctly exactly
once; a model on two of the three hosts; the host back after a restart;
errors that are the request's own raised at once."""

import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mymps import (
    BadArgumentError,
    ModelNotFoundError,
    MympsCluster,
    MympsConnectionError,
    OpError,
    UnknownOpError,
)

# The device the servers run on (conftest starts them there; "cuda" means cuda:0).
DEVICE = {"cuda": "cuda:0"}.get(os.environ.get("MYMPS_TEST_DEVICE", "cpu"), os.environ.get("MYMPS_TEST_DEVICE", "cpu"))


def wait_until(cluster, predicate, timeout=30.0):
    """Polls cluster.status() until predicate(status) holds (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        status = cluster.status()
        if predicate(status):
            return status
        assert time.monotonic() < deadline, f"cluster state not reached: {status}"
        time.sleep(0.05)


def by_addr(status, addr):
    return next(h for h in status if h["addr"] == addr)


def run_with_kill(n, threads, kill_after, request, kill):
    """Runs request(i) for i < n on `threads` threads; calls kill() once
    after kill_after answers. Returns a Counter of correctly answered ids."""
    answered = Counter()
    lock = threading.Lock()
    done = threading.Semaphore(0)

    def one(i):
        ok = request(i)
        assert ok, f"request {i}: wrong answer"
        with lock:
            answered[i] += 1
        done.release()

    def killer():
        for _ in range(kill_after):
            assert done.acquire(timeout=60)
        kill()

    k = threading.Thread(target=killer)
    k.start()
    with ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(one, i) for i in range(n)]:
            f.result(timeout=120)
    k.join(60)
    assert not k.is_alive()
    return answered


def test_a_host_killed_mid_run_loses_no_request(server_factory):
    servers = [server_factory() for _ in range(3)]
    victim = servers[1]
    with MympsCluster([s.addr for s in servers], timeout=60, health_interval=0.2) as cluster:
        assert [h["state"] for h in cluster.status()] == ["up", "up", "up"]
        assert "add" in cluster.list_ops()
        n = 600

        def request(i):
            x = np.array([i, -i], dtype=np.int64)
            out = cluster.exec("add", {"0": x, "1": np.array([10**6, 7], dtype=np.int64)})
            return out["output"].tolist() == [i + 10**6, 7 - i]

        answered = run_with_kill(n, 8, n // 4, request, victim.kill)
        assert sorted(answered) == list(range(n))
        assert set(answered.values()) == {1}
        status = cluster.status()
        assert by_addr(status, victim.addr)["state"] == "down"
        assert by_addr(status, victim.addr)["error"]
        assert sum(h["served"] for h in status) == n + 1  # list_ops too
        assert all(h["served"] > 0 for h in status)

        # A server on the victim's port again: marked up by the health checks.
        server_factory("--listen", victim.addr)
        wait_until(cluster, lambda s: by_addr(s, victim.addr)["state"] == "up")
        before = by_addr(cluster.status(), victim.addr)["served"]
        for i in range(12):
            assert cluster.exec("neg", [np.array([i], dtype=np.int64)])["output"].tolist() == [-i]
        assert by_addr(cluster.status(), victim.addr)["served"] > before


def test_models_on_two_of_three_hosts(server_factory, tmp_path):
    torch = pytest.importorskip("torch")
    lin = torch.nn.Linear(5, 3)
    path = tmp_path / "lin.pt"
    torch.save(lin.state_dict(), str(path))
    w = lin.weight.detach().numpy()
    b = lin.bias.detach().numpy()

    servers = [server_factory() for _ in range(3)]
    a, b_host, c = (s.addr for s in servers)
    with MympsCluster([s.addr for s in servers], timeout=60, health_interval=0.2) as cluster:
        loaded = cluster.load_model(
            "lin", model_type="checkpoint", model_path=str(path), model_class="linear",
            hosts=[a, b_host],
        )
        assert sorted(loaded) == sorted([a, b_host])
        assert all(info["status"] == "ok" for info in loaded.values())
        models = cluster.list_models()
        assert [m["name"] for m in models[a]] == ["lin"]
        assert models[c] == []
        with pytest.raises(BadArgumentError, match="no host 'elsewhere' in the cluster"):
            cluster.load_model("lin2", model_type="checkpoint", model_path=str(path),
                               model_class="linear", hosts=["elsewhere"])

        n = 300

        def request(i):
            x = (np.arange(5, dtype=np.float32) + i) * 0.01
            out = cluster.infer("lin", {"0": x})["output"]
            return np.allclose(out, x @ w.T + b, rtol=1e-5, atol=1e-5)

        answered = run_with_kill(n, 6, n // 4, request, servers[0].kill)
        assert sorted(answered) == list(range(n)) and set(answered.values()) == {1}
        status = cluster.status()
        assert by_addr(status, a)["state"] == "down"
        assert by_addr(status, c)["served"] == 0
        with pytest.raises(ModelNotFoundError, match="not loaded on any host"):
            cluster.infer("nope", [np.zeros(5, np.float32)])
        assert cluster.unload_model("lin") == {"status": "ok", "name": "lin", "hosts": [b_host]}
        with pytest.raises(ModelNotFoundError):
            cluster.infer("lin", [np.zeros(5, np.float32)])


def test_errors_and_configuration(server_factory, tmp_path):
    s1, s2 = server_factory(), server_factory()
    toml = tmp_path / "cluster.toml"
    toml.write_text(
        "timeout = 20\n"
        f'[[hosts]]\naddr = "{s1.addr}"\nname = "one"\n'
        f'[[hosts]]\naddr = "{s2.addr}"\nname = "two"\n'
    )
    with MympsCluster(config=str(toml)) as cluster:
        assert [h["name"] for h in cluster.status()] == ["one", "two"]
        assert all(h["device"] == DEVICE for h in cluster.status())
        with pytest.raises(UnknownOpError):
            cluster.exec("no_such_op", [np.zeros(2, np.float32)])
        with pytest.raises(BadArgumentError):
            cluster.exec("softmax", [np.zeros(2, np.float32)], dimension=0)
        with pytest.raises(OpError):
            cluster.exec("add", [np.zeros(2, np.float32), np.zeros(3, np.float32)])
        # The request's own errors are not tried elsewhere.
        assert all(h["failovers"] == 0 and h["state"] == "up" for h in cluster.status())
        # softmax over a host of the cluster, dtype kept.
        out = cluster.exec("softmax", {"0": np.ones((2, 4), np.float64)}, dim=-1)["output"]
        assert out.dtype == np.float64 and np.allclose(out, 0.25)
    with pytest.raises(MympsConnectionError, match="closed"):
        cluster.exec("neg", [np.zeros(1, np.float32)])

    with MympsCluster([(s1.host, s1.port)], timeout=5) as one:
        assert one.status()[0]["addr"] == s1.addr

    with pytest.raises(BadArgumentError, match="not both"):
        MympsCluster([s1.addr], config=str(toml))
    with pytest.raises(BadArgumentError, match="name the hosts"):
        MympsCluster()
    with pytest.raises(BadArgumentError, match="list of addresses"):
        MympsCluster(s1.addr)
    with pytest.raises(BadArgumentError, match="listed twice"):
        MympsCluster([s1.addr, s1.addr])
    s2.kill()
    with pytest.raises(MympsConnectionError, match="cannot reach any host"):
        MympsCluster([s2.addr], timeout=5)


def test_a_quic_cluster_with_per_host_fingerprints_and_a_token(server_factory, tmp_path):
    """Two QUIC hosts, each with its own generated certificate, from a TOML
    file with a pinned fingerprint per host and a shared token; a keyword
    fingerprint applies to a host without one of its own."""
    token = tmp_path / "token"
    token.write_text("cluster-secret\n")
    hosts = []
    for i in range(2):
        s = server_factory(
            "--listen", "quic://127.0.0.1:0",
            "--tls-cert-out", str(tmp_path / f"cert{i}.pem"),
            "--auth-token-file", str(token),
        )
        m = s.wait_line(r"^mymps: listening on (quic://\S+)\s*$")
        fp = s.wait_line(r"^mymps: quic certificate .+ sha256 ([0-9a-f]{64})\s*$").group(1)
        hosts.append((m.group(1), fp))
    toml = tmp_path / "cluster.toml"
    toml.write_text(
        'token = "cluster-secret"\n'
        + "".join(f'\n[[hosts]]\naddr = "{a}"\nfingerprint = "{fp}"\n' for a, fp in hosts)
    )
    with MympsCluster(config=str(toml), timeout=60) as cluster:
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        for i in range(40):
            out = cluster.exec("add", {"0": x, "1": np.float32(i) * np.ones_like(x)})["output"]
            np.testing.assert_array_equal(out, x + i)
        status = cluster.status()
        assert [h["state"] for h in status] == ["up", "up"], status
        assert sum(h["served"] for h in status) >= 40, status
    # Keywords: the token and the second host's pin given as arguments.
    (addr0, fp0), (addr1, fp1) = hosts
    toml.write_text(f'[[hosts]]\naddr = "{addr0}"\nfingerprint = "{fp0}"\n\n[[hosts]]\naddr = "{addr1}"\n')
    with MympsCluster(config=str(toml), token="cluster-secret", tls_fingerprint=fp1, timeout=60) as cluster:
        wait_until(cluster, lambda st: all(h["state"] == "up" for h in st))
    # A wrong pin leaves that host down (never trusted), with the reason.
    toml.write_text(f'[[hosts]]\naddr = "{addr0}"\nfingerprint = "{fp1}"\n')
    with pytest.raises(MympsConnectionError) as e:
        MympsCluster(config=str(toml), token="cluster-secret", timeout=10)
    assert "fingerprint" in str(e.value), e.value
