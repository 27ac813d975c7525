"""The `data` stage's settings (`data:` in the config): the mixture's sources, their format and filters."""

from __future__ import annotations

import codecs
from typing import Literal

from pydantic import Field, model_validator

from fusepipe.params import NAME_PATTERN, Strict, check_unique


class DataFilters(Strict):
    min_turns: int = Field(default=1, ge=1, description="Minimum number of assistant turns.")
    max_turns: int | None = Field(default=None, ge=1, description="Maximum number of assistant turns.")
    min_response_chars: int = Field(default=1, ge=0, description="Drop conversations whose final answer is shorter.")


COLUMN_KEYS = {
    "prompt": "the user turn",
    "response": "the assistant turn",
    "system": "a system prompt (optional; empty: none)",
    "input": "text appended to the prompt after a blank line (optional; Alpaca's `input`)",
    "text": "a whole dialogue in one text: ChatML `<|im_start|>user ...` or `### Human: ... ### Assistant: ...`",
}


def check_columns(columns: dict[str, str | None]) -> None:
    """`format: columns` mapping: {prompt, response, system?, input?} (single turn) or {text} (a dialogue)."""
    unknown = sorted(set(columns) - set(COLUMN_KEYS))
    if unknown:
        raise ValueError(f"columns: unknown key(s) {', '.join(unknown)}; keys: {', '.join(COLUMN_KEYS)}")
    if columns.get("text") and any(columns.get(k) for k in ("prompt", "response", "input")):
        raise ValueError("columns: give either text or prompt + response, not both")
    if not columns.get("text"):
        missing = [k for k in ("prompt", "response") if not columns.get(k)]
        if missing:
            raise ValueError(f"columns: {' and '.join(missing)} missing; give prompt + response "
                             "(e.g. {prompt: query, response: response}) or text")


class DataSource(Strict):
    """One dataset of the training mixture."""

    name: str = Field(pattern=NAME_PATTERN)
    path: str = Field(description="JSONL/JSON/Parquet file, a local dataset folder, or a hub id.")
    loader: Literal["auto", "jsonl", "json", "parquet", "hf"] = Field(
        default="auto", description="auto: from the file extension; folders and hub ids use `datasets`."
    )
    format: Literal["auto", "messages", "sharegpt", "alpaca", "orca", "columns"] = Field(
        default="auto", description="columns: read the columns named under `columns`."
    )
    columns: dict[str, str | None] | None = Field(
        default=None, description="format: columns: which column holds what, keys "
        + "; ".join(f"{k}: {v}" for k, v in COLUMN_KEYS.items()) + "."
    )
    split: str = Field(default="train", description="Split name for `datasets.load_dataset`.")
    encoding: str = Field(
        default="utf-8", description="Text encoding of a JSONL/JSON file (any Python codec, e.g. latin-1, cp1252, "
        "utf-16); an undecodable line is a bad row (`data.on_bad_row`)."
    )
    data_files: str | list[str] | None = Field(
        default=None, description="`datasets.load_dataset(data_files=...)`: which files of a hub dataset to read."
    )
    n_samples: int | None = Field(default=None, ge=1, description="Sample this many (seeded), None = all.")
    prompts_only: bool = Field(
        default=False, description="The rows are prompts without reference answers (a prompt set, as in "
        "FuseChat-3.0 or UltraFeedback): each keeps its conversation up to its last user turn, any answer after it "
        "dropped. They feed only the inference mode (generate, reward vote, logits mode inf: ProFuser); the "
        "ground-truth stages (gt logits, SFT, training-mode fusion, the eval split) skip them."
    )
    filters: DataFilters = DataFilters()

    @model_validator(mode="after")
    def _known_encoding(self) -> DataSource:
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"data source {self.name!r}: unknown encoding {self.encoding!r}; use a Python codec "
                             "name such as utf-8, latin-1, cp1252 or utf-16") from None
        return self

    @model_validator(mode="after")
    def _columns_with_format(self) -> DataSource:
        if self.format == "columns" and self.columns is None:
            raise ValueError(f"data source {self.name!r}: format: columns needs a `columns:` mapping, e.g. "
                             "{prompt: query, response: response}")
        if self.columns is not None and self.format != "columns":
            raise ValueError(f"data source {self.name!r}: `columns:` is only read with format: columns "
                             f"(format is {self.format!r})")
        if self.columns is not None:
            try:
                check_columns(self.columns)
            except ValueError as err:
                raise ValueError(f"data source {self.name!r}: {err}") from None
        return self


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
        check_unique([s.name for s in self.sources], "data.sources")
        return self
