"""`export_mergekit`: the YAML per method, its notes where semantics differ, and (when mergekit is
installed) mergekit's own `sce` run on that YAML equals fusepipe's `semantics: mergekit`."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch
import yaml

from fusepipe.merge import MergeConfig, MergeError, merge
from fusepipe.merge.export import export_mergekit

from .test_engine import tensors

T = ["/m/t1", "/m/t2"]


def exported(params: dict, targets=T) -> tuple[dict, str]:
    text = export_mergekit(params, "/m/pivot", targets)
    return yaml.safe_load(text), text


def test_sce():
    doc, text = exported({"method": "sce", "sce": {"tau": 0.1}})
    assert doc == {
        "merge_method": "sce", "base_model": "/m/pivot", "models": [{"model": "/m/t1"}, {"model": "/m/t2"}],
        "parameters": {"select_topk": 0.1}, "dtype": "float32",
    }  # fmt: skip
    assert "# note: semantics differ: mergekit applies the selection mask to the deltas" in text
    assert "uniform weights when sum_j mean(delta_j^2) < 1e-6" in text
    _, text = exported({"method": "sce", "sce": {"semantics": "mergekit"}, "dtype": "bfloat16"})
    assert "semantics differ" not in text and "out_dtype: bfloat16" in text
    assert "1e-6" not in text and "no element varies" not in text  # mergekit semantics: mergekit's own rules


def test_ties_dare_task_arithmetic_linear():
    doc, _ = exported({"method": "ties", "ties": {"density": 0.5, "scaling": 0.8, "weights": [1, 2]}})
    assert doc["merge_method"] == "ties" and doc["parameters"] == {"normalize": True, "lambda": 0.8}
    assert doc["models"][1] == {"model": "/m/t2", "parameters": {"weight": 2.0, "density": 0.5}}
    doc, text = exported({"method": "dare", "dare": {"drop_rate": 0.4, "combine": "linear"}})
    assert doc["merge_method"] == "dare_linear" and doc["models"][0]["parameters"][
        "density"
    ] == pytest.approx(0.6)
    assert doc["parameters"] == {"normalize": True, "rescale": True, "lambda": 1.0} and "L1 norm" in text
    doc, _ = exported({"method": "task_arithmetic"})
    assert doc["parameters"] == {"lambda": 0.3} and doc["models"][0]["parameters"] == {"weight": 1.0}
    doc, _ = exported({"method": "linear", "linear": {"weights": [1, 3]}})
    assert "base_model" not in doc and doc["parameters"] == {"normalize": True}


def test_slerp_endpoints():
    doc, _ = exported({"method": "slerp", "slerp": {"t": 0.25}}, targets=["/m/t1"])
    assert doc["base_model"] == "/m/pivot" and [m["model"] for m in doc["models"]] == ["/m/pivot", "/m/t1"]
    doc, _ = exported({"method": "slerp"})
    assert doc["base_model"] == "/m/t1" and doc["parameters"] == {"t": 0.5}
    with pytest.raises(MergeError, match="slerp merges 1 or 2 targets, got 3"):
        exported({"method": "slerp"}, targets=T + ["/m/t3"])


def test_rsaf_has_no_equivalent():
    with pytest.raises(MergeError, match="rsaf has no mergekit equivalent; export sce, ties"):
        exported({"method": "rsaf"})


MERGEKIT = os.environ.get("MERGEKIT_YAML") or shutil.which("mergekit-yaml")


@pytest.mark.skipif(not MERGEKIT, reason="mergekit not installed: set MERGEKIT_YAML=/path/to/mergekit-yaml")
@pytest.mark.parametrize("tau", [0.1, 1.0])
@pytest.mark.parametrize("pair", [("t1", "t2"), ("n1", "n2")])
def test_mergekit_sce_equals_semantics_mergekit(toy_ckpts, tmp_path, pair, tau):
    """mergekit 0.1.5's own `sce` on the exported YAML; n1/n2: norm weights with tiny deltas in every target
    (Σ_j mean(δ̂_j²) < 1e-6: mergekit's uniform weights)."""
    params = {"method": "sce", "sce": {"tau": tau, "semantics": "mergekit"}}
    targets = [toy_ckpts[t] for t in pair]
    (tmp_path / "sce.yml").write_text(export_mergekit(params, toy_ckpts["pivot"], targets))
    subprocess.run([MERGEKIT, "sce.yml", "mk", "--quiet", "--no-write-model-card"], cwd=tmp_path, check=True,
                   capture_output=True)  # fmt: skip
    merge(toy_ckpts["pivot"], targets, tmp_path / "ours", MergeConfig.model_validate(params))
    ours, theirs = tensors(tmp_path / "ours"), tensors(tmp_path / "mk")
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-7, msg=name)
