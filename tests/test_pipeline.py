"""End to end: `snakemake --cores 2 all` on a fresh copy of the default config (the toy world), then what it
built, that a second run has nothing to do, and that a config edit reruns only what depends on it. Every Snakemake
call here runs on a private copy of the session's pipeline folder (`copy_pipeline`)."""

import json
import subprocess
import sys

import polars as pl
import pyarrow.parquet as pq
import yaml
from conftest import LOGITS_SHARDS, copy_pipeline, copy_workflow, snakemake

from fusepipe import paths
from fusepipe.schemas import CONVERSATION, check_schema


def test_all_builds_the_toy_world_and_the_data(pipeline):
    results = pipeline / "results"
    for split in ("train", "eval"):
        check_schema(results / "data" / f"{split}.parquet", CONVERSATION)
    train = pl.read_parquet(results / "data" / "train.parquet")
    evals = pl.read_parquet(results / "data" / "eval.parquet")
    assert set(train["source"]) == {"arith", "facts", "strings", "dialogue", "prompts"}
    assert set(train["split"]) == {"train"} and set(evals["split"]) == {"eval"}
    assert train["sample_id"].is_unique().all()
    assert not set(train["sample_id"]) & set(evals["sample_id"])
    manifest = json.loads((results / "data" / "_manifest.json").read_text())
    prompts = train.filter(pl.col("source") == "prompts")["messages"].to_list()
    assert prompts and all(m[-1]["role"] == "user" for m in prompts)  # prompts_only: no reference kept
    assert manifest["rows"] == {"train": train.height, "eval": evals.height, "prompts_only": len(prompts)}
    assert manifest["sources"]["dialogue"]["not_sampled"] == 4  # n_samples: 20 of 24
    assert manifest["sources"]["dialogue"]["split_dialogues"] > 0  # max_len 96 splits long dialogues
    for name, counts in manifest["sources"].items():  # every run records what was read, kept and dropped, and where
        first = manifest["first_rows"][name]
        assert counts["rows_read"] > 0 and counts["kept"] > 0 and set(first) <= set(counts)
        assert all(where.startswith(f"results/toy/data/{name}.") for where in first.values())
    assert manifest["pivot_tokens"]["max"] <= 96
    assert "summary" not in manifest


def test_second_run_has_nothing_to_do(pipeline, tmp_path):
    proc = snakemake(copy_pipeline(pipeline, tmp_path), "all", "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_a_run_ends_with_the_summary_and_the_results(pipeline, tmp_path):
    """`snakemake all` prints what was built and the headline table when it ends (here after redoing the report)."""
    proc = snakemake(copy_pipeline(pipeline, tmp_path), "all", "--forcerun", "report")
    out = proc.stdout + proc.stderr
    assert "rule report:" in out and "fusepipe: results" in out
    assert "Results (the headline; Δ against the pivot and SFT), full report: results/report/index.html" in out
    assert (tmp_path / "results" / "report" / "summary.txt").read_text().strip() in out


def test_more_logits_shards_give_the_same_fusion_targets(pipeline, tmp_path):
    """Shards are a partition (prompts by `int(sample_id[:8], 16) % shards`), never a change of what is computed: with
    one more logits shard than the session's run, a pair's fusion targets (through vLLM's capture, the alignment
    and the fuse stage) are, row for row, the session's. The toy config runs one shard; this keeps the scatter and
    the gather of several under test."""
    root = copy_pipeline(pipeline, tmp_path)
    cfg_path = root / "config" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    shards = cfg["logits"]["shards"] = LOGITS_SHARDS + 1
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    targets = [paths.targets_shard("results", "fusechat", "qwen-arith", i) for i in range(shards)]
    snakemake(root, *targets)
    parts = [pl.read_parquet(root / t) for t in targets]
    assert all(part.height for part in parts)
    ids = [set(part["sample_id"]) for part in parts]
    assert sum(map(len, ids)) == len(set().union(*ids))
    session = [paths.targets_shard(pipeline / "results", "fusechat", "qwen-arith", i) for i in range(LOGITS_SHARDS)]
    key = ["sample_id", "mode"]
    assert pl.concat(parts).sort(key).equals(pl.concat([pl.read_parquet(t) for t in session]).sort(key))


def test_editing_one_stage_reruns_only_that_stage(pipeline, tmp_path):
    root = copy_pipeline(pipeline, tmp_path)
    cfg_path = root / "config" / "config.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["data"]["max_len"] = 80
    cfg_path.write_text(yaml.safe_dump(cfg))
    changed = snakemake(root, "--list-changes", "params").stdout.split()
    assert {"results/data/train.parquet", "results/data/eval.parquet"} <= set(changed)
    # Snakemake 9.27 also prints the last output of every *unchanged* job here (ParamsChange.__or__ returns
    # its right operand, files included, when the left has no change): for toy_world that is its manifest.
    # The dry run below is exact.
    assert not [p for p in changed if p.startswith("results/toy/") and p != "results/toy/_manifest.json"]
    dry = snakemake(root, "all", "-n").stdout
    assert "rule data:" in dry and "rule toy_world:" not in dry
    assert "Params have changed since last execution" in dry


def test_bad_config_fails_before_any_job(tmp_path):
    root = copy_workflow(tmp_path)
    cfg = yaml.safe_load((root / "config" / "config.yaml").read_text())
    cfg["toy"]["preset"] = "huge"
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(root, "all", check=False)
    assert proc.returncode != 0
    assert "error: config: toy.preset: Input should be 'tiny' or 'small' (got \"huge\")" in proc.stderr
    assert not (root / "results").exists()


def test_inspect_a_data_shard(pipeline):
    path = pipeline / "results" / "data" / "train.parquet"
    sid = pq.read_table(path, columns=["sample_id"]).column(0)[0].as_py()
    out = subprocess.run([sys.executable, "-m", "fusepipe", "inspect", str(path), "--sample-id", sid],
                         capture_output=True, text=True, check=True).stdout
    assert "messages: list<element: struct<role: string, content: string>>" in out
    assert f"sample_id {sid}" in out and "assistant" in out and '"stage": "data"' in out
    bad = subprocess.run([sys.executable, "-m", "fusepipe", "inspect", str(path), "--sample-id", "nope"],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: {path}: no row with sample_id 'nope'"


def test_slurm_profile_plans_the_same_jobs(pipeline, tmp_path):
    """`snakemake --profile slurm` from the repository root: the profile parses, the executor plugin loads, and
    (nothing being out of date) it plans no job."""
    proc = snakemake(copy_pipeline(pipeline, tmp_path), "--profile", "slurm", "all", "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr
