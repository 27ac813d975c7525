"""The `fuse` stage's settings (a recipe's `fusion:`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fusepipe.params import Strict


class FusionConfig(Strict):
    """How a recipe builds its targets from the aligned distributions (fusepipe.fuse; docs/train.md)."""

    function: Literal["mince", "udf", "naive"] = Field(
        default="mince",
        description="Training mode (gt): mince (lowest CE on the ground truth wins; FuseChat/ProFuser), udf "
        "(uncertainty-weighted mixture; InfiFusion Eq. 4-5), naive (every distribution its own target).",
    )
    ce_norm: Literal["token", "byte"] = Field(
        default="token",
        description="MinCE: CE per token (papers) or per UTF-8 byte (fair across tokenizers).",
    )
    udf_granularity: Literal["token", "sequence"] = "token"
    udf_epsilon: float = Field(default=1e-6, gt=0)
    udf_include_pivot: bool = Field(
        default=False, description="UDF: mix the pivot's own distribution too (Eq. 4 sums the sources only)."
    )
    vote: Literal["pair", "all"] = Field(
        default="pair",
        description="Inference mode: the winner of the vote within the (pivot, source) pair, or over all.",
    )
