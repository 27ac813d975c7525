"""The fuse stage on the session pipeline's aligned distributions with the recipes the toy config does not train:
InfiFusion's unified UDF target, the naive function, per-byte MinCE, and a pairwise vote."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from conftest import load_pipeline_config

from fusepipe import paths
from fusepipe import pipeline as fppipeline
from fusepipe.errors import ArtifactError
from fusepipe.fuse import stage
from fusepipe.fuse.stage import read_targets
from fusepipe.logits.store import read_shard

PIVOT, SOURCES = "llama-pivot", ["qwen-arith", "mistral-facts", "gpt2-strings"]


EXTRA_RECIPES = [
    {"name": "uni", "kind": "infifusion_unified"},
    {"name": "uni-seq", "kind": "infifusion_unified", "fusion": {"udf_granularity": "sequence",
                                                                 "udf_include_pivot": True}},
    {"name": "naive", "kind": "fusechat", "fusion": {"function": "naive"}},
    {"name": "bytes", "kind": "fusechat", "fusion": {"ce_norm": "byte"}},
    {"name": "pf-pair", "kind": "profuser", "pairwise": True, "fusion": {"vote": "pair"}},
]


@pytest.fixture(scope="module")
def cfg(pipeline):
    return load_pipeline_config(pipeline, edit=lambda raw: raw["recipes"].extend(EXTRA_RECIPES))


def fuse(cfg, tmp_path, name):
    params = fppipeline.stage_slice(cfg, "fuse", name)
    out = tmp_path / name.replace("/", "_") / "shard-00000.parquet"
    manifest = stage.run(params, cfg.workdir, 0, out)
    return pl.from_arrow(read_targets(out)), manifest


def test_udf_mixes_every_source_at_each_position(cfg, tmp_path):
    t, manifest = fuse(cfg, tmp_path, "uni/all")
    pivot = {s.sample_id: s for s in read_shard(paths.logits_shard(cfg.workdir, "gt", PIVOT, 0))}
    assert set(t["model"]) == {"udf"} and manifest["chosen"] == {"gt": {"udf": len(pivot)}}
    for row in t.head(30).iter_rows(named=True):
        assert row["token_ids"] == pivot[row["sample_id"]].token_ids.tolist()
        mass = np.exp(np.array(row["topk_logprobs"], np.float64)).sum(1)
        assert (mass <= 1 + 2e-3).all() and (mass > 0).all()
    # a mixture keeps ids from more than one source's top-k: its support is wider than any one source's top-1
    first = t.row(0, named=True)
    assert (np.array(first["topk_ids"]) >= 0).sum() >= first["n_tokens"] * 2


def test_udf_per_sequence_with_the_pivot(cfg, tmp_path):
    t, _ = fuse(cfg, tmp_path, "uni-seq/all")
    assert set(t["model"]) == {"udf"} and t["valid"].list.all().all()


def test_naive_keeps_every_source_as_its_own_row(cfg, tmp_path):
    t, manifest = fuse(cfg, tmp_path, "naive/qwen-arith")
    n = len(read_targets(paths.targets_shard(cfg.workdir, "fusechat", "qwen-arith", 0)))
    assert len(t) == n and set(t["model"]) == {"qwen-arith"}  # a pair has one source
    assert manifest["chosen"] == {"gt": {"qwen-arith": n}}


def test_per_byte_mince_changes_the_choice_against_the_finer_tokenizer(cfg, tmp_path):
    """MinCE picks the lower CE per sample, per token (the paper) or per byte: the choices are exactly a recount from
    the two logits shards, whatever the models predict. Per byte both sides share the text's bytes, so a sample the
    pivot wins per token with no more tokens than qwen's byte-level BPE, it also wins per byte."""
    pivot = {s.sample_id: s for s in read_shard(paths.logits_shard(cfg.workdir, "gt", PIVOT, 0),
                                                ["nll_sum", "n_tokens", "n_bytes"])}
    qwen = {s.sample_id: s for s in read_shard(paths.logits_shard(cfg.workdir, "gt", "qwen-arith", 0),
                                               ["nll_sum", "n_tokens", "n_bytes"])}
    assert pivot.keys() == qwen.keys()
    chosen = {}
    for name, norm in (("fusechat/qwen-arith", "n_tokens"), ("bytes/qwen-arith", "n_bytes")):
        t, manifest = fuse(cfg, tmp_path, name)
        recount = {sid: "qwen-arith" if qwen[sid].nll_sum / max(getattr(qwen[sid], norm), 1)
                   < p.nll_sum / max(getattr(p, norm), 1) else PIVOT for sid, p in pivot.items()}
        chosen[norm] = dict(zip(t["sample_id"], t["model"], strict=True))
        assert chosen[norm] == recount, name
        assert manifest["chosen"]["gt"] == {m: n for m in (PIVOT, "qwen-arith")
                                            if (n := sum(v == m for v in recount.values()))}
    assert all(pivot[sid].n_bytes == qwen[sid].n_bytes for sid in pivot)
    for sid, model in chosen["n_tokens"].items():
        if model == PIVOT and pivot[sid].n_tokens <= qwen[sid].n_tokens:
            assert chosen["n_bytes"][sid] == PIVOT, sid


def test_pairwise_vote_uses_the_pairs_own_vote(cfg, tmp_path):
    t, manifest = fuse(cfg, tmp_path, "pf-pair/qwen-arith")
    inf = t.filter(pl.col("mode") == "inf")
    votes = pl.read_parquet(paths.vote_choices(cfg.workdir)).filter(pl.col("subset") == f"{PIVOT}~qwen-arith")
    shard0 = votes.filter(pl.col("sample_id").map_elements(lambda s: paths.shard_of(s, cfg.logits.shards) == 0,
                                                         return_dtype=pl.Boolean))
    assert len(inf) == len(shard0) and set(inf["model"]) <= {PIVOT, "qwen-arith"}
    assert manifest["inf_skipped_not_member"] == 0
    assert json.dumps(manifest["chosen"]["inf"], sort_keys=True) == json.dumps(
        dict(sorted(inf["model"].value_counts().iter_rows())), sort_keys=True)


def test_fuse_names_a_missing_aligned_shard(cfg, tmp_path):
    params = fppipeline.stage_slice(cfg, "fuse", "fusechat/qwen-arith")
    with pytest.raises(ArtifactError) as err:
        stage.run(params, tmp_path, 0, tmp_path / "out.parquet")
    assert str(err.value) == (f"{paths.logits_shard(tmp_path, 'gt', PIVOT, 0)}: missing; run the logits stage for "
                              "the pivot first")
