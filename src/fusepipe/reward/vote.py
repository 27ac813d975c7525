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


def _all_eligible(scores: np.ndarray, eligible: np.ndarray | None) -> np.ndarray:
    return np.ones(scores.shape[:2], dtype=bool) if eligible is None else eligible


def _masked_votes(scores: np.ndarray, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores with every ineligible candidate at -inf (no RM picks it while an eligible one is left), and the
    RMs' votes over them; a prompt with no eligible candidate gets no votes."""
    masked = np.where(eligible[:, :, None], scores.astype(np.float64), -np.inf)
    return masked, np.where(eligible, rm_votes(masked), 0)


def _no_winner(winner: np.ndarray, tie: np.ndarray, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Winner -1 and no tie-break where no candidate is eligible."""
    none = ~eligible.any(axis=1)
    return np.where(none, -1, winner), tie & ~none


def majority(scores: np.ndarray, strongest: int, eligible: np.ndarray | None = None) -> VoteResult:
    """Majority vote of the RMs; ties between the most-voted candidates go to the strongest RM's scores."""
    eligible = _all_eligible(scores, eligible)
    scores, votes = _masked_votes(scores, eligible)
    top = votes == votes.max(axis=1, keepdims=True)  # [P, C] candidates with the most votes
    tie = top.sum(axis=1) > 1
    winner = np.argmax(np.where(top, scores[:, :, strongest], -np.inf), axis=1)
    winner, tie = _no_winner(winner, tie, eligible)
    return VoteResult(winner, votes, tie, scores[:, :, strongest])


def zscore_stats(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-RM mean and standard deviation over every (prompt, candidate) score: [R], [R]."""
    flat = scores.reshape(-1, scores.shape[-1]).astype(np.float64)
    std = flat.std(axis=0)
    return flat.mean(axis=0), np.where(std > 0, std, 1.0)


def zscore(scores: np.ndarray, strongest: int, stats: tuple[np.ndarray, np.ndarray] | None = None,
           eligible: np.ndarray | None = None) -> VoteResult:
    """Highest mean over RMs of dataset-standardised scores; an exact tie goes to the strongest RM's score.

    `stats` (from `zscore_stats` over all candidates) keeps the standardisation the same for every subset."""
    eligible = _all_eligible(scores, eligible)
    mean, std = stats if stats is not None else zscore_stats(scores)
    z = np.where(eligible, ((scores.astype(np.float64) - mean) / std).mean(axis=2), -np.inf)  # [P, C]
    top = z == z.max(axis=1, keepdims=True)
    tie = top.sum(axis=1) > 1
    winner = np.argmax(np.where(top, scores[:, :, strongest], -np.inf), axis=1)
    winner, tie = _no_winner(winner, tie, eligible)
    return VoteResult(winner, _masked_votes(scores, eligible)[1], tie, z)


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
