"""Alignment efficiency (issue 16): how much of what fusion transfers from the arith expert survives the token
alignment, against its homogeneous twin (the same expert trained with the pivot's tokenizer: identity alignment).
Reads a finished `snakemake all --configfile config/twin.yaml` run.

Two gains of a FuseChat target fused with source X over SFT, on the arith domain, and their ratio
efficiency = gain(heterogeneous expert) / gain(twin):

- accuracy: acc(target_X) − acc(SFT) on the arith benchmark (±95 % Wilson half-widths printed);
- distribution: KL(twin ‖ SFT) − KL(twin ‖ target_X) on the arith fusion data, the twin's own distributions as the
  common reference of the expert's knowledge in the pivot's vocabulary (evaluate/transfer.py). A target that
  learned nothing from its source scores 0; the twin's own target scores the most a perfect alignment could.
  Any fusion target moves a little towards the twin (every expert's distributions are sharper than the pivot's),
  so the script also prints the efficiency net of an unrelated expert's target (mistral-facts):
  (gain_hetero − gain_other) / (gain_twin − gain_other).

    python benchmarks/alignment_efficiency.py results-twin [--seeds results-twin-s1 ...]
"""

from __future__ import annotations

import argparse
import glob
import json
from pathlib import Path

from fusepipe.evaluate.transfer import examples_of, measure, teacher_rows
from fusepipe.report.headline import half_width, wilson

PIVOT, HETERO, TWIN, OTHER = "llama-pivot", "qwen-arith", "llama-arith-twin", "mistral-facts"
DOMAIN = "arith"


def accuracy(results: Path, model: str) -> tuple[float, int]:
    doc = json.loads((results / "eval" / model / "toy.json").read_text())
    n = doc["tasks"][f"fusepipe_toy_{DOMAIN}"]["n"]
    return doc["metrics"][f"toy_{DOMAIN}"], n


def one_run(results: Path) -> dict[str, float]:
    if not (results / "train" / "fusechat" / TWIN / "model").is_dir():
        raise SystemExit(f"{results}: no FuseChat target of {TWIN}; run `snakemake all --cores 2 --configfile "
                         "config/twin.yaml` first (its workdir is results-twin)")
    pivot = {"name": PIVOT, "path": str(results / "toy" / "models" / PIVOT)}
    students = {"pivot": pivot["path"], "sft": f"{results}/train/sft/sft/model"}
    students |= {s: f"{results}/train/fusechat/{s}/model" for s in (HETERO, TWIN, OTHER)}
    examples = examples_of(results, "fusechat", TWIN, pivot, DOMAIN)
    shards = sorted(glob.glob(str(results / "align" / f"{PIVOT}~{TWIN}" / "gt" / "shard-*.parquet")))
    teachers = teacher_rows(shards, {e.key for e in examples})
    kl = {name: measure(path, examples, teachers)["kl_teacher"] for name, path in students.items()}
    eval_id = {"pivot": PIVOT, "sft": "train.sft.sft"}
    acc = {name: accuracy(results, eval_id.get(name, f"train.fusechat.{name}")) for name in students}
    print(f"\n{results}: arith, {len(examples)} fusion conversations; reference teacher: {TWIN} (identity alignment)")
    print(f"{'model':28}{'arith acc':>16}{'Δ SFT':>9}{'KL(twin‖·)':>12}{'gain':>8}")
    for name in students:
        a, n = acc[name]
        h = half_width(*wilson(a, n))
        print(f"{name:28}{a:>10.3f} ±{h:.3f}{a - acc['sft'][0]:>+9.3f}{kl[name]:>12.3f}{kl['sft'] - kl[name]:>8.3f}")
    out = {"gain_kl_hetero": kl["sft"] - kl[HETERO], "gain_kl_twin": kl["sft"] - kl[TWIN],
           "gain_kl_other": kl["sft"] - kl[OTHER], "gain_acc_hetero": acc[HETERO][0] - acc["sft"][0],
           "gain_acc_twin": acc[TWIN][0] - acc["sft"][0]}
    out["efficiency_kl"] = out["gain_kl_hetero"] / out["gain_kl_twin"]
    out["efficiency_kl_net"] = ((out["gain_kl_hetero"] - out["gain_kl_other"])
                                / (out["gain_kl_twin"] - out["gain_kl_other"]))
    print(f"efficiency (distribution) = {out['gain_kl_hetero']:.3f} / {out['gain_kl_twin']:.3f} = "
          f"{out['efficiency_kl']:.2f}; net of an unrelated expert's target ({out['gain_kl_other']:.3f}): "
          f"{out['efficiency_kl_net']:.2f}")
    print(f"accuracy gains over SFT: heterogeneous {out['gain_acc_hetero']:+.3f}, twin {out['gain_acc_twin']:+.3f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path, nargs="+", help="finished config/twin.yaml runs (one per seed)")
    args = ap.parse_args()
    runs = [one_run(r) for r in args.results]
    if len(runs) > 1:
        mean = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
        print(f"\nmean over {len(runs)} runs: efficiency (distribution) {mean['efficiency_kl']:.2f}, net "
              f"{mean['efficiency_kl_net']:.2f}; accuracy gains "
              f"heterogeneous {mean['gain_acc_hetero']:+.3f}, twin {mean['gain_acc_twin']:+.3f}")


if __name__ == "__main__":
    main()
