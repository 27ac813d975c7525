"""Typed configuration: one source of truth for the CLI, the Snakefile and `config/schema.yaml`.

The pydantic models below are validated by the CLI; `config/schema.yaml` is their JSON schema
(`fusepipe schema > config/schema.yaml`, checked by a test), validated by Snakemake with defaults filled.
Each stage gets only its own slice (`stage_slice`), so editing one stage's settings reruns that stage and
what depends on it, not everything.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fusepipe.errors import ConfigError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Strict(BaseModel):
    """Base: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


class ModelSpec(Strict):
    """A chat model taking part in the fusion (the pivot, i.e. the target, or a source)."""

    name: str = Field(pattern=NAME_PATTERN, description="Short name used in artifact paths.")
    path: str = Field(description="Local Hugging Face folder or hub id; `{workdir}` is expanded.")
    role: Literal["pivot", "source"]
    chat_template: str | None = Field(
        default=None, description="Jinja chat template overriding the tokenizer's own."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int = Field(default=2048, ge=16)
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_num_seqs: int = Field(default=256, ge=1)
    trust_remote_code: bool = False
    engine: Literal["vllm", "hf"] = "vllm"


class RewardModelSpec(Strict):
    """A reward model (sequence classifier with one scalar output)."""

    name: str = Field(pattern=NAME_PATTERN)
    path: str
    strength: int = Field(ge=1, description="Rank by quality, 1 = strongest; breaks vote ties.")
    chat_template: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int = Field(default=4096, ge=16)
    tensor_parallel_size: int = Field(default=1, ge=1)
    trust_remote_code: bool = False
    engine: Literal["vllm", "hf"] = "vllm"


class DataFilters(Strict):
    min_turns: int = Field(default=1, ge=1, description="Minimum number of assistant turns.")
    max_turns: int | None = Field(default=None, ge=1, description="Maximum number of assistant turns.")
    min_response_chars: int = Field(default=1, ge=0, description="Drop conversations whose final answer is shorter.")


class DataSource(Strict):
    """One dataset of the training mixture."""

    name: str = Field(pattern=NAME_PATTERN)
    path: str = Field(description="JSONL/JSON/Parquet file, a local dataset folder, or a hub id.")
    loader: Literal["auto", "jsonl", "json", "parquet", "hf"] = Field(
        default="auto", description="auto: from the file extension; folders and hub ids use `datasets`."
    )
    format: Literal["auto", "messages", "sharegpt", "alpaca", "orca"] = "auto"
    split: str = Field(default="train", description="Split name for `datasets.load_dataset`.")
    n_samples: int | None = Field(default=None, ge=1, description="Sample this many (seeded), None = all.")
    filters: DataFilters = DataFilters()


class DataConfig(Strict):
    sources: list[DataSource] = Field(min_length=1)
    max_len: int = Field(
        default=2048, ge=16, description="Split dialogues into blocks of at most this many pivot tokens."
    )
    eval_fraction: float = Field(default=0.05, ge=0, lt=1)
    seed: int = 0
    dedupe: bool = True
    on_bad_row: Literal["error", "skip"] = "error"

    @model_validator(mode="after")
    def _unique_names(self) -> DataConfig:
        _check_unique([s.name for s in self.sources], "data.sources")
        return self


class ToyConfig(Strict):
    """The embedded default: a local miniature of the papers' setting, built from a seed."""

    enabled: bool = False
    preset: Literal["tiny", "small"] = "tiny"
    seed: int = 0
    threads: int = Field(default=1, ge=1, description="Torch threads used to train the toy models.")


class Config(Strict):
    workdir: str = "results"
    toy: ToyConfig = ToyConfig()
    data: DataConfig
    models: list[ModelSpec] = Field(min_length=2)
    reward_models: list[RewardModelSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _roles(self) -> Config:
        _check_unique([m.name for m in self.models], "models")
        _check_unique([m.name for m in self.reward_models], "reward_models")
        pivots = [m.name for m in self.models if m.role == "pivot"]
        if len(pivots) != 1:
            raise ValueError(f"exactly one model must have role: pivot (found {len(pivots)}: {pivots})")
        ranks = sorted(r.strength for r in self.reward_models)
        if ranks and ranks != list(range(1, len(ranks) + 1)):
            raise ValueError(f"reward_models strengths must be 1..{len(ranks)} without gaps (found {ranks})")
        return self

    @model_validator(mode="after")
    def _expand_workdir(self) -> Config:
        """`{workdir}` in a path stands for the configured workdir (the toy world lives there)."""
        for entry in [*self.models, *self.reward_models, *self.data.sources]:
            entry.path = entry.path.replace("{workdir}", self.workdir)
        return self

    @property
    def pivot(self) -> ModelSpec:
        return next(m for m in self.models if m.role == "pivot")

    @property
    def sources(self) -> list[ModelSpec]:
        return [m for m in self.models if m.role == "source"]


def _check_unique(names: list[str], where: str) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{where}: names must be unique (duplicated: {', '.join(dupes)})")


# ---------------------------------------------------------------------------------------------- loading


def format_validation_error(err: ValidationError, origin: str) -> str:
    """One line per problem: `origin: key.path: message (got VALUE)`."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {json.dumps(got, default=str)[:80]})"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{origin}: {loc}: {msg}{got_s}")
    return "; ".join(lines)


def load_dict(raw: dict[str, Any], origin: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin)) from None


def load(path: str | Path) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys, got {type(raw).__name__}")
    return load_dict(raw, str(path))


def json_schema() -> dict[str, Any]:
    schema = Config.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


# ---------------------------------------------------------------------------------------------- slices

# Which parts of the config each stage reads. A stage's slice is its Snakemake `params`, so editing a key
# reruns exactly the stages listed here for it (and, through their outputs, what depends on them).
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "toy_world": ("toy",),
    "data": ("data", "pivot"),
}


def stage_slice(cfg: Config, stage: str) -> dict[str, Any]:
    """The part of `cfg` a stage depends on, as plain JSON-able data."""
    if stage not in STAGE_KEYS:
        raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_KEYS)}")
    out: dict[str, Any] = {}
    for key in STAGE_KEYS[stage]:
        value = cfg.pivot if key == "pivot" else getattr(cfg, key)
        out[key] = value.model_dump(mode="json")
    return out


def slice_json(cfg: Config, stage: str) -> str:
    return json.dumps(stage_slice(cfg, stage), sort_keys=True, separators=(",", ":"))


def slice_hash(slice_: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(slice_, sort_keys=True).encode()).hexdigest()[:16]
