"""The evaluate stage in the session's `snakemake all` run, and the local lm-eval task on items built from a
model's own answers: it scores 1.0 on items it answers correctly and 0.0 on those it gets wrong."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from fusepipe import paths
from fusepipe import pipeline as fppipeline
from fusepipe.evaluate import stage


@pytest.fixture(scope="module")
def results(pipeline):
    return pipeline / "results"


@pytest.fixture(scope="module")
def cfg(pipeline_cfg):
    return pipeline_cfg


def test_every_model_has_results_on_every_suite(results, cfg):
    for model in fppipeline.eval_models(cfg):
        doc = json.loads((results / "eval" / model / "results.json").read_text())
        assert set(doc["suites"]) == {"toy", "rm", "transfer"}
        assert 0 <= doc["metrics"]["toy_mean"] <= 1 and 0 <= doc["metrics"]["win_rate_vs_pivot"] <= 1


def test_toy_suite_reproduces_the_toy_worlds_own_accuracy(results):
    manifest = json.loads((results / "toy" / "_manifest.json").read_text())
    for model in ("llama-pivot", "qwen-arith", "gpt2-strings"):
        got = json.loads((results / "eval" / model / "toy.json").read_text())["metrics"]
        for domain, acc in manifest["models"][model]["accuracy"].items():
            assert got[f"toy_{domain}"] == pytest.approx(acc, abs=1 / 30 + 1e-9), (model, domain)


def task_scorer(folder, benchmark):
    """The local task's own scoring function (`process_results` of the task files the stage writes)."""
    stage.write_toy_tasks(folder, benchmark)
    spec = importlib.util.spec_from_file_location("fusepipe_toy_task_utils", folder / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    return lambda doc, response: utils.process_results(doc, [response])["acc"]


@pytest.mark.parametrize("correct", [True, False])
def test_local_task_scores_a_model_on_items_it_gets_right_or_wrong(results, cfg, tmp_path, correct):
    """Items built from what qwen-arith answered in the session's evaluate run, whatever it got right: the expected
    answer taken from its own response (right), or one its response cannot contain (wrong)."""
    said = {e["prompt"]: e["response"] for e in
            json.loads((results / "eval" / "qwen-arith" / "toy.json").read_text())["examples"]}
    benchmark = results / "toy" / "data" / "benchmark.jsonl"
    bench = [json.loads(line) for line in benchmark.read_text().splitlines() if line.strip()]
    score = task_scorer(tmp_path / "task", benchmark)
    items = []
    for doc in [b for b in bench if b["domain"] == "arith"][:8]:
        response = said[doc["prompt"]]
        if correct:  # the first of its words and numbers, from the end, that the task accepts as the answer
            words = reversed(re.findall(r"-?\d+|[^\W\d_]+", response))
            answer = next((w for w in words if score({**doc, "answer": w}, response) == 1.0), None)
        else:
            answer = doc["answer"] + "404404404"
        if answer is not None:
            items.append({**doc, "answer": answer})
            assert score(items[-1], response) == (1.0 if correct else 0.0)
    assert items, f"qwen-arith's responses name no answer at all: {list(said.values())[:8]}"
    (tmp_path / "toy" / "data").mkdir(parents=True)
    (tmp_path / "toy" / "data" / "benchmark.jsonl").write_text("".join(json.dumps(b) + "\n" for b in items))
    params = fppipeline.stage_slice(cfg, "evaluate", "qwen-arith/toy")
    params.pop("prompt_set")  # scoring only; the split by the prompt set has its own tests
    got = stage.run_toy(params, tmp_path)
    assert {e["prompt"]: e["response"] for e in got["examples"]} == {b["prompt"]: said[b["prompt"]] for b in items}
    assert got["metrics"]["toy_arith"] == (1.0 if correct else 0.0)


def test_the_toy_suite_splits_its_accuracy_by_the_prompt_set(results, cfg):
    """With a prompts_only source, every toy evaluation also reports the accuracy on the benchmark items whose prompt
    the training data holds without a reference (only the inference mode can learn those) and on the rest."""
    prompts = {json.loads(line)["messages"][0]["content"]
               for line in (results / "toy" / "data" / "prompts.jsonl").read_text().splitlines()}
    assert stage.prompt_set(paths.data(results, "train")) == prompts
    for model in fppipeline.eval_models(cfg):
        doc = json.loads((results / "eval" / model / "toy.json").read_text())
        inside = [e for e in doc["examples"] if e["prompt"] in prompts]
        assert [e["in_prompt_set"] for e in doc["examples"]] == [e["prompt"] in prompts for e in doc["examples"]]
        assert doc["subsets"]["prompt_set"]["n"] == len(inside) > 0
        assert doc["subsets"]["not_prompt_set"]["n"] == len(doc["examples"]) - len(inside) > 0
        assert doc["metrics"]["toy_prompt_set"] == pytest.approx(sum(e["correct"] for e in inside) / len(inside))


def test_the_toy_suite_names_missing_training_data(cfg, tmp_path):
    params = fppipeline.stage_slice(cfg, "evaluate", "llama-pivot/toy")
    with pytest.raises(Exception) as err:
        stage.prompt_set(paths.data(tmp_path, "train"))
    assert params["prompt_set"] is True
    assert str(err.value) == (f"{paths.data(tmp_path, 'train')}: missing; the toy suite splits its accuracy by the "
                              "training data's prompt set (a prompts_only source): run the data stage first")


def test_the_pivot_wins_half_against_itself_and_others_are_judged_on_the_same_prompts(results):
    pivot = json.loads((results / "eval" / "llama-pivot" / "rm.json").read_text())
    other = json.loads((results / "eval" / "merge.fusechat.sce" / "rm.json").read_text())
    assert pivot["metrics"]["win_rate_vs_pivot"] == 0.5
    assert [p["sample_id"] for p in pivot["per_prompt"]] == [p["sample_id"] for p in other["per_prompt"]]
    assert set(pivot["per_prompt"][0]["scores"]) == {"rm-large", "rm-medium", "rm-small"}


def test_report_matches_the_evaluations(results):
    rows = (results / "report" / "results.csv").read_text().splitlines()
    header = rows[0].split(",")
    for line in rows[1:]:
        cells = dict(zip(header, line.split(","), strict=False))
        doc = json.loads((results / "eval" / cells["model"] / "results.json").read_text())
        assert float(cells["toy_mean"]) == pytest.approx(doc["metrics"]["toy_mean"])
        toy = json.loads((results / "eval" / cells["model"] / "toy.json").read_text())
        assert int(cells["n:toy_arith"]) == toy["tasks"]["fusepipe_toy_arith"]["n"]  # the headline's n per domain
        assert float(cells["lo95:toy_arith"]) <= float(cells["toy_arith"]) <= float(cells["hi95:toy_arith"])
    page = (results / "report" / "index.html").read_text()
    assert page.index("<table class='headline'>") < page.index("<h2>All metrics</h2>")
    assert "Training curves" in page and "Merge coefficients" in page and "Alignment coverage" in page
    assert page.index("</table>") < page.index("<h2>What fusion moved</h2>") < page.index("<h2>All metrics</h2>")
    assert "What fusion moved" in (results / "report" / "summary.txt").read_text()


def test_the_report_says_whether_each_papers_claim_holds(results):
    """One claim per trained or merged model of the run (whatever the toy models happen to learn): each pairwise
    target on its source's own domain, the unified targets and the merges on the mean, each with a verdict."""
    report = json.loads((results / "report" / "_manifest.json").read_text())
    claims = {(c["model"], c["claim"]): c for c in report["claims"]}
    for source, domain in (("qwen-arith", "arith"), ("mistral-facts", "facts"), ("gpt2-strings", "strings")):
        assert claims[(f"train.fusechat.{source}", "> SFT")]["on"] == f"{domain} (its source's)"
    assert claims[("merge.fusechat.sce", "> llama-pivot")]["on"] == "mean"
    assert {"train.profuser.all", "train.udf.all", "merge.fusechat.rsaf"} <= {m for m, _ in claims}
    assert {c["verdict"] for c in claims.values()} <= {"holds", "tie", "reversed"}
    n = {t.removeprefix("fusepipe_toy_"): m["n"] for t, m in json.loads(
        (results / "eval" / "train.sft.sft" / "toy.json").read_text())["tasks"].items()}
    for c in claims.values():  # paired over every item of the domain, or of all domains
        assert int(c["n"]) == (n[c["on"].split()[0]] if "its source" in c["on"] else sum(n.values())), c
    page = (results / "report" / "index.html").read_text()
    assert page.index("<table class='headline'>") < page.index("<h2>Does fusion beat SFT?</h2>")


SOURCES = ("gpt2-strings", "mistral-facts", "qwen-arith")


def test_the_transfer_suite_measures_models_with_the_pivots_tokenizer_only(results, cfg):
    for model, info in fppipeline.eval_models(cfg).items():
        doc = json.loads((results / "eval" / model / "transfer.json").read_text())
        if info["kind"] == "source":
            assert doc["metrics"] == {} and doc["skipped"] == f"{model} does not share the pivot's tokenizer"
            continue
        m = doc["metrics"]
        assert set(m) == {*(f"transfer_kl:{s}" for s in SOURCES), "transfer_nll_gt", "transfer_top1_gt"}, model
        assert all(v >= -1e-6 for k, v in m.items() if k.startswith("transfer_kl:")), m  # a KL on the top-k
        assert doc["conversations"] > 100


def test_each_fusechat_target_is_closest_to_its_own_source_and_sft_is_not_moved(results):
    """Over the whole fusion data (the `transfer` suite): each FuseChat target's KL to its own source is the lowest
    of the three targets', and well below SFT's; SFT and the targets rank the ground truth first alike. Measured
    (seed 0 / 1): own / SFT .35-.54, own / nearest other target .67-.89; top-1 = GT .999 (targets), .999-1.0 (SFT)."""
    kl = {m: json.loads((results / "eval" / m / "transfer.json").read_text())["metrics"]
          for m in ["train.sft.sft", *(f"train.fusechat.{s}" for s in SOURCES)]}
    for s in SOURCES:
        own = kl[f"train.fusechat.{s}"][f"transfer_kl:{s}"]
        others = [kl[f"train.fusechat.{o}"][f"transfer_kl:{s}"] for o in SOURCES if o != s]
        assert own < min(others) and own <= 0.7 * kl["train.sft.sft"][f"transfer_kl:{s}"], (s, kl)
        assert abs(kl[f"train.fusechat.{s}"]["transfer_top1_gt"] - kl["train.sft.sft"]["transfer_top1_gt"]) <= 0.02


def test_the_transfer_suite_names_a_missing_alignment(cfg, tmp_path):
    params = fppipeline.stage_slice(cfg, "evaluate", "train.sft.sft/transfer")
    import shutil

    shutil.copytree(cfg.workdir + "/data", tmp_path / "data")
    with pytest.raises(Exception) as err:
        stage.run(params, tmp_path)
    shard = paths.align_shard(tmp_path, "llama-pivot", "qwen-arith", "gt", 0)
    assert str(err.value) == f"{shard}: missing; run the align stage for llama-pivot~qwen-arith first"


def test_evaluate_names_a_model_that_was_not_trained(cfg, tmp_path):
    params = fppipeline.stage_slice(cfg, "evaluate", "merge.fusechat.sce/toy")
    params["model"]["path"] = str(tmp_path / "nope")
    with pytest.raises(Exception) as err:
        stage.run(params, tmp_path)
    assert str(err.value) == f"{tmp_path / 'nope'}: missing; run the merge stage for merge.fusechat.sce first"
    assert paths.eval_suite(tmp_path, "x", "toy").endswith("eval/x/toy.json")


def test_transfer_names_a_teacher_built_on_other_tokens(results, cfg):
    """The aligned teacher must be on the very tokens the model is scored on (a stale align stage after a data or
    tokenizer change is not silently mis-scored)."""
    from fusepipe.evaluate import transfer

    pivot = fppipeline.stage_slice(cfg, "evaluate", "train.sft.sft/transfer")["pivot_model"]
    examples = transfer.examples_from_data(paths.data(results, "train"), pivot, "truncate", 3)
    shards = [paths.align_shard(results, "llama-pivot", "qwen-arith", "gt", i) for i in range(cfg.logits.shards)]
    teachers = transfer.teacher_rows(shards, {e.key for e in examples})
    first = examples[0].key
    teachers[first] = {**teachers[first], "token_ids": teachers[first]["token_ids"] + 1}
    with pytest.raises(Exception) as err:
        transfer.measure(paths.train_model(results, "sft", "sft"), examples, teachers)
    assert str(err.value) == f"sample {first}: the aligned teacher's tokens are not the student's targets"


def test_an_evaluate_job_ignores_a_launchers_rendezvous(results, cfg, tmp_path):
    """Snakemake started from a shell that holds torchrun-style variables (or from a process that trained
    in-process) passes them to every evaluate job; lm-eval's HF model would open a process group on that
    MASTER_PORT, and a second evaluate job beside the first died with EADDRINUSE. The port is held here, as by a
    job running beside it: the job drops the variables and evaluates."""
    import os
    import socket
    import subprocess
    import sys

    bench = [json.loads(line) for line in (results / "toy" / "data" / "benchmark.jsonl").read_text().splitlines()]
    (tmp_path / "toy" / "data").mkdir(parents=True)
    (tmp_path / "toy" / "data" / "benchmark.jsonl").write_text("".join(json.dumps(b) + "\n" for b in bench[:3]))
    params = fppipeline.stage_slice(cfg, "evaluate", "qwen-arith/toy")
    params.pop("prompt_set")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(held.getsockname()[1])}
        proc = subprocess.run([sys.executable, "-m", "fusepipe", "evaluate", "--config-json", json.dumps(params),
                               "--workdir", str(tmp_path), "--model", "qwen-arith"],
                              env=env, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "EADDRINUSE" not in proc.stderr
    assert json.loads(Path(paths.eval_suite(tmp_path, "qwen-arith", "toy")).read_text())["metrics"]
