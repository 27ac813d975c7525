"""The `logits` stage's settings (`logits:` in the config)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fusepipe.params import Strict


class LogitsConfig(Strict):
    """Teacher-forced top-k log-probs (FuseChat / ProFuser distributions), stored compactly (docs/logits.md)."""

    k: int = Field(default=10, ge=1, le=64, description="Top-k ids and log-probs kept per target token.")
    modes: list[Literal["gt", "inf"]] = Field(
        default=["gt", "inf"],
        description="gt: every model on the ground truth (all assistant turns); inf: each voted response "
        "through the model that generated it (needs reward_models).",
    )
    shards: int = Field(default=1, ge=1, description="Shards per (mode, model); one job each.")
    overlong: Literal["truncate", "skip"] = Field(
        default="truncate",
        description="A conversation longer than the model's max_model_len: truncate keeps the whole target "
        "messages that fit (never part of one), skip drops it; both are counted in the manifest.",
    )
    batch_size: int = Field(default=256, ge=1, description="Sequences per engine call.")
