"""Type stubs of the native module ``mymps._native`` (Rust, PyO3)."""

import os
from types import TracebackType
from typing import (
    Any,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    Union,
    final,
)

import numpy as np
import numpy.typing as npt
from typing_extensions import Self

from ._types import GenerateResult, GenerateStep, HealthInfo, ModelInfo, OpInfo, StatsInfo
from .graph import Graph

__all__ = [
    "MympsClient",
    "MympsCluster",
    "RemoteTensor",
    "GenerateStream",
    "_ResultBuffer",
    "_copy_counters",
    "transports",
    "__version__",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
]

__version__: str
DEFAULT_HOST: str
DEFAULT_PORT: int

#: A scalar keyword argument of ``exec``: None, bool, int, float, str, or a
#: list or tuple of them (numpy scalars and arrays are converted with tolist()).
_Scalar = Union[None, bool, int, float, str, np.generic, npt.NDArray[Any],
               Sequence["_Scalar"]]
#: A tensor argument: an array (or anything numpy.asarray takes), or a
#: tensor kept on the server.
_Tensor = Union[npt.ArrayLike, "RemoteTensor"]
#: The ``inputs`` of ``exec``: names ("0", "1", ... or keyword names) to
#: arrays or RemoteTensors (None: an optional tensor left out), a sequence
#: of positional ones, or one.
_Inputs = Union[Mapping[Union[str, int], Optional[_Tensor]], Sequence[_Tensor],
                np.ndarray, "RemoteTensor"]
#: ``keep=``: True (every result), a result's name, or a list of names.
_Keep = Union[None, bool, str, Sequence[str]]
#: A result: an array, or a RemoteTensor when kept.
_Result = Union[np.ndarray, "RemoteTensor"]
#: Token ids: a list of ints or a 1-D integer array.
_Ids = Union[Sequence[int], npt.NDArray[np.integer[Any]]]
#: ``generate``'s prompt: a text, ids, or a batch of them (a list, or a
#: 2-D integer array).
_Prompt = Union[str, _Ids, Sequence[Union[str, _Ids]]]

@final
class GenerateStream:
    """A streamed generate (``generate(..., stream=True)``): yields a
    GenerateStep per step for one prompt, a list of them for a batch; see
    help(mymps.GenerateStream)."""

    def __iter__(self) -> Self: ...
    def __next__(self) -> Union[GenerateStep, List[GenerateStep]]: ...
    @property
    def summary(self) -> Optional[GenerateResult]:
        """The whole result, once the stream has ended."""
    @property
    def ended(self) -> bool: ...
    def cancel(self) -> None:
        """Ask the server to stop; the steps computed still come."""
    def close(self) -> None:
        """Stop the generation and read the stream to its end."""
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

@final
class RemoteTensor:
    """A tensor kept on a mymps server; see help(mymps.RemoteTensor)."""

    @property
    def handle(self) -> Optional[int]: ...
    @property
    def name(self) -> Optional[str]: ...
    @property
    def shape(self) -> Optional[Tuple[int, ...]]: ...
    @property
    def dtype(self) -> Optional[np.dtype[Any]]: ...
    @property
    def device(self) -> Optional[str]: ...
    @property
    def host(self) -> Optional[str]: ...
    @property
    def ndim(self) -> Optional[int]: ...
    @property
    def nbytes(self) -> Optional[int]: ...
    @property
    def freed(self) -> bool: ...
    def numpy(self) -> np.ndarray:
        """Its data, fetched from the server."""
    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> np.ndarray: ...
    def free(self) -> bool:
        """Frees it on the server now."""

class MympsClient:
    """A connection to a mymps server. Safe to share between threads."""

    def __new__(
        cls,
        host: str = "127.0.0.1",
        port: int = 5555,
        timeout: Optional[float] = 300.0,
        *,
        transport: str = "tcp",
        token: Optional[str] = None,
        tls_ca: Optional[Union[str, "os.PathLike[str]"]] = None,
        tls_fingerprint: Optional[str] = None,
    ) -> Self: ...
    def exec(
        self, op: str, inputs: Optional[_Inputs] = None, **kwargs: Any
    ) -> Dict[str, _Result]:
        """Run one whitelisted torch op (keep=... keeps results on the
        server); see help(MympsClient.exec)."""
    def list_ops(self) -> List[str]: ...
    def load_model(
        self,
        name: str,
        model_type: str = "huggingface",
        model_path: Optional[str] = None,
        model_class: Optional[str] = None,
        dtype: Optional[str] = None,
        trust_remote_code: bool = False,
        config: Optional[Union[Mapping[str, Any], str]] = None,
        engine: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Load a model on the server; see help(MympsClient.load_model)."""
    def infer(
        self, name: str, inputs: Optional[_Inputs] = None, *, keep: _Keep = None
    ) -> Dict[str, _Result]:
        """A forward pass of a loaded model; see help(MympsClient.infer)."""
    def generate(
        self,
        model: str,
        prompt: _Prompt,
        max_new_tokens: Optional[int] = None,
        *,
        do_sample: Optional[bool] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        repetition_penalty: Optional[float] = None,
        seed: Optional[int] = None,
        stop: Optional[Union[str, Sequence[str]]] = None,
        stop_ids: Optional[Union[int, _Ids]] = None,
        ignore_eos: bool = False,
        add_special_tokens: Optional[bool] = None,
        skip_special_tokens: Optional[bool] = None,
        stream: bool = False,
    ) -> Any:
        """Generate text with a loaded model: a GenerateResult, or a
        GenerateStream with stream=True; see help(MympsClient.generate)."""
    def encode(self, model: str, text: str, add_special_tokens: bool = True) -> List[int]:
        """`text` as token ids, by the model's tokenizer."""
    def decode(self, model: str, ids: _Ids, skip_special_tokens: bool = True) -> str:
        """Token ids as text, by the model's tokenizer."""
    def put(self, array: npt.ArrayLike) -> RemoteTensor:
        """Keep an array on the server; see help(MympsClient.put)."""
    def put_many(self, arrays: Any) -> Any:
        """Keep several arrays (a dict or a list) in one request."""
    def get(self, tensors: Any) -> Any:
        """Fetch a RemoteTensor (or a list or dict of them) as arrays."""
    def free(self, tensors: Any) -> int:
        """Free RemoteTensors now; how many the server freed."""
    def share(self, tensor: RemoteTensor, name: str) -> RemoteTensor:
        """Share a tensor under a server-wide name."""
    def remote(self, name: str) -> RemoteTensor:
        """The tensor shared under `name`, by name (described by the server:
        .shape, .dtype, .device known); UnknownTensorError if none is."""
    def graph(self) -> Graph:
        """A graph builder for ops run in one request."""
    def _register_graph(self, steps: Any, outputs: Any) -> int: ...
    def _run_graph(
        self, graph: Any, inputs: Any = None, keep: _Keep = None
    ) -> Dict[str, _Result]: ...
    def list_models(self) -> List[ModelInfo]: ...
    def model_info(self, name: str) -> ModelInfo: ...
    def unload_model(self, name: str) -> Dict[str, str]: ...
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

@final
class MympsCluster:
    """A client of several mymps servers, used like one MympsClient: exec
    to the least busy host that is up, infer to a host that has the model,
    failover when a host dies. Safe to share between threads."""

    def __new__(
        cls,
        addrs: Optional[Sequence[Union[str, Tuple[str, int]]]] = None,
        *,
        config: Optional[str] = None,
        timeout: Optional[float] = None,
        token: Optional[str] = None,
        tls_ca: Optional[Union[str, "os.PathLike[str]"]] = None,
        tls_fingerprint: Optional[str] = None,
        health_interval: Optional[float] = None,
    ) -> Self: ...
    def exec(
        self, op: str, inputs: Optional[_Inputs] = None, **kwargs: Any
    ) -> Dict[str, _Result]:
        """Run one whitelisted torch op on the least busy host that is up
        (on the host of its RemoteTensors, if any)."""
    def infer(
        self, name: str, inputs: Optional[_Inputs] = None, *, keep: _Keep = None
    ) -> Dict[str, _Result]:
        """A forward pass on the least busy host that has the model."""
    def generate(
        self,
        model: str,
        prompt: _Prompt,
        max_new_tokens: Optional[int] = None,
        *,
        do_sample: Optional[bool] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        repetition_penalty: Optional[float] = None,
        seed: Optional[int] = None,
        stop: Optional[Union[str, Sequence[str]]] = None,
        stop_ids: Optional[Union[int, _Ids]] = None,
        ignore_eos: bool = False,
        add_special_tokens: Optional[bool] = None,
        skip_special_tokens: Optional[bool] = None,
        stream: bool = False,
    ) -> Any:
        """Generate text with a loaded model: a GenerateResult, or a
        GenerateStream with stream=True; on a host that has it."""
    def encode(self, model: str, text: str, add_special_tokens: bool = True) -> List[int]:
        """`text` as token ids, by the model's tokenizer."""
    def decode(self, model: str, ids: _Ids, skip_special_tokens: bool = True) -> str:
        """Token ids as text, by the model's tokenizer."""
    def put(self, array: npt.ArrayLike) -> RemoteTensor:
        """Keep an array on the least busy host (its .host says which)."""
    def put_many(self, arrays: Any) -> Any: ...
    def get(self, tensors: Any) -> Any: ...
    def free(self, tensors: Any) -> int: ...
    def share(self, tensor: RemoteTensor, name: str) -> RemoteTensor: ...
    def remote(self, name: str) -> RemoteTensor: ...
    def graph(self) -> Graph: ...
    def _register_graph(self, steps: Any, outputs: Any) -> int: ...
    def _run_graph(
        self, graph: Any, inputs: Any = None, keep: _Keep = None
    ) -> Dict[str, _Result]: ...
    def health(self) -> HealthInfo: ...
    def load_model(
        self,
        name: str,
        model_type: str = "huggingface",
        model_path: Optional[str] = None,
        model_class: Optional[str] = None,
        dtype: Optional[str] = None,
        trust_remote_code: bool = False,
        config: Optional[Union[Mapping[str, Any], str]] = None,
        engine: Optional[str] = None,
        *,
        hosts: Optional[Sequence[str]] = None,
    ) -> Dict[str, Dict[str, Any]]:
        """Load a model on `hosts` (names or addresses), or on all; {host: info}."""
    def unload_model(self, name: str) -> Dict[str, Any]: ...
    def list_models(self) -> Dict[str, List[ModelInfo]]: ...
    def list_ops(self) -> List[str]: ...
    def status(self) -> List[Dict[str, Any]]:
        """Each host: name, addr, state, in_flight, latency_ms, device, models, ..."""
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...

@final
class _ResultBuffer:
    """The memory of a result array (its ``.base``)."""

    @property
    def __array_interface__(self) -> Dict[str, Any]: ...
    @property
    def __array_struct__(self) -> Any: ...
    @property
    def nbytes(self) -> int: ...

def transports() -> List[str]:
    """The transports compiled into this build."""

def _copy_counters() -> Tuple[int, int]:
    """(input copies, result copies) since the module was loaded."""
