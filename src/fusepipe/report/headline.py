"""The report's headline table: per model the accuracy per benchmark domain with its 95 % Wilson interval, the
mean over the domains with its interval, and the mean's Δ against the pivot and the SFT baseline. The same table
leads report/index.html and report/summary.txt (what the CLI and `snakemake all` print at the end).

Intervals: each domain's accuracy p over its n items (n from the suite's eval/{model}/{suite}.json, `tasks.*.n`)
gets the Wilson score interval; shown as `p ±h` with h = (hi - lo) / 2, the interval's half-width (Wilson is not
centred on p: [lo, hi] is in results.csv). The mean over domains is the unweighted mean of the domain accuracies
(= `toy_mean`); its interval treats the pooled items as one proportion: Wilson with p = mean and n = Σ n_domain,
which is exactly the pooled proportion's interval when every domain has the same n (the toy benchmark does).
"""

from __future__ import annotations

import html
import json
import math
import textwrap
from pathlib import Path
from typing import Any

Z95 = 1.96
MAX_DOMAINS = 4  # domain columns the headline shows (model + 4 domains + mean + 2 Δ = 8 at most); the rest below
DOMAIN_ORDER = ("toy_arith", "toy_facts", "toy_strings")
SUBSET_METRICS = ("toy_prompt_set", "toy_not_prompt_set")  # the toy suite's split by the prompt set: not domains
KIND_ORDER = {"pivot": 0, "source": 1, "sft": 2, "train": 3, "merge": 4}


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion p over n trials:
    (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n); z = 1.96 for 95 %."""
    if n <= 0:
        return float("nan"), float("nan")
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return max((centre - spread) / denom, 0.0), min((centre + spread) / denom, 1.0)


def half_width(lo: float, hi: float) -> float:
    """h = (hi - lo) / 2, what the headline shows after ±."""
    return (hi - lo) / 2


def mean_interval(ps: list[float], ns: list[int], z: float = Z95) -> tuple[float, float, float, int]:
    """(m, lo, hi, N): m = Σp_d / D, the unweighted mean over domains; [lo, hi] = wilson(m, N), N = Σn_d (the
    pooled items as one proportion; exact when every n_d is equal)."""
    m = sum(ps) / len(ps)
    n = sum(ns)
    lo, hi = wilson(m, n, z) if n > 0 and len(ns) == len(ps) else (float("nan"), float("nan"))
    return m, lo, hi, n


def _metric_of_task(task: str) -> str:
    """A suite file's task name as the metric it feeds: `fusepipe_toy_arith` -> `toy_arith`, lm-eval tasks as is."""
    return "toy_" + task.removeprefix("fusepipe_toy_") if task.startswith("fusepipe_toy_") else task


def item_counts(result_path: str | Path, suites: list[str]) -> dict[str, int]:
    """{metric: n items} from the model's suite files beside results.json (eval/{model}/{suite}.json): each task's
    `n` (lm-eval's sample_len), else the toy suite's per-domain count of `examples`."""
    counts: dict[str, int] = {}
    for suite in suites:
        path = Path(result_path).parent / f"{suite}.json"
        if not path.is_file():
            continue
        doc = json.loads(path.read_text())
        for task, m in (doc.get("tasks") or {}).items():
            if isinstance(m, dict) and isinstance(m.get("n"), int) and m["n"] > 0:
                counts[_metric_of_task(task)] = m["n"]
        if doc.get("kind") == "toy":
            seen: dict[str, int] = {}
            for ex in doc.get("examples") or []:
                seen[f"toy_{ex['domain']}"] = seen.get(f"toy_{ex['domain']}", 0) + 1
            counts |= {k: v for k, v in seen.items() if k not in counts}
    return counts


def domains_of(results: dict[str, dict[str, Any]]) -> list[str]:
    """The headline's domain metrics: the `toy` suite's per-domain accuracies when the run has it, else the first
    accuracy suite's tasks (not `rm`); `*_mean` left out (the headline computes the mean)."""
    suites: dict[str, set[str]] = {}
    for r in results.values():
        for s, m in (r.get("suites") or {}).items():
            suites.setdefault(s, set()).update(k for k in m if not k.endswith("_mean"))
    if not suites:  # results without per-suite metrics: the toy domains among the metrics
        return [d for d in DOMAIN_ORDER if any(d in r["metrics"] for r in results.values())]
    name = "toy" if "toy" in suites else next((s for s in sorted(suites) if s != "rm"), None)
    if name is None:
        return []
    return sorted(suites[name] - set(SUBSET_METRICS),
                  key=lambda k: (DOMAIN_ORDER.index(k) if k in DOMAIN_ORDER else len(DOMAIN_ORDER), k))


def role_of(about: dict[str, Any]) -> str:
    """pivot, source, sft (the trained target of a recipe of kind sft), train (fusion targets), merge."""
    if about.get("recipe_kind") == "sft":
        return "sft"
    return str(about.get("kind", ""))


def order_key(model: str, about: dict[str, Any]) -> tuple[int, str]:
    """Row order: pivot, sources, SFT, fusion targets, merges (then anything else), by name within each."""
    return KIND_ORDER.get(role_of(about), len(KIND_ORDER)), model


def headline_rows(results: dict[str, dict[str, Any]], counts: dict[str, dict[str, int]], pivot: str,
                  sft: str | None) -> tuple[list[str], list[dict[str, Any]]]:
    """Every domain metric (`columns` shows the first MAX_DOMAINS) and per model, in order_key order: {model, role,
    per domain (p, lo, hi, n), mean (m, lo, hi, N) over every domain, Δpivot and Δsft of the mean}."""
    domains = domains_of(results)
    rows = []
    for model, r in sorted(results.items(), key=lambda kv: order_key(kv[0], kv[1]["about"])):
        row: dict[str, Any] = {"model": model, "role": role_of(r["about"])}
        ps, ns = [], []
        for d in domains:
            p, n = r["metrics"].get(d), counts.get(model, {}).get(d)
            row[d] = None if p is None else (p, *(wilson(p, n) if n else (None, None)), n)
            if p is not None:
                ps.append(p)
                if n:
                    ns.append(n)
        row["mean"] = mean_interval(ps, ns) if ps and len(ps) == len(domains) else None
        rows.append(row)
    by = {r["model"]: r for r in rows}
    for row in rows:
        for ref, tag in ((pivot, "Δpivot"), (sft, "Δsft")):
            if ref in by and row["mean"] and by[ref]["mean"]:
                row[tag] = row["mean"][0] - by[ref]["mean"][0]
            else:
                row[tag] = None
    return domains, rows


def columns(domains: list[str], sft: str | None) -> list[str]:
    """The headline's columns: model, ≤ MAX_DOMAINS domains, mean, Δpivot, and Δsft when the run has an SFT model."""
    return ["model", *domains[:MAX_DOMAINS], "mean", "Δpivot", *(["Δsft"] if sft else [])]


HEADERS = {"mean": "mean", "Δpivot": "Δ pivot", "Δsft": "Δ SFT"}


def header(col: str) -> str:
    """Short column titles: `toy_arith` -> `arith`."""
    return HEADERS.get(col, col.removeprefix("toy_"))


def estimate(cell: tuple | None) -> str:
    """`0.840 ±0.072` (p and the Wilson half-width), `0.840` without n, `-` without a value."""
    if cell is None:
        return "-"
    p, lo, hi = cell[0], cell[1], cell[2]
    if lo is None or hi is None or math.isnan(lo):
        return f"{p:.3f}"
    return f"{p:.3f} ±{half_width(lo, hi):.3f}"


def cell_text(row: dict[str, Any], col: str) -> str:
    if col == "model":
        return row["model"]
    if col.startswith("Δ"):
        return "-" if row.get(col) is None else f"{row[col]:+.3f}"
    return estimate(row.get(col))


def legend(domains: list[str], rows: list[dict[str, Any]], pivot: str, sft: str | None, width: int = 120) -> str:
    """The lines under the headline: what ± is, n, how the mean's interval is made, what the Δ columns compare."""
    per = {d: sorted({r[d][3] for r in rows if r.get(d) and r[d][3]}) for d in domains}
    ns = sorted({n for v in per.values() for n in v})
    if not ns:
        n = "n = no item counts in the evaluation outputs, so no intervals"
    elif len(ns) == 1:
        n = f"n = {ns[0]} items per domain"
    elif all(len(v) == 1 for v in per.values()):
        n = f"n = {' / '.join(str(v[0]) for v in per.values())} items ({' / '.join(header(d) for d in per)})"
    else:
        n = f"n = {ns[0]}-{ns[-1]} items per domain"
    more = domains[MAX_DOMAINS:]
    words = (f"Accuracy ±95 % Wilson interval (half-width (hi-lo)/2; lo, hi in results.csv), {n}. Mean: over the "
             f"{len(domains)} domains, its interval with the pooled items as one proportion. Δ: the mean minus that of "
             f"the pivot ({pivot})" + (f" and of the SFT baseline ({sft})." if sft else "; no SFT model in this run, so "
                                        "no Δ SFT column.")
             + (f" Not shown here (see index.html): {', '.join(more)}." if more else ""))
    return textwrap.fill(words, width)


def text(domains: list[str], rows: list[dict[str, Any]], sft: str | None) -> str:
    """The headline as fixed-width text (model column as wide as the longest name, the rest right-aligned)."""
    cols = columns(domains, sft)
    table = [[header(c) for c in cols]] + [[cell_text(r, c) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths,
                                                                                                   strict=True)))
                     .rstrip() for line in table)


def html_table(domains: list[str], rows: list[dict[str, Any]], sft: str | None) -> str:
    """The headline as an HTML table (class `headline`), the same cells as `text`."""
    cols = columns(domains, sft)
    head = "".join(f"<th>{html.escape(header(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell_text(r, c))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<table class='headline'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def csv_fields(domains: list[str], row: dict[str, Any]) -> dict[str, Any]:
    """results.csv's interval columns of one row: n, lo95, hi95 per domain and for the mean (`mean`)."""
    out: dict[str, Any] = {}
    for d in domains:
        cell = row.get(d)
        out |= {f"n:{d}": cell[3] if cell else None, f"lo95:{d}": cell[1] if cell else None,
                f"hi95:{d}": cell[2] if cell else None}
    m = row.get("mean")
    ok = m is not None and not math.isnan(m[1])
    out |= {"mean": m[0] if m else None, "n:mean": m[3] if m else None, "lo95:mean": m[1] if ok else None,
            "hi95:mean": m[2] if ok else None}
    return out
