"""The `reward` and `vote` stages' settings (`reward:` and `vote:` in the config)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fusepipe.params import Strict


class RewardConfig(Strict):
    batch_size: int = Field(default=256, ge=1, description="Conversations per engine call.")


class VoteConfig(Strict):
    """How reward models pick a response per prompt (ProFuser: majority vote, strongest RM breaks ties)."""

    method: Literal["majority", "zscore"] = Field(
        default="majority",
        description="majority: each RM votes for its best candidate, ties to the strongest RM's pick; "
        "zscore: the highest mean over RMs of the per-RM z-scored score.",
    )
