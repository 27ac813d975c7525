"""Clean normalised conversations and split long dialogues into blocks that fit the pivot's context.

Counts live in a `Drops` (a Counter that also remembers the first row each reason counted, for the manifest and
for the error when a source keeps nothing). Reading drops bad rows (`fusepipe.data.ingest`: `bad_rows`,
`bad_encoding`, `control_char`) under `data.on_bad_row: skip`. Cleaning (each drop counted by reason):
- `empty_turn`:          a turn whose content is only whitespace
- `misplaced_system`:    a system message anywhere but first
- `starts_with_assistant`, `non_alternating`: the turns after the system message must go user, assistant, ...
- a trailing user turn is trimmed (`trailing_user_trimmed`, not a drop); none left → `no_assistant_turn`
- `too_few_turns` / `too_many_turns` / `short_response`: the source's filters

A `prompts_only` source (a prompt set without reference answers) keeps each conversation up to and including its
last user turn (`answer_dropped` counts rows that had an answer after it, not a drop; none → `no_user_turn`); its
filters do not apply, and a prompt longer than `max_len` is dropped (`prompt_too_long`), never split.

Splitting (FuseChat splits at 2048 tokens): a dialogue whose rendering is longer than `max_len` pivot tokens
becomes consecutive blocks of whole (user, assistant) exchanges, each repeating the system message; an
exchange longer than `max_len` on its own is dropped (`exchange_too_long`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

INFO = ("rows_read", "kept", "trailing_user_trimmed", "answer_dropped", "split_dialogues", "blocks_from_splits")
"""Count keys that drop nothing; every other key of a source's counts is a reason rows (or exchanges) were dropped."""


class Drops(Counter):
    """Counts by reason, and `first[reason]`: the first row ("file:line N") that reason counted."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.first: dict[str, str] = {}

    def note(self, reason: str, where: str | None) -> None:
        self[reason] += 1
        if where is not None:
            self.first.setdefault(reason, where)

    def dropped(self) -> dict[str, int]:
        """The drop reasons with their counts (INFO keys left out), sorted by reason."""
        return {r: n for r, n in sorted(self.items()) if r not in INFO and n}

    def summary(self) -> str:
        """One line: rows read, kept, and each drop reason's count with its first row."""
        drops = [f"{r} {n}" + (f" (first: {self.first[r]})" if r in self.first else "")
                 for r, n in self.dropped().items()]
        return (f"read {self['rows_read']} rows, kept {self['kept']} conversations; dropped: "
                + (", ".join(drops) or "nothing"))


def sample_id(messages: list[dict]) -> str:
    """Stable id: sha256 of the canonical JSON of the normalised messages (first 16 hex digits)."""
    canon = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def clean(messages: list[dict], filters: dict, counts: Drops, where: str | None = None,
          prompts_only: bool = False) -> list[dict] | None:
    """The cleaned conversation, or None with the reason counted in `counts` (`where`: the row, remembered as
    the reason's first row). `prompts_only`: the conversation up to its last user turn (a prompt, no reference)."""
    reason, conv = _clean(messages, filters, prompts_only)
    if reason is not None:
        counts.note(reason, where)
    if conv is not None and len(conv) < len(messages):
        counts.note("answer_dropped" if prompts_only else "trailing_user_trimmed", where)
    return conv


def is_prompt(messages: list[dict]) -> bool:
    """A conversation without a reference answer (from a `prompts_only` source): it ends with a user turn."""
    return bool(messages) and messages[-1]["role"] == "user"


def _clean(messages: list[dict], filters: dict, prompts_only: bool = False) -> tuple[str | None, list[dict] | None]:
    """(drop reason, None) or (None, the cleaned conversation)."""
    msgs = [{"role": m["role"], "content": m["content"].strip()} for m in messages]
    if any(not m["content"] for m in msgs):
        return "empty_turn", None
    system, turns = (msgs[:1], msgs[1:]) if msgs and msgs[0]["role"] == "system" else ([], msgs)
    if any(m["role"] == "system" for m in turns):
        return "misplaced_system", None
    if turns and turns[0]["role"] != "user":
        return "starts_with_assistant", None
    if any(m["role"] != ("user" if i % 2 == 0 else "assistant") for i, m in enumerate(turns)):
        return "non_alternating", None
    if prompts_only:
        last_user = max((i for i, m in enumerate(turns) if m["role"] == "user"), default=None)
        return ("no_user_turn", None) if last_user is None else (None, system + turns[: last_user + 1])
    if turns and turns[-1]["role"] == "user":
        turns = turns[:-1]  # counted as trailing_user_trimmed if the conversation is kept
    n_answers = len(turns) // 2
    if n_answers == 0:
        return "no_assistant_turn", None
    if n_answers < filters["min_turns"]:
        return "too_few_turns", None
    if filters["max_turns"] is not None and n_answers > filters["max_turns"]:
        return "too_many_turns", None
    if len(turns[-1]["content"]) < filters["min_response_chars"]:
        return "short_response", None
    return None, system + turns


def split_blocks(
    messages: list[dict], n_tokens, max_len: int, counts: Drops, where: str | None = None
) -> list[list[dict]]:
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
            counts.note("exchange_too_long", where)
            current = []
        else:
            current = list(ex)
    if current:
        blocks.append(system + current)
    counts["split_dialogues"] += 1
    counts["blocks_from_splits"] += len(blocks)
    return blocks
