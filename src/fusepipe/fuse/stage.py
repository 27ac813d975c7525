"""`fuse` stage: the training targets of one (recipe, target) for one shard -> targets/{recipe}/{target}/shard-*.

Every distribution is already on the pivot's tokens and vocabulary: the pivot's own from its logits, each source's
from `align/{pivot}~{source}/{mode}`. Per mode:

- gt (training mode): the ground-truth conversations; per sample the fusion function picks or mixes among the
  target's members (pivot first): MinCE (lowest CE; ties to the pivot), UDF (per-token or per-sequence
  uncertainty-weighted mixture), naive (each source's distribution its own row).
- inf (inference mode, ProFuser): per prompt the response the reward models voted for, within the pair or over
  all generators, with its generator's distribution; prompts whose winner is not a member are skipped.

Rows carry the conversation as trained and the pivot's token ids, so `train` needs nothing else; the manifest
counts how often each model was chosen.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fusepipe import paths
from fusepipe.align.project import fit_k
from fusepipe.align.stage import read_aligned
from fusepipe.artifacts import Manifest, shard_manifest, write_parquet
from fusepipe.errors import ArtifactError
from fusepipe.fuse.functions import mince_choice, mix_topk, sequence_ce, udf_weights
from fusepipe.generate.stage import read_conversations
from fusepipe.logits.stage import voted
from fusepipe.logits.store import decoded_row_groups, list_array
from fusepipe.schemas import VOTE, check_schema, read_k_table, targets_schema

log = logging.getLogger("fusepipe.fuse")


# ------------------------------------------------------------------------------------------------ inputs


def inputs(params: dict[str, Any], workdir: str | Path, shard: int) -> dict[str, list[str]]:
    """Every file the job reads (the Snakemake rule's inputs and the CLI's paths)."""
    pivot, modes = params["pivot"]["name"], params["recipe"]["modes"]
    sources = params["members"][1:]
    variant = params.get("align_variant")  # a recipe with its own vocabulary map (align/{pair}/vocab-{map}/)
    out: dict[str, list[str]] = {"data": [paths.data(workdir)]}
    if "gt" in modes:
        out["gt"] = [paths.logits_shard(workdir, "gt", pivot, shard)]
        out["gt"] += [paths.align_shard(workdir, pivot, s, "gt", shard, variant) for s in sources]
    if "inf" in modes:
        gens = [m for m in params["members"] if m in params["generators"]]
        out["vote"] = [paths.vote_choices(workdir)]
        out["inf"] = [paths.logits_shard(workdir, "inf", pivot, shard)] if pivot in gens else []
        out["inf"] += [paths.align_shard(workdir, pivot, s, "inf", shard, variant) for s in sources if s in gens]
        out["gen"] = [paths.gen_shard(workdir, m, j) for m in gens for j in range(params["gen_shards"])]
    return out


# ------------------------------------------------------------------------------------------------- reading


class Dists:
    """One model's distributions of a shard at the pivot's target tokens: per sample key, its row."""

    def __init__(self, model: str, keys: list[str], ptr: np.ndarray, token_ids: np.ndarray, ids: np.ndarray,
                 logprobs: np.ndarray, valid: np.ndarray, entropy: np.ndarray, nll: np.ndarray,
                 seq: dict[str, np.ndarray]):
        self.model, self.keys, self.ptr = model, keys, ptr
        self.token_ids, self.ids, self.logprobs, self.valid = token_ids, ids, logprobs, valid
        self.entropy, self.nll, self.seq = entropy, nll, seq
        self.row = {key: i for i, key in enumerate(keys)}

    def span(self, key: str) -> slice:
        i = self.row[key]
        return slice(int(self.ptr[i]), int(self.ptr[i + 1]))


def pivot_dists(path: str | Path, model: str, k: int) -> Dists:
    """The pivot's own distributions (its logits shard), all valid."""
    if not Path(path).exists():
        raise ArtifactError(f"{path}: missing; run the logits stage for the pivot first")
    parts = list(decoded_row_groups(path, ["token_ids", "topk_ids", "topk_logprobs", "token_logprob", "entropy",
                                           "nll_sum", "n_bytes"]))
    keys = [key for p in parts for key in p["sample_id"]]
    lengths = np.concatenate([np.diff(p["ptr"]) for p in parts]) if parts else np.zeros(0, np.int64)

    def cat(name, shape=0):
        return np.concatenate([p[name] for p in parts]) if parts else np.zeros(shape)

    ids, lp = fit_k(cat("topk_ids", (0, k)).astype(np.int32), cat("topk_logprobs", (0, k)).astype(np.float32), k)
    per = {name: np.asarray([v for p in parts for v in p[name]], np.float64) for name in ("nll_sum", "n_tokens",
                                                                                          "n_bytes")}
    entropy = cat("entropy").astype(np.float64)
    seq = {**per, "entropy_sum": np.add.reduceat(entropy, np.concatenate([[0], np.cumsum(lengths)[:-1]]))
           if len(lengths) else np.zeros(0)}
    if len(lengths) and (lengths == 0).any():  # reduceat repeats the next value at empty rows
        seq["entropy_sum"][lengths == 0] = 0.0
    return Dists(model, keys, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), cat("token_ids").astype(np.int32),
                 ids, lp, np.ones(len(ids), bool), entropy, -cat("token_logprob").astype(np.float64), seq)


def aligned_dists(path: str | Path, model: str) -> Dists:
    """A source's distributions projected onto the pivot (an aligned shard)."""
    t = read_aligned(path)
    lengths = np.asarray(t.column("n_tokens").to_numpy(), np.int64)
    ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    k = t.schema.field("topk_ids").type.value_type.list_size

    def flat(name, dtype, width=0):
        values = pa.concat_arrays([c.flatten() for c in t.column(name).chunks]) if t.num_rows else pa.array([])
        if width:
            values = values.flatten()
        arr = np.asarray(values.to_numpy(zero_copy_only=False), dtype)
        return arr.reshape(-1, width) if width else arr

    def per(name):
        return np.asarray([np.nan if v is None else v for v in t.column(name).to_pylist()], np.float64)

    seq = {"nll_sum": per("src_nll_sum"), "n_tokens": per("src_n_tokens"), "n_bytes": per("src_n_bytes"),
           "entropy_sum": per("src_entropy_sum")}
    return Dists(model, t.column("sample_id").to_pylist(), ptr, flat("token_ids", np.int32),
                 flat("topk_ids", np.int32, k), flat("topk_logprobs", np.float32, k), flat("valid", bool),
                 flat("src_entropy", np.float64), flat("src_nll", np.float64), seq)


# ----------------------------------------------------------------------------------------------- building


class Rows:
    """Target rows being collected for the shard."""

    def __init__(self, k: int):
        self.k = k
        self.meta: list[dict[str, Any]] = []
        self.token_ids: list[np.ndarray] = []
        self.ids: list[np.ndarray] = []
        self.lp: list[np.ndarray] = []
        self.valid: list[np.ndarray] = []
        self.chosen: dict[str, Counter] = {}

    def add(self, key: str, mode: str, model: str, messages, token_ids, ids, lp, valid, weight: float = 1.0):
        self.meta.append({"sample_id": key, "mode": mode, "model": model, "weight": weight, "messages": messages,
                          "n_tokens": len(token_ids)})
        self.token_ids.append(np.asarray(token_ids, np.int32))
        self.ids.append(np.asarray(ids, np.int32))
        self.lp.append(np.asarray(lp, np.float32))
        self.valid.append(np.asarray(valid, bool))
        self.chosen.setdefault(mode, Counter())[model] += 1

    def table(self) -> pa.Table:
        schema = targets_schema(self.k)
        offsets = pa.array(np.concatenate([[0], np.cumsum([m["n_tokens"] for m in self.meta])]).astype(np.int32))

        def lst(parts, value_type, width=0):
            values = np.concatenate(parts) if parts else np.zeros((0, width) if width else 0)
            return list_array(values, offsets, value_type, width)

        cols = {name: pa.array([m[name] for m in self.meta], schema.field(name).type)
                for name in ("sample_id", "mode", "model", "weight", "messages", "n_tokens")}
        cols["token_ids"] = lst(self.token_ids, pa.int32())
        cols["topk_ids"] = lst(self.ids, pa.int32(), self.k)
        cols["topk_logprobs"] = lst(self.lp, pa.float32(), self.k)
        cols["valid"] = lst(self.valid, pa.bool_())
        return pa.table([cols[f.name].cast(f.type) for f in schema], schema=schema)


def check_same_tokens(pivot: Dists, other: Dists, key: str, path: str) -> None:
    if not np.array_equal(pivot.token_ids[pivot.span(key)], other.token_ids[other.span(key)]):
        raise ArtifactError(f"{path}: sample {key} has other pivot tokens than the pivot's logits; rerun align "
                            "for this pair")


def fuse_gt(params: dict[str, Any], pivot: Dists, sources: list[Dists], source_paths: list[str],
            messages: dict[str, Any], rows: Rows) -> None:
    """Training mode: one (or, naive, several) target rows per ground-truth sample."""
    fusion, k = params["recipe"]["fusion"], rows.k
    cands = [pivot, *sources]
    for src, path in zip(sources, source_paths, strict=True):
        if src.keys != pivot.keys:
            raise ArtifactError(f"{path}: its samples differ from the pivot's gt logits of the same shard; rerun "
                                "align for this pair")
    if not pivot.keys:
        return
    keys = pivot.keys
    fn = fusion["function"] if sources else "mince"
    if fn == "mince":
        ce = np.stack([sequence_ce(c.seq["nll_sum"], c.seq["n_tokens"], c.seq["n_bytes"], fusion["ce_norm"])
                       for c in cands])
        choice = mince_choice(ce)
        for s, key in enumerate(keys):
            c = cands[choice[s]]
            span = c.span(key)
            rows.add(key, "gt", c.model, messages[key], pivot.token_ids[pivot.span(key)], c.ids[span],
                     c.logprobs[span], c.valid[span])
    elif fn == "naive":
        for s, key in enumerate(keys):
            for c in sources:
                span = c.span(key)
                rows.add(key, "gt", c.model, messages[key], pivot.token_ids[pivot.span(key)], c.ids[span],
                         c.logprobs[span], c.valid[span])
    elif fn == "udf":
        mix = cands if fusion["udf_include_pivot"] else sources
        n = len(pivot.token_ids)
        if fusion["udf_granularity"] == "token":
            entropy = np.stack([c.entropy for c in mix])
            ce = np.stack([c.nll for c in mix])
        else:
            lengths = np.diff(pivot.ptr)
            per_seq = [np.repeat((c.seq["entropy_sum"] + c.seq["nll_sum"]) / np.maximum(c.seq["n_tokens"], 1),
                                 lengths) for c in mix]
            entropy, ce = np.stack(per_seq), np.zeros((len(mix), n))
        valid = np.stack([c.valid & np.isfinite(c.entropy) & np.isfinite(c.nll) for c in mix])
        w = udf_weights(entropy, ce, valid, fusion["udf_epsilon"])
        ids = np.stack([c.ids for c in mix])
        lp = np.stack([c.logprobs for c in mix])
        mixed_ids, mixed_lp = mix_topk(ids, lp, w, k)
        any_valid = valid.any(0)
        onehot_ids, onehot_lp = fit_k(pivot.token_ids[:, None], np.zeros((n, 1), np.float32), k)
        mixed_ids = np.where(any_valid[:, None], mixed_ids, onehot_ids)
        mixed_lp = np.where(any_valid[:, None], mixed_lp, onehot_lp)
        for key in keys:
            span = pivot.span(key)
            rows.add(key, "gt", "udf", messages[key], pivot.token_ids[span], mixed_ids[span], mixed_lp[span],
                     any_valid[span])
    else:
        raise ValueError(f"unknown fusion function {fn!r}; use mince, udf or naive")


def fuse_inf(params: dict[str, Any], shard: int, dists: dict[str, Dists], convs: dict[str, dict[str, Any]],
             vote_path: str, rows: Rows) -> int:
    """Inference mode: each voted response with its generator's distribution; returns prompts skipped."""
    pivot, target = params["pivot"]["name"], params["target"]
    members = set(params["members"])
    unified = len(params["members"]) > 2 or params["recipe"]["fusion"]["vote"] == "all"
    subset = "all" if unified else paths.pair(pivot, target)
    check_schema(vote_path, VOTE)
    choices = pq.ParquetFile(vote_path).read(columns=["sample_id", "subset", "winner", "winner_index"]).to_pylist()
    skipped = 0
    for c in sorted((c for c in choices if c["subset"] == subset
                     and paths.shard_of(c["sample_id"], params["logits"]["shards"]) == shard),
                    key=lambda c: c["sample_id"]):
        winner = c["winner"]
        if winner not in members or winner not in dists:
            skipped += 1
            continue
        key = c["sample_id"] if c["winner_index"] == 0 else f"{c['sample_id']}#{c['winner_index']}"
        d = dists[winner]
        if key not in d.row:
            raise ArtifactError(f"{winner}: the voted response {key} is missing from its inf distributions; "
                                "rerun logits (mode inf) and align for it")
        span = d.span(key)
        rows.add(key, "inf", winner, convs[winner][key], d.token_ids[span], d.ids[span], d.logprobs[span],
                 d.valid[span])
    return skipped


def run(params: dict[str, Any], workdir: str | Path, shard: int, out: str | Path) -> dict[str, Any]:
    recipe, target = params["recipe"], params["target"]
    pivot_name, k = params["pivot"]["name"], params["align_k"]
    files = inputs(params, workdir, shard)
    manifest = Manifest("fuse", params, inputs={"files": [p for group in files.values() for p in group]})
    rows = Rows(k)
    skipped = 0
    if "gt" in recipe["modes"]:
        with manifest.phase("gt"):
            pivot = pivot_dists(files["gt"][0], pivot_name, k)
            sources = [aligned_dists(p, m) for p, m in zip(files["gt"][1:], params["members"][1:], strict=True)]
            messages = dict(read_conversations(paths.data(workdir), shard, params["logits"]["shards"]))
            missing = [key for key in pivot.keys if key not in messages]
            if missing:
                raise ArtifactError(f"{files['gt'][0]}: sample {missing[0]} is not in {paths.data(workdir)}; rerun "
                                    "logits after the data stage")
            fuse_gt(params, pivot, sources, files["gt"][1:], messages, rows)
    if "inf" in recipe["modes"]:
        with manifest.phase("inf"):
            gens = [m for m in params["members"] if m in params["generators"]]
            dists, convs = {}, {}
            for model, path in zip(gens, files["inf"], strict=True):
                dists[model] = (pivot_dists(path, model, k) if model == pivot_name else aligned_dists(path, model))
                gen_paths = [paths.gen_shard(workdir, model, j) for j in range(params["gen_shards"])]
                convs[model] = dict(voted(paths.data(workdir), files["vote"][0], gen_paths, model, shard,
                                          params["logits"]["shards"]))
            skipped = fuse_inf(params, shard, dists, convs, files["vote"][0], rows)
    table = rows.table()
    write_parquet(table, out, targets_schema(k))
    manifest["shard"] = shard
    manifest["rows"] = table.num_rows
    manifest["tokens"] = {mode: int(sum(m["n_tokens"] for m in rows.meta if m["mode"] == mode))
                          for mode in recipe["modes"]}
    manifest["chosen"] = {mode: dict(sorted(c.items())) for mode, c in rows.chosen.items()}
    manifest["inf_skipped_not_member"] = skipped
    manifest.write(Path(out).parent, {"shard": out}, name=shard_manifest(out).name)
    log.info("%s/%s shard %d: %d rows; chosen %s", recipe["name"], target, shard, table.num_rows,
             manifest["chosen"])
    return manifest.data


def read_targets(path: str | Path) -> pa.Table:
    """A targets shard, checked against its schema (k from its metadata)."""
    return read_k_table(path, "targets", targets_schema, "run the fuse stage for this recipe target first")
