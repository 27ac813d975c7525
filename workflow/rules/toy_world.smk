if CFG.toy.enabled:

    rule toy_world:
        """Build the embedded default's models, reward models and data (only when `toy.enabled`)."""
        output:
            TOY_DECLARED,
        params:
            workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
            cfg=lambda wc: stage_params("toy_world"),
            code=stage_code("toy"),
        threads: fpcluster.rule_threads(CFG, 'toy_world')
        resources:
            **fpcluster.rule_resources(CFG, 'toy_world'),
        conda:
            "../../envs/cpu.yaml"
        log:
            f"{W}/logs/toy_world.log",
        shell:
            "$FUSEPIPE_PYTHON -m fusepipe toy_world --config-json {params.cfg:q} --out {params.workdir}/toy --cpus {threads} 2>&1 | tee {log}"

    rule toy_twin:
        """llama-arith-twin, the arith expert with the pivot's tokenizer (the homogeneous control), built only when a
        config names it (config/twin.yaml, the tokenizer ablation grid); from the seed alone, beside the world."""
        output:
            directory(TOY_TWIN),
        params:
            workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
            cfg=lambda wc: stage_params("toy_world"),
            code=stage_code("toy"),
        threads: fpcluster.rule_threads(CFG, 'toy_twin')
        resources:
            **fpcluster.rule_resources(CFG, 'toy_world'),
        conda:
            "../../envs/cpu.yaml"
        log:
            f"{W}/logs/toy_twin.log",
        shell:
            "$FUSEPIPE_PYTHON -m fusepipe toy_world --twin --config-json {params.cfg:q} --out {params.workdir}/toy 2>&1 | tee {log}"
