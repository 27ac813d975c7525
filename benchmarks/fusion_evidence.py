"""Why fusion does or does not beat SFT on a finished toy run: two tables from its artifacts.

1. Benchmark accuracy split by whether the item's prompt is in the fusion data with a reference ("ref"), in the
   prompt set without one ("prompt", `toy/data/prompts.jsonl`: only the inference mode can learn it) or nowhere
   ("unseen"), per model and domain (from `eval/{model}/toy.json` and `toy/data/`).
2. Where the experts' knowledge goes: per source and domain of the fusion ground truth, the share of assistant
   tokens whose top-1 is the ground-truth token and the mean probability of that token, in the source's own
   vocabulary (`logits/gt`), aligned onto the pivot (`align/PIVOT~SRC/gt`, the run's projection rule) and, with
   --variants, in other aligned variants folders (e.g. `vocab-mined`, written by the ablations or by hand).

    python benchmarks/fusion_evidence.py results [--variants vocab-mined vocab-em]
"""

from __future__ import annotations

import argparse
import glob
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from fusepipe.logits.store import read_shard

DOMAINS = ("arith", "facts", "strings")


PROMPT_SET = "prompts.jsonl"
KINDS = ("ref", "prompt", "unseen")


def fusion_texts(toy: Path) -> tuple[str, str]:
    """(the reference files' text, the prompt set's text), to look prompts up in (JSON-escaped as the files hold
    them)."""
    texts, prompts = [], ""
    for f in sorted((toy / "data").iterdir()):
        if f.name.startswith("benchmark"):
            continue
        if f.name == PROMPT_SET:
            prompts = f.read_text()
            continue
        texts.append(json.dumps(pq.read_table(f).to_pylist()) if f.suffix == ".parquet" else f.read_text())
    return "\n".join(texts), prompts


def kind_of(prompt: str, refs: str, prompts: str) -> str:
    key = json.dumps(prompt)[1:-1]
    return "ref" if key in refs else "prompt" if key in prompts else "unseen"


def seen_unseen(results: Path) -> None:
    refs, prompts = fusion_texts(results / "toy")
    print("model".ljust(30) + "".join(f"{d + ' ' + k:>15}" for d in DOMAINS for k in KINDS))
    for f in sorted(glob.glob(str(results / "eval" / "*" / "toy.json"))):
        counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for e in json.loads(Path(f).read_text())["examples"]:
            c = counts[(e["domain"], kind_of(e["prompt"], refs, prompts))]
            c[0] += bool(e["correct"])
            c[1] += 1
        row = "".join(f"{'{}/{}'.format(*counts[(d, k)]):>15}" for d in DOMAINS for k in KINDS)
        print(Path(f).parent.name.ljust(30) + row)


def agreement(results: Path, variants: list[str]) -> None:
    domain_of = dict(pl.read_parquet(results / "data" / "train.parquet", columns=["sample_id", "source"]).iter_rows())
    pivot = json.loads((results / "toy" / "_manifest.json").read_text())["source_advantage"]["arith"]["pivot"]
    models = sorted(p.name for p in (results / "logits" / "gt").iterdir())
    print("\ntop-1 = ground truth / mean p(ground truth), per domain of the fusion data")
    print("model / view".ljust(40) + "".join(f"{d:>16}" for d in DOMAINS))

    def show(name, stats):
        print(name.ljust(40) + "".join(
            f"{stats[d][1] / max(stats[d][0], 1):8.3f}/{stats[d][2] / max(stats[d][0], 1):.3f}" for d in DOMAINS))

    for model in models:
        stats = defaultdict(lambda: [0, 0, 0.0])
        for f in sorted(glob.glob(str(results / "logits" / "gt" / model / "shard-*.parquet"))):
            for s in read_shard(f):
                st = stats[domain_of[s.sample_id]]
                ids = np.asarray(s.token_ids)
                st[0] += len(ids)
                st[1] += int((np.asarray(s.topk_ids)[:, 0] == ids).sum())
                st[2] += float(np.exp(np.asarray(s.token_logprob, np.float64)).sum())
        show(f"{model} (own vocabulary)", stats)
        if model == pivot:
            continue
        for variant in ["", *variants]:
            folder = results / "align" / f"{pivot}~{model}" / variant / "gt"
            if not folder.exists():
                continue
            stats = defaultdict(lambda: [0, 0, 0.0])
            for f in sorted(folder.glob("shard-*.parquet")):
                for row in pq.read_table(f).to_pylist():
                    st = stats[domain_of[row["sample_id"]]]
                    for g, ki, kl, v in zip(row["token_ids"], row["topk_ids"], row["topk_logprobs"], row["valid"]):
                        if not v:
                            continue
                        st[0] += 1
                        st[1] += ki[0] == g
                        st[2] += float(np.exp(kl[list(ki).index(g)])) if g in ki else 0.0
            show(f"  aligned {variant or '(run)'}", stats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path)
    ap.add_argument("--variants", nargs="*", default=[])
    args = ap.parse_args()
    seen_unseen(args.results)
    agreement(args.results, args.variants)


if __name__ == "__main__":
    main()
