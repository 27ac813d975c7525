"""`data` stage: ingest the mixture, normalise, clean, dedupe, sample, split long dialogues, train/eval split.

Writes `data/train.parquet` and `data/eval.parquet` (schema `fusepipe.schemas.CONVERSATION`) and
`data/_manifest.json` with what was read, dropped (by reason) and written: `sources` (per source, the counts
by reason), `first_rows` (per source and reason, the first row it counted, "file:line N"), `rows` (per split, and
`prompts_only`: the training rows without a reference, from `prompts_only` sources). A source that keeps
no conversation fails the stage with those counts and rows in one line.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa

from fusepipe.artifacts import Manifest, write_parquet
from fusepipe.data.clean import Drops, clean, is_prompt, sample_id, split_blocks
from fusepipe.data.ingest import detect_format, iter_rows, to_messages
from fusepipe.errors import DataError
from fusepipe.models import load_tokenizer
from fusepipe.progress import track
from fusepipe.schemas import CONVERSATION

log = logging.getLogger("fusepipe.data")


def _unit(*key: object) -> float:
    """Stable pseudo-random number in [0, 1) from a key."""
    digest = hashlib.sha256("\x1f".join(map(str, key)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def read_source(src: dict[str, Any], on_bad_row: str, counts: Drops) -> list[tuple[str, list[dict]]]:
    """Parse and clean one source: (row, conversation) pairs. Malformed rows raise (default) or are counted
    by reason (`on_bad_row: skip`)."""
    fmt, columns = src["format"], src.get("columns")
    rows = iter_rows(src["path"], src["loader"], src["split"], src.get("data_files"), src.get("encoding", "utf-8"))
    out = []
    for row in track(rows, f"reading {src['name']}", unit="rows"):
        counts["rows_read"] += 1
        try:
            if fmt == "auto" and not isinstance(row.record, DataError):
                fmt = detect_format(row.record, row.where)
            msgs = to_messages(row.record, fmt, row.where, columns)
        except DataError as err:
            if on_bad_row == "error":
                raise DataError(f"source {src['name']!r}: {err} (set data.on_bad_row: skip to skip and count such "
                                "rows)") from None
            counts.note(getattr(err, "reason", "bad_rows"), row.where)
            log.debug("skipped %s", err)
            continue
        cleaned = clean(msgs, src["filters"], counts, row.where, src.get("prompts_only", False))
        if cleaned is not None:
            out.append((row.where, cleaned))
    if counts["rows_read"] == 0:
        raise DataError(f"{src['path']}: source {src['name']!r} has no rows")
    return out


def run(params: dict[str, Any], out: str | Path) -> dict[str, Any]:
    cfg, pivot = params["data"], params["pivot"]
    out = Path(out)
    manifest = Manifest("data", params, inputs={s["name"]: s["path"] for s in cfg["sources"]})
    tokenizer = load_tokenizer(pivot)

    def n_tokens(msgs: list[dict]) -> int:
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    seen: set[str] = set()
    per_source: dict[str, Drops] = {}
    rows: list[dict[str, Any]] = []
    n_tok: list[int] = []
    for src in cfg["sources"]:
        counts = Drops()
        with manifest.phase(f"read:{src['name']}"):
            convs = read_source(src, cfg["on_bad_row"], counts)
        unique = []
        for where, conv in convs:
            sid = sample_id(conv)
            if cfg["dedupe"] and sid in seen:
                counts.note("duplicates", where)
                continue
            seen.add(sid)
            unique.append((sid, where, conv))
        if src["n_samples"] is not None and src["n_samples"] < len(unique):
            unique.sort(key=lambda t: _unit(cfg["seed"], src["name"], t[0]))
            counts["not_sampled"] += len(unique) - src["n_samples"]
            unique = unique[: src["n_samples"]]
        with manifest.phase(f"split:{src['name']}"):
            for parent, where, conv in track(unique, f"splitting {src['name']}", unit="convs"):
                if src.get("prompts_only"):  # no reference to hold out or split; training prompts only
                    length = n_tokens(conv)
                    if length > cfg["max_len"]:
                        counts.note("prompt_too_long", where)
                        continue
                    rows.append({"sample_id": parent, "messages": conv, "source": src["name"], "split": "train"})
                    n_tok.append(length)
                    continue
                split = "eval" if _unit(cfg["seed"], "split", parent) < cfg["eval_fraction"] else "train"
                for block in split_blocks(conv, n_tokens, cfg["max_len"], counts, where):
                    sid = sample_id(block)
                    if block is not conv and sid in seen:
                        counts.note("duplicates", where)
                        continue
                    seen.add(sid)
                    rows.append({"sample_id": sid, "messages": block, "source": src["name"], "split": split})
                    n_tok.append(n_tokens(block))
        counts["kept"] = sum(r["source"] == src["name"] for r in rows)
        per_source[src["name"]] = counts
        log.info("%s: %s", src["name"], counts.summary())

    empty = [f"source {name!r}: {counts.summary()}" for name, counts in per_source.items() if not counts["kept"]]
    if empty:
        raise DataError(f"no conversation survived cleaning in {len(empty)} source(s): {'; '.join(empty)}; fix those "
                        "rows, or the source's `format:` or `filters:`, or remove the source")
    outputs = {}
    for split in ("train", "eval"):
        part = [r for r in rows if r["split"] == split]
        path = out / f"{split}.parquet"
        write_parquet(pa.Table.from_pylist(part, schema=CONVERSATION), path, CONVERSATION)
        outputs[split] = path
        log.info("wrote %s (%d conversations)", path, len(part))
    manifest["sources"] = {name: dict(sorted(counts.items())) for name, counts in per_source.items()}
    manifest["first_rows"] = {name: dict(sorted(counts.first.items())) for name, counts in per_source.items()}
    manifest["rows"] = {s: sum(r["split"] == s for r in rows) for s in ("train", "eval")}
    manifest["rows"]["prompts_only"] = sum(is_prompt(r["messages"]) for r in rows)
    manifest["pivot_tokens"] = {"mean": round(sum(n_tok) / len(n_tok), 1), "max": max(n_tok), "total": sum(n_tok)}
    manifest.write(out, outputs)
    return manifest.data
