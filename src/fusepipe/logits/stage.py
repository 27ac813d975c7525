"""`logits` stage: one model's teacher-forced top-k distribution at every target token of one shard, one mode.

- mode `gt` (training mode; FuseChat, ProFuser): the ground-truth conversations of `data/train.parquet`, every
  assistant turn a target.
- mode `inf` (inference mode; ProFuser): every response of this model that wins a vote (over all models or in a
  pair), teacher-forced through this model: the prompt, then the response as the one target turn.

Targets are located by character offsets (`capture.prepare`), the distribution comes from the engine's `topk`
(vLLM prompt_logprobs or transformers), and samples stream into `logits/{mode}/{model}/shard-*.parquet` through
`store.ShardWriter` (atomic, bounded memory), with a manifest beside it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from fusepipe import paths
from fusepipe.artifacts import Manifest, shard_manifest
from fusepipe.engines import open_engine
from fusepipe.errors import ArtifactError
from fusepipe.generate.stage import prompt_of, read_conversations
from fusepipe.logits.capture import prepare
from fusepipe.logits.store import SampleLogits, ShardWriter
from fusepipe.progress import track
from fusepipe.schemas import GENERATION, VOTE, check_schema

log = logging.getLogger("fusepipe.logits")


def voted(data_path: str | Path, vote_path: str | Path, gen_paths: list[str | Path], model: str, shard: int,
          shards: int) -> list[tuple[str, list[dict[str, str]]]]:
    """(key, prompt + response) for every response of `model` that wins a vote in any subset; key = sample_id
    (`sample_id#j` for response j > 0 when generate.n > 1)."""
    check_schema(vote_path, VOTE)
    choices = pq.ParquetFile(vote_path).read(columns=["sample_id", "winner", "winner_index"]).to_pylist()
    wins = sorted({(c["sample_id"], c["winner_index"]) for c in choices
                   if c["winner"] == model and paths.shard_of(c["sample_id"], shards) == shard})
    responses: dict[tuple[str, int], str] = {}
    for p in gen_paths:
        check_schema(p, GENERATION)
        for r in pq.ParquetFile(p).read(columns=["sample_id", "sample_index", "response"]).to_pylist():
            responses[(r["sample_id"], r["sample_index"])] = r["response"]
    prompts = dict(read_conversations(data_path, shard, shards, prompts=True))
    out = []
    for sid, j in wins:
        if (sid, j) not in responses:
            raise ArtifactError(f"{vote_path}: {model!r} response {j} of sample {sid} won a vote but is not in "
                                f"gen/{model}; rerun generate for {model!r}")
        conv = [*prompt_of(prompts[sid], sid), {"role": "assistant", "content": responses[(sid, j)]}]
        out.append((sid if j == 0 else f"{sid}#{j}", conv))
    return out


def run(params: dict[str, Any], mode: str, shard: int, data_path: str | Path, out: str | Path,
        vote_path: str | Path | None = None, gen_paths: list[str | Path] | None = None) -> dict[str, Any]:
    cfg, spec = params["logits"], params["model"]
    k, out = cfg["k"], Path(out)
    inputs = {"data": str(data_path)} | ({"vote": str(vote_path)} if vote_path else {})
    manifest = Manifest("logits", {**params, "mode": mode}, inputs=inputs)
    with manifest.phase("read"):
        if mode == "gt":
            convs = read_conversations(data_path, shard, cfg["shards"])
        else:
            convs = voted(data_path, vote_path, gen_paths or [], spec["name"], shard, cfg["shards"])
    log.info("%s: %s mode, shard %d/%d: %d conversations, top-%d", spec["name"], mode, shard, cfg["shards"],
             len(convs), k)
    counts = {"skipped_overlong": 0, "truncated": 0, "tokens": 0, "bytes": 0}
    nll = 0.0
    with ShardWriter(out, k=k) as writer:
        if convs:
            with open_engine({**spec, "max_logprobs": k}, "topk") as engine, manifest.phase("topk"):
                tok = engine.renderer.tok
                for start in track(range(0, len(convs), cfg["batch_size"]), f"top-{k} {spec['name']}",
                                   unit="batches"):
                    batch = []
                    for key, conv in convs[start : start + cfg["batch_size"]]:
                        prep = prepare(tok, conv, last_only=mode == "inf", max_len=int(spec["max_model_len"]),
                                       overlong=cfg["overlong"], name=spec["name"], key=key)
                        if prep is None:
                            counts["skipped_overlong"] += 1
                            continue
                        counts["truncated"] += prep.truncated
                        batch.append((key, prep))
                    dists = engine.topk([p.ids for _, p in batch], [p.positions for _, p in batch], k)
                    for (key, prep), dist in zip(batch, dists, strict=True):
                        sample = SampleLogits(
                            sample_id=key, model=spec["name"], mode=mode,
                            token_ids=np.asarray(prep.ids, dtype=np.int32)[prep.positions],
                            offsets=prep.offsets, message_index=prep.message_index, turn_end=prep.turn_end,
                            topk_ids=dist.ids, topk_logprobs=dist.logprobs, token_logprob=dist.token_logprob,
                            entropy=dist.entropy, entropy_kind=dist.entropy_kind,
                            nll_sum=float(-dist.token_logprob.astype(np.float64).sum()),
                            n_tokens=len(prep.positions), n_bytes=prep.n_bytes,
                        )
                        writer.write(sample)
                        counts["tokens"] += sample.n_tokens
                        counts["bytes"] += sample.n_bytes
                        nll += sample.nll_sum
                manifest["engine"] = {"kind": engine.kind, **vars(engine.stats)}
    manifest["mode"] = mode
    manifest["shard"] = {"index": shard, "of": cfg["shards"]}
    manifest["rows"] = writer.stats.n_samples
    manifest["k"] = k
    manifest.data.update(counts)
    manifest["clamped_logprobs"] = writer.stats.n_clamped
    manifest["bytes_per_token"] = round(out.stat().st_size / max(counts["tokens"], 1), 2)
    manifest["nll_per_token"] = round(nll / max(counts["tokens"], 1), 4)
    manifest["nll_per_byte"] = round(nll / max(counts["bytes"], 1), 4)
    manifest.write(out.parent, {"shard": out}, name=shard_manifest(out).name)
    log.info("%s: wrote %s (%d samples, %d tokens, %.1f B/token; %d skipped, %d truncated as too long)",
             spec["name"], out, manifest["rows"], counts["tokens"], manifest["bytes_per_token"],
             counts["skipped_overlong"], counts["truncated"])
    return manifest.data
