"""Sharing clients between threads, and the GIL released while waiting."""

from __future__ import annotations

import sys
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import mymps
from mymps import MympsClient


def _work(c, seed, calls):
    rng = np.random.default_rng(seed)
    for i in range(calls):
        a = rng.standard_normal((16 + seed % 7, 32)).astype(np.float32)
        b = rng.standard_normal((32, 8 + i % 5)).astype(np.float32)
        r = c.exec("matmul", {"0": a, "1": b})["output"]
        np.testing.assert_allclose(r, a @ b, rtol=1e-4, atol=1e-4)
        big = rng.standard_normal(50_000)  # 400 KB each way, interleaved with the small ones
        np.testing.assert_array_equal(c.exec("neg", {"0": big})["output"], -big)
        k = rng.integers(0, 100, size=seed + 1)
        assert c.exec("argmax", {"0": k})["output"] == k.argmax()
    return seed


def test_one_client_many_threads(client):
    threads, calls = 8, 15
    with ThreadPoolExecutor(threads) as pool:
        done = list(pool.map(lambda s: _work(client, s, calls), range(threads)))
    assert done == list(range(threads))


def test_many_clients_many_threads(mymps_server):
    clients = [MympsClient(mymps_server.host, mymps_server.port) for _ in range(3)]
    try:
        with ThreadPoolExecutor(9) as pool:
            futures = [pool.submit(_work, clients[s % 3], s, 8) for s in range(9)]
            assert sorted(f.result(timeout=120) for f in futures) == list(range(9))
    finally:
        for c in clients:
            c.close()


def test_gil_is_released_while_waiting(client):
    """A pure-Python thread runs while another waits in exec().

    With a long switch interval, a thread that kept the GIL through the call
    would leave this one no bytecode at all until the call returned; a call
    that releases it lets this one count freely meanwhile."""
    a = np.random.default_rng(5).standard_normal((1536, 1536))
    state = {"in_call": False, "done": False, "elapsed": 0.0, "error": None}
    started = threading.Event()

    def slow():
        started.set()
        try:
            t0 = time.monotonic()
            state["in_call"] = True
            client.exec("matmul", {"0": a, "1": a})  # 7 GFLOP in float64
            state["in_call"] = False
            state["elapsed"] = time.monotonic() - t0
        except BaseException as e:  # reported below
            state["error"] = e
        finally:
            state["in_call"] = False
            state["done"] = True

    old = sys.getswitchinterval()
    sys.setswitchinterval(0.5)
    try:
        t = threading.Thread(target=slow)
        t.start()
        started.wait(10)
        ticks = 0
        deadline = time.monotonic() + 120
        while not state["done"] and time.monotonic() < deadline:
            if state["in_call"]:
                ticks += 1
    finally:
        sys.setswitchinterval(old)
    t.join(10)
    assert not t.is_alive() and state["error"] is None, state["error"]
    assert state["elapsed"] > 0.01
    assert ticks > 1000, (ticks, state["elapsed"])


def test_close_from_another_thread_fails_waiting_calls(server_factory):
    server = server_factory()
    c = MympsClient(server.host, server.port, timeout=60)
    a = np.random.default_rng(6).standard_normal((2048, 2048))
    result = {}

    def slow():
        try:
            for _ in range(10):  # long enough to still be waiting when closed
                c.exec("matmul", {"0": a, "1": a})
            result["outcome"] = "finished"
        except mymps.MympsError as e:
            result["outcome"] = e

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.5)
    c.close()
    t.join(20)
    assert not t.is_alive(), "the waiting call did not return after close()"
    assert isinstance(result["outcome"], mymps.MympsConnectionError), result


def test_concurrent_errors_do_not_disturb_other_calls(client):
    def bad(i):
        with pytest.raises(mymps.OpError):
            client.exec("matmul", {"0": np.ones((2, 3)), "1": np.ones((2, 3))})
        return i

    def good(i):
        x = np.full(1000, float(i))
        np.testing.assert_array_equal(client.exec("neg", {"0": x})["output"], -x)
        return i

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(bad if i % 2 else good, i) for i in range(60)]
        assert sorted(f.result(timeout=60) for f in futures) == list(range(60))


def test_ctrl_c_interrupts_a_waiting_call(server_factory):
    """SIGINT raises KeyboardInterrupt in a call that is still waiting,
    without waiting for the reply.

    The server has one worker: long matmuls sent from other threads hold
    it, so a tiny call made afterwards waits behind them. It must be
    interrupted while they are still running."""
    import os
    import signal

    # On the CPU: a GPU finishes the "long" calls before the signal.
    server = server_factory("--workers", "1", device="cpu")
    c = MympsClient(server.host, server.port, timeout=120)
    a = np.random.default_rng(7).standard_normal((4096, 4096)).astype(np.float32)
    running = []

    def long_call():
        try:
            c.exec("matmul", {"0": a, "1": a})  # 137 GFLOP
        except mymps.MympsError:
            pass  # the server is killed below

    # Long calls queue up for the one worker, ahead of the tiny one: enough
    # of them for about 3 s of work on this machine (one is timed first).
    t0 = time.monotonic()
    c.exec("matmul", {"0": a, "1": a})
    n_long = min(30, max(2, math.ceil(3.0 / max(time.monotonic() - t0, 1e-3))))
    for _ in range(n_long):
        running.append(threading.Thread(target=long_call))
        running[-1].start()

    def long_done():
        return not any(t.is_alive() for t in running)

    timer = None
    try:
        time.sleep(0.5)  # the long calls are sent and running
        assert not long_done(), "the long calls finished too soon to test anything"
        timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
        t0 = time.monotonic()
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            # A tiny matmul: it needs the worker (tiny element-wise ops are
            # answered at once, without one).
            c.exec("matmul", {"0": np.ones((2, 2)), "1": np.ones((2, 2))})
        elapsed = time.monotonic() - t0
        still_running = not long_done()
        assert still_running, "the tiny call was not interrupted before the long one ended"
        assert elapsed < 2.0, elapsed
        assert not c.closed
    finally:
        if timer is not None:
            timer.cancel()
        server.kill()
        for t in running:
            t.join(30)
        c.close()
    assert long_done()
