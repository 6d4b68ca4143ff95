"""The shapes of the dicts that ``health()``, ``stats()``,
``describe_op()`` and ``generate()`` return (``typing.TypedDict``: plain
dicts at run time)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, TypedDict

__all__ = [
    "HealthInfo",
    "StatsInfo",
    "ParamInfo",
    "OpInfo",
    "ModelInfo",
    "GeneratedSequence",
    "GenerateResult",
    "GenerateStep",
]


class HealthInfo(TypedDict):
    """``MympsClient.health()``."""

    status: str
    version: str
    protocol: int
    backend: str
    device: str
    torch_version: str
    models_loaded: int
    ops: int
    uptime_s: float
    resident_tensors: int
    resident_bytes: int


class StatsInfo(TypedDict):
    """``MympsClient.stats()``; accelerator fields are None on the CPU."""

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
    """One parameter in ``OpInfo``."""

    name: str
    kind: str
    required: bool
    default: Any


class OpInfo(TypedDict):
    """``MympsClient.describe_op(op)``."""

    name: str
    category: str
    doc: str
    signature: str
    params: List[ParamInfo]
    outputs: List[str]


class ModelInfo(TypedDict):
    """``MympsClient.model_info()`` and the entries of ``list_models()``."""

    name: str
    model_type: str
    device: str
    loaded_at: str
    metadata: Dict[str, str]


class GeneratedSequence(TypedDict):
    """One sequence of a ``generate()`` result (an entry of ``sequences``
    for a batch)."""

    #: The new text; None for a model without a tokenizer.
    text: Optional[str]
    #: The new ids (the end-of-sequence or stop id included).
    ids: List[int]
    #: The prompt's ids (a text prompt's once encoded; no padding).
    prompt_ids: List[int]
    #: "length", "stop_id", "stop_string" or "cancelled".
    finish: str


class GenerateResult(TypedDict, total=False):
    """``generate()``'s result (and a ``GenerateStream``'s ``.summary``):
    for one prompt, that sequence's fields (``text``, ``ids``,
    ``prompt_ids``, ``finish``) and the shared ones; for a batch,
    ``sequences`` and the shared ones."""

    text: Optional[str]
    ids: List[int]
    prompt_ids: List[int]
    finish: str
    sequences: List[GeneratedSequence]
    #: Steps (new tokens of the longest sequence).
    steps: int
    #: Forward passes the server ran (the prompt's included).
    forward_passes: int
    #: Bytes of its KV cache.
    cache_bytes: int
    #: The sampling's seed (pass it back to repeat the run); None when greedy.
    seed: Optional[int]


class GenerateStep(TypedDict):
    """What a ``GenerateStream`` yields at each step for one prompt (for a
    batch, a list of these, one per prompt)."""

    #: The step's number, from 0.
    index: int
    #: The new token; None once the sequence has ended (a batch's).
    id: Optional[int]
    #: The text this token completed (possibly "").
    text: str
    #: Set at the sequence's last step: "length", "stop_id",
    #: "stop_string" or "cancelled".
    finish: Optional[str]
