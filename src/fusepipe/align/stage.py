"""`align` stage: every source's top-k distributions moved onto the pivot's target tokens and vocabulary.

Four steps per (pivot, source) pair, each a Snakemake job (rules in workflow/rules/align.smk):

    links     per mode and shard   pair the samples, keep the assistant messages both sides have, link source
                                   tokens to pivot tokens (DTW / band / offsets), count the links
                                   -> align/{pivot}~{source}/{mode}/links-*.npz
    vocab     per pair             Σ mapping counts over every mode and shard (MS, FuseChat Appendix B.1), the
                                   vocabulary map -> ms_counts.npz, vocab_map.parquet
    project   per mode and shard   the source top-k at each pivot target token over pivot ids
                                   -> {mode}/shard-*.parquet (schema `aligned`) + manifest with coverage sums
    coverage  per pair             coverage.json: link kinds, valid share, mass kept, per mode and overall

The pivot side is the pivot's own `gt` logits shard (its rows are the rows of the aligned shard, so a fusion
target lines up with the pivot's own distribution position by position). In mode `inf` the text is the source's
voted response, which the pivot never ran on: its pivot tokens come from the pivot's tokenizer and chat template
(`logits.capture.prepare`, the same targets its teacher forcing would give), no model needed.
Same tokenizer on both sides: identical units link one to one without DTW and the vocabulary map is the identity.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fusepipe.align.coverage import coverage_counts, coverage_report, merge_counts
from fusepipe.align.dtw import Links, align, link_kinds
from fusepipe.align.project import Projected, chain, copy_through, fit_k, link_weights, project
from fusepipe.align.stats import MappingCounts, count_links, reduce_counts
from fusepipe.align.tokens import TokenTable, token_table
from fusepipe.align.vocab import vocab_map
from fusepipe.artifacts import Manifest, atomic_path, read_manifest, shard_manifest, write_json, write_parquet
from fusepipe.errors import ArtifactError
from fusepipe.logits.capture import prepare
from fusepipe.logits.store import decoded_row_groups, list_array
from fusepipe.models import load_tokenizer
from fusepipe.params.align import own_links
from fusepipe.schemas import aligned_schema, read_k_table

log = logging.getLogger("fusepipe.align")

SIDE_COLUMNS = ("token_ids", "offsets", "message_index", "turn_end")


# --------------------------------------------------------------------------------------------- tokenizers


def model_vocab_size(spec: dict[str, Any]) -> int | None:
    """The model's (possibly padded) vocabulary size from its config, so every top-k id has a table row."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(spec["path"], trust_remote_code=spec.get("trust_remote_code", False))
    except (OSError, ValueError):
        return None
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return getattr(text, "vocab_size", None)


def tables(params: dict[str, Any]) -> tuple[Any, TokenTable, TokenTable]:
    """(pivot tokenizer, source table, pivot table) of the pair."""
    piv_tok, src_tok = load_tokenizer(params["pivot"]), load_tokenizer(params["source"])
    src_t = token_table(src_tok, model_vocab_size(params["source"]))
    piv_t = token_table(piv_tok, model_vocab_size(params["pivot"]))
    return piv_tok, src_t, piv_t


# ----------------------------------------------------------------------------------------------- one side


@dataclass
class Side:
    """One model's target tokens for the samples of a shard, flattened: sample s is ptr[s]:ptr[s+1]."""

    keys: list[str]
    ptr: np.ndarray  # int64 [S+1]
    ids: np.ndarray  # int32 [N]
    offsets: np.ndarray  # int32 [N, 2]
    message: np.ndarray  # int32 [N]
    turn_end: np.ndarray  # bool [N]

    @classmethod
    def concat(cls, parts: list[dict[str, Any]]) -> Side:
        keys = [k for p in parts for k in p["sample_id"]]
        lengths = np.concatenate([np.diff(p["ptr"]) for p in parts]) if parts else np.zeros(0, np.int64)
        ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

        def cat(name, dtype, shape):
            return np.concatenate([p[name] for p in parts]).astype(dtype) if parts else np.zeros(shape, dtype)

        return cls(keys, ptr, cat("token_ids", np.int32, 0), cat("offsets", np.int32, (0, 2)),
                   cat("message_index", np.int32, 0), cat("turn_end", bool, 0))


def read_logits(path: str | Path, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    """The decoded row groups of a logits shard (flat arrays, see `logits.store.decoded_row_groups`)."""
    if not Path(path).exists():
        raise ArtifactError(f"{path}: missing; run the logits stage for it first")
    return list(decoded_row_groups(path, columns))


def tokenized_side(tok, convs: list[tuple[str, list[dict[str, str]]]], spec: dict[str, Any], overlong: str) -> Side:
    """The pivot's target tokens of conversations it never ran on (mode inf): its tokenizer and template only."""
    parts = {"sample_id": [], "token_ids": [], "offsets": [], "message_index": [], "turn_end": [], "n": []}
    for key, conv in convs:
        prep = prepare(tok, conv, last_only=True, max_len=int(spec["max_model_len"]), overlong=overlong,
                       name=spec["name"], key=key)
        if prep is None:
            continue
        parts["sample_id"].append(key)
        parts["token_ids"].append(np.asarray(prep.ids, np.int32)[prep.positions])
        parts["offsets"].append(prep.offsets)
        parts["message_index"].append(prep.message_index)
        parts["turn_end"].append(prep.turn_end)
        parts["n"].append(len(prep.positions))
    flat = {name: np.concatenate(v) if v else np.zeros((0, 2) if name == "offsets" else 0)
            for name, v in parts.items() if name not in ("sample_id", "n")}
    flat["sample_id"] = parts["sample_id"]
    flat["ptr"] = np.concatenate([[0], np.cumsum(parts["n"])]).astype(np.int64)
    return Side.concat([flat])


# ------------------------------------------------------------------------------------------------ pairing


@dataclass
class Pairing:
    """Which tokens of the two sides are aligned: the assistant messages both have, sample by sample."""

    src_row: np.ndarray  # int64 [S_piv]: the source sample of each pivot sample, -1 when the source has none
    piv_sel: np.ndarray  # int64 [Np']: flat pivot positions taking part, in order
    src_sel: np.ndarray  # int64 [Ns']: flat source positions taking part, in order
    piv_unit: np.ndarray  # int64 [U+1]: units (one message of one sample) over piv_sel
    src_unit: np.ndarray  # int64 [U+1]: the same units over src_sel


def _units(message: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions whose message is in `keep`, and their run lengths per message (in order)."""
    mask = np.isin(message, keep)
    _, counts = np.unique(message[mask], return_counts=True)  # messages are non-decreasing within a sample
    return np.flatnonzero(mask), counts


def pair_sides(piv: Side, src: Side) -> Pairing:
    """Join on sample_id; per joined sample, the messages present on both sides (truncation drops whole
    messages, so the shared messages cover the same text on both sides)."""
    where = {k: i for i, k in enumerate(src.keys)}
    src_row = np.array([where.get(k, -1) for k in piv.keys], np.int64)
    piv_sel, src_sel, piv_len, src_len = [], [], [], []
    for s, r in enumerate(src_row):
        if r < 0:
            continue
        a, b = piv.ptr[s], piv.ptr[s + 1]
        c, d = src.ptr[r], src.ptr[r + 1]
        shared = np.intersect1d(piv.message[a:b], src.message[c:d])
        if not len(shared):
            continue
        pi, pl = _units(piv.message[a:b], shared)
        si, sl = _units(src.message[c:d], shared)
        piv_sel.append(pi + a)
        src_sel.append(si + c)
        piv_len.append(pl)
        src_len.append(sl)

    def flat(parts, dtype=np.int64):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    def ptr(lengths):
        return np.concatenate([[0], np.cumsum(flat(lengths))]).astype(np.int64)

    return Pairing(src_row, flat(piv_sel), flat(src_sel), ptr(piv_len), ptr(src_len))


def identity_links(n: int) -> Links:
    start = np.arange(n, dtype=np.int64)
    return Links(start, start + 1, link_kinds(start, start + 1, n), np.zeros(0, np.int64))


# -------------------------------------------------------------------------------------------- step: links


def pivot_side(params: dict[str, Any], mode: str, shard: int, pivot_logits: str | Path | None, piv_tok,
               voted_convs) -> Side:
    if mode == "gt":
        return Side.concat(read_logits(pivot_logits, SIDE_COLUMNS))
    return tokenized_side(piv_tok, voted_convs, params["pivot"], params["logits"]["overlong"])


def run_links(params: dict[str, Any], mode: str, shard: int, source_logits: str | Path, out: str | Path, *,
              pivot_logits: str | Path | None = None, voted_convs=None) -> dict[str, Any]:
    """Link the source's target tokens to the pivot's for one shard; write links + mapping counts (.npz)."""
    cfg = params["align"]
    manifest = Manifest("align.links", {**params, "mode": mode})
    with manifest.phase("read"):
        piv_tok, src_t, piv_t = tables(params)
        src = Side.concat(read_logits(source_logits, SIDE_COLUMNS))
        piv = pivot_side(params, mode, shard, pivot_logits, piv_tok, voted_convs)
        pairing = pair_sides(piv, src)
    piv_ids, src_ids = piv.ids[pairing.piv_sel], src.ids[pairing.src_sel]
    same = src_t.fingerprint == piv_t.fingerprint
    with manifest.phase("align"):
        if same and np.array_equal(piv_ids, src_ids) and np.array_equal(pairing.piv_unit, pairing.src_unit):
            links = identity_links(len(piv_ids))
        else:
            links = align(src_ids, pairing.src_unit, piv_ids, pairing.piv_unit, src_t, piv_t,
                          mode=cfg["method"], band=cfg["band"], src_spans=src.offsets[pairing.src_sel],
                          piv_spans=piv.offsets[pairing.piv_sel])
        counts = count_links(links, src_ids, piv_ids, src_t.size, piv_t.size)
    summary = {
        "pivot_samples": len(piv.keys), "source_samples": len(src.keys),
        "paired_samples": int((pairing.src_row >= 0).sum()),
        "source_only_samples": len(set(src.keys) - set(piv.keys)),
        "units": len(pairing.piv_unit) - 1, "pivot_tokens": len(piv.ids), "aligned_pivot_tokens": len(piv_ids),
        "source_tokens": len(src.ids), "aligned_source_tokens": len(src_ids), "same_tokenizer": same,
        "timings_s": manifest["timings_s"],
    }
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f, keys=np.array(piv.keys, dtype=object).astype(str), piv_ptr=piv.ptr, piv_ids=piv.ids,
            piv_message=piv.message, piv_turn_end=piv.turn_end, src_keys=np.array(src.keys, dtype=object).astype(str),
            src_ptr=src.ptr, src_row=pairing.src_row, piv_sel=pairing.piv_sel, src_sel=pairing.src_sel,
            src_start=links.src_start, src_stop=links.src_stop, kind=links.kind, cost=links.cost,
            m_src=counts.src, m_piv=counts.piv, m_count=counts.count, shape=np.array([counts.n_src, counts.n_piv]),
            summary=np.array(json.dumps(summary)),
        )
    log.info("%s~%s %s shard %d: %d/%d samples paired, %d pivot tokens aligned of %d (%s)",
             params["pivot"]["name"], params["source"]["name"], mode, shard, summary["paired_samples"],
             summary["pivot_samples"], len(piv_ids), len(piv.ids), cfg["method"])
    return summary


@dataclass
class LinkFile:
    keys: list[str]
    piv_ptr: np.ndarray
    piv_ids: np.ndarray
    piv_message: np.ndarray
    piv_turn_end: np.ndarray
    src_keys: list[str]
    src_ptr: np.ndarray
    src_row: np.ndarray
    piv_sel: np.ndarray
    src_sel: np.ndarray
    links: Links
    counts: MappingCounts
    summary: dict[str, Any]


def load_links(path: str | Path) -> LinkFile:
    if not Path(path).exists():
        raise ArtifactError(f"{path}: missing; run `fusepipe align --step links` for it first")
    with np.load(path) as z:
        n_src, n_piv = (int(x) for x in z["shape"])
        return LinkFile(
            [str(k) for k in z["keys"]], z["piv_ptr"], z["piv_ids"], z["piv_message"], z["piv_turn_end"],
            [str(k) for k in z["src_keys"]], z["src_ptr"], z["src_row"], z["piv_sel"], z["src_sel"],
            Links(z["src_start"], z["src_stop"], z["kind"], z["cost"]),
            MappingCounts(z["m_src"], z["m_piv"], z["m_count"], n_src, n_piv), json.loads(str(z["summary"])),
        )


# -------------------------------------------------------------------------------------------- step: vocab


def run_vocab(params: dict[str, Any], link_paths: list[str | Path], counts_out: str | Path,
              vmap_out: str | Path) -> dict[str, Any]:
    """Σ mapping counts over all shards and modes of the pair, then the vocabulary map by `align.vocab`."""
    cfg = params["align"]
    manifest = Manifest("align.vocab", params, inputs={"links": [str(p) for p in link_paths]})
    with manifest.phase("read"):
        _, src_t, piv_t = tables(params)
        counts = reduce_counts([load_links(p).counts for p in link_paths]) if link_paths else \
            MappingCounts(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64), src_t.size, piv_t.size)
    same = src_t.fingerprint == piv_t.fingerprint
    with manifest.phase("map"):
        if same:
            vmap = np.arange(src_t.size, dtype=np.int32)
        else:
            vmap = vocab_map(cfg["vocab"], src_t, piv_t, counts)
    counts.save(counts_out)
    mapped = np.flatnonzero(vmap >= 0)
    table = pa.table({
        "source_id": pa.array(mapped.astype(np.int32)),
        "pivot_id": pa.array(vmap[mapped].astype(np.int32)),
        "source_token": pa.array([_printable(src_t.text(int(i))) for i in mapped], pa.string()),
        "pivot_token": pa.array([_printable(piv_t.text(int(vmap[i]))) for i in mapped], pa.string()),
        "count": pa.array(counts.lookup(mapped, vmap[mapped]).astype(np.int64)),
    })
    write_parquet(table, vmap_out)
    manifest["strategy"] = "identity (same tokenizer)" if same else cfg["vocab"]
    manifest["mapping_counts"] = counts.summary()
    manifest["vocab"] = {"source": src_t.size, "pivot": piv_t.size, "mapped": len(mapped),
                         "mapped_share": round(len(mapped) / max(src_t.size, 1), 4)}
    manifest.write(Path(vmap_out).parent, {"counts": counts_out, "vocab_map": vmap_out}, name="vocab_manifest.json")
    log.info("%s~%s: %d links over %d pairs; %s map covers %d of %d source ids", params["pivot"]["name"],
             params["source"]["name"], manifest["mapping_counts"]["links"], manifest["mapping_counts"]["pairs"],
             manifest["strategy"], len(mapped), src_t.size)
    return manifest.data


def _printable(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def read_vmap(path: str | Path, n_src: int) -> np.ndarray:
    if not Path(path).exists():
        raise ArtifactError(f"{path}: missing; run `fusepipe align --step vocab` for this pair first")
    t = pq.read_table(path, columns=["source_id", "pivot_id"])
    vmap = np.full(n_src, -1, np.int32)
    vmap[t.column("source_id").to_numpy()] = t.column("pivot_id").to_numpy()
    return vmap


# ------------------------------------------------------------------------------------------ step: project


def _weighted_per_pivot(ptr: np.ndarray, src_pos: np.ndarray, w: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Σ_i w_i · values[i] over each pivot token's linked source tokens (NaN where it has none)."""
    n = len(ptr) - 1
    seg = np.repeat(np.arange(n), np.diff(ptr))
    out = np.bincount(seg, weights=w * values[src_pos], minlength=n)
    return np.where(np.diff(ptr) > 0, out, np.nan).astype(np.float32)


def run_project(params: dict[str, Any], mode: str, shard: int, links_path: str | Path, source_logits: str | Path,
                counts_path: str | Path, vmap_path: str | Path, out: str | Path) -> dict[str, Any]:
    """The source's top-k at every pivot target token of the shard, over pivot ids (schema `aligned`)."""
    cfg = params["align"]
    k = cfg["k"] or params["logits"]["k"]
    pivot, source = params["pivot"]["name"], params["source"]["name"]
    manifest = Manifest("align.project", {**params, "mode": mode}, inputs={"links": str(links_path),
                                                                           "vocab_map": str(vmap_path)})
    with manifest.phase("read"):
        lf = load_links(links_path)
        counts = MappingCounts.load(counts_path)
        vmap = read_vmap(vmap_path, counts.n_src)
        parts = read_logits(source_logits, ("token_ids", "topk_ids", "topk_logprobs", "token_logprob", "entropy",
                                            "nll_sum", "n_bytes", "entropy_kind"))
        src_keys = [key for p in parts for key in p["sample_id"]]
        if src_keys != lf.src_keys:
            raise ArtifactError(f"{source_logits}: its samples differ from those {links_path} was built on; "
                                "rerun the align links step for this shard")

        def cat(name):
            return np.concatenate([p[name] for p in parts]) if parts else np.zeros((0, k) if "topk" in name else 0)

        src_ids_all, topk_ids, topk_lp = cat("token_ids"), cat("topk_ids"), cat("topk_logprobs")
        entropy, token_lp = cat("entropy").astype(np.float64), cat("token_logprob").astype(np.float64)
        per_sample = {name: [v for p in parts for v in p[name]]
                      for name in ("nll_sum", "n_tokens", "n_bytes", "entropy_kind")}
    src_ids, piv_ids = src_ids_all[lf.src_sel], lf.piv_ids[lf.piv_sel]
    with manifest.phase("project"):
        if lf.summary["same_tokenizer"] and np.array_equal(lf.links.src_start, np.arange(len(piv_ids))):
            proj = copy_through(piv_ids, src_ids, topk_ids[lf.src_sel], topk_lp[lf.src_sel])
            proj = Projected(*fit_k(proj.ids, proj.logprobs, k), proj.valid, proj.kind, proj.src_mass)
        else:
            proj = project(lf.links, piv_ids, src_ids, topk_ids[lf.src_sel], topk_lp[lf.src_sel], vmap,
                           n_to_one=cfg["n_to_one"], counts=counts, k=k)
            if cfg["projection"] == "chain":
                proj = chain(proj, lf.links, piv_ids, token_lp[lf.src_sel])
        ptr, src_pos, w = link_weights(lf.links, src_ids, piv_ids, cfg["n_to_one"], counts)
        sel_entropy = _weighted_per_pivot(ptr, src_pos, w, entropy[lf.src_sel])
        sel_nll = _weighted_per_pivot(ptr, src_pos, w, -token_lp[lf.src_sel])
    full = scatter(lf, proj, sel_entropy, sel_nll, k)
    sums = coverage_counts(lf.links, proj, topk_ids[lf.src_sel], topk_lp[lf.src_sel], vmap)
    left_out = len(lf.piv_ids) - len(piv_ids)  # pivot tokens of messages or samples the source lacks
    sums["positions"] += left_out
    sums["unaligned"] += left_out
    src_entropy_sum = [float(entropy[lf.src_ptr[r]:lf.src_ptr[r + 1]].sum()) for r in range(len(lf.src_ptr) - 1)]
    with manifest.phase("write"):
        table = aligned_table(lf, full, pivot, source, mode, k, per_sample, src_entropy_sum)
        write_parquet(table, out, aligned_schema(k), compression="zstd")
    manifest["mode"], manifest["shard"], manifest["k"] = mode, shard, k
    manifest["rows"] = table.num_rows
    manifest["links"] = lf.summary
    manifest["coverage_counts"] = sums
    manifest["coverage"] = coverage_report(sums, vmap)
    manifest["bytes_per_token"] = round(Path(out).stat().st_size / max(len(lf.piv_ids), 1), 2)
    manifest.write(Path(out).parent, {"shard": out}, name=shard_manifest(out).name)
    log.info("%s~%s %s shard %d: %d samples, %d pivot tokens, valid %.3f, mass kept %.3f", pivot, source, mode,
             shard, table.num_rows, len(lf.piv_ids), manifest["coverage"]["valid_share"],
             manifest["coverage"]["mass_kept"])
    return manifest.data


def scatter(lf: LinkFile, proj: Projected, entropy: np.ndarray, nll: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per-position arrays over every pivot target token: the projection where aligned, else a one-hot of the
    pivot's own token with valid=False, kind 0 and NaN source statistics."""
    n = len(lf.piv_ids)
    ids = np.full((n, k), -1, np.int32)
    ids[:, 0] = lf.piv_ids
    lp = np.full((n, k), -np.inf, np.float32)
    lp[:, 0] = 0.0
    out = {"topk_ids": ids, "topk_logprobs": lp, "valid": np.zeros(n, bool), "kind": np.zeros(n, np.int8),
           "src_entropy": np.full(n, np.nan, np.float32), "src_nll": np.full(n, np.nan, np.float32)}
    sel = lf.piv_sel
    out["topk_ids"][sel], out["topk_logprobs"][sel] = proj.ids, proj.logprobs
    out["valid"][sel], out["kind"][sel] = proj.valid, proj.kind
    out["src_entropy"][sel], out["src_nll"][sel] = entropy, nll
    return out


def aligned_table(lf: LinkFile, full: dict[str, np.ndarray], pivot: str, source: str, mode: str, k: int,
                  per_sample: dict[str, list], src_entropy_sum: list[float]) -> pa.Table:
    schema = aligned_schema(k)
    offsets = pa.array(lf.piv_ptr.astype(np.int32))
    rows = lf.src_row  # the source's sample r is row r of its shard (order lf.src_keys)

    def per(name, cast):
        return [cast(per_sample[name][r]) if r >= 0 else None for r in rows]

    columns = {
        "sample_id": pa.array(lf.keys, pa.string()),
        "pivot": pa.array([pivot] * len(lf.keys), pa.string()),
        "source": pa.array([source] * len(lf.keys), pa.string()),
        "mode": pa.array([mode] * len(lf.keys), pa.string()),
        "n_tokens": pa.array(np.diff(lf.piv_ptr).astype(np.int32)),
        "token_ids": list_array(lf.piv_ids.astype(np.int32), offsets, pa.int32()),
        "message_index": list_array(lf.piv_message.astype(np.int16), offsets, pa.int16()),
        "turn_end": list_array(lf.piv_turn_end.astype(bool), offsets, pa.bool_()),
        **{name: list_array(full[name], offsets, pa.from_numpy_dtype(full[name].dtype),
                            full[name].shape[1] if full[name].ndim == 2 else 0)
           for name in ("topk_ids", "topk_logprobs", "valid", "kind", "src_entropy", "src_nll")},
        "src_n_tokens": pa.array(per("n_tokens", int), pa.int32()),
        "src_n_bytes": pa.array(per("n_bytes", int), pa.int32()),
        "src_nll_sum": pa.array(per("nll_sum", float), pa.float64()),
        "src_entropy_sum": pa.array([src_entropy_sum[r] if r >= 0 else None for r in rows], pa.float64()),
        "src_entropy_kind": pa.array(per("entropy_kind", str), pa.string()),
    }
    return pa.table([columns[f.name].cast(f.type) for f in schema], schema=schema)


def read_aligned(path: str | Path) -> pa.Table:
    """An aligned shard, checked against its schema (k from its metadata)."""
    return read_k_table(path, "aligned", aligned_schema, "run the align stage for this pair first")


# ----------------------------------------------------------------------------------------- step: coverage


def run_coverage(params: dict[str, Any], shard_paths: dict[str, list[str | Path]], vmap_path: str | Path,
                 out: str | Path) -> dict[str, Any]:
    """coverage.json from the projected shards' manifests: per mode and overall (docs/align.md)."""
    counts = MappingCounts.load(Path(vmap_path).parent / "ms_counts.npz")
    vmap = read_vmap(vmap_path, counts.n_src)
    per_mode, everything = {}, []
    for mode, paths_ in shard_paths.items():
        sums = []
        for p in paths_:
            m = read_manifest(shard_manifest(p))
            if m is None or "coverage_counts" not in m:
                raise ArtifactError(f"{shard_manifest(p)}: missing or without coverage counts; rerun align project")
            sums.append(m["coverage_counts"])
        if sums:
            per_mode[mode] = coverage_report(merge_counts(sums), vmap)
            everything += sums
    report = {
        "pivot": params["pivot"]["name"], "source": params["source"]["name"],
        "method": params["align"]["method"], "vocab": params["align"]["vocab"],
        "n_to_one": params["align"]["n_to_one"], "projection": params["align"]["projection"],
        **(coverage_report(merge_counts(everything), vmap) if everything else {}),
        "modes": per_mode,
        "mapping_counts": counts.summary(),
    }
    write_json(report, out)
    return report


# ------------------------------------------------------------------------------------------------ driver

STEPS = ("links", "vocab", "project", "coverage")


def run(params: dict[str, Any], workdir: str | Path, step: str, mode: str | None = None,
        shard: int | None = None) -> None:
    """One step of the pair's alignment (`mode`/`shard` narrow the per-shard steps; default: all of them)."""
    from fusepipe import paths
    from fusepipe.logits.stage import voted

    pivot, source = params["pivot"]["name"], params["source"]["name"]
    modes, shards = params["modes"], range(params["logits"]["shards"])
    variant = params.get("variant")  # a recipe's own settings: vocab/project/coverage in a subfolder
    links_at = variant if own_links(variant) else None  # links too when its method differs, else the pair's
    if mode is not None and mode not in modes:
        raise ArtifactError(f"{pivot}~{source}: mode {mode!r} is not aligned for this pair (aligned: "
                            f"{', '.join(modes) or 'none'}); inf needs the source among the generators")
    todo = [(m, s) for m in ([mode] if mode else modes) for s in ([shard] if shard is not None else shards)]
    every = [(m, s) for m in modes for s in shards]
    if step == "links":
        for m, s in todo:
            kw: dict[str, Any] = {}
            if m == "gt":
                kw["pivot_logits"] = paths.logits_shard(workdir, "gt", pivot, s)
            else:
                gens = [paths.gen_shard(workdir, source, j) for j in range(params["gen_shards"])]
                kw["voted_convs"] = voted(paths.data(workdir), paths.vote_choices(workdir), gens, source, s,
                                          params["logits"]["shards"])
            run_links(params, m, s, paths.logits_shard(workdir, m, source, s),
                      paths.align_links(workdir, pivot, source, m, s, links_at), **kw)
    elif step == "vocab":
        run_vocab(params, [paths.align_links(workdir, pivot, source, m, s, links_at) for m, s in every],
                  paths.align_counts(workdir, pivot, source, variant), paths.align_vocab(workdir, pivot, source, variant))
    elif step == "project":
        for m, s in todo:
            run_project(params, m, s, paths.align_links(workdir, pivot, source, m, s, links_at),
                        paths.logits_shard(workdir, m, source, s), paths.align_counts(workdir, pivot, source, variant),
                        paths.align_vocab(workdir, pivot, source, variant),
                        paths.align_shard(workdir, pivot, source, m, s, variant))
    elif step == "coverage":
        shard_paths = {m: [paths.align_shard(workdir, pivot, source, m, s, variant) for s in shards] for m in modes}
        report = run_coverage(params, shard_paths, paths.align_vocab(workdir, pivot, source, variant),
                              paths.align_coverage(workdir, pivot, source, variant))
        log.info("%s~%s: %d positions, valid %.3f, mass kept %.3f, 1-1 %.2f / 1-n %.2f / n-1 %.2f", pivot, source,
                 report.get("positions", 0), report.get("valid_share", 0), report.get("mass_kept", 0),
                 *(report.get("link_share", {}).get(k, 0) for k in ("one_to_one", "one_to_many", "many_to_one")))
    else:
        raise ValueError(f"unknown align step {step!r}; steps: {', '.join(STEPS)}")
