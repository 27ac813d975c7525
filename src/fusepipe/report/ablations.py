"""`fusepipe ablations`: report/ablations.md and report/ablations.html, one table per ablation grid.

Per grid value: the evaluated model, the toy benchmark's exact match per domain and their mean, the reward-model
suite's mean raw score over the RMs and the win rate against the pivot (with a prompt set in the data, also the
accuracy on the benchmark items only the inference mode can teach: `toy_prompt_set`), and the deltas of the mean,
the RM score and the win rate against the grid's reference (the paper's choice). The vocab grid adds the alignment coverage
(valid share, probability mass kept; mean over the pairs). A pivot row gives the scale. Inputs are the models'
eval/{model}/results.json (`params` from `fusepipe.ablations.report_params`).

The tokenizer grid has its own table (`tokenizer_table`): per alignment setting, the source's target's KL to the
control, its gain over SFT, the efficiency and the net efficiency (fusepipe.evaluate.efficiency, from
ablations/tokenizer.json), the accuracy on the control's domain (`ablations.tokenizer.metric`) and its gain over
SFT, and the pair's coverage; rows for SFT, the control's own target and the unrelated source's target give the
scale.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("fusepipe.report")

DOMAINS = ("toy_arith", "toy_facts", "toy_strings")
DELTAS = ("toy_mean", "rm_mean", "win_rate_vs_pivot")


def metrics_of(doc: dict[str, Any]) -> dict[str, float | None]:
    """The table's metrics from one results.json: domains, toy_mean, rm_mean (mean raw score over the RMs), win
    rate; None where the run lacks the suite."""
    m = doc.get("metrics", {})
    rms = [v for k, v in sorted(m.items()) if k.startswith("rm_") and v is not None]
    out: dict[str, float | None] = {d: m.get(d) for d in DOMAINS}
    out["toy_mean"] = m.get("toy_mean")
    out["rm_mean"] = sum(rms) / len(rms) if rms else None
    out["win_rate_vs_pivot"] = m.get("win_rate_vs_pivot")
    out["toy_prompt_set"] = m.get("toy_prompt_set")  # the items only the inference mode can teach (a prompt set)
    return out


def _coverage(paths_: list[str]) -> dict[str, float | None]:
    docs = [json.loads(Path(p).read_text()) for p in paths_ if Path(p).is_file()]

    def mean(key):
        vals = [d[key] for d in docs if d.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    return {"valid_share": mean("valid_share"), "mass_kept": mean("mass_kept")}


def grid_tables(params: dict[str, Any], workdir: str | Path) -> list[dict[str, Any]]:
    """Per grid: title, columns and rows (plain values; None where missing)."""
    from fusepipe import paths

    def results(model: str) -> dict[str, Any] | None:
        p = Path(paths.eval_results(workdir, model))
        return json.loads(p.read_text()) if p.is_file() else None

    pivot_doc = results(params["pivot"])
    tables = []
    for grid in params["grids"]:
        if grid["grid"] == "tokenizer":
            tables.append(tokenizer_table(params, grid, results))
            continue
        rows = []
        for v in grid["variants"]:
            doc = results(v["model"])
            row = {"value": v["value"], "model": v["model"], "reference": v["reference"],
                   "origin": "new" if v["reused"] is None else f"reused ({v['reused']})",
                   **metrics_of(doc or {})}
            if "coverage" in v:
                row.update(_coverage(v["coverage"]))
            rows.append(row)
        ref = next((r for r in rows if r["reference"]), None)
        for r in rows:
            for k in DELTAS:
                a, b = r.get(k), (ref or {}).get(k)
                r[f"Δ{k}"] = None if a is None or b is None else a - b
        columns = ["value", "model", *DOMAINS, "toy_mean", "Δtoy_mean", "rm_mean", "Δrm_mean",
                   "win_rate_vs_pivot", "Δwin_rate_vs_pivot"]
        if any(r["toy_prompt_set"] is not None for r in rows):
            columns.insert(columns.index("toy_mean") + 2, "toy_prompt_set")
        if any("coverage" in v for v in grid["variants"]):
            columns += ["valid_share", "mass_kept"]
        columns.append("origin")
        pivot_row = None
        if pivot_doc:
            pivot_row = {"value": "(pivot)", "model": params["pivot"], "origin": "", **metrics_of(pivot_doc)}
        ranked: list[list[str]] = []  # groups of equal toy mean (one benchmark item is 1/90 of the mean), best first
        last = None
        for r in sorted((r for r in rows if r["toy_mean"] is not None), key=lambda r: -r["toy_mean"]):
            if last is not None and abs(r["toy_mean"] - last) < 1e-9:
                ranked[-1].append(r["value"])
            else:
                ranked.append([r["value"]])
            last = r["toy_mean"]
        tables.append({"grid": grid["grid"], "title": grid["title"], "columns": columns, "rows": rows,
                       "pivot": pivot_row, "reference": ref["value"] if ref else None,
                       "ranking": ranked})
    return tables


def tokenizer_table(params: dict[str, Any], grid: dict[str, Any], results) -> dict[str, Any]:
    """The tokenizer grid: alignment efficiency per setting, with the baseline / control / other rows."""
    t = params["tokenizer"]
    eff = json.loads(Path(t["file"]).read_text())
    metric = t.get("metric")

    def acc(model: str) -> float | None:
        doc = results(model) or {}
        return doc.get("metrics", {}).get(metric) if metric else None

    base_acc = acc(t["baseline"])

    def row(value: str, model: str, role: str, **extra: Any) -> dict[str, Any]:
        a = acc(model)
        return {"value": value, "model": model, "kl": eff["kl"][role], "gain": eff["gain"][role], "metric": a,
                "Δmetric": None if a is None or base_acc is None else a - base_acc, **extra}

    context = [row("(SFT)", t["baseline"], "baseline", origin=""),
               row(f"(control {t['control']})", t["control_model"], "control", origin="", efficiency=1.0,
                   efficiency_net=1.0),
               row(f"(other {t['other']})", t["other_model"], "other", origin="")]
    rows = []
    for v in grid["variants"]:
        fig = eff["values"][v["value"]]
        rows.append({**row(v["value"], v["model"], f"value:{v['value']}"), "reference": v["reference"],
                     "efficiency": fig["efficiency"], "efficiency_net": fig["efficiency_net"],
                     "origin": "new" if v["reused"] is None else f"reused ({v['reused']})",
                     **_coverage(v.get("coverage", []))})
    columns = ["value", "model", "kl", "gain", "efficiency", "efficiency_net"]
    if metric:
        columns += ["metric", "Δmetric"]
    columns += ["valid_share", "mass_kept", "origin"]
    ranked = [[r["value"]] for r in sorted(rows, key=lambda r: -(r["efficiency_net"] or float("-inf")))]
    ref = next((r for r in rows if r.get("reference")), None)
    return {"grid": "tokenizer", "title": grid["title"], "columns": columns, "rows": rows, "pivot": None,
            "context": context, "reference": ref["value"] if ref else None, "ranking": ranked,
            "ranking_by": "net efficiency", "conversations": eff["conversations"], "metric": metric,
            "headers": {"metric": metric or "", "Δmetric": f"Δ {metric} vs SFT" if metric else ""},
            "note": (f"KL(control ‖ model) over {eff['conversations']} fusion conversations"
                     f"{' of ' + eff['data_source'] if eff.get('data_source') else ''}; gain = KL(SFT) − KL(model); "
                     f"efficiency = gain / the control target's gain; net = (gain − other's) / (control's − "
                     f"other's). The control is {t['control']}, {t['source']}'s twin with the pivot's tokenizer.")}


HEADERS = {"kl": "KL(control‖·)", "gain": "gain", "efficiency": "efficiency", "efficiency_net": "net",
           "toy_arith": "arith", "toy_facts": "facts", "toy_strings": "strings", "toy_mean": "toy mean",
           "Δtoy_mean": "Δ mean", "rm_mean": "RM score", "Δrm_mean": "Δ RM", "win_rate_vs_pivot": "win rate",
           "Δwin_rate_vs_pivot": "Δ win", "valid_share": "valid", "mass_kept": "mass kept",
           "toy_prompt_set": "prompt set"}


def _fmt(col: str, v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:+.3f}" if col.startswith("Δ") or col == "gain" else f"{v:.3f}"
    return str(v)


def ranking_text(groups: list[list[str]]) -> str:
    """`a > b = c`: values by toy mean, best first, equal means joined by `=`."""
    return " > ".join(" = ".join(g) for g in groups)


def markdown(tables: list[dict[str, Any]], skipped: dict[str, str] | None = None) -> str:
    out = ["# Ablations", "",
           ("Toy benchmark exact match per domain and mean; RM score = mean raw score over the reward models; win "
            "rate against the pivot (RM majority); prompt set (where the data has one) = accuracy on the items whose "
            "prompt the data asks without a reference. Δ = against the grid's reference (the paper's choice, marked "
            "*)."),
           ""]
    if not tables and not skipped:
        out.append("No grids configured (`ablations.grids` is empty).")
    for grid, why in (skipped or {}).items():
        out += [f"The {grid} grid did not run: {why}.", ""]
    for t in tables:
        out += [f"## {t['grid']}: {t['title']}", ""]
        if t.get("note"):
            out += [t["note"], ""]
        head = [t.get("headers", {}).get(c) or HEADERS.get(c, c) for c in t["columns"]]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        rows = ([t["pivot"]] if t["pivot"] else []) + t.get("context", []) + t["rows"]
        for r in rows:
            cells = [_fmt(c, r.get(c)) for c in t["columns"]]
            if r.get("reference"):
                cells[0] += " *"
            out.append("| " + " | ".join(cells) + " |")
        if t["ranking"]:
            out += ["", f"Ranked by {t.get('ranking_by', 'toy mean')}: " + ranking_text(t["ranking"])]
        out.append("")
    return "\n".join(out)


def html_page(tables: list[dict[str, Any]], skipped: dict[str, str] | None = None) -> str:
    from fusepipe.report.stage import _html_table

    sections = [("<h1>fusepipe ablations</h1><p>Toy benchmark exact match per domain and mean; RM score = mean raw "
                 "score over the reward models; win rate against the pivot. Δ against the grid's reference (the "
                 "paper's choice, marked *).</p>")]
    sections += [f"<p>The {html.escape(g)} grid did not run: {html.escape(why)}.</p>" for g, why in (skipped or {}).items()]
    for t in tables:
        rows = ([t["pivot"]] if t["pivot"] else []) + t.get("context", []) + t["rows"]
        body = [[(_fmt(c, r.get(c)) + (" *" if c == "value" and r.get("reference") else "")) for c in t["columns"]]
                for r in rows]
        head = [t.get("headers", {}).get(c) or HEADERS.get(c, c) for c in t["columns"]]
        ranked_by = t.get("ranking_by", "toy mean")
        sections.append(f"<h2>{html.escape(t['grid'])}: {html.escape(t['title'])}</h2>"
                        + (f"<p>{html.escape(t['note'])}</p>" if t.get("note") else "")
                        + _html_table(head, body)
                        + (f"<p>Ranked by {ranked_by}: {html.escape(ranking_text(t['ranking']))}</p>"
                           if t["ranking"] else ""))
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>fusepipe ablations</title><style>{style}"
            "</style></head><body>" + "\n".join(sections) + "</body></html>")


def run(params: dict[str, Any], workdir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = grid_tables(params, workdir)
    md = markdown(tables, params.get("skipped"))
    (out_dir / "ablations.md").write_text(md + "\n")
    (out_dir / "ablations.html").write_text(html_page(tables, params.get("skipped")))
    log.info("ablations: %s (%d grids)", out_dir / "ablations.html", len(tables))
    return {"tables": tables, "markdown": md}
