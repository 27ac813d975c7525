"""The `merge` stage: model-merging methods (SCE, RSAF, task arithmetic, TIES, DARE, linear, SLERP), the
streaming safetensors engine and the mergekit export. See docs/merge.md."""

from fusepipe.merge.engine import MergeConfig, merge
from fusepipe.merge.methods import METHODS, Merged, MergeError

__all__ = ["METHODS", "MergeConfig", "MergeError", "Merged", "merge"]
