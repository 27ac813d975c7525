# Fusion targets per (recipe, target, shard), then DeepSpeed training per (recipe, target).
from fusepipe import recipes as fprecipes
from fusepipe.fuse import stage as fuse_stage

RECIPE_TARGETS = [(r.name, t) for r in CFG.recipes for t in fprecipes.targets(CFG, r)]
RECIPE_NAMES = sorted({r for r, _ in RECIPE_TARGETS})
TARGET_NAMES = sorted({t for _, t in RECIPE_TARGETS})


def fuse_inputs(wc):
    params = fpconfig.stage_slice(CFG, "fuse", f"{wc.recipe}/{wc.target}")
    return fuse_stage.inputs(params, W, int(wc.shard))


def train_targets():
    return [paths.train_model(W, r, t) for r, t in RECIPE_TARGETS]


rule fuse:
    """Training targets of one recipe target for one shard (MinCE / UDF / naive on gt, the RM vote on inf)."""
    input:
        unpack(fuse_inputs),
    output:
        shard=paths.targets_shard(W, "{recipe}", "{target}", "{shard}"),
        manifest=str(shard_manifest(paths.targets_shard(W, "{recipe}", "{target}", "{shard}"))),
    params:
        cfg=lambda wc: stage_params("fuse", f"{wc.recipe}/{wc.target}"),
        code=stage_code("fuse", "align", "logits", "generate", "paths"),
    wildcard_constraints:
        recipe="|".join(RECIPE_NAMES) or "none",
        target="|".join(TARGET_NAMES) or "none",
        shard=r"\d{5}",
    threads: 1
    log:
        f"{W}/logs/fuse/{{recipe}}/{{target}}/shard-{{shard}}.log",
    shell:
        "{PY} -m fusepipe fuse --config-json {params.cfg:q} --workdir {W} --recipe {wildcards.recipe}"
        " --target {wildcards.target} --shard {wildcards.shard} 2>&1 | tee {log}"


def train_launch(wc, resources):
    """One process locally; torchrun across the job's GPUs on a cluster node."""
    if resources.gpu > 1:
        return f"torchrun --standalone --nproc_per_node {resources.gpu} -m fusepipe"
    return f"{PY} -m fusepipe"


rule train:
    """Fine-tune the pivot on one recipe target (DeepSpeed ZeRO); the consolidated HF folder is the output."""
    input:
        targets=lambda wc: [paths.targets_shard(W, wc.recipe, wc.target, s) for s in LOGITS_SHARD_IDS],
        pivot=local_inputs(CFG.pivot.path),
    output:
        directory(paths.train_model(W, "{recipe}", "{target}")),
    params:
        cfg=lambda wc: stage_params("train", f"{wc.recipe}/{wc.target}"),
        code=stage_code("train", "losses", "fuse", "logits"),
        launch=train_launch,
    wildcard_constraints:
        recipe="|".join(RECIPE_NAMES) or "none",
        target="|".join(TARGET_NAMES) or "none",
    threads: 1
    resources:
        gpu=lambda wc: next(r for r in CFG.recipes if r.name == wc.recipe).train.gpus,
    log:
        f"{W}/logs/train/{{recipe}}/{{target}}.log",
    shell:
        "{params.launch} train --config-json {params.cfg:q} --workdir {W} --recipe {wildcards.recipe}"
        " --target {wildcards.target} 2>&1 | tee {log}"
