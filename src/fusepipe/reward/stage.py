"""`reward` stage: one reward model scores every (prompt, response) of one shard, from every generator.

The RM sees the prompt (as in `generate`: the conversation up to its last user turn) followed by the response as
the assistant turn, rendered with the RM's own chat template; the score is its raw scalar at the last token.
Writes `reward/{rm}/shard-{i:05d}.parquet` (schema `REWARD`) and its manifest.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fusepipe.artifacts import Manifest, shard_manifest, write_parquet
from fusepipe.engines import open_engine
from fusepipe.errors import ArtifactError
from fusepipe.generate.stage import read_prompts
from fusepipe.progress import track
from fusepipe.schemas import GENERATION, REWARD, check_schema

log = logging.getLogger("fusepipe.reward")


def read_generations(gen_paths: list[str | Path], expected: set[str]) -> list[dict[str, Any]]:
    """All rows of the generation shards, checked against the prompts they should answer."""
    rows: list[dict[str, Any]] = []
    for path in gen_paths:
        check_schema(path, GENERATION)
        part = pq.ParquetFile(path).read(columns=["sample_id", "model", "sample_index", "response"]).to_pylist()
        missing = expected - {r["sample_id"] for r in part}
        if missing:
            raise ArtifactError(f"{path}: no response for {len(missing)} prompt(s) of its shard (e.g. "
                                f"{min(missing)}); rerun its generate job")
        rows += part
    return rows


def run(params: dict[str, Any], data_path: str | Path, gen_paths: list[str | Path], out: str | Path,
        shard: int) -> dict[str, Any]:
    spec, batch = params["reward_model"], params["reward"]["batch_size"]
    out = Path(out)
    manifest = Manifest("reward", params, inputs={"data": str(data_path), **{str(p): str(p) for p in gen_paths}})
    prompts = dict(read_prompts(data_path, shard, params["shards"]))
    rows = read_generations(gen_paths, set(prompts))
    conversations = [[*prompts[r["sample_id"]], {"role": "assistant", "content": r["response"]}] for r in rows]
    keys = [f"{r['sample_id']} ({r['model']}#{r['sample_index']})" for r in rows]
    log.info("%s: scoring %d responses of shard %d", spec["name"], len(rows), shard)
    scores: list[float] = []
    if rows:
        with open_engine(spec, "score") as engine:
            with manifest.phase("score"):
                for start in track(range(0, len(rows), batch), f"scoring with {spec['name']}", unit="batches"):
                    scores += engine.score(conversations[start : start + batch], keys[start : start + batch])
            manifest["engine"] = {"kind": engine.kind, **vars(engine.stats)}
    table = pa.table(
        {
            "sample_id": [r["sample_id"] for r in rows],
            "model": [r["model"] for r in rows],
            "sample_index": [r["sample_index"] for r in rows],
            "rm": [spec["name"]] * len(rows),
            "score": scores,
        },
        schema=REWARD,
    )
    write_parquet(table, out, REWARD)
    manifest["rows"] = len(rows)
    by_model: dict[str, list[float]] = {}
    for r, score in zip(rows, scores):
        by_model.setdefault(r["model"], []).append(score)
    manifest["mean_score"] = {m: round(sum(v) / len(v), 4) for m, v in sorted(by_model.items())}
    manifest.write(out.parent, {"shard": out}, name=shard_manifest(out).name)
    return manifest.data
