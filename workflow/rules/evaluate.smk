# Every model the run uses or produces, on every configured suite: one job per (model, suite), then per model
# eval/{model}/results.json.


import json


import re

EVAL_MODELS = fppipeline.eval_models(CFG)
EVAL_RULE_MODELS = fppipeline.eval_models(CFG, ablations=True)  # + the ablation grids' models (not in `all`)
EVAL_SUITES = CFG.eval_suites
EVAL_IDS = "|".join(re.escape(m) for m in EVAL_RULE_MODELS) or "none"


rule evaluate:
    """One model on one suite: lm-eval tasks, the toy world's local task, or the reward-model judge."""
    input:
        unpack(eval_inputs),
    output:
        paths.eval_suite(W, "{model}", "{suite}"),
    params:
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=lambda wc: stage_params("evaluate", f"{wc.model}/{wc.suite}"),
        code=stage_code("evaluate", "engines", "toy", "paths", "generate", "logits", "fuse", "train"),
    wildcard_constraints:
        model=EVAL_IDS,
        suite="|".join(EVAL_SUITES) or "none",
    threads: fpcluster.rule_threads(CFG, 'evaluate', lambda wc: f"{wc.model}/{wc.suite}")
    resources:
        **fpcluster.rule_resources(CFG, 'evaluate', lambda wc: f"{wc.model}/{wc.suite}"),
    conda:
        "../../envs/vllm.yaml"
    log:
        f"{W}/logs/evaluate/{{model}}/{{suite}}.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe evaluate --config-json {params.cfg:q} --workdir {params.workdir}"
        " --model {wildcards.model} 2>&1 | tee {log}"


rule eval_results:
    """A model's metrics over all suites."""
    input:
        lambda wc: [paths.eval_suite(W, wc.model, s) for s in EVAL_SUITES],
    output:
        paths.eval_results(W, "{model}"),
    params:
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=lambda wc: json.dumps({"suites": EVAL_SUITES}),
    wildcard_constraints:
        model=EVAL_IDS,
    threads: fpcluster.rule_threads(CFG, 'report')
    resources:
        **fpcluster.rule_resources(CFG, 'report'),
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{W}/logs/evaluate/{{model}}/results.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe evaluate --gather --config-json {params.cfg:q} --workdir {params.workdir} --model {wildcards.model} 2>&1 | tee {log}"
