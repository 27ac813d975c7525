"""The report on a fixed set of results: the headline (Wilson intervals, columns, row order), the table, the deltas,
the text summary, the HTML and its plots."""

from __future__ import annotations

import json
import re

import pytest

from fusepipe.report import headline, stage

RESULTS = {
    "piv": ({"kind": "pivot"}, {"toy_arith": 0.2, "toy_facts": 0.3, "toy_strings": 0.1, "win_rate_vs_pivot": 0.5}),
    "src": ({"kind": "source"}, {"toy_arith": 0.9, "toy_facts": 0.2, "toy_strings": 0.1, "win_rate_vs_pivot": 0.6}),
    "train.sft.sft": ({"kind": "train", "recipe_kind": "sft"}, {"toy_arith": 0.25, "toy_facts": 0.3,
                                                                 "toy_strings": 0.1, "win_rate_vs_pivot": 0.55}),
    "merge.f.sce": ({"kind": "merge"}, {"toy_arith": 0.5, "toy_facts": 0.35, "toy_strings": 0.2,
                                        "win_rate_vs_pivot": 0.7}),
    "train.fc.piv": ({"kind": "train", "recipe_kind": "fusechat"}, {"toy_arith": 0.4, "toy_facts": 0.4,
                                                                    "toy_strings": 0.3, "win_rate_vs_pivot": 0.6}),
}
N = {"arith": 100, "facts": 50, "strings": 20}  # items per domain, as the toy suite's tasks report them


@pytest.fixture
def written(tmp_path):
    paths = []
    for model, (about, metrics) in RESULTS.items():
        p = tmp_path / "eval" / model / "results.json"
        p.parent.mkdir(parents=True)
        toy = {k: v for k, v in metrics.items() if k.startswith("toy_")}
        rm = {k: v for k, v in metrics.items() if not k.startswith("toy_")}
        p.write_text(json.dumps({"model": model, "about": about, "metrics": metrics,
                                 "suites": {"toy": toy, "rm": rm}}))
        (p.parent / "toy.json").write_text(json.dumps({"model": model, "kind": "toy", "metrics": toy, "tasks": {
            f"fusepipe_toy_{d}": {"acc,none": toy[f"toy_{d}"], "n": n} for d, n in N.items()}}))
        paths.append(p)
    return tmp_path, paths


def test_rows_hold_values_and_deltas(written):
    _, paths = written
    metrics, rows = stage.table_rows(stage.load_results(paths), "piv")
    assert metrics[:3] == ["toy_arith", "toy_facts", "toy_strings"]
    by = {r["model"]: r for r in rows}
    assert [r["model"] for r in rows] == ["piv", "src", "train.sft.sft", "train.fc.piv", "merge.f.sce"]
    assert by["merge.f.sce"]["Δpivot:toy_arith"] == pytest.approx(0.3)
    assert by["merge.f.sce"]["Δsft:toy_arith"] == pytest.approx(0.25)
    assert by["piv"]["Δpivot:toy_facts"] == 0


def test_wilson_interval_known_values():
    assert headline.wilson(0.5, 100) == pytest.approx((0.404, 0.596), abs=5e-4)
    lo, hi = headline.wilson(0.84, 100)
    assert (lo, hi) == pytest.approx((0.7558, 0.8990), abs=5e-4)
    assert headline.half_width(lo, hi) == pytest.approx(0.072, abs=5e-4)
    assert headline.wilson(0.0, 10) == pytest.approx((0.0, 0.2775), abs=5e-4)  # never below 0, unlike Wald
    assert headline.wilson(1.0, 10) == pytest.approx((0.7225, 1.0), abs=5e-4)
    assert headline.estimate((0.84, lo, hi, 100)) == "0.840 ±0.072"


def test_mean_interval_is_the_pooled_proportion_when_domains_are_equal():
    m, lo, hi, n = headline.mean_interval([0.84, 0.59, 0.69], [100, 100, 100])
    assert (m, n) == (pytest.approx(0.7067, abs=1e-4), 300)
    assert (lo, hi) == pytest.approx(headline.wilson(212 / 300, 300))


def test_item_counts_come_from_the_suite_files(written):
    _, paths = written
    assert headline.item_counts(paths[0], ["toy", "rm"]) == {f"toy_{d}": n for d, n in N.items()}
    toy = paths[0].parent / "toy.json"  # without tasks' n: the toy suite's examples per domain
    toy.write_text(json.dumps({"kind": "toy", "examples": [{"domain": "arith"}] * 3 + [{"domain": "facts"}]}))
    assert headline.item_counts(paths[0], ["toy"]) == {"toy_arith": 3, "toy_facts": 1}


def _headline(paths, drop_sft=False):
    results = stage.load_results(paths)
    if drop_sft:
        results.pop("train.sft.sft")
    counts = {m: headline.item_counts(p, ["toy"]) for m, p in zip(RESULTS, paths, strict=True)}
    sft = stage.baseline_of(results)
    return (*headline.headline_rows(results, counts, "piv", sft), sft)


def test_headline_columns_and_row_order(written):
    _, paths = written
    domains, rows, sft = _headline(paths)
    assert sft == "train.sft.sft"
    assert headline.columns(domains, sft) == ["model", "toy_arith", "toy_facts", "toy_strings", "mean", "Δpivot",
                                              "Δsft"]
    assert len(headline.columns([f"task{i}" for i in range(9)], sft)) == 8  # a long lm-eval suite: 4 shown
    # pivot, sources, SFT, fusion targets, merges
    assert [r["model"] for r in rows] == ["piv", "src", "train.sft.sft", "train.fc.piv", "merge.f.sce"]
    merged = rows[-1]
    assert merged["toy_arith"][:2] == pytest.approx((0.5, headline.wilson(0.5, 100)[0]))
    assert merged["toy_strings"][3] == 20
    assert merged["mean"][0] == pytest.approx((0.5 + 0.35 + 0.2) / 3)
    assert merged["mean"][3] == 170
    assert merged["Δpivot"] == pytest.approx((0.5 + 0.35 + 0.2 - 0.6) / 3)
    assert merged["Δsft"] == pytest.approx((0.5 + 0.35 + 0.2 - 0.65) / 3)
    domains, rows, sft = _headline(paths, drop_sft=True)  # no SFT model: no Δ SFT column
    assert sft is None and headline.columns(domains, sft)[-1] == "Δpivot"
    assert all(r["Δsft"] is None for r in rows)
    words = " ".join(headline.legend(domains, rows, "piv", sft).split())
    assert "no SFT model" in words and "n = 100 / 50 / 20 items (arith / facts / strings)" in words


def test_report_writes_html_summary_csv_and_plots(written):
    workdir, paths = written
    out = workdir / "report"
    done = stage.run({"pivot": "piv"}, workdir, paths, out)
    assert done["plots"] == ["domains.png"]  # no training logs or merges in this workdir
    assert (out / "domains.png").stat().st_size > 1000
    page = (out / "index.html").read_text()
    assert "merge.f.sce" in page and "Against the SFT baseline" in page and "<img src='domains.png'" in page
    # the page leads with the headline table; the full metric tables come after it
    assert page.index("<table") == page.index("<table class='headline'>") < page.index("<h2>All metrics</h2>")
    summary = (out / "summary.txt").read_text().splitlines()
    assert summary[1].split() == ["model", "arith", "facts", "strings", "mean", "Δ", "pivot", "Δ", "SFT"]
    assert [line.split()[0] for line in summary[2:7]] == ["piv", "src", "train.sft.sft", "train.fc.piv",
                                                          "merge.f.sce"]
    merged = next(line for line in summary if line.startswith("merge.f.sce"))
    assert merged.split() == ["merge.f.sce", "0.500", "±0.096", "0.350", "±0.128", "0.200", "±0.168", "0.350",
                              "±0.071", "+0.150", "+0.133"]
    assert max(len(line) for line in summary) <= 120  # fits a 120-column terminal
    assert "Other metrics" in done["summary"] and "win_rate_vs_pivot" in done["summary"]
    csv_head = (out / "results.csv").read_text().splitlines()[0]
    assert csv_head.startswith("model,kind,toy_arith") and "lo95:toy_arith,hi95:toy_arith" in csv_head


def test_html_headline_is_the_summary_table_and_narrow(written):
    workdir, paths = written
    out = workdir / "report"
    stage.run({"pivot": "piv"}, workdir, paths, out)
    page = (out / "index.html").read_text()
    table = re.search(r"<table class='headline'>.*?</table>", page).group(0)
    head = re.findall(r"<th>(.*?)</th>", table)
    assert len(head) <= 8
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)[1:]]
    # the same cells as summary.txt's headline
    text_rows = [line.split() for line in (out / "summary.txt").read_text().splitlines()[2:7]]
    assert [" ".join(c).split() for c in cells] == text_rows
    # width budget for a 1400 px window: <= ~100 characters a row at 14 px (~8 px a character) plus padding
    assert max(sum(len(c) for c in row) for row in cells) <= 100
    style = re.search(r"<style>(.*?)</style>", page).group(1)
    assert "max-width:1360px" in style and "nowrap" not in style


def test_a_prompt_set_split_is_its_own_table_not_headline_domains(written):
    """toy_prompt_set / toy_not_prompt_set (a run whose data has a prompt set) never become headline domains or
    enter the mean; they get the "Where the accuracy comes from" table, ± Wilson from the subsets' n, Δ SFT."""
    workdir, paths = written
    split = {"piv": (0.3, 0.2), "train.sft.sft": (0.25, 0.5), "train.fc.piv": (0.6, 0.4)}
    for p in paths:
        doc = json.loads(p.read_text())
        if doc["model"] not in split:
            continue
        extra = dict(zip(("toy_prompt_set", "toy_not_prompt_set"), split[doc["model"]], strict=True))
        doc["metrics"] |= extra
        doc["suites"]["toy"] |= extra
        p.write_text(json.dumps(doc))
        toy = json.loads((p.parent / "toy.json").read_text())
        toy["subsets"] = {"prompt_set": {"acc": extra["toy_prompt_set"], "n": 40},
                          "not_prompt_set": {"acc": extra["toy_not_prompt_set"], "n": 130}}
        (p.parent / "toy.json").write_text(json.dumps(toy))
    domains, _, _ = _headline(paths)
    assert domains == ["toy_arith", "toy_facts", "toy_strings"]
    out = workdir / "report"
    done = stage.run({"pivot": "piv"}, workdir, paths, out)
    summary = done["summary"].splitlines()
    at = summary.index("Where the accuracy comes from: items the data asks without a reference (prompt set) and the "
                       "rest")
    assert summary[at + 1].split() == ["model", "acc", "prompt", "set", "acc", "the", "rest", "Δ", "SFT", "prompt",
                                       "set", "Δ", "SFT", "the", "rest"]
    lo, hi = headline.wilson(0.6, 40)
    assert summary[at + 4].split() == ["train.fc.piv", "0.600", f"±{(hi - lo) / 2:.3f}", "0.400",
                                       f"±{headline.half_width(*headline.wilson(0.4, 130)):.3f}", "+0.350", "-0.100"]
    assert [line.split()[0] for line in summary[at + 2: at + 5]] == ["piv", "train.sft.sft", "train.fc.piv"]
    assert "toy_prompt_set" not in done["summary"]  # not repeated under "Other metrics"
    assert "<h2>Where the accuracy comes from</h2>" in (out / "index.html").read_text()


def _run(tmp_path, name, shift):
    """A finished run's eval/ folder: RESULTS with every toy accuracy moved by `shift`, 100/50/20 items."""
    paths = []
    for model, (about, metrics) in RESULTS.items():
        metrics = {k: (v + shift if k.startswith("toy_") else v) for k, v in metrics.items()}
        p = tmp_path / name / "eval" / model / "results.json"
        p.parent.mkdir(parents=True)
        toy = {k: v for k, v in metrics.items() if k.startswith("toy_")}
        p.write_text(json.dumps({"model": model, "about": about, "metrics": metrics,
                                 "suites": {"toy": toy, "rm": {"win_rate_vs_pivot": metrics["win_rate_vs_pivot"]}}}))
        (p.parent / "toy.json").write_text(json.dumps({"model": model, "kind": "toy", "metrics": toy, "tasks": {
            f"fusepipe_toy_{d}": {"acc,none": toy[f"toy_{d}"], "n": n} for d, n in N.items()}}))
        paths.append(p)
    return tmp_path / name


def test_seeds_headline_is_the_mean_of_the_runs_with_pooled_intervals(tmp_path):
    from fusepipe.report import seeds

    a, b = _run(tmp_path, "results", 0.0), _run(tmp_path, "results-seed1", 0.1)
    text = seeds.summary([a, b])
    lines = text.splitlines()
    assert lines[0].startswith("Headline over 2 runs (results, results-seed1)")
    merged = next(line for line in lines if line.startswith("merge.f.sce")).split()
    p = 0.5 + 0.05  # arith: (0.5 + 0.6) / 2 on 200 pooled items
    assert merged[1:3] == [f"{p:.3f}", f"±{headline.half_width(*headline.wilson(p, 200)):.3f}"]
    assert merged[-1] == "+0.133"  # Δ SFT of the mean: both runs shifted alike
    assert "n = 200 / 100 / 40 items (arith / facts / strings)" in " ".join(text.split())
    per_run = lines[lines.index("Per run: mean accuracy and its Δ SFT") + 1:]
    assert per_run[0].split() == ["model", "mean", "results", "mean", "results-seed1", "Δ", "SFT", "results", "Δ",
                                  "SFT", "results-seed1"]
    sce = next(line for line in per_run if line.startswith("merge.f.sce")).split()
    assert sce[1:] == ["0.350", "0.450", "+0.133", "+0.133"]


def test_seeds_names_a_run_without_results(tmp_path):
    from click.testing import CliRunner

    from fusepipe.cli import cli

    a = _run(tmp_path, "results", 0.0)
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(cli, ["seeds", str(a), str(tmp_path / "empty")])
    assert result.exit_code != 0
    assert f"{tmp_path / 'empty'}: no eval/*/results.json; run `snakemake all` there first" in result.output
    result = CliRunner().invoke(cli, ["seeds", str(a)])
    assert result.exit_code == 2 and "give two or more workdirs" in result.output


def _claims_run(tmp_path, correct: dict[str, list[int]], with_items: bool = True, toy_manifest: bool = True):
    """eval/ of a run with 2 domains × 4 items: per model, the items' correctness (a: items 0-3, b: items 4-7)."""
    abouts = {"piv": {"kind": "pivot"}, "src": {"kind": "source"},
              "train.sft.sft": {"kind": "train", "recipe_kind": "sft", "target": "sft"},
              "train.fc.src": {"kind": "train", "recipe_kind": "fusechat", "target": "src"},
              "train.pf.all": {"kind": "train", "recipe_kind": "profuser", "target": "all"},
              "merge.fc.sce": {"kind": "merge", "recipe": "fc", "method": "sce"}}
    paths = []
    for model, about in abouts.items():
        c = correct[model]
        acc = {"toy_a": sum(c[:4]) / 4, "toy_b": sum(c[4:]) / 4}
        p = tmp_path / "eval" / model / "results.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps({"model": model, "about": about, "metrics": acc, "suites": {"toy": acc}}))
        examples = [{"domain": "a" if i < 4 else "b", "prompt": f"q{i}", "correct": bool(x)} for i, x in enumerate(c)]
        (p.parent / "toy.json").write_text(json.dumps({"model": model, "kind": "toy", "metrics": acc, "tasks": {
            f"fusepipe_toy_{d}": {"acc,none": acc[f"toy_{d}"], "n": 4} for d in "ab"},
            **({"examples": examples} if with_items else {})}))
        paths.append(p)
    if toy_manifest:
        (tmp_path / "toy").mkdir()
        (tmp_path / "toy" / "_manifest.json").write_text(json.dumps({"models": {
            "src": {"strong_domain": "b"}, "piv": {"strong_domain": None}}}))
    return stage.run({"pivot": "piv"}, tmp_path, paths, tmp_path / "report")


CORRECT = {"piv": [0, 0, 0, 0, 0, 0, 0, 0], "src": [0, 0, 0, 0, 1, 1, 1, 1],
           "train.sft.sft": [1, 1, 0, 0, 0, 0, 0, 0], "train.fc.src": [1, 1, 0, 0, 1, 1, 1, 1],
           "train.pf.all": [1, 0, 0, 0, 0, 0, 0, 0], "merge.fc.sce": [0, 1, 1, 0, 1, 0, 0, 0]}


def test_claims_are_paired_differences_over_the_same_items(tmp_path):
    """Each trained or merged model against SFT (and a merge against the pivot), over the same items: a pairwise
    target on its source's own domain (the toy manifest's strong_domain), the rest on the pooled items."""
    import math

    from fusepipe.report import claims

    done = _claims_run(tmp_path, CORRECT)
    rows = {(r["model"], r["claim"]): r for r in json.loads((tmp_path / "report" / "_manifest.json").read_text())[
        "claims"]}
    assert list(rows) == [("train.fc.src", "> SFT"), ("train.pf.all", "> SFT"), ("merge.fc.sce", "> piv"),
                          ("merge.fc.sce", "> SFT")]
    own = rows[("train.fc.src", "> SFT")]  # domain b: 4 of 4 against 0 of 4, every difference 1: no spread
    assert (own["on"], own["Δ"], own["95 % interval"], own["n"], own["verdict"]) == (
        "b (its source's)", "+1.000", "[+1.000, +1.000]", "4", "holds")
    d = [-1, 0, 1, 0, 1, 0, 0, 0]  # merge - SFT, item by item
    mean = sum(d) / 8
    half = 1.96 * math.sqrt(sum((x - mean) ** 2 for x in d) / 7 / 8)
    assert rows[("merge.fc.sce", "> SFT")]["95 % interval"] == f"[{mean - half:+.3f}, {mean + half:+.3f}]"
    assert rows[("merge.fc.sce", "> SFT")]["verdict"] == "tie"
    assert rows[("train.pf.all", "> SFT")]["Δ"] == "-0.125"
    assert claims.verdict(-0.2, 0.1) == "reversed" and claims.verdict(0.2, 0.1) == "holds"
    summary = done["summary"].splitlines()
    at = summary.index("Does fusion beat SFT? The papers' claims on this run")
    assert summary[at + 1].split()[:3] == ["model", "claim", "on"]
    assert summary[at + 2].split() == ["train.fc.src", ">", "SFT", "b", "(its", "source's)", "+1.000", "[+1.000,",
                                       "+1.000]", "4", "holds"]
    assert "<h2>Does fusion beat SFT?</h2>" in (tmp_path / "report" / "index.html").read_text()


def test_claims_without_item_records_are_unpaired_and_without_sft_absent(tmp_path):
    """No per-item records: the unpaired interval from the accuracies and item counts; a pairwise target whose
    source's domain the run does not know is judged on the mean; a run without SFT has no claims table."""
    import math

    done = _claims_run(tmp_path / "unpaired", CORRECT, with_items=False, toy_manifest=False)
    rows = {(r["model"], r["claim"]): r for r in json.loads(
        (tmp_path / "unpaired" / "report" / "_manifest.json").read_text())["claims"]}
    p1, p2 = 6 / 8, 2 / 8
    half = 1.96 * math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / 8)
    fc = rows[("train.fc.src", "> SFT")]
    assert (fc["on"], fc["Δ"], fc["95 % interval"], fc["n"]) == ("mean", "+0.500",
                                                                f"[{0.5 - half:+.3f}, {0.5 + half:+.3f}]", "8")
    assert "Does fusion beat SFT?" in done["summary"]
    _claims_run(tmp_path / "no_sft", CORRECT)
    kept = [p for p in (tmp_path / "no_sft" / "eval").glob("*/results.json") if p.parent.name != "train.sft.sft"]
    again = stage.run({"pivot": "piv"}, tmp_path / "no_sft", kept, tmp_path / "no_sft" / "report2")
    assert "Does fusion beat SFT?" not in again["summary"]
    assert json.loads((tmp_path / "no_sft" / "report2" / "_manifest.json").read_text())["claims"] == []
