"""`generate` stage: for every prompt of one shard, `n` sampled responses from one model.

A prompt is a training conversation up to its last user turn (multi-turn: the ground-truth history before it
stays). Response j of `model` for prompt `sample_id` is sampled with seed hash(generate.seed, sample_id, model,
j), so a shard's content does not depend on sharding, batching or the engine's request order. One job per
(model, shard) writes `gen/{model}/shard-{i:05d}.parquet` (schema `GENERATION`) and its manifest, atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fusepipe import paths
from fusepipe.artifacts import Manifest, shard_manifest, write_parquet
from fusepipe.data.clean import is_prompt
from fusepipe.engines import Request, Sampling, derive_seed, open_engine
from fusepipe.errors import DataError
from fusepipe.progress import track
from fusepipe.schemas import CONVERSATION, GENERATION, check_schema

log = logging.getLogger("fusepipe.generate")


def prompt_of(messages: list[dict[str, str]], sample_id: str) -> list[dict[str, str]]:
    """The conversation up to and including its last user message."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        raise DataError(f"sample {sample_id}: no user message to answer")
    return messages[: last_user + 1]


def read_conversations(data_path: str | Path, shard: int, shards: int,
                       prompts: bool = False) -> list[tuple[str, list[dict[str, str]]]]:
    """(sample_id, conversation) of every training conversation in `shard` of `shards` with a reference answer
    (`prompts`: and every prompt without one, from `prompts_only` sources), in sample_id order."""
    check_schema(data_path, CONVERSATION)
    table = pq.ParquetFile(data_path).read(columns=["sample_id", "messages"])  # (read_table imports pandas: 1 s)
    rows = zip(table.column("sample_id").to_pylist(), table.column("messages").to_pylist(), strict=True)
    return sorted((sid, msgs) for sid, msgs in rows
                  if paths.shard_of(sid, shards) == shard and (prompts or not is_prompt(msgs)))


def read_prompts(data_path: str | Path, shard: int, shards: int) -> list[tuple[str, list[dict[str, str]]]]:
    """(sample_id, prompt) of every conversation in `shard` of `shards`, prompt-only ones included, in sample_id
    order."""
    return [(sid, prompt_of(msgs, sid)) for sid, msgs in read_conversations(data_path, shard, shards, prompts=True)]


def sampling_of(cfg: dict[str, Any]) -> Sampling:
    return Sampling(temperature=cfg["temperature"], top_p=cfg["top_p"], top_k=cfg["top_k"],
                    max_tokens=cfg["max_tokens"])


def run(params: dict[str, Any], data_path: str | Path, out: str | Path, shard: int) -> dict[str, Any]:
    cfg, spec = params["generate"], params["model"]
    out = Path(out)
    manifest = Manifest("generate", params, inputs={"data": str(data_path)})
    prompts = read_prompts(data_path, shard, cfg["shards"])
    requests = [
        Request(messages=prompt, seed=derive_seed(cfg["seed"], sid, spec["name"], j), key=f"{sid}#{j}")
        for sid, prompt in prompts
        for j in range(cfg["n"])
    ]
    log.info("%s: shard %d/%d, %d prompts x %d responses", spec["name"], shard, cfg["shards"], len(prompts), cfg["n"])
    sampling = sampling_of(cfg)
    generations = []
    if requests:  # an empty shard (tiny data, many shards) still writes its (empty) file
        with open_engine(spec, "generate") as engine:
            with manifest.phase("generate"):
                for start in track(range(0, len(requests), cfg["batch_size"]), f"generating {spec['name']}",
                                   unit="batches"):
                    generations += engine.generate(requests[start : start + cfg["batch_size"]], sampling)
            manifest["engine"] = {"kind": engine.kind, **vars(engine.stats)}
    rows = {name: [] for name in GENERATION.names}
    for req, gen in zip(requests, generations):
        sid, j = req.key.rsplit("#", 1)
        rows["sample_id"].append(sid)
        rows["model"].append(spec["name"])
        rows["sample_index"].append(int(j))
        rows["response"].append(gen.text.strip())  # as the data stage stores messages
        rows["n_tokens"].append(len(gen.token_ids))
        rows["finish_reason"].append(gen.finish_reason)
        rows["seed"].append(req.seed)
        rows["prompt_tokens"].append(gen.prompt_tokens)
        rows["prompt_truncated"].append(gen.prompt_truncated)
    write_parquet(pa.table(rows, schema=GENERATION), out, GENERATION)
    n_tok = rows["n_tokens"]
    manifest["rows"] = len(requests)
    manifest["shard"] = {"index": shard, "of": cfg["shards"]}
    manifest["finish_reasons"] = {r: rows["finish_reason"].count(r) for r in sorted(set(rows["finish_reason"]))}
    manifest["response_tokens"] = {"mean": round(sum(n_tok) / max(len(n_tok), 1), 2), "total": sum(n_tok)}
    manifest["prompts_truncated"] = sum(rows["prompt_truncated"])
    manifest.write(out.parent, {"shard": out}, name=shard_manifest(out).name)
    log.info("%s: wrote %s (%d rows)", spec["name"], out, len(requests))
    return manifest.data
