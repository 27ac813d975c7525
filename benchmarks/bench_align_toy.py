"""Alignment options on the toy world: the paper's settings against the options beyond it, on real captures.

    PYTHONPATH=src python benchmarks/bench_align_toy.py [--pipeline DIR]

DIR is a folder where `snakemake --cores 2 all` ran (default: the current one). For every (pivot, source) pair of
its config and both modes, each variant reruns links → vocab → project into a temporary folder and reports:
- `core-s`: CPU seconds of the three steps (all shards and modes of the pair);
- `same links`: share of pivot tokens linked to exactly the source tokens the faithful DTW links them to;
- `valid`, `mass kept`, the link kinds (coverage.json);
- `q(token)`: mean projected probability of the pivot's own next token, in mode inf (the source wrote that text
  and is confident, so a good alignment keeps its probability on the pivot's token), beside `p own`, the
  source's mean probability of its own tokens there (the ceiling); `hit@1` the share where it is the top id.
The baseline is the paper's setting (faithful DTW, MS map, weighted many-to-one); ratios are against it.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path

import numpy as np
import yaml

from fusepipe import paths
from fusepipe import pipeline as fppipeline
from fusepipe.align import stage
from fusepipe.logits.stage import voted
from fusepipe.logits.store import decoded_row_groups

VARIANTS = {
    "paper (faithful, ms, weighted)": {},
    "band 8": {"method": "band", "band": 8},
    "band 32": {"method": "band", "band": 32},
    "offsets": {"method": "offsets"},
    "vocab ms_reference": {"vocab": "ms_reference"},
    "vocab mined": {"vocab": "mined"},
    "vocab em": {"vocab": "em"},
    "n_to_one last": {"n_to_one": "last"},
    "offsets + ms_reference": {"method": "offsets", "vocab": "ms_reference"},
}


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_variant(params: dict, results: Path, out: Path) -> dict:
    pivot, source = params["pivot"]["name"], params["source"]["name"]
    shards = range(params["logits"]["shards"])
    t0 = cpu()
    links = []
    for mode in params["modes"]:
        for s in shards:
            kw = {}
            if mode == "gt":
                kw["pivot_logits"] = paths.logits_shard(results, "gt", pivot, s)
            else:
                gens = [paths.gen_shard(results, source, j) for j in range(params["gen_shards"])]
                kw["voted_convs"] = voted(paths.data(results), paths.vote_choices(results), gens, source, s,
                                          len(shards))
            links.append(out / f"{mode}-{s}.npz")
            stage.run_links(params, mode, s, paths.logits_shard(results, mode, source, s), links[-1], **kw)
    stage.run_vocab(params, links, out / "ms_counts.npz", out / "vocab_map.parquet")
    shard_paths = {}
    for mode in params["modes"]:
        for s in shards:
            shard_paths.setdefault(mode, []).append(out / mode / f"shard-{s:05d}.parquet")
            stage.run_project(params, mode, s, out / f"{mode}-{s}.npz", paths.logits_shard(results, mode, source, s),
                              out / "ms_counts.npz", out / "vocab_map.parquet", shard_paths[mode][-1])
    seconds = cpu() - t0
    cov = stage.run_coverage(params, shard_paths, out / "vocab_map.parquet", out / "coverage.json")
    starts = np.concatenate([stage.load_links(p).links.src_start for p in links])
    stops = np.concatenate([stage.load_links(p).links.src_stop for p in links])
    q, hit = [], []
    for p in shard_paths.get("inf", []):
        t = stage.read_aligned(p)
        tok = np.concatenate([np.asarray(x, np.int32) for x in t.column("token_ids").to_pylist()])
        ids = np.concatenate([np.asarray(x, np.int32) for x in t.column("topk_ids").to_pylist()])
        lp = np.concatenate([np.asarray(x, np.float32) for x in t.column("topk_logprobs").to_pylist()])
        q.append(np.where(ids == tok[:, None], np.exp(lp), 0).sum(1))
        hit.append(ids[:, 0] == tok)
    return {"seconds": seconds, "coverage": cov, "starts": starts, "stops": stops,
            "q": float(np.concatenate(q).mean()) if q else float("nan"),
            "hit": float(np.concatenate(hit).mean()) if hit else float("nan")}


def own_probability(results: Path, source: str, shards: int) -> float:
    probs = []
    for s in range(shards):
        for flat in decoded_row_groups(paths.logits_shard(results, "inf", source, s), ["token_logprob"]):
            probs.append(np.exp(flat["token_logprob"]))
    return float(np.concatenate(probs).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default=".", help="folder where `snakemake all` ran")
    args = ap.parse_args()
    root = Path(args.pipeline).resolve()
    raw = yaml.safe_load((root / "config" / "config.yaml").read_text())
    cfg = fppipeline.load_dict({**raw, "workdir": str(root / raw.get("workdir", "results"))})
    results = Path(cfg.workdir)
    print(f"toy world at {results}; pivot {cfg.pivot.name}; modes {cfg.logits.modes}; shards {cfg.logits.shards}")
    head = (f"{'variant':32} {'core-s':>7} {'×paper':>7} {'same links':>10} {'valid':>6} {'mass kept':>9} "
            f"{'1-1/1-n/n-1':>15} {'q(token)':>8} {'hit@1':>6}")
    for source in [m.name for m in cfg.sources]:
        base_params = fppipeline.stage_slice(cfg, "align", source)
        print(f"\n{cfg.pivot.name} ~ {source}: p own (source's mean probability of its own inf tokens) "
              f"{own_probability(results, source, cfg.logits.shards):.3f}")
        print(head)
        base = None
        with tempfile.TemporaryDirectory() as tmp:  # warm-up: numba's cache, tokenizer files, page cache
            run_variant(base_params, results, Path(tmp))
        for name, over in VARIANTS.items():
            params = {**base_params, "align": {**base_params["align"], **over}}
            with tempfile.TemporaryDirectory() as tmp:
                r = run_variant(params, results, Path(tmp))
            if base is None:
                base = r
            same = float(np.mean((r["starts"] == base["starts"]) & (r["stops"] == base["stops"])))
            c, ls = r["coverage"], r["coverage"]["link_share"]
            kinds = f"{ls['one_to_one']:.2f}/{ls['one_to_many']:.2f}/{ls['many_to_one']:.2f}"
            print(f"{name:32} {r['seconds']:7.2f} {r['seconds'] / base['seconds']:7.2f} {same:10.3f} "
                  f"{c['valid_share']:6.3f} {c['mass_kept']:9.3f} {kinds:>15} {r['q']:8.3f} {r['hit']:6.3f}")


if __name__ == "__main__":
    main()
