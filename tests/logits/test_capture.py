"""Teacher forcing on the toy models: targets located by offsets for every template (multi-turn included),
over-long conversations, templates that drop the text, and vLLM vs transformers top-k agreement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from fusepipe.engines import open_engine
from fusepipe.errors import DataError
from fusepipe.logits.capture import prepare

MODELS = ("llama-pivot", "qwen-arith", "mistral-facts", "gpt2-strings")
DIALOGUE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 7 + 5?"},
    {"role": "assistant", "content": "We add 7 and 5. The answer is 12."},
    {"role": "user", "content": "Reverse the word lamp."},
    {"role": "assistant", "content": "The word lamp reversed is pmal."},
]


def spec_of(toy: Path, name: str, engine: str) -> dict:
    return {"name": name, "path": str(toy / "models" / name), "chat_template": None, "dtype": "float32",
            "max_model_len": 512, "engine": engine, "max_logprobs": 10}


@pytest.mark.parametrize("name", MODELS)
def test_targets_cover_exactly_the_assistant_text(toy, name):
    tok = AutoTokenizer.from_pretrained(toy / "models" / name)
    prep = prepare(tok, DIALOGUE, last_only=False, max_len=512, overlong="skip", name=name, key="d")
    for mi in (2, 4):
        text = DIALOGUE[mi]["content"]
        rows = (prep.message_index == mi) & ~prep.turn_end
        spans = prep.offsets[rows]
        assert spans[0, 0] == 0 and spans[-1, 1] == len(text)
        assert (spans[1:, 0] <= spans[:-1, 1]).all()  # contiguous cover, no gaps
        decoded = tok.decode(np.asarray(prep.ids)[prep.positions[rows]])
        assert decoded.strip() == text
        assert prep.turn_end[prep.message_index == mi].sum() == 1  # the end-of-turn token is a target, flagged
    assert prep.n_bytes == len(DIALOGUE[2]["content"].encode()) + len(DIALOGUE[4]["content"].encode())
    last = prepare(tok, DIALOGUE, last_only=True, max_len=512, overlong="skip", name=name, key="d")
    assert set(last.message_index) == {4}


def test_overlong_conversations_keep_whole_messages_or_are_skipped(toy):
    tok = AutoTokenizer.from_pretrained(toy / "models" / "llama-pivot")
    full = prepare(tok, DIALOGUE, last_only=False, max_len=512, overlong="skip", name="m", key="d")
    first_end = int(full.positions[full.message_index == 2][-1]) + 1
    cut = prepare(tok, DIALOGUE, last_only=False, max_len=first_end + 3, overlong="truncate", name="m", key="d")
    assert cut.truncated and set(cut.message_index) == {2} and len(cut.ids) == first_end
    assert prepare(tok, DIALOGUE, last_only=False, max_len=first_end + 3, overlong="skip", name="m", key="d") is None
    assert prepare(tok, DIALOGUE, last_only=False, max_len=5, overlong="truncate", name="m", key="d") is None


def test_a_template_that_drops_the_text_names_the_model(toy):
    tok = AutoTokenizer.from_pretrained(toy / "models" / "gpt2-strings")
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'][:3] }}\n{% endfor %}"
    with pytest.raises(DataError) as err:
        prepare(tok, DIALOGUE, last_only=False, max_len=512, overlong="skip", name="gpt2-strings", key="d")
    assert str(err.value) == (
        "gpt2-strings: the chat template does not contain assistant message 2 verbatim, so its tokens cannot be "
        "located; set the model's `chat_template` in the config to one that keeps the text")


@pytest.mark.parametrize("content", ["", " \n"])
def test_an_empty_assistant_message_is_named_as_empty(toy, content):
    tok = AutoTokenizer.from_pretrained(toy / "models" / "qwen-arith")
    conv = [*DIALOGUE[:3], {"role": "user", "content": "and now?"}, {"role": "assistant", "content": content}]
    with pytest.raises(DataError) as err:
        prepare(tok, conv, last_only=True, max_len=512, overlong="skip", name="qwen-arith", key="d")
    assert str(err.value) == (
        "qwen-arith: assistant message 4 is empty, so it has no tokens to train on; the data stage drops empty "
        "turns and the vote never picks an empty response, so this conversation bypassed both")


@pytest.mark.parametrize("name", MODELS)
def test_vllm_and_hf_agree_on_the_top_k(toy, name):
    """Same top-10 ids at every target token; log-probs within 1e-4 (fp32); HF's exact entropy >= vLLM's
    top-k + tail bucket (grouping the tail can only lower the entropy)."""
    import polars as pl

    convs = [r["messages"] for r in pl.read_parquet(toy.parent / "data" / "train.parquet").head(12).iter_rows(named=True)]
    convs.append(DIALOGUE)
    got = {}
    for engine in ("vllm", "hf"):
        with open_engine(spec_of(toy, name, engine), "topk") as eng:
            preps = [prepare(eng.renderer.tok, c, last_only=False, max_len=512, overlong="skip", name=name, key=str(i))
                     for i, c in enumerate(convs)]
            got[engine] = eng.topk([p.ids for p in preps], [p.positions for p in preps], 10)
    for v, h in zip(got["vllm"], got["hf"], strict=True):
        assert (v.ids == h.ids).all()
        assert np.abs(v.logprobs - h.logprobs).max() < 1e-4
        assert np.abs(v.token_logprob - h.token_logprob).max() < 1e-4
        assert (h.entropy >= v.entropy - 1e-4).all()
        assert v.entropy_kind == "topk_tail" and h.entropy_kind == "exact"
