"""Reward-model voting on hand-made and generated score tables (property tests), and the vote stage's I/O."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fusepipe.artifacts import write_parquet
from fusepipe.errors import ArtifactError
from fusepipe.reward import vote_stage
from fusepipe.reward.vote import agreement, majority, rm_votes, vote, zscore, zscore_stats
from fusepipe.schemas import GENERATION, REWARD

# scores[p, c, r]: prompt p, candidate c, reward model r (r = 0 is the strongest)
SCORES = st.integers(1, 6).flatmap(
    lambda c: st.integers(1, 5).flatmap(
        lambda r: arrays(np.float64, (4, c, r), elements=st.integers(-3, 3).map(float))  # small ints: many ties
    )
)


def test_majority_hand_made():
    s = np.array([[
        [0.9, 0.1, 0.5],  # cand 0: RM0 likes it best
        [0.2, 0.8, 0.9],  # cand 1: RM1 and RM2 like it best
        [0.1, 0.0, 0.1],
    ]])
    r = majority(s, strongest=0)
    assert r.winner.tolist() == [1] and r.votes.tolist() == [[1, 2, 0]] and not r.tie_broken[0]


def test_tie_goes_to_the_strongest_rms_score():
    s = np.array([[[0.9, 0.1], [0.2, 0.8]]])  # one vote each
    assert majority(s, strongest=0).winner.tolist() == [0]
    assert majority(s, strongest=1).winner.tolist() == [1]
    assert majority(s, strongest=0).tie_broken.tolist() == [True]


def test_tie_among_top_ignores_candidates_with_fewer_votes():
    # 5 RMs: A 2 votes, B 2 votes, C 1 vote (the strongest's pick); the strongest scores B over A
    s = np.zeros((1, 3, 5))
    s[0, :, 0] = [0.5, 0.6, 0.9]  # strongest votes C, but ranks B above A
    s[0, :, 1] = s[0, :, 2] = [1, 0, 0]
    s[0, :, 3] = s[0, :, 4] = [0, 1, 0]
    r = majority(s, strongest=0)
    assert r.winner.tolist() == [1] and r.tie_broken.tolist() == [True]


@settings(max_examples=200, deadline=None)
@given(SCORES)
def test_majority_properties(s):
    r = majority(s, strongest=0)
    votes = rm_votes(s)
    assert (votes.sum(axis=1) == s.shape[2]).all()  # every RM votes once
    best = votes.max(axis=1)
    assert (votes[np.arange(len(s)), r.winner] == best).all()  # the winner has the most votes
    assert (r.tie_broken == ((votes == best[:, None]).sum(axis=1) > 1)).all()
    if s.shape[1] == 1:
        assert (r.winner == 0).all() and not r.tie_broken.any()


@settings(max_examples=200, deadline=None)
@given(SCORES, st.data())
def test_subset_vote_keeps_a_strict_majority_winner(s, data):
    """A candidate voted by more than half of the RMs over all candidates wins every subset that contains it."""
    r = majority(s, strongest=0)
    C = s.shape[1]
    for p in range(len(s)):
        w = int(r.winner[p])
        if r.votes[p, w] * 2 <= s.shape[2]:
            continue
        others = data.draw(st.lists(st.sampled_from([c for c in range(C) if c != w]), unique=True)) if C > 1 else []
        cols = sorted([w, *others])
        sub = majority(s[p : p + 1][:, cols], strongest=0)
        assert cols[int(sub.winner[0])] == w


@settings(max_examples=100, deadline=None)
@given(SCORES)
def test_the_full_subset_is_the_all_vote(s):
    for method in ("majority", "zscore"):
        a = vote(s, 0, method)
        b = vote(s[:, list(range(s.shape[1]))], 0, method, stats=zscore_stats(s))
        assert (a.winner == b.winner).all() and (a.tie_broken == b.tie_broken).all()


@settings(max_examples=100, deadline=None)
@given(SCORES)
def test_zscore_is_invariant_to_each_rms_scale_and_shift(s):
    scaled = s * np.arange(1, s.shape[2] + 1) * 3.0 + np.arange(s.shape[2]) * 10.0
    assert (zscore(s, 0).winner == zscore(scaled, 0).winner).all()


def test_zscore_uses_the_size_of_the_gaps():
    # RM0 and RM1 both prefer cand 0 slightly, RM2 strongly prefers cand 1: majority says 0, zscore says 1
    s = np.array([[[1.0, 1.0, -5.0], [0.9, 0.9, 5.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    assert majority(s, 0).winner[0] == 0
    assert zscore(s, 0).winner[0] == 1


@pytest.mark.parametrize("method", ["majority", "zscore"])
def test_an_ineligible_candidate_gets_no_vote_and_cannot_win(method):
    s = np.array([[[0.9, 0.9, 0.9], [0.5, 0.1, 0.2], [0.4, 0.3, 0.1]]])  # every RM prefers candidate 0
    eligible = np.array([[False, True, True]])
    r = vote(s, 0, method, eligible=eligible)
    assert r.winner.tolist() == [1] and r.votes.tolist() == [[0, 2, 1]] and not r.tie_broken[0]
    assert vote(s, 0, method).winner.tolist() == [0]


@given(SCORES, st.data())
@settings(max_examples=60, deadline=None)
def test_masking_is_voting_over_the_eligible_candidates_only(s, data):
    """With a mask, the winner is the winner of the vote over the eligible columns; none eligible: -1."""
    P, C, _ = s.shape
    eligible = data.draw(arrays(np.bool_, (P, C)))
    for method in ("majority", "zscore"):
        stats = zscore_stats(s)
        masked = vote(s, 0, method, stats, eligible=eligible)
        for p in range(P):
            cols = np.nonzero(eligible[p])[0]
            if not len(cols):
                assert masked.winner[p] == -1 and not masked.tie_broken[p] and masked.votes[p].sum() == 0
                continue
            alone = vote(s[p:p + 1, cols], 0, method, stats)
            assert masked.winner[p] == cols[alone.winner[0]]
            assert masked.tie_broken[p] == alone.tie_broken[0]
            assert masked.votes[p, cols].tolist() == alone.votes[0].tolist()
            assert masked.votes[p, ~eligible[p]].sum() == 0


def test_agreement():
    s = np.array([[[1, 1, 0], [0, 0, 1]], [[1, 1, 1], [0, 0, 0]]], dtype=float)
    assert agreement(s) == {"all": 0.5, "0~1": 1.0, "0~2": 0.5, "1~2": 0.5}


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown vote method 'best'; methods: majority, zscore"):
        vote(np.zeros((1, 2, 1)), 0, "best")


def _reward_shard(path, rm, rows):
    table = pa.table({"sample_id": [r[0] for r in rows], "model": [r[1] for r in rows],
                      "sample_index": [0] * len(rows), "rm": [rm] * len(rows),
                      "score": [r[2] for r in rows]}, schema=REWARD)
    write_parquet(table, path, REWARD)
    return path


def _gen_shard(path, rows):
    """rows: (sample_id, model, response)."""
    n = len(rows)
    table = pa.table({"sample_id": [r[0] for r in rows], "model": [r[1] for r in rows], "sample_index": [0] * n,
                      "response": [r[2] for r in rows], "n_tokens": [len(r[2].split()) for r in rows],
                      "finish_reason": ["stop"] * n, "seed": [0] * n, "prompt_tokens": [5] * n,
                      "prompt_truncated": [False] * n}, schema=GENERATION)
    write_parquet(table, path, GENERATION)
    return path


def _gens(tmp_path, samples=("s1", "s2"), empty=()):
    return [_gen_shard(tmp_path / f"gen-{m}.parquet",
                       [(s, m, "" if (s, m) in empty else f"answer of {m}") for s in samples])
            for m in ("piv", "a", "b")]


PARAMS = {
    "vote": {"method": "majority"}, "n": 1,
    "models": [{"name": "piv", "role": "pivot"}, {"name": "a", "role": "source"}, {"name": "b", "role": "source"}],
    "reward_models": [{"name": "big", "strength": 1}, {"name": "small", "strength": 2}],
}


def test_vote_stage_writes_all_and_pairwise_choices(tmp_path):
    import polars as pl

    shards = [
        _reward_shard(tmp_path / "big.parquet", "big", [("s1", "piv", 0.1), ("s1", "a", 0.9), ("s1", "b", 0.5),
                                                         ("s2", "piv", 0.7), ("s2", "a", 0.1), ("s2", "b", 0.2)]),
        _reward_shard(tmp_path / "small.parquet", "small", [("s1", "piv", 0.0), ("s1", "a", 0.1), ("s1", "b", 0.8),
                                                             ("s2", "piv", 0.9), ("s2", "a", 0.0), ("s2", "b", 0.1)]),
    ]
    man = vote_stage.run(PARAMS, shards, _gens(tmp_path), tmp_path / "vote" / "choices.parquet")
    df = pl.read_parquet(tmp_path / "vote" / "choices.parquet")
    got = {(r["sample_id"], r["subset"]): (r["winner"], r["tie_broken"]) for r in df.iter_rows(named=True)}
    assert got == {
        ("s1", "all"): ("a", True),  # big votes a, small votes b: tie, big's score decides
        ("s1", "piv~a"): ("a", False),
        ("s1", "piv~b"): ("b", False),
        ("s2", "all"): ("piv", False),
        ("s2", "piv~a"): ("piv", False),
        ("s2", "piv~b"): ("piv", False),
    }
    assert man["wins"]["all"] == {"piv": 1, "a": 1, "b": 0}
    assert man["tie_broken"] == {"all": 1, "piv~a": 0, "piv~b": 0}
    assert man["rm_agreement"] == {"all": 0.5, "big~small": 0.5}
    row = df.filter((pl.col("sample_id") == "s1") & (pl.col("subset") == "all")).row(0, named=True)
    assert [c["model"] for c in row["candidates"]] == ["piv", "a", "b"]
    assert dict(row["candidates"][1]["scores"]) == pytest.approx({"big": 0.9, "small": 0.1})
    assert man["empty_responses"] == {"piv": 0, "a": 0, "b": 0} and man["no_response"]["all"] == 0


def test_an_empty_response_takes_no_part_in_the_vote(tmp_path, caplog):
    """s1: both RMs like a's empty answer best, so b (second for both) wins; s2: the pair piv~a has only empty
    answers and gets no row."""
    import polars as pl

    shards = [
        _reward_shard(tmp_path / "big.parquet", "big", [("s1", "piv", 0.1), ("s1", "a", 0.9), ("s1", "b", 0.5),
                                                         ("s2", "piv", 0.7), ("s2", "a", 0.1), ("s2", "b", 0.2)]),
        _reward_shard(tmp_path / "small.parquet", "small", [("s1", "piv", 0.0), ("s1", "a", 0.9), ("s1", "b", 0.8),
                                                             ("s2", "piv", 0.9), ("s2", "a", 0.0), ("s2", "b", 0.1)]),
    ]
    gens = _gens(tmp_path, empty={("s1", "a"), ("s2", "piv"), ("s2", "a")})
    with caplog.at_level("WARNING", logger="fusepipe.vote"):
        man = vote_stage.run(PARAMS, shards, gens, tmp_path / "choices.parquet")
    df = pl.read_parquet(tmp_path / "choices.parquet")
    got = {(r["sample_id"], r["subset"]): r["winner"] for r in df.iter_rows(named=True)}
    assert got == {("s1", "all"): "b", ("s1", "piv~a"): "piv", ("s1", "piv~b"): "b",
                   ("s2", "all"): "b", ("s2", "piv~b"): "b"}
    row = df.filter((pl.col("sample_id") == "s1") & (pl.col("subset") == "all")).row(0, named=True)
    assert [(c["model"], c["empty"], c["votes"]) for c in row["candidates"]] == [
        ("piv", False, 0), ("a", True, 0), ("b", False, 2)]
    assert man["empty_responses"] == {"piv": 1, "a": 2, "b": 0}
    assert man["no_response"] == {"all": 0, "piv~a": 1, "piv~b": 0}
    assert man["wins"]["piv~a"] == {"piv": 1, "a": 0}
    assert "vote: 3 empty responses took no part (piv 1, a 2); piv~a: 1 prompts without a candidate" in caplog.text


def test_vote_stage_names_a_response_missing_from_the_generations(tmp_path):
    shards = [_reward_shard(tmp_path / f"{rm}.parquet", rm, [("s1", m, 0.5) for m in ("piv", "a", "b")])
              for rm in ("big", "small")]
    gens = _gens(tmp_path, samples=("s1",))[:2]  # b's generations are missing
    with pytest.raises(ArtifactError) as err:
        vote_stage.run(PARAMS, shards, gens, tmp_path / "choices.parquet")
    assert str(err.value) == ("vote: 'b' response 0 of sample s1 has reward scores but is not in gen/b "
                              "(1 missing in all); rerun generate and reward for 'b'")


def test_vote_stage_names_a_missing_score(tmp_path):
    shards = [
        _reward_shard(tmp_path / "big.parquet", "big", [("s1", "piv", 0.1), ("s1", "a", 0.9), ("s1", "b", 0.5)]),
        _reward_shard(tmp_path / "small.parquet", "small", [("s1", "piv", 0.0), ("s1", "a", 0.1)]),
    ]
    with pytest.raises(ArtifactError) as err:
        vote_stage.run(PARAMS, shards, _gens(tmp_path, samples=("s1",)), tmp_path / "choices.parquet")
    assert str(err.value) == ("reward: no score of 'small' for 'b' response 0 of sample s1 (1 missing in all); "
                              "rerun the reward stage for 'small'")
