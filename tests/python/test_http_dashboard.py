"""The dashboard at `/`, rendered by headless Chromium (Debian's `chromium`,
installed by scripts/setup.sh): the live figures it shows change after
requests are made over both listeners; screenshots at desktop and phone
sizes are kept in target/test-artifacts/ for people to look at.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
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
