"""Tiny tokenizers of the three families (SentencePiece-style ▁ BPE with byte fallback, byte-level Ġ BPE, ▁
Unigram), trained once per session on a few hundred generated sentences, and helpers to encode texts into the
flat arrays the align package takes."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fusepipe.align import token_table
from fusepipe.toy.tokenizers import (
    CHATML_TEMPLATE,
    LLAMA_TEMPLATE,
    ZEPHYR_TEMPLATE,
    TokenizerSpec,
    build_tokenizer,
)

WORDS = (  # noqa: SIM905
    "the a of to and in is it that for on with as was he she they be at by this have from or one had word but "
    "not what all were we when your can said there use an each which do how their if will up other about out "
    "many then them these so some her would make like him into time has look two more write go see number no "
    "way could people my than first water been call who oil its now find long down day did get come made may "
    "part flowers flown below belongs café naïve über straße déjà façade"
).split()
# Never in the training corpus: the ▁-BPE family must spell them with byte-fallback tokens.
UNSEEN = "€→😀"

SPECS = {
    "metaspace_bpe": TokenizerSpec("metaspace_bpe", 700, LLAMA_TEMPLATE, "<s>", "</s>", "<pad>", "<unk>"),
    "bytelevel_bpe": TokenizerSpec(
        "bytelevel_bpe",
        700,
        CHATML_TEMPLATE,
        None,
        "<|endoftext|>",
        "<|endoftext|>",
        None,
        extra_special=("<|im_start|>", "<|im_end|>"),
        end_of_turn="<|im_end|>",
    ),
    "unigram": TokenizerSpec(
        "unigram",
        500,
        ZEPHYR_TEMPLATE,
        "<s>",
        "</s>",
        "<pad>",
        "<unk>",
        extra_special=("<|user|>", "<|assistant|>"),
    ),
}
FAMILIES = tuple(SPECS)


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), str(rng.randint(0, 99999)))
    text = " ".join(words).capitalize() + rng.choice([".", "!", "?", ",", ":"])
    if rng.random() < 0.15:
        text += "\n    " + rng.choice(WORDS) + " = " + str(rng.randint(0, 9))
    return text


def corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [sentence(rng) for _ in range(n)]


@pytest.fixture(scope="session")
def tokenizers():
    train = corpus(400, seed=0)
    return {name: build_tokenizer(spec, train) for name, spec in SPECS.items()}


@pytest.fixture(scope="session")
def tables(tokenizers):
    return {name: token_table(tok) for name, tok in tokenizers.items()}


@pytest.fixture(scope="session")
def texts():
    """Held-out texts, a few with chars the tokenizers never saw."""
    out = corpus(24, seed=1)
    return [t + (" " + UNSEEN[i % 3] if i % 4 == 0 else "") for i, t in enumerate(out)]


def encode(tok, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids int32 [N], spans int64 [N, 2], ptr int64 [U+1]) of `texts`, one unit per text."""
    ids, spans, ptr = [], [], [0]
    for text in texts:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids += enc["input_ids"]
        spans += enc["offset_mapping"]
        ptr.append(len(ids))
    return np.array(ids, np.int32), np.array(spans, np.int64).reshape(-1, 2), np.array(ptr, np.int64)
