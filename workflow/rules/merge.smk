# Merging the trained targets of every pairwise recipe, one job per (recipe, method).
MERGE_RECIPES = [r.name for r in fpconfig.merge_recipes(CFG)]


def merge_targets():
    return [paths.merge_model(W, r, m) for r in MERGE_RECIPES for m in CFG.merge.methods]


rule merge:
    """Merge a recipe's pairwise targets onto the pivot, streaming tensor by tensor (SCE, RSAF, TIES, ...)."""
    input:
        targets=lambda wc: [paths.train_model(W, wc.recipe, t)
                            for t in fprecipes.targets(CFG, next(r for r in CFG.recipes if r.name == wc.recipe))],
        pivot=local_inputs(CFG.pivot.path),
    output:
        directory(paths.merge_model(W, "{recipe}", "{method}")),
    params:
        cfg=lambda wc: stage_params("merge", f"{wc.recipe}/{wc.method}"),
        code=stage_code("merge", "paths"),
    wildcard_constraints:
        recipe="|".join(MERGE_RECIPES) or "none",
        method="|".join(CFG.merge.methods),
    threads: 1
    log:
        f"{W}/logs/merge/{{recipe}}/{{method}}.log",
    shell:
        "{PY} -m fusepipe merge run --config-json {params.cfg:q} --workdir {W} --recipe {wildcards.recipe}"
        " --method {wildcards.method} 2>&1 | tee {log}"
