"""Normalised token strings of a whole vocabulary, as flat code-point arrays (FuseChat §2.3, token alignment).

Token alignment compares tokens of different tokenizers by edit distance, so every token is first turned into
the text it stands for, read off the tokenizer's own configuration (no hard-coded table of tokenizer classes):

- word markers: a `Metaspace` pre-tokenizer/decoder's replacement char (`▁`), or a `Replace` normalizer
  (`" " → "▁"`) / decoder (`"▁" → " "`), is read back as a space;
- byte-level: a `ByteLevel` pre-tokenizer/decoder means every char is one byte of GPT-2's byte-to-unicode
  table (`Ġ` = space, `Ċ` = newline), read back as that byte;
- byte fallback (`model.byte_fallback` or a `ByteFallback` decoder): `<0x0A>` is the byte 0x0A;
- special tokens (`<s>`, `<|im_end|>`) stay as they are written.

The bytes are decoded as UTF-8 with `surrogateescape`, so a token holding part of a multi-byte char keeps one
code point per stray byte and equals the same part from another tokenizer. Two strings per token:
`full` (the text, markers read as spaces; used for exact match and vocabulary edit distance) and `bare`
(`full` without spaces: the reference's marker stripping, used for the DTW cost).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

ROLES = ("bos", "eos", "unk", "pad", "eot")
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@dataclass(frozen=True)
class TokenTable:
    """Normalised strings of every id in a vocabulary; token `i` is `full[full_ptr[i]:full_ptr[i+1]]`."""

    full: np.ndarray  # uint32 code points, all tokens concatenated
    full_ptr: np.ndarray  # int64 [V+1]
    bare: np.ndarray  # uint32 code points, spaces (word markers) removed
    bare_ptr: np.ndarray  # int64 [V+1]
    special: np.ndarray  # bool [V]
    roles: dict[str, int]  # bos / eos / unk / pad / eot (end of an assistant turn) -> id, where present
    fingerprint: str  # sha256 of id -> normalised string: equal fingerprints mean ids mean the same text

    @property
    def size(self) -> int:
        return len(self.full_ptr) - 1

    @cached_property
    def longest(self) -> int:
        """Most code points in one full token string (bare ones are no longer): sizes scratch rows."""
        return int(np.diff(self.full_ptr).max(initial=0))

    @cached_property
    def alphabet_size(self) -> int:
        """1 + the largest code point of the bare strings (sizes per-letter scratch arrays)."""
        return int(self.bare.max(initial=0)) + 1

    def text(self, token_id: int) -> str:
        """The full normalised string of one token."""
        return self.texts(token_id, token_id + 1)[0]

    def texts(self, first: int = 0, stop: int | None = None) -> list[str]:
        """The full normalised strings of ids first..stop-1 (all by default)."""
        ptr = self.full_ptr[first : (self.size if stop is None else stop) + 1] - self.full_ptr[first]
        text = self.full[self.full_ptr[first] : self.full_ptr[first] + ptr[-1]].astype("<u4").tobytes()
        text = text.decode("utf-32-le", "surrogatepass")
        return [text[a:b] for a, b in zip(ptr[:-1].tolist(), ptr[1:].tolist())]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet (the `ByteLevel` pre-tokenizer of `tokenizers`): byte -> printable char."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


@dataclass(frozen=True)
class Markers:
    """How a tokenizer writes text into token strings, read from its `tokenizer.json`."""

    spaces: frozenset[str]  # chars that stand for a space (▁)
    byte_level: bool  # every char is a byte of the GPT-2 alphabet (Ġ, Ċ, ...)
    byte_fallback: bool  # <0xNN> tokens are single bytes


def _components(node) -> Iterator[dict]:
    """Every typed component of a (possibly nested `Sequence`) normalizer / pre-tokenizer / decoder."""
    if isinstance(node, dict):
        if "type" in node:
            yield node
        for value in node.values():
            yield from _components(value)
    elif isinstance(node, list):
        for value in node:
            yield from _components(value)


def markers(tokenizer) -> Markers:
    """Read the word-marker table off a Hugging Face fast tokenizer's backend configuration."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spaces, byte_level, byte_fallback = set(), False, bool(spec["model"].get("byte_fallback"))
    for where in ("normalizer", "pre_tokenizer", "decoder"):
        for comp in _components(spec.get(where)):
            kind = comp["type"]
            if kind == "Metaspace":
                spaces.add(comp.get("replacement", comp.get("str_rep", "▁")))
            elif kind == "Replace":
                pattern, content = comp["pattern"].get("String"), comp["content"]
                if where == "normalizer" and pattern == " ":
                    spaces.add(content)
                elif where == "decoder" and content == " " and pattern:
                    spaces.add(pattern)
            elif kind == "ByteLevel":
                byte_level = True
            elif kind == "ByteFallback":
                byte_fallback = True
    return Markers(frozenset(spaces), byte_level, byte_fallback)


def token_bytes(token: str, m: Markers, byte_of: dict[str, int]) -> bytes:
    """The bytes one (non-special) token string stands for under the marker table `m`."""
    if m.byte_fallback and (hit := _BYTE_TOKEN.fullmatch(token)):
        return bytes([int(hit.group(1), 16)])
    if m.byte_level and all(ch in byte_of for ch in token):
        return bytes(byte_of[ch] for ch in token)
    for ch in m.spaces:
        token = token.replace(ch, " ")
    return token.encode("utf-8")


def end_of_turn_id(tokenizer) -> int | None:
    """The special token the chat template writes right after an assistant message (eos, <|im_end|>, ...)."""
    if tokenizer.chat_template is None:
        return None
    mark = "\x1fFUSEPIPE-END\x1f"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": mark}], tokenize=False
    )
    tail = text[text.index(mark) + len(mark) :] if mark in text else ""
    special = set(tokenizer.all_special_ids)
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    return next((int(i) for i in ids if i in special), None)


def _flat(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    ptr = np.zeros(len(strings) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in strings], out=ptr[1:])
    cps = np.frombuffer("".join(strings).encode("utf-32-le", "surrogatepass"), dtype="<u4")
    return cps.astype(np.uint32), ptr


def token_table(tokenizer, vocab_size: int | None = None) -> TokenTable:
    """Normalised strings of every id of `tokenizer` (a transformers fast tokenizer).

    `vocab_size` may exceed the tokenizer's (a model's padded embedding): ids without a token get empty
    strings.
    """
    vocab = tokenizer.get_vocab()
    size = max(max(vocab.values()) + 1, vocab_size or 0)
    raw = [""] * size
    for tok, i in vocab.items():
        raw[i] = tok
    special = np.zeros(size, dtype=bool)
    special_ids = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special} | set(
        tokenizer.all_special_ids
    )
    special[[i for i in special_ids if i < size]] = True
    m = markers(tokenizer)
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    full = [
        raw[i] if special[i] else token_bytes(raw[i], m, byte_of).decode("utf-8", "surrogateescape")
        for i in range(size)
    ]
    roles = {r: getattr(tokenizer, f"{r}_token_id") for r in ROLES[:4]}
    roles["eot"] = end_of_turn_id(tokenizer)
    return table_from_strings(full, special, {r: int(i) for r, i in roles.items() if i is not None})


def table_from_strings(
    full: list[str], special: np.ndarray | list[bool] | None = None, roles: dict[str, int] | None = None
) -> TokenTable:
    """A table from normalised strings (markers written as spaces); the fingerprint hashes id -> string."""
    full_cps, full_ptr = _flat(full)
    bare_cps, bare_ptr = _flat([s.replace(" ", "") for s in full])
    flags = np.asarray(special if special is not None else [False] * len(full), dtype=bool)
    fingerprint = hashlib.sha256("\x00".join(full).encode("utf-8", "surrogatepass")).hexdigest()
    return TokenTable(full_cps, full_ptr, bare_cps, bare_ptr, flags, dict(roles or {}), fingerprint)
