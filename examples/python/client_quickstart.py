"""The Python client in a few lines: matmul, softmax, svd, conv2d, and the
server's status. Run a server first (scripts/serve.sh, or
`mymps serve --device cpu`), then:

    python examples/python/client_quickstart.py [HOST [PORT]]
"""

import sys

import numpy as np

from mymps import MympsClient, OpError


def main() -> None:
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 5555
    rng = np.random.default_rng(0)

    with MympsClient(host, port) as c:
        print("server:", c.server_version, "device:", c.device)
        print("ops:", ", ".join(c.list_ops()))

        a = rng.standard_normal((64, 128)).astype(np.float32)
        b = rng.standard_normal((128, 32)).astype(np.float32)
        out = c.exec("matmul", {"0": a, "1": b})["output"]
        print("matmul:", out.shape, out.dtype, "max error", float(np.abs(out - a @ b).max()))

        p = c.exec("softmax", {"0": a}, dim=-1)["output"]
        print("softmax rows sum to", float(p.sum(-1).min()), "..", float(p.sum(-1).max()))

        m = rng.standard_normal((6, 4))
        r = c.exec("svd", {"0": m}, full_matrices=False)
        u, s, vh = r["0"], r["1"], r["2"]
        print("svd reconstructs:", bool(np.allclose(u @ np.diag(s) @ vh, m)))

        x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
        w = rng.standard_normal((16, 3, 3, 3)).astype(np.float32)
        print("conv2d:", c.exec("conv2d", {"input": x, "weight": w})["output"].shape)

        try:
            c.exec("matmul", {"0": a, "1": a})
        except OpError as e:
            print("libtorch said:", e.message.splitlines()[0])

        h = c.health()
        print("health:", h["status"], "torch", h["torch_version"], "models", h["models_loaded"])
        s = c.stats()
        print("stats: cpu %.0f%%, memory %.1f/%.1f GB" % (
            s["cpu_percent"], s["memory_used_gb"], s["memory_total_gb"]))


if __name__ == "__main__":
    main()
