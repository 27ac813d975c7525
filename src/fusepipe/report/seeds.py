"""`fusepipe seeds RUN...`: the headline over runs of different world seeds (each RUN a workdir where `snakemake all`
finished, e.g. `results` and `results-seed1` from `--configfile config/seed1.yaml`).

Per model present in every run: each accuracy metric is the mean over the runs, p = Σ_s p_s / S, and its 95 %
interval is Wilson's on the pooled items, n = Σ_s n_s (exactly the pooled proportion's interval when every run has
the same n, as the toy benchmark does); the mean over domains and the Δ columns are then the single-run headline's
(fusepipe.report.headline). Below it, the mean of each run on its own and its Δ SFT, so one can see whether an effect
holds on every seed, and with a prompt set the "where the accuracy comes from" table over the runs.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any

from fusepipe.errors import ArtifactError
from fusepipe.report import headline, prompt_set
from fusepipe.report.stage import baseline_of


def load_run(workdir: str | Path) -> dict[str, tuple[dict[str, Any], Path]]:
    """{model: (results.json document, its path)} of one finished run."""
    found = sorted(glob.glob(str(Path(workdir) / "eval" / "*" / "results.json")))
    if not found:
        raise ArtifactError(f"{workdir}: no eval/*/results.json; run `snakemake all` there first (or give the "
                            "workdir of a finished run)")
    out = {}
    for p in found:
        doc = json.loads(Path(p).read_text())
        out[doc["model"]] = (doc, Path(p))
    return out


def merge(runs: list[dict[str, tuple[dict[str, Any], Path]]]) -> tuple[dict[str, dict[str, Any]],
                                                                       dict[str, dict[str, int]],
                                                                       dict[str, dict[str, int]]]:
    """(results, headline item counts, prompt-set item counts) over the runs, for the models every run has: metrics
    that every run reports averaged, counts summed."""
    common = [m for m in runs[0] if all(m in r for r in runs[1:])]
    if not common:
        raise ArtifactError("the runs share no evaluated model; give runs of the same config with different seeds")
    results, counts, subset_n = {}, {}, {}
    for model in common:
        docs = [r[model][0] for r in runs]
        keys = [k for k in docs[0]["metrics"] if all(d["metrics"].get(k) is not None for d in docs)]
        metrics = {k: sum(d["metrics"][k] for d in docs) / len(docs) for k in keys}
        suites = {s: {k: v for k, v in metrics.items() if k in m} for s, m in (docs[0].get("suites") or {}).items()}
        results[model] = {**docs[0], "metrics": metrics, "suites": suites}
        counts[model], subset_n[model] = {}, {}
        for r in runs:
            doc, path = r[model]
            for k, n in headline.item_counts(path, list(doc.get("suites") or {})).items():
                counts[model][k] = counts[model].get(k, 0) + n
            for k, n in prompt_set.counts(path).items():
                subset_n[model][k] = subset_n[model].get(k, 0) + n
    return results, counts, subset_n


def per_run_table(runs: list[dict[str, tuple[dict[str, Any], Path]]], names: list[str], order: list[str],
                  sft: str | None) -> str:
    """Each run's own mean accuracy (the headline's domains) and Δ SFT, per model: does an effect hold on every run."""
    domains = headline.domains_of({m: d for m, (d, _) in runs[0].items()})

    def mean(doc):
        ps = [doc["metrics"].get(d) for d in domains]
        return None if not ps or any(p is None for p in ps) else sum(ps) / len(ps)

    header = ["model", *(f"mean {n}" for n in names), *((f"Δ SFT {n}" for n in names) if sft else ())]
    rows = []
    for model in order:
        means = [mean(r[model][0]) for r in runs]
        cells = [model, *("-" if v is None else f"{v:.3f}" for v in means)]
        if sft:
            base = [mean(r[sft][0]) for r in runs]
            cells += ["-" if a is None or b is None else f"{a - b:+.3f}" for a, b in zip(means, base, strict=True)]
        rows.append(cells)
    return prompt_set.text(header, rows)


def summary(workdirs: list[str | Path]) -> str:
    """The text `fusepipe seeds` prints."""
    runs = [load_run(w) for w in workdirs]
    names = [Path(w).name for w in workdirs]
    if len(set(names)) < len(names):  # e.g. two runs' results/ folders: name them by the paths given
        names = [str(w) for w in workdirs]
    results, counts, subset_n = merge(runs)
    pivot = next((m for m, r in results.items() if headline.role_of(r["about"]) == "pivot"), "")
    sft = baseline_of(results)
    domains, rows = headline.headline_rows(results, counts, pivot, sft)
    order = [r["model"] for r in rows]
    title = (f"Headline over {len(runs)} runs ({', '.join(names)}): accuracy per domain and mean, each the mean of "
             "the runs (±95 % interval on the pooled items), Δ of the mean")
    out = [title,
           headline.text(domains, rows, sft), headline.legend(domains, rows, pivot, sft),
           "", "Per run: mean accuracy and its Δ SFT", per_run_table(runs, names, order, sft)]
    moved = prompt_set.table(results, subset_n, order, sft)
    if moved[1]:
        out += ["", "Where the accuracy comes from, over the runs", prompt_set.text(*moved)]
    return "\n".join(out)
