"""`fusepipe plan`: runs on the toy config and every recipe, its job counts equal Snakemake's DAG, its estimates
obey simple invariants, and an unknown model size fails with a message that says what to set."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import copy_workflow

from fusepipe import ablations, plan
from fusepipe.cli import cli
from fusepipe.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "config" / "config.yaml"
RECIPES = sorted((REPO / "config" / "recipes").glob("*.yaml"))
STAGE_OF = {"toy_world": "data", "data": "data", "generate": "generate", "reward": "reward", "vote": "vote",
            "logits_gt": "logits", "logits_inf": "logits", "align_links": "align", "align_vocab": "align",
            "align_project": "align", "align_coverage": "align", "fuse": "fuse", "train": "train", "merge": "merge",
            "evaluate": "evaluate", "eval_results": "evaluate"}


def dag_counts(configfile: Path | None, root: Path) -> dict[str, int]:
    """Jobs per rule of `snakemake -n all` (a plain dry run, no network) in `root`, a fresh workflow copy: what a
    run from scratch would do, whatever the checkout's own results/ holds."""
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-n", "all", "--quiet", "rules"]
    if configfile is not None:
        cmd += ["--configfile", str(configfile)]
    out = subprocess.run(cmd, cwd=copy_workflow(root), capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    stats = out.stdout + out.stderr
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats.split("Job stats:")[1], re.MULTILINE)}


@pytest.mark.parametrize("configfile", [None, *RECIPES], ids=["toy", *[p.stem for p in RECIPES]])
def test_jobs_per_stage_equal_the_dag(configfile, tmp_path):
    cfg = plan.load(configfile or BASE, BASE if configfile else None)
    est = plan.estimate(cfg)
    counts = dag_counts(configfile, tmp_path)
    expected = {s: 0 for s in plan.STAGES}
    for rule, n in counts.items():
        if rule in STAGE_OF:
            expected[STAGE_OF[rule]] += n
    assert {s: est["stages"][s]["jobs"] for s in plan.STAGES} == expected
    assert est["total"]["jobs"] == counts["total"]


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_estimates_are_positive_and_consistent(recipe):
    est = plan.estimate(plan.load(recipe, BASE), plan.Assumptions(gpu="a100"))
    st = est["stages"]
    assert st["train"]["gpu_hours"] > 0 and st["logits"]["gpu_hours"] > 0 and st["align"]["cpu_hours"] > 0
    assert est["total"]["gpu_hours"] == pytest.approx(sum(s["gpu_hours"] for s in st.values()))
    assert 0 < st["train"]["peak_gpu_bytes"] < 80 * plan.GiB  # the recipes' training fits an 80 GB GPU
    faster = plan.estimate(plan.load(recipe, BASE), plan.Assumptions(gpu="h100"))
    assert faster["stages"]["train"]["gpu_hours"] == pytest.approx(st["train"]["gpu_hours"] * 312 / 989)


def test_train_gpu_hours_scale_linearly_with_epochs():
    raw = yaml.safe_load((REPO / "config" / "recipes" / "fusechat-7b.yaml").read_text())
    hours = []
    for scale in (1.0, 2.0, 3.0):
        for r in raw["recipes"]:
            r["train"]["epochs_scale"] = scale
        cfg = plan.pipeline.load_dict(plan.deep_merge(yaml.safe_load(BASE.read_text()), raw))
        hours.append(plan.estimate(cfg)["stages"]["train"]["gpu_hours"])
    assert hours[1] == pytest.approx(2 * hours[0]) and hours[2] == pytest.approx(3 * hours[0])


def test_zero3_shards_the_weights_too():
    raw = yaml.safe_load((REPO / "config" / "recipes" / "infifusion-llama31.yaml").read_text())
    cfg = plan.pipeline.load_dict(plan.deep_merge(yaml.safe_load(BASE.read_text()), raw))
    z2 = plan.estimate(cfg)["stages"]["train"]["peak_gpu_bytes"]
    for r in raw["recipes"]:
        r["train"]["zero_stage"] = 3
    cfg = plan.pipeline.load_dict(plan.deep_merge(yaml.safe_load(BASE.read_text()), raw))
    z3 = plan.estimate(cfg)["stages"]["train"]["peak_gpu_bytes"]
    n = 8_030_261_248
    assert z2 - z3 == pytest.approx(2 * n + 14 * n / 8 - 16 * n / 8)


def test_unknown_model_size_names_the_model_and_asks_for_params_b(tmp_path):
    recipe = yaml.safe_load((REPO / "config" / "recipes" / "fusechat-7b.yaml").read_text())
    recipe["models"][1]["path"] = "someone/secret-model-13b"
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError) as err:
        plan.estimate(plan.load(path, BASE))
    assert "model 'starling' (someone/secret-model-13b): unknown size" in str(err.value)
    assert "set `params_b:`" in str(err.value)
    recipe["models"][1]["params_b"] = 13
    path.write_text(yaml.safe_dump(recipe))
    est = plan.estimate(plan.load(path, BASE))
    assert est["models"]["starling"]["params"] == 13_000_000_000


def test_unknown_dataset_size_asks_for_n_samples(tmp_path):
    recipe = yaml.safe_load((REPO / "config" / "recipes" / "fusechat-7b.yaml").read_text())
    recipe["data"]["sources"][0]["path"] = "someone/unknown-data"
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match=r"data source 'fusechat-mixture' \(someone/unknown-data\): unknown number "
                                          r"of samples .* set n_samples on it"):
        plan.estimate(plan.load(path, BASE))


def test_deep_merge_is_snakemakes():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": [1], "c": 1}
    assert plan.deep_merge(base, {"a": {"y": [3]}, "b": []}) == {"a": {"x": 1, "y": [3]}, "b": [], "c": 1}


def test_local_data_is_measured(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"query": "q" * 400, "response": "r" * 800}) + "\n" for _ in range(30)))
    raw = yaml.safe_load((REPO / "config" / "recipes" / "fusechat-7b.yaml").read_text())
    raw["data"]["sources"] = [{"name": "local", "path": str(data), "format": "columns",
                               "columns": {"prompt": "query", "response": "response"}}]
    cfg = plan.pipeline.load_dict(plan.deep_merge(yaml.safe_load(BASE.read_text()), raw))
    (src,) = plan.estimate(cfg)["data"]["sources"]
    assert src == {"name": "local", "samples": 30, "tokens": 300, "response": 200, "origin": "measured",
                   "prompts_only": False}


def test_a_prompt_set_counts_for_the_inference_mode_only():
    """The toy prompt set (before the world is built: its size from the world's spec) adds prompts to generate and
    the vote, none to the ground-truth stages: the gt logits and the SFT recipe cost the same without it."""
    from fusepipe.toy.world import prompt_set_size

    raw = yaml.safe_load(BASE.read_text())
    raw["workdir"] = "/nonexistent/fusepipe-plan"  # nothing built: sizes from the presets
    with_set = plan.estimate(plan.pipeline.load_dict(raw))
    raw["data"]["sources"] = [s for s in raw["data"]["sources"] if not s.get("prompts_only")]
    without = plan.estimate(plan.pipeline.load_dict(raw))
    n = prompt_set_size("tiny", 0)
    assert with_set["data"]["train_samples"] == pytest.approx(without["data"]["train_samples"] + n)
    assert with_set["data"]["sources"][-1] | {"samples": n} == with_set["data"]["sources"][-1]
    ratio = with_set["data"]["train_samples"] / without["data"]["train_samples"]
    gen = [r["stages"]["generate"]["cpu_hours"] for r in (with_set, without)]
    assert gen[0] == pytest.approx(gen[1] * ratio)
    assert with_set["data"]["tokens_per_sample"] == without["data"]["tokens_per_sample"]


def test_cli_table_json_and_token_override():
    runner = CliRunner()
    recipe = str(REPO / "config" / "recipes" / "profuser-vicuna.yaml")
    res = runner.invoke(cli, ["plan", "--configfile", recipe, "--base", str(BASE), "--gpu", "a100"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0].split() == ["stage", "jobs", "GPU-h", "CPU-h", "disk", "peak", "GPU", "peak",
                                                  "host"]
    assert any(line.startswith("total") for line in res.output.splitlines())
    res = runner.invoke(cli, ["plan", "--configfile", recipe, "--base", str(BASE), "--json",
                              "--tokens", "orca-best=900/500"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["data"]["sources"][0]["tokens"] == 900 and out["data"]["sources"][0]["origin"] == "--tokens"
    res = runner.invoke(cli, ["plan", "--configfile", recipe, "--base", str(BASE), "--tokens", "orca-best=many"])
    assert res.exit_code != 0 and "expected SOURCE=TOTAL" in res.output


def test_the_small_world_config_changes_the_preset_and_the_workdir_only():
    """The small world trains with the tiny config's budget (one budget for SFT and every fusion recipe)."""
    small = plan.load(REPO / "config" / "small.yaml", BASE)
    tiny = plan.load(BASE, None)
    assert (small.toy.preset, small.workdir) == ("small", "results-small")
    same = {"toy", "workdir", "models", "reward_models", "data"}
    assert small.model_dump(exclude=same) == tiny.model_dump(exclude=same)
    assert all(m.path.startswith("results-small/toy/") for m in small.models + small.reward_models)
    assert small.ablations.train.epochs_scale == ablations.recipe(small, "profuser").train.epochs_scale  # the schedule grid


def test_the_seed1_config_changes_the_world_seed_and_the_workdir_only():
    """config/seed1.yaml: the embedded default on a second world, for `fusepipe seeds results results-seed1`."""
    seed1 = plan.load(REPO / "config" / "seed1.yaml", BASE)
    base = plan.load(BASE, None)
    assert (seed1.toy.seed, seed1.toy.preset, seed1.workdir) == (1, base.toy.preset, "results-seed1")
    same = {"toy", "workdir", "models", "reward_models", "data"}
    assert seed1.model_dump(exclude=same) == base.model_dump(exclude=same)
    assert all(m.path.startswith("results-seed1/toy/") for m in seed1.models + seed1.reward_models)
