"""Writes the seed inputs of the fuzz targets into fuzz/corpus/<target>/seed-*.

Run from the repository root with the project's Python (docs/fuzzing.md):

    .venv/bin/python fuzz/seeds.py

Seeds are real files and messages: the golden frames of
crates/mymps-core/tests/golden, msgpack headers of every request and
response kind, numpy.save files of every dtype (.npy 1.0, 2.0 and 3.0, C
and Fortran order), torch.save state_dicts (and their data.pkl) and
safetensors files. Fuzzing grows the corpus from them; `cargo fuzz cmin`
keeps the inputs that add coverage.
"""

import io
import os
import zipfile
from collections import OrderedDict
from pathlib import Path

import msgpack
import numpy as np
import torch
from safetensors.numpy import save as st_save_np
from safetensors.torch import save as st_save

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
GOLDEN = ROOT / "crates" / "mymps-core" / "tests" / "golden"


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


# ---- frames and headers -------------------------------------------------

def frame(kind, header, tensors=(), ident=1):
    h = msgpack.packb(header, use_bin_type=True)
    out = bytes([kind, 0]) + len(tensors).to_bytes(2, "little")
    out += len(h).to_bytes(4, "little") + ident.to_bytes(8, "little")
    for t in tensors:
        out += len(t).to_bytes(8, "little")
    return out + h + b"".join(tensors)


def header_of(wire):
    n = int.from_bytes(wire[2:4], "little")
    hl = int.from_bytes(wire[4:8], "little")
    start = 16 + 8 * n
    return wire[start:start + hl]


meta = lambda name, dtype, shape, strides=None: dict(
    name=name, dtype=dtype, shape=shape, **({"strides": strides} if strides else {}))

HEADERS = {
    "hello": dict(magic="mymps", protocol=1, min_protocol=1,
                  features=["strided-tensors", "out-of-order"], agent="seed/0", token="t"),
    "welcome": dict(protocol=1, features=["strided-tensors"], agent="mymps/0", device="cpu",
                    max_header_len=65536, max_tensors=1024, max_payload=1 << 32),
    "exec": dict(type="exec", op="add",
                 inputs=[meta("0", "float32", [2, 3]), meta("1", "int64", [3, 2], [1, 3]),
                         meta("input", "bfloat16", []), meta("w", "complex128", [0, 4])],
                 kwargs=dict(alpha=0.5, dim=-1, keepdim=True, equation="ij->ji",
                             dims=[0, [1, 2]], none=None, small=np.float32(1.5).item())),
    "infer": dict(type="infer", name="org/model",
                  inputs=[meta("input_ids", "int64", [1, 8]), meta("attention_mask", "bool", [1, 8])]),
    "load_model": dict(type="load_model", name="m", model_type="checkpoint", model_path="/m.pt",
                       model_class="mlp", dtype="float16", trust_remote_code=False, config="{}"),
    "describe_op": dict(type="describe_op", op="matmul"),
    "model_info": dict(type="model_info", name="m"),
    "unload_model": dict(type="unload_model", name="m"),
    "list": dict(type="list_models"),
    "unknown": dict(type="from_the_future", x=[1, 2]),
    "r_exec": dict(type="exec", outputs=[meta("output", "float16", [4]), meta("1", "uint8", [2, 2], [2, 1])],
                   device="cuda:0", elapsed_s=0.25),
    "r_health": dict(type="health", status="ok", version="0.1.0", protocol=1, backend="tch",
                     device="cpu", torch_version="2.11.0", models_loaded=0, ops=300, uptime_s=1.5),
    "r_stats": dict(type="stats", cpu_percent=1.0, cpu_count=2, load_avg=[0.1, 0.2, 0.3],
                    memory_total_gb=24.0, memory_used_gb=1.0, memory_percent=4.0,
                    process_rss_mb=100.0, process_cpu_percent=0.0, device="cpu",
                    accelerator_memory_total_mb=1.0),
    "r_ops": dict(type="ops", ops=[dict(name="add", category="arithmetic", doc="a + b")]),
    "r_model": dict(type="model", name="m", model_type="checkpoint", device="cpu",
                    loaded_at="2026-01-01T00:00:00Z", metadata={"parameters": "10"}),
    "r_models": dict(type="models", models=[]),
    "r_unloaded": dict(type="unloaded", name="m"),
    "r_error": dict(type="error", code=3, message="bad"),
    "r_error_unknown": dict(type="error", code=60000, message="from the future"),
}


def seed_protocol():
    goldens = {p.stem: bytes.fromhex(p.read_text().strip()) for p in sorted(GOLDEN.glob("*.hex"))}
    for name, wire in goldens.items():
        put("header", f"golden-{name}", header_of(wire))
        # The selector byte: limits (% 3), budget ((/ 3) % 3), read chunk (/ 9).
        for sel in (0, 1, 2, 4, 8, 1 + 9 * 3, 2 + 9 * 7):
            put("frame", f"golden-{name}-{sel}", bytes([sel]) + wire)
    for name, h in HEADERS.items():
        put("header", name, msgpack.packb(h, use_bin_type=True))
    exec_frame = frame(3, HEADERS["exec"], [b"\0" * 24, b"\1" * 48, b"\2\3", b""], ident=7)
    hello = frame(1, HEADERS["hello"], ident=0)
    put("frame", "hello-exec-small", bytes([1]) + hello + exec_frame)
    put("frame", "exec-exec-budget", bytes([5 + 9 * 2]) + exec_frame + exec_frame)
    big = frame(3, HEADERS["infer"], [b"\0" * 5000], ident=9)
    put("frame", "too-large-then-hello", bytes([1]) + big + hello)


# ---- .npy ---------------------------------------------------------------

NPY_DTYPES = ["bool", "uint8", "int8", "int16", "int32", "int64", "float16",
              "float32", "float64", "complex64", "complex128"]


def npy_bytes(a, version=None):
    b = io.BytesIO()
    if version is None:
        np.save(b, a)
    else:
        np.lib.format.write_array(b, a, version=version)
    return b.getvalue()


def seed_npy():
    for dt in NPY_DTYPES:
        put("npy", f"{dt}-2x3", npy_bytes(np.arange(6).astype(dt).reshape(2, 3)))
    put("npy", "scalar", npy_bytes(np.float32(3.5)))
    put("npy", "empty", npy_bytes(np.zeros((0, 4), "int16")))
    put("npy", "fortran", npy_bytes(np.asfortranarray(np.arange(24, dtype="int32").reshape(2, 3, 4))))
    put("npy", "big-endian", npy_bytes(np.arange(3, dtype=">f4")))
    put("npy", "v2", npy_bytes(np.arange(4, dtype="u1"), version=(2, 0)))
    put("npy", "v3", npy_bytes(np.arange(4, dtype="i8"), version=(3, 0)))
    put("npy", "bfloat16-V2", npy_bytes(np.zeros(3, dtype="V2")))


# ---- torch.save and safetensors -----------------------------------------

def state_dicts():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    mlp = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    yield "linear", lin.state_dict()
    yield "mlp", mlp.state_dict()
    yield "dtypes", OrderedDict(
        (str(dt).split(".")[1], torch.ones(2, dtype=dt))
        for dt in (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                   torch.float16, torch.bfloat16, torch.float32, torch.float64,
                   torch.complex64, torch.complex128))
    yield "views", {"w": w, "t": w.t(), "row": w[1], "col": w[:, 2], "tied": w}
    yield "scalar-empty", {"s": torch.tensor(2.5), "e": torch.zeros(0, 3)}
    yield "param", {"p": torch.nn.Parameter(torch.ones(2))}


def torch_bytes(sd):
    b = io.BytesIO()
    torch.save(sd, b)
    return b.getvalue()


def seed_models():
    for name, sd in state_dicts():
        data = torch_bytes(sd)
        put("torch_zip", name, data)
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
            put("torch_pickle", name, z.read(pkl))
        tensors = {k: v.contiguous().clone() for k, v in sd.items()
                   if not v.is_complex() and k not in ("t", "tied")}
        put("safetensors", name, st_save(tensors, metadata={"format": "pt"} if name == "mlp" else None))
    put("safetensors", "numpy-u16", st_save_np({"a": np.arange(3, dtype="uint16")}))
    put("safetensors", "empty", st_save({}))


if __name__ == "__main__":
    os.chdir(ROOT)
    seed_protocol()
    seed_npy()
    seed_models()
    for d in sorted(CORPUS.iterdir()):
        print(d.name, len(list(d.iterdir())), "seeds")
