"""The Python half of mymps-bench: the same cases through `MympsClient`,
timed with perf_counter, printed as one JSON object on stdout.

argv: host port n_small n_matmul n_large size_mib[,size_mib...]
"""
import json
import sys
import time

try:
    import numpy as np
    from mymps import MympsClient
except ImportError as e:  # reported by mymps-bench as a skip
    print(json.dumps({"skipped": f"cannot import mymps/numpy: {e}"}))
    sys.exit(0)


def times(fn, n, warmup):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    out.sort()
    return out


def pct(sorted_s, p):
    i = min(len(sorted_s) - 1, int(round(p / 100.0 * (len(sorted_s) - 1))))
    return sorted_s[i]


def summary(s):
    return {"n": len(s), "p50_us": pct(s, 50) * 1e6, "p90_us": pct(s, 90) * 1e6,
            "p99_us": pct(s, 99) * 1e6}


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    n_small, n_matmul, n_large = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    sizes = [int(x) for x in sys.argv[6].split(",") if x]
    c = MympsClient(host, port, 300.0)
    a = np.ones((4, 4), dtype=np.float32)
    b = np.ones((4, 4), dtype=np.float32)
    res = {"agent": "mymps python client"}
    res["add_4x4"] = summary(times(lambda: c.exec("add", {"0": a, "1": b}), n_small, 200))
    m = np.ones((256, 256), dtype=np.float32)
    res["matmul_256"] = summary(times(lambda: c.exec("matmul", {"0": m, "1": m}), n_matmul, 10))
    thr = []
    for mib in sizes:
        x = np.ones(mib * (1 << 20) // 4, dtype=np.float32)
        s = times(lambda: c.exec("neg", {"0": x}), n_large, 1)
        med = pct(s, 50)
        thr.append({"mib": mib, "median_s": med, "gb_s": 2 * x.nbytes / med / 1e9})
    res["neg"] = thr
    print(json.dumps(res))


main()
