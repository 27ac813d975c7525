"""The report on a fixed set of results: the table, the deltas, the text summary, the HTML and its plots."""

from __future__ import annotations

import json

import pytest

from fusepipe.report import stage

RESULTS = {
    "piv": ({"kind": "pivot"}, {"toy_arith": 0.2, "toy_facts": 0.3, "toy_strings": 0.1, "win_rate_vs_pivot": 0.5}),
    "src": ({"kind": "source"}, {"toy_arith": 0.9, "toy_facts": 0.2, "toy_strings": 0.1, "win_rate_vs_pivot": 0.6}),
    "train.sft.sft": ({"kind": "train", "recipe_kind": "sft"}, {"toy_arith": 0.25, "toy_facts": 0.3,
                                                                 "toy_strings": 0.1, "win_rate_vs_pivot": 0.55}),
    "merge.f.sce": ({"kind": "merge"}, {"toy_arith": 0.5, "toy_facts": 0.35, "toy_strings": 0.2,
                                        "win_rate_vs_pivot": 0.7}),
}


@pytest.fixture
def written(tmp_path):
    paths = []
    for model, (about, metrics) in RESULTS.items():
        p = tmp_path / "eval" / model / "results.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps({"model": model, "about": about, "metrics": metrics, "suites": {}}))
        paths.append(p)
    return tmp_path, paths


def test_rows_hold_values_and_deltas(written):
    _, paths = written
    metrics, rows = stage.table_rows(stage.load_results(paths), "piv")
    assert metrics[:3] == ["toy_arith", "toy_facts", "toy_strings"]
    by = {r["model"]: r for r in rows}
    assert [r["model"] for r in rows] == ["piv", "src", "train.sft.sft", "merge.f.sce"]
    assert by["merge.f.sce"]["Δpivot:toy_arith"] == pytest.approx(0.3)
    assert by["merge.f.sce"]["Δsft:toy_arith"] == pytest.approx(0.25)
    assert by["piv"]["Δpivot:toy_facts"] == 0


def test_report_writes_html_summary_csv_and_plots(written):
    workdir, paths = written
    out = workdir / "report"
    done = stage.run({"pivot": "piv"}, workdir, paths, out)
    assert done["plots"] == ["domains.png"]  # no training logs or merges in this workdir
    assert (out / "domains.png").stat().st_size > 1000
    page = (out / "index.html").read_text()
    assert "merge.f.sce" in page and "Against the SFT baseline" in page and "<img src='domains.png'" in page
    summary = (out / "summary.txt").read_text().splitlines()
    assert summary[0].split()[:3] == ["model", "toy_arith", "toy_facts"]
    merged = next(line for line in summary if line.startswith("merge.f.sce"))
    assert "0.500 ( +0.300)" in merged
    csv_head = (out / "results.csv").read_text().splitlines()[0]
    assert csv_head.startswith("model,kind,toy_arith")
