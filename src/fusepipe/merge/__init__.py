"""The `merge` stage: model-merging methods (SCE, RSAF, task arithmetic, TIES, DARE, linear, SLERP), the
streaming safetensors engine and the mergekit export. See docs/merge.md.

The settings (`fusepipe.params.merge`) import without torch; the engine and methods load on first use."""

from __future__ import annotations

from typing import Any

__all__ = ["METHODS", "MergeConfig", "MergeError", "Merged", "merge"]


def __getattr__(name: str) -> Any:
    if name in ("MergeConfig", "MergeError"):
        from fusepipe.params import merge as params

        return getattr(params, name)
    if name in ("METHODS", "Merged"):
        from fusepipe.merge import methods

        return getattr(methods, name)
    if name == "merge":
        from fusepipe.merge.engine import merge

        return merge
    raise AttributeError(name)
