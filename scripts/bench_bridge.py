#!/usr/bin/env python3
"""Forward-pass latency of one model three ways, in one run: served by the
native engine, served by the Python engine (the bridge), and transformers
in this process — plus the wire alone (an `exec` of `neg` on a tensor of
the model's output size) — so that the bridge's cost can be read against
the wire's. Results go to docs/BENCHMARKS.md by hand.

    .venv/bin/python scripts/bench_bridge.py [--device cpu|cuda:0] [--rounds 30]

Starts its own server (`$MYMPS_BIN`, else target/release/mymps, else
target/debug/mymps) on an ephemeral loopback port, with the plugins beside
it. The model is a random BERT (hidden 256, 4 layers, 4 heads), batch 8 x
128 tokens with a padding mask; both engines load it as float32. Both
processes run with OMP_WAIT_POLICY=PASSIVE (unless set), so that neither
side's idle OpenMP threads spin on the cores the other needs.
"""

import os

# Two processes share the cores (this one and the server): OpenMP threads
# that spin after each kernel would steal them from the other side.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers as tf

from mymps import MympsClient

REPO = Path(__file__).resolve().parents[1]


def server_binary():
    if os.environ.get("MYMPS_BIN"):
        return Path(os.environ["MYMPS_BIN"])
    for profile in ("release", "debug"):
        p = REPO / "target" / profile / "mymps"
        if p.is_file():
            return p
    sys.exit("no mymps binary: cargo build -p mymps (and scripts/setup.sh for the plugins)")


def start(binary, device, root):
    proc = subprocess.Popen(
        [str(binary), "serve", "--listen", "tcp://127.0.0.1:0", "--device", device,
         "--model-root", str(root), "--log", "warn"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    m = re.match(r"mymps: listening on tcp://(\S+):(\d+)", line)
    if not m:
        proc.kill()
        sys.exit(f"server did not start: {line!r}")
    return proc, m.group(1), int(m.group(2))


def timed(fn, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=4,
                        num_attention_heads=4, intermediate_size=1024,
                        max_position_embeddings=512)
    model = tf.BertModel(cfg).eval().to(a.device)
    tmp = Path(tempfile.mkdtemp(prefix="mymps-bench-bridge-"))
    model.save_pretrained(str(tmp / "bert"))
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 1000, size=(a.batch, a.seq)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[a.batch // 2:, a.seq // 2:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    binary = server_binary()
    proc, host, port = start(binary, a.device, tmp)
    try:
        with MympsClient(host, port) as c:
            kw = {} if a.device == "cpu" else {"dtype": "float32"}
            c.load_model("native", model_path=str(tmp / "bert"), engine="native", **kw)
            c.load_model("python", model_path=str(tmp / "bert"), engine="python", **kw)
            t_ids = {k: torch.from_numpy(v).to(a.device) for k, v in inputs.items()}

            def in_process():
                with torch.no_grad():
                    out = model(**t_ids)
                out.last_hidden_state.cpu()
                out.pooler_output.cpu()

            want = None
            with torch.no_grad():
                want = model(**t_ids).last_hidden_state.cpu().numpy()
            for name in ("native", "python"):
                got = c.infer(name, inputs)["last_hidden_state"]
                d = float(np.abs(got - want).max())
                assert d < 1e-3, f"{name} differs from transformers by {d}"
            echo = np.zeros(want.shape, np.float32)
            cases = {
                "transformers in-process": in_process,
                "mymps, native engine": lambda: c.infer("native", inputs),
                "mymps, Python engine (bridge)": lambda: c.infer("python", inputs),
                "wire alone (exec neg, output-sized)": lambda: c.exec("neg", {"0": echo}),
            }
            for fn in cases.values():  # warm-up
                for _ in range(3):
                    fn()
            samples = {k: [] for k in cases}
            # Interleaved rounds: drift on a shared machine hits all alike.
            for _ in range(a.rounds):
                for k, fn in cases.items():
                    samples[k] += timed(fn, 1)
    finally:
        proc.terminate()
        proc.wait(10)
    med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    base = med["transformers in-process"]
    print(f"server {binary.relative_to(REPO) if binary.is_relative_to(REPO) else binary}, "
          f"device {a.device}, torch {torch.__version__}, transformers {tf.__version__}, "
          f"BERT h256 L4, batch {a.batch} x {a.seq}, {a.rounds} rounds (median)")
    print(f"| path | median ms | vs in-process |")
    print(f"|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} | {v / base:.2f}x |")
    print(f"bridge - native: {med['mymps, Python engine (bridge)'] - med['mymps, native engine']:+.2f} ms; "
          f"bridge - in-process: {med['mymps, Python engine (bridge)'] - base:+.2f} ms; "
          f"wire alone: {med['wire alone (exec neg, output-sized)']:.2f} ms")


if __name__ == "__main__":
    main()
