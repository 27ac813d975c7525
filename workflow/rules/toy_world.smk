if CFG.toy.enabled:

    rule toy_world:
        """Build the embedded default's models, reward models and data (only when `toy.enabled`)."""
        output:
            [directory(p) if "/models/" in p or "/reward_models/" in p else p for p in TOY_OUTPUTS],
        params:
            cfg=stage_params("toy_world"),
            code=stage_code("toy"),
        threads: CFG.toy.threads
        log:
            f"{W}/logs/toy_world.log",
        shell:
            "{PY} -m fusepipe toy_world --config-json {params.cfg:q} --out {W}/toy 2>&1 | tee {log}"
