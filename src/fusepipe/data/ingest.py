"""Read conversation datasets in the formats people have and normalise them to `[{role, content}, ...]`.

Loaders: JSONL, JSON (an array, or an object holding one), Parquet, and `datasets.load_dataset` (local
folder or hub id). Formats:
- `messages` (OpenAI):  {"messages": [{"role": "user"|"assistant"|"system", "content": ...}]}
- `sharegpt`:           {"conversations": [{"from": "human"|"gpt"|"system", "value": ...}], "system"?: ...}
- `alpaca`:             {"instruction", "input"?, "output", "system"?}
- `orca`:               {"system_prompt"?, "question", "response"}
A row that cannot be read as a conversation raises `DataError` naming the file, the row and the problem.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusepipe.errors import DataError

ROLE_ALIASES = {
    "user": "user", "human": "user", "prompter": "user",
    "assistant": "assistant", "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "bing": "assistant", "model": "assistant", "bot": "assistant",
    "system": "system",
}
FORMAT_KEYS = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "orca": ("question", "response"),
}


@dataclass
class RawRow:
    where: str  # "file:line N" or "file:row N", for error messages
    record: Any


def iter_rows(path: str, loader: str, split: str) -> Iterator[RawRow]:
    loader = resolve_loader(path, loader)
    if loader == "jsonl":
        yield from _jsonl(Path(path))
    elif loader == "json":
        yield from _json(Path(path))
    elif loader == "parquet":
        yield from _parquet(Path(path))
    else:
        yield from _hf(path, split)


def resolve_loader(path: str, loader: str) -> str:
    if loader != "auto":
        return loader
    suffix = Path(path).suffix.lower()
    if Path(path).is_file():
        known = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}
        if suffix not in known:
            raise DataError(f"{path}: cannot tell the file type from {suffix!r}; set `loader:` in the config")
        return known[suffix]
    if suffix in (".jsonl", ".json", ".parquet"):
        raise DataError(f"{path}: file not found; fix `path:` in the data sources of the config")
    return "hf"


def _jsonl(path: Path) -> Iterator[RawRow]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                yield RawRow(f"{path}:line {n}", DataError(f"not valid JSON ({err.msg} at column {err.colno})"))
                continue
            yield RawRow(f"{path}:line {n}", rec)


def _json(path: Path) -> Iterator[RawRow]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); fix the file") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON array of rows (or an object holding exactly one array)")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
    for n, rec in enumerate(data):
        yield RawRow(f"{path}:row {n}", rec)


def _parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for rec in batch.to_pylist():
            yield RawRow(f"{path}:row {n}", rec)
            n += 1


def _hf(path: str, split: str) -> Iterator[RawRow]:
    import datasets

    try:
        ds = datasets.load_dataset(path, split=split, streaming=True)
    except Exception as err:  # hub errors, missing folders, unknown splits
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path}: cannot load with datasets.load_dataset (split {split!r}): {msg}") from None
    for n, rec in enumerate(ds):
        yield RawRow(f"{path}:row {n}", rec)


def detect_format(record: Any, where: str) -> str:
    if isinstance(record, dict):
        for fmt, keys in FORMAT_KEYS.items():
            if all(k in record for k in keys):
                return fmt
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise DataError(
        f"{where}: cannot tell the conversation format from keys {keys}; expected one of "
        "messages / conversations / instruction+output / question+response, or set `format:`"
    )


def to_messages(record: Any, fmt: str, where: str) -> list[dict[str, str]]:
    """Normalise one record to a list of {role, content}. Raises DataError naming `where`."""
    if isinstance(record, DataError):
        raise DataError(f"{where}: {record}")
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object, got {type(record).__name__}")
    try:
        msgs = _PARSERS[fmt](record)
    except KeyError as err:
        raise DataError(f"{where}: missing field {err.args[0]!r} for format {fmt!r}") from None
    except (TypeError, AttributeError):
        raise DataError(f"{where}: fields have the wrong type for format {fmt!r}") from None
    out = []
    for i, m in enumerate(msgs):
        role = ROLE_ALIASES.get(str(m[0]).lower()) if m[0] is not None else None
        if role is None:
            raise DataError(f"{where}: turn {i} has unknown role {m[0]!r} (known: {', '.join(sorted(ROLE_ALIASES))})")
        if not isinstance(m[1], str):
            raise DataError(f"{where}: turn {i} content is {type(m[1]).__name__}, expected text")
        out.append({"role": role, "content": m[1]})
    return out


def _messages(r: dict) -> list[tuple]:
    msgs = r["messages"]
    if not isinstance(msgs, list):
        raise TypeError
    return [(m["role"], m["content"]) for m in msgs]


def _sharegpt(r: dict) -> list[tuple]:
    turns = r["conversations"]
    if not isinstance(turns, list):
        raise TypeError
    head = [("system", r["system"])] if r.get("system") else []
    return head + [(t["from"], t["value"]) for t in turns]


def _alpaca(r: dict) -> list[tuple]:
    prompt = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
    head = [("system", r["system"])] if r.get("system") else []
    return head + [("user", prompt), ("assistant", r["output"])]


def _orca(r: dict) -> list[tuple]:
    head = [("system", r["system_prompt"])] if r.get("system_prompt") else []
    return head + [("user", r["question"]), ("assistant", r["response"])]


_PARSERS = {"messages": _messages, "sharegpt": _sharegpt, "alpaca": _alpaca, "orca": _orca}
