"""Mapping statistics (MS): how often each (source token id, pivot token id) pair is linked (FuseChat §2.3).

Every link of the sequence alignment counts once: pivot token j linked to the source tokens
src_start[j]:src_stop[j] adds 1 to M[source id, pivot id] for each of them (the reference's
`M[pivot_id, src_id] += 1` per link, a 1→n link adding 1 to n cells). Counts are kept sparse — the nonzero
pairs sorted by (source id, pivot id), which is CSR by source row — never as a dense V×V matrix. Each shard
counts its own links; `reduce_counts` sums the shards of a pair.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusepipe.align.dtw import Links
from fusepipe.artifacts import atomic_path


@dataclass(frozen=True)
class MappingCounts:
    """Sparse M[source id, pivot id]: nonzero entries sorted by (src, piv)."""

    src: np.ndarray  # int32 [nnz]
    piv: np.ndarray  # int32 [nnz]
    count: np.ndarray  # int64 [nnz]
    n_src: int  # source vocabulary size
    n_piv: int  # pivot vocabulary size

    @property
    def keys(self) -> np.ndarray:
        """src · n_piv + piv (int64, ascending): the lookup key of each entry."""
        return self.src.astype(np.int64) * self.n_piv + self.piv

    def row_ptr(self) -> np.ndarray:
        """CSR row pointer over source ids (int64 [n_src+1])."""
        return np.searchsorted(self.src, np.arange(self.n_src + 1), side="left").astype(np.int64)

    def lookup(self, src: np.ndarray, piv: np.ndarray) -> np.ndarray:
        """M[src, piv] for arrays of pairs (0 where never linked)."""
        want = np.asarray(src, np.int64) * self.n_piv + np.asarray(piv, np.int64)
        keys = self.keys
        if not len(keys):
            return np.zeros(want.shape, np.int64)
        at = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
        return np.where(keys[at] == want, self.count[at], 0)

    def summary(self) -> dict:
        """Totals, and how concentrated each source token's links are (top-1 share = Σ row max / Σ count)."""
        rows = np.flatnonzero(np.diff(self.row_ptr()))
        row_max = (
            np.maximum.reduceat(self.count, self.row_ptr()[rows]) if len(rows) else np.zeros(0, np.int64)
        )
        total = int(self.count.sum())
        return {
            "links": total,
            "pairs": len(self.count),
            "source_ids": len(rows),
            "pivot_ids": len(np.unique(self.piv)),
            "pairs_per_source_id": len(self.count) / max(len(rows), 1),
            "top1_share": float(row_max.sum() / total) if total else 0.0,
            "max_count": int(self.count.max(initial=0)),
        }

    def save(self, path: str | Path) -> Path:
        """Write `.npz` atomically: arrays, vocabulary sizes and the summary (JSON string)."""
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                src=self.src,
                piv=self.piv,
                count=self.count,
                shape=np.array([self.n_src, self.n_piv]),
                summary=np.array(json.dumps(self.summary())),
            )
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> MappingCounts:
        with np.load(path) as z:
            n_src, n_piv = (int(x) for x in z["shape"])
            return cls(z["src"], z["piv"], z["count"], n_src, n_piv)


def _from_keys(keys: np.ndarray, counts: np.ndarray, n_src: int, n_piv: int) -> MappingCounts:
    """Sum `counts` over equal keys (src · n_piv + piv)."""
    keys, inverse = np.unique(keys, return_inverse=True)
    summed = np.bincount(inverse, weights=counts, minlength=len(keys)).astype(np.int64)
    return MappingCounts(
        (keys // n_piv).astype(np.int32), (keys % n_piv).astype(np.int32), summed, n_src, n_piv
    )


def link_pairs(links: Links) -> tuple[np.ndarray, np.ndarray]:
    """(source position, pivot position) of every link, in pivot order."""
    deg = links.src_stop - links.src_start
    j = np.repeat(np.arange(len(deg)), deg)
    first = np.cumsum(deg) - deg
    return links.src_start[j] + np.arange(len(j)) - first[j], j


def count_links(
    links: Links, src_ids: np.ndarray, piv_ids: np.ndarray, n_src: int, n_piv: int
) -> MappingCounts:
    """M over one shard: one count per link (source position i, pivot position j) of `links`."""
    if len(links.src_start) != len(piv_ids):
        raise ValueError(
            f"links cover {len(links.src_start)} pivot tokens but piv_ids has {len(piv_ids)}; count with the "
            "pivot ids the links were computed on"
        )
    i, j = link_pairs(links)
    keys = np.asarray(src_ids, np.int64)[i] * n_piv + np.asarray(piv_ids, np.int64)[j]
    return _from_keys(keys, np.ones(len(keys), np.int64), n_src, n_piv)


def reduce_counts(parts: list[MappingCounts]) -> MappingCounts:
    """Σ of the shards' counts (all of one pivot/source pair)."""
    if not parts:
        raise ValueError("no mapping counts to reduce; pass the counts of at least one shard")
    n_src, n_piv = parts[0].n_src, parts[0].n_piv
    if any((p.n_src, p.n_piv) != (n_src, n_piv) for p in parts):
        raise ValueError(
            "mapping counts of different vocabulary sizes; reduce only shards of one (pivot, source) pair"
        )
    return _from_keys(
        np.concatenate([p.keys for p in parts]), np.concatenate([p.count for p in parts]), n_src, n_piv
    )
