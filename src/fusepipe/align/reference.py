"""Slow pure-Python transcription of the reference token alignment, the yardstick for tests and benchmarks.

Transcribed from FuseChat's public code, `FuseChat/train/align_token_and_vocab.py` (FuseAI, the version whose
`dtw` backtracks in the order [diag, left, up]): `dtw`, the DTW cost `dist_fn` of `transform_step_token`, the
mapping-statistics accumulation of `main`, and the "default" (MS) branch of `token_align_mapping`.
Token strings here are fusepipe's normalised `full` strings (markers read as spaces), so the reference's
"strip the marker" is "remove spaces" and "swap markers" is "keep the string"; the reference's `editdistance`
C extension is replaced by a pure-Python Levenshtein and its dense V×V count matrix by a dict.
Only tests and benchmarks call this module.
"""

from __future__ import annotations

import numpy as np


def levenshtein(a: str, b: str) -> int:
    """Edit distance with unit insert / delete / substitute costs."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        diag, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (ca != cb))
    return row[-1]


def dist_fn(a: str, b: str) -> int:
    """`transform_step_token.dist_fn`: edit distance of the marker-stripped tokens (unstripped if one is
    empty)."""
    aa, bb = a.replace(" ", ""), b.replace(" ", "")
    if len(aa) == 0 or len(bb) == 0:
        aa, bb = a, b
    return levenshtein(aa, bb)


def dtw(series_1: list[str], series_2: list[str], norm_func=dist_fn):
    """The reference `dtw`: returns (matches, cost, mappings_series_1, mappings_series_2, matrix)."""
    matrix = np.zeros((len(series_1) + 1, len(series_2) + 1))
    matrix[0, :] = np.inf
    matrix[:, 0] = np.inf
    matrix[0, 0] = 0
    for i, vec1 in enumerate(series_1):
        for j, vec2 in enumerate(series_2):
            cost = norm_func(vec1, vec2)
            matrix[i + 1, j + 1] = cost + min(matrix[i, j + 1], matrix[i + 1, j], matrix[i, j])
    matrix = matrix[1:, 1:]
    i = matrix.shape[0] - 1
    j = matrix.shape[1] - 1
    matches = []
    mappings_series_1 = [[] for _ in range(matrix.shape[0])]
    mappings_series_2 = [[] for _ in range(matrix.shape[1])]
    while i > 0 or j > 0:
        matches.append((i, j))
        mappings_series_1[i].append(j)
        mappings_series_2[j].append(i)
        option_diag = matrix[i - 1, j - 1] if i > 0 and j > 0 else np.inf
        option_up = matrix[i - 1, j] if i > 0 else np.inf
        option_left = matrix[i, j - 1] if j > 0 else np.inf
        move = np.argmin([option_diag, option_left, option_up])
        if move == 0:
            i -= 1
            j -= 1
        elif move == 1:
            j -= 1
        else:
            i -= 1
    matches.append((0, 0))
    mappings_series_1[0].append(0)
    mappings_series_2[0].append(0)
    matches.reverse()
    for mp in mappings_series_1:
        mp.reverse()
    for mp in mappings_series_2:
        mp.reverse()
    return matches, matrix[-1, -1], mappings_series_1, mappings_series_2, matrix


def align_and_count(
    src_tokens: list[str],
    src_ids: list[int],
    piv_tokens: list[str],
    piv_ids: list[int],
    counts: dict[tuple[int, int], int],
) -> list[list[int]]:
    """`transform_step_token` + the count loop of `main` for one sample: `dtw(source, pivot)`, then
    `M[pivot_id, source_id] += 1` for every source token linked to each pivot token. Returns base_to_blending
    (per pivot position, the linked source positions)."""
    _, _, _, base_to_blending, _ = dtw(src_tokens, piv_tokens)
    for j, linked in enumerate(base_to_blending):
        for i in linked:
            key = (src_ids[i], piv_ids[j])
            counts[key] = counts.get(key, 0) + 1
    return base_to_blending


def _sigmoid(x: float) -> float:
    return 1.0 / (1 + np.exp(-x))


def _mapping_dist(a: str, b: str) -> float:
    """`token_align_mapping.dist_fn`: like `dist_fn`, ×0.1 when one stripped string contains the other."""
    aa, bb = a.replace(" ", ""), b.replace(" ", "")
    if len(aa) == 0 or len(bb) == 0:
        aa, bb = a, b
    w = 0.1 if (aa in bb or bb in aa) else 1
    return levenshtein(aa, bb) * w


def ms_reference_map(
    src_strings: list[str], piv_strings: list[str], counts: dict[tuple[int, int], int], fallback: int
) -> list[int]:
    """The "default" branch of `token_align_mapping`, rows = source tokens: among pivot tokens with a nonzero
    count, argmin edit-distance · sigmoid(count), first minimum in pivot-id order; `fallback` (pivot unk, else
    eos) when a source token never co-occurred."""
    rows: dict[int, list[int]] = {}
    for s, p in counts:
        rows.setdefault(s, []).append(p)
    out = [fallback] * len(src_strings)
    for s, cands in rows.items():
        cands = sorted(cands)
        weighted = [_mapping_dist(src_strings[s], piv_strings[p]) * _sigmoid(counts[s, p]) for p in cands]
        out[s] = cands[int(np.argmin(weighted))]
    return out
