"""Clean normalised conversations and split long dialogues into blocks that fit the pivot's context.

Cleaning (each drop counted by reason in the manifest):
- `empty_turn`:          a turn whose content is only whitespace
- `misplaced_system`:    a system message anywhere but first
- `starts_with_assistant`, `non_alternating`: the turns after the system message must go user, assistant, ...
- a trailing user turn is trimmed (`trailing_user_trimmed`, not a drop); none left → `no_assistant_turn`
- `too_few_turns` / `too_many_turns` / `short_response`: the source's filters

Splitting (FuseChat splits at 2048 tokens): a dialogue whose rendering is longer than `max_len` pivot tokens
becomes consecutive blocks of whole (user, assistant) exchanges, each repeating the system message; an
exchange longer than `max_len` on its own is dropped (`exchange_too_long`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter


def sample_id(messages: list[dict]) -> str:
    """Stable id: sha256 of the canonical JSON of the normalised messages (first 16 hex digits)."""
    canon = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def clean(messages: list[dict], filters: dict, counts: Counter) -> list[dict] | None:
    """The cleaned conversation, or None with the reason counted in `counts`."""
    msgs = [{"role": m["role"], "content": m["content"].strip()} for m in messages]
    if any(not m["content"] for m in msgs):
        counts["empty_turn"] += 1
        return None
    system, turns = (msgs[:1], msgs[1:]) if msgs and msgs[0]["role"] == "system" else ([], msgs)
    if any(m["role"] == "system" for m in turns):
        counts["misplaced_system"] += 1
        return None
    if turns and turns[0]["role"] != "user":
        counts["starts_with_assistant"] += 1
        return None
    if any(m["role"] != ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(turns)):
        counts["non_alternating"] += 1
        return None
    if turns and turns[-1]["role"] == "user":
        turns = turns[:-1]
        counts["trailing_user_trimmed"] += 1
    n_answers = len(turns) // 2
    if n_answers == 0:
        counts["no_assistant_turn"] += 1
        return None
    if n_answers < filters["min_turns"]:
        counts["too_few_turns"] += 1
        return None
    if filters["max_turns"] is not None and n_answers > filters["max_turns"]:
        counts["too_many_turns"] += 1
        return None
    if len(turns[-1]["content"]) < filters["min_response_chars"]:
        counts["short_response"] += 1
        return None
    return system + turns


def split_blocks(messages: list[dict], n_tokens, max_len: int, counts: Counter) -> list[list[dict]]:
    """Greedy blocks of whole exchanges with at most `max_len` tokens each, as counted by `n_tokens(msgs)`."""
    if n_tokens(messages) <= max_len:
        return [messages]
    system = messages[:1] if messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    exchanges = [turns[i : i + 2] for i in range(0, len(turns), 2)]
    blocks: list[list[dict]] = []
    current: list[dict] = []
    for ex in exchanges:
        if current and n_tokens(system + current + ex) <= max_len:
            current += ex
            continue
        if current:
            blocks.append(system + current)
        if n_tokens(system + ex) > max_len:
            counts["exchange_too_long"] += 1
            current = []
        else:
            current = list(ex)
    if current:
        blocks.append(system + current)
    counts["split_dialogues"] += 1
    counts["blocks_from_splits"] += len(blocks)
    return blocks
