"""`report` stage: report/index.html, its plots, report/results.csv and report/summary.txt from the run's
artifacts: every model's evaluation (eval/*/results.json) with deltas against the pivot and the SFT baseline
(ProFuser Table 1 / FuseChat Table 1 layout), per-domain bars, training curves per phase and mode, the reward
models' vote shares and agreement (ProFuser Figure 1), alignment coverage per pair, merge coefficients per layer,
and time and storage per stage from the manifests.
"""

from __future__ import annotations

import html
import json
import logging
import re
from pathlib import Path
from typing import Any

from fusepipe.artifacts import MANIFEST, write_json

log = logging.getLogger("fusepipe.report")

HEADLINE = ("toy_arith", "toy_facts", "toy_strings", "toy_mean", "win_rate_vs_pivot")


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
                     key=lambda k: (HEADLINE.index(k) if k in HEADLINE else len(HEADLINE), k))
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
    order = {"pivot": 0, "source": 1, "train": 2, "merge": 3}
    rows.sort(key=lambda r: (order.get(r["kind"], 4), r["model"]))
    return metrics, rows


def text_table(metrics: list[str], rows: list[dict[str, Any]], columns: tuple[str, ...] = HEADLINE) -> str:
    cols = [c for c in columns if c in metrics] or metrics[:6]
    width = max(len(r["model"]) for r in rows) if rows else 5
    lines = [f"{'model':{width}}  " + "  ".join(f"{c:>18}" for c in cols)]
    for r in rows:
        cells = []
        for c in cols:
            v, d = r.get(c), r.get(f"Δpivot:{c}")
            cells.append(f"{'-':>18}" if v is None else f"{v:8.3f} ({'' if d is None else f'{d:+.3f}':>7})")
        lines.append(f"{r['model']:{width}}  " + "  ".join(cells))
    return "\n".join(lines)


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


def run(params: dict[str, Any], workdir: str | Path, result_paths: list[str | Path], out_dir: str | Path) -> dict:
    workdir, out_dir = Path(workdir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pivot = params["pivot"]
    results = load_results(result_paths)
    metrics, rows = table_rows(results, pivot)
    summary = text_table(metrics, rows)
    (out_dir / "summary.txt").write_text(summary + "\n")
    import csv

    with open(out_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["model"])
        writer.writeheader()
        writer.writerows(rows)
    plots = {name: fn for name, fn in (
        ("domains.png", lambda p: plot_domains(results, p)),
        ("training.png", lambda p: plot_training(workdir, p, set(results))),
        ("merge.png", lambda p: plot_merge(workdir, p, set(results))))}
    made = [name for name, fn in plots.items() if fn(out_dir / name)]
    intro = (f"<h1>fusepipe report</h1><p>workdir <code>{html.escape(str(workdir))}</code>, pivot "
             f"<b>{html.escape(pivot)}</b>, SFT baseline: {html.escape(str(baseline_of(results)))}</p>")
    results_head = ("<h2>Results</h2><p>Every model on every suite; Δ against the pivot (and the SFT baseline when "
                    "the run trains one).</p>")
    sections = [intro, results_head,
                _html_table(["model", "kind", *metrics, *[f"Δpivot {m}" for m in metrics]],
                            [[r["model"], r["kind"], *[r.get(m) for m in metrics],
                              *[r.get(f"Δpivot:{m}") for m in metrics]] for r in rows])]
    if baseline_of(results):
        sections.append("<h3>Against the SFT baseline</h3>" + _html_table(
            ["model", *metrics], [[r["model"], *[r.get(f"Δsft:{m}") for m in metrics]] for r in rows]))
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
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%}")
    (out_dir / "index.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>fusepipe "
                                        f"report</title><style>{style}</style></head><body>"
                                        + "\n".join(sections) + "</body></html>")
    write_json({"stage": "report", "models": list(results), "metrics": metrics, "plots": made,
                "timings_s": {}}, out_dir / MANIFEST)
    log.info("report: %s (%d models, %d plots)", out_dir / "index.html", len(results), len(made))
    return {"summary": summary, "rows": rows, "plots": made}
