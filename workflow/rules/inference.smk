# Inference mode (ProFuser): every generator samples responses, every reward model scores them, the RMs vote.
# One job per (model, shard) and per (reward model, shard), so a cluster runs them side by side.
SHARDS = [f"{i:05d}" for i in range(CFG.generate.shards)]
GENERATORS = [m.name for m in CFG.generators]
REWARD_MODELS = [r.name for r in CFG.reward_models]


rule generate:
    """Sample `generate.n` responses per training prompt from one model (vLLM; transformers as fallback)."""
    input:
        data=paths.data(W),
        model=lambda wc: local_inputs(CFG.model(wc.model).path),
    output:
        shard=paths.gen_shard(W, "{model}", "{shard}"),
        manifest=str(shard_manifest(paths.gen_shard(W, "{model}", "{shard}"))),
    params:
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=lambda wc: stage_params("generate", wc.model),
        code=stage_code("generate", "engines", "paths"),
    wildcard_constraints:
        model="|".join(GENERATORS) or "none",
        shard=r"\d{5}",
    threads: fpcluster.rule_threads(CFG, 'generate', lambda wc: wc.model)
    resources:
        **fpcluster.rule_resources(CFG, 'generate', lambda wc: wc.model),
    conda:
        "../../envs/vllm.yaml"
    log:
        f"{W}/logs/generate/{{model}}/shard-{{shard}}.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe generate --config-json {params.cfg:q} --workdir {params.workdir} --target {wildcards.model}"
        " --shard {wildcards.shard} 2>&1 | tee {log}"


rule reward:
    """Score every response of one shard, from every generator, with one reward model."""
    input:
        data=paths.data(W),
        gen=expand(paths.gen_shard(W, "{model}", "{{shard}}"), model=GENERATORS),
        model=lambda wc: local_inputs(CFG.reward_model(wc.rm).path),
    output:
        shard=paths.reward_shard(W, "{rm}", "{shard}"),
        manifest=str(shard_manifest(paths.reward_shard(W, "{rm}", "{shard}"))),
    params:
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=lambda wc: stage_params("reward", wc.rm),
        code=stage_code("reward", "engines", "paths", "generate"),
    wildcard_constraints:
        rm="|".join(REWARD_MODELS) or "none",
        shard=r"\d{5}",
    threads: fpcluster.rule_threads(CFG, 'reward', lambda wc: wc.rm)
    resources:
        **fpcluster.rule_resources(CFG, 'reward', lambda wc: wc.rm),
    conda:
        "../../envs/vllm.yaml"
    log:
        f"{W}/logs/reward/{{rm}}/shard-{{shard}}.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe reward --config-json {params.cfg:q} --workdir {params.workdir} --target {wildcards.rm}"
        " --shard {wildcards.shard} 2>&1 | tee {log}"


rule vote:
    """Majority vote of the reward models per prompt (ties: the strongest RM), over all models and each pair."""
    input:
        rewards=expand(paths.reward_shard(W, "{rm}", "{shard}"), rm=REWARD_MODELS, shard=SHARDS),
        gen=expand(paths.gen_shard(W, "{model}", "{shard}"), model=GENERATORS, shard=SHARDS),  # empty: no candidate
    output:
        choices=paths.vote_choices(W),
        manifest=f"{W}/vote/_manifest.json",
    params:
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=lambda wc: stage_params("vote"),
        code=stage_code("reward", "paths"),
        shards=CFG.generate.shards,
    threads: fpcluster.rule_threads(CFG, 'vote')
    resources:
        **fpcluster.rule_resources(CFG, 'vote'),
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{W}/logs/vote.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe vote --config-json {params.cfg:q} --workdir {params.workdir} --shards {params.shards}"
        " 2>&1 | tee {log}"
