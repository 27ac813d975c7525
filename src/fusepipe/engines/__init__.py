"""Engines that run the fusion's models: `open_engine(spec, task)` picks vLLM or transformers for a config entry.

`spec["engine"]`: `auto` (default; also when the key is missing) = vLLM when it imports here, else transformers
with a warning (once per process); `vllm` = vLLM or a one-line ConfigError; `hf` = transformers. Optional spec
keys: `kv_cache_memory_bytes` (vLLM KV cache; default 128 MiB on CPUs) and `batch_size` (requests per engine
call; vLLM 512, transformers 16). See base.py for the interface, render.py for how prompts become token ids.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from fusepipe.engines.base import (
    Engine,
    EngineStats,
    Generation,
    Request,
    Sampling,
    Task,
    TopK,
    derive_seed,
)
from fusepipe.engines.render import check_model_path
from fusepipe.errors import ConfigError

__all__ = [
    "ENGINES",
    "Engine",
    "EngineStats",
    "Generation",
    "Request",
    "Sampling",
    "Task",
    "TopK",
    "derive_seed",
    "open_engine",
    "resolve_engine",
    "vllm_available",
]

ENGINES = ("auto", "vllm", "hf")
log = logging.getLogger("fusepipe.engines")
_warned_fallback = False


def vllm_available() -> bool:
    """Whether vLLM imports here (the first call imports it: ~10 s; CPU settings are applied before)."""
    from fusepipe.engines.vllm import import_error

    return import_error() is None


def _vllm_reason() -> str:
    from fusepipe.engines.vllm import import_error

    return import_error() or ""


def resolve_engine(spec: dict[str, Any], engine: str | None = None) -> str:
    """`vllm` or `hf` for this model: `engine` overrides the spec's `engine` key (missing = auto)."""
    global _warned_fallback
    choice = engine or spec.get("engine") or "auto"
    if choice not in ENGINES:
        raise ConfigError(
            f"model {spec['name']!r}: unknown engine {choice!r}; use one of {', '.join(ENGINES)}"
        )
    if choice == "hf":
        return "hf"
    if vllm_available():
        return "vllm"
    if choice == "vllm":
        raise ConfigError(
            f"model {spec['name']!r}: engine 'vllm' but vLLM does not import here ({_vllm_reason()}); install "
            "fusepipe[cpu] (CPUs) or fusepipe[gpu] (GPUs), or set `engine: auto` or `engine: hf`"
        )
    if not _warned_fallback:
        _warned_fallback = True
        log.warning("vLLM does not import here (%s): using the transformers engine (slow)", _vllm_reason())
    return "hf"


def open_engine(spec: dict[str, Any], task: Task, engine: str | None = None) -> Engine:
    """Load `spec`'s model for `task` ("generate" / "topk": a causal LM, "score": a reward model) on the chosen engine.

    Use it as a context manager (or call `close()`), so the model is freed before the next one starts."""
    if task not in ("generate", "score", "topk"):
        raise ValueError(f"task must be 'generate', 'score' or 'topk', not {task!r}")
    check_model_path(spec)  # before the slow vLLM import
    if resolve_engine(spec, engine) == "vllm":
        from fusepipe.engines.vllm import VLLMEngine

        return VLLMEngine(spec, task)
    from fusepipe.engines.hf import HFEngine

    if "fusepipe.engines.vllm" in sys.modules:  # a closed vLLM engine's memory goes before an HF model comes
        sys.modules["fusepipe.engines.vllm"].release_pending()
    return HFEngine(spec, task)
