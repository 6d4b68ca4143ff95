"""The built wheel installs into a fresh virtualenv (numpy only: no torch, no
Rust) and runs the client-api snippets against a real server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WHEELS = sorted((REPO / "target" / "wheels").glob("mymps-*.whl"))

SNIPPET = r"""
import importlib.util, sys
import numpy as np
from mymps import MympsClient
import mymps

assert importlib.util.find_spec("torch") is None, "torch must not be needed"
assert mymps.__file__.startswith(sys.prefix), (mymps.__file__, sys.prefix)

host, port = sys.argv[1], int(sys.argv[2])
with MympsClient(host, port) as c:
    a = np.random.rand(64, 128).astype(np.float32)
    b = np.random.rand(128, 32).astype(np.float32)
    out = c.exec("matmul", {"0": a, "1": b})["output"]
    assert out.shape == (64, 32)
    np.testing.assert_allclose(out, a @ b, rtol=1e-4, atol=1e-4)

    x = np.random.rand(8, 10).astype(np.float32)
    p = c.exec("softmax", {"0": x}, dim=-1)["output"]
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)

    m = np.random.rand(6, 4)
    r = c.exec("svd", {"0": m}, full_matrices=False)
    np.testing.assert_allclose(r["0"] @ np.diag(r["1"]) @ r["2"], m, atol=1e-10)

    y = c.exec("conv2d", {"input": np.random.rand(1, 3, 32, 32).astype(np.float32),
                          "weight": np.random.rand(16, 3, 3, 3).astype(np.float32)})
    assert y["output"].shape == (1, 16, 30, 30)

    assert c.list_ops() == sorted(c.list_ops())
    assert c.health()["status"] == "ok"
    assert "cpu_percent" in c.stats()

    if importlib.util.find_spec("ml_dtypes") is None:
        try:
            c.exec("sum", {"0": np.ones((2, 2), np.float32)}, dim=[1], dtype="bfloat16")
            raise AssertionError("a bfloat16 result without ml_dtypes must raise")
        except mymps.InvalidTensorError as e:
            assert "ml_dtypes" in str(e)
    try:
        c.exec("no_such_op", {})
        raise AssertionError("unknown op must raise")
    except mymps.UnknownOpError:
        pass
print("SNIPPET OK", sys.version_info[:2])
"""


def _interpreter(version):
    """A CPython `version` on this machine (pyenv, then PATH), or None."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for candidate in sorted(pyenv.glob(f"{version}.*/bin/python"), reverse=True):
        return str(candidate)
    found = shutil.which(f"python{version}")
    if found and "/shims/" not in found:  # a pyenv shim may name a missing version
        return found
    return None


def _install_and_run(tmp_path, python, server):
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300,
                   capture_output=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run(
        [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q",
         "numpy", str(WHEELS[-1])],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    run = subprocess.run(
        [str(py), "-c", SNIPPET, server.host, str(server.port)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SNIPPET OK" in run.stdout
    return run.stdout


needs_wheel = pytest.mark.skipif(
    not WHEELS,
    reason="no wheel in target/wheels/: build it with scripts/build-python.sh",
)


@needs_wheel
def test_wheel_in_fresh_venv(tmp_path, mymps_server):
    """The interpreter of this test run (no torch in the new venv)."""
    base_python = getattr(sys, "_base_executable", None) or sys.executable
    _install_and_run(tmp_path, base_python, mymps_server)


@needs_wheel
@pytest.mark.parametrize("version", ["3.9", "3.13"])
def test_abi3_wheel_on_other_pythons(tmp_path, mymps_server, version):
    """The one abi3 wheel on the oldest supported and a recent CPython."""
    python = _interpreter(version)
    if python is None:
        pytest.skip(f"no CPython {version} on this machine")
    out = _install_and_run(tmp_path, python, mymps_server)
    assert f"({version.replace('.', ', ')})" in out


def test_extension_links_no_libtorch():
    """The client needs no libtorch: the extension's ELF NEEDED entries name
    only system libraries."""
    import shutil as _shutil

    import mymps._native as native

    readelf = _shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf is not installed")
    out = subprocess.run([readelf, "-d", native.__file__], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    needed = [line.split("[", 1)[1].rstrip("]") for line in out.splitlines()
              if "(NEEDED)" in line]
    assert needed, out
    assert not [n for n in needed if "torch" in n or "c10" in n or "python" in n], needed
