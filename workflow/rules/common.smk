# Helpers shared by the rules: config slices and code versions as params (so a stage reruns when its settings
# or its code change, and only then), and which model/data paths are files Snakemake should track.
from pathlib import Path

from fusepipe import paths
from fusepipe.artifacts import code_version, shard_manifest
from fusepipe.toy.world import output_paths as toy_output_paths, twin_path as toy_twin_path

# Shared modules that shape outputs; config.py, params/, pipeline.py and cli.py only parse and dispatch (the slice
# param covers config).
SHARED_CODE = ("schemas", "artifacts", "chat", "models")
TOY_PATHS = toy_output_paths(f"{W}/toy") if CFG.toy.enabled else {}
TOY_TWIN = str(toy_twin_path(f"{W}/toy"))  # built by its own rule, only when a config names it
TOY_WORLD = [str(p) for p in TOY_PATHS.values()]  # what `all` asks for
TOY_OUTPUTS = TOY_WORLD + ([TOY_TWIN] if CFG.toy.enabled else [])  # what rules may read
# the toy world's outputs as Snakemake declares them: model and reward-model folders are directory() outputs
TOY_DECLARED = [directory(str(p)) if k.startswith(("model:", "rm:")) else str(p) for k, p in TOY_PATHS.items()]


def stage_params(stage, target=None):
    return fppipeline.slice_json(CFG, stage, target)


def stage_code(*modules):
    return code_version(*SHARED_CODE, *modules)


# The ablation grids (fusepipe.ablations): recipes, merges and evaluation ids beyond `all`'s, which the fuse, train,
# merge and evaluate rules accept by name; only the `ablations` target (ablations.smk) requests them.
from fusepipe import ablations as fpablations

ABL = fpablations.plan(CFG)
RULE_RECIPES = [*CFG.recipes, *ABL.recipes]


def local_inputs(*paths):
    """Paths Snakemake can track: existing files/folders and what the toy world builds (hub ids are not)."""
    return [p for p in paths if p in TOY_OUTPUTS or Path(p).exists()]


# ---- used by align.smk


def align_inputs(wc):
    """What the links step reads: the source's logits shard, and the pivot side (its gt logits, or in mode inf
    the voted responses, tokenized with the pivot's tokenizer)."""
    out = {"source": paths.logits_shard(W, wc.mode, wc.source, wc.shard),
           "tokenizers": local_inputs(CFG.pivot.path, CFG.model(wc.source).path)}
    if wc.mode == "gt":
        out["pivot"] = paths.logits_shard(W, "gt", PIVOT, wc.shard)
    else:
        out["data"] = paths.data(W)
        out["vote"] = paths.vote_choices(W)
        out["gen"] = [paths.gen_shard(W, wc.source, s) for s in SHARDS]
    return out


def align_targets():
    return [paths.align_coverage(W, PIVOT, s.name) for s in CFG.sources]


def variant_links(wc, mode, shard):
    """The links a variant's steps read: its own (a `method` variant) or the pair's."""
    from fusepipe.params.align import own_links

    return paths.align_links(W, PIVOT, wc.source, mode, shard, wc.variant if own_links(wc.variant) else None)


def align_variant_params(wc):
    return json.dumps(fppipeline.align_slice(CFG, wc.source, wc.variant), sort_keys=True, separators=(",", ":"))


# ---- used by evaluate.smk


def eval_inputs(wc):
    info = EVAL_RULE_MODELS[wc.model]
    params = fppipeline.stage_slice(CFG, "evaluate", f"{wc.model}/{wc.suite}")
    suite = params["suite"]
    out = {"model": local_inputs(info["path"]) if info["kind"] in ("pivot", "source") else [info["path"]]}
    if suite["kind"] == "toy":
        out["benchmark"] = [p for p in TOY_OUTPUTS if p.endswith("benchmark.jsonl")]
        if params.get("prompt_set"):
            out["data"] = paths.data(W, "train")
    if suite["kind"] == "rm":
        out["data"] = paths.data(W, "eval")
        out["rms"] = local_inputs(*[r.path for r in CFG.reward_models])
        if wc.model != CFG.pivot.name:
            out["pivot"] = paths.eval_suite(W, CFG.pivot.name, wc.suite)
    if suite["kind"] == "transfer":
        out["data"] = paths.data(W, "train")
        out["aligned"] = [paths.align_shard(W, CFG.pivot.name, s.name, "gt", i)
                          for s in CFG.sources for i in range(CFG.logits.shards)]
    return out


def eval_targets():
    return [paths.eval_results(W, m) for m in EVAL_MODELS]


# ---- used by fuse.smk


def fuse_inputs(wc):
    params = fppipeline.stage_slice(CFG, "fuse", f"{wc.recipe}/{wc.target}")
    return fuse_stage.inputs(params, W, int(wc.shard))


def train_targets():
    return [paths.train_model(W, r, t) for r, t in RECIPE_TARGETS]


def train_launch(wc):
    """One process locally; torchrun across the job's GPUs on a cluster node, or one torchrun per node."""
    return fpcluster.train_launch(CFG, f"{wc.recipe}/{wc.target}", "$FUSEPIPE_PYTHON")


# ---- used by logits.smk


def logits_targets():
    out = []
    for mode in CFG.logits.modes:
        models = [m.name for m in CFG.main_models] if mode == "gt" else GENERATORS
        out += [paths.logits_shard(W, mode, m, s) for m in models for s in LOGITS_SHARDS]
    return out


# ---- used by merge.smk


def merge_targets():
    return [paths.merge_model(W, r, m) for r in MERGE_RECIPES for m in CFG.merge.methods]
