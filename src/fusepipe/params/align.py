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


class AlignOverride(Strict):
    """A recipe's own alignment settings (`recipes[].align`; the tokenizer ablation grid): each key set and
    different from `align:` aligns the recipe's pairs again under align/{pivot}~{source}/{variant}/, where
    `variant` names the keys (`variant_name`). Only a `method` override runs the token links again; the other keys
    reuse the pair's links."""

    method: Literal["faithful", "band", "offsets"] | None = None
    vocab: Literal["ms", "ms_reference", "mined", "em"] | None = None
    n_to_one: Literal["weighted", "last"] | None = None
    projection: Literal["paper", "chain"] | None = None


VARIANT_KEYS = tuple(AlignOverride.model_fields)
# a variant folder's name as Snakemake matches it: key-value pieces joined by "+", in VARIANT_KEYS order
VARIANT_PATTERN = r"(?:{k})-[a-z_]+(?:\+(?:{k})-[a-z_]+)*".format(k="|".join(VARIANT_KEYS))


def variant_name(overrides: dict[str, str]) -> str | None:
    """The folder of a pair aligned with `overrides` (settings that differ from `align:`), e.g. `vocab-mined` or
    `method-band+projection-chain`; None: the pair's own alignment."""
    return "+".join(f"{k}-{overrides[k]}" for k in VARIANT_KEYS if overrides.get(k) is not None) or None


def parse_variant(name: str | None) -> dict[str, str]:
    """`variant_name`'s inverse: {} for None."""
    out: dict[str, str] = {}
    for piece in (name or "").split("+") if name else []:
        key, _, value = piece.partition("-")
        if key not in VARIANT_KEYS or not value:
            raise ValueError(f"align variant {name!r}: {piece!r} is not KEY-VALUE with KEY one of "
                             f"{', '.join(VARIANT_KEYS)}")
        out[key] = value
    return out


def own_links(name: str | None) -> bool:
    """Whether a variant runs the token links again (its `method` differs) or reuses the pair's links."""
    return "method" in parse_variant(name)
