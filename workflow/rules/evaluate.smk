# Every model the run uses or produces, on every configured suite: one job per (model, suite), then per model
# eval/{model}/results.json.
import json
import re

EVAL_MODELS = fpconfig.eval_models(CFG)
EVAL_SUITES = CFG.eval_suites
EVAL_IDS = "|".join(re.escape(m) for m in EVAL_MODELS) or "none"


def eval_inputs(wc):
    info = EVAL_MODELS[wc.model]
    suite = fpconfig.stage_slice(CFG, "evaluate", f"{wc.model}/{wc.suite}")["suite"]
    out = {"model": local_inputs(info["path"]) if info["kind"] in ("pivot", "source") else [info["path"]]}
    if suite["kind"] == "toy":
        out["benchmark"] = [p for p in TOY_OUTPUTS if p.endswith("benchmark.jsonl")]
    if suite["kind"] == "rm":
        out["data"] = paths.data(W, "eval")
        out["rms"] = local_inputs(*[r.path for r in CFG.reward_models])
        if wc.model != CFG.pivot.name:
            out["pivot"] = paths.eval_suite(W, CFG.pivot.name, wc.suite)
    return out


def eval_targets():
    return [paths.eval_results(W, m) for m in EVAL_MODELS]


rule evaluate:
    """One model on one suite: lm-eval tasks, the toy world's local task, or the reward-model judge."""
    input:
        unpack(eval_inputs),
    output:
        paths.eval_suite(W, "{model}", "{suite}"),
    params:
        cfg=lambda wc: stage_params("evaluate", f"{wc.model}/{wc.suite}"),
        code=stage_code("evaluate", "engines", "toy", "paths", "generate"),
    wildcard_constraints:
        model=EVAL_IDS,
        suite="|".join(EVAL_SUITES) or "none",
    threads: 1
    resources:
        gpu=lambda wc: EVAL_MODELS[wc.model]["spec"].tensor_parallel_size,
    log:
        f"{W}/logs/evaluate/{{model}}/{{suite}}.log",
    shell:
        "HF_DATASETS_OFFLINE=1 {PY} -m fusepipe evaluate --config-json {params.cfg:q} --workdir {W}"
        " --model {wildcards.model} 2>&1 | tee {log}"


rule eval_results:
    """A model's metrics over all suites."""
    input:
        lambda wc: [paths.eval_suite(W, wc.model, s) for s in EVAL_SUITES],
    output:
        paths.eval_results(W, "{model}"),
    params:
        cfg=lambda wc: json.dumps({"suites": EVAL_SUITES}),
    wildcard_constraints:
        model=EVAL_IDS,
    threads: 1
    shell:
        "{PY} -m fusepipe evaluate --gather --config-json {params.cfg:q} --workdir {W} --model {wildcards.model}"
