"""The report's "Does fusion beat SFT?" table: the papers' headline claims, checked on this run's toy benchmark.

What each paper reports, and what the table checks for every model the run trained or merged (from the models'
`about` in eval/{model}/results.json):
- a pairwise target (`train.{recipe}.{source}`, FuseChat Table 1's per-source targets): better than SFT on its
  source's own domain (the toy world's `strong_domain`, toy/_manifest.json; on the mean when the run does not say);
- a merge (`merge.{recipe}.{method}`, FuseChat's SCE, InfiFusion's RSAF): better than the pivot and than SFT on the
  mean;
- a unified target (`train.{recipe}.all`, ProFuser Table 1, InfiFusion's UDF), or any other trained target: better
  than SFT on the mean.

Δ = mean over the benchmark items of (correct_model − correct_reference), the items paired by (domain, prompt)
from each model's per-item record (eval/{model}/toy.json `examples`); its 95 % interval is Δ ± 1.96·sd(d)/√n (the
paired difference of two proportions over the same items). Without per-item records: unpaired,
Δ ± 1.96·sqrt(p₁(1−p₁)/n + p₂(1−p₂)/n) from the suites' accuracies and item counts. On "the mean" the items of every
headline domain are pooled (the toy benchmark has the same n per domain, so Δ is the Δ of the headline's mean).
Verdict: "holds" when the interval lies above 0, "reversed" when below it, "tie" when it holds 0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fusepipe.report.headline import Z95

HEADER = ["model", "claim", "on", "Δ", "95 % interval", "n", "verdict"]
LEGEND = ("The papers' claims on this run: a pairwise target beats SFT on its source's own domain (FuseChat), a merge "
          "beats the pivot and SFT on the mean (FuseChat SCE, InfiFusion RSAF), a unified target beats SFT on the mean "
          "(ProFuser, InfiFusion UDF). Δ: accuracy difference over the same benchmark items (paired; unpaired when the "
          "per-item records are missing), 95 % interval. holds: above 0; reversed: below 0; tie: the interval holds 0.")


def per_item(result_path: str | Path) -> dict[tuple[str, str], bool]:
    """{(domain, prompt): correct} from the model's toy suite file, empty when it has no per-item records."""
    path = Path(result_path).parent / "toy.json"
    if not path.is_file():
        return {}
    examples = json.loads(path.read_text()).get("examples") or []
    return {(e["domain"], e["prompt"]): bool(e["correct"]) for e in examples}


def expert_domains(workdir: str | Path) -> dict[str, str]:
    """{source: its own domain} from the toy world's manifest; empty for a run on other models."""
    path = Path(workdir) / "toy" / "_manifest.json"
    if not path.is_file():
        return {}
    models = json.loads(path.read_text()).get("models") or {}
    return {name: m["strong_domain"] for name, m in models.items() if m.get("strong_domain")}


def difference(model: str, ref: str, domains: list[str], results: dict[str, dict[str, Any]],
               items: dict[str, dict[tuple[str, str], bool]], counts: dict[str, dict[str, int]]
               ) -> tuple[float, float, int] | None:
    """(Δ, interval half-width, n items) of `model` minus `ref` over `domains` (headline metric names, `toy_*`);
    None when either lacks an accuracy there."""
    names = [d.removeprefix("toy_") for d in domains]
    a, b = items.get(model, {}), items.get(ref, {})
    keys = [k for k in a if k[0] in names and k in b]
    if keys:
        d = [int(a[k]) - int(b[k]) for k in keys]
        n = len(d)
        mean = sum(d) / n
        var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
        return mean, Z95 * math.sqrt(var / n), n
    pa = [results[model]["metrics"].get(d) for d in domains]
    pb = [results[ref]["metrics"].get(d) for d in domains]
    if any(p is None for p in pa + pb):
        return None
    n = sum(counts.get(model, {}).get(d, 0) for d in domains)
    if not n:
        return None
    p1, p2 = sum(pa) / len(pa), sum(pb) / len(pb)
    return p1 - p2, Z95 * math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n), n


def verdict(delta: float, half: float) -> str:
    if delta - half > 0:
        return "holds"
    if delta + half < 0:
        return "reversed"
    return "tie"


def table(results: dict[str, dict[str, Any]], domains: list[str], pivot: str, sft: str | None,
          items: dict[str, dict[tuple[str, str], bool]], counts: dict[str, dict[str, int]],
          experts: dict[str, str], order: list[str]) -> tuple[list[str], list[list[str]]]:
    """(header, rows of text cells), one row per (model, reference) claim in `order`; empty without SFT."""
    if sft is None or not domains:
        return [], []
    sources = {m for m, r in results.items() if r["about"].get("kind") == "source"}
    rows = []

    def row(model: str, ref: str, on: list[str], where: str) -> None:
        got = difference(model, ref, on, results, items, counts)
        if got is None:
            return
        delta, half, n = got
        rows.append([model, "> SFT" if ref == sft else f"> {ref}", where, f"{delta:+.3f}",
                     f"[{delta - half:+.3f}, {delta + half:+.3f}]", str(n), verdict(delta, half)])

    for model in order:
        about = results[model]["about"]
        kind, target = about.get("kind"), about.get("target")
        if kind == "train" and target in sources:
            own = f"toy_{experts[target]}" if target in experts else None
            if own in domains:
                row(model, sft, [own], f"{own.removeprefix('toy_')} (its source's)")
            else:
                row(model, sft, domains, "mean")
        elif kind == "merge":
            row(model, pivot, domains, "mean")
            row(model, sft, domains, "mean")
        elif kind == "train" and about.get("recipe_kind") != "sft":
            row(model, sft, domains, "mean")  # a unified target (UNIFIED_TARGET) or another recipe's
    return (HEADER, rows) if rows else ([], [])

