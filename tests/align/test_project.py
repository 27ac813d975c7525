"""Projection of the source top-k onto pivot positions and vocabulary; coverage."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusepipe.align import (
    Links,
    MappingCounts,
    align,
    copy_through,
    count_links,
    coverage_counts,
    coverage_report,
    link_kinds,
    merge_counts,
    project,
    vocab_map,
)
from fusepipe.align.dtw import MANY_TO_ONE, ONE_TO_ONE, UNALIGNED
from fusepipe.align.project import chain

from .conftest import encode


def links_of(ranges, n_src):
    start = np.array([r[0] for r in ranges], np.int64)
    stop = np.array([r[1] for r in ranges], np.int64)
    return Links(start, stop, link_kinds(start, stop, n_src), np.zeros(1, np.int64))


def counts_of(entries, n_src, n_piv):
    keys = sorted(entries)
    return MappingCounts(
        np.array([k[0] for k in keys], np.int32),
        np.array([k[1] for k in keys], np.int32),
        np.array([entries[k] for k in keys], np.int64),
        n_src,
        n_piv,
    )


def test_one_to_one_sums_the_mass_of_ids_mapped_alike():
    links = links_of([(0, 1)], 1)
    ids, lp = np.array([[3, 4, 5]], np.int32), np.log(np.array([[0.5, 0.3, 0.1]], np.float32))
    vmap = np.array([0, 0, 0, 7, 7, -1], np.int32)
    out = project(links, np.array([9]), np.array([3]), ids, lp, vmap, n_to_one="last")
    assert out.ids.tolist() == [[7, -1, -1]] and out.valid.tolist() == [True]
    assert np.exp(out.logprobs[0, 0]) == pytest.approx(0.8) and np.isneginf(out.logprobs[0, 1:]).all()
    assert out.src_mass[0] == pytest.approx(0.9) and out.kind.tolist() == [ONE_TO_ONE]


def test_many_to_one_weighs_by_mapping_frequency_or_keeps_the_last():
    """Pivot 0 ← sources 0, 1 (M = 3 : 1); pivot 1 ← source 2; pivot 2 unaligned."""
    links = links_of([(0, 2), (2, 3), (3, 3)], 3)
    src_ids, piv_ids = np.array([10, 11, 12]), np.array([20, 21, 22])
    ids = np.array([[1, 2], [2, 3], [1, 3]], np.int32)
    lp = np.log(np.array([[0.6, 0.4], [0.5, 0.5], [0.9, 0.1]], np.float32))
    vmap = np.arange(30, dtype=np.int32)
    counts = counts_of({(10, 20): 3, (11, 20): 1}, 30, 30)
    weighted = project(links, piv_ids, src_ids, ids, lp, vmap, counts=counts, k=3)
    q = dict(zip(weighted.ids[0].tolist(), np.exp(weighted.logprobs[0]).tolist()))
    assert q == pytest.approx({1: 0.75 * 0.6, 2: 0.75 * 0.4 + 0.25 * 0.5, 3: 0.25 * 0.5})
    assert weighted.ids[0].tolist() == [1, 2, 3]  # most probable first
    last = project(links, piv_ids, src_ids, ids, lp, vmap, n_to_one="last", k=3)
    assert last.ids[0].tolist() == [2, 3, -1] and np.exp(last.logprobs[0, :2]) == pytest.approx([0.5, 0.5])
    for out in (weighted, last):
        assert out.kind.tolist() == [MANY_TO_ONE, ONE_TO_ONE, UNALIGNED]
        assert out.valid.tolist() == [True, True, False]
        assert out.ids[2].tolist() == [22, -1, -1] and out.logprobs[2, 0] == 0.0  # one-hot of the pivot token


def test_unseen_pairs_weigh_uniformly_and_unmapped_mass_is_lost():
    links = links_of([(0, 2)], 2)
    ids, lp = np.array([[1], [2]], np.int32), np.log(np.array([[0.8], [0.4]], np.float32))
    out = project(
        links,
        np.array([5]),
        np.array([0, 1]),
        ids,
        lp,
        np.array([0, 7, -1], np.int32),
        counts=counts_of({}, 3, 8),
    )
    assert out.ids[0].tolist() == [7] and np.exp(out.logprobs[0, 0]) == pytest.approx(0.4)
    assert out.src_mass[0] == pytest.approx(0.6) and out.valid[0]
    none = project(links, np.array([5]), np.array([0, 1]), ids, lp, np.full(3, -1, np.int32), n_to_one="last")
    assert not none.valid[0] and none.ids[0].tolist() == [5]


@st.composite
def projections(draw):
    n_src, k, v_src = draw(st.integers(1, 6)), draw(st.integers(1, 4)), draw(st.integers(1, 12))
    cuts = sorted(draw(st.lists(st.integers(0, n_src), min_size=1, max_size=6)))
    ranges = [(a, b) for a, b in zip(cuts, cuts[1:] + [n_src])]
    probs = np.array(
        draw(st.lists(st.lists(st.floats(0, 1), min_size=k, max_size=k), min_size=n_src, max_size=n_src))
    )
    probs = probs / np.maximum(probs.sum(1, keepdims=True), 1) * draw(st.floats(0.1, 1))
    ids = np.array(
        draw(
            st.lists(
                st.lists(st.integers(-1, v_src - 1), min_size=k, max_size=k), min_size=n_src, max_size=n_src
            )
        ),
        np.int32,
    )
    vmap = np.array(draw(st.lists(st.integers(-1, 4), min_size=v_src, max_size=v_src)), np.int32)
    return ranges, n_src, ids, probs, vmap


@settings(max_examples=150, deadline=None)
@given(projections(), st.sampled_from(["weighted", "last"]))
def test_projected_mass_is_at_most_one_and_keeps_the_mapped_mass(case, rule):
    ranges, n_src, ids, probs, vmap = case
    links = links_of(ranges, n_src)
    src_ids = np.arange(n_src)
    with np.errstate(divide="ignore"):
        lp = np.log(probs).astype(np.float32)
    counts = counts_of({(i, 0): i + 1 for i in range(n_src)}, n_src, 1)
    out = project(
        links,
        np.zeros(len(ranges), np.int64),
        src_ids,
        ids,
        lp,
        vmap,
        n_to_one=rule,
        counts=counts,
        k=ids.shape[1] * n_src,
    )
    kept = np.where(out.valid, np.exp(out.logprobs.astype(np.float64)).sum(1), 0)
    assert np.all(kept <= out.src_mass + 1e-5) and np.all(out.src_mass <= 1 + 1e-5)
    for j, (a, b) in enumerate(ranges):
        if b == a:
            continue
        w = np.arange(a, b) + 1.0 if rule == "weighted" else (np.arange(a, b) == b - 1).astype(float)
        w /= w.sum()
        real = ids[a:b] >= 0
        mapped = real & (vmap[np.where(real, ids[a:b], 0)] >= 0)
        assert kept[j] == pytest.approx((w[:, None] * probs[a:b] * mapped).sum(), abs=1e-5)
        assert out.valid[j] == mapped[w > 0].any()


def test_copy_through_for_the_same_tokenizer():
    ids = np.array([[4, 2]], np.int32)
    lp = np.log(np.array([[0.7, 0.2]], np.float32))
    out = copy_through(np.array([4]), np.array([4]), ids, lp)
    assert out.ids.tolist() == [[4, 2]] and out.valid.all() and out.kind.tolist() == [ONE_TO_ONE]
    assert out.src_mass[0] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="copy_through needs identical pivot and source token ids"):
        copy_through(np.array([4]), np.array([5]), ids, lp)


def test_same_tokenizer_alignment_agrees_with_copy_through(tokenizers, tables, texts):
    """Aligning a tokenization to itself gives each position its own distribution, ids through the EM map
    (which sends a duplicate string to its lowest id)."""
    ids, _, ptr = encode(tokenizers["unigram"], texts)
    t = tables["unigram"]
    rng = np.random.default_rng(0)
    topk = rng.integers(0, t.size, (len(ids), 4)).astype(np.int32)
    lp = np.log(rng.dirichlet(np.ones(4), len(ids)) * 0.9).astype(np.float32)
    links = align(ids, ptr, ids, ptr, t, t)
    vmap = vocab_map("em", t, t)
    aligned = project(links, ids, ids, topk, lp, vmap, counts=count_links(links, ids, ids, t.size, t.size))
    copied = copy_through(ids, ids, topk, lp)
    assert np.all(aligned.kind == ONE_TO_ONE) and aligned.valid.all()
    for j in range(len(ids)):
        expected: dict[int, float] = {}
        for i, p in zip(copied.ids[j].tolist(), np.exp(copied.logprobs[j]).tolist()):
            expected[int(vmap[i])] = expected.get(int(vmap[i]), 0.0) + p
        got = dict(zip(aligned.ids[j].tolist(), np.exp(aligned.logprobs[j]).tolist()))
        assert {i: p for i, p in got.items() if i >= 0} == pytest.approx(expected)


def test_coverage_report():
    links = links_of([(0, 1), (1, 3), (3, 4), (3, 4), (4, 4)], 4)
    ids = np.array([[1, 2], [1, -1], [2, 3], [3, 1]], np.int32)
    lp = np.log(np.array([[0.5, 0.5], [1.0, 1.0], [0.5, 0.25], [0.5, 0.5]], np.float32))
    vmap = np.array([0, 5, 6, -1], np.int32)
    out = project(links, np.arange(5), np.arange(4), ids, lp, vmap, n_to_one="last")
    part = coverage_counts(links, out, ids, lp, vmap)
    report = coverage_report(merge_counts([part, part]), vmap)
    assert report["positions"] == 10
    assert report["link_share"] == pytest.approx(
        {"unaligned": 0.2, "one_to_one": 0.2, "many_to_one": 0.2, "one_to_many": 0.4}
    )
    assert report["valid_share"] == pytest.approx(0.8)
    # kept: 1.0 (pivot 0) + 0.5 (pivot 1 ← source 2: id 3 unmapped) + 0.5 + 0.5 (pivots 2, 3 ← source 3)
    assert report["mass_kept"] == pytest.approx(2.5 / 3.75)
    assert report["topk_entries_mapped"] == pytest.approx(5 / 7)
    assert report["topk_mass_mapped"] == pytest.approx(3.0 / 3.75)
    assert report["vocab_mapped"] == 0.75


def test_bad_inputs_say_what_to_fix():
    links = links_of([(0, 1)], 1)
    ids, lp, vmap = np.array([[1]], np.int32), np.zeros((1, 1), np.float32), np.zeros(2, np.int32)
    with pytest.raises(ValueError, match="unknown n_to_one rule 'mean'; use one of weighted, last"):
        project(links, np.array([0]), np.array([0]), ids, lp, vmap, n_to_one="mean")
    with pytest.raises(ValueError, match="n_to_one='weighted' weighs by the mapping counts; pass counts="):
        project(links, np.array([0]), np.array([0]), ids, lp, vmap)
    with pytest.raises(
        ValueError, match=r"src_topk_ids \(1, 1\) and src_topk_logprobs \(1, 2\) must both be"
    ):
        project(links, np.array([0]), np.array([0]), ids, np.zeros((1, 2)), vmap, n_to_one="last")
    with pytest.raises(ValueError, match="links cover 1 pivot tokens but piv_ids has 2"):
        project(links, np.array([0, 1]), np.array([0]), ids, lp, vmap, n_to_one="last")
    with pytest.raises(ValueError, match="source top-k id 1 is outside the vocabulary map .1 ids."):
        project(links, np.array([0]), np.array([0]), ids, lp, vmap[:1], n_to_one="last")


def test_chain_gives_the_pivot_token_the_sources_probability_of_its_text():
    """Pivot `▁18` ← source `Ġ`,`1`,`8` (many-to-one): the paper's rule averages distributions that predict `Ġ`,
    `1` and `8`; the chain rule gives `▁18` the product p(Ġ)·p(1)·p(8) and the rest to the other mapped ids."""
    links = links_of([(0, 3)], 3)
    src_ids, piv_ids = np.array([5, 6, 7]), np.array([40])
    ids = np.array([[5, 9], [6, 8], [7, 8]], np.int32)  # each row: the source's own token first, then id 8 or 9
    lp = np.log(np.array([[0.9, 0.1], [0.8, 0.2], [0.5, 0.5]], np.float32))
    vmap = np.array([-1, -1, -1, -1, -1, 30, 31, 32, 33, 34], np.int32)
    paper = project(links, piv_ids, src_ids, ids, lp, vmap, n_to_one="last", k=3)
    assert 40 not in paper.ids[0].tolist()  # the paper's rule never names the pivot's own token here
    out = chain(paper, links, piv_ids, np.log([0.9, 0.8, 0.5]))
    probs = dict(zip(out.ids[0].tolist(), np.exp(out.logprobs[0].astype(np.float64)).tolist()))
    assert probs[40] == pytest.approx(0.36, abs=1e-6)
    rest = {v: p for v, p in zip(paper.ids[0].tolist(), np.exp(paper.logprobs[0].astype(np.float64))) if v >= 0}
    total = sum(rest.values())
    for v, p in rest.items():  # the paper's shape over the other ids, scaled to 1 − 0.36
        assert probs[v] == pytest.approx(0.64 * p / total, abs=1e-6)
    assert out.ids[0].tolist() == [40, 32, 33] and out.valid.tolist() == [True]  # most probable first, ties by id


def test_chain_counts_a_source_token_that_feeds_several_pivot_tokens_once():
    """Source `belongs` → pivot `belo`, `ngs` (one-to-many): p(belongs) goes to `belo`; `ngs` then has
    probability 1 (the source already committed to the text)."""
    links = links_of([(0, 1), (0, 1)], 1)
    ids, lp = np.array([[3, 4]], np.int32), np.log(np.array([[0.7, 0.3]], np.float32))
    vmap = np.array([-1, -1, -1, 10, 11], np.int32)
    piv_ids = np.array([20, 21])
    out = chain(project(links, piv_ids, np.array([3]), ids, lp, vmap, n_to_one="last"), links, piv_ids,
                np.log([0.7]))
    assert out.ids[0, 0] == 20 and np.exp(out.logprobs[0, 0]) == pytest.approx(0.7)
    assert out.ids[1].tolist()[0] == 21 and np.exp(out.logprobs[1, 0]) == pytest.approx(1.0)
    assert np.isneginf(out.logprobs[1, 1:]).all()


@settings(max_examples=150, deadline=None)
@given(projections(), st.integers(0, 4))
def test_chain_keeps_a_distribution_and_the_product_on_the_pivot_token(case, own):
    ranges, n_src, ids, probs, vmap = case
    links = links_of(ranges, n_src)
    with np.errstate(divide="ignore"):
        lp = np.log(probs).astype(np.float32)
    piv_ids = np.full(len(ranges), own, np.int64)
    token_lp = np.log(np.linspace(0.3, 0.95, n_src))
    paper = project(links, piv_ids, np.arange(n_src), ids, lp, vmap, n_to_one="last", k=ids.shape[1] * n_src)
    out = chain(paper, links, piv_ids, token_lp)
    p = np.exp(out.logprobs.astype(np.float64))
    assert np.all(p.sum(1) <= 1 + 1e-5)
    assert np.all(np.diff(np.where(out.ids >= 0, p, -1), axis=1) <= 1e-7)  # most probable first
    counted = -1
    for j, (a, b) in enumerate(ranges):
        if b == a:
            assert out.ids[j].tolist() == paper.ids[j].tolist()  # no link: untouched
            continue
        first = max(a, counted + 1)
        expected = float(np.exp(token_lp[first:b].sum()))
        counted = max(counted, b - 1)
        got = p[j][out.ids[j] == own]
        assert len(got) == 1 and got[0] == pytest.approx(expected, rel=1e-5)


def test_chain_says_what_to_pass():
    links = links_of([(0, 2)], 2)
    proj = project(links, np.array([1]), np.array([0, 1]), np.zeros((2, 1), np.int32), np.zeros((2, 1)),
                   np.array([0, 1], np.int32), n_to_one="last")
    with pytest.raises(ValueError, match="links reach source token 2 but only 1 source log-probs were given"):
        chain(proj, links, np.array([1]), np.zeros(1))
    with pytest.raises(ValueError, match="links cover 1 pivot tokens but piv_ids has 2"):
        chain(proj, links, np.array([1, 2]), np.zeros(2))
