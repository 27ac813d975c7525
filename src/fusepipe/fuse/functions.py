"""Fusion functions: which distribution (or mixture) a pivot position trains on. Pure arrays in, arrays out.

Candidates are indexed m = 0..M-1 with the pivot first, so "ties go to the pivot" is "ties go to index 0".

- MinCE (FuseChat Eq. 2-3, ProFuser Eq. 2): per sample, the candidate with the lowest cross-entropy on the
  ground truth, CE = NLL / tokens (paper) or NLL / bytes (`ce_norm: byte`).
- UDF (InfiFusion Eq. 4-5): P_ens = Σ_k w_k P^k with w_k = 1 / (H(P^k) + CE(P^k, gt) + ε), normalised over the
  candidates valid at that position; per token or per sequence.
- RM vote (ProFuser Eq. 3): the vote stage already picked the response; its generator's distribution is the
  target (`fuse.stage`).
"""

from __future__ import annotations

import numpy as np
from numba import njit


def mince_choice(ce: np.ndarray) -> np.ndarray:
    """Index of the lowest CE per sample (ce: float [M, S], NaN = candidate absent); ties → the lower index."""
    ce = np.where(np.isnan(ce), np.inf, np.asarray(ce, np.float64))
    return np.argmin(ce, axis=0).astype(np.int64)  # argmin returns the first minimum: the pivot on ties


def sequence_ce(nll_sum: np.ndarray, n_tokens: np.ndarray, n_bytes: np.ndarray, norm: str) -> np.ndarray:
    """CE per token or per byte; NaN where the candidate has no such sample (nll_sum NaN)."""
    if norm not in ("token", "byte"):
        raise ValueError(f"unknown CE normalisation {norm!r}; use token or byte")
    denom = np.asarray(n_tokens if norm == "token" else n_bytes, np.float64)
    return np.asarray(nll_sum, np.float64) / np.maximum(denom, 1)


def udf_weights(entropy: np.ndarray, ce: np.ndarray, valid: np.ndarray, epsilon: float) -> np.ndarray:
    """w_k = 1/(H_k + CE_k + ε), normalised over the valid candidates of each column (all arrays [M, N]).

    Columns with no valid candidate get all-zero weights."""
    raw = np.where(valid, 1.0 / (np.asarray(entropy, np.float64) + np.asarray(ce, np.float64) + epsilon), 0.0)
    raw = np.where(np.isfinite(raw), raw, 0.0)
    total = raw.sum(0, keepdims=True)
    return np.divide(raw, total, out=np.zeros_like(raw), where=total > 0)


@njit(cache=True, nogil=True)
def _mix(ids, logprobs, weights, k, out_ids, out_lp):
    m_count, n, kin = ids.shape
    buf_id = np.empty(m_count * kin, np.int64)
    buf_p = np.empty(m_count * kin, np.float64)
    for j in range(n):
        used = 0
        for m in range(m_count):
            w = weights[m, j]
            if w <= 0.0:
                continue
            for r in range(kin):
                v = ids[m, j, r]
                if v < 0:
                    continue
                p = w * np.exp(logprobs[m, j, r])
                found = -1
                for u in range(used):
                    if buf_id[u] == v:
                        found = u
                        break
                if found >= 0:
                    buf_p[found] += p
                else:
                    buf_id[used] = v
                    buf_p[used] = p
                    used += 1
        for r in range(k):
            best = -1
            for u in range(used):
                if buf_p[u] > 0.0 and (best < 0 or buf_p[u] > buf_p[best]):
                    best = u
            if best < 0:
                out_ids[j, r] = -1
                out_lp[j, r] = -np.inf
            else:
                out_ids[j, r] = buf_id[best]
                out_lp[j, r] = np.log(buf_p[best])
                buf_p[best] = -1.0


def mix_topk(ids: np.ndarray, logprobs: np.ndarray, weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Σ_m w_m·p_m over the union of the candidates' top-k ids (duplicates summed), the k most probable kept.

    ids int [M, N, K] (-1 pads), logprobs float [M, N, K], weights [M, N] -> (ids int32 [N, k], log-probs
    float32 [N, k]; -1 / -inf pads)."""
    ids, logprobs = np.asarray(ids, np.int64), np.asarray(logprobs, np.float64)
    n = ids.shape[1]
    out_ids = np.empty((n, k), np.int32)
    out_lp = np.empty((n, k), np.float32)
    _mix(ids, logprobs, np.asarray(weights, np.float64), k, out_ids, out_lp)
    return out_ids, out_lp
