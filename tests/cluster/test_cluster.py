"""The cluster path, checked by everything short of a real cluster: `snakemake --lint`, dry runs of the default and
every recipe with `--profile slurm`, the sbatch calls the Slurm executor really makes (a fake Slurm on PATH records
them), the resources fusepipe.cluster derives from the config, and the conda environments."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from fusepipe import cluster, plan
from fusepipe import config as fpconfig
from fusepipe import pipeline as fppipeline
from fusepipe import recipes as fprecipes
from tests.conftest import REPO, copy_workflow, snakemake

RECIPES = sorted(p.name for p in (REPO / "config" / "recipes").glob("*.yaml"))
FAKE = Path(__file__).with_name("fake_slurm.py")
TOOLS = ("sbatch", "sacct", "squeue", "sacctmgr", "sshare", "sinfo", "scontrol", "scancel")
GPU_RULES = {"generate", "reward", "logits_gt", "logits_inf", "train", "evaluate"}


def recipe_config(name: str) -> fpconfig.Config:
    return plan.load(REPO / "config" / "recipes" / name, REPO / "config" / "config.yaml")


def dry_run_jobs(output: str) -> list[dict]:
    """Every job of a `snakemake -n` listing: rule, wildcards and resources."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head:
            continue
        job = {"rule": head.group(1), "wildcards": {}, "resources": {}}
        for key in ("wildcards", "resources"):
            line = re.search(rf"^\s+{key}: (.*)$", block, re.MULTILINE)
            if line:
                for item in line.group(1).split(", "):
                    k, _, v = item.partition("=")
                    job[key][k] = int(v) if re.fullmatch(r"-?\d+", v) else v
        jobs.append(job)
    return jobs


def fake_slurm(tmp_path: Path, **env: str) -> dict[str, str]:
    """PATH with the fake Slurm tools first, and where their calls are logged."""
    bin_dir = tmp_path / "fake-slurm"
    bin_dir.mkdir()
    for tool in TOOLS:
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" {tool} "$@"\n')
        script.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "FAKE_SLURM_LOG": str(tmp_path / "slurm-calls.jsonl"), **env}


def sbatch_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "slurm-calls.jsonl"
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [" ".join(c["argv"]) for c in calls if c["tool"] == "sbatch"]


# ------------------------------------------------------------------------------------------ lint and dry runs


def test_lint_is_clean(tmp_path):
    root = copy_workflow(tmp_path)
    proc = snakemake(root, "--lint", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "Lints for" not in out, out[-4000:]


def test_default_dry_run_with_the_slurm_profile(tmp_path):
    """The embedded default through the profile: every rule's job carries the resources the config gives it."""
    root = copy_workflow(tmp_path)
    jobs = dry_run_jobs(snakemake(root, "-n", "--profile", "slurm", "all").stdout)
    assert {j["rule"] for j in jobs} >= {"toy_world", "data", "generate", "train", "merge", "evaluate", "report"}
    for job in jobs:
        if job["rule"] == "all":
            continue
        res = job["resources"]
        assert {"mem_mb", "runtime", "cpus_per_task"} <= set(res), job
        assert (res.get("gpu", 0) > 0) == (job["rule"] in GPU_RULES), job
        if res.get("gpu"):
            assert res["tasks_per_gpu"] == 0, job


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_dry_run_with_the_slurm_profile(recipe, tmp_path):
    """`snakemake -n --profile slurm all --configfile config/recipes/X.yaml`: no hub access while the DAG is
    built, and each job asks for what the recipe's models need."""
    root = copy_workflow(tmp_path)
    cfg = recipe_config(recipe)
    proc = snakemake(root, "-n", "--profile", "slurm", "all", "--configfile", f"config/recipes/{recipe}")
    jobs = dry_run_jobs(proc.stdout)
    by_rule: dict[str, list[dict]] = {}
    for job in jobs:
        by_rule.setdefault(job["rule"], []).append(job)
    assert "toy_world" not in by_rule
    gen = {m.name for m in cfg.generators} if cfg.reward_models else set()
    assert len(by_rule.get("generate", [])) == len(gen) * cfg.generate.shards
    assert len(by_rule["logits_gt"]) == len(cfg.models) * cfg.logits.shards
    for job in by_rule.get("generate", []) + by_rule["logits_gt"]:
        model = cfg.model(job["wildcards"]["model"])
        assert job["resources"]["gpu"] == model.tensor_parallel_size, job
    for job in by_rule["train"]:
        recipe_cfg = next(r for r in cfg.recipes if r.name == job["wildcards"]["recipe"])
        assert job["resources"]["gpu"] == recipe_cfg.train.gpus * recipe_cfg.train.nodes
        assert job["resources"]["runtime"] == cluster.runtime(cfg, "train")
    for job in by_rule.get("merge", []):
        assert job["resources"]["mem_mb"] == cluster.mem_mb(cfg, "merge", "{recipe}/{method}".format(**job["wildcards"]))
        assert "gpu" not in job["resources"] or job["resources"]["gpu"] == 0


# ------------------------------------------------------------------------------------------ real submissions


def placeholder_outputs(root: Path, configfile: str) -> list[str]:
    """Every output of the DAG, per `snakemake --summary`."""
    proc = snakemake(root, "--summary", "all", "--configfile", configfile)
    files = [line.split("\t")[0] for line in proc.stdout.splitlines()[1:] if "\t" in line]
    assert files, proc.stdout[-2000:]
    return files


def test_sbatch_calls_for_a_recipe(tmp_path):
    """The Slurm executor's real sbatch calls for one job of every GPU rule and of the merge: all outputs but those
    exist (placeholders), so exactly those jobs are ready, and the fake sbatch records what they ask for."""
    recipe = "fusechat-7b.yaml"
    (tmp_path / "wf").mkdir()
    root = copy_workflow(tmp_path / "wf")
    cfg = recipe_config(recipe)
    outputs = placeholder_outputs(root, f"config/recipes/{recipe}")
    big = max(cfg.sources, key=lambda m: m.tensor_parallel_size)
    small = min(cfg.sources, key=lambda m: m.tensor_parallel_size)
    wanted = {  # one job per rule family, none upstream of another (all of them are leaves but train)
        "evaluate": f"/eval/{big.name}/", "align_coverage": f"~{small.name}/coverage.json",
        "train": "/train/sft/sft/model", "merge": "/merge/fusechat/sce/model",
    }
    chosen = {rule: next(p for p in outputs if frag in p and not p.endswith(("_manifest.json", "results.json")))
              for rule, frag in wanted.items()}
    stamp = 1_700_000_000  # one mtime for every placeholder: nothing is older than its inputs
    for path in outputs:
        p = root / path
        if path in chosen.values():
            continue
        if path.endswith("/model"):
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
        os.utime(p, (stamp, stamp))
    env = fake_slurm(tmp_path, FUSEPIPE_GPU_PARTITION="gpu-p", FUSEPIPE_CPU_PARTITION="cpu-p",
                     FUSEPIPE_ACCOUNT="proj-a", FAKE_SLURM_ACCOUNTS="proj-a")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "slurm", "--configfile", f"config/recipes/{recipe}",
         "--rerun-triggers", "mtime", "--retries", "0", "--latency-wait", "1",
         "--slurm-init-seconds-before-status-checks", "1", *chosen.values()],
        cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    calls = sbatch_calls(tmp_path)
    assert len(calls) == len(chosen), (calls, proc.stdout[-3000:], proc.stderr[-3000:])
    by_rule = {re.search(r"--comment '?rule_(\w+?)(?:_wildcards\S*)?'? ", c).group(1): c for c in calls}
    assert set(by_rule) == set(chosen), by_rule
    train = by_rule["train"]
    recipe_cfg = next(r for r in cfg.recipes if r.name == "sft")
    assert f"--gpus={recipe_cfg.train.gpus}" in train and "-p gpu-p" in train and "-A proj-a" in train
    assert "--exclusive" in train and f"-t {cluster.runtime(cfg, 'train')}" in train
    assert "--ntasks-per-gpu" not in train
    assert f"--gpus={big.tensor_parallel_size}" in by_rule["evaluate"] and "-p gpu-p" in by_rule["evaluate"]
    assert f"--mem {cluster.mem_mb(cfg, 'evaluate', f'{big.name}/fusechat')}" in by_rule["evaluate"]
    assert f"--cpus-per-task={cfg.cluster.cpus_per_gpu * big.tensor_parallel_size}" in by_rule["evaluate"]
    for cpu_rule in ("align_coverage", "merge"):
        assert "-p cpu-p" in by_rule[cpu_rule] and "--gpus" not in by_rule[cpu_rule]
        assert f"--cpus-per-task={cfg.cluster.cpu_threads}" in by_rule[cpu_rule]
    assert "-p cpu-p" in by_rule["merge"] and "--gpus" not in by_rule["merge"]
    assert f"--mem {cluster.mem_mb(cfg, 'merge', 'fusechat/sce')}" in by_rule["merge"]


# ------------------------------------------------------------------------------------------ resources from config


def test_partitions_and_account_come_from_config_or_environment(monkeypatch):
    cfg = recipe_config(RECIPES[0])
    for var in cluster.ENV.values():
        monkeypatch.delenv(var, raising=False)
    res = cluster.resources(cfg, "data")
    assert "slurm_partition" not in res and "slurm_account" not in res
    monkeypatch.setenv("FUSEPIPE_CPU_PARTITION", "short")
    monkeypatch.setenv("FUSEPIPE_ACCOUNT", "lab")
    assert cluster.resources(cfg, "data")["slurm_partition"] == "short"
    assert cluster.resources(cfg, "data")["slurm_account"] == "lab"
    cfg.cluster.cpu_partition = "cfg-cpu"
    assert cluster.resources(cfg, "data")["slurm_partition"] == "cfg-cpu"


def test_multi_node_training_launches_one_torchrun_per_node():
    cfg = recipe_config("fusechat-7b.yaml")
    recipe = cfg.recipes[0]
    target = f"{recipe.name}/{cfg.sources[0].name}"
    recipe.train.gpus, recipe.train.nodes = 8, 2
    res = cluster.resources(cfg, "train", target)
    assert res["nodes"] == 2 and res["gpu"] == 16 and res["mpi"] == "srun" and res["tasks"] == 2
    launch = cluster.train_launch(cfg, target, "python")
    assert launch.startswith("srun --ntasks-per-node=1 python -m torch.distributed.run --nnodes 2")
    assert "--nproc_per_node 8" in launch and "--rdzv_backend c10d" in launch
    recipe.train.nodes = 1
    assert cluster.train_launch(cfg, target, "python") == (
        "python -m torch.distributed.run --standalone --nproc_per_node 8 -m fusepipe")


# ------------------------------------------------------------------------------------------ conda environments


def requirement_names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!\[ ]", r, maxsplit=1)[0].lower() for r in reqs if not r.startswith("-")}


@pytest.mark.parametrize("env", ["cpu", "vllm", "train"])
def test_conda_envs_carry_the_package_dependencies(env):
    """Each rule family's env lists fusepipe's own dependencies (the rules import it from the checkout)."""
    spec = yaml.safe_load((REPO / "envs" / f"{env}.yaml").read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict))
    deps = requirement_names(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    family_only = {"vllm": {"torch", "snakemake"}, "train": {"lm-eval", "matplotlib", "snakemake"},
                   "cpu": {"snakemake"}}[env]
    assert deps - family_only <= requirement_names(pip), deps - family_only - requirement_names(pip)
    assert ("vllm" in requirement_names(pip)) == (env == "vllm")
    assert ("deepspeed" in requirement_names(pip)) == (env == "train")


def test_every_rule_names_its_conda_env_threads_and_resources():
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        rules = re.findall(r"^\s*rule (\w+):", text, re.MULTILINE)
        assert text.count("conda:") == len(rules), smk.name
        assert text.count("**fpcluster.rule_resources(CFG, ") == len(rules), smk.name
        assert text.count("threads: fpcluster.rule_threads(CFG, ") == len(rules), smk.name
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', text):
            assert (smk.parent / env).resolve().is_file(), (smk.name, env)


# ------------------------------------------------------------------------------------------ rerun scope


def all_slices(cfg: fpconfig.Config) -> dict[str, str]:
    """Every job's config slice (its Snakemake params) by `stage/target`."""
    from fusepipe import recipes

    targets: dict[str, list] = {
        "toy_world": [None], "data": [None], "vote": [None],
        "generate": [m.name for m in cfg.generators], "reward": [r.name for r in cfg.reward_models],
        "logits": [m.name for m in cfg.models], "align": [m.name for m in cfg.sources],
        "fuse": [f"{r.name}/{t}" for r in cfg.recipes for t in recipes.targets(cfg, r)],
        "merge": [f"{r.name}/{m}" for r in fprecipes.merge_recipes(cfg) for m in cfg.merge.methods],
        "evaluate": [f"{m}/{s}" for m in fppipeline.eval_models(cfg) for s in cfg.eval_suites],
    }
    targets["train"] = targets["fuse"]
    return {f"{stage}/{t}": fppipeline.slice_json(cfg, stage, t) for stage, ts in targets.items() for t in ts}


@pytest.mark.parametrize("edit, stale", [
    (lambda raw: raw["merge"].setdefault("sce", {}).update(tau=0.3), {"merge/fusechat/sce"}),
    (lambda raw: raw["recipes"][0]["train"].update(lr=1e-5), "train/fusechat/"),
    (lambda raw: raw["align"].update(vocab="mined"), "align/"),
])
def test_a_recipe_edit_changes_only_its_stage_params(edit, stale):
    """On a real recipe, an edit changes the params (the rerun trigger) of exactly the jobs of its stage;
    what depends on them reruns because their inputs change, as the toy pipeline test checks end to end."""
    name = "fusechat-7b.yaml"
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw = plan.deep_merge(base, yaml.safe_load((REPO / "config" / "recipes" / name).read_text()))
    before = all_slices(fppipeline.load_dict(raw))
    edit(raw)
    after = all_slices(fppipeline.load_dict(raw))
    changed = {k for k in before if before[k] != after[k]}
    expected = stale if isinstance(stale, set) else {k for k in before if k.startswith(stale)}
    assert changed == expected and expected


def test_the_toy_build_asks_for_a_cpu_per_worker():
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["toy"].update(threads=2, workers=3)
    cfg = fppipeline.load_dict(raw)
    assert cluster.threads(cfg, "toy_world") == 6 == cluster.resources(cfg, "toy_world")["cpus_per_task"]


def test_rules_run_the_snakemake_interpreter_or_the_conda_envs_python(monkeypatch, tmp_path):
    monkeypatch.delenv("FUSEPIPE_PYTHON", raising=False)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    assert cluster.job_python(False, str(tmp_path)) == sys.executable == os.environ["FUSEPIPE_PYTHON"]
    assert os.environ["PYTHONPATH"] == "/elsewhere"
    assert cluster.job_python(True, str(tmp_path)) == "python" == os.environ["FUSEPIPE_PYTHON"]
    assert os.environ["PYTHONPATH"] == f"{tmp_path}/src{os.pathsep}/elsewhere"


def test_braces_of_a_chat_template_are_not_wildcards(tmp_path):
    """The data rule's params hold the pivot's chat template; `{{ bos_token }}` there once failed the DAG with a
    WildcardError (a plain params string is a wildcard pattern)."""
    root = copy_workflow(tmp_path)
    raw = yaml.safe_load((REPO / "config" / "recipes" / "fusechat-7b.yaml").read_text())
    raw["models"][0]["chat_template"] = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (root / "config" / "edited.yaml").write_text(yaml.safe_dump(raw))
    proc = snakemake(root, "-n", "all", "--configfile", "config/edited.yaml")
    assert "rule data:" in proc.stdout
