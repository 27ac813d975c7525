"""Distribution dimension, part 2: re-express the source's top-k distributions on the pivot's target tokens
and pivot vocabulary (FuseChat §2.3 and Appendix B.1).

For pivot token j linked to source tokens i ∈ L(j) with weights w_i (Σ w_i = 1):
    q_j(v) = Σ_{i ∈ L(j)} w_i · Σ_t [map(topk_id[i, t]) = v] · exp(topk_logprob[i, t])
- one-to-one and one-to-many links (|L(j)| = 1): w = 1, the source distribution mapped through the vocabulary
  map (a one-to-many source token feeds each of its pivot tokens);
- many-to-one links, `n_to_one="weighted"` (the paper): w_i ∝ M[source id_i, pivot id_j], the mapping
  frequency (uniform if all are 0); `n_to_one="last"` (the public code, whose many-to-one branch keeps a
  single source token, in practice the last one of the run): w = 1 on the last linked source token.
Mass of source ids mapped to the same pivot id is summed (the reference keeps the first and drops the rest);
source ids without a pivot counterpart lose their mass. The k most probable pivot ids are kept.
A pivot token with no link, or none of whose source ids maps, gets a one-hot of its own token, valid = False.

`chain` (fusepipe's option `align.projection: chain`, not in the papers): at a granularity mismatch the paper's
rule feeds a pivot token the distribution of a source position that predicts something else (`▁18` ← `Ġ`,`1`,`8`:
the distribution at `Ġ` predicts `Ġ`). The chain rule gives the pivot's own token the source's probability of the
same text instead, the product of the source's probabilities of its linked tokens,
    P_j = Π_{i ∈ L(j), i not counted before} p_src(src token i | its prefix)
(a source token that feeds several pivot tokens counts at the first), and spreads 1 − P_j over the paper's q_j
without the pivot token, renormalised: q'_j(g_j) = P_j, q'_j(v) = (1 − P_j) · q_j(v) / Σ_{u ≠ g_j} q_j(u).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from fusepipe.align.dtw import ONE_TO_ONE, Links
from fusepipe.align.stats import MappingCounts, link_pairs

N_TO_ONE = ("weighted", "last")
PROJECTIONS = ("paper", "chain")


@dataclass(frozen=True)
class Projected:
    """The source's distribution at every pivot target token, over pivot vocabulary ids."""

    ids: np.ndarray  # int32 [Np, k]: pivot vocabulary ids, most probable first; -1 pads
    logprobs: np.ndarray  # float32 [Np, k]: log q_j(id); -inf pads
    valid: np.ndarray  # bool [Np]: aligned, and some source top-k id has a pivot counterpart
    kind: np.ndarray  # int8 [Np]: 0 unaligned, 1 one-to-one, 2 one-to-many, 3 many-to-one
    src_mass: np.ndarray  # float32 [Np]: Σ_i w_i Σ_t exp(topk_logprob[i, t]), the top-k mass that went in


@njit(cache=True, nogil=True)
def _largest(buf_id, buf_p, n, out_ids, out_lp):
    """The len(out_ids) largest of the n (id, probability) entries into one output row as (id, log p), most
    probable first, ties to the lower id; -1 / -inf pads. Consumes buf_p."""
    for r in range(out_ids.shape[0]):
        best = -1
        for q in range(n):
            if buf_p[q] >= 0.0 and (
                best < 0
                or buf_p[q] > buf_p[best]
                or (buf_p[q] == buf_p[best] and buf_id[q] < buf_id[best])
            ):
                best = q
        if best < 0:
            out_ids[r], out_lp[r] = -1, -np.inf
        else:
            out_ids[r], out_lp[r] = buf_id[best], np.log(buf_p[best])
            buf_p[best] = -1.0


@njit(cache=True, nogil=True)
def _project(link_ptr, link_src, link_w, piv_ids, topk_ids, topk_lp, vmap, out_ids, out_lp, valid, src_mass):
    """q_j over the links of each pivot token j: weighted, mapped, summed per pivot id, the k_out largest kept
    (k_out = out_ids.shape[1])."""
    k_in = topk_ids.shape[1]
    widest = 1
    for j in range(piv_ids.shape[0]):
        widest = max(widest, link_ptr[j + 1] - link_ptr[j])
    buf_id = np.empty(widest * k_in, np.int64)
    buf_p = np.empty(widest * k_in, np.float64)
    for j in range(piv_ids.shape[0]):
        n, mass = 0, 0.0
        for e in range(link_ptr[j], link_ptr[j + 1]):
            if link_w[e] == 0.0:
                continue
            i = link_src[e]
            for t in range(k_in):
                sid = topk_ids[i, t]
                if sid < 0:
                    continue
                p = link_w[e] * np.exp(np.float64(topk_lp[i, t]))
                mass += p
                v = vmap[sid]
                if v < 0:
                    continue
                q = 0
                while q < n and buf_id[q] != v:
                    q += 1
                if q == n:
                    buf_id[n], buf_p[n] = v, 0.0
                    n += 1
                buf_p[q] += p
        src_mass[j] = mass
        valid[j] = n > 0
        _largest(buf_id, buf_p, n, out_ids[j], out_lp[j])
        if n == 0:
            out_ids[j, 0], out_lp[j, 0] = piv_ids[j], 0.0


def link_weights(
    links: Links, src_ids: np.ndarray, piv_ids: np.ndarray, n_to_one: str, counts: MappingCounts | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(link pointer per pivot token, source position, weight) of every link; weights sum to 1 per pivot
    token."""
    i, j = link_pairs(links)
    deg = links.src_stop - links.src_start
    ptr = np.zeros(len(deg) + 1, np.int64)
    np.cumsum(deg, out=ptr[1:])
    if n_to_one == "last":
        w = (i == links.src_stop[j] - 1).astype(np.float64)
    else:
        w = counts.lookup(np.asarray(src_ids)[i], np.asarray(piv_ids)[j]).astype(np.float64)
        total = np.bincount(j, weights=w, minlength=len(deg))[j]
        w = np.divide(w, total, out=1.0 / deg[j], where=total > 0)
    return ptr, i, w


def project(
    links: Links,
    piv_ids: np.ndarray,
    src_ids: np.ndarray,
    src_topk_ids: np.ndarray,
    src_topk_logprobs: np.ndarray,
    vmap: np.ndarray,
    *,
    n_to_one: str = "weighted",
    counts: MappingCounts | None = None,
    k: int | None = None,
) -> Projected:
    """Project the source top-k (ids int32 [Ns, K], log-probs float32 [Ns, K]; id -1 = padding) onto the pivot
    tokens `piv_ids` (int32 [Np]) through `links` and the vocabulary map `vmap` (int32 [V_src]); keeps k ids
    (default K). `n_to_one="weighted"` needs the mapping counts."""
    if n_to_one not in N_TO_ONE:
        raise ValueError(f"unknown n_to_one rule {n_to_one!r}; use one of {', '.join(N_TO_ONE)}")
    if n_to_one == "weighted" and counts is None:
        raise ValueError(
            "n_to_one='weighted' weighs by the mapping counts; pass counts= (or use n_to_one='last')"
        )
    topk_ids, topk_lp = np.asarray(src_topk_ids, np.int32), np.asarray(src_topk_logprobs, np.float32)
    if topk_ids.ndim != 2 or topk_ids.shape != topk_lp.shape or len(topk_ids) != len(src_ids):
        raise ValueError(
            f"src_topk_ids {topk_ids.shape} and src_topk_logprobs {topk_lp.shape} must both be "
            f"[{len(src_ids)} source tokens, K]; pass the top-k of the same source rows as src_ids"
        )
    if len(links.src_start) != len(piv_ids):
        raise ValueError(
            f"links cover {len(links.src_start)} pivot tokens but piv_ids has {len(piv_ids)}; project "
            "with the pivot ids the links were computed on"
        )
    if topk_ids.size and topk_ids.max() >= len(vmap):
        raise ValueError(
            f"source top-k id {int(topk_ids.max())} is outside the vocabulary map ({len(vmap)} ids); "
            "build the map from a TokenTable with vocab_size= the source model's vocabulary size"
        )
    k = topk_ids.shape[1] if k is None else k
    ptr, src_pos, w = link_weights(links, src_ids, piv_ids, n_to_one, counts)
    n = len(piv_ids)
    out = Projected(
        np.empty((n, k), np.int32),
        np.empty((n, k), np.float32),
        np.empty(n, bool),
        links.kind,
        np.empty(n, np.float32),
    )
    _project(
        ptr,
        src_pos,
        w,
        np.asarray(piv_ids, np.int64),
        topk_ids,
        topk_lp,
        np.asarray(vmap, np.int64),
        out.ids,
        out.logprobs,
        out.valid,
        out.src_mass,
    )
    return out


@njit(cache=True, nogil=True)
def _chain(src_start, src_stop, piv_ids, src_token_lp, ids, lp):
    """In place: P_j on the pivot's own token, 1 − P_j over the rest of row j renormalised (module docstring)."""
    k = ids.shape[1]
    buf_id = np.empty(k, np.int64)
    buf_p = np.empty(k, np.float64)
    counted = -1
    for j in range(piv_ids.shape[0]):
        if src_stop[j] <= src_start[j]:
            continue
        log_p = 0.0
        for i in range(max(src_start[j], counted + 1), src_stop[j]):
            log_p += src_token_lp[i]
        counted = max(counted, src_stop[j] - 1)
        p_own = np.exp(min(log_p, 0.0))
        top = -np.inf  # the other ids' mass, relative to the largest (no underflow on tiny rows)
        for t in range(k):
            if ids[j, t] >= 0 and ids[j, t] != piv_ids[j]:
                top = max(top, np.float64(lp[j, t]))
        rest = 0.0
        if top > -np.inf:
            for t in range(k):
                if ids[j, t] >= 0 and ids[j, t] != piv_ids[j]:
                    rest += np.exp(np.float64(lp[j, t]) - top)
        n = 0
        if p_own > 0.0:
            buf_id[0], buf_p[0] = piv_ids[j], p_own
            n = 1
        for t in range(k):
            if ids[j, t] >= 0 and ids[j, t] != piv_ids[j] and n < k and rest > 0.0:
                q = (1.0 - p_own) * np.exp(np.float64(lp[j, t]) - top) / rest
                if q > 0.0:
                    buf_id[n], buf_p[n] = ids[j, t], q
                    n += 1
        _largest(buf_id, buf_p, n, ids[j], lp[j])


def chain(proj: Projected, links: Links, piv_ids: np.ndarray, src_token_logprobs: np.ndarray) -> Projected:
    """The chain rule over a projection (module docstring): the pivot token's probability is the source's
    probability of the text it covers, `src_token_logprobs` (float [Ns]) being the source's log-prob of each of
    its own tokens; the other ids keep the projection's shape. Positions without a link keep theirs."""
    src_token_logprobs = np.asarray(src_token_logprobs, np.float64)
    if len(links.src_start) != len(piv_ids):
        raise ValueError(f"links cover {len(links.src_start)} pivot tokens but piv_ids has {len(piv_ids)}")
    if len(links.src_stop) and links.src_stop.max(initial=0) > len(src_token_logprobs):
        raise ValueError(f"links reach source token {int(links.src_stop.max())} but only "
                         f"{len(src_token_logprobs)} source log-probs were given")
    ids, lp = proj.ids.copy(), proj.logprobs.copy()
    _chain(np.asarray(links.src_start, np.int64), np.asarray(links.src_stop, np.int64),
           np.asarray(piv_ids, np.int64), src_token_logprobs, ids, lp)
    linked = links.src_stop > links.src_start
    return Projected(ids, lp, proj.valid | linked, proj.kind, proj.src_mass)


def fit_k(ids: np.ndarray, logprobs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-K rows (ids, log-probs) cut to, or padded up to, k entries (-1 / -inf pads)."""
    n, have = ids.shape
    out_ids = np.full((n, k), -1, np.int32)
    out_lp = np.full((n, k), -np.inf, np.float32)
    out_ids[:, : min(k, have)], out_lp[:, : min(k, have)] = ids[:, :k], logprobs[:, :k]
    return out_ids, out_lp


def copy_through(
    piv_ids: np.ndarray, src_ids: np.ndarray, src_topk_ids: np.ndarray, src_topk_logprobs: np.ndarray
) -> Projected:
    """Same tokenizer, same tokens: the source's top-k is already on the pivot's tokens and vocabulary."""
    if not np.array_equal(piv_ids, src_ids):
        raise ValueError(
            "copy_through needs identical pivot and source token ids; these differ, so align them "
            "(align + project with the 'em' map) instead"
        )
    probs = np.exp(np.asarray(src_topk_logprobs, np.float64)) * (np.asarray(src_topk_ids) >= 0)
    n = len(piv_ids)
    return Projected(
        np.asarray(src_topk_ids, np.int32),
        np.asarray(src_topk_logprobs, np.float32),
        np.ones(n, bool),
        np.full(n, ONE_TO_ONE, np.int8),
        probs.sum(1).astype(np.float32),
    )
