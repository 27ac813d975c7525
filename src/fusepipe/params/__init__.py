"""The typed settings of every stage, one module per stage (`fusepipe.params.data`, `.align`, `.merge`, ...), and
their base (`Strict`, `NAME_PATTERN`, `check_unique`). `fusepipe.config` composes them into the pipeline's `Config`.

They belong to the ground (README, "Package layers"): pydantic and `fusepipe.errors` only, no stage code, so the
config, the stages and the engines can all read them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Strict(BaseModel):
    """Base: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


def check_unique(names: list[str], where: str) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{where}: names must be unique (duplicated: {', '.join(dupes)})")

