"""The first mymps's HTTP client, rebuilt from the contract
(/work/shared/client-api.md, "The legacy HTTP protocol"): plain HTTP/1.1
with keep-alive, JSON and msgpack bodies, nothing of mymps. The HTTP tests
talk to a real ``mymps serve --listen http://...`` through it.

Also: a server process with an HTTP and a TCP listener, and a strict parser
of the Prometheus text format.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import queue
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import msgpack
import numpy as np

from conftest import STARTUP_TIMEOUT_S, STOP_TIMEOUT_S, server_binary

_LISTENING = re.compile(r"^mymps: listening on ((tcp|http)://(\S+):(\d+))\s*$")


class HttpServer:
    """``mymps serve`` with an HTTP listener (and a TCP one unless ``tcp=False``)."""

    def __init__(self, *extra_args: str, tcp: bool = True) -> None:
        device = os.environ.get("MYMPS_TEST_DEVICE", "cpu")
        self.args = [
            str(server_binary()),
            "serve",
            "--listen",
            "http://127.0.0.1:0",
            *(["--listen", "tcp://127.0.0.1:0"] if tcp else []),
            "--device",
            device,
            "--model-root",
            tempfile.gettempdir(),
            *extra_args,
        ]
        self.log = tempfile.NamedTemporaryFile(prefix="mymps-http-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.log, text=True
        )
        self.urls: Dict[str, Tuple[str, int]] = {}
        # A thread reads stdout (select() cannot see lines Python has buffered).
        lines: "queue.Queue[Optional[str]]" = queue.Queue()

        def read() -> None:
            for line in self.proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=read, daemon=True).start()
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while len(self.urls) < (2 if tcp else 1):
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise RuntimeError(f"no listening lines in time; log: {self.log_text()}")
                if line is None:
                    raise RuntimeError(f"the server exited; log: {self.log_text()}")
                m = _LISTENING.match(line)
                if m:
                    self.urls[m.group(2)] = (m.group(3), int(m.group(4)))
        except BaseException:
            self.stop()
            raise
        self.host, self.port = self.urls["http"]
        self.base = f"http://{self.host}:{self.port}"

    @property
    def tcp(self) -> Tuple[str, int]:
        return self.urls["tcp"]

    def log_text(self) -> str:
        try:
            return Path(self.log.name).read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


class LegacyError(Exception):
    """An HTTP error answer: status and the JSON body's ``error``."""

    def __init__(self, status: int, body: dict, headers) -> None:
        super().__init__(f"{status}: {body.get('error')}")
        self.status = status
        self.body = body
        self.headers = headers


def pack(arrays: Dict[str, np.ndarray]) -> bytes:
    """The first client's msgpack body."""
    return msgpack.packb(
        {
            k: {"shape": list(a.shape), "dtype": str(a.dtype), "data": np.ascontiguousarray(a).tobytes()}
            for k, a in arrays.items()
        },
        use_bin_type=True,
    )


def unpack(body: bytes) -> Dict[str, np.ndarray]:
    import ml_dtypes  # noqa: F401  (makes "bfloat16" a numpy dtype name)

    out = {}
    for k, v in msgpack.unpackb(body, raw=False).items():
        dtype = np.dtype(ml_dtypes.bfloat16) if v["dtype"] == "bfloat16" else np.dtype(v["dtype"])
        out[k] = np.frombuffer(v["data"], dtype=dtype).reshape(v["shape"])
    return out


class LegacyClient:
    """The first mymps's client calls, over one keep-alive HTTP connection."""

    def __init__(self, host: str, port: int, timeout: float = 60.0, token: Optional[str] = None) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self.token = token
        self.last_headers = None

    def request(self, method: str, path: str, body: Optional[bytes] = None, headers=None):
        """Sends one request; returns (status, headers, body bytes)."""
        h = dict(headers or {})
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        self.conn.request(method, path, body=body, headers=h)
        r = self.conn.getresponse()
        data = r.read()
        self.last_headers = r.headers
        return r.status, r.headers, data

    def _json(self, method: str, path: str, payload=None):
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        status, headers, data = self.request(method, path, body, headers)
        assert headers["Content-Type"] == "application/json", headers
        value = json.loads(data)
        if status >= 400:
            raise LegacyError(status, value, headers)
        return value

    def _tensors(self, path: str, inputs, headers):
        status, h, data = self.request(
            "POST", path, pack(inputs), {**headers, "Content-Type": "application/msgpack"}
        )
        if status >= 400:
            assert h["Content-Type"] == "application/json", h
            raise LegacyError(status, json.loads(data), h)
        assert h["Content-Type"] == "application/msgpack", h
        return unpack(data)

    def health(self):
        return self._json("GET", "/health")

    def stats(self):
        return self._json("GET", "/stats")

    def list_ops(self) -> List[str]:
        return self._json("GET", "/ops")["ops"]

    def list_models(self):
        return self._json("GET", "/models")

    def model_info(self, name: str):
        return self._json("GET", f"/models/{name}/info")

    def unload_model(self, name: str):
        return self._json("DELETE", f"/models/{name}")

    def load_model(self, name, model_type="huggingface", model_path=None, model_class=None,
                   dtype="float32", trust_remote_code=False):
        return self._json("POST", "/models/load", {
            "name": name, "model_type": model_type, "dtype": dtype,
            "trust_remote_code": trust_remote_code, "model_path": model_path,
            "model_class": model_class,
        })

    def exec(self, op: str, inputs, **kwargs):
        headers = {"x-op": op}
        if kwargs:
            headers["x-kwargs"] = json.dumps(kwargs)
        return self._tensors("/exec", inputs, headers)

    def infer(self, name: str, inputs):
        return self._tensors("/infer", inputs, {"x-model": name})

    def close(self) -> None:
        self.conn.close()


_SAMPLE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*\})? '
    r"(\S+)(?: (-?\d+))?$"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse_prometheus(text: str):
    """Parses the Prometheus text format strictly: every line is a comment
    (HELP/TYPE), blank, or a sample of a family announced by TYPE; values
    are floats. Returns ({(name, frozenset(labels)): value}, {family: type}).
    Also checks histograms: cumulative buckets, +Inf bucket == _count."""
    samples = {}
    types = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in types, f"family {name} typed twice"
            types[name] = kind
            continue
        if line.startswith("# HELP ") or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[: -len(suffix)] in types:
                family = name[: -len(suffix)]
        assert family in types, f"sample before its TYPE: {line!r}"
        v = float(value)  # accepts +Inf, NaN
        key = (name, frozenset(_LABEL.findall(labels)))
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = v
    for family, kind in types.items():
        if kind != "histogram":
            continue
        series = {}
        for (name, labels), v in samples.items():
            if name == family + "_bucket":
                rest = frozenset(x for x in labels if x[0] != "le")
                le = dict(labels)["le"]
                series.setdefault(rest, []).append((math.inf if le == "+Inf" else float(le), v))
        for rest, buckets in series.items():
            buckets.sort()
            counts = [c for _, c in buckets]
            assert counts == sorted(counts), f"{family}{dict(rest)} buckets not cumulative"
            assert buckets[-1][0] == math.inf
            assert samples[(family + "_count", rest)] == counts[-1]
            assert (family + "_sum", rest) in samples
    return samples, types


def sample(samples, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]
