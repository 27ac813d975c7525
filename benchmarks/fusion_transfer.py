"""Distillation transfer on a finished run: what each trained model took from each expert beyond the ground truth
(src/fusepipe/evaluate/transfer.py). Per expert, on its domain's fusion data (ground-truth mode), against the
expert's distributions aligned onto the pivot: GT NLL, cross-entropy and KL to the teacher, top-1 = GT, and the
student's mass on the teacher's top-1 where that is not the ground-truth token.

    python benchmarks/fusion_transfer.py results [--aligned-variant chain]
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

from fusepipe.evaluate.transfer import METRICS, examples_of, measure, teacher_rows

EXPERTS = {"qwen-arith": "arith", "mistral-facts": "facts", "gpt2-strings": "strings"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--pivot", default="llama-pivot")
    ap.add_argument("--recipe", default="fusechat", help="whose ground-truth targets give the examples")
    ap.add_argument("--aligned-variant", default="", help="a subfolder of align/{pivot}~{source}/ (e.g. vocab-em)")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    res = args.results
    pivot = {"name": args.pivot, "path": str(res / "toy" / "models" / args.pivot)}
    students = {"pivot": pivot["path"]}
    students |= {p.split("/train/")[1].removesuffix("/model"): p
                 for p in sorted(glob.glob(str(res / "train" / "*" / "*" / "model")))}
    students |= {p.split("/merge/")[1].removesuffix("/model"): p
                 for p in sorted(glob.glob(str(res / "merge" / "*" / "*" / "model")))}
    figures = {}
    for source, domain in EXPERTS.items():
        folder = res / "align" / f"{args.pivot}~{source}" / args.aligned_variant / "gt"
        examples = examples_of(res, args.recipe, source, pivot, domain)
        teachers = teacher_rows(sorted(glob.glob(str(folder / "shard-*.parquet"))), {e.key for e in examples})
        print(f"\n{source} on {domain} ({len(examples)} conversations; teacher {folder.relative_to(res)})")
        print("student".ljust(30) + "".join(f"{m:>12}" for m in METRICS))
        for name, path in students.items():
            m = measure(path, examples, teachers)
            figures[f"{source}/{name}"] = m
            print(name.ljust(30) + "".join(f"{m[k]:>12.4f}" if isinstance(m[k], float) else f"{m[k]:>12}"
                                           for k in METRICS))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
