"""`vote` stage: per prompt, the reward models pick one candidate response, over all generators and over
each (pivot, source) pair (the vote rules are in `vote.py`).

An empty response (only whitespace: a generator that stopped at once) is no candidate: no RM votes for it and it
cannot win, however the RMs score it (the data stage drops empty turns from the ground truth by the same rule,
and an empty target teaches nothing). A prompt whose candidates in a subset are all empty gets no row there.

Writes `vote/choices.parquet` (schema `VOTE`: one row per prompt and subset, with every candidate's votes, scores
and emptiness) and a manifest with how often each model wins, per subset, how often a tie-break decided, how
often the RMs agree, and how many responses of each model were empty.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from fusepipe.artifacts import Manifest, write_parquet
from fusepipe.errors import ArtifactError
from fusepipe.reward.vote import agreement, vote, zscore_stats
from fusepipe.schemas import GENERATION, REWARD, VOTE, check_schema

log = logging.getLogger("fusepipe.vote")


def candidate_name(model: str, index: int, n: int) -> str:
    return model if n == 1 else f"{model}#{index}"


def candidates(models: list[str], n: int) -> dict[tuple[str, int], int]:
    """(model, sample index) -> position on the candidate axis: model in `models` order, then sample index."""
    return {(m, j): k for k, (m, j) in enumerate((m, j) for m in models for j in range(n))}


def score_tensor(reward_paths: list[str | Path], models: list[str], rms: list[str], n: int
                 ) -> tuple[list[str], np.ndarray]:
    """Sample ids and scores [P, C, R], candidates ordered as in `candidates`."""
    for p in reward_paths:
        check_schema(p, REWARD)
    df = pl.concat([pl.read_parquet(p) for p in reward_paths]) if reward_paths else pl.DataFrame(schema=REWARD.names)
    sample_ids = sorted(set(df["sample_id"].to_list()))
    pos = {s: i for i, s in enumerate(sample_ids)}
    cand = candidates(models, n)
    rm_pos = {r: i for i, r in enumerate(rms)}
    scores = np.full((len(sample_ids), len(cand), len(rms)), np.nan)
    for sid, model, j, rm, score in df.select("sample_id", "model", "sample_index", "rm", "score").iter_rows():
        if (model, j) in cand and rm in rm_pos:
            scores[pos[sid], cand[(model, j)], rm_pos[rm]] = score
    holes = np.argwhere(np.isnan(scores))
    if len(holes):
        p, c, r = holes[0]
        model, j = list(cand)[c]
        raise ArtifactError(f"reward: no score of {rms[r]!r} for {model!r} response {j} of sample {sample_ids[p]} "
                            f"({len(holes)} missing in all); rerun the reward stage for {rms[r]!r}")
    return sample_ids, scores


def empty_responses(gen_paths: list[str | Path], models: list[str], n: int, sample_ids: list[str]) -> np.ndarray:
    """empty[p, c]: candidate c's response to prompt p is only whitespace (candidates ordered as in `candidates`).

    A scored response missing from the generations is an error: the reward shards and the generations disagree."""
    cand = candidates(models, n)
    pos = {s: i for i, s in enumerate(sample_ids)}
    empty = np.zeros((len(sample_ids), len(cand)), dtype=bool)
    seen = np.zeros_like(empty)
    for p in gen_paths:
        check_schema(p, GENERATION)
        df = pl.read_parquet(p, columns=["sample_id", "model", "sample_index", "response"])
        for sid, model, j, response in df.iter_rows():
            if (model, j) in cand and sid in pos:
                seen[pos[sid], cand[(model, j)]] = True
                empty[pos[sid], cand[(model, j)]] = not response.strip()
    holes = np.argwhere(~seen)
    if len(holes):
        p, c = holes[0]
        model, j = list(cand)[c]
        raise ArtifactError(f"vote: {model!r} response {j} of sample {sample_ids[p]} has reward scores but is not in "
                            f"gen/{model} ({len(holes)} missing in all); rerun generate and reward for {model!r}")
    return empty


def subsets(models: list[dict[str, str]]) -> dict[str, list[str]]:
    """'all' (every generator) and, FuseChat-style, one '{pivot}~{source}' pair per source."""
    names = [m["name"] for m in models]
    out = {"all": names}
    pivot = next((m["name"] for m in models if m["role"] == "pivot"), None)
    if pivot is not None:
        for m in models:
            if m["role"] == "source":
                out[f"{pivot}~{m['name']}"] = [pivot, m["name"]]
    return out


def run(params: dict[str, Any], reward_paths: list[str | Path], gen_paths: list[str | Path], out: str | Path
        ) -> dict[str, Any]:
    method, n = params["vote"]["method"], params["n"]
    models = [m["name"] for m in params["models"]]
    rms = [r["name"] for r in sorted(params["reward_models"], key=lambda r: r["strength"])]  # strongest first
    out = Path(out)
    manifest = Manifest("vote", params, inputs={str(p): str(p) for p in [*reward_paths, *gen_paths]})
    with manifest.phase("read"):
        sample_ids, scores = score_tensor(reward_paths, models, rms, n)
        empty = empty_responses(gen_paths, models, n, sample_ids)
    cand_models = [m for m in models for _ in range(n)]
    cand_index = [j for _ in models for j in range(n)]
    stats = zscore_stats(scores)
    rows: list[dict[str, Any]] = []
    wins: dict[str, dict[str, int]] = {}
    ties: dict[str, int] = {}
    unanswered: dict[str, int] = {}
    with manifest.phase("vote"):
        for subset, members in subsets(params["models"]).items():
            cols = [k for k, m in enumerate(cand_models) if m in members]
            result = vote(scores[:, cols, :], strongest=0, method=method, stats=stats, eligible=~empty[:, cols])
            counts = {m: 0 for m in members}
            unanswered[subset] = int((result.winner < 0).sum())
            for p, sid in enumerate(sample_ids):
                if result.winner[p] < 0:
                    continue
                w = cols[result.winner[p]]
                counts[cand_models[w]] += 1
                rows.append({
                    "sample_id": sid, "subset": subset, "method": method,
                    "winner": cand_models[w], "winner_index": cand_index[w],
                    "votes": [(candidate_name(cand_models[k], cand_index[k], n), int(result.votes[p, i]))
                              for i, k in enumerate(cols)],
                    "tie_broken": bool(result.tie_broken[p]),
                    "candidates": [{
                        "model": cand_models[k], "sample_index": cand_index[k], "votes": int(result.votes[p, i]),
                        "scores": [(rm, float(scores[p, k, r])) for r, rm in enumerate(rms)],
                        "aggregate": float(result.aggregate[p, i]),
                        "empty": bool(empty[p, k]),
                    } for i, k in enumerate(cols)],
                })
            wins[subset] = counts
            ties[subset] = int(result.tie_broken.sum())
    write_parquet(pa.Table.from_pylist(rows, schema=VOTE), out, VOTE)
    agree = agreement(scores)
    manifest["prompts"] = len(sample_ids)
    manifest["method"] = method
    manifest["rm_order"] = rms
    manifest["wins"] = wins
    manifest["win_rate"] = {s: {m: round(c / max(len(sample_ids), 1), 4) for m, c in w.items()} for s, w in wins.items()}
    manifest["tie_broken"] = ties
    per_model = empty.reshape(len(sample_ids), len(models), n).sum(axis=(0, 2))  # candidates are model-major
    manifest["empty_responses"] = {m: int(c) for m, c in zip(models, per_model, strict=True)}
    manifest["no_response"] = unanswered  # prompts left out of a subset: every candidate there was empty
    manifest["rm_agreement"] = {
        ("all" if k == "all" else "~".join(rms[int(i)] for i in k.split("~"))): round(v, 4) for k, v in agree.items()
    }
    manifest.write(out.parent, {"choices": out})
    for subset, w in wins.items():
        log.info("vote %-28s wins %s (tie-broken %d)", subset, w, ties[subset])
    if empty.any():
        log.warning("vote: %d empty responses took no part (%s); %s", int(empty.sum()),
                    ", ".join(f"{m} {c}" for m, c in manifest["empty_responses"].items() if c),
                    ", ".join(f"{s}: {c} prompts without a candidate" for s, c in unanswered.items() if c)
                    or "every prompt kept a candidate")
    return manifest.data
