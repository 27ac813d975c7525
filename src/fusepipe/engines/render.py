"""Turning conversations into token ids, identically for every engine, and the checks that come with it.

- Generation: `apply_chat_template(messages, add_generation_prompt=True, tokenize=False)`, then tokenized with
  `add_special_tokens=False` (the template writes bos itself; this is also what vLLM's `llm.chat` does). Prompts
  longer than `max_model_len - max_tokens` keep their last tokens (`prompt_truncated`).
- Scoring: the whole conversation (last message = the response) with the reward model's own template, no
  generation prompt, kept to its last `max_model_len` tokens.
- Stop ids: eos ids of generation_config.json (else config.json), the tokenizer's eos, the special token the chat
  template writes after an assistant turn, plus `Sampling.stop_token_ids`. Both engines get this same explicit set.
- Texts are decoded here too (`skip_special_tokens=True`), so both engines return the same text for the same ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusepipe.engines.base import Request, Sampling
from fusepipe.errors import ConfigError, DataError
from fusepipe.models import load_tokenizer

_SENTINEL = "FUSEPIPE_END_OF_TURN_PROBE"


@dataclass(frozen=True)
class Rendered:
    ids: list[int]
    truncated: bool = False


def check_model_path(spec: dict[str, Any]) -> None:
    """A local model path must be a folder with a config.json (hub ids such as `org/name` pass through)."""
    path = str(spec["path"])
    local = path.startswith(("/", ".", "~")) or path.count("/") > 1 or Path(path).exists()
    if not local:
        return
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"model {spec['name']!r}: no model at {path!r} (no such folder; set its `path:` to a Hugging Face "
            "model folder or hub id)"
        )
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"model {spec['name']!r}: no model at {path!r} (the folder has no config.json; point `path:` at a "
            "Hugging Face model folder)"
        )


def check_reward_head(spec: dict[str, Any]) -> None:
    """A reward model must be a sequence classifier with a single output."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(spec["path"], trust_remote_code=spec.get("trust_remote_code", False))
    labels = getattr(config, "num_labels", 1)
    if labels != 1:
        raise ConfigError(
            f"model {spec['name']!r}: a reward model needs one output (num_labels=1), {spec['path']!r} has "
            f"{labels}; use a scalar reward model"
        )


def check_scores(name: str, scores: list[float], keys: list[str]) -> None:
    """Reward scores must be finite: a NaN/inf means a broken checkpoint or an overflow in a low precision."""
    for score, key in zip(scores, keys, strict=True):
        if not math.isfinite(score):
            raise DataError(
                f"reward model {name!r}: score {score} for {key!r} is not finite (broken weights or a dtype "
                "overflow; try dtype: float32)"
            )


def row_keys(keys: list[str] | None, n: int) -> list[str]:
    """The keys used in messages: the given ones, else `#<index>`."""
    if keys is None:
        return [f"#{i}" for i in range(n)]
    if len(keys) != n:
        raise ValueError(f"{len(keys)} keys for {n} conversations")
    return [k or f"#{i}" for i, k in enumerate(keys)]


def _as_int_set(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value}


def model_eos_ids(spec: dict[str, Any]) -> set[int]:
    """eos ids of the model: generation_config.json, else config.json."""
    from transformers import AutoConfig, GenerationConfig

    trust = spec.get("trust_remote_code", False)
    try:
        return _as_int_set(
            GenerationConfig.from_pretrained(spec["path"], trust_remote_code=trust).eos_token_id
        )
    except OSError:
        config = AutoConfig.from_pretrained(spec["path"], trust_remote_code=trust)
        return _as_int_set(getattr(config.get_text_config(), "eos_token_id", None))


def end_of_turn_id(tok: Any) -> int | None:
    """The special token the chat template writes right after an assistant message (`</s>`, `<|im_end|>`...)."""
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = tok.apply_chat_template(probe, tokenize=False)
    except Exception:  # noqa: BLE001 - templates may reject the probe (roles, system prompt): no end-of-turn then
        return None
    if not isinstance(text, str) or _SENTINEL not in text:
        return None
    after = text.split(_SENTINEL, 1)[1]
    ids = tok(after, add_special_tokens=False)["input_ids"] if after else []
    return ids[0] if ids and ids[0] in set(tok.all_special_ids) else None


class Renderer:
    """A model's tokenizer and the rendering rules above. `task` decides the checks and the stop ids."""

    def __init__(self, spec: dict[str, Any], task: str):
        check_model_path(spec)
        self.name: str = spec["name"]
        self.max_model_len: int = int(spec["max_model_len"])
        self.tok = load_tokenizer(spec)
        self.eos_ids: set[int] = set()
        if task == "generate":
            eot = end_of_turn_id(self.tok)
            self.eos_ids = model_eos_ids(spec) | _as_int_set(self.tok.eos_token_id) | _as_int_set(eot)
        elif task == "score":
            check_reward_head(spec)

    @property
    def pad_id(self) -> int:
        """Padding id for batches (only ever masked out)."""
        for candidate in (self.tok.pad_token_id, self.tok.eos_token_id, *sorted(self.eos_ids)):
            if candidate is not None:
                return int(candidate)
        return 0

    def stop_ids(self, sampling: Sampling) -> list[int]:
        return sorted(self.eos_ids | set(sampling.stop_token_ids))

    def _encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def prompt(self, request: Request, max_tokens: int, key: str) -> Rendered:
        """Token ids of a generation prompt, left-truncated to leave room for `max_tokens`."""
        check_prompt(self.name, request.messages, key)
        budget = self.max_model_len - max_tokens
        if budget < 1:
            raise ConfigError(
                f"model {self.name!r}: max_tokens {max_tokens} leaves no room for a prompt in max_model_len "
                f"{self.max_model_len}; raise max_model_len or lower max_tokens"
            )
        text = self.tok.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)
        return _keep_last(self._encode(text), budget)

    def conversation(self, messages: list[dict[str, str]], key: str) -> Rendered:
        """Token ids of a whole conversation to score, left-truncated to max_model_len."""
        check_scored(self.name, messages, key)
        text = self.tok.apply_chat_template(messages, tokenize=False)
        return _keep_last(self._encode(text), self.max_model_len)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


def _keep_last(ids: list[int], limit: int) -> Rendered:
    if len(ids) <= limit:
        return Rendered(ids)
    return Rendered(ids[-limit:], truncated=True)


def check_prompt(name: str, messages: list[dict[str, str]], key: str) -> None:
    """A prompt is a conversation ending with a non-empty user message."""
    if not messages or messages[-1].get("role") != "user":
        roles = ", ".join(str(m.get("role")) for m in messages) or "none"
        raise DataError(
            f"model {name!r}: request {key!r} does not end with a user message (roles: {roles}); a prompt is "
            "the conversation up to its last user turn"
        )
    if not str(messages[-1].get("content") or "").strip():
        raise DataError(
            f"model {name!r}: request {key!r} has an empty user message; drop the row or fill it in"
        )


def check_scored(name: str, messages: list[dict[str, str]], key: str) -> None:
    """A scored conversation ends with the assistant response, after at least one user message."""
    roles = [m.get("role") for m in messages]
    if len(messages) < 2 or roles[-1] != "assistant" or "user" not in roles:
        shown = ", ".join(str(r) for r in roles) or "none"
        raise DataError(
            f"reward model {name!r}: conversation {key!r} must be user turn(s) then the assistant response "
            f"(roles: {shown})"
        )
