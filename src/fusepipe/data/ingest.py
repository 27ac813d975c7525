"""Read conversation datasets in the formats people have and normalise them to `[{role, content}, ...]`.

Loaders: JSONL, JSON (an array, or an object holding one), Parquet, and `datasets.load_dataset` (local
folder or hub id). Formats:
- `messages` (OpenAI):  {"messages": [{"role": "user"|"assistant"|"system", "content": ...}]}
- `sharegpt`:           {"conversations": [{"from": "human"|"gpt"|"system", "value": ...}], "system"?: ...}
- `alpaca`:             {"instruction", "input"?, "output", "system"?}
- `orca`:               {"system_prompt"?, "question", "response"}, or Orca-Best's cluster rows
                        {"instruction" (the system prompt), "cluster"|"conversation": {"samples": [{"input", "output"}]}}
                        (the first sample of the cluster: the clusters group near-duplicate instructions)
- `columns`:            any table, read through the source's `columns:` mapping (`{prompt, response, system?,
                        input?}` for single-turn tables such as MetaMathQA `query`/`response`, or `{text}` for a
                        dialogue in one column: ChatML `<|im_start|>role ... <|im_end|>` or `### Human: ... ###
                        Assistant: ...`)
A row that cannot be read as a conversation raises `BadRow` (a `DataError`) naming the file, the row and the
problem; its `reason` is the key it is counted under when `data.on_bad_row: skip` drops it:
- `bad_encoding`:  a line that is not valid text in the source's `encoding:` (default utf-8), or a message with an
                   unpaired surrogate (a `\ud800` JSON escape: not Unicode)
- `control_char`:  a message holding a C0 control character other than tab, newline and carriage return (NUL,
                   ESC, form feed, ...): the sign of a corrupted or binary-contaminated record; never kept
- `bad_rows`:      everything else (not JSON, wrong types, missing fields, unknown roles, ...)
"""

from __future__ import annotations

import json
import re
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
ORCA_CLUSTER_KEYS = ("cluster", "conversation")  # Orca-Best: {"instruction", "cluster": {"samples": [...]}}


CONTROL_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")
"""C0 control characters except tab, newline and carriage return."""
BOM = "\ufeff"


class BadRow(DataError):
    """One unusable row; `reason` is its key in the drop counts under `data.on_bad_row: skip`."""

    def __init__(self, message: str, reason: str = "bad_rows"):
        super().__init__(message)
        self.reason = reason


@dataclass
class RawRow:
    where: str  # "file:line N" or "file:row N", for error messages
    record: Any


def iter_rows(
    path: str, loader: str, split: str, data_files: str | list[str] | None = None, encoding: str = "utf-8"
) -> Iterator[RawRow]:
    loader = resolve_loader(path, loader)
    if loader == "jsonl":
        yield from _jsonl(Path(path), encoding)
    elif loader == "json":
        yield from _json(Path(path), encoding)
    elif loader == "parquet":
        yield from _parquet(Path(path))
    else:
        yield from _hf(path, split, data_files, encoding)


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


def _jsonl(path: Path, encoding: str) -> Iterator[RawRow]:
    """One row per non-blank line; a line that is not valid `encoding` text or not JSON is a bad row."""
    for n, line in _lines(path, encoding):
        where = f"{path}:line {n}"
        if isinstance(line, BadRow):
            yield RawRow(where, line)
            continue
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            yield RawRow(where, BadRow(f"not valid JSON ({err.msg} at column {err.colno})"))
            continue
        except RecursionError:
            yield RawRow(where, BadRow("not valid JSON (nested too deeply)"))
            continue
        yield RawRow(where, rec)


def _lines(path: Path, encoding: str) -> Iterator[tuple[int, str | BadRow]]:
    """(line number, text) per line split at b"\n", decoded one by one so that one bad line is one bad row;
    encodings whose newline is not the byte 0x0a (utf-16, utf-32) decode the whole file first."""
    if "\n".encode(encoding) != b"\n":
        text = _decode(path.read_bytes(), path, encoding, "line")
        for n, line in enumerate(text.split("\n"), 1):
            yield n, line
        return
    offset = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as err:
                yield n, BadRow(_undecodable(encoding, raw[err.start : err.end], offset + err.start), "bad_encoding")
            else:
                yield n, line.removeprefix(BOM) if n == 1 else line
            offset += len(raw)


def _undecodable(encoding: str, bad: bytes, offset: int) -> str:
    return (f"not valid {encoding} text (byte {bad[:4].hex(' ')} at byte offset {offset} of the file); set "
            "`encoding:` for this source (e.g. encoding: latin-1, cp1252, utf-16)")


def _decode(raw: bytes, path: Path, encoding: str, unit: str) -> str:
    """The whole file as text; a DataError naming the line and byte offset where it is not `encoding`."""
    try:
        return raw.decode(encoding).removeprefix(BOM)
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:line {line}: {_undecodable(encoding, raw[err.start : err.end], err.start)}; the "
                        f"file is decoded whole, so data.on_bad_row: skip cannot skip one {unit}") from None


def _json(path: Path, encoding: str) -> Iterator[RawRow]:
    try:
        data = json.loads(_decode(path.read_bytes(), path, encoding, "row"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); fix the file") from None
    except RecursionError:
        raise DataError(f"{path}: not valid JSON (nested too deeply); fix the file") from None
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
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for rec in batch.to_pylist():
                yield RawRow(f"{path}:row {n}", rec)
                n += 1
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: cannot read Parquet at row {n} ({_first(err)}); fix or re-export the file") from None


def _hf(
    path: str, split: str, data_files: str | list[str] | None = None, encoding: str = "utf-8"
) -> Iterator[RawRow]:
    import datasets

    try:
        extra = {"data_files": data_files} if data_files else {}
        if encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
            extra["encoding"] = encoding  # the json/text builders' option
        ds = datasets.load_dataset(path, split=split, streaming=True, **extra)
    except Exception as err:  # noqa: BLE001 (hub errors, missing folders, unknown splits)
        raise DataError(f"{path}: cannot load with datasets.load_dataset (split {split!r}): {_first(err)}") from None
    rows = iter(ds)
    n = 0
    while True:
        try:
            rec = next(rows)
        except StopIteration:
            return
        except Exception as err:  # noqa: BLE001  (undecodable or malformed files surface while streaming)
            raise DataError(f"{path}: datasets failed reading row {n}: {_first(err)}; fix the file (or set "
                            "`encoding:` for this source)") from None
        yield RawRow(f"{path}:row {n}", rec)
        n += 1


def _first(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err).strip() else type(err).__name__


def detect_format(record: Any, where: str) -> str:
    if isinstance(record, dict):
        for fmt, keys in FORMAT_KEYS.items():
            if all(k in record for k in keys):
                return fmt
        if "instruction" in record and any(isinstance(record.get(k), dict) for k in ORCA_CLUSTER_KEYS):
            return "orca"
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise DataError(
        f"{where}: cannot tell the conversation format from keys {keys}; expected one of "
        "messages / conversations / instruction+output / question+response, or set `format:` (format: columns "
        "with a `columns:` mapping reads any table)"
    )


def to_messages(record: Any, fmt: str, where: str, columns: dict[str, str | None] | None = None) -> list[dict[str, str]]:
    """Normalise one record to a list of {role, content}. Raises DataError naming `where`.

    `columns` (format `columns`): the source's column mapping, {prompt, response, system, input} or {text}."""
    if isinstance(record, DataError):
        raise BadRow(f"{where}: {record}", getattr(record, "reason", "bad_rows"))
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object, got {type(record).__name__}")
    if fmt == "columns":
        return _check_turns(_columns(record, columns or {}, where), where)
    try:
        msgs = _PARSERS[fmt](record)
    except KeyError as err:
        raise DataError(f"{where}: missing field {err.args[0]!r} for format {fmt!r}") from None
    except (TypeError, AttributeError, IndexError):
        raise DataError(f"{where}: fields have the wrong type for format {fmt!r}") from None
    return _check_turns(msgs, where)


def _check_turns(msgs: list[tuple], where: str) -> list[dict[str, str]]:
    out = []
    for i, m in enumerate(msgs):
        role = ROLE_ALIASES.get(str(m[0]).lower()) if m[0] is not None else None
        if role is None:
            shown = repr(m[0]) if len(repr(m[0])) <= 40 else repr(m[0])[:39] + "…"
            raise DataError(f"{where}: turn {i} has unknown role {shown} (known: {', '.join(sorted(ROLE_ALIASES))})")
        if not isinstance(m[1], str):
            raise DataError(f"{where}: turn {i} content is {type(m[1]).__name__}, expected text")
        _check_text(m[1], where, i, role)
        out.append({"role": role, "content": m[1]})
    return out


def _check_text(text: str, where: str, i: int, role: str) -> None:
    """Control characters and unpaired surrogates are bad rows (`control_char`, `bad_encoding`), never kept."""
    bad = CONTROL_CHAR.search(text)
    if bad:
        raise BadRow(f"{where}: turn {i} ({role}) holds control character U+{ord(bad.group()):04X} at character "
                     f"{bad.start()}; remove it from the data", "control_char")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadRow(f"{where}: turn {i} ({role}) holds an unpaired surrogate U+{ord(text[err.start]):04X} at "
                     f"character {err.start} (a lone \\u{ord(text[err.start]):04x} escape is not Unicode); fix the "
                     "data", "bad_encoding") from None


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
    if r.get("input") and not isinstance(r["input"], str):
        raise TypeError
    prompt = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
    head = [("system", r["system"])] if r.get("system") else []
    return head + [("user", prompt), ("assistant", r["output"])]


def _orca(r: dict) -> list[tuple]:
    if "question" not in r and "instruction" in r:  # Orca-Best: one cluster of samples sharing a system prompt
        cluster = next((r[k] for k in ORCA_CLUSTER_KEYS if k in r), None)
        if cluster is None:
            raise KeyError("cluster")
        sample = cluster["samples"][0]
        head = [("system", r["instruction"])] if r.get("instruction") else []
        return head + [("user", sample["input"]), ("assistant", sample["output"])]
    head = [("system", r["system_prompt"])] if r.get("system_prompt") else []
    return head + [("user", r["question"]), ("assistant", r["response"])]


def _column(r: dict, columns: dict[str, str | None], key: str, where: str, required: bool = True) -> Any:
    name = columns.get(key)
    if name is None:
        return None
    if name not in r:
        if not required:
            return None
        raise DataError(f"{where}: missing column {name!r} (columns.{key}); the row has columns {sorted(r)}")
    value = r[name]
    if value is not None and not isinstance(value, str):
        raise DataError(f"{where}: column {name!r} (columns.{key}) is {type(value).__name__}, expected text")
    return value


def _columns(r: dict, columns: dict[str, str | None], where: str) -> list[tuple]:
    """A row through the source's column mapping: prompt/response (+ system, input) or one dialogue text."""
    if columns.get("text"):
        text = _column(r, columns, "text", where)
        return parse_dialogue_text(text or "", where)
    prompt = _column(r, columns, "prompt", where)
    response = _column(r, columns, "response", where)
    if prompt is None or response is None:
        which = "prompt" if prompt is None else "response"
        raise DataError(f"{where}: column {columns[which]!r} (columns.{which}) is null")
    extra = _column(r, columns, "input", where, required=False)
    system = _column(r, columns, "system", where, required=False)
    head = [("system", system)] if system else []
    return head + [("user", prompt + (f"\n\n{extra}" if extra else "")), ("assistant", response)]


_CHATML = re.compile(r"<\|im_start\|>\s*(\w+)\s*\n(.*?)(?:<\|im_end\|>|(?=<\|im_start\|>)|\Z)", re.DOTALL)
_HUMAN_ASSISTANT = re.compile(r"###\s*(Human|Assistant|User|System)\s*:", re.IGNORECASE)


def parse_dialogue_text(text: str, where: str) -> list[tuple]:
    """One column holding a whole dialogue -> turns. Layouts: ChatML (`<|im_start|>user\n...<|im_end|>`, as in
    oasst_top1_2023-08-25) or `### Human: ... ### Assistant: ...` (as in openassistant-guanaco)."""
    if "<|im_start|>" in text:
        turns = [(role, body.strip()) for role, body in _CHATML.findall(text)]
    else:
        parts = _HUMAN_ASSISTANT.split(text)
        turns = [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]
    if not turns:
        raise DataError(f"{where}: text column has no turns in a known layout (ChatML `<|im_start|>user` or "
                        "`### Human:` / `### Assistant:`)")
    return turns


_PARSERS = {"messages": _messages, "sharegpt": _sharegpt, "alpaca": _alpaca, "orca": _orca}
