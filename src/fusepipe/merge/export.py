"""`fusepipe merge export-mergekit`: the mergekit YAML equivalent of a merge config, with notes where
mergekit's semantics differ from fusepipe's (docs/merge.md has the full table)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fusepipe.merge.engine import MergeConfig, load_config
from fusepipe.merge.methods import MergeError

COMMON_NOTES = [
    "fusepipe computes in float32 and casts once; `dtype: float32` below makes mergekit do the same",
    "mergekit needs equal vocabularies or `tokenizer_source` (it remaps rows; fusepipe crops to the pivot's rows)",
]


def export_mergekit(
    params: dict[str, Any] | MergeConfig, pivot: str | Path, targets: list[str | Path]
) -> str:
    """The mergekit config (YAML text) that runs the same merge as `params` on pivot + targets."""
    config = load_config(params)
    pivot, targets = str(pivot), [str(t) for t in targets]
    p = config.method_params()
    notes = list(COMMON_NOTES)
    weights = getattr(p, "weights", None) or [1.0] * len(targets)
    if config.method == "sce":
        doc = _doc("sce", pivot, [{"model": t} for t in targets], {"select_topk": p.tau})
        if p.semantics == "fusechat":  # `semantics: mergekit` follows mergekit rule for rule: no notes
            notes.append(
                "semantics differ: mergekit applies the selection mask to the deltas (fusepipe "
                "`semantics: mergekit`); FuseChat's mask only shapes the coefficients"
            )
            notes.append(
                "mergekit falls back to uniform weights when sum_j mean(delta_j^2) < 1e-6, "
                "fusepipe's fusechat semantics only when it is exactly 0"
            )
            notes.append(
                "where no element varies across targets (one target, identical or untouched tensors) "
                "mergekit keeps the pivot's tensor, fusepipe's fusechat semantics merges without selection "
                "(K=1: the target)"
            )
    elif config.method == "ties":
        models = [
            {"model": t, "parameters": {"weight": w, "density": p.density}} for t, w in zip(targets, weights)
        ]
        doc = _doc("ties", pivot, models, {"normalize": True, "lambda": p.scaling})
    elif config.method == "dare":
        models = [
            {"model": t, "parameters": {"weight": w, "density": 1 - p.drop_rate}}
            for t, w in zip(targets, weights)
        ]
        shared = {"normalize": True, "rescale": p.rescale, "lambda": p.scaling}
        doc = _doc("dare_ties" if p.combine == "ties" else "dare_linear", pivot, models, shared)
        notes.append(
            f"random masks differ from fusepipe's (seed {p.seed}); pass --random-seed for repeatability"
        )
        if p.rescale:
            notes.append(
                "mergekit rescales kept deltas to the original L1 norm, fusepipe by 1/(1-p) (DARE Eq. 3)"
            )
    elif config.method == "task_arithmetic":
        models = [{"model": t, "parameters": {"weight": w}} for t, w in zip(targets, weights)]
        doc = _doc("task_arithmetic", pivot, models, {"lambda": p.scaling})
    elif config.method == "linear":
        models = [{"model": t, "parameters": {"weight": w}} for t, w in zip(targets, weights)]
        doc = {"merge_method": "linear", "models": models, "parameters": {"normalize": True}}
    elif config.method == "slerp":
        if len(targets) not in (1, 2):
            raise MergeError(f"slerp merges 1 or 2 targets, got {len(targets)}; list fewer targets")
        ends = [pivot, targets[0]] if len(targets) == 1 else targets
        doc = _doc("slerp", ends[0], [{"model": m} for m in ends], {"t": p.t})
    else:
        raise MergeError(
            f"{config.method} has no mergekit equivalent; export sce, ties, dare, "
            "task_arithmetic, linear or slerp"
        )
    doc["dtype"] = "float32"
    if config.dtype != "auto":
        doc["out_dtype"] = config.dtype
    else:
        notes.append(
            "fusepipe keeps the pivot's dtype (dtype: auto); set out_dtype to it, mergekit writes float32"
        )
    header = [f"# mergekit equivalent of fusepipe merge method={config.method} (written by fusepipe)"]
    header += [f"# note: {n}" for n in notes]
    return "\n".join(header) + "\n" + yaml.safe_dump(doc, sort_keys=False)


def _doc(method: str, base: str, models: list[dict[str, Any]], parameters: dict[str, Any]) -> dict[str, Any]:
    return {"merge_method": method, "base_model": base, "models": models, "parameters": parameters}
