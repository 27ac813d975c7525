"""The ablation grids (`snakemake ablations`, issue 8): grid expansion, reuse of configured runs, bad values, the
tables, and the jobs the target adds (dry runs only: the grids themselves are too slow for CI)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO, copy_workflow, snakemake

from fusepipe import ablations, paths
from fusepipe import config as fpconfig
from fusepipe import pipeline as fppipeline
from fusepipe.errors import ConfigError
from fusepipe.fuse import stage as fuse_stage
from fusepipe.report import ablations as report_ablations


def raw_default() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def load(edit=None) -> fpconfig.Config:
    raw = raw_default()
    if edit is not None:
        edit(raw)
    return fppipeline.load_dict(raw)


def test_toy_grids_expand_into_variants_reusing_configured_runs():
    cfg = load()
    plan = ablations.plan(cfg)
    got = {g: [(v.value, v.model, v.reused, v.reference) for v in vs] for g, vs in plan.grids.items()}
    assert got == {
        "merge": [("sce", "merge.fusechat.sce", "config", True), ("rsaf", "merge.fusechat.rsaf", "config", False),
                  ("ties", "merge.fusechat.ties", None, False),
                  ("task_arithmetic", "merge.fusechat.task_arithmetic", None, False),
                  ("dare", "merge.fusechat.dare", None, False), ("linear", "merge.fusechat.linear", None, False)],
        "vocab": [("ms", "merge.fusechat.sce", "config", True), ("mined", "merge.abl-vocab-mined.sce", None, False),
                  ("em", "merge.abl-vocab-em.sce", None, False)],
        "schedule": [("profuser", "train.profuser.all", "config", True),
                     *[(s, f"train.abl-schedule-{s}.all", None, False)
                       for s in ("simulfuse", "reversefuse", "gtlen", "fuse", "csft")]],
        "fusion": [("mince", "train.abl-fusion-mince.all", None, False),
                   ("udf", "train.udf.all", "config", True),  # the default's udf recipe, same budget
                   ("naive", "train.abl-fusion-naive.all", None, False)],
        "structure": [("pairwise", "merge.abl-structure-pairwise.rsaf", None, True),
                      ("unified", "train.udf.all", "config", False)],
        # the paper's alignment is fusechat's own target; the vocab grid's copies already train mined and em
        "tokenizer": [("paper", "train.fusechat.qwen-arith", "config", True),
                      ("band", "train.abl-tokenizer-band.qwen-arith", None, False),
                      ("offsets", "train.abl-tokenizer-offsets.qwen-arith", None, False),
                      ("mined", "train.abl-vocab-mined.qwen-arith", "grid vocab", False),
                      ("em", "train.abl-vocab-em.qwen-arith", "grid vocab", False),
                      ("last", "train.abl-tokenizer-last.qwen-arith", None, False),
                      ("chain", "train.abl-tokenizer-chain.qwen-arith", None, False)],
    }
    generated = {r.name: r for r in plan.recipes}
    assert list(generated) == ["abl-vocab-mined", "abl-vocab-em", *[f"abl-schedule-{s}" for s in (
        "simulfuse", "reversefuse", "gtlen", "fuse", "csft")], "abl-fusion-mince", "abl-fusion-naive",
        "abl-structure-pairwise", "abl-tokenizer-control", "abl-tokenizer-band", "abl-tokenizer-offsets",
        "abl-tokenizer-last", "abl-tokenizer-chain"]
    # The tokenizer grid: one target per alignment setting (the source's only), the control's own target.
    assert generated["abl-tokenizer-band"].sources == ["qwen-arith"]
    assert generated["abl-tokenizer-band"].align.method == "band"
    assert generated["abl-tokenizer-control"].sources == ["llama-arith-twin"]
    assert plan.tokenizer == {
        "control": "llama-arith-twin", "source": "qwen-arith", "recipe": "fusechat",
        "control_model": "train.abl-tokenizer-control.llama-arith-twin", "control_recipe": "abl-tokenizer-control",
        "baseline": "train.sft.sft", "other": "mistral-facts", "other_model": "train.fusechat.mistral-facts",
        "data_source": "arith", "metric": "toy_arith", "limit": 400}
    assert [v.align for v in plan.grids["tokenizer"]] == [None, "method-band", "method-offsets", "vocab-mined",
                                                          "vocab-em", "n_to_one-last", "projection-chain"]
    assert generated["abl-schedule-gtlen"].kind == "profuser" and generated["abl-schedule-gtlen"].schedule == "gtlen"
    assert generated["abl-fusion-naive"].kind == "infifusion_unified"
    assert generated["abl-fusion-naive"].fusion.function == "naive"
    assert generated["abl-structure-pairwise"].kind == "infifusion_pairwise"
    assert generated["abl-vocab-em"].align_vocab == "em" and generated["abl-vocab-em"].kind == "fusechat"
    # Generated recipes use the ablations' train block (the profuser recipe's, hence its reuse).
    assert generated["abl-schedule-csft"].train == cfg.ablations.train
    # Nothing generated enters `all`: the config's recipes, merges and evaluation ids are unchanged.
    assert [r.name for r in cfg.recipes] == ["fusechat", "sft", "profuser", "udf"]
    assert fppipeline.merge_pairs(cfg) == [("fusechat", "sce"), ("fusechat", "rsaf")]
    assert not [m for m in fppipeline.eval_models(cfg) if "abl-" in m or m.endswith((".ties", ".dare"))]
    assert set(fppipeline.eval_models(cfg, ablations=True)) == set(fppipeline.eval_models(cfg)) | set(plan.eval_models)
    assert ("abl-structure-pairwise", "rsaf") in fppipeline.merge_pairs(cfg, ablations=True)


def test_ablation_slices_and_vocab_variant_paths():
    cfg = load()
    # `all`'s slices carry nothing new (so a built pipeline does not rerun).
    assert "align_variant" not in fppipeline.stage_slice(cfg, "fuse", "fusechat/qwen-arith")
    assert fppipeline.align_slice(cfg, "qwen-arith") == fppipeline.stage_slice(cfg, "align", "qwen-arith")
    assert fppipeline.align_slice(cfg, "qwen-arith", "vocab-ms") == fppipeline.stage_slice(cfg, "align", "qwen-arith")
    variant = fppipeline.align_slice(cfg, "qwen-arith", "vocab-mined")
    assert variant["variant"] == "vocab-mined" and variant["align"]["vocab"] == "mined"
    fuse = fppipeline.stage_slice(cfg, "fuse", "abl-vocab-mined/qwen-arith")
    assert fuse["align_variant"] == "vocab-mined"
    files = fuse_stage.inputs(fuse, "W", 1)
    assert files["gt"][1] == "W/align/llama-pivot~qwen-arith/vocab-mined/gt/shard-00001.parquet"
    assert paths.align_coverage("W", "p", "s", "vocab-em") == "W/align/p~s/vocab-em/coverage.json"
    # Ablation merges and models have slices; the merge grid merges fusechat's targets with ties.
    merge = fppipeline.stage_slice(cfg, "merge", "fusechat/ties")
    assert merge["merge"]["method"] == "ties" and merge["targets"] == ["qwen-arith", "mistral-facts", "gpt2-strings"]
    ev = fppipeline.stage_slice(cfg, "evaluate", "train.abl-schedule-gtlen.all/toy")
    assert ev["about"]["recipe"] == "abl-schedule-gtlen"
    train = fppipeline.stage_slice(cfg, "train", "abl-schedule-gtlen/all")
    assert train["recipe"]["schedule_name"] == "gtlen" and train["recipe"]["schedule"][0]["order"] == "length"
    with pytest.raises(ConfigError, match="no merge 'sft/ties'"):
        fppipeline.stage_slice(cfg, "merge", "sft/ties")


def test_align_variants_of_a_recipe():
    """A recipe's own alignment settings: the variant folder names what differs from `align:`; only a method
    variant has its own links; equal settings are the pair's own alignment."""
    from fusepipe import recipes
    from fusepipe.params.align import own_links, parse_variant, variant_name

    cfg = load()
    band = ablations.recipe(cfg, "abl-tokenizer-band")
    assert recipes.align_variant(cfg, band) == "method-band"
    same = band.model_copy(update={"align": band.align.model_copy(update={"method": "faithful"})})
    assert recipes.align_variant(cfg, same) is None
    assert variant_name({"projection": "chain", "method": "band"}) == "method-band+projection-chain"
    assert parse_variant("method-band+projection-chain") == {"method": "band", "projection": "chain"}
    assert own_links("method-band+projection-chain") and not own_links("vocab-em") and not own_links(None)
    with pytest.raises(ValueError, match="'speed-fast' is not KEY-VALUE"):
        parse_variant("speed-fast")
    sl = fppipeline.align_slice(cfg, "qwen-arith", "method-band+projection-chain")
    assert sl["variant"] == "method-band+projection-chain"
    assert (sl["align"]["method"], sl["align"]["projection"]) == ("band", "chain")
    fuse = fppipeline.stage_slice(cfg, "fuse", "abl-tokenizer-chain/qwen-arith")
    assert fuse["align_variant"] == "projection-chain" and fuse["members"] == ["llama-pivot", "qwen-arith"]
    assert fuse_stage.inputs(fuse, "W", 0)["gt"][1] == (
        "W/align/llama-pivot~qwen-arith/projection-chain/gt/shard-00000.parquet")
    assert paths.align_links("W", "p", "s", "gt", 3, "method-band") == "W/align/p~s/method-band/gt/links-00003.npz"
    # the control is aligned (its own slice), never in `all`'s models, logits or evaluations
    assert fppipeline.stage_slice(cfg, "align", "llama-arith-twin")["modes"] == ["gt"]
    assert "llama-arith-twin" not in fppipeline.eval_models(cfg)
    assert [m.name for m in cfg.controls] == ["llama-arith-twin"] and "llama-arith-twin" not in [
        m.name for m in cfg.sources]


def test_efficiency_gains_and_ratios():
    from fusepipe.evaluate.efficiency import gains

    kl = {"baseline": 2.0, "other": 1.8, "control": 1.0, "value:paper": 1.2, "value:em": 1.9, "value:worse": 2.1}
    out = gains(kl)
    assert out["gain"]["control"] == pytest.approx(1.0) and out["gain"]["other"] == pytest.approx(0.2)
    paper = out["values"]["paper"]
    assert paper["efficiency"] == pytest.approx(0.8) and paper["efficiency_net"] == pytest.approx(0.6 / 0.8)
    assert out["values"]["em"]["efficiency_net"] == pytest.approx(-0.1 / 0.8)  # less than an unrelated source
    assert out["values"]["worse"]["efficiency"] == pytest.approx(-0.1)
    # a control target that learned nothing from its teacher: no ratio
    flat = gains({"baseline": 1.0, "other": 1.0, "control": 1.0, "value:paper": 0.9})
    assert flat["values"]["paper"]["efficiency"] is None and flat["values"]["paper"]["efficiency_net"] is None


def test_no_grids_by_default():
    def edit(raw):
        del raw["ablations"]

    cfg = load(edit)
    assert cfg.ablations.grids == [] and ablations.extra_recipes(cfg) == []
    plan = ablations.plan(cfg)
    assert plan.grids == {} and plan.recipes == [] and plan.eval_models == {}


def _set(path: str, value):
    def edit(raw):
        node = raw
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value

    return edit


@pytest.mark.parametrize("edit, message", [
    (_set("ablations.merge.values", ["sce", "magic"]),
     r"ablations\.merge\.values\.1: Input should be 'sce'.*\(got \"magic\"\)"),
    (_set("ablations.schedule.values", ["profuser", "slowfuse"]),
     r"ablations\.schedule\.values\.1: Input should be .*'gtlen'.*\(got \"slowfuse\"\)"),
    (_set("ablations.fusion.reference", "minilogit"),
     r"ablations\.fusion: reference 'minilogit' is not one of the grid's values \(mince, udf, naive\)"),
    (_set("ablations.vocab.values", ["ms", "em", "em"]), r"ablations\.vocab: values: duplicated em"),
    (_set("ablations.merge.recipe", "nope"),
     r"ablations\.merge\.recipe: no recipe named 'nope' \(recipes: fusechat, sft, profuser, udf\)"),
    (_set("ablations.vocab.recipe", "profuser"),
     r"ablations\.vocab\.recipe: recipe 'profuser' trains one unified target.*needs a pairwise recipe"),
    (_set("ablations.grids", ["merge", "sweep"]), r"ablations\.grids\.1: Input should be 'merge'"),
    (_set("ablations.tokenizer.values", ["paper", "fast"]),
     r"ablations\.tokenizer\.values\.1: Input should be 'paper'.*\(got \"fast\"\)"),
    (_set("ablations.tokenizer.control", "qwen-arith"),
     (r"ablations\.tokenizer\.control: 'qwen-arith'; the grid needs a model with role control .*controls in "
      r"models: llama-arith-twin")),
    (_set("ablations.tokenizer.baseline", "fusechat"),
     r"ablations\.tokenizer\.baseline: no recipe of kind sft named 'fusechat' \(recipes: fusechat \(fusechat\)"),
    (_set("ablations.tokenizer.other", "qwen-arith"),
     r"ablations\.tokenizer\.other: needs a source other than 'qwen-arith'"),
    (_set("ablations.tokenizer.data_source", "poems"),
     r"ablations\.tokenizer\.data_source: no data source 'poems' \(data\.sources: arith, facts"),
])
def test_bad_grid_values_name_the_key_and_what_is_allowed(edit, message):
    with pytest.raises(ConfigError, match=message):
        load(edit)


def test_without_a_control_the_tokenizer_grid_is_skipped(tmp_path):
    """A config over the toy one with its own models (no control) still loads and runs the other grids; the
    report says why the tokenizer grid did not run. Naming a control that is not there is an error (above)."""
    def edit(raw):
        raw["models"] = [m for m in raw["models"] if m["role"] != "control"]

    cfg = load(edit)
    plan = ablations.plan(cfg)
    assert "tokenizer" not in plan.grids and plan.tokenizer is None
    assert plan.skipped == {"tokenizer": "no model with role control (a source's twin with the pivot's tokenizer, "
                                         "`twin_of`) in models"}
    assert "tokenizer: skipped: no model with role control" in ablations.describe(cfg)
    params = ablations.report_params(cfg)
    md = report_ablations.markdown([], params["skipped"])
    assert "The tokenizer grid did not run: no model with role control" in md
    assert "did not run" in report_ablations.html_page([], params["skipped"])


@pytest.mark.parametrize("model, message", [
    ({"name": "twin", "path": "x", "role": "control"},
     (r"models: control 'twin' needs twin_of, the source whose twin it is \(one of qwen-arith, mistral-facts, "
      r"gpt2-strings; got None\)")),
    ({"name": "twin", "path": "x", "role": "source", "twin_of": "qwen-arith"},
     r"models: 'twin' has twin_of but role 'source'; only a control is a twin"),
])
def test_a_control_names_its_source(model, message):
    def edit(raw):
        raw["models"] = [m for m in raw["models"] if m["role"] != "control"] + [model]
        raw["ablations"]["grids"] = []

    with pytest.raises(ConfigError, match=message):
        load(edit)


@pytest.mark.parametrize("sources, message", [
    (["qwen-arith", "poet"], (r"recipe 'fusechat': sources must name distinct sources or controls \(models: "
                              r"qwen-arith, mistral-facts, gpt2-strings, llama-arith-twin; got "
                              r"\['qwen-arith', 'poet'\]\)")),
    ([], r"recipe 'fusechat': sources must name distinct sources or controls"),
])
def test_a_recipes_sources_are_checked(sources, message):
    def edit(raw):
        raw["recipes"][0]["sources"] = sources

    with pytest.raises(ConfigError, match=message):
        load(edit)


def test_align_vocab_and_align_vocab_must_agree():
    def edit(raw):
        raw["recipes"][0]["align_vocab"] = "em"
        raw["recipes"][0]["align"] = {"vocab": "mined"}

    with pytest.raises(ConfigError, match=r"recipe 'fusechat': align_vocab 'em' and align\.vocab 'mined' disagree"):
        load(edit)


def test_a_grid_value_needing_uncaptured_logits_is_refused():
    def edit(raw):
        raw["recipes"] = [r for r in raw["recipes"] if r["kind"] != "profuser"]
        raw["logits"]["modes"] = ["gt"]
        raw["data"]["sources"] = [s for s in raw["data"]["sources"] if not s.get("prompts_only")]

    with pytest.raises(ConfigError, match=r"ablations\.schedule: value 'profuser' trains on mode 'inf' but "
                                          r"logits\.modes is \['gt'\]"):
        load(edit)


def test_tables_report_the_results_they_read(tmp_path):
    cfg = load()
    params = ablations.report_params(cfg)
    workdir = tmp_path / "results"
    metrics = {}
    for i, model in enumerate(ablations.report_models(params)):
        m = {"toy_arith": 0.1 + 0.01 * i, "toy_facts": 0.2 + 0.02 * i, "toy_strings": 0.3, "rm_rm-large": 1.0 + i,
             "rm_rm-medium": -2.0, "rm_rm-small": 0.5 * i, "win_rate_vs_pivot": 0.05 * i}
        m["toy_mean"] = (m["toy_arith"] + m["toy_facts"] + m["toy_strings"]) / 3
        metrics[model] = m
        out = Path(paths.eval_results(workdir, model))
        out.parent.mkdir(parents=True)
        out.write_text(json.dumps({"model": model, "metrics": m, "about": {}}))
    for g in params["grids"]:  # coverage.json of the vocab grid's pairs
        for v in g["variants"]:
            for k, p in enumerate(v.get("coverage", [])):
                p = Path(str(p).replace(cfg.workdir, str(workdir), 1))
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(json.dumps({"valid_share": 0.9 + 0.01 * k, "mass_kept": 0.8}))
                v["coverage"][k] = str(p)
    from fusepipe.evaluate.efficiency import gains

    values = [v["value"] for g in params["grids"] if g["grid"] == "tokenizer" for v in g["variants"]]
    kl = {"baseline": 2.0, "other": 1.9, "control": 1.0} | {f"value:{v}": 1.8 - 0.1 * i for i, v in enumerate(values)}
    params["tokenizer"]["file"] = str(workdir / "ablations" / "tokenizer.json")
    Path(params["tokenizer"]["file"]).parent.mkdir(parents=True)
    Path(params["tokenizer"]["file"]).write_text(json.dumps({"conversations": 7, "data_source": "arith", **gains(kl)}))
    done = report_ablations.run(params, workdir, workdir / "report")
    tables = {t["grid"]: t for t in done["tables"]}
    assert list(tables) == ["merge", "vocab", "schedule", "fusion", "structure", "tokenizer"]
    tok = tables.pop("tokenizer")
    t = params["tokenizer"]
    sft_arith = metrics[t["baseline"]]["toy_arith"]
    assert [r["value"] for r in tok["context"]] == ["(SFT)", "(control llama-arith-twin)", "(other mistral-facts)"]
    for i, r in enumerate(tok["rows"]):
        assert r["kl"] == pytest.approx(1.8 - 0.1 * i) and r["gain"] == pytest.approx(0.2 + 0.1 * i)
        assert r["efficiency"] == pytest.approx(r["gain"] / 1.0)
        assert r["efficiency_net"] == pytest.approx((r["gain"] - 0.1) / 0.9)
        assert r["metric"] == metrics[r["model"]]["toy_arith"]
        assert r["Δmetric"] == pytest.approx(r["metric"] - sft_arith)
    assert tok["ranking"][0] == [values[-1]] and tok["reference"] == "paper"
    assert "Ranked by net efficiency: chain > last" in (workdir / "report" / "ablations.md").read_text()
    assert "KL(control ‖ model) over 7 fusion conversations of arith" in (workdir / "report" / "ablations.md").read_text()
    for t in tables.values():
        ref = next(r for r in t["rows"] if r["reference"])
        for r in t["rows"]:
            m = metrics[r["model"]]
            assert r["toy_arith"] == m["toy_arith"] and r["toy_mean"] == m["toy_mean"]
            assert r["win_rate_vs_pivot"] == m["win_rate_vs_pivot"]
            rm = (m["rm_rm-large"] + m["rm_rm-medium"] + m["rm_rm-small"]) / 3
            assert r["rm_mean"] == pytest.approx(rm)
            assert r["Δtoy_mean"] == pytest.approx(m["toy_mean"] - metrics[ref["model"]]["toy_mean"])
            assert r["Δwin_rate_vs_pivot"] == pytest.approx(m["win_rate_vs_pivot"]
                                                           - metrics[ref["model"]]["win_rate_vs_pivot"])
        assert t["pivot"]["model"] == cfg.pivot.name
        assert [v for group in t["ranking"] for v in group] == [
            r["value"] for r in sorted(t["rows"], key=lambda r: -r["toy_mean"])]
    assert report_ablations.ranking_text([["a"], ["b", "c"]]) == "a > b = c"
    assert tables["vocab"]["rows"][1]["valid_share"] == pytest.approx((0.90 + 0.91 + 0.92) / 3)
    md = (workdir / "report" / "ablations.md").read_text()
    gtlen = metrics["train.abl-schedule-gtlen.all"]
    line = next(ln for ln in md.splitlines() if ln.startswith("| gtlen |"))
    assert f"| {gtlen['toy_arith']:.3f} | {gtlen['toy_facts']:.3f} | {gtlen['toy_strings']:.3f} |" in line
    assert "| profuser * |" in md and "## structure:" in md
    assert "<h2>merge:" in (workdir / "report" / "ablations.html").read_text()


def _job_stats(out: str) -> dict[str, int]:
    block = out.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.MULTILINE)
            if m.group(1) != "total"}


# One shard per (model, mode) in the toy config: generate 4 models, reward 3 RMs, logits 4 models per mode, links and
# projections 3 pairs x 2 modes, fuse 6 targets; evaluate: 12 models x 3 suites.
ALL_JOBS = {"toy_world": 1, "data": 1, "generate": 4, "reward": 3, "vote": 1, "logits_gt": 4, "logits_inf": 4,
            "align_links": 6, "align_vocab": 3, "align_project": 6, "align_coverage": 3, "fuse": 6, "train": 6,
            "merge": 2, "evaluate": 36, "eval_results": 12, "report": 1, "all": 1}


def test_dry_run_ablations_adds_exactly_the_grid_jobs_and_all_is_unchanged(tmp_path):
    root = copy_workflow(tmp_path)
    everything = snakemake(root, "all", "-n").stdout
    assert _job_stats(everything) == ALL_JOBS
    assert not re.search(r"/abl-|\.abl-|/vocab-|\.(ties|dare|linear|task_arithmetic)\b|rule report_ablations",
                         everything)
    stats = _job_stats(snakemake(root, "ablations", "-n", "--quiet", "rules").stdout)
    # Upstream of the grids: everything `all` builds up to training, less all's report. New: 17 trained targets
    # (vocab 2x3, schedule 5, fusion 3, structure 3), 7 merges, 15 models; each vocab map re-runs
    # vocab/project/coverage per pair (2 maps x 3 pairs; 2 modes x 1 shard of projections). The tokenizer grid adds
    # the twin (built, gt logits and aligned: 1 shard), 5 targets (the control's, band, offsets, last, chain; mined
    # and em are the vocab grid's), 4 alignment variants of qwen-arith (band and offsets with their own links),
    # the efficiency job, and needs the SFT baseline's target and results (and the control's).
    assert stats == {
        "toy_world": 1, "toy_twin": 1, "data": 1, "generate": 4, "reward": 3, "vote": 1, "logits_gt": 4 + 1,
        "logits_inf": 4, "align_links": 6 + 1, "align_vocab": 3 + 1, "align_project": 6 + 1, "align_coverage": 3,
        "align_links_variant": 2 * 2, "align_vocab_variant": 6 + 4, "align_project_variant": 12 + 8,
        "align_coverage_variant": 6 + 4,
        "fuse": 4 + 17 + 1 + 5, "train": 4 + 17 + 1 + 5, "merge": 2 + 7, "evaluate": 3 * 29, "eval_results": 29,
        "ablation_efficiency": 1,
        "report_ablations": 1, "ablations": 1,
    }


def test_efficiency_errors_name_what_is_missing(tmp_path):
    """`fusepipe efficiency` before its inputs exist: the message names the file and the step that makes it."""
    from fusepipe.errors import ArtifactError
    from fusepipe.evaluate import efficiency

    cfg = load()
    params = ablations.efficiency_params(cfg)
    with pytest.raises(ArtifactError, match=r"results/align/llama-pivot~llama-arith-twin/gt/shard-00000\.parquet: "
                                            r"missing; run the align stage for the control 'llama-arith-twin' first"):
        efficiency.run(params, "results", tmp_path / "out.json")
    for shard in params["teacher_shards"]:
        Path(shard).parent.mkdir(parents=True, exist_ok=True)
        Path(shard).write_text("")
    with pytest.raises(ArtifactError, match=r"results/data/train\.parquet: missing; run the data stage first"):
        efficiency.run(params, "results", tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_efficiency_needs_the_grid():
    cfg = load(_set("ablations.grids", ["merge"]))
    with pytest.raises(ConfigError, match=r"ablations\.grids: no tokenizer grid; add `tokenizer` to measure"):
        ablations.efficiency_params(cfg)


def test_the_ablations_report_names_what_is_missing(tmp_path):
    """`fusepipe ablations` before `snakemake ablations` ran: the first missing result, then the efficiency file."""
    from click.testing import CliRunner

    from fusepipe.cli import cli

    params = ablations.report_params(load(_set("ablations.grids", ["tokenizer"])))
    params["tokenizer"]["file"] = str(tmp_path / "ablations" / "tokenizer.json")
    args = ["ablations", "--config-json", json.dumps(params), "--workdir", str(tmp_path)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code != 0
    assert f"{tmp_path}/eval/llama-pivot/results.json: missing; run `snakemake ablations` (11 model(s) lack " \
           "results)" in str(res.exception) + res.output
    for model in ablations.report_models(params):
        out = Path(paths.eval_results(tmp_path, model))
        out.parent.mkdir(parents=True)
        out.write_text(json.dumps({"model": model, "metrics": {}}))
    res = CliRunner().invoke(cli, args)
    assert res.exit_code != 0
    assert "ablations/tokenizer.json: missing; run `snakemake ablations` (the tokenizer grid's efficiency is " \
           "measured by `fusepipe efficiency`)" in str(res.exception) + res.output
