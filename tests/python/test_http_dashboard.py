"""The dashboard at `/`, rendered by headless Chromium (Debian's `chromium`,
installed by scripts/setup.sh): the live figures it shows change after
requests are made over both listeners; its plots (drawn from the server's
history) move between two page loads with load in between; screenshots at
desktop and phone sizes, and target/test-artifacts/dashboard.png (the copy
in docs/), are kept for people to look at.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import time
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from legacy_http import HttpServer, LegacyClient, LegacyError

ARTIFACTS = REPO / "target" / "test-artifacts"
CHROMIUM_TIMEOUT_S = 120


def chromium_binary() -> str:
    exe = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        pytest.fail("chromium is not installed: run scripts/setup.sh (apt-get install chromium)",
                    pytrace=False)
    return exe


def chromium(url: str, profile: Path, *args: str) -> str:
    """Runs headless Chromium on `url` for a few seconds of page time (the
    dashboard polls every 2 s); returns its stdout."""
    cmd = [
        chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={profile}",
        "--virtual-time-budget=5000", *args, url,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    assert r.returncode == 0, f"chromium failed ({r.returncode}): {r.stderr[-2000:]}"
    return r.stdout


def text_of(dom: str, element_id: str) -> str:
    m = re.search(rf'id="{re.escape(element_id)}"[^>]*>([^<]*)<', dom)
    assert m, f"no element #{element_id} in the rendered page"
    return m.group(1)


def cell(dom: str, row_id: str, column: str) -> str:
    row = re.search(rf'<tr id="{re.escape(row_id)}">(.*?)</tr>', dom)
    assert row, f"no row #{row_id} in the rendered page"
    m = re.search(rf'<td class="{column}[^"]*">([^<]*)</td>', row.group(1))
    assert m, f"no {column} cell in #{row_id}"
    return m.group(1)


def png_size(path: Path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height, len(data)


def test_dashboard_shows_live_figures(tmp_path):
    from mymps import MympsClient

    s = HttpServer()
    try:
        url = s.base + "/"
        before = chromium(url, tmp_path / "p1", "--dump-dom")
        assert text_of(before, "status") == "live", text_of(before, "status")
        assert text_of(before, "device") == "cpu"
        assert text_of(before, "torch").startswith("2.11")
        assert re.fullmatch(r"[\d.]+ % of \d+ cores", text_of(before, "cpu")), text_of(before, "cpu")
        assert re.fullmatch(r"[\d.]+ / [\d.]+ GB", text_of(before, "memory"))
        assert text_of(before, "accel") == "not reported (cpu)"
        assert 'id="req-exec"' not in before
        assert "no models loaded" in before

        legacy = LegacyClient(s.host, s.port)
        x = np.arange(256, dtype=np.float32)
        for _ in range(7):
            legacy.exec("neg", {"0": x})
        with pytest.raises(LegacyError):
            legacy.exec("frobnicate", {"0": x})
        legacy.close()
        with MympsClient(*s.tcp) as c:
            for _ in range(3):
                c.exec("neg", {"0": x})

        after = chromium(url, tmp_path / "p2", "--dump-dom")
        assert text_of(after, "status") == "live"
        assert cell(after, "req-exec", "count") == "11"
        assert cell(after, "req-exec", "errors") == "1"
        for q in ("p50", "p90", "p99"):
            assert re.fullmatch(r"[\d.,]+ (µs|ms|s)", cell(after, "req-exec", q)), q
        # Rates come from two polls of the page.
        assert re.fullmatch(r"[\d.,]+", cell(after, "req-exec", "rate"))
        assert cell(after, "op-neg", "count") == "10"
        assert "unknown_op: 1" in after
        # The page's own polls show up as requests too, and grow.
        assert int(cell(after, "req-health", "count")) > int(cell(before, "req-health", "count"))

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for name, (w, h) in {"desktop": (1280, 900), "phone": (390, 844)}.items():
            shot = ARTIFACTS / f"http-dashboard-{name}.png"
            shot.unlink(missing_ok=True)
            chromium(url, tmp_path / f"p-{name}", f"--window-size={w},{h}", f"--screenshot={shot}")
            width, height, size = png_size(shot)
            assert (width, height) == (w, h), (name, width, height)
            assert size > 20_000, f"{shot} looks blank ({size} bytes)"
    finally:
        s.stop()


def plots(dom: str) -> dict:
    """Each plot of the page: its sample count, largest value, legend, and
    per series its SVG path (`d`), point count and last value."""
    out = {}
    for m in re.finditer(r'<figure class="plot" id="plot-([a-z]+)"([^>]*)>(.*?)</figure>', dom, re.S):
        name, attrs, body = m.groups()
        data = dict(re.findall(r'data-([a-z]+)="([^"]*)"', attrs))
        legend = re.search(rf'id="plot-{name}-legend">(.*?)</span>', body, re.S)
        series = [
            {"d": d, "points": int(n), "last": last}
            for d, n, last in re.findall(
                r'<path id="plot-[a-z]+-\d" class="[^"]*" d="([^"]*)" data-points="(\d+)" data-last="([^"]*)"',
                body,
            )
        ]
        out[name] = {
            "samples": int(data.get("samples", 0)),
            "max": float(data["max"]) if data.get("max") else None,
            "legend": re.sub(r"<[^>]+>", "", legend.group(1)) if legend else "",
            "series": series,
        }
    return out


def test_dashboard_plots_move(tmp_path):
    """The plots are drawn from the server's history (sampled every 0.2 s
    here): they change between two moments with load in between, they show
    what came before the page was opened (the history survives a reload),
    and figures the device does not report are said to be absent. The
    per-kind rates are each kind's own, from the server's window."""
    from mymps import MympsClient

    s = HttpServer("--history-interval", "0.2")
    try:
        url = s.base + "/"
        first = plots(chromium(url, tmp_path / "p1", "--dump-dom"))
        assert set(first) == {"rate", "latency", "errors", "rss", "device", "tensors", "util"}, first
        assert first["rate"]["samples"] >= 1, first["rate"]
        assert first["rss"]["series"][0]["points"] >= 1
        assert float(first["rss"]["series"][0]["last"]) > 1e6, first["rss"]
        assert first["device"]["legend"] == "not reported (cpu)", first["device"]
        assert first["device"]["series"][0]["points"] == 0
        # No GPU here: the GPU series has no point, the host CPU has.
        host_cpu, gpu = first["util"]["series"]
        assert host_cpu["points"] >= 1 and gpu["points"] == 0, first["util"]
        assert first["tensors"]["max"] == 0, first["tensors"]

        # Load: execs at a known count, errors, resident tensors.
        legacy = LegacyClient(s.host, s.port)
        x = np.arange(4096, dtype=np.float32)
        for _ in range(60):
            legacy.exec("neg", {"0": x})
        for _ in range(4):
            with pytest.raises(LegacyError):
                legacy.exec("frobnicate", {"0": x})
        legacy.close()
        load_ended = time.monotonic()
        with MympsClient(*s.tcp) as c:
            kept = [c.put(x) for _ in range(3)]
            time.sleep(0.6)  # a few samples with the tensors resident
            dom = chromium(url, tmp_path / "p2", "--dump-dom")
            rendered = time.monotonic()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "dashboard.png"
            shot.unlink(missing_ok=True)
            chromium(url, tmp_path / "p3", "--window-size=1280,1100", f"--screenshot={shot}")
            del kept
        second = plots(dom)
        assert second["rate"]["samples"] > first["rate"]["samples"], (first["rate"], second["rate"])
        for name in ("rate", "latency", "errors", "rss", "tensors"):
            assert second[name]["series"][0]["d"] != first[name]["series"][0]["d"], name
        # The load shows: the server's samples hold the 64 execs and the 4
        # errors; the page draws the errors and the resident tensors.
        with urllib.request.urlopen(s.base + "/history") as r:
            h = json.load(r)
        assert sum(x["requests"] for x in h["samples"]) >= 64 + 4, h["samples"]
        assert sum(x["errors"] for x in h["samples"]) == 4, h["samples"]
        assert second["errors"]["max"] > 0, second["errors"]
        assert second["latency"]["series"][1]["points"] >= 1, second["latency"]
        assert float(second["tensors"]["series"][0]["last"]) == 3 * x.nbytes, second["tensors"]
        assert "not reported" not in second["tensors"]["legend"]
        # Samples from before this page was opened are drawn: the history
        # is the server's.
        assert second["rate"]["samples"] >= first["rate"]["samples"] + 5

        # Each kind's rate is its own over the server's window (10 s): the
        # execs (64, just before) and the page's own polls differ. Before the
        # fix the page divided by the gap between two of its polls, which
        # headless Chromium's virtual time makes a few ms: exec showed 0 (no
        # exec in that gap) and every polled kind the same value.
        exec_rate = float(cell(dom, "req-exec", "rate"))
        assert rendered - load_ended < 9, "the page took too long to render for the 10 s window"
        assert 64 / 11.0 <= exec_rate <= 64 / 0.5, exec_rate
        polled = float(cell(dom, "req-list_models", "rate"))
        assert polled < exec_rate, (polled, exec_rate)
        assert re.fullmatch(r"rate/s \(\d+ s\)", text_of(dom, "rate-head")), text_of(dom, "rate-head")

        width, height, size = png_size(shot)
        assert (width, height) == (1280, 1100)
        assert size > 40_000, f"{shot} looks blank ({size} bytes)"
    finally:
        s.stop()
