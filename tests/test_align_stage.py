"""The `align` stage in the session's `snakemake all` run: every (pivot, source) pair of the toy world, both
modes; the aligned rows against the pivot's own logits, the projected distributions, coverage.json, the
same-tokenizer copy-through, `fusepipe inspect`, and the failure paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import LOGITS_SHARDS

from fusepipe import paths
from fusepipe import pipeline as fppipeline
from fusepipe.align import stage
from fusepipe.align.stage import read_aligned
from fusepipe.artifacts import shard_manifest
from fusepipe.errors import ArtifactError
from fusepipe.logits.capture import prepare
from fusepipe.logits.stage import voted
from fusepipe.logits.store import MAX_REL_ERROR, read_shard
from fusepipe.models import load_tokenizer

PIVOT = "llama-pivot"
SOURCES = ["qwen-arith", "mistral-facts", "gpt2-strings"]
SHARDS = LOGITS_SHARDS


@pytest.fixture(scope="module")
def results(pipeline):
    return pipeline / "results"


@pytest.fixture(scope="module")
def cfg(pipeline_cfg):
    return pipeline_cfg


def rows(path):
    return read_aligned(path).to_pylist()


@pytest.mark.parametrize("source", SOURCES)
def test_gt_rows_are_the_pivots_own_target_tokens(results, source):
    for shard in range(SHARDS):
        pivot = {s.sample_id: s for s in read_shard(paths.logits_shard(results, "gt", PIVOT, shard))}
        aligned = rows(paths.align_shard(results, PIVOT, source, "gt", shard))
        assert [r["sample_id"] for r in aligned] == list(pivot)
        for r in aligned:
            assert r["token_ids"] == pivot[r["sample_id"]].token_ids.tolist()
            assert r["turn_end"] == pivot[r["sample_id"]].turn_end.tolist()


@pytest.mark.parametrize("source", SOURCES)
def test_projected_distributions_are_distributions_over_pivot_ids(results, source):
    vocab = len(load_tokenizer({"name": PIVOT, "path": str(results / "toy/models" / PIVOT)}))
    for mode in ("gt", "inf"):
        for shard in range(SHARDS):
            for r in rows(paths.align_shard(results, PIVOT, source, mode, shard)):
                ids, lp = np.array(r["topk_ids"]), np.array(r["topk_logprobs"], np.float32)
                mass = np.exp(lp).sum(1)
                assert (mass <= 1 + MAX_REL_ERROR).all() and (mass > 0).all()  # the stored code's error
                assert ((ids >= -1) & (ids < vocab)).all()
                assert ((ids == -1) == np.isneginf(lp)).all()  # -1 pads carry no mass
                assert (np.diff(np.where(np.isneginf(lp), -1e30, lp), axis=1) <= 1e-6).all()  # most probable first
                valid = np.array(r["valid"])
                # invalid positions train on a one-hot of the pivot's own token
                assert (ids[~valid, 0] == np.array(r["token_ids"])[~valid]).all()
                assert (lp[~valid, 0] == 0).all()
                assert r["src_n_tokens"] and r["src_nll_sum"] > 0


@pytest.mark.parametrize("source", SOURCES)
def test_coverage_reports_the_pair(results, source):
    cov = json.loads((results / "align" / f"{PIVOT}~{source}" / "coverage.json").read_text())
    assert set(cov["modes"]) == {"gt", "inf"}
    assert cov["valid_share"] > 0.99 and cov["mass_kept"] > 0.95
    assert abs(sum(cov["link_share"].values()) - 1) < 1e-9 and cov["link_share"]["unaligned"] == 0
    n_tokens = sum(len(r["token_ids"]) for m in ("gt", "inf") for s in range(SHARDS)
                   for r in rows(paths.align_shard(results, PIVOT, source, m, s)))
    assert cov["positions"] == n_tokens
    assert cov["mapping_counts"]["links"] >= n_tokens  # every pivot token has at least one link


def test_inf_rows_are_the_voted_responses_in_pivot_tokens(results, cfg):
    source = "qwen-arith"
    params = fppipeline.stage_slice(cfg, "align", source)
    tok = load_tokenizer(params["pivot"])
    for shard in range(SHARDS):
        convs = dict(voted(paths.data(results), paths.vote_choices(results),
                           [paths.gen_shard(results, source, j) for j in range(SHARDS)], source, shard, SHARDS))
        aligned = rows(paths.align_shard(results, PIVOT, source, "inf", shard))
        assert {r["sample_id"] for r in aligned} == set(convs)
        for r in aligned[:10]:
            prep = prepare(tok, convs[r["sample_id"]], last_only=True, max_len=512, overlong="truncate",
                           name=PIVOT, key=r["sample_id"])
            assert r["token_ids"] == np.asarray(prep.ids)[prep.positions].tolist()


def test_same_tokenizer_copies_through(results, cfg, tmp_path):
    """A source with the pivot's tokenizer: one-to-one links without DTW, the identity map, and the pivot's
    own top-k back unchanged."""
    params = fppipeline.stage_slice(cfg, "align", "qwen-arith")
    params["source"] = {**params["pivot"], "name": "pivot-twin"}
    params["modes"] = ["gt"]
    logits = paths.logits_shard(results, "gt", PIVOT, 0)
    links, counts, vmap, out = (tmp_path / "links.npz", tmp_path / "ms_counts.npz", tmp_path / "vocab_map.parquet",
                                tmp_path / "shard-00000.parquet")
    summary = stage.run_links(params, "gt", 0, logits, links, pivot_logits=logits)
    assert summary["same_tokenizer"] and summary["aligned_pivot_tokens"] == summary["pivot_tokens"]
    assert stage.run_vocab(params, [links], counts, vmap)["strategy"] == "identity (same tokenizer)"
    stage.run_project(params, "gt", 0, links, logits, counts, vmap, out)
    own = {s.sample_id: s for s in read_shard(logits)}
    for r in rows(out):
        assert set(r["kind"]) == {1} and all(r["valid"])
        np.testing.assert_array_equal(np.array(r["topk_ids"]), own[r["sample_id"]].topk_ids)
        np.testing.assert_allclose(np.array(r["topk_logprobs"]), own[r["sample_id"]].topk_logprobs, atol=1e-6)


def test_inspect_shows_an_aligned_sample(results):
    path = paths.align_shard(results, PIVOT, "gpt2-strings", "inf", 0)
    env = {**os.environ, "COLUMNS": "160"}
    proc = subprocess.run([sys.executable, "-m", "fusepipe", "inspect", path, "-n", "1"], capture_output=True,
                          text=True, env=env, cwd=results.parent, check=True)
    assert f"{PIVOT} ← gpt2-strings (inf)" in proc.stdout
    assert "projected top 3" in proc.stdout and "1-1" in proc.stdout


def test_project_names_a_missing_links_file(results, cfg, tmp_path):
    params = fppipeline.stage_slice(cfg, "align", "qwen-arith")
    missing = tmp_path / "links-00000.npz"
    with pytest.raises(ArtifactError) as err:
        stage.run_project(params, "gt", 0, missing, paths.logits_shard(results, "gt", "qwen-arith", 0),
                          tmp_path / "c.npz", tmp_path / "v.parquet", tmp_path / "out.parquet")
    assert str(err.value) == f"{missing}: missing; run `fusepipe align --step links` for it first"


def test_project_refuses_links_of_other_samples(results, cfg):
    """Links built on the ground truth's shard 0 projected with the source's capture of other samples (its voted
    responses: what a stale links file after a data edit or a change of shards meets): rerun links."""
    params = fppipeline.stage_slice(cfg, "align", "qwen-arith")
    links = paths.align_links(results, PIVOT, "qwen-arith", "gt", 0)
    other = paths.logits_shard(results, "inf", "qwen-arith", 0)
    with pytest.raises(ArtifactError) as err:
        stage.run_project(params, "gt", 0, links, other, paths.align_counts(results, PIVOT, "qwen-arith"),
                          paths.align_vocab(results, PIVOT, "qwen-arith"), "/nonexistent/out.parquet")
    assert str(err.value) == (f"{other}: its samples differ from those {links} was built on; rerun the align "
                              "links step for this shard")


def test_a_mode_the_pair_does_not_align_is_refused(results, cfg):
    params = {**fppipeline.stage_slice(cfg, "align", "qwen-arith"), "modes": ["gt"]}
    with pytest.raises(ArtifactError) as err:
        stage.run(params, results, "links", mode="inf")
    assert str(err.value) == ("llama-pivot~qwen-arith: mode 'inf' is not aligned for this pair (aligned: gt); "
                              "inf needs the source among the generators")


def test_align_cli_checks_the_shard(pipeline):
    proc = subprocess.run([sys.executable, "-m", "fusepipe", "align", "--target", "qwen-arith", "--shard", "7"],
                          capture_output=True, text=True, cwd=pipeline, check=False)
    assert proc.returncode == 2
    assert "Invalid value for --shard: shard 7 out of range: logits.shards is 1" in proc.stderr


def test_align_cli_names_an_unknown_source(pipeline):
    proc = subprocess.run([sys.executable, "-m", "fusepipe", "align", "--target", "llama-pivot"],
                          capture_output=True, text=True, cwd=pipeline, check=False)
    assert proc.returncode == 2
    assert ("error: stage 'align' needs --target, one of qwen-arith, mistral-facts, gpt2-strings, "
            "llama-arith-twin (got 'llama-pivot')") in proc.stderr  # the control can be aligned (tokenizer grid)


def test_shard_manifests_record_coverage_and_timing(results):
    for source in SOURCES:
        for mode in ("gt", "inf"):
            m = json.loads(shard_manifest(paths.align_shard(results, PIVOT, source, mode, 0)).read_text())
            assert m["stage"] == "align.project" and m["coverage"]["valid_share"] > 0.99
            assert m["links"]["paired_samples"] == m["rows"] and "align" in m["links"]["timings_s"]
