"""The `align` stage's settings (`align:` in the config)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fusepipe.params import Strict


class AlignConfig(Strict):
    """Token alignment of every source onto the pivot (FuseChat §2.3, Appendix B.1; docs/align.md)."""

    method: Literal["faithful", "band", "offsets"] = Field(
        default="faithful",
        description="faithful: the reference's DTW over edit distances; band: the same inside a Sakoe-Chiba "
        "band around the character-offset diagonal; offsets: link tokens whose character spans overlap.",
    )
    band: int = Field(default=32, ge=0, description="Band radius in pivot tokens (method band).")
    vocab: Literal["ms", "ms_reference", "mined", "em"] = Field(
        default="ms",
        description="Vocabulary map source id -> pivot id: ms (paper: most frequent link), ms_reference (the "
        "public code's ED·sigmoid(count) rule), mined (minimum edit distance), em (exact match).",
    )
    n_to_one: Literal["weighted", "last"] = Field(
        default="weighted",
        description="Many-to-one links: weighted (paper: average by mapping frequency) or last (public code).",
    )
    projection: Literal["paper", "chain"] = Field(
        default="paper",
        description="paper: the linked source distributions, mapped (FuseChat); chain (fusepipe's option): the "
        "pivot token gets the source's probability of the text it covers (the product of the linked source "
        "tokens' probabilities), the rest keeps the paper's shape (docs/align.md).",
    )
    k: int | None = Field(
        default=None, ge=1, le=64, description="Pivot ids kept per position after projection (None: logits.k)."
    )
