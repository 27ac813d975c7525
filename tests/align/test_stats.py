"""Mapping statistics: one count per link, sparse, shard sums, save / load."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fusepipe.align import MappingCounts, align, count_links, reduce_counts
from fusepipe.align import reference as ref

from .conftest import encode


@pytest.fixture(scope="module")
def shard(tokenizers, tables, texts):
    src, piv = "bytelevel_bpe", "metaspace_bpe"
    sids, _, sptr = encode(tokenizers[src], texts)
    pids, _, pptr = encode(tokenizers[piv], texts)
    links = align(sids, sptr, pids, pptr, tables[src], tables[piv])
    return sids, sptr, pids, pptr, links, tables[src], tables[piv]


def test_counts_equal_the_reference_count_loop(shard):
    sids, sptr, pids, pptr, links, src_t, piv_t = shard
    expected: dict[tuple[int, int], int] = {}
    for u in range(len(sptr) - 1):
        s, p = sids[sptr[u] : sptr[u + 1]], pids[pptr[u] : pptr[u + 1]]
        ref.align_and_count(
            [src_t.text(i) for i in s], s.tolist(), [piv_t.text(i) for i in p], p.tolist(), expected
        )
    counts = count_links(links, sids, pids, src_t.size, piv_t.size)
    got = dict(zip(zip(counts.src.tolist(), counts.piv.tolist()), counts.count.tolist()))
    assert got == expected
    assert np.all(np.diff(counts.keys) > 0) and counts.count.sum() == (links.src_stop - links.src_start).sum()


def test_shards_reduce_to_the_counts_of_the_whole(shard):
    sids, _, pids, pptr, links, src_t, piv_t = shard
    whole = count_links(links, sids, pids, src_t.size, piv_t.size)
    cut = pptr[len(pptr) // 2]
    parts = []
    for lo, hi in ((0, cut), (cut, len(pids))):
        part = type(links)(links.src_start[lo:hi], links.src_stop[lo:hi], links.kind[lo:hi], links.cost)
        parts.append(count_links(part, sids, pids[lo:hi], src_t.size, piv_t.size))
    total = reduce_counts(parts)
    for field in ("src", "piv", "count"):
        assert np.array_equal(getattr(total, field), getattr(whole, field))


def test_lookup_row_ptr_and_summary():
    counts = reduce_counts(
        [
            MappingCounts(
                np.array([0, 0, 2], np.int32), np.array([1, 3, 1], np.int32), np.array([5, 1, 2]), 4, 5
            ),
            MappingCounts(np.array([0], np.int32), np.array([1], np.int32), np.array([1]), 4, 5),
        ]
    )
    assert counts.lookup(np.array([0, 0, 2, 1]), np.array([1, 3, 1, 1])).tolist() == [6, 1, 2, 0]
    assert counts.row_ptr().tolist() == [0, 2, 2, 3, 3]
    summary = counts.summary()
    assert summary == {
        "links": 9,
        "pairs": 3,
        "source_ids": 2,
        "pivot_ids": 2,
        "pairs_per_source_id": 1.5,
        "top1_share": 8 / 9,
        "max_count": 6,
    }


def test_save_and_load_round_trip(tmp_path, shard):
    sids, _, pids, _, links, src_t, piv_t = shard
    counts = count_links(links, sids, pids, src_t.size, piv_t.size)
    path = counts.save(tmp_path / "counts.npz")
    back = MappingCounts.load(path)
    assert (back.n_src, back.n_piv) == (src_t.size, piv_t.size)
    assert all(np.array_equal(getattr(back, f), getattr(counts, f)) for f in ("src", "piv", "count"))
    with np.load(path) as z:
        assert '"links"' in str(z["summary"])
    assert Counter(p.name for p in tmp_path.iterdir()) == {"counts.npz": 1}


def test_bad_inputs_say_what_to_fix(shard):
    sids, _, pids, _, links, src_t, piv_t = shard
    with pytest.raises(
        ValueError, match="links cover .* pivot tokens but piv_ids has 3; count with the pivot ids"
    ):
        count_links(links, sids, pids[:3], src_t.size, piv_t.size)
    with pytest.raises(ValueError, match="no mapping counts to reduce"):
        reduce_counts([])
    a = MappingCounts(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64), 3, 4)
    with pytest.raises(ValueError, match="mapping counts of different vocabulary sizes"):
        reduce_counts([a, MappingCounts(a.src, a.piv, a.count, 3, 5)])
