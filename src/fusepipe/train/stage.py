"""`train` stage: fine-tune the pivot on one (recipe, target)'s targets -> train/{recipe}/{target}/model/.

Reads `targets/{recipe}/{target}/shard-*.parquet`, tokenizes every (sample, mode) with the pivot's template,
plans the schedule's steps (`train.data.plan`) and runs them with DeepSpeed ZeRO (`train.loop`). Beside the model:
`log.parquet` (one row per optimizer step: phase, epoch, lr, loss and its parts per mode, grad norm, tokens/s),
`_manifest.json`, and `checkpoints/` (resume state; not a declared output).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa

from fusepipe import paths
from fusepipe.artifacts import Manifest, code_version, slice_hash, write_parquet
from fusepipe.errors import ArtifactError
from fusepipe.models import load_tokenizer
from fusepipe.train.data import load_examples, plan
from fusepipe.train.loop import setup_distributed, train

log = logging.getLogger("fusepipe.train")

LOG_SCHEMA = pa.schema([
    ("step", pa.int32()), ("phase", pa.string()), ("epoch", pa.int32()), ("lr", pa.float64()), ("loss", pa.float64()),
    ("sft_gt", pa.float64()), ("sft_inf", pa.float64()), ("fusion_gt", pa.float64()), ("fusion_inf", pa.float64()),
    ("tokens_gt", pa.int64()), ("tokens_inf", pa.int64()), ("grad_norm", pa.float64()), ("seconds", pa.float64()),
    ("tokens_per_s", pa.float64()),
], metadata={"fusepipe.schema": "train_log"})


def run(params: dict[str, Any], workdir: str | Path) -> dict[str, Any]:
    recipe, target, pivot = params["recipe"], params["target"], params["pivot"]
    out_dir = Path(paths.train_dir(workdir, recipe["name"], target))
    shards = [paths.targets_shard(workdir, recipe["name"], target, i) for i in range(params["shards"])]
    manifest = Manifest("train", params, inputs={"targets": shards})
    rank, world = setup_distributed()
    for shard in shards:
        if not Path(shard).exists():
            raise ArtifactError(f"{shard}: missing; run the fuse stage for this recipe target first")
    with manifest.phase("data"):
        tokenizer = load_tokenizer(pivot)
        examples = load_examples(shards, tokenizer, pivot, recipe["train"]["max_len"])
        steps = plan(examples, recipe["schedule"], recipe["train"], world)
    log.info("%s/%s: %d examples (%s), %d steps over %d phase(s), %d process(es)", recipe["name"], target,
             len(examples), ", ".join(f"{m} {sum(e.mode == m for e in examples)}" for m in recipe["modes"]),
             len(steps), len(recipe["schedule"]), world)
    with manifest.phase("train"):
        key = slice_hash({"config": manifest["config_hash"], "code": code_version("train", "losses", "fuse")})
        result = train(params, examples, steps, tokenizer, pivot["path"], out_dir, key)
    if rank == 0:
        rows = result["log"]
        write_parquet(pa.Table.from_pylist(rows, schema=LOG_SCHEMA), out_dir / "log.parquet")
        manifest["examples"] = {m: sum(e.mode == m for e in examples) for m in recipe["modes"]}
        manifest["steps"] = result["steps"]
        manifest["resumed_at_step"] = result["resumed_at"]
        manifest["world_size"] = world
        manifest["final_loss"] = rows[-1]["loss"] if rows else None
        manifest["first_loss"] = rows[0]["loss"] if rows else None
        manifest["tokens_per_s_median"] = sorted(r["tokens_per_s"] for r in rows)[len(rows) // 2] if rows else None
        manifest.write(out_dir, {"log": out_dir / "log.parquet"})
    return manifest.data
