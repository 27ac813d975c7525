# Merging the trained targets of every pairwise recipe, one job per (recipe, method).
MERGE_RECIPES = [r.name for r in fprecipes.merge_recipes(CFG)]
MERGE_PAIRS = fppipeline.merge_pairs(CFG, ablations=True)  # `all`'s merges and the ablation grids'


rule merge:
    """Merge a recipe's pairwise targets onto the pivot, streaming tensor by tensor (SCE, RSAF, TIES, ...)."""
    input:
        targets=lambda wc: [paths.train_model(W, wc.recipe, t)
                            for t in fprecipes.targets(CFG, fpablations.recipe(CFG, wc.recipe))],
        pivot=local_inputs(CFG.pivot.path),
    output:
        directory(paths.merge_model(W, "{recipe}", "{method}")),
    params:
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=lambda wc: stage_params("merge", f"{wc.recipe}/{wc.method}"),
        code=stage_code("merge", "paths"),
    wildcard_constraints:
        recipe="|".join(sorted({r for r, _ in MERGE_PAIRS})) or "none",
        method="|".join(sorted({m for _, m in MERGE_PAIRS})) or "none",
    threads: fpcluster.rule_threads(CFG, 'merge', lambda wc: f"{wc.recipe}/{wc.method}")
    resources:
        **fpcluster.rule_resources(CFG, 'merge', lambda wc: f"{wc.recipe}/{wc.method}"),
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{W}/logs/merge/{{recipe}}/{{method}}.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe merge run --config-json {params.cfg:q} --workdir {params.workdir} --recipe {wildcards.recipe}"
        " --method {wildcards.method} 2>&1 | tee {log}"
