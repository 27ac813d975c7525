"""The `merge` stage: rule `merge` → `python -m fusepipe merge` → `run` → `engine.merge`."""

from __future__ import annotations

from statistics import fmean
from typing import Any

from fusepipe.merge.engine import MANIFEST, load_config, merge


def run(params: dict[str, Any], inputs: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    """Merge inputs["targets"] (folders fine-tuned from inputs["pivot"]) into outputs["model"] with the
    method and parameters of the merge config slice `params`; return the stage manifest's extras."""
    config = load_config(params)
    manifest = merge(inputs["pivot"], list(inputs["targets"]), outputs["model"], config)
    return {
        "method": manifest["method"],
        "params": manifest["params"],
        "n_tensors": len(manifest["tensors"]),
        "shards": manifest["shards"],
        "merge_manifest": MANIFEST,
        **summarize(manifest["tensors"]),
    }


def summarize(tensors: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Means over tensors of each per-tensor fact (per target for list-valued ones): mean_coefficients,
    mean_ratios (RSAF's K), mean_selected (SCE), ..."""
    keys = sorted(
        {k for info in tensors.values() for k, v in info.items() if isinstance(v, (int, float, list))}
    )
    out: dict[str, Any] = {}
    for key in keys:
        values = [info[key] for info in tensors.values() if key in info]
        if isinstance(values[0], list):
            out[f"mean_{key}"] = [round(fmean(col), 6) for col in zip(*values)]
        else:
            out[f"mean_{key}"] = round(fmean(values), 6)
    return out


def run_stage(params: dict[str, Any], workdir: str) -> dict[str, Any]:
    """The pipeline's merge job: the recipe's trained targets onto the pivot -> merge/{recipe}/{method}/model/,
    with `_manifest.json` beside it."""
    from pathlib import Path

    from fusepipe import paths
    from fusepipe.artifacts import Manifest

    method = params["merge"]["method"]
    targets = [paths.train_model(workdir, params["recipe"], t) for t in params["targets"]]
    out = Path(paths.merge_model(workdir, params["recipe"], method))
    manifest = Manifest("merge", params, inputs={"pivot": params["pivot"]["path"], "targets": targets})
    with manifest.phase("merge"):
        extras = run(params["merge"], {"pivot": params["pivot"]["path"], "targets": targets}, {"model": out})
    manifest.data.update(extras)
    manifest.write(out.parent)
    return manifest.data
