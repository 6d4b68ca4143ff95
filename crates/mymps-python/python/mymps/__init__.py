"""mymps: a remote tensor coprocessor.

Run whitelisted torch operations on a mymps server's GPU (or CPU) with numpy
arrays in and out; the client needs numpy only::

    import numpy as np
    from mymps import MympsClient

    with MympsClient("127.0.0.1", 5555) as c:
        a = np.random.rand(64, 128).astype(np.float32)
        b = np.random.rand(128, 32).astype(np.float32)
        out = c.exec("matmul", {"0": a, "1": b})["output"]   # (64, 32)

Tensors can stay on the server between calls (``c.put(a)``, ``keep=True``:
:class:`RemoteTensor`), and chains of ops run in one request
(``c.graph()``: :class:`Graph`). Loaded language models generate text
(``c.generate(model, prompt)``, streamed with ``stream=True``:
:class:`GenerateStream`).

See ``help(MympsClient)``, ``help(MympsClient.exec)`` and :mod:`mymps.errors`.
A client may be shared between threads; calls release the GIL.
"""

from . import errors
from ._native import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    GenerateStream,
    MympsClient,
    MympsCluster,
    RemoteTensor,
    __version__,
    transports,
)
from .graph import Graph, Node
from ._types import (
    GenerateResult,
    GenerateStep,
    GeneratedSequence,
    HealthInfo,
    ModelInfo,
    OpInfo,
    ParamInfo,
    StatsInfo,
)
from .errors import (
    AuthenticationError,
    BackendError,
    BadArgumentError,
    BusyError,
    CancelledError,
    InternalError,
    InvalidTensorError,
    ModelError,
    ModelNotFoundError,
    MympsConnectionError,
    MympsError,
    MympsTimeoutError,
    OpError,
    PayloadTooLargeError,
    ProtocolError,
    LimitReachedError,
    UnknownOpError,
    UnknownTensorError,
    UnsupportedError,
    UnsupportedVersionError,
)

__all__ = [
    "MympsClient",
    "MympsCluster",
    "RemoteTensor",
    "GenerateStream",
    "Graph",
    "Node",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "__version__",
    "transports",
    "errors",
    "HealthInfo",
    "StatsInfo",
    "OpInfo",
    "ModelInfo",
    "ParamInfo",
    "GenerateResult",
    "GeneratedSequence",
    "GenerateStep",
    *errors.__all__,
]
