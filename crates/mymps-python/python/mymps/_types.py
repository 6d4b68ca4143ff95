"""The shapes of the dicts that ``health()``, ``stats()`` and
``describe_op()`` return (``typing.TypedDict``: plain dicts at run time)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, TypedDict

__all__ = ["HealthInfo", "StatsInfo", "ParamInfo", "OpInfo", "ModelInfo"]


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
