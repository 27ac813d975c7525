"""Sequence dimension of token alignment: link the source's target tokens to the pivot's (FuseChat §2.3,
Figure 5).

Inputs are flat: the token ids of every alignment unit (one assistant message of one sample) concatenated,
unit boundaries as a pointer array (`ptr[u]:ptr[u+1]`), and each token's character span `[start, end)` in its
message. Units are aligned independently and in parallel (`prange`); nothing runs per token in Python.

Modes:
- `faithful`: dynamic time warping exactly as the reference (FuseAI `align_token_and_vocab.dtw`), called with
  the source as series 1 (i) and the pivot as series 2 (j):
      D[i, j] = c(i, j) + min(D[i-1, j-1], D[i, j-1], D[i-1, j]),  D outside the matrix = ∞ (origin excepted),
  with c = edit distance between the tokens' marker-stripped strings (both unstripped if either is empty),
  backtracked from the last cell taking the first minimum of [diagonal, left (pivot step), up (source step)].
- `band`: the same recurrence restricted to a Sakoe-Chiba band of `band` pivot tokens around the diagonal
  given by the character offsets (source position scaled by the ratio of the two texts' lengths).
- `offsets`: no DTW; a pivot token is linked to every source token whose character span overlaps its own
  (zero-width spans overlap the span containing their point). Exact when both tokenizations cover one text.

Output per pivot token j: the contiguous range `src_start[j]:src_stop[j]` of linked source tokens (a DTW path
links each pivot token to a contiguous run of source tokens) and its link kind, read source → pivot as in the
paper: 1 one-to-one, 2 one-to-many (its single source token also feeds other pivot tokens), 3 many-to-one
(several source tokens feed it), 0 unaligned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import get_num_threads, njit, prange

from fusepipe.align.tokens import TokenTable

MODES = ("faithful", "band", "offsets")
UNALIGNED, ONE_TO_ONE, ONE_TO_MANY, MANY_TO_ONE = 0, 1, 2, 3
_INF = np.int64(1) << 60
_ONE, _ZERO = np.uint64(1), np.uint64(0)
_DIAG, _LEFT, _UP = 0, 1, 2


@dataclass(frozen=True)
class Links:
    """Per pivot token (all units concatenated): linked source tokens (global indices) and the link kind."""

    src_start: np.ndarray  # int64 [Np]
    src_stop: np.ndarray  # int64 [Np]; == src_start where the pivot token is unaligned
    kind: np.ndarray  # int8 [Np]
    cost: np.ndarray  # int64 [U]: summed token cost c(i, j) over each unit's links


# ---------------------------------------------------------------- costs


@njit(cache=True, nogil=True)
def edit_distance(a, a0, a1, b, b0, b1, row, cap):
    """min(Levenshtein distance of the code points a[a0:a1] and b[b0:b1], cap + 1); `row` is scratch of
    length ≥ b1-b0+1. Stops as soon as every cell of a DP row exceeds `cap` (Ukkonen's cut-off).
    """
    n, m = a1 - a0, b1 - b0
    if n == 0 or m == 0:
        return min(n + m, cap + 1)
    for j in range(m + 1):
        row[j] = j
    for i in range(1, n + 1):
        diag = row[0]
        row[0] = i
        ai = a[a0 + i - 1]
        low = i
        for j in range(1, m + 1):
            up = row[j]
            best = diag if ai == b[b0 + j - 1] else diag + 1
            best = min(best, row[j - 1] + 1)
            best = min(best, up + 1)
            row[j] = best
            diag = up
            low = min(low, best)
        if low > cap:
            return cap + 1
    return min(row[m], cap + 1)


@njit(cache=True, nogil=True)
def token_cost(s, p, src, piv, row):
    """c(s, p): edit distance of the bare strings, or of the full strings if either bare string is empty.

    `src`/`piv` are (bare, bare_ptr, full, full_ptr) of a TokenTable; `s`, `p` token ids.
    """
    sb, sp, pb, pp = src[0], src[1], piv[0], piv[1]
    if sp[s] == sp[s + 1] or pp[p] == pp[p + 1]:
        sb, sp, pb, pp = src[2], src[3], piv[2], piv[3]
    return edit_distance(sb, sp[s], sp[s + 1], pb, pp[p], pp[p + 1], row, _INF)


def cost_tables(table: TokenTable) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The tuple the compiled kernels take for a vocabulary."""
    return table.bare, table.bare_ptr, table.full, table.full_ptr


# ---------------------------------------------------------------- bands


@njit(cache=True, nogil=True)
def _band(src_sp, piv_sp, radius, lo, hi):
    """Pivot range [lo[i], hi[i]] allowed for source token i: `radius` tokens around the offset diagonal.

    Source midpoints are scaled onto the pivot text by the ratio of the two spans covered; the pivot token
    containing that point is the diagonal. The band is made monotone and connected so a path always exists.
    """
    n, m = src_sp.shape[0], piv_sp.shape[0]
    s0, s1, p0, p1 = src_sp[0, 0], src_sp[n - 1, 1], piv_sp[0, 0], piv_sp[m - 1, 1]
    for i in range(n):
        if s1 > s0 and p1 > p0:
            c = p0 + (0.5 * (src_sp[i, 0] + src_sp[i, 1]) - s0) * (p1 - p0) / (s1 - s0)
            d0, d1 = 0, m  # first pivot token ending after c, by bisection
            while d0 < d1:
                mid = (d0 + d1) // 2
                if piv_sp[mid, 1] <= c:
                    d0 = mid + 1
                else:
                    d1 = mid
            d = min(d0, m - 1)
        else:
            d = int((i + 0.5) * m / n)
        lo[i] = max(d - radius, 0)
        hi[i] = min(d + radius, m - 1)
    lo[0] = 0
    hi[n - 1] = m - 1
    for i in range(n - 2, -1, -1):
        lo[i] = min(lo[i], lo[i + 1])
    for i in range(1, n):
        hi[i] = max(hi[i], hi[i - 1])
        lo[i] = min(lo[i], hi[i - 1] + 1)


# ---------------------------------------------------------------- pair costs


@njit(cache=True, nogil=True)
def _renumber(ids, slot):
    """Each id's index among the distinct ids (first-occurrence order), and the distinct ids.

    `slot` is a vocabulary-sized scratch array, all -1 on entry and on exit.
    """
    dense = np.empty(ids.shape[0], np.int64)
    uniq = np.empty(ids.shape[0], np.int64)
    k = 0
    for t in range(ids.shape[0]):
        if slot[ids[t]] < 0:
            slot[ids[t]] = k
            uniq[k] = ids[t]
            k += 1
        dense[t] = slot[ids[t]]
    for q in range(k):
        slot[uniq[q]] = -1
    return dense, uniq[:k]


@njit(cache=True, nogil=True)
def _spell(uniq, chars, ptr, letter, n_letters):
    """The strings of `uniq` spelt as letter indices (letters numbered on first sight in `letter`)."""
    lptr = np.zeros(uniq.shape[0] + 1, np.int64)
    for u in range(uniq.shape[0]):
        lptr[u + 1] = lptr[u] + ptr[uniq[u] + 1] - ptr[uniq[u]]
    loc = np.empty(lptr[uniq.shape[0]], np.int64)
    for u in range(uniq.shape[0]):
        for q in range(lptr[u + 1] - lptr[u]):
            ch = chars[ptr[uniq[u]] + q]
            if letter[ch] < 0:
                letter[ch] = n_letters
                n_letters += 1
            loc[lptr[u] + q] = letter[ch]
    return loc, lptr, n_letters


@njit(cache=True, nogil=True)
def _myers(peq, m, text, t0, t1):
    """Edit distance of a pattern of 1 ≤ m ≤ 64 chars (bit masks `peq` per letter) to text[t0:t1].

    Bit-parallel Levenshtein (Myers 1999, in Hyyrö's formulation): one 64-bit word step per text char.
    """
    pv, mv, score = ~_ZERO, _ZERO, m
    top = _ONE << np.uint64(m - 1)
    for t in range(t0, t1):
        eq = peq[text[t]]
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | ~(xh | pv)
        mh = pv & xh
        if ph & top:
            score += 1
        elif mh & top:
            score -= 1
        ph = (ph << _ONE) | _ONE
        mh = mh << _ONE
        pv = mh | ~(xv | ph)
        mv = ph & xv
    return score


@njit(cache=True, nogil=True)
def _pair_costs(sid, pid, lo, hi, dense, src, piv, row, slot_s, slot_p, letter):
    """c(i, j) of every cell in the band, computed once per distinct (source id, pivot id) pair.

    Bare strings of 1..64 chars go through the bit-parallel kernel over the unit's own letters, other pairs
    through `token_cost`. `dense`: the band is the whole matrix, so fill every pair; else only the pairs the
    band meets. Returns the table C[u_s, u_p] over the unit's distinct ids, and each token's row / column in
    it. `slot_*` and `letter` are all -1 scratch.
    """
    ds, us = _renumber(sid, slot_s)
    dp, up = _renumber(pid, slot_p)
    s_loc, s_ptr, n_letters = _spell(us, src[0], src[1], letter, 0)
    p_loc, p_ptr, n_letters = _spell(up, piv[0], piv[1], letter, n_letters)
    _forget_letters(us, src, letter)
    _forget_letters(up, piv, letter)
    peq = np.zeros((us.shape[0], n_letters), np.uint64)
    for u in range(us.shape[0]):
        if s_ptr[u + 1] - s_ptr[u] <= 64:
            for q in range(s_ptr[u + 1] - s_ptr[u]):
                peq[u, s_loc[s_ptr[u] + q]] |= _ONE << np.uint64(q)
    table = np.full((us.shape[0], up.shape[0]), -1, np.int32)
    for i in range(us.shape[0] if dense else sid.shape[0]):
        u = i if dense else ds[i]
        m = s_ptr[u + 1] - s_ptr[u]
        ci = table[u]
        for j in range(up.shape[0]) if dense else range(lo[i], hi[i] + 1):
            v = j if dense else dp[j]
            if ci[v] < 0:
                if 0 < m <= 64 and p_ptr[v + 1] > p_ptr[v]:
                    ci[v] = _myers(peq[u], m, p_loc, p_ptr[v], p_ptr[v + 1])
                else:
                    ci[v] = token_cost(us[u], up[v], src, piv, row)
    return table, ds, dp


@njit(cache=True, nogil=True)
def _forget_letters(uniq, tab, letter):
    for u in range(uniq.shape[0]):
        for q in range(tab[1][uniq[u]], tab[1][uniq[u] + 1]):
            letter[tab[0][q]] = -1


# ---------------------------------------------------------------- DTW


@njit(cache=True, nogil=True)
def _dtw_unit(sid, pid, lo, hi, dense, src, piv, row, slot_s, slot_p, letter, start, stop):
    """DTW of one unit over the band lo/hi; writes each pivot token's source range, returns the path cost."""
    n, m = sid.shape[0], pid.shape[0]
    table, ds, dp = _pair_costs(sid, pid, lo, hi, dense, src, piv, row, slot_s, slot_p, letter)
    rowoff = np.zeros(n + 1, np.int64)
    for i in range(n):
        rowoff[i + 1] = rowoff[i] + hi[i] - lo[i] + 1
    move = np.empty(rowoff[n], np.uint8)
    prev = np.empty(m, np.int64)
    cur = np.empty(m, np.int64)
    for i in range(n):
        ci = table[ds[i]]
        lo_i, hi_i = lo[i], hi[i]
        lo_p, hi_p = (lo[i - 1], hi[i - 1]) if i > 0 else (1, 0)  # previous row's band (empty for i = 0)
        at = rowoff[i] - lo_i
        for j in range(lo_i, hi_i + 1):
            c = ci[dp[j]]
            if i == 0 and j == 0:
                cur[0] = c
                continue
            # predecessors in the reference's tie order: diagonal, left (pivot step), up (source step)
            best, mv = _INF, _DIAG
            if lo_p <= j - 1 <= hi_p:
                best = prev[j - 1]
            if j > lo_i and cur[j - 1] < best:
                best, mv = cur[j - 1], _LEFT
            if lo_p <= j <= hi_p and prev[j] < best:
                best, mv = prev[j], _UP
            cur[j] = best + c
            move[at + j] = mv
        prev, cur = cur, prev
    total = prev[m - 1]
    for j in range(m):
        start[j], stop[j] = n, 0
    i, j = n - 1, m - 1
    while True:
        start[j] = min(start[j], i)
        stop[j] = max(stop[j], i + 1)
        if i == 0 and j == 0:
            break
        mv = move[rowoff[i] + j - lo[i]]
        if mv == _DIAG:
            i -= 1
            j -= 1
        elif mv == _LEFT:
            j -= 1
        else:
            i -= 1
    return total


@njit(cache=True, parallel=True)
def _dtw_units(
    src_ids,
    src_sp,
    src_ptr,
    piv_ids,
    piv_sp,
    piv_ptr,
    src,
    piv,
    radius,
    row_len,
    n_chars,
    n_chunks,
    start,
    stop,
    cost,
):
    """All units, in parallel over `n_chunks` contiguous chunks of units (each owns its scratch arrays)."""
    n_units = src_ptr.shape[0] - 1
    for c in prange(n_chunks):
        slot_s = np.full(src[1].shape[0], -1, np.int32)
        slot_p = np.full(piv[1].shape[0], -1, np.int32)
        letter = np.full(n_chars, -1, np.int32)
        row = np.empty(row_len, np.int64)
        for u in range(c * n_units // n_chunks, (c + 1) * n_units // n_chunks):
            a0, a1, b0, b1 = src_ptr[u], src_ptr[u + 1], piv_ptr[u], piv_ptr[u + 1]
            lo = np.zeros(a1 - a0, np.int64)
            hi = np.full(a1 - a0, b1 - b0 - 1, np.int64)
            if radius >= 0:
                _band(src_sp[a0:a1], piv_sp[b0:b1], radius, lo, hi)
            cost[u] = _dtw_unit(
                src_ids[a0:a1],
                piv_ids[b0:b1],
                lo,
                hi,
                radius < 0,
                src,
                piv,
                row,
                slot_s,
                slot_p,
                letter,
                start[b0:b1],
                stop[b0:b1],
            )
            for j in range(b0, b1):
                start[j] += a0
                stop[j] += a0


# ---------------------------------------------------------------- offsets


@njit(cache=True, nogil=True)
def _overlaps(a0, a1, b0, b1):
    """Spans [a0, a1) and [b0, b1) overlap; a zero-width span is the point it sits on."""
    if a0 == a1 and b0 == b1:
        return a0 == b0
    if a0 == a1:
        return b0 <= a0 < b1
    if b0 == b1:
        return a0 <= b0 < a1
    return max(a0, b0) < min(a1, b1)


@njit(cache=True, nogil=True)
def _offset_units(src_sp, src_ptr, piv_sp, piv_ptr, start, stop):
    """Per pivot token, the run of source tokens from the first to the last overlapping it (linear sweep)."""
    for u in range(src_ptr.shape[0] - 1):
        a0, a1 = src_ptr[u], src_ptr[u + 1]
        first = a0
        for j in range(piv_ptr[u], piv_ptr[u + 1]):
            p0, p1 = piv_sp[j, 0], piv_sp[j, 1]
            # source tokens wholly before this pivot token cannot overlap it or any later one
            while first < a1 and (
                (src_sp[first, 0] < src_sp[first, 1] and src_sp[first, 1] <= p0)
                or (src_sp[first, 0] == src_sp[first, 1] and src_sp[first, 0] < p0)
            ):
                first += 1
            start[j], stop[j] = a1, a1
            i = first
            while i < a1 and src_sp[i, 0] <= max(p0, p1 - 1):
                if _overlaps(src_sp[i, 0], src_sp[i, 1], p0, p1):
                    start[j] = min(start[j], i)
                    stop[j] = i + 1
                i += 1
            if stop[j] <= start[j]:
                start[j], stop[j] = first, first


@njit(cache=True, nogil=True)
def _path_costs(src_ids, piv_ids, piv_ptr, start, stop, src, piv, row_len, cost):
    """Σ c(i, j) over the links of each unit: the DTW objective of any set of links."""
    row = np.empty(row_len, np.int64)
    for u in range(piv_ptr.shape[0] - 1):
        total = 0
        for j in range(piv_ptr[u], piv_ptr[u + 1]):
            for i in range(start[j], stop[j]):
                total += token_cost(src_ids[i], piv_ids[j], src, piv, row)
        cost[u] = total


# ---------------------------------------------------------------- public API


def link_kinds(src_start: np.ndarray, src_stop: np.ndarray, n_src: int) -> np.ndarray:
    """Kind of each pivot token's link (0 unaligned, 1 one-to-one, 2 one-to-many, 3 many-to-one)."""
    deg = src_stop - src_start
    src_deg = np.cumsum(
        np.bincount(src_start, minlength=n_src + 1) - np.bincount(src_stop, minlength=n_src + 1)
    )
    single = np.where(src_deg[np.minimum(src_start, n_src)] > 1, ONE_TO_MANY, ONE_TO_ONE)
    return np.where(deg == 0, UNALIGNED, np.where(deg > 1, MANY_TO_ONE, single)).astype(np.int8)


def _check_side(name: str, ids, spans, ptr, table: TokenTable, need_spans: bool) -> None:
    if ids.ndim != 1:
        raise ValueError(
            f"{name}_ids must be 1-D (all units' target tokens concatenated), got shape {ids.shape}"
        )
    if ptr.ndim != 1 or len(ptr) < 2 or ptr[0] != 0 or ptr[-1] != len(ids):
        raise ValueError(
            f"{name}_ptr must run from 0 to len({name}_ids)={len(ids)} (unit boundaries), got "
            f"{ptr[:1].tolist()}..{ptr[-1:].tolist()}; rebuild it with np.cumsum of the per-unit token counts"
        )
    if (empty := np.flatnonzero(np.diff(ptr) <= 0)).size:
        raise ValueError(
            f"unit {int(empty[0])} has no {name} target tokens; drop samples whose assistant messages are "
            "empty before aligning"
        )
    if (bad := ids[(ids < 0) | (ids >= table.size)]).size:
        raise ValueError(
            f"{name} token id {int(bad[0])} is outside its tokenizer's {table.size} ids; build the {name} "
            "TokenTable from the tokenizer that produced the logits"
        )
    if need_spans and (spans is None or spans.shape != (len(ids), 2)):
        got = None if spans is None else spans.shape
        raise ValueError(
            f"{name}_spans must have shape ({len(ids)}, 2) (char start, end per token), got {got}"
        )


def align(
    src_ids: np.ndarray,
    src_ptr: np.ndarray,
    piv_ids: np.ndarray,
    piv_ptr: np.ndarray,
    src_table: TokenTable,
    piv_table: TokenTable,
    *,
    mode: str = "faithful",
    band: int = 32,
    src_spans: np.ndarray | None = None,
    piv_spans: np.ndarray | None = None,
) -> Links:
    """Link every unit's source tokens to its pivot tokens (see the module docstring for the modes).

    ids: int32 [N]; ptr: int64 [U+1] unit boundaries (same U on both sides); spans: int32/int64 [N, 2] char
    spans (needed by `band` and `offsets`); band: radius in pivot tokens.
    """
    if mode not in MODES:
        raise ValueError(f"unknown alignment mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "band" and band < 0:
        raise ValueError(f"band must be ≥ 0 pivot tokens, got {band}")
    src_ids, piv_ids = np.asarray(src_ids, np.int32), np.asarray(piv_ids, np.int32)
    src_ptr, piv_ptr = np.asarray(src_ptr, np.int64), np.asarray(piv_ptr, np.int64)
    need = mode != "faithful"
    _check_side("src", src_ids, src_spans, src_ptr, src_table, need)
    _check_side("piv", piv_ids, piv_spans, piv_ptr, piv_table, need)
    if len(src_ptr) != len(piv_ptr):
        raise ValueError(
            f"src_ptr has {len(src_ptr) - 1} units but piv_ptr has {len(piv_ptr) - 1}; pair the same samples "
            "and messages (join the two logits shards on sample_id) before aligning"
        )
    start = np.empty(len(piv_ids), np.int64)
    stop = np.empty(len(piv_ids), np.int64)
    cost = np.zeros(len(piv_ptr) - 1, np.int64)
    if mode == "offsets":
        _offset_units(
            np.asarray(src_spans, np.int64), src_ptr, np.asarray(piv_spans, np.int64), piv_ptr, start, stop
        )
        _path_costs(
            src_ids,
            piv_ids,
            piv_ptr,
            start,
            stop,
            cost_tables(src_table),
            cost_tables(piv_table),
            piv_table.longest + 1,
            cost,
        )
    else:
        dummy = np.zeros((0, 2), np.int64)
        _dtw_units(
            src_ids,
            dummy if src_spans is None else np.asarray(src_spans, np.int64),
            src_ptr,
            piv_ids,
            dummy if piv_spans is None else np.asarray(piv_spans, np.int64),
            piv_ptr,
            cost_tables(src_table),
            cost_tables(piv_table),
            band if mode == "band" else -1,
            piv_table.longest + 1,
            max(src_table.alphabet_size, piv_table.alphabet_size),
            min(len(piv_ptr) - 1, 4 * get_num_threads()),
            start,
            stop,
            cost,
        )
    return Links(start, stop, link_kinds(start, stop, len(src_ids)), cost)


def units_from_offsets(row_ptr: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Unit boundaries (int64 [U+1]) splitting each row at its assistant messages.

    Offsets restart at each message, so a new unit begins wherever a token starts before its predecessor
    within a row. Every row starts a unit.
    """
    row_ptr = np.asarray(row_ptr, np.int64)
    first = np.zeros(len(spans), bool)
    first[row_ptr[:-1][np.diff(row_ptr) > 0]] = True
    first[1:] |= spans[1:, 0] < spans[:-1, 0]
    return np.append(np.flatnonzero(first), len(spans)).astype(np.int64)
