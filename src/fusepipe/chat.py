"""Render a conversation with a model's own chat template and locate the assistant messages in it.

Targets are found by the character offsets of each assistant message inside the rendered string (through
the fast tokenizer's offset mapping), never by hard-coded token offsets. Tokens of the template that close
an assistant turn (eos, `<|im_end|>`, ...) are targets too, flagged as such, so a model learns to stop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from fusepipe.errors import DataError


@dataclass
class Rendered:
    text: str
    spans: list[tuple[int, int]]  # char span of each assistant message's content in `text`
    input_ids: np.ndarray  # int32 [T]
    offsets: np.ndarray  # int32 [T, 2] char span of each token
    target: np.ndarray  # bool [T]: assistant content tokens and the turn-closing special tokens
    turn_end: np.ndarray  # bool [T]: the turn-closing tokens among the targets


def render_text(tokenizer, messages: list[dict], name: str = "model") -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the char span of every assistant message's content.

    A message is searched from where the rendering of the conversation up to it stops agreeing with the full
    rendering, so text an assistant repeats from an earlier user turn is never matched there.
    """
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as err:  # noqa: BLE001 (jinja errors, missing template: any, reported as a DataError)
        raise DataError(f"{name}: cannot render the conversation with its chat template ({err})") from None
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if not m["content"].strip():
            raise DataError(
                f"{name}: assistant message {i} is empty, so it has no tokens to train on; the data stage drops "
                "empty turns and the vote never picks an empty response, so this conversation bypassed both"
            )
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        start_hint = max(cursor, len(os.path.commonprefix([text, prefix])))
        at = text.find(m["content"], start_hint)
        if at < 0:
            raise DataError(
                f"{name}: the chat template does not contain assistant message {i} verbatim, so its tokens "
                "cannot be located; set the model's `chat_template` in the config to one that keeps the text"
            )
        spans.append((at, at + len(m["content"])))
        cursor = at + len(m["content"])
    return text, spans


def render(tokenizer, messages: list[dict], name: str = "model") -> Rendered:
    text, spans = render_text(tokenizer, messages, name)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int32)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int32).reshape(-1, 2)
    target, turn_end = target_mask(offsets, spans, ids, set(tokenizer.all_special_ids))
    return Rendered(text, spans, ids, offsets, target, turn_end)


def target_mask(
    offsets: np.ndarray, spans: list[tuple[int, int]], ids: np.ndarray, special_ids: set[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Tokens overlapping an assistant span, plus the special token right after it that closes the turn."""
    n = len(ids)
    target = np.zeros(n, dtype=bool)
    turn_end = np.zeros(n, dtype=bool)
    for s, e in spans:
        inside = (offsets[:, 0] < e) & (offsets[:, 1] > s)
        if not inside.any():
            continue
        target |= inside
        j = int(np.nonzero(inside)[0][-1]) + 1
        if j < n and ids[j] in special_ids:
            target[j] = turn_end[j] = True
    return target, turn_end
