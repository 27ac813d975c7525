"""Reward-model voting (ProFuser, "Dual Mode Advantage Evaluation", inference mode).

For one prompt with candidates c = 1..C (responses of the generators) and reward models r = 1..R:

- **majority** (the paper): each RM votes for its best candidate, v_r = argmax_c s[c, r] (equal scores: the
  first candidate in generator order, pivot first); the candidate with most votes wins; a tie between
  candidates with the most votes "is resolved using the score from the strongest reward model": the tied
  candidate the strongest RM scores highest wins, and `tie_broken` is set.
- **zscore** (named option, not in the paper): each RM's scores are standardised over the whole dataset,
  z[c, r] = (s[c, r] - mean_r) / std_r, and the candidate with the highest mean over RMs wins; an exact tie
  goes to the strongest RM's score. It uses the size of the score gaps, which the vote throws away.

Votes are taken over any subset of the candidates (all generators, FuseLLM-style; each (pivot, source) pair,
FuseChat-style) by restricting the candidate axis first: an RM whose favourite is in the subset votes the same.
An `eligible` mask [P, C] takes candidates out of the vote (the stage passes "the response is not empty"): an RM
votes for its best eligible candidate, and a prompt with no eligible candidate has no winner (index -1).
All functions are vectorised over prompts: scores are float arrays [P, C, R].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("majority", "zscore")


@dataclass
class VoteResult:
    winner: np.ndarray  # int [P]: index into the candidate axis; -1: no eligible candidate
    votes: np.ndarray  # int [P, C]: RMs voting for each candidate (majority; zscore: same, for reference)
    tie_broken: np.ndarray  # bool [P]
    aggregate: np.ndarray  # float [P, C]: what decided (majority: strongest RM's score; zscore: mean z)


def rm_votes(scores: np.ndarray) -> np.ndarray:
    """votes[p, c] = number of RMs whose highest-scored candidate for prompt p is c (first index on equal scores)."""
    P, C, R = scores.shape
    picks = np.argmax(scores, axis=1)  # [P, R]
    votes = np.zeros((P, C), dtype=np.int64)
    np.add.at(votes, (np.repeat(np.arange(P), R), picks.ravel()), 1)
    return votes


def _masked(scores: np.ndarray, eligible: np.ndarray | None) -> np.ndarray:
    """Scores with every ineligible candidate at -inf, so no RM picks it while an eligible one is left."""
    if eligible is None:
        return scores
    return np.where(eligible[:, :, None], scores.astype(np.float64), -np.inf)


def _no_winner(winner: np.ndarray, tie: np.ndarray, eligible: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if eligible is None:
        return winner, tie
    none = ~eligible.any(axis=1)
    return np.where(none, -1, winner), tie & ~none


def majority(scores: np.ndarray, strongest: int, eligible: np.ndarray | None = None) -> VoteResult:
    """Majority vote of the RMs; ties between the most-voted candidates go to the strongest RM's scores."""
    scores = _masked(scores, eligible)
    votes = rm_votes(scores)
    if eligible is not None:
        votes = np.where(eligible, votes, 0)  # no eligible candidate: argmax picked the first, it counts nothing
    top = (votes == votes.max(axis=1, keepdims=True)) & (eligible if eligible is not None else True)
    tie = top.sum(axis=1) > 1
    by_strongest = np.where(top, scores[:, :, strongest], -np.inf)
    winner = np.argmax(by_strongest, axis=1)
    winner, tie = _no_winner(winner, tie, eligible)
    return VoteResult(winner, votes, tie, scores[:, :, strongest].astype(np.float64))


def zscore_stats(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-RM mean and standard deviation over every (prompt, candidate) score: [R], [R]."""
    flat = scores.reshape(-1, scores.shape[-1]).astype(np.float64)
    std = flat.std(axis=0)
    return flat.mean(axis=0), np.where(std > 0, std, 1.0)


def zscore(scores: np.ndarray, strongest: int, stats: tuple[np.ndarray, np.ndarray] | None = None,
           eligible: np.ndarray | None = None) -> VoteResult:
    """Highest mean over RMs of dataset-standardised scores; an exact tie goes to the strongest RM's score.

    `stats` (from `zscore_stats` over all candidates) keeps the standardisation the same for every subset."""
    mean, std = stats if stats is not None else zscore_stats(scores)
    z = ((scores.astype(np.float64) - mean) / std).mean(axis=2)  # [P, C]
    if eligible is not None:
        z = np.where(eligible, z, -np.inf)
    top = (z == z.max(axis=1, keepdims=True)) & (eligible if eligible is not None else True)
    tie = top.sum(axis=1) > 1
    winner = np.argmax(np.where(top, scores[:, :, strongest], -np.inf), axis=1)
    winner, tie = _no_winner(winner, tie, eligible)
    votes = rm_votes(_masked(scores, eligible))
    return VoteResult(winner, np.where(eligible, votes, 0) if eligible is not None else votes, tie, z)


def vote(scores: np.ndarray, strongest: int, method: str = "majority",
         stats: tuple[np.ndarray, np.ndarray] | None = None, eligible: np.ndarray | None = None) -> VoteResult:
    if method == "majority":
        return majority(scores, strongest, eligible)
    if method == "zscore":
        return zscore(scores, strongest, stats, eligible)
    raise ValueError(f"unknown vote method {method!r}; methods: {', '.join(METHODS)}")


def agreement(scores: np.ndarray) -> dict[str, float]:
    """How often the RMs agree on the best candidate: all of them, and each pair (the paper's Figure 1 kind)."""
    picks = np.argmax(scores, axis=1)  # [P, R]
    R = picks.shape[1]
    out = {"all": float(np.mean((picks == picks[:, :1]).all(axis=1)))} if len(picks) else {"all": float("nan")}
    for a in range(R):
        for b in range(a + 1, R):
            out[f"{a}~{b}"] = float(np.mean(picks[:, a] == picks[:, b])) if len(picks) else float("nan")
    return out
