"""Vocabulary maps: MS (paper), ms_reference (public code), MinED, EM, special tokens."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusepipe.align import MappingCounts, align, count_links, table_from_strings, vocab_map
from fusepipe.align import reference as ref

from .conftest import FAMILIES, encode

SETTINGS = settings(max_examples=80, deadline=None)


def counts_of(entries: dict[tuple[int, int], int], n_src: int, n_piv: int) -> MappingCounts:
    keys = sorted(entries)
    return MappingCounts(
        np.array([k[0] for k in keys], np.int32),
        np.array([k[1] for k in keys], np.int32),
        np.array([entries[k] for k in keys], np.int64),
        n_src,
        n_piv,
    )


def figure5():
    """Sequences where source "flow"+"ers" always sits on pivot "flowers" (and "belo"+"ngs" on "belongs")."""
    src = table_from_strings([" the", " flow", "ers", " belo", "ngs", " bloom"])
    piv = table_from_strings([" the", " flowers", " flown", " below", " belongs", " bloom"])
    sids = np.array([0, 1, 2, 5] * 3 + [0, 3, 4, 5] * 2, np.int32)
    pids = np.array([0, 1, 5] * 3 + [0, 4, 5] * 2, np.int32)
    links = align(sids, np.arange(6) * 4, pids, np.arange(6) * 3, src, piv)
    return src, piv, count_links(links, sids, pids, src.size, piv.size)


def test_figure5_ms_follows_the_statistics_where_mined_and_em_go_astray():
    src, piv, counts = figure5()
    flow, belo = 1, 3
    ms, mined, em = (vocab_map(s, src, piv, counts) for s in ("ms", "mined", "em"))
    assert piv.text(ms[flow]) == " flowers" and piv.text(ms[belo]) == " belongs"
    assert piv.text(mined[flow]) == " flown" and piv.text(mined[belo]) == " below"
    assert em[flow] == em[belo] == -1 and em[0] == 0


def test_ms_ties_go_to_the_smaller_edit_distance_then_the_lower_id():
    src = table_from_strings([" ab", " xy"])
    piv = table_from_strings([" abcd", " abc", " zz", " zy"])
    counts = counts_of({(0, 0): 4, (0, 1): 4, (1, 2): 2, (1, 3): 2, (1, 0): 1}, 2, 4)
    assert vocab_map("ms", src, piv, counts).tolist() == [1, 3]
    tie = counts_of({(0, 2): 3, (0, 3): 3}, 2, 4)
    assert vocab_map("ms", table_from_strings([" zx", " q"]), piv, tie).tolist() == [2, -1]


def test_ms_reference_prefers_the_rarer_pair_where_the_paper_takes_the_frequent_one():
    src, piv = table_from_strings([" ab"]), table_from_strings([" abx", " aby"])
    counts = counts_of({(0, 0): 10, (0, 1): 1}, 1, 2)
    assert vocab_map("ms", src, piv, counts).tolist() == [0]
    assert vocab_map("ms_reference", src, piv, counts).tolist() == [1]


@st.composite
def random_counts(draw):
    token = st.text(alphabet="ab c", min_size=1, max_size=4)
    src_v, piv_v = (
        draw(st.lists(token, min_size=1, max_size=8)),
        draw(st.lists(token, min_size=1, max_size=8)),
    )
    pairs = st.tuples(st.integers(0, len(src_v) - 1), st.integers(0, len(piv_v) - 1))
    entries = draw(st.dictionaries(pairs, st.integers(1, 6), max_size=20))
    return src_v, piv_v, entries


@SETTINGS
@given(random_counts())
def test_ms_reference_equals_the_reference_mapping(case):
    src_v, piv_v, entries = case
    src, piv = table_from_strings(src_v), table_from_strings(piv_v, roles={"unk": len(piv_v) - 1})
    got = vocab_map("ms_reference", src, piv, counts_of(entries, len(src_v), len(piv_v)))
    expected = ref.ms_reference_map(src_v, piv_v, entries, fallback=len(piv_v) - 1)
    exact = {t: i for i, t in reversed(list(enumerate(piv_v)))}
    assert got.tolist() == [exact.get(t, e) for t, e in zip(src_v, expected)]


@SETTINGS
@given(random_counts())
def test_ms_takes_the_most_frequent_pivot_token(case):
    src_v, piv_v, entries = case
    got = vocab_map(
        "ms", table_from_strings(src_v), table_from_strings(piv_v), counts_of(entries, len(src_v), len(piv_v))
    )
    for s in range(len(src_v)):
        row = {p: c for (s_, p), c in entries.items() if s_ == s}
        if row:
            best = min(row, key=lambda p: (-row[p], ref.levenshtein(src_v[s], piv_v[p]), p))
            assert got[s] == best
        else:
            assert got[s] == (piv_v.index(src_v[s]) if src_v[s] in piv_v else -1)


@SETTINGS
@given(
    st.lists(st.text("abc é", min_size=0, max_size=5), min_size=1, max_size=10),
    st.lists(st.text("abc é", min_size=0, max_size=6), min_size=1, max_size=30),
)
def test_mined_equals_brute_force_over_non_special_tokens(src_v, piv_v):
    special = [i % 5 == 4 for i in range(len(piv_v))]
    got = vocab_map("mined", table_from_strings(src_v), table_from_strings(piv_v, special=special), None)
    for s, text in enumerate(src_v):
        cands = [(ref.levenshtein(text, t), p) for p, t in enumerate(piv_v) if t and not special[p]]
        assert got[s] == (min(cands)[1] if text and cands else -1)


def test_em_matches_special_tokens_only_to_special_tokens():
    src = table_from_strings([" the", "</s>", "<x>"], special=[False, True, False])
    piv = table_from_strings(["</s>", "<x>", " the", " the"], special=[False, True, False, False])
    assert vocab_map("em", src, piv).tolist() == [2, -1, -1]


@pytest.mark.parametrize("strategy", ["em", "mined"])
def test_special_roles_map_to_their_counterparts(tables, strategy):
    src, piv = tables["metaspace_bpe"], tables["bytelevel_bpe"]
    vmap = vocab_map(strategy, src, piv)
    assert vmap[src.roles["eos"]] == piv.roles["eot"]  # Llama-2's </s> closes a turn like ChatML's <|im_end|>
    assert vmap[src.roles["pad"]] == piv.roles["pad"]
    assert vmap[src.roles["bos"]] == -1  # the byte-level tokenizer has no bos


@pytest.mark.parametrize("src,piv", [(a, b) for a in FAMILIES for b in FAMILIES if a != b])
def test_all_strategies_cover_the_families(tokenizers, tables, texts, src, piv):
    sids, _, sptr = encode(tokenizers[src], texts)
    pids, _, pptr = encode(tokenizers[piv], texts)
    counts = count_links(
        align(sids, sptr, pids, pptr, tables[src], tables[piv]),
        sids,
        pids,
        tables[src].size,
        tables[piv].size,
    )
    seen = np.unique(sids)
    maps = {s: vocab_map(s, tables[src], tables[piv], counts) for s in ("ms", "ms_reference", "mined", "em")}
    assert np.all(maps["ms"][seen] >= 0) and np.all(maps["ms_reference"] >= 0)
    assert np.mean(maps["mined"] >= 0) > 0.95 and np.mean(maps["em"] >= 0) < np.mean(maps["mined"] >= 0)


def test_bad_inputs_say_what_to_fix():
    t = table_from_strings(["a"])
    with pytest.raises(
        ValueError, match="unknown vocabulary strategy 'minED'; use one of ms, ms_reference, mined, em"
    ):
        vocab_map("minED", t, t)
    with pytest.raises(
        ValueError, match=r"strategy 'ms' needs the mapping counts; pass counts=reduce_counts"
    ):
        vocab_map("ms", t, t)
    with pytest.raises(ValueError, match="mapping counts are 2×1 but the vocabularies are 1×1"):
        vocab_map("ms_reference", t, t, counts_of({}, 2, 1))
