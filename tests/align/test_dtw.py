"""Sequence alignment: the faithful DTW equals the reference transcription; path properties; band; offsets."""

from __future__ import annotations

import itertools

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusepipe.align import align, table_from_strings, units_from_offsets
from fusepipe.align import reference as ref
from fusepipe.align.dtw import MANY_TO_ONE, ONE_TO_MANY, ONE_TO_ONE, UNALIGNED, edit_distance

from .conftest import FAMILIES, encode

SETTINGS = settings(max_examples=120, deadline=None)
token = st.text(alphabet="ab c", min_size=1, max_size=4)


@st.composite
def cases(draw, max_len=9):
    """Two random vocabularies and 1-3 units of random token ids on each side."""
    vocabs = [draw(st.lists(token, min_size=1, max_size=8)) for _ in range(2)]
    units = draw(
        st.lists(
            st.tuples(*(st.lists(st.integers(0, len(v) - 1), min_size=1, max_size=max_len) for v in vocabs)),
            min_size=1,
            max_size=3,
        )
    )
    return vocabs[0], vocabs[1], [u[0] for u in units], [u[1] for u in units]


def flat(units):
    ptr = np.cumsum([0] + [len(u) for u in units]).astype(np.int64)
    return np.array(list(itertools.chain(*units)), np.int32), ptr


def spans_of(strings, ids, ptr):
    """Char spans of each token in its unit's text (the concatenation of its full strings)."""
    lengths = np.array([len(strings[i]) for i in ids], np.int64)
    ends = np.cumsum(lengths)
    ends -= np.repeat(np.r_[0, ends[ptr[1:-1] - 1]], np.diff(ptr))
    return np.stack([ends - lengths, ends], 1)


def unit_ranges(links, sptr, pptr, u):
    """Per pivot token of unit u, the linked source positions relative to the unit."""
    return [
        list(range(a - sptr[u], b - sptr[u]))
        for a, b in zip(links.src_start[pptr[u] : pptr[u + 1]], links.src_stop[pptr[u] : pptr[u + 1]])
    ]


def assert_path(links, sptr, pptr):
    """Monotone, contiguous, starting at (0, 0) and ending at (n-1, m-1) in every unit."""
    for u in range(len(sptr) - 1):
        start = links.src_start[pptr[u] : pptr[u + 1]] - sptr[u]
        stop = links.src_stop[pptr[u] : pptr[u + 1]] - sptr[u]
        assert start[0] == 0 and stop[-1] == sptr[u + 1] - sptr[u]
        assert np.all(stop > start)
        assert np.all(np.isin(start[1:] - stop[:-1], [-1, 0]))


@SETTINGS
@given(cases())
def test_faithful_equals_reference(case):
    src_v, piv_v, src_units, piv_units = case
    (sids, sptr), (pids, pptr) = flat(src_units), flat(piv_units)
    links = align(sids, sptr, pids, pptr, table_from_strings(src_v), table_from_strings(piv_v))
    for u, (s, p) in enumerate(zip(src_units, piv_units)):
        _, cost, _, base_to_blending, _ = ref.dtw([src_v[i] for i in s], [piv_v[i] for i in p])
        assert unit_ranges(links, sptr, pptr, u) == base_to_blending
        assert links.cost[u] == cost


@pytest.mark.parametrize("src,piv", list(itertools.permutations(FAMILIES, 2)))
def test_faithful_equals_reference_across_families(tokenizers, tables, texts, src, piv):
    sids, _, sptr = encode(tokenizers[src], texts)
    pids, _, pptr = encode(tokenizers[piv], texts)
    links = align(sids, sptr, pids, pptr, tables[src], tables[piv])
    src_s, piv_s = tables[src].texts(), tables[piv].texts()
    for u in range(len(texts)):
        s, p = sids[sptr[u] : sptr[u + 1]], pids[pptr[u] : pptr[u + 1]]
        _, cost, _, base_to_blending, _ = ref.dtw([src_s[i] for i in s], [piv_s[i] for i in p])
        assert unit_ranges(links, sptr, pptr, u) == base_to_blending and links.cost[u] == cost


def test_links_do_not_depend_on_the_thread_count(tokenizers, tables, texts):
    sids, _, sptr = encode(tokenizers["unigram"], texts)
    pids, _, pptr = encode(tokenizers["metaspace_bpe"], texts)
    runs = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        runs.append(align(sids, sptr, pids, pptr, tables["unigram"], tables["metaspace_bpe"]))
    assert all(
        np.array_equal(getattr(runs[0], f), getattr(runs[1], f)) for f in ("src_start", "src_stop", "cost")
    )


def test_tokens_longer_than_a_machine_word_take_the_plain_kernel():
    long = "x" * 70 + "y"
    src, piv = table_from_strings([long, "a", "x" * 69]), table_from_strings(["x" * 71, "a", long + "z"])
    ids = np.array([0, 1, 2, 0], np.int32)
    links = align(ids, [0, 4], ids[::-1].copy(), [0, 4], src, piv)
    _, cost, _, base_to_blending, _ = ref.dtw([src.text(i) for i in ids], [piv.text(i) for i in ids[::-1]])
    assert unit_ranges(links, [0, 4], [0, 4], 0) == base_to_blending and links.cost[0] == cost


@SETTINGS
@given(cases())
def test_identical_tokenizations_give_the_identity_path(case):
    vocab, _, units, _ = case
    ids, ptr = flat(units)
    table = table_from_strings(vocab)
    links = align(ids, ptr, ids, ptr, table, table)
    assert np.array_equal(links.src_start, np.arange(len(ids))) and np.array_equal(
        links.src_stop, links.src_start + 1
    )
    assert np.all(links.kind == ONE_TO_ONE) and not links.cost.any()


@SETTINGS
@given(cases())
def test_path_is_monotone_and_covers_both_sequences(case):
    src_v, piv_v, src_units, piv_units = case
    (sids, sptr), (pids, pptr) = flat(src_units), flat(piv_units)
    links = align(sids, sptr, pids, pptr, table_from_strings(src_v), table_from_strings(piv_v))
    assert_path(links, sptr, pptr)
    covered = np.zeros(len(sids), bool)
    for a, b in zip(links.src_start, links.src_stop):
        covered[a:b] = True
    assert covered.all()


def cells(links, sptr, pptr, u):
    return {(i, j) for j, linked in enumerate(unit_ranges(links, sptr, pptr, u)) for i in linked}


@SETTINGS
@given(cases())
def test_alignment_mirrors_up_to_ties(case):
    """B→A has the same optimal cost as A→B, and its path, transposed, is an optimal A→B path."""
    a_v, b_v, a_units, b_units = case
    (aids, aptr), (bids, bptr) = flat(a_units), flat(b_units)
    a_t, b_t = table_from_strings(a_v), table_from_strings(b_v)
    ab = align(aids, aptr, bids, bptr, a_t, b_t)
    ba = align(bids, bptr, aids, aptr, b_t, a_t)
    assert np.array_equal(ab.cost, ba.cost)
    for u in range(len(a_units)):
        mirrored = {(i, j) for j, i in cells(ba, bptr, aptr, u)}
        cost = sum(ref.dist_fn(a_v[aids[aptr[u] + i]], b_v[bids[bptr[u] + j]]) for i, j in mirrored)
        assert cost == ab.cost[u]
        if mirrored != cells(ab, aptr, bptr, u):  # then the optimum is not unique: another path ties
            assert len(mirrored & cells(ab, aptr, bptr, u)) >= 2


@SETTINGS
@given(cases(max_len=14), st.integers(0, 3))
def test_band_is_a_valid_path_no_better_than_full_dtw(case, radius):
    src_v, piv_v, src_units, piv_units = case
    (sids, sptr), (pids, pptr) = flat(src_units), flat(piv_units)
    src_t, piv_t = table_from_strings(src_v), table_from_strings(piv_v)
    sp = {"src_spans": spans_of(src_v, sids, sptr), "piv_spans": spans_of(piv_v, pids, pptr)}
    full = align(sids, sptr, pids, pptr, src_t, piv_t)
    band = align(sids, sptr, pids, pptr, src_t, piv_t, mode="band", band=radius, **sp)
    assert_path(band, sptr, pptr)
    assert np.all(band.cost >= full.cost)
    wide = align(sids, sptr, pids, pptr, src_t, piv_t, mode="band", band=14, **sp)
    assert np.array_equal(wide.src_start, full.src_start) and np.array_equal(wide.cost, full.cost)


@pytest.mark.parametrize("src,piv", [("metaspace_bpe", "bytelevel_bpe"), ("unigram", "metaspace_bpe")])
def test_band_follows_the_offset_diagonal_on_real_text(tokenizers, tables, texts, src, piv):
    sids, ssp, sptr = encode(tokenizers[src], texts)
    pids, psp, pptr = encode(tokenizers[piv], texts)
    full = align(sids, sptr, pids, pptr, tables[src], tables[piv])
    band = align(
        sids, sptr, pids, pptr, tables[src], tables[piv], mode="band", band=4, src_spans=ssp, piv_spans=psp
    )
    assert_path(band, sptr, pptr)
    same = (band.src_start == full.src_start) & (band.src_stop == full.src_stop)
    assert same.mean() > 0.95 and band.cost.sum() <= 1.05 * full.cost.sum()


def overlaps(a, b):
    """Spans overlap; a zero-width span is the point it sits on (the rule of the offsets mode)."""
    if a[0] == a[1] and b[0] == b[1]:
        return a[0] == b[0]
    if a[0] == a[1] or b[0] == b[1]:
        point, span = (a, b) if a[0] == a[1] else (b, a)
        return span[0] <= point[0] < span[1]
    return max(a[0], b[0]) < min(a[1], b[1])


def test_offsets_link_exactly_the_overlapping_spans(tokenizers, tables, texts):
    sids, ssp, sptr = encode(tokenizers["unigram"], texts)
    pids, psp, pptr = encode(tokenizers["bytelevel_bpe"], texts)
    links = align(
        sids,
        sptr,
        pids,
        pptr,
        tables["unigram"],
        tables["bytelevel_bpe"],
        mode="offsets",
        src_spans=ssp,
        piv_spans=psp,
    )
    for u in range(len(texts)):
        for j in range(pptr[u], pptr[u + 1]):
            hits = [i for i in range(sptr[u], sptr[u + 1]) if overlaps(ssp[i], psp[j])]
            assert list(range(links.src_start[j], links.src_stop[j])) == list(range(hits[0], hits[-1] + 1))


def test_offsets_of_one_tokenization_give_the_identity(tokenizers, tables, texts):
    plain = [t for i, t in enumerate(texts) if i % 4]  # no byte-fallback pieces sharing one char's span
    ids, spans, ptr = encode(tokenizers["metaspace_bpe"], plain)
    t = tables["metaspace_bpe"]
    links = align(ids, ptr, ids, ptr, t, t, mode="offsets", src_spans=spans, piv_spans=spans)
    assert np.array_equal(links.src_start, np.arange(len(ids))) and np.all(links.kind == ONE_TO_ONE)


def test_offsets_zero_width_and_unmatched_spans():
    src, piv = table_from_strings(["ab", "c", "</s>"]), table_from_strings(["a", "bc", "</s>", "x"])
    links = align(
        np.array([0, 1, 2], np.int32),
        [0, 3],
        np.array([0, 1, 2, 3], np.int32),
        [0, 4],
        src,
        piv,
        mode="offsets",
        src_spans=np.array([[0, 2], [2, 3], [3, 3]]),
        piv_spans=np.array([[0, 1], [1, 3], [3, 3], [5, 6]]),
    )
    assert links.src_start.tolist() == [0, 0, 2, 3] and links.src_stop.tolist() == [1, 2, 3, 3]
    assert links.kind.tolist() == [ONE_TO_MANY, MANY_TO_ONE, ONE_TO_ONE, UNALIGNED]


def test_figure5_link_kinds():
    """Figure 5: "flow"+"ers" → "flowers" is many-to-one; "belongs" → "belo"+"ngs" one-to-many."""
    src = table_from_strings([" the", " flow", "ers", " bloom", " belongs", " here"])
    piv = table_from_strings([" the", " flowers", " bloom", " belo", "ngs", " here"])
    sids, pids = np.array([0, 1, 2, 3, 0, 4, 5], np.int32), np.array([0, 1, 2, 0, 3, 4, 5], np.int32)
    links = align(sids, [0, 4, 7], pids, [0, 3, 7], src, piv)
    assert links.src_start.tolist() == [0, 1, 3, 4, 5, 5, 6] and links.src_stop.tolist() == [
        1,
        3,
        4,
        5,
        6,
        6,
        7,
    ]
    assert links.kind.tolist() == [
        ONE_TO_ONE,
        MANY_TO_ONE,
        ONE_TO_ONE,
        ONE_TO_ONE,
        ONE_TO_MANY,
        ONE_TO_MANY,
        ONE_TO_ONE,
    ]


@settings(max_examples=200, deadline=None)
@given(st.text("abc \u00e9", max_size=12), st.text("abc \u00e9", max_size=12), st.integers(0, 6))
def test_edit_distance_matches_levenshtein_and_cuts_off_above_cap(a, b, cap):
    ca, cb = (np.frombuffer(x.encode("utf-32-le"), np.uint32) for x in (a, b))
    row = np.empty(len(b) + 1, np.int64)
    exact = ref.levenshtein(a, b)
    assert edit_distance(ca, 0, len(ca), cb, 0, len(cb), row, 1 << 40) == exact
    assert edit_distance(ca, 0, len(ca), cb, 0, len(cb), row, cap) == min(exact, cap + 1)


def test_units_split_at_message_boundaries():
    spans = np.array([[0, 2], [2, 5], [0, 3], [3, 4], [0, 1], [0, 2], [2, 3]])
    assert units_from_offsets([0, 5, 7], spans).tolist() == [0, 2, 4, 5, 7]


def test_bad_inputs_say_what_to_fix():
    t = table_from_strings(["a", "b"])
    ids, ptr = np.array([0, 1], np.int32), np.array([0, 2])
    with pytest.raises(ValueError, match="unknown alignment mode 'dwt'; use one of faithful, band, offsets"):
        align(ids, ptr, ids, ptr, t, t, mode="dwt")
    with pytest.raises(ValueError, match=r"src_ptr must run from 0 to len\(src_ids\)=2"):
        align(ids, [0, 3], ids, ptr, t, t)
    with pytest.raises(ValueError, match="unit 0 has no piv target tokens; drop samples"):
        align(ids, [0, 1, 2], ids, [0, 0, 2], t, t)
    with pytest.raises(ValueError, match="src_ptr has 2 units but piv_ptr has 1; pair the same samples"):
        align(ids, [0, 1, 2], ids, ptr, t, t)
    with pytest.raises(ValueError, match="piv token id 5 is outside its tokenizer's 2 ids"):
        align(ids, ptr, np.array([0, 5], np.int32), ptr, t, t)
    with pytest.raises(ValueError, match=r"src_spans must have shape \(2, 2\)"):
        align(
            ids, ptr, ids, ptr, t, t, mode="offsets", src_spans=np.zeros((3, 2)), piv_spans=np.zeros((2, 2))
        )
    with pytest.raises(ValueError, match="band must be ≥ 0 pivot tokens, got -1"):
        align(ids, ptr, ids, ptr, t, t, mode="band", band=-1)
