# Fusion targets per (recipe, target, shard), then DeepSpeed training per (recipe, target).
from fusepipe import recipes as fprecipes
from fusepipe.fuse import stage as fuse_stage

RECIPE_TARGETS = [(r.name, t) for r in CFG.recipes for t in fprecipes.targets(CFG, r)]
RULE_TARGETS = [(r.name, t) for r in RULE_RECIPES for t in fprecipes.targets(CFG, r)]  # + the ablation grids'
RECIPE_NAMES = sorted({r for r, _ in RULE_TARGETS})
TARGET_NAMES = sorted({t for _, t in RULE_TARGETS})


rule fuse:
    """Training targets of one recipe target for one shard (MinCE / UDF / naive on gt, the RM vote on inf)."""
    input:
        unpack(fuse_inputs),
    output:
        shard=paths.targets_shard(W, "{recipe}", "{target}", "{shard}"),
        manifest=str(shard_manifest(paths.targets_shard(W, "{recipe}", "{target}", "{shard}"))),
    params:
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=lambda wc: stage_params("fuse", f"{wc.recipe}/{wc.target}"),
        code=stage_code("fuse", "align", "logits", "generate", "paths"),
    wildcard_constraints:
        recipe="|".join(RECIPE_NAMES) or "none",
        target="|".join(TARGET_NAMES) or "none",
        shard=r"\d{5}",
    threads: fpcluster.rule_threads(CFG, 'fuse')
    resources:
        **fpcluster.rule_resources(CFG, 'fuse'),
    conda:
        "../../envs/cpu.yaml"
    log:
        f"{W}/logs/fuse/{{recipe}}/{{target}}/shard-{{shard}}.log",
    shell:
        "$FUSEPIPE_PYTHON -m fusepipe fuse --config-json {params.cfg:q} --workdir {params.workdir} --recipe {wildcards.recipe}"
        " --target {wildcards.target} --shard {wildcards.shard} 2>&1 | tee {log}"


rule train:
    """Fine-tune the pivot on one recipe target (DeepSpeed ZeRO); the consolidated HF folder is the output."""
    input:
        targets=lambda wc: [paths.targets_shard(W, wc.recipe, wc.target, s) for s in LOGITS_SHARD_IDS],
        pivot=local_inputs(CFG.pivot.path),
    output:
        directory(paths.train_model(W, "{recipe}", "{target}")),
    params:
        workdir=lambda wc: W,  # a function: --lint takes a plain prefix for a hard-coded path
        cfg=lambda wc: stage_params("train", f"{wc.recipe}/{wc.target}"),
        code=stage_code("train", "losses", "fuse", "logits"),
        launch=train_launch,
    wildcard_constraints:
        recipe="|".join(RECIPE_NAMES) or "none",
        target="|".join(TARGET_NAMES) or "none",
    threads: fpcluster.rule_threads(CFG, 'train', lambda wc: f"{wc.recipe}/{wc.target}")
    resources:
        **fpcluster.rule_resources(CFG, 'train', lambda wc: f"{wc.recipe}/{wc.target}"),
    conda:
        "../../envs/train.yaml"
    log:
        f"{W}/logs/train/{{recipe}}/{{target}}.log",
    shell:
        "{params.launch} train --config-json {params.cfg:q} --workdir {params.workdir} --recipe {wildcards.recipe}"
        " --target {wildcards.target} 2>&1 | tee {log}"
