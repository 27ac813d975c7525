"""Normalised token strings: marker tables read from the tokenizer, byte fallback, byte-level alphabet."""

from __future__ import annotations

import numpy as np
import pytest

from fusepipe.align import table_from_strings, token_table
from fusepipe.align.tokens import bytes_to_unicode, markers

from .conftest import FAMILIES, encode


def test_marker_tables_come_from_the_tokenizer_config(tokenizers):
    spm, byte_level, unigram = (markers(tokenizers[f]) for f in FAMILIES)
    assert spm.spaces == {"▁"} and spm.byte_fallback and not spm.byte_level
    assert byte_level.byte_level and not byte_level.spaces and not byte_level.byte_fallback
    assert unigram.spaces == {"▁"} and not unigram.byte_level and not unigram.byte_fallback


def test_replace_normalizer_marks_spaces_like_llama2s_tokenizer_json(tokenizers):
    """Llama-2's converted tokenizer has no Metaspace: a Replace(" " -> "▁") normalizer marks the words."""
    from tokenizers import Tokenizer, decoders, normalizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tokenizers["metaspace_bpe"].backend_tokenizer.to_str())
    backend.pre_tokenizer, backend.decoder = None, decoders.ByteFallback()
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    assert markers(PreTrainedTokenizerFast(tokenizer_object=backend)).spaces == {"▁"}


@pytest.mark.parametrize(
    "family,token,text",
    [
        ("metaspace_bpe", "▁the", " the"),
        ("metaspace_bpe", "<0x0A>", "\n"),
        ("metaspace_bpe", "</s>", "</s>"),
        ("bytelevel_bpe", "Ġthe", " the"),
        ("bytelevel_bpe", "Ċ", "\n"),
        ("bytelevel_bpe", "<|im_end|>", "<|im_end|>"),
        ("unigram", "▁the", " the"),
    ],
)
def test_token_strings(tokenizers, tables, family, token, text):
    table = tables[family]
    token_id = tokenizers[family].convert_tokens_to_ids(token)
    assert table.text(token_id) == text
    bare = table.bare[table.bare_ptr[token_id] : table.bare_ptr[token_id + 1]]
    assert bare.tobytes().decode("utf-32-le") == text.replace(" ", "")


@pytest.mark.parametrize("family", FAMILIES)
def test_token_strings_spell_the_text_back(tokenizers, tables, texts, family):
    """Byte-fallback and byte-level pieces of one char decode to stray bytes that rejoin into the char."""
    ids, _, ptr = encode(tokenizers[family], texts)
    strings = tables[family].texts()
    for u, text in enumerate(texts):
        joined = "".join(strings[i] for i in ids[ptr[u] : ptr[u + 1]])
        spelt = joined.encode("utf-8", "surrogateescape").decode("utf-8")
        expected = (
            text.replace("😀", "<unk>").replace("€", "<unk>").replace("→", "<unk>")
            if family == "unigram"
            else text
        )
        assert spelt.removeprefix(" ") == expected


def test_byte_fallback_and_byte_level_spell_a_char_alike(tokenizers, tables):
    """'€' as <0xE2><0x82><0xAC> (▁ BPE) and as byte-level chars give the same three stray-byte strings."""
    spelt = {}
    for family in ("metaspace_bpe", "bytelevel_bpe"):
        ids = tokenizers[family]("€", add_special_tokens=False)["input_ids"]
        spelt[family] = [tables[family].text(i) for i in ids if tables[family].text(i).strip()]
    assert spelt["metaspace_bpe"] == spelt["bytelevel_bpe"] == ["\udce2", "\udc82", "\udcac"]


def test_roles_include_the_end_of_turn_token_of_the_chat_template(tokenizers, tables):
    assert tables["bytelevel_bpe"].roles["eot"] == tokenizers["bytelevel_bpe"].convert_tokens_to_ids(
        "<|im_end|>"
    )
    assert tables["metaspace_bpe"].roles["eot"] == tables["metaspace_bpe"].roles["eos"]
    assert "bos" not in tables["bytelevel_bpe"].roles


def test_special_flags_and_padded_vocabulary(tokenizers):
    tok = tokenizers["unigram"]
    table = token_table(tok, vocab_size=len(tok) + 3)
    assert table.size == len(tok) + 3 and table.texts(len(tok)) == ["", "", ""]
    assert (
        table.special[tok.convert_tokens_to_ids("<|user|>")]
        and not table.special[tok.convert_tokens_to_ids("▁the")]
    )


def test_fingerprint_tells_tokenizers_apart(tokenizers, tables):
    assert token_table(tokenizers["unigram"]).fingerprint == tables["unigram"].fingerprint
    assert len({t.fingerprint for t in tables.values()}) == 3


def test_bytes_to_unicode_is_gpt2s_alphabet():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256 and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"


def test_table_from_strings_strips_spaces():
    table = table_from_strings([" the", "  ", "a b"])
    assert table.texts() == [" the", "  ", "a b"]
    assert np.diff(table.bare_ptr).tolist() == [3, 0, 2]
