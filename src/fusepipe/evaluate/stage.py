"""`evaluate` stage: one model on one suite -> eval/{model}/{suite}.json; `gather` -> eval/{model}/results.json.

Suites (`evaluate.suites`):
- `lm_eval`: lm-evaluation-harness `simple_evaluate` with the HF backend (the model's chat template applied), the
  papers' task lists with their few-shot settings;
- `toy`: the same harness path on a local task written on the spot over the toy world's held-out benchmark
  (`toy/data/benchmark.jsonl`), one task per domain, exact match by the toy checker (`toy.tasks.check`) — the
  offline stand-in that CI runs;
- `rm`: greedy responses to the held-out prompts (`data/eval.parquet`), scored by every reward model: mean score
  per RM, and the win rate against the pivot's responses (per prompt, the majority of RMs prefers the model's
  response; a split vote counts half). The local stand-in for AlpacaEval-style win rates, which need GPT-4 judges.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from fusepipe import paths
from fusepipe.artifacts import Manifest, write_json
from fusepipe.errors import ArtifactError
from fusepipe.evaluate.suites import task_shots

log = logging.getLogger("fusepipe.evaluate")

DOMAINS = ("arith", "facts", "strings")


# ------------------------------------------------------------------------------------------ lm-eval harness


# a launcher's rendezvous, as torchrun or an in-process training run leaves it in the environment
DISTRIBUTED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _one_process() -> None:
    """An evaluate job is one process. Rendezvous variables inherited from the caller (a shell inside a torchrun or
    a test process that trained in-process) make accelerate, under lm-eval's HF model, open a process group on the
    caller's MASTER_PORT, and two evaluate jobs side by side then fail with EADDRINUSE: drop them."""
    for name in DISTRIBUTED_ENV:
        os.environ.pop(name, None)


def _harness(model_path: str, tasks: list[str], suite: dict[str, Any], spec: dict[str, Any],
             include_path: str | None = None) -> dict[str, Any]:
    """simple_evaluate on the HF backend; returns {task: {metric: value}} and the per-sample records."""
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    _one_process()
    # a local task only: skip scanning lm-eval's own ~12 s worth of task YAMLs
    manager = TaskManager(include_path=include_path, include_defaults=False) if include_path else TaskManager()
    dtype = spec.get("dtype", "auto")
    results: dict[str, Any] = {}
    samples: dict[str, Any] = {}
    groups: dict[int | None, list[str]] = {}
    for entry in tasks:
        name, shots = task_shots(entry)
        groups.setdefault(shots, []).append(name)
    for shots, names in groups.items():
        out = lm_eval.simple_evaluate(
            model="hf",
            model_args={"pretrained": model_path, "dtype": "auto" if dtype == "auto" else dtype,
                        "trust_remote_code": spec.get("trust_remote_code", False)},
            tasks=names, num_fewshot=shots, batch_size=suite["batch_size"], limit=suite["limit"],
            apply_chat_template=suite["apply_chat_template"], task_manager=manager, log_samples=True,
            random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
            device="cuda" if torch.cuda.is_available() else "cpu",
        )
        for task, metrics in out["results"].items():
            results[task] = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "sample_len"}
            results[task]["n"] = metrics.get("sample_len")
        samples.update(out.get("samples", {}))
    return {"tasks": results, "samples": samples}


TOY_TASK = """\
task: fusepipe_toy_{domain}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {benchmark}
test_split: test
process_docs: !function utils.{domain}_docs
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
output_type: generate_until
generation_kwargs:
  until: {until}
  max_gen_toks: 48
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

TOY_UTILS = '''\
"""Written by fusepipe.evaluate: the toy world's benchmark as lm-eval tasks (exact match by the toy checker)."""
from fusepipe.toy.tasks import Item, check


def _docs(domain):
    return lambda dataset: dataset.filter(lambda d: d["domain"] == domain)


{docs}


def process_results(doc, results):
    item = Item(doc["domain"], doc["key"], doc["prompt"], doc.get("gt", ""), "", doc["answer"])
    return {{"acc": float(check(item, results[0]))}}
'''


def write_toy_tasks(folder: Path, benchmark: str | Path, until: list[str] | None = None) -> list[str]:
    """The local lm-eval task files (one task per domain the benchmark has) in `folder`; returns the task names."""
    folder.mkdir(parents=True, exist_ok=True)
    present = {json.loads(line)["domain"] for line in Path(benchmark).read_text().splitlines() if line.strip()}
    domains = [d for d in DOMAINS if d in present]
    docs = "\n".join(f'{d}_docs = _docs("{d}")' for d in domains)
    (folder / "utils.py").write_text(TOY_UTILS.format(docs=docs))
    for d in domains:
        (folder / f"fusepipe_toy_{d}.yaml").write_text(
            TOY_TASK.format(domain=d, benchmark=Path(benchmark).resolve(), until=json.dumps(until or [])))
    return [f"fusepipe_toy_{d}" for d in domains]


def stop_strings(spec: dict[str, Any]) -> list[str]:
    """The model's end-of-turn and eos tokens as text: generation stops there instead of running to the limit."""
    from fusepipe.align.tokens import end_of_turn_id
    from fusepipe.models import load_tokenizer

    tok = load_tokenizer(spec)
    ids = {i for i in (end_of_turn_id(tok), tok.eos_token_id) if i is not None}
    return sorted(tok.convert_ids_to_tokens(sorted(ids)))


def run_toy(params: dict[str, Any], workdir: str | Path) -> dict[str, Any]:
    benchmark = Path(workdir) / "toy" / "data" / "benchmark.jsonl"
    if not benchmark.is_file():
        raise ArtifactError(f"{benchmark}: missing; the toy suite needs the toy world (toy.enabled: true)")
    # the local task's JSON loads through `datasets`, which would otherwise ask the hub about it first (it reads
    # this at import, and lm_eval is imported by _harness below); real suites keep the user's setting
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="fusepipe-toy-task-") as tmp:
        names = write_toy_tasks(Path(tmp), benchmark, stop_strings(params["model"]))
        out = _harness(params["model"]["path"], names, params["suite"], params["model"], include_path=tmp)
    per_domain = {t.removeprefix("fusepipe_toy_"): m["acc,none"] for t, m in out["tasks"].items()}
    examples = [{"domain": s["doc"]["domain"], "prompt": s["doc"]["prompt"], "answer": s["doc"]["answer"],
                 "response": s["resps"][0][0], "correct": bool(s["acc"])}
                for task in names for s in out["samples"].get(task, [])]
    metrics = {**{f"toy_{d}": v for d, v in per_domain.items()},
               "toy_mean": sum(per_domain.values()) / max(len(per_domain), 1)}
    doc: dict[str, Any] = {"tasks": out["tasks"], "examples": examples}
    if params.get("prompt_set"):
        doc["subsets"] = split_by_prompt_set(examples, prompt_set(paths.data(workdir, "train")))
        metrics |= {f"toy_{name}": s["acc"] for name, s in doc["subsets"].items() if s["n"]}
    return {"metrics": metrics, **doc}


def prompt_set(data_path: str | Path) -> set[str]:
    """The prompts the training data holds without a reference (single-turn rows of `prompts_only` sources)."""
    import pyarrow.parquet as pq

    if not Path(data_path).is_file():
        raise ArtifactError(f"{data_path}: missing; the toy suite splits its accuracy by the training data's prompt "
                            "set (a prompts_only source): run the data stage first")
    from fusepipe.data.clean import is_prompt

    convs = pq.ParquetFile(data_path).read(columns=["messages"]).column("messages").to_pylist()
    return {m[-1]["content"] for m in convs if is_prompt(m) and sum(x["role"] == "user" for x in m) == 1}


def split_by_prompt_set(examples: list[dict[str, Any]], prompts: set[str]) -> dict[str, dict[str, Any]]:
    """Accuracy on the benchmark items whose prompt is in the prompt set (`prompt_set`: only the inference mode
    can learn their answers) and on the rest (`not_prompt_set`), with their counts; marks each example."""
    for e in examples:
        e["in_prompt_set"] = e["prompt"] in prompts
    out = {}
    for name, inside in (("prompt_set", True), ("not_prompt_set", False)):
        hits = [e["correct"] for e in examples if e["in_prompt_set"] == inside]
        out[name] = {"acc": sum(hits) / len(hits) if hits else None, "n": len(hits)}
    return out


def run_lm_eval(params: dict[str, Any]) -> dict[str, Any]:
    out = _harness(params["model"]["path"], params["suite"]["tasks"], params["suite"], params["model"])
    metrics = {}
    for task, m in out["tasks"].items():
        main = next((k for k in ("acc_norm,none", "acc,none", "exact_match,strict-match", "exact_match,none",
                                 "pass@1,create_test", "prompt_level_strict_acc,none") if k in m), None)
        if main is not None:
            metrics[task] = m[main]
    return {"metrics": metrics, "tasks": out["tasks"]}


# ------------------------------------------------------------------------------------------------ RM judge


def held_out_prompts(workdir: str | Path, limit: int) -> list[tuple[str, list[dict[str, str]]]]:
    from fusepipe.generate.stage import prompt_of, read_conversations

    convs = read_conversations(paths.data(workdir, "eval"), 0, 1)
    return [(sid, prompt_of(msgs, sid)) for sid, msgs in convs[:limit]]


def run_rm(params: dict[str, Any], workdir: str | Path) -> dict[str, Any]:
    from fusepipe.engines import Request, Sampling, open_engine

    suite, spec = params["suite"], params["model"]
    prompts = held_out_prompts(workdir, suite["max_prompts"])
    if not prompts:
        raise ArtifactError(f"{paths.data(workdir, 'eval')}: no held-out conversations; set data.eval_fraction > 0")
    with open_engine(spec, "generate") as engine:
        gens = engine.generate([Request(p, seed=0, key=sid) for sid, p in prompts],
                               Sampling(temperature=0.0, max_tokens=suite["max_tokens"]))
    responses = [g.text for g in gens]
    convs = [[*p, {"role": "assistant", "content": r}] for (_, p), r in zip(prompts, responses, strict=True)]
    scores: dict[str, list[float]] = {}
    for rm in params["reward_models"]:
        with open_engine(rm, "score") as judge:
            scores[rm["name"]] = judge.score(convs, [sid for sid, _ in prompts])
    per_prompt = [{"sample_id": sid, "response": r, "scores": {name: s[i] for name, s in scores.items()}}
                  for i, ((sid, _), r) in enumerate(zip(prompts, responses, strict=True))]
    metrics = {f"rm_{name}": sum(s) / len(s) for name, s in scores.items()}
    metrics["rm_mean_z"] = None  # filled by the report across models (needs every model's scores)
    if params["model"]["name"] != params["pivot"]:
        metrics["win_rate_vs_pivot"] = win_rate(per_prompt, pivot_scores(workdir, params["pivot"]))
    else:
        metrics["win_rate_vs_pivot"] = 0.5
    metrics = {k: v for k, v in metrics.items() if v is not None}
    return {"metrics": metrics, "per_prompt": per_prompt}


def pivot_scores(workdir: str | Path, pivot: str) -> dict[str, dict[str, float]]:
    path = Path(paths.eval_suite(workdir, pivot, "rm"))
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; evaluate the pivot on the rm suite first (its responses are the "
                            "baseline of the win rate)")
    return {p["sample_id"]: p["scores"] for p in json.loads(path.read_text())["per_prompt"]}


def win_rate(per_prompt: list[dict[str, Any]], pivot: dict[str, dict[str, float]]) -> float:
    """Share of prompts where the majority of RMs score the model's response above the pivot's (a split vote or
    equal scores count half)."""
    wins = 0.0
    n = 0
    for p in per_prompt:
        base = pivot.get(p["sample_id"])
        if base is None:
            continue
        votes = [1.0 if p["scores"][rm] > base[rm] else 0.0 if p["scores"][rm] < base[rm] else 0.5
                 for rm in p["scores"] if rm in base]
        if not votes:
            continue
        share = sum(votes) / len(votes)
        wins += 1.0 if share > 0.5 else 0.0 if share < 0.5 else 0.5
        n += 1
    return wins / n if n else float("nan")


# ------------------------------------------------------------------------------------------------- driver


def run(params: dict[str, Any], workdir: str | Path) -> dict[str, Any]:
    suite, model = params["suite"], params["model"]
    out = Path(paths.eval_suite(workdir, model["name"], suite["name"]))
    if params["about"]["kind"] in ("train", "merge") and not Path(model["path"]).exists():
        raise ArtifactError(f"{model['path']}: missing; run the {params['about']['kind']} stage for "
                            f"{model['name']} first")
    manifest = Manifest("evaluate", params)
    with manifest.phase(suite["kind"]):
        if suite["kind"] == "toy":
            result = run_toy(params, workdir)
        elif suite["kind"] == "rm":
            result = run_rm(params, workdir)
        elif suite["kind"] == "transfer":
            from fusepipe.evaluate.transfer import run_suite

            result = run_suite(params, workdir)
        else:
            result = run_lm_eval(params)
    doc = {"model": model["name"], "path": model["path"], "about": params["about"], "suite": suite["name"],
           "kind": suite["kind"], **result, "timings_s": manifest["timings_s"]}
    write_json(doc, out)
    log.info("%s on %s: %s", model["name"], suite["name"],
             ", ".join(f"{k} {v:.3f}" for k, v in result["metrics"].items()) or result.get("skipped", "-"))
    return doc


def gather(model: str, suite_paths: list[str | Path], out: str | Path) -> dict[str, Any]:
    """eval/{model}/results.json: every suite's metrics of one model."""
    docs = [json.loads(Path(p).read_text()) for p in suite_paths]
    result = {"model": model, "about": docs[0]["about"] if docs else {}, "path": docs[0]["path"] if docs else None,
              "metrics": {k: v for d in docs for k, v in d["metrics"].items()},
              "suites": {d["suite"]: d["metrics"] for d in docs}}
    write_json(result, out)
    return result
