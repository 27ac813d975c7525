"""Distribution dimension, part 1: map every source vocabulary id to one pivot vocabulary id (FuseChat §2.3,
Appendix B.1, Figure 5).

Strategies (`vocab_map(strategy, ...)`, int32 [V_src], -1 where a source id has no pivot counterpart):
- `ms` (the paper): the pivot token most often linked to the source token in the mapping statistics M;
  ties by smaller edit distance of the full strings, then lower pivot id. Source ids never seen in M fall
  back to an exact string match, else -1.
- `ms_reference` (the public code): the exact string match where the pivot has one (the code's projection
  tries it first), else among pivot tokens with M > 0 the argmin of d·sigmoid(M), d = edit distance of the
  marker-stripped strings (×0.1 when one contains the other), first minimum in pivot-id order. sigmoid is
  increasing, so among equal d the *rarer* pair wins. Ids never seen map to the pivot's unk (else eos).
- `mined` (FuseLLM's MinED, as intended; the reference's copy maps everything to id 0): the pivot token of
  minimum edit distance over the whole pivot vocabulary, on the full strings; ties to the lower id.
- `em` (FuseLLM's EM): exact string match after marker normalisation (markers read as spaces).
Special tokens: ids with a role in both tokenizers map to their counterpart (bos→bos, eos→eos, unk→unk,
pad→pad, end-of-turn→end-of-turn); exact matches only pair special with special, and `mined` never maps
special tokens.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from fusepipe.align.dtw import cost_tables, edit_distance
from fusepipe.align.stats import MappingCounts
from fusepipe.align.tokens import TokenTable

STRATEGIES = ("ms", "ms_reference", "mined", "em")
_BIG = np.int64(1) << 60


def exact_match(src: TokenTable, piv: TokenTable) -> np.ndarray:
    """Lowest pivot id with the same full string and special flag as each source id (int32 [V_src]; -1)."""
    index: dict[tuple[str, bool], int] = {}
    for p, key in enumerate(zip(piv.texts(), piv.special.tolist())):
        index.setdefault(key, p)
    return np.array([index.get(key, -1) for key in zip(src.texts(), src.special.tolist())], dtype=np.int32)


@njit(cache=True, nogil=True)
def _ms_paper(row_ptr, piv, count, src_full, src_ptr, piv_full, piv_ptr, row, out):
    """Per source row of M: max count, then min edit distance of the full strings, then min pivot id."""
    for s in range(row_ptr.shape[0] - 1):
        best, best_c, best_d = -1, -1, _BIG
        for e in range(row_ptr[s], row_ptr[s + 1]):
            if count[e] < best_c:
                continue
            p = piv[e]
            d = edit_distance(
                src_full, src_ptr[s], src_ptr[s + 1], piv_full, piv_ptr[p], piv_ptr[p + 1], row, _BIG
            )
            if count[e] > best_c or d < best_d or (d == best_d and p < best):
                best, best_c, best_d = p, count[e], d
        if best >= 0:
            out[s] = best


@njit(cache=True, nogil=True)
def _contains(a, a0, a1, b, b0, b1):
    """a[a0:a1] occurs in b[b0:b1]."""
    for k in range(b0, b1 - (a1 - a0) + 1):
        q = 0
        while q < a1 - a0 and a[a0 + q] == b[k + q]:
            q += 1
        if q == a1 - a0:
            return True
    return False


@njit(cache=True, nogil=True)
def _ms_reference(row_ptr, piv, count, src, pivt, row, out):
    """Per source row of M: first argmin over pivot ids of d'·sigmoid(count) (`token_align_mapping`)."""
    for s in range(row_ptr.shape[0] - 1):
        best, best_w = -1, np.inf
        for e in range(row_ptr[s], row_ptr[s + 1]):
            p = piv[e]
            a, ap, b, bp = src[0], src[1], pivt[0], pivt[1]
            if ap[s] == ap[s + 1] or bp[p] == bp[p + 1]:
                a, ap, b, bp = src[2], src[3], pivt[2], pivt[3]
            a0, a1, b0, b1 = ap[s], ap[s + 1], bp[p], bp[p + 1]
            w = 0.1 if _contains(a, a0, a1, b, b0, b1) or _contains(b, b0, b1, a, a0, a1) else 1.0
            d = edit_distance(a, a0, a1, b, b0, b1, row, _BIG) * w
            weighted = d * (1.0 / (1.0 + np.exp(-float(count[e]))))
            if weighted < best_w:
                best, best_w = p, weighted
        if best >= 0:
            out[s] = best


@njit(cache=True, parallel=True)
def _mined(queries, src_full, src_ptr, piv_ids, piv_full, piv_ptr, len_ptr, row_len, out):
    """Min edit distance over the pivot candidates `piv_ids`, sorted by length (`len_ptr[L]` = first of
    length L). Scans lengths L, L±1, ... and stops once the length gap exceeds the best distance."""
    max_len = len_ptr.shape[0] - 2
    for q in prange(queries.shape[0]):
        s = queries[q]
        row = np.empty(row_len, np.int64)
        n = src_ptr[s + 1] - src_ptr[s]
        best, best_d, gap = -1, _BIG, 0
        while gap <= best_d and (gap <= n or n + gap <= max_len):
            for side in range(2 if gap > 0 else 1):
                length = n - gap if side == 0 else n + gap
                if length < 0 or length > max_len:
                    continue
                for e in range(len_ptr[length], len_ptr[length + 1]):
                    p = piv_ids[e]
                    d = edit_distance(
                        src_full,
                        src_ptr[s],
                        src_ptr[s + 1],
                        piv_full,
                        piv_ptr[p],
                        piv_ptr[p + 1],
                        row,
                        best_d,
                    )
                    if d < best_d or (d == best_d and p < best):
                        best, best_d = p, d
            gap += 1
        out[s] = best


def min_edit_distance(src: TokenTable, piv: TokenTable) -> np.ndarray:
    """`mined`: per non-special source id, the non-special pivot id of least edit distance (int32 [V_src])."""
    lengths = np.diff(piv.full_ptr)
    cands = np.flatnonzero(~piv.special & (lengths > 0))
    cands = cands[np.argsort(lengths[cands], kind="stable")]
    len_ptr = np.searchsorted(lengths[cands], np.arange(int(lengths.max(initial=0)) + 2)).astype(np.int64)
    queries = np.flatnonzero(~src.special & (np.diff(src.full_ptr) > 0))
    out = np.full(src.size, -1, np.int32)
    if len(cands):
        _mined(queries, src.full, src.full_ptr, cands, piv.full, piv.full_ptr, len_ptr, piv.longest + 1, out)
    return out


def special_pairs(src: TokenTable, piv: TokenTable) -> tuple[np.ndarray, np.ndarray]:
    """(source id, pivot id) of the roles both tokenizers have, in the order bos, eos, unk, pad, eot."""
    roles = [r for r in src.roles if r in piv.roles]
    return np.array([src.roles[r] for r in roles], np.int64), np.array(
        [piv.roles[r] for r in roles], np.int64
    )


def vocab_map(
    strategy: str, src: TokenTable, piv: TokenTable, counts: MappingCounts | None = None
) -> np.ndarray:
    """Pivot id for every source id (int32 [V_src], -1 where none) by `strategy` (see the module doc)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown vocabulary strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if strategy.startswith("ms"):
        if counts is None:
            raise ValueError(
                f"strategy {strategy!r} needs the mapping counts; pass counts=reduce_counts(shards)"
            )
        if (counts.n_src, counts.n_piv) != (src.size, piv.size):
            raise ValueError(
                f"mapping counts are {counts.n_src}×{counts.n_piv} but the vocabularies are "
                f"{src.size}×{piv.size}; "
                "count with the token tables of this (source, pivot) pair"
            )
    row = np.empty(piv.longest + 1, np.int64)
    if strategy == "em":
        out = exact_match(src, piv)
    elif strategy == "mined":
        out = min_edit_distance(src, piv)
    elif strategy == "ms":
        out = exact_match(src, piv)
        _ms_paper(
            counts.row_ptr(),
            counts.piv,
            counts.count,
            src.full,
            src.full_ptr,
            piv.full,
            piv.full_ptr,
            row,
            out,
        )
    else:
        out = np.full(src.size, piv.roles.get("unk", piv.roles.get("eos", -1)), np.int32)
        _ms_reference(
            counts.row_ptr(), counts.piv, counts.count, cost_tables(src), cost_tables(piv), row, out
        )
        em = exact_match(src, piv)
        out = np.where(em >= 0, em, out).astype(np.int32)
    s, p = special_pairs(src, piv)
    out[s] = p  # end of turn is the last role, so it wins where eos also closes a turn
    return out
