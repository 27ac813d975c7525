"""The fuse, train and merge stages in the session's `snakemake all` run: the toy world's fusechat (pairwise MinCE)
and profuser (RM vote + MinCE, progressive) recipes, their targets, training logs, the trained and merged models
(loaded by transformers and by vLLM), and the CLI's failure paths."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import LOGITS_SHARDS, load_pipeline_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from fusepipe import paths
from fusepipe import pipeline as fppipeline
from fusepipe.artifacts import shard_manifest
from fusepipe.engines import Request, Sampling, open_engine
from fusepipe.fuse.stage import read_targets
from fusepipe.generate.stage import read_conversations

PIVOT, SOURCES, SHARDS = "llama-pivot", ["qwen-arith", "mistral-facts", "gpt2-strings"], LOGITS_SHARDS
TARGETS = [("fusechat", s) for s in SOURCES] + [("profuser", "all")]


@pytest.fixture(scope="module")
def results(pipeline):
    return pipeline / "results"


def targets(results, recipe, target):
    return pl.concat([pl.from_arrow(read_targets(paths.targets_shard(results, recipe, target, i)))
                      for i in range(SHARDS)])


@pytest.mark.parametrize("source", SOURCES)
def test_fusechat_targets_cover_the_ground_truth_with_mince_of_the_pair(results, source):
    t = targets(results, "fusechat", source)
    data = [sid for i in range(SHARDS) for sid, _ in read_conversations(paths.data(results), i, SHARDS)]
    assert t["mode"].unique().to_list() == ["gt"] and sorted(t["sample_id"]) == sorted(data)
    assert set(t["model"]) <= {PIVOT, source}
    chosen = [json.loads(shard_manifest(paths.targets_shard(results, "fusechat", source, i)).read_text())["chosen"]
              for i in range(SHARDS)]
    assert sum(sum(c["gt"].values()) for c in chosen) == len(data)


def test_profuser_targets_hold_the_voted_responses(results):
    t = targets(results, "profuser", "all")
    inf = t.filter(pl.col("mode") == "inf")
    votes = pq.read_table(paths.vote_choices(results)).to_pylist()
    winners = {v["sample_id"]: v["winner"] for v in votes if v["subset"] == "all"}
    assert len(inf) == len(winners)
    prompt_set = {sid for i in range(SHARDS) for sid, m in read_conversations(paths.data(results), i, SHARDS, True)
                  if m[-1]["role"] == "user"}
    assert prompt_set and prompt_set <= set(inf["sample_id"]) and not prompt_set & set(t.filter(pl.col("mode") == "gt")[
        "sample_id"])  # the prompt set reaches the inference mode only
    for row in inf.iter_rows(named=True):
        assert row["model"] == winners[row["sample_id"]]
        assert row["messages"][-1]["role"] == "assistant"
    gen = pl.read_parquet(paths.gen_shard(results, "qwen-arith", 0))
    responses = dict(zip(gen["sample_id"], gen["response"], strict=True))
    qwen = inf.filter(pl.col("model") == "qwen-arith")
    hits = [r["messages"][-1]["content"] == responses[r["sample_id"]] for r in qwen.iter_rows(named=True)
            if r["sample_id"] in responses]
    assert hits and all(hits)


@pytest.mark.parametrize(("recipe", "target"), TARGETS)
def test_distributions_are_sparse_distributions_over_the_pivot_vocabulary(results, recipe, target):
    for row in targets(results, recipe, target).head(20).iter_rows(named=True):
        ids, lp = np.array(row["topk_ids"]), np.array(row["topk_logprobs"], np.float32)
        assert ids.shape == (row["n_tokens"], 10) and len(row["token_ids"]) == row["n_tokens"]
        mass = np.exp(lp).sum(1)
        assert ((mass > 0) & (mass < 1.01)).all() and ((ids == -1) == np.isneginf(lp)).all()


@pytest.mark.parametrize(("recipe", "target"), TARGETS)
def test_training_logged_every_step_and_lowered_the_loss(results, recipe, target):
    folder = results / "train" / recipe / target
    log = pl.read_parquet(folder / "log.parquet")
    manifest = json.loads((folder / "_manifest.json").read_text())
    assert len(log) == manifest["steps"] and log["step"].to_list() == list(range(len(log)))
    assert log["loss"].is_finite().all() and log["grad_norm"].is_finite().all()
    last = log.filter(pl.col("phase") == log["phase"][-1])  # loss levels differ between phases' data
    assert last["loss"][-3:].mean() < last["loss"][:3].mean()
    if recipe == "profuser":  # inference mode first, then both modes
        assert log["phase"].unique(maintain_order=True).to_list() == ["inference", "co-fusion"]
        first = log.filter(pl.col("phase") == "inference")
        assert (first["tokens_gt"] == 0).all() and (first["tokens_inf"] > 0).all()
    assert not (folder / "checkpoints").exists()


def _reply(path, prompt="What is 3 + 4?") -> str:
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1]:])


@pytest.mark.parametrize("folder", ["train/fusechat/qwen-arith/model", "train/profuser/all/model",
                                    "merge/fusechat/sce/model", "merge/fusechat/rsaf/model"])
def test_trained_and_merged_models_load_with_transformers(results, folder):
    path = results / folder
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    assert isinstance(_reply(path), str)
    base = AutoModelForCausalLM.from_pretrained(results / "toy/models" / PIVOT).state_dict()
    new = AutoModelForCausalLM.from_pretrained(path).state_dict()
    assert set(base) == set(new) and any(not torch.equal(base[k], new[k]) for k in base)


def test_a_merged_model_serves_with_vllm(results):
    spec = {"name": "merged-sce", "path": str(results / "merge/fusechat/sce/model"), "dtype": "float32",
            "max_model_len": 256}
    with open_engine(spec, "generate") as eng:
        out = eng.generate([Request([{"role": "user", "content": "What is 3 + 4?"}], seed=0, key="q")],
                           Sampling(temperature=0, max_tokens=8))
    assert eng.kind == "vllm" and len(out) == 1 and len(out[0].token_ids) >= 1


def test_merge_manifests_record_the_method(results):
    for method in ("sce", "rsaf"):
        m = json.loads((results / "merge/fusechat" / method / "_manifest.json").read_text())
        assert m["method"] == method and m["config"]["targets"] == SOURCES
        inner = json.loads((results / "merge/fusechat" / method / "model/merge_manifest.json").read_text())
        assert inner["method"] == method
    rsaf = json.loads((results / "merge/fusechat/rsaf/_manifest.json").read_text())
    assert "mean_ratio" in rsaf or any(k.startswith("mean_") for k in rsaf)


def test_export_mergekit_writes_the_equivalent_yaml(pipeline):
    proc = subprocess.run([sys.executable, "-m", "fusepipe", "merge", "export-mergekit", "--recipe", "fusechat",
                           "--method", "sce"], capture_output=True, text=True, cwd=pipeline, check=True)
    doc = yaml.safe_load("\n".join(line for line in proc.stdout.splitlines()))
    assert doc["merge_method"] == "sce" and len(doc["models"]) == len(SOURCES)


def run_cli(pipeline, *args):
    return subprocess.run([sys.executable, "-m", "fusepipe", *args], capture_output=True, text=True, cwd=pipeline,
                          check=False)


def test_train_names_an_unknown_recipe_target(pipeline):
    proc = run_cli(pipeline, "train", "--recipe", "fusechat", "--target", "llama-pivot")
    assert proc.returncode == 2
    assert ("Invalid value for --recipe/--target: no recipe target fusechat/llama-pivot; the config has: "
            "fusechat/qwen-arith, fusechat/mistral-facts, fusechat/gpt2-strings, sft/sft, profuser/all") in proc.stderr


def test_merge_refuses_a_recipe_that_is_not_merged(pipeline):
    proc = run_cli(pipeline, "merge", "run", "--recipe", "profuser")
    assert proc.returncode == 2
    assert ("Invalid value for --recipe/--method: no merge profuser/*; the config has: fusechat/sce, "
            "fusechat/rsaf") in proc.stderr


def test_train_says_which_targets_are_missing(pipeline, tmp_path):
    cfg = load_pipeline_config(pipeline, workdir=tmp_path)
    from fusepipe.train import stage

    with pytest.raises(Exception) as err:
        stage.run(fppipeline.stage_slice(cfg, "train", "fusechat/qwen-arith"), tmp_path)
    assert str(err.value) == (f"{paths.targets_shard(tmp_path, 'fusechat', 'qwen-arith', 0)}: missing; run the fuse "
                              "stage for this recipe target first")
