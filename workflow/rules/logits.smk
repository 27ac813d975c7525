# Teacher-forced top-k log-probs: mode gt (every model on the ground truth) and mode inf (each voted response
# through its generator). One job per (mode, model, shard).
LOGITS_SHARDS = [f"{i:05d}" for i in range(CFG.logits.shards)]
MODEL_NAMES = [m.name for m in CFG.models]


rule logits_gt:
    """Top-k of one model at every assistant token of the ground-truth conversations of one shard."""
    input:
        data=paths.data(W),
        model=lambda wc: local_inputs(CFG.model(wc.model).path),
    output:
        shard=paths.logits_shard(W, "gt", "{model}", "{shard}"),
        manifest=str(shard_manifest(paths.logits_shard(W, "gt", "{model}", "{shard}"))),
    params:
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=lambda wc: stage_params("logits", wc.model),
        code=stage_code("logits", "engines", "paths", "generate"),
    wildcard_constraints:
        model="|".join(MODEL_NAMES),
        shard=r"\d{5}",
    threads: fpcluster.rule_threads(CFG, 'logits', lambda wc: wc.model)
    resources:
        **fpcluster.rule_resources(CFG, 'logits', lambda wc: wc.model),
    conda:
        "../../envs/vllm.yaml"
    log:
        f"{W}/logs/logits/gt/{{model}}/shard-{{shard}}.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe logits --mode gt --config-json {params.cfg:q} --workdir {params.workdir} --target {wildcards.model}"
        " --shard {wildcards.shard} 2>&1 | tee {log}"


rule logits_inf:
    """Top-k of one model at every token of its responses that won a vote (ProFuser's inference mode)."""
    input:
        data=paths.data(W),
        vote=paths.vote_choices(W),
        gen=lambda wc: [paths.gen_shard(W, wc.model, s) for s in SHARDS],
        model=lambda wc: local_inputs(CFG.model(wc.model).path),
    output:
        shard=paths.logits_shard(W, "inf", "{model}", "{shard}"),
        manifest=str(shard_manifest(paths.logits_shard(W, "inf", "{model}", "{shard}"))),
    params:
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=lambda wc: stage_params("logits", wc.model),
        code=stage_code("logits", "engines", "paths", "generate"),
        gen_shards=CFG.generate.shards,
    wildcard_constraints:
        model="|".join(GENERATORS) or "none",
        shard=r"\d{5}",
    threads: fpcluster.rule_threads(CFG, 'logits', lambda wc: wc.model)
    resources:
        **fpcluster.rule_resources(CFG, 'logits', lambda wc: wc.model),
    conda:
        "../../envs/vllm.yaml"
    log:
        f"{W}/logs/logits/inf/{{model}}/shard-{{shard}}.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe logits --mode inf --config-json {params.cfg:q} --workdir {params.workdir} --target {wildcards.model}"
        " --shard {wildcards.shard} --gen-shards {params.gen_shards} 2>&1 | tee {log}"
