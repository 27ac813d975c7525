"""The `logits` stage in the session's `snakemake all` run: both modes for the toy models through vLLM, the
shards' content against the data and the vote, size per token, and `fusepipe inspect` on a shard."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from conftest import LOGITS_SHARDS

from fusepipe import paths
from fusepipe.artifacts import shard_manifest
from fusepipe.logits.store import check_shard, read_shard
from fusepipe.schemas import LOGITS_SCALE

MODELS = ["llama-pivot", "qwen-arith", "mistral-facts", "gpt2-strings"]
SHARDS = LOGITS_SHARDS


@pytest.fixture(scope="module")
def results(pipeline):
    return pipeline / "results"


def manifests(results, mode):
    return [json.loads(shard_manifest(paths.logits_shard(results, mode, m, i)).read_text())
            for m in MODELS for i in range(SHARDS)]


def test_gt_mode_covers_every_training_conversation(results):
    train = pl.read_parquet(results / "data" / "train.parquet")
    train = train.filter(pl.col("source") != "prompts")  # the prompt set has no reference to score
    for model in MODELS:
        ids = []
        for i in range(SHARDS):
            check_shard(paths.logits_shard(results, "gt", model, i), k=10)
            for s in read_shard(paths.logits_shard(results, "gt", model, i)):
                assert s.mode == "gt" and s.model == model and s.entropy_kind == "topk_tail"
                assert s.n_tokens == len(s.token_ids) > 0 and s.turn_end.any()
                # nll_sum is exact; each stored log-prob is rounded to 1/SCALE nats (error ≤ 1/(2·SCALE) a token)
                bound = s.n_tokens / (2 * LOGITS_SCALE) + 1e-4
                assert abs(s.nll_sum + s.token_logprob.astype(np.float64).sum()) <= bound
                assert (s.topk_logprobs[:, :-1] >= s.topk_logprobs[:, 1:] - 1e-3).all()  # rank order
                ids.append(s.sample_id)
        assert sorted(ids) == sorted(train["sample_id"])
    gt = manifests(results, "gt")
    for m in gt:
        assert m["engine"]["kind"] == "vllm" and m["skipped_overlong"] == 0 and m["clamped_logprobs"] == 0
    size = sum(os.path.getsize(paths.logits_shard(results, "gt", m, i)) for m in MODELS for i in range(SHARDS))
    assert size / sum(m["tokens"] for m in gt) <= 30  # the goal, footers of these tiny files included


def test_inf_mode_captures_exactly_the_winning_responses(results):
    votes = pl.read_parquet(paths.vote_choices(results))
    for model in MODELS:
        wins = set(votes.filter(pl.col("winner") == model)["sample_id"])
        got = {s.sample_id: s for i in range(SHARDS) for s in read_shard(paths.logits_shard(results, "inf", model, i))}
        assert set(got) == wins
        gen = pl.concat([pl.read_parquet(paths.gen_shard(results, model, i)) for i in range(SHARDS)])
        sid = min(wins)
        response = gen.filter(pl.col("sample_id") == sid)["response"][0]
        sample = got[sid]
        assert set(sample.message_index) == {int(sample.message_index[0])}  # only the response is a target
        assert sample.n_bytes == len(response.encode())
        body = sample.offsets[~sample.turn_end]
        assert body[0, 0] == 0 and body[-1, 1] == len(response)


def test_inspect_shows_a_logits_sample_as_a_table(results):
    path = paths.logits_shard(results, "gt", "qwen-arith", 0)
    sid = next(read_shard(path, columns=["sample_id"])).sample_id
    out = subprocess.run([sys.executable, "-m", "fusepipe", "inspect", path, "--sample-id", sid], check=True,
                         capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}).stdout
    assert "qwen-arith, mode gt" in out and "top-10 (p)" in out and "(end of turn)" in out
