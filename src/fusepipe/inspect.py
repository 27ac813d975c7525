"""`fusepipe inspect PATH`: schema, row count, manifest and first rows of any artifact, built on polars."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from fusepipe.artifacts import MANIFEST, read_manifest
from fusepipe.errors import ArtifactError
from fusepipe.schemas import schema_name

console = Console()


def _short(value, width: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = text.replace("\n", "⏎")
    return text if len(text) <= width else text[: width - 1] + "…"


def _messages_table(messages: list[dict]) -> Table:
    table = Table(show_header=True, header_style="bold", expand=False)
    table.add_column("role")
    table.add_column("content", overflow="fold")
    for m in messages:
        table.add_row(m["role"], m["content"])
    return table


def inspect_parquet(path: Path, sample_id: str | None, n_rows: int) -> None:
    meta = pq.read_metadata(path)
    console.print(f"[bold]{path}[/]  rows: {meta.num_rows}  row groups: {meta.num_row_groups}  "
                  f"size: {path.stat().st_size:,} B")
    console.print("[bold]schema[/]")
    console.print(str(pq.read_schema(path).remove_metadata()))
    lf = pl.scan_parquet(path)
    if sample_id is not None:
        df = lf.filter(pl.col("sample_id") == sample_id).collect()
        if df.is_empty():
            raise ArtifactError(f"{path}: no row with sample_id {sample_id!r}")
    else:
        df = lf.head(n_rows).collect()
    for row in df.iter_rows(named=True):
        console.rule(f"sample_id {row.get('sample_id', '?')}")
        for key, value in row.items():
            if key == "messages":
                console.print(_messages_table(value))
            elif key != "sample_id":
                console.print(f"[bold]{key}[/]: {_short(value)}")


def inspect_path(path: str | Path, sample_id: str | None = None, n_rows: int = 5) -> None:
    path = Path(path)
    if path.is_dir():
        parquet = sorted(path.glob("*.parquet"))
        manifest = read_manifest(path)
        console.print(f"[bold]{path}[/] (folder): {len(parquet)} parquet files; "
                      f"{sorted(p.name for p in path.iterdir())}")
        if manifest:
            console.print_json(json.dumps(manifest, default=str))
        for p in parquet[:1]:
            inspect_parquet(p, sample_id, n_rows)
        return
    if path.suffix == ".parquet":
        inspect_parquet(path, sample_id, n_rows)
        kind = schema_name(pq.read_schema(path))
        if sample_id is not None and kind == "vote":
            inspect_vote(path, sample_id)
        if kind == "logits":
            inspect_logits(path, sample_id, n_positions=64)
        if kind == "aligned":
            inspect_aligned(path, sample_id, n_positions=64)
        manifest = read_manifest(path)
        if manifest:
            console.rule("manifest")
            console.print_json(json.dumps({k: v for k, v in manifest.items() if k != "config"}, default=str))
        return
    if path.name == MANIFEST or path.suffix == ".json":
        text = path.read_text()
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise ArtifactError(f"{path}: not valid JSON; rerun the stage that wrote it") from None
        if isinstance(data, dict) and data.get("stage") == "data":
            inspect_data_counts(data)
        console.print_json(text)
        return
    if path.suffix == ".jsonl":
        lines = path.read_text().splitlines()
        console.print(f"[bold]{path}[/]  rows: {len(lines)}")
        for line in lines[:n_rows]:
            console.print(_short(json.loads(line), 200))
        return
    raise ArtifactError(f"{path}: don't know how to inspect a {path.suffix or 'suffix-less'} file")


def inspect_data_counts(manifest: dict) -> None:
    """The data stage's counts: per source, rows read, kept, and each drop reason with the first row it counted."""
    from fusepipe.data.clean import INFO

    table = Table(title="data: per source, rows read, kept and dropped by reason", header_style="bold")
    for col in ("source", "count", "n", "first row"):
        table.add_column(col, overflow="fold")
    first = manifest.get("first_rows", {})
    for name, counts in manifest.get("sources", {}).items():
        keys = [k for k in INFO if k in counts] + [k for k in counts if k not in INFO]
        for i, key in enumerate(keys):
            table.add_row(name if i == 0 else "", key, str(counts[key]), first.get(name, {}).get(key, ""))
        table.add_section()
    console.print(table)


def inspect_aligned(path: Path, sample_id: str | None, n_positions: int) -> None:
    """One sample of an aligned shard: each pivot target token, its link kind and validity, and the projected
    source distribution's top entries as pivot tokens (decoded with the pivot's tokenizer from the manifest)."""
    from fusepipe.align.stage import read_aligned
    from fusepipe.models import load_tokenizer

    table = read_aligned(path)
    ids = table.column("sample_id").to_pylist()
    if not ids:
        return
    row = ids.index(sample_id) if sample_id in ids else 0
    r = table.slice(row, 1).to_pylist()[0]
    manifest = read_manifest(path) or {}
    tok = load_tokenizer(manifest["config"]["pivot"]) if "config" in manifest else None

    def text(i: int) -> str:
        return repr(tok.decode([i])) if tok is not None and i >= 0 else str(i)

    kinds = {0: "none", 1: "1-1", 2: "1-n", 3: "n-1"}
    view = Table(title=f"{r['pivot']} ← {r['source']} ({r['mode']}), sample {r['sample_id']}", header_style="bold")
    for col in ("pos", "pivot token", "link", "valid", "projected top 3 (p)", "src H", "src nll"):
        view.add_column(col)
    for t in range(min(r["n_tokens"], n_positions)):
        top = ", ".join(f"{text(i)} {np.exp(lp):.2f}" for i, lp in zip(r["topk_ids"][t][:3], r["topk_logprobs"][t][:3])
                        if i >= 0)
        view.add_row(str(t), text(r["token_ids"][t]), kinds[r["kind"][t]], "yes" if r["valid"][t] else "no", top,
                     f"{r['src_entropy'][t]:.2f}", f"{r['src_nll'][t]:.2f}")
    console.print(view)


def inspect_logits(path: Path, sample_id: str | None, n_positions: int) -> None:
    """One sample of a logits shard as a table: position, decoded token, its log-prob, the top-k with probabilities
    (the codes decoded back to fp32; tokens decoded with the model's tokenizer named in the manifest)."""
    from fusepipe.logits.store import read_sample, read_shard

    sample = read_sample(path, sample_id) if sample_id else next(read_shard(path), None)
    if sample is None:
        return
    manifest = read_manifest(path) or {}
    tok = None
    model_path = manifest.get("config", {}).get("model", {}).get("path")
    if model_path and Path(model_path).exists():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_path)

    def show(i: int) -> str:
        return repr(tok.convert_ids_to_tokens(int(i))) if tok is not None else str(int(i))

    table = Table(title=f"{sample.sample_id}: {sample.model}, mode {sample.mode}, {sample.n_tokens} target tokens, "
                        f"NLL {sample.nll_sum:.2f} ({sample.nll_sum / max(sample.n_bytes, 1):.3f} nats/byte), "
                        f"entropy {sample.entropy_kind}", show_header=True, header_style="bold")
    for col in ("pos", "msg", "token", "log-prob", "entropy", f"top-{sample.topk_ids.shape[1]} (p)"):
        table.add_column(col, overflow="fold")
    for t in range(min(sample.n_tokens, n_positions)):
        top = ", ".join(f"{show(i)} {np.exp(lp):.3f}" for i, lp in zip(sample.topk_ids[t], sample.topk_logprobs[t]))
        end = " (end of turn)" if sample.turn_end[t] else ""
        table.add_row(str(t), str(int(sample.message_index[t])), show(sample.token_ids[t]) + end,
                      f"{sample.token_logprob[t]:.3f}", f"{sample.entropy[t]:.3f}", top)
    console.print(table)
    if sample.n_tokens > n_positions:
        console.print(f"... {sample.n_tokens - n_positions} more positions")


def _pairs(mapping) -> list[tuple]:
    """An Arrow map as read by polars (a dict, a list of {key, value} structs, or of pairs) as (key, value)s."""
    if isinstance(mapping, dict):
        return list(mapping.items())
    return [(e["key"], e["value"]) if isinstance(e, dict) else tuple(e) for e in mapping]


def inspect_vote(path: Path, sample_id: str) -> None:
    """A voted prompt as a person reads it: the prompt, every candidate response, its scores and votes."""
    workdir = path.parent.parent
    data = workdir / "data" / "train.parquet"
    if data.exists():
        conv = pl.scan_parquet(data).filter(pl.col("sample_id") == sample_id).select("messages").collect()
        if conv.height:
            msgs = conv.row(0)[0]
            last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
            console.rule("prompt")
            console.print(_messages_table(msgs[: last_user + 1]))
    gen_files = sorted((workdir / "gen").glob("*/shard-*.parquet"))
    responses = (pl.scan_parquet(gen_files).filter(pl.col("sample_id") == sample_id).collect()
                 if gen_files else pl.DataFrame())
    text = {(r["model"], r["sample_index"]): r["response"] for r in responses.iter_rows(named=True)}
    votes = pl.read_parquet(path).filter(pl.col("sample_id") == sample_id)
    everyone = votes.filter(pl.col("subset") == "all")
    row = (everyone if everyone.height else votes).row(0, named=True)
    table = Table(title=f"candidates ({row['method']} vote)", show_header=True, header_style="bold")
    for col in ("model", "response", "scores", "votes"):
        table.add_column(col, overflow="fold")
    for c in row["candidates"]:
        scores = ", ".join(f"{rm} {score:+.3f}" for rm, score in _pairs(c["scores"]))
        table.add_row(c["model"] + (f"#{c['sample_index']}" if c["sample_index"] else ""),
                      text.get((c["model"], c["sample_index"]), "?"), scores,
                      "empty: no candidate" if c.get("empty") else str(c["votes"]))
    console.print(table)
    for r in votes.iter_rows(named=True):
        console.print(f"[bold]{r['subset']}[/]: winner {r['winner']}" + (" (tie broken)" if r["tie_broken"] else ""))


def summary(workdir: str | Path) -> None:
    """What the pipeline built: per stage, its outputs' row counts and time."""
    workdir = Path(workdir)
    table = Table(title=f"fusepipe: {workdir}", show_header=True, header_style="bold")
    for col in ("stage", "what", "time (s)"):
        table.add_column(col)
    for manifest_path in sorted(workdir.rglob(MANIFEST)):
        m = json.loads(manifest_path.read_text())
        if "stage" not in m:
            continue
        what = ""
        if m["stage"] == "data":
            what = f"train {m['rows']['train']} / eval {m['rows']['eval']} conversations"
        elif m["stage"] == "toy_world":
            what = "; ".join(f"{k}: {v['accuracy']}" for k, v in m["models"].items())
        elif m["stage"] == "train":
            what = (f"{manifest_path.parent.parent.name}/{manifest_path.parent.name}: {m.get('steps')} steps, loss "
                    f"{m.get('first_loss') or 0:.3f} -> {m.get('final_loss') or 0:.3f}")
        elif m["stage"] == "merge":
            what = f"{m['config']['recipe']}/{m['method']}: {m.get('n_tensors')} tensors"
        elif m["stage"] == "report":
            what = f"{len(m.get('models', []))} models; plots {', '.join(m.get('plots', []))}"
        elif m["stage"] == "vote":
            what = f"{m['prompts']} prompts; wins {m['wins'].get('all')}; RMs agree {m['rm_agreement']['all']:.0%}"
        table.add_row(m["stage"], what, f"{m.get('timings_s', {}).get('total', 0):.1f}")
    for stage in ("gen", "reward", "logits/gt", "logits/inf"):  # sharded stages: one manifest per job
        shards = [json.loads(p.read_text()) for p in sorted((workdir / stage).glob("*/shard-*" + MANIFEST))]
        if shards:
            per: dict[str, int] = {}
            for m in shards:
                key = m["config"]["reward_model"]["name"] if stage == "reward" else m["config"]["model"]["name"]
                per[key] = per.get(key, 0) + m["rows"]
            what = f"{len(shards)} shard jobs; rows " + ", ".join(f"{k} {v}" for k, v in per.items())
            seconds = sum(m["timings_s"].get("total", 0) for m in shards)
            if stage.startswith("logits"):
                tokens = sum(m["tokens"] for m in shards)
                size = sum(m["bytes_per_token"] * m["tokens"] for m in shards)
                what += f"; {tokens} tokens, {size / max(tokens, 1):.1f} B/token"
            table.add_row(shards[0]["stage"] + (f" {stage.split('/')[1]}" if "/" in stage else ""), what,
                          f"{seconds:.1f}")
    for cov_path in sorted((workdir / "align").glob("*/coverage.json")):
        cov = json.loads(cov_path.read_text())
        jobs = [json.loads(p.read_text()) for p in cov_path.parent.glob("*/shard-*" + MANIFEST)]
        seconds = sum(m["timings_s"].get("total", 0) for m in jobs)
        seconds += sum(m["links"]["timings_s"].get("read", 0) + m["links"]["timings_s"].get("align", 0) for m in jobs)
        shares = cov.get("link_share", {})
        what = (f"{cov_path.parent.name}: {cov.get('positions', 0)} positions, valid {cov.get('valid_share', 0):.2f}, "
                f"mass kept {cov.get('mass_kept', 0):.3f}, 1-1/1-n/n-1 {shares.get('one_to_one', 0):.2f}/"
                f"{shares.get('one_to_many', 0):.2f}/{shares.get('many_to_one', 0):.2f} ({cov['vocab']})")
        table.add_row("align", what, f"{seconds:.1f}")
    console.print(table)
