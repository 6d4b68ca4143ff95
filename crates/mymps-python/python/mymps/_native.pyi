"""Type stubs of the native module ``mymps._native`` (Rust, PyO3)."""

from types import TracebackType
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

import numpy as np
import numpy.typing as npt
from typing_extensions import Self, TypedDict

__version__: str
DEFAULT_HOST: str
DEFAULT_PORT: int

#: A scalar keyword argument of ``exec``: None, bool, int, float, str, or a
#: list or tuple of them (numpy scalars and arrays are converted with tolist()).
Scalar = Union[None, bool, int, float, str, np.generic, npt.NDArray[Any],
               Sequence["Scalar"]]
#: The ``inputs`` of ``exec``: names ("0", "1", ... or keyword names) to
#: arrays, or a sequence of positional arrays.
Inputs = Union[Mapping[Union[str, int], npt.ArrayLike], Sequence[npt.ArrayLike]]

class HealthInfo(TypedDict):
    status: str
    version: str
    protocol: int
    backend: str
    device: str
    torch_version: str
    models_loaded: int
    ops: int
    uptime_s: float

class StatsInfo(TypedDict):
    cpu_percent: float
    cpu_count: int
    load_avg: List[float]
    memory_total_gb: float
    memory_used_gb: float
    memory_percent: float
    process_rss_mb: float
    process_cpu_percent: float
    device: str
    accelerator_memory_total_mb: Optional[float]
    accelerator_memory_used_mb: Optional[float]
    accelerator_memory_free_mb: Optional[float]

class ParamInfo(TypedDict):
    name: str
    kind: str
    required: bool
    default: Any

class OpInfo(TypedDict):
    name: str
    category: str
    doc: str
    signature: str
    params: List[ParamInfo]
    outputs: List[str]

class MympsClient:
    """A connection to a mymps server. Safe to share between threads."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5555,
        timeout: Optional[float] = 300.0,
        *,
        transport: str = "tcp",
        token: Optional[str] = None,
    ) -> None: ...
    def exec(
        self, op: str, inputs: Optional[Inputs] = None, **kwargs: Scalar
    ) -> Dict[str, np.ndarray]:
        """Run one whitelisted torch op; see help(MympsClient.exec)."""
    def list_ops(self) -> List[str]: ...
    def describe_op(self, op: str) -> OpInfo: ...
    def health(self) -> HealthInfo: ...
    def stats(self) -> StatsInfo: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def timeout(self) -> Optional[float]: ...
    @property
    def transport(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def server_version(self) -> str: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

class _ResultBuffer:
    """The memory of a result array (its ``.base``)."""

    @property
    def __array_interface__(self) -> Dict[str, Any]: ...
    @property
    def nbytes(self) -> int: ...

def transports() -> List[str]:
    """The transports compiled into this build."""

def _copy_counters() -> Tuple[int, int]:
    """(input copies, result copies) since the module was loaded."""
