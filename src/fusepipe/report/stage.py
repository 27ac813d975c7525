"""`report` stage: report/index.html, its plots, report/results.csv and report/summary.txt from the run's
artifacts. Both lead with one headline table (`report.headline`: accuracy per domain ±95 % Wilson interval, the
mean over domains, its Δ against the pivot and the SFT baseline; ProFuser Table 1 / FuseChat Table 1 layout);
below it, under their own headings: every model × metric (eval/*/results.json), the deltas of every metric against
the pivot and the SFT baseline, per-domain bars, training curves per phase and mode, the reward
models' vote shares and agreement (ProFuser Figure 1), alignment coverage per pair, merge coefficients per layer,
and time and storage per stage from the manifests.
"""

from __future__ import annotations

import html
import json
import logging
import re
import textwrap
from pathlib import Path
from typing import Any

from fusepipe.artifacts import MANIFEST, write_json
from fusepipe.report import claims, headline, prompt_set, transfer

log = logging.getLogger("fusepipe.report")

METRIC_ORDER = ("toy_arith", "toy_facts", "toy_strings", "toy_mean", "win_rate_vs_pivot")


def load_results(result_paths: list[str | Path]) -> dict[str, dict[str, Any]]:
    out = {}
    for p in result_paths:
        doc = json.loads(Path(p).read_text())
        out[doc["model"]] = doc
    return out


def baseline_of(results: dict[str, dict[str, Any]]) -> str | None:
    """The SFT baseline: the trained target of a recipe of kind sft, if the run has one."""
    return next((m for m, r in results.items() if r["about"].get("recipe_kind") == "sft"), None)


def table_rows(results: dict[str, dict[str, Any]], pivot: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Metric columns and one row per model: values, Δ vs pivot, Δ vs SFT baseline."""
    metrics = sorted({k for r in results.values() for k in r["metrics"]},
                     key=lambda k: (METRIC_ORDER.index(k) if k in METRIC_ORDER else len(METRIC_ORDER), k))
    base = baseline_of(results)
    rows = []
    for model, r in results.items():
        row = {"model": model, "kind": r["about"].get("kind", ""), **{m: r["metrics"].get(m) for m in metrics}}
        for ref, tag in ((pivot, "Δpivot"), (base, "Δsft")):
            if ref in results:
                for m in metrics:
                    a, b = r["metrics"].get(m), results[ref]["metrics"].get(m)
                    row[f"{tag}:{m}"] = None if a is None or b is None else a - b
        rows.append(row)
    rows.sort(key=lambda r: headline.order_key(r["model"], results[r["model"]]["about"]))
    return metrics, rows


def text_table(metrics: list[str], rows: list[dict[str, Any]], width: int = 120) -> str:
    """Raw values of `metrics` per model (3 decimals), as many columns as fit in `width` characters."""
    name = max((len(r["model"]) for r in rows), default=5)
    cols, used = [], name
    for c in metrics:
        if used + 2 + max(len(c), 6) > width:
            break
        cols.append(c)
        used += 2 + max(len(c), 6)
    lines = [f"{'model':{name}}" + "".join(f"  {c:>{max(len(c), 6)}}" for c in cols)]
    for r in rows:
        lines.append(f"{r['model']:{name}}" + "".join(
            f"  {'-' if r.get(c) is None else f'{r[c]:.3f}':>{max(len(c), 6)}}" for c in cols))
    return "\n".join(lines)


def summary_text(domains: list[str], head: list[dict[str, Any]], metrics: list[str], rows: list[dict[str, Any]],
                 pivot: str, sft: str | None, moved: tuple[list[str], list[list[Any]]] = ([], []),
                 sources: tuple[list[str], list[list[str]]] = ([], []),
                 claimed: tuple[list[str], list[list[str]]] = ([], [])) -> str:
    """summary.txt: the headline table and its legend, whether the papers' claims hold (a run with SFT), where the
    accuracy comes from (a run with a prompt set), what fusion moved (the transfer suite), then the other metrics
    (judge win rate, RM scores, ...)."""
    out = ["Headline: accuracy per domain and their mean (±95 % interval), Δ of the mean", headline.text(domains, head, sft), headline.legend(domains, head, pivot, sft)]
    if claimed[1]:
        out += ["", "Does fusion beat SFT? The papers' claims on this run", prompt_set.text(*claimed, left=3),
                textwrap.fill(claims.LEGEND, 120)]
    if sources[1]:
        out += ["", "Where the accuracy comes from: items the data asks without a reference (prompt set) and the rest",
                prompt_set.text(*sources), textwrap.fill(prompt_set.LEGEND, 120)]
    if moved[1]:
        out += ["", "What fusion moved: distance to each source on the fusion data", transfer.text(*moved),
                textwrap.fill(transfer.LEGEND, 120)]
    rest = [m for m in metrics if m not in domains[:headline.MAX_DOMAINS] and not m.endswith("_mean")
            and not transfer.is_transfer(m) and m not in prompt_set.SUBSETS]
    if rest:
        out += ["", "Other metrics (raw values; every metric and its deltas: results.csv, index.html)",
                text_table(rest, rows)]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_domains(results: dict[str, dict[str, Any]], out: Path) -> Path | None:
    domains = [m for m in ("toy_arith", "toy_facts", "toy_strings") if any(m in r["metrics"] for r in results.values())]
    if not domains:
        return None
    plt = _plt()
    models = list(results)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(models) + 2), 4))
    width = 0.8 / len(domains)
    for i, d in enumerate(domains):
        ax.bar([j + i * width for j in range(len(models))], [results[m]["metrics"].get(d, 0) for m in models],
               width, label=d.removeprefix("toy_"))
    ax.set_xticks([j + width * (len(domains) - 1) / 2 for j in range(len(models))], models, rotation=30, ha="right",
                  fontsize=8)
    ax.set_ylabel("exact match")
    ax.set_ylim(0, 1)
    ax.set_title("Accuracy per domain (toy benchmark)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _of_run(paths_: list[Path], kind: str, models: set[str] | None, depth: int) -> list[Path]:
    """Only the artifacts of the report's models (`train.{recipe}.{target}`, `merge.{recipe}.{method}`), not those
    an ablation run left in the same workdir."""
    if models is None:
        return paths_
    return [p for p in paths_ if f"{kind}.{p.parents[depth].parent.name}.{p.parents[depth].name}" in models]


def plot_training(workdir: Path, out: Path, models: set[str] | None = None) -> Path | None:
    import polars as pl

    logs = _of_run(sorted(workdir.glob("train/*/*/log.parquet")), "train", models, 0)
    if not logs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(logs), figsize=(4 * len(logs), 3.2), squeeze=False)
    for ax, path in zip(axes[0], logs, strict=True):
        df = pl.read_parquet(path)
        for col, style in (("sft_gt", "-"), ("fusion_gt", "--"), ("sft_inf", "-"), ("fusion_inf", "--")):
            tokens = df["tokens_gt" if col.endswith("gt") else "tokens_inf"]
            sel = df.filter(tokens > 0)
            if len(sel):
                ax.plot(sel["step"], sel[col], style, label=col)
        for step in df.group_by("phase", maintain_order=True).agg(pl.col("step").min())["step"][1:]:
            ax.axvline(step, color="grey", lw=0.8)
        ax.set_title(f"{path.parent.parent.name}/{path.parent.name}", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("loss per token")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_merge(workdir: Path, out: Path, models: set[str] | None = None) -> Path | None:
    manifests = _of_run(sorted(workdir.glob("merge/*/*/model/merge_manifest.json")), "merge", models, 1)
    if not manifests:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(manifests), figsize=(5 * len(manifests), 3.2), squeeze=False)
    for ax, path in zip(axes[0], manifests, strict=True):
        m = json.loads(path.read_text())
        layers: dict[int, list[list[float]]] = {}
        for name, info in m["tensors"].items():
            match = re.search(r"layers\.(\d+)\.", name)
            if match and info.get("coefficients"):
                layers.setdefault(int(match.group(1)), []).append(info["coefficients"])
        for j, target in enumerate(m["targets"]):
            xs = sorted(layers)
            ax.plot(xs, [sum(c[j] for c in layers[x]) / len(layers[x]) for x in xs], "o-",
                    label=Path(target).parent.name)
        ax.set_title(f"{path.parent.parent.parent.name}/{m['method']}: mean coefficient per layer", fontsize=9)
        ax.set_xlabel("layer")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------- sections


def stage_costs(workdir: Path) -> list[tuple[str, float, int]]:
    """(stage, seconds, bytes on disk) from every manifest and the folders the stages write."""
    seconds: dict[str, float] = {}
    for p in workdir.rglob(f"*{MANIFEST}"):
        try:
            m = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        stage = str(m.get("stage", "?")).split(".")[0]
        seconds[stage] = seconds.get(stage, 0.0) + float(m.get("timings_s", {}).get("total", 0) or 0)
    folders = {"toy_world": "toy", "data": "data", "generate": "gen", "reward": "reward", "vote": "vote",
               "logits": "logits", "align": "align", "fuse": "targets", "train": "train", "merge": "merge",
               "evaluate": "eval"}
    out = []
    for stage, secs in sorted(seconds.items(), key=lambda kv: -kv[1]):
        folder = workdir / folders.get(stage, stage)
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0
        out.append((stage, secs, size))
    return out


def _html_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3f}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = ("body{font-family:sans-serif;max-width:1360px;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
         "th{white-space:normal;overflow-wrap:anywhere}td:first-child{text-align:left}"
         ".wide{max-width:100%;overflow-x:auto}table.headline{font-size:14px}img{max-width:100%}")


def _wide(table: str) -> str:
    """A secondary table in a box that scrolls sideways instead of widening the page."""
    return f"<div class='wide'>{table}</div>"


def run(params: dict[str, Any], workdir: str | Path, result_paths: list[str | Path], out_dir: str | Path) -> dict:
    workdir, out_dir = Path(workdir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pivot = params["pivot"]
    results = load_results(result_paths)
    where = {json.loads(Path(p).read_text())["model"]: p for p in result_paths}
    counts = {m: headline.item_counts(where[m], list(r.get("suites") or {})) for m, r in results.items()}
    sft = baseline_of(results)
    metrics, rows = table_rows(results, pivot)
    domains, head = headline.headline_rows(results, counts, pivot, sft)
    moved = transfer.table(results, [r["model"] for r in rows])
    sources = prompt_set.table(results, {m: prompt_set.counts(where[m]) for m in results},
                               [r["model"] for r in rows], sft)
    claimed = claims.table(results, domains, pivot, sft, {m: claims.per_item(where[m]) for m in results}, counts,
                           claims.expert_domains(workdir), [r["model"] for r in rows])
    summary = summary_text(domains, head, metrics, rows, pivot, sft, moved, sources, claimed)
    (out_dir / "summary.txt").write_text(summary + "\n")
    import csv

    by_head = {h["model"]: h for h in head}
    csv_rows = [{**r, **headline.csv_fields(domains, by_head[r["model"]])} for r in rows]
    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(csv_rows[0]) if csv_rows else ["model"])
        writer.writeheader()
        writer.writerows(csv_rows)
    plots = {name: fn for name, fn in (
        ("domains.png", lambda p: plot_domains(results, p)),
        ("training.png", lambda p: plot_training(workdir, p, set(results))),
        ("merge.png", lambda p: plot_merge(workdir, p, set(results))))}
    made = [name for name, fn in plots.items() if fn(out_dir / name)]
    intro = (f"<h1>fusepipe report</h1><p>workdir <code>{html.escape(str(workdir))}</code>, pivot "
             f"<b>{html.escape(pivot)}</b>, SFT baseline: {html.escape(str(sft))}</p>")
    sections = [intro, "<h2>Headline</h2>", headline.html_table(domains, head, sft),
                f"<p>{html.escape(headline.legend(domains, head, pivot, sft))}</p>",
                *([("<h2>Does fusion beat SFT?</h2>" + _html_table(*claimed) + f"<p>{html.escape(claims.LEGEND)}</p>")]
                  if claimed[1] else []),
                *([("<h2>Where the accuracy comes from</h2>" + _html_table(*sources)
                    + f"<p>{html.escape(prompt_set.LEGEND)}</p>")] if sources[1] else []),
                *([("<h2>What fusion moved</h2>" + _html_table(*moved) + f"<p>{html.escape(transfer.LEGEND)}</p>")]
                  if moved[1] else []),
                ("<h2>All metrics</h2><p>Every model on every suite (toy accuracy, the RM judge's win rate against "
                 "the pivot and mean raw score per reward model, ...).</p>"),
                _wide(_html_table(["model", "kind", *metrics],
                                  [[r["model"], r["kind"], *[r.get(m) for m in metrics]] for r in rows])),
                "<h3>Δ against the pivot</h3>",
                _wide(_html_table(["model", *metrics], [[r["model"], *[r.get(f"Δpivot:{m}") for m in metrics]]
                                                        for r in rows]))]
    if sft:
        sections.append("<h3>Against the SFT baseline</h3>" + _wide(_html_table(
            ["model", *metrics], [[r["model"], *[r.get(f"Δsft:{m}") for m in metrics]] for r in rows])))
    titles = (("domains.png", "Per domain"), ("training.png", "Training curves (phases split by grey lines)"),
              ("merge.png", "Merge coefficients per layer"))
    for name, title in titles:
        if name in made:
            sections.append(f"<h2>{title}</h2><img src='{name}' alt='{title}'>")
    vote = workdir / "vote" / MANIFEST
    if vote.is_file():
        v = json.loads(vote.read_text())
        sections.append("<h2>Reward-model vote</h2>" + _html_table(
            ["subset", *sorted(v["win_rate"]["all"])],
            [[s, *[w.get(m) for m in sorted(v["win_rate"]["all"])]] for s, w in v["win_rate"].items()])
            + "<p>Agreement (share of prompts where the RMs pick the same response): "
            + ", ".join(f"{k} {a:.0%}" for k, a in v["rm_agreement"].items()) + "</p>")
    coverage = sorted(workdir.glob("align/*/coverage.json"))
    if coverage:
        cov_rows = []
        for p in coverage:
            c = json.loads(p.read_text())
            ls = c.get("link_share", {})
            cov_rows.append([p.parent.name, c.get("positions"), ls.get("one_to_one"), ls.get("one_to_many"),
                             ls.get("many_to_one"), c.get("valid_share"), c.get("mass_kept"), c.get("vocab")])
        sections.append("<h2>Alignment coverage</h2>" + _html_table(
            ["pair", "positions", "1-1", "1-n", "n-1", "valid", "mass kept", "vocab map"], cov_rows))
    costs = stage_costs(workdir)
    sections.append("<h2>Time and storage per stage</h2>" + _html_table(
        ["stage", "job seconds (sum)", "MB on disk"], [[s, t, b / 1e6] for s, t, b in costs]))
    (out_dir / "index.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>fusepipe "
                                        f"report</title><style>{STYLE}</style></head><body>"
                                        + "\n".join(sections) + "</body></html>")
    write_json({"stage": "report", "models": list(results), "metrics": metrics, "plots": made,
                "headline": headline.columns(domains, sft), "item_counts": counts,
                "claims": [dict(zip(claimed[0], r, strict=True)) for r in claimed[1]],
                "timings_s": {}}, out_dir / MANIFEST)
    log.info("report: %s (%d models, %d plots)", out_dir / "index.html", len(results), len(made))
    return {"summary": summary, "rows": rows, "headline": head, "plots": made}
