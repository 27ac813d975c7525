"""A realistic synthetic stand-in for teacher-forced top-k captures, to size and test the storage format
without models.

What is modelled (per target token, k ranks, vocabulary of `vocab` ids):
- ids: a Zipf–Mandelbrot unigram, weight(r) ∝ (r + 2.7)^-1.07 over frequency ranks r, mapped to ids the way a
  BPE vocabulary roughly orders them (frequent tokens get small ids, with noise: ids sorted by
  log(r + 1) + N(0, 1)); targets copy an earlier target of the same sample 20 % of the time (text repeats);
- the target's rank in the top-k: 0 (top-1) with probability `p_top1` (0.65), else ranks 1..k-1
  geometrically, or outside the top-k (7 %); the other ranks are distinct unigram draws;
- peaked distributions: top-1 probability from a mixture (55 % Beta(20, 1) ≈ 0.95, 30 % Beta(4, 2),
  15 % Beta(1.5, 3)); the rest of the mass, less a tail of 10–60 %, split over ranks 1..k-1 by a noisy
  power law in rank (gaps shrink down the list); log-probs in float32, non-increasing along k;
- entropy: exact (top-k terms + the tail spread over 50–5000 tokens) or, with `entropy_kind="topk_tail"`,
  top-k terms + one tail bucket, as vLLM gives it;
- messages: 1–3 assistant messages, the last token of each a template end-of-turn token (flagged, empty
  char span at the end of the message), other tokens 1 + Poisson(3) chars wide, spans contiguous.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np

from fusepipe.logits.store import SampleLogits

END_OF_TURN_ID = 2


class SyntheticCaptures:
    """Draws `SampleLogits` records; one instance per (vocab, k, seed) so the id order is drawn once."""

    def __init__(self, vocab: int = 32_000, k: int = 10, seed: int = 0, p_top1: float = 0.65):
        self.vocab, self.k, self.p_top1 = vocab, k, p_top1
        self.rng = np.random.default_rng(seed)
        ranks = np.arange(vocab, dtype=np.float64)
        weights = (ranks + 2.7) ** -1.07
        self.cdf = np.cumsum(weights / weights.sum())
        key = np.log(ranks + 1) + self.rng.normal(0.0, 1.0, vocab)
        self.rank_to_id = np.argsort(key).astype(np.int32)  # frequency rank r -> id (BPE-like, noisy)

    def unigram(self, n: int) -> np.ndarray:
        ranks = np.minimum(np.searchsorted(self.cdf, self.rng.random(n)), self.vocab - 1)
        return self.rank_to_id[ranks]

    def samples(
        self, n: int, min_tokens: int = 100, max_tokens: int = 500, entropy_kind: str = "exact"
    ) -> Iterator[SampleLogits]:
        for i in range(n):
            yield self.sample(f"s{i:08d}", int(self.rng.integers(min_tokens, max_tokens + 1)), entropy_kind)

    def sample(self, sample_id: str, n_tokens: int, entropy_kind: str = "exact") -> SampleLogits:
        rng, k = self.rng, self.k
        message_index, turn_end, offsets = self._messages(n_tokens)
        token_ids = self._targets(n_tokens)
        token_ids[turn_end] = END_OF_TURN_ID
        probs, tail = self._distributions(n_tokens)
        logprobs = np.log(probs).astype(np.float32)
        rank = self._target_ranks(n_tokens)
        topk_ids = self._candidates(token_ids, rank)
        inside = rank < k
        token_logprob = np.empty(n_tokens, np.float32)
        token_logprob[inside] = logprobs[inside, rank[inside]]
        below = logprobs[~inside, -1] - rng.exponential(1.0, (~inside).sum()).astype(np.float32) - 0.01
        token_logprob[~inside] = below
        entropy = self._entropy(probs, tail, entropy_kind)
        n_bytes = int(offsets[:, 1].max(initial=0)) + int(message_index.max(initial=0)) * 40
        return SampleLogits(
            sample_id=sample_id,
            model="synthetic",
            mode="gt",
            token_ids=token_ids,
            offsets=offsets,
            message_index=message_index,
            turn_end=turn_end,
            topk_ids=topk_ids,
            topk_logprobs=logprobs,
            token_logprob=token_logprob,
            entropy=entropy,
            entropy_kind=entropy_kind,
            nll_sum=float(-token_logprob.astype(np.float64).sum()),
            n_tokens=n_tokens,
            n_bytes=n_bytes,
        )

    def _messages(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(message_index int32 [n], turn_end bool [n], offsets int32 [n, 2]) for 1–3 messages."""
        n_msg = int(min(self.rng.integers(1, 4), n))
        cuts = np.sort(self.rng.choice(np.arange(1, n), n_msg - 1, replace=False)) if n_msg > 1 else []
        bounds = np.concatenate([[0], cuts, [n]]).astype(np.int64)
        message_index = np.repeat(np.arange(n_msg, dtype=np.int32), np.diff(bounds))
        turn_end = np.zeros(n, bool)
        turn_end[bounds[1:] - 1] = True
        widths = 1 + self.rng.poisson(3.0, n)
        widths[turn_end] = 0
        offsets = np.empty((n, 2), np.int32)
        for lo, hi in itertools.pairwise(bounds):
            ends = np.cumsum(widths[lo:hi])
            offsets[lo:hi, 1] = ends
            offsets[lo:hi, 0] = ends - widths[lo:hi]
        return message_index, turn_end, offsets

    def _targets(self, n: int) -> np.ndarray:
        ids = self.unigram(n)
        copy = np.flatnonzero(self.rng.random(n) < 0.2)
        copy = copy[copy > 0]
        for j in copy:  # copy an earlier target (in order, so copies of copies work)
            ids[j] = ids[self.rng.integers(0, j)]
        return ids

    def _distributions(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(probs float64 [n, k] non-increasing, tail mass [n]).

        Top-1 from the mixture; ranks 1..k-1 share the rest less the tail by a power law in rank,
        p_j ∝ j^-α · LogNormal(0, 0.3), α ~ U(1, 3), so gaps between ranks shrink down the list as in real
        top-k lists (the tail of a language model's distribution is long and flat).
        """
        rng, k = self.rng, self.k
        kind = rng.choice(3, n, p=[0.55, 0.30, 0.15])
        p1 = np.where(
            kind == 0, rng.beta(20, 1, n), np.where(kind == 1, rng.beta(4, 2, n), rng.beta(1.5, 3, n))
        )
        p1 = np.clip(p1, 1e-4, 1 - 1e-6)
        rest = 1.0 - p1
        tail = rest * rng.uniform(0.1, 0.6, n)
        alpha = rng.uniform(1.0, 3.0, (n, 1))
        weights = np.arange(1, k, dtype=np.float64) ** -alpha * rng.lognormal(0.0, 0.3, (n, k - 1))
        shares = weights / weights.sum(axis=1, keepdims=True)
        probs = np.concatenate([p1[:, None], (rest - tail)[:, None] * shares], axis=1)
        probs = -np.sort(-np.maximum(probs, 1e-30), axis=1)
        return probs, tail

    def _target_ranks(self, n: int) -> np.ndarray:
        rng, k = self.rng, self.k
        u = rng.random(n)
        other = np.minimum(rng.geometric(0.45, n), k - 1)
        return np.where(u < self.p_top1, 0, np.where(u < 0.93, other, k)).astype(np.int64)

    def _candidates(self, token_ids: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """Top-k ids [n, k]: the target at `rank` (if < k), distinct unigram draws elsewhere."""
        n, k = len(token_ids), self.k
        out = self.unigram(n * k).reshape(n, k)
        inside = np.flatnonzero(rank < k)
        out[inside, rank[inside]] = token_ids[inside]
        while (clash := self._clashes(out, token_ids, rank)).any():
            out[clash] = self.unigram(int(clash.sum()))
        return out

    @staticmethod
    def _clashes(out: np.ndarray, token_ids: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """[n, k] slots to redraw: repeats of an earlier slot of the row, or the target away from its rank."""
        n, k = out.shape
        order = np.argsort(out, axis=1, kind="stable")
        ordered = np.take_along_axis(out, order, axis=1)
        repeat = np.zeros((n, k), bool)
        repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        clash = np.zeros((n, k), bool)
        np.put_along_axis(clash, order, repeat, axis=1)
        clash |= out == token_ids[:, None]
        inside = np.flatnonzero(rank < k)
        clash[inside, rank[inside]] = False
        return clash

    def _entropy(self, probs: np.ndarray, tail: np.ndarray, kind: str) -> np.ndarray:
        """Top-k terms + the tail: spread over 50–5000 tokens (exact) or one bucket (topk_tail)."""
        top = -(probs * np.log(probs)).sum(axis=1)
        spread = self.rng.uniform(50, 5000, len(tail)) if kind == "exact" else np.ones(len(tail))
        return (top - tail * np.log(tail / spread)).astype(np.float32)
