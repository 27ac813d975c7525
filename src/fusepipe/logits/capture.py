"""Teacher forcing: which tokens of a rendered conversation are targets, and the model's top-k at each of them.

A conversation is rendered with the model's own chat template (`fusepipe.chat.render`); its targets are the tokens
of the assistant messages (mode `gt`: all of them; mode `inf`: the last one, the voted response), located by the
character offsets of each message inside the rendered text, plus the template token that closes each of those
turns (flagged `turn_end`, so a loss can learn to stop). The distribution that predicts the target token at
position i is the model's output at position i - 1 (log-softmax over the full vocabulary, temperature 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusepipe.chat import render
from fusepipe.errors import DataError


@dataclass
class Prepared:
    """One conversation, tokenized, with its target positions."""

    ids: list[int]  # the whole rendered conversation (possibly cut after the last whole target message)
    positions: np.ndarray  # int64 [T]: indices into `ids` of the target tokens (all >= 1)
    offsets: np.ndarray  # int32 [T, 2]: char span of each target token inside its message's text
    message_index: np.ndarray  # int32 [T]: which message of the conversation each target token belongs to
    turn_end: np.ndarray  # bool [T]
    n_bytes: int  # UTF-8 bytes of the target messages' text
    truncated: bool = False


def prepare(tokenizer, messages: list[dict[str, str]], *, last_only: bool, max_len: int, overlong: str,
            name: str, key: str) -> Prepared | None:
    """Tokenize `messages` with the model's template and locate its targets; None when it is skipped as too long.

    overlong: "skip" drops a conversation longer than `max_len` tokens; "truncate" keeps the longest prefix that
    ends after a whole target message (its turn-end token included) and drops the rest, never a part of a message.
    """
    r = render(tokenizer, messages, name)
    assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    keep = assistant[-1:] if last_only else assistant
    spans = dict(zip(assistant, r.spans, strict=True))
    pos_list, off_list, msg_list, end_list = [], [], [], []
    for mi in keep:
        s, e = spans[mi]
        inside = np.nonzero(r.target & (r.offsets[:, 0] < max(e, s + 1)) & (r.offsets[:, 1] > s) & ~r.turn_end)[0]
        if len(inside) == 0:
            raise DataError(f"{name}: sample {key}: assistant message {mi} has no tokens after rendering")
        after = inside[-1] + 1
        idx = list(inside) + ([after] if after < len(r.input_ids) and r.turn_end[after] else [])
        for i in idx:
            a, b = r.offsets[i]
            pos_list.append(i)
            off_list.append((min(max(a - s, 0), e - s), min(max(b - s, 0), e - s)))
            msg_list.append(mi)
            end_list.append(bool(r.turn_end[i]))
    positions = np.asarray(pos_list, dtype=np.int64)
    if positions[0] < 1:
        raise DataError(f"{name}: sample {key}: a target token is the first token of the rendered conversation, "
                        "so nothing predicts it; the chat template must write something before the first message")
    ids = r.input_ids.tolist()
    truncated = False
    if len(ids) > max_len:
        if overlong == "skip":
            return None
        fits = positions < max_len
        # whole messages only: drop every message that does not fit completely
        msg = np.asarray(msg_list)
        whole = np.array([fits[msg == m].all() for m in msg])
        if not whole.any():
            return None
        positions, ids, truncated = positions[whole], ids[: int(positions[whole][-1]) + 1], True
        off_list = [o for o, w in zip(off_list, whole) if w]
        msg_list = [m for m, w in zip(msg_list, whole) if w]
        end_list = [t for t, w in zip(end_list, whole) if w]
    kept = sorted(set(msg_list))
    return Prepared(
        ids=ids,
        positions=positions,
        offsets=np.asarray(off_list, dtype=np.int32).reshape(-1, 2),
        message_index=np.asarray(msg_list, dtype=np.int32),
        turn_end=np.asarray(end_list, dtype=bool),
        n_bytes=sum(len(messages[m]["content"].encode()) for m in kept),
        truncated=truncated,
    )
