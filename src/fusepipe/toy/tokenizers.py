"""Three tokenizer families, trained on the toy corpus, each with its own chat template and special tokens:

- `metaspace_bpe`: SentencePiece-style BPE with `▁` word markers and `<0xNN>` byte fallback (Llama-2 style),
- `bytelevel_bpe`: GPT-2 / Qwen2-style byte-level BPE with `Ġ` markers,
- `unigram`:       SentencePiece-style Unigram with `▁` markers (Mistral / T5 style).

They are saved as ordinary Hugging Face tokenizers (`tokenizer.json` + `tokenizer_config.json` with a Jinja
`chat_template`) that transformers and vLLM load like any real model's.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

# Llama-2 style: [INST] markers are plain text, one eos per assistant turn.
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}<<SYS>> {{ m['content'] }} <</SYS>>\n"
    "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)
# ChatML (Qwen2): role markers are special tokens, turns end with <|im_end|>.
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Orca / "### User:" style (plain-text headers, bos at start, eos after each answer).
HASH_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}### System:\n{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}### User:\n{{ m['content'] }}\n\n"
    "{% else %}### Assistant:\n{{ m['content'] }}{{ eos_token }}\n\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)
# Zephyr style: <|role|> markers are special tokens, every turn ends with eos.
ZEPHYR_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass(frozen=True)
class TokenizerSpec:
    family: str  # metaspace_bpe | bytelevel_bpe | unigram
    vocab_size: int
    template: str
    bos: str | None
    eos: str
    pad: str
    unk: str | None
    extra_special: tuple[str, ...] = field(default_factory=tuple)
    end_of_turn: str | None = None  # generation stops here too (besides eos)


def _specials(spec: TokenizerSpec) -> list[str]:
    """unk, bos, eos, pad, then the extra specials; each once (Llama-style pad == unk must not leave a hole)."""
    return list(dict.fromkeys(t for t in (spec.unk, spec.bos, spec.eos, spec.pad, *spec.extra_special) if t))


def _metaspace_bpe(spec: TokenizerSpec, corpus: list[str]) -> Tokenizer:
    """Llama-2 style: specials, then 256 byte tokens <0x00>..<0xFF>, then BPE merges; byte fallback."""
    specials = _specials(spec)
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok = Tokenizer(models.BPE(unk_token=spec.unk, byte_fallback=True))
    tok.pre_tokenizer = pre
    alphabet = sorted({ch for line in corpus for ch in line} | {"▁"})
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size - 256, special_tokens=specials, initial_alphabet=alphabet,
        limit_alphabet=len(alphabet), show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    trained = tok.get_vocab()
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in _bpe_merges(tok)]
    vocab = {t: i for i, t in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t, _ in sorted(trained.items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    out = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=spec.unk, byte_fallback=True, fuse_unk=True))
    out.pre_tokenizer = pre
    out.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return out


def _bpe_merges(tok: Tokenizer) -> list:
    import json

    return json.loads(tok.to_str())["model"]["merges"]


def _bytelevel_bpe(spec: TokenizerSpec, corpus: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size, special_tokens=_specials(spec),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _unigram(spec: TokenizerSpec, corpus: list[str]) -> Tokenizer:
    """The trainer picks the pieces; their scores are then re-estimated deterministically (`_unigram_scores`).

    The `tokenizers` Unigram trainer returns the same pieces run to run, but scores that differ by up to ~1.6e-3
    and so a different id order (not a thread setting: likely hash-map order), which made the toy LM on this
    tokenizer differ between any two builds of the world."""
    specials = _specials(spec)
    normalizer = normalizers.NFKC()
    pre = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok = Tokenizer(models.Unigram())
    tok.normalizer, tok.pre_tokenizer = normalizer, pre
    trainer = trainers.UnigramTrainer(
        vocab_size=spec.vocab_size, special_tokens=specials, unk_token=spec.unk, show_progress=False,
        initial_alphabet=sorted({ch for line in corpus for ch in line}),
    )
    tok.train_from_iterator(corpus, trainer)
    pieces = sorted(p for p in tok.get_vocab() if p not in specials)
    words = Counter(w for line in corpus for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(line)))
    scores = _unigram_scores(pieces, words)
    vocab = [(t, 0.0) for t in specials] + sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    out = Tokenizer(models.Unigram(vocab, unk_id=specials.index(spec.unk) if spec.unk else None))
    out.normalizer, out.pre_tokenizer = normalizer, pre
    out.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    return out


def _unigram_scores(pieces: list[str], words: Counter[str], rounds: int = 3) -> dict[str, float]:
    """Unigram log-probabilities of `pieces` by hard EM over the word counts, in a fixed order (deterministic).

    Start: log of each piece's substring count in the corpus (SentencePiece's seed); then, `rounds` times,
    segment every word by Viterbi under the current scores and set log p(piece) = log((uses + 0.5) / total)."""
    longest = max(map(len, pieces))
    counts = dict.fromkeys(pieces, 0)
    for w, c in sorted(words.items()):
        for i in range(len(w)):
            for j in range(i + 1, min(len(w), i + longest) + 1):
                if w[i:j] in counts:
                    counts[w[i:j]] += c
    scores = _log_probs(counts)
    for _ in range(rounds):
        counts = dict.fromkeys(pieces, 0)
        for w, c in sorted(words.items()):
            for p in _viterbi(w, scores, longest):
                if p in counts:
                    counts[p] += c
        scores = _log_probs(counts)
    return scores


def _log_probs(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values()) + 0.5 * len(counts)
    return {p: math.log((c + 0.5) / total) for p, c in counts.items()}


_UNKNOWN = -1e9  # the score of a character no piece covers: its own segment, only when nothing else fits


def _viterbi(word: str, scores: dict[str, float], longest: int) -> list[str]:
    """The highest-scoring segmentation of `word` into pieces (an unknown character is a segment of its own)."""
    best = [0.0] + [-math.inf] * len(word)
    back = [0] * (len(word) + 1)
    for j in range(1, len(word) + 1):
        for i in range(max(0, j - longest), j):
            s = scores.get(word[i:j], _UNKNOWN if j - i == 1 else None)
            if s is not None and best[i] + s > best[j]:
                best[j], back[j] = best[i] + s, i
    out, j = [], len(word)
    while j > 0:
        out.append(word[back[j]:j])
        j = back[j]
    return out[::-1]


_BUILDERS = {"metaspace_bpe": _metaspace_bpe, "bytelevel_bpe": _bytelevel_bpe, "unigram": _unigram}


def build_tokenizer(spec: TokenizerSpec, corpus: list[str]) -> PreTrainedTokenizerFast:
    """Train a tokenizer of `spec.family` on `corpus` and wrap it for transformers (with chat template)."""
    raw = _BUILDERS[spec.family](spec, corpus)
    extra = [t for t in spec.extra_special if t not in (spec.bos, spec.eos, spec.pad, spec.unk)]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token=spec.bos, eos_token=spec.eos, pad_token=spec.pad, unk_token=spec.unk,
        additional_special_tokens=extra or None, chat_template=spec.template, clean_up_tokenization_spaces=False,
    )
    tok.model_max_length = 4096
    return tok


def stop_token_ids(tok: PreTrainedTokenizerFast, spec: TokenizerSpec) -> list[int]:
    ids = [tok.convert_tokens_to_ids(spec.eos)]
    if spec.end_of_turn and spec.end_of_turn != spec.eos:
        ids.append(tok.convert_tokens_to_ids(spec.end_of_turn))
    return ids
