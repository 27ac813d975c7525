"""The `toy_world` stage's settings (`toy:` in the config)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fusepipe.params import Strict


class ToyConfig(Strict):
    """The embedded default: a local miniature of the papers' setting, built from a seed."""

    enabled: bool = False
    preset: Literal["tiny", "small"] = "tiny"
    seed: int = 0
    threads: int = Field(default=1, ge=1, description="Torch threads used to train the toy models.")
    workers: int = Field(
        default=1, ge=1,
        description="Toy models built side by side, one process of `threads` threads each (the job asks for "
        "workers × threads CPUs); every model has its own seed, so the world is the same for any value.",
    )
