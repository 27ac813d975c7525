"""The config as the pipeline reads it: one `load()` for the CLI, the Snakefile and the tests, and each stage's slice.

`load` / `load_dict` validate the typed config (`fusepipe.config`), then run the checks that need the recipes and
the ablation grids (`recipes.check`, `ablations.check`); every problem is a one-line ConfigError. Each stage gets
only its own slice (`stage_slice`), so editing one stage's settings reruns that stage and what depends on it, not
everything. `eval_models` and `merge_pairs` list what a run evaluates and merges (with `ablations=True`, the
ablation grids' too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from fusepipe import ablations as fpablations
from fusepipe import recipes
from fusepipe.config import Config, RecipeConfig, format_validation_error
from fusepipe.errors import ConfigError
from fusepipe.evaluate import suites


def load_dict(raw: dict[str, Any], origin: str = "config") -> Config:
    """The config from parsed YAML (`origin` names it in errors): typed validation (fusepipe.config), then
    the checks the schema cannot see (`recipes.check`, `ablations.check`); a problem is one ConfigError."""
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin)) from None
    recipes.check(cfg)
    fpablations.check(cfg)
    return cfg


def load(path: str | Path) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys, got {type(raw).__name__}")
    return load_dict(raw, str(path))


# ---------------------------------------------------------------------------------------------- slices

# Which parts of the config each stage reads. A stage's slice is its Snakemake `params`, so editing a key
# reruns exactly the stages that read it (and, through their outputs, what depends on them). Stages that run
# once per model or reward model (`target`) read only that one's entry.
TOKENIZER_KEYS = ("name", "path", "chat_template", "trust_remote_code")


# Keys that size cluster jobs and plans, or how a job spreads over CPUs, but never change an artifact: left out
# of the slices (no rerun).
SIZING_KEYS = {"params_b", "workers"}


def _dump(model: BaseModel, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    out = model.model_dump(mode="json", exclude=SIZING_KEYS & set(type(model).model_fields))
    return {k: out[k] for k in keys} if keys else out


def _vote_slice(cfg: Config) -> dict[str, Any]:
    return {
        "vote": _dump(cfg.vote),
        "models": [{"name": m.name, "role": m.role} for m in cfg.generators],
        "reward_models": [{"name": r.name, "strength": r.strength} for r in cfg.reward_models],
        "n": cfg.generate.n,
    }


def _recipe_target(cfg: Config, target: str | None) -> tuple[RecipeConfig, str]:
    """`recipe/target` -> (recipe, target), checked against the config."""
    name, _, model = (target or "").partition("/")
    every = [*cfg.recipes, *fpablations.extra_recipes(cfg)]
    recipe = next((r for r in every if r.name == name), None)
    if recipe is None or model not in recipes.targets(cfg, recipe):
        choices = [f"{r.name}/{t}" for r in every for t in recipes.targets(cfg, r)]
        raise ConfigError(f"no recipe target {target!r}; the config has: {', '.join(choices) or 'no recipes'}")
    return recipe, model


def _fuse_slice(cfg: Config, target: str | None) -> dict[str, Any]:
    recipe, model = _recipe_target(cfg, target)
    res = recipes.resolve(recipe)
    out = {
        "recipe": {k: res[k] for k in ("name", "kind", "pairwise", "fusion", "modes")},
        "target": model,
        "members": recipes.members(cfg, res, model),
        "generators": [m.name for m in cfg.generators],
        "pivot": _dump(cfg.pivot),
        "logits": {"k": cfg.logits.k, "shards": cfg.logits.shards, "overlong": cfg.logits.overlong},
        "align_k": cfg.align.k or cfg.logits.k,
        "gen_shards": cfg.generate.shards,
    }
    variant = recipes.align_variant(cfg, res)
    if variant:  # its own alignment settings: the pairs aligned again under align/{pair}/{variant}/
        out["align_variant"] = variant
    return out


def align_slice(cfg: Config, source: str, variant: str | None = None) -> dict[str, Any]:
    """The align slice of a pair; with a `variant` (fusepipe.params.align.variant_name: the settings that differ
    from `align:`, e.g. `vocab-mined`), the slice of its steps under align/{pivot}~{source}/{variant}/ (the links
    step too when the variant's `method` differs; otherwise it reads the pair's own links)."""
    from fusepipe.params.align import parse_variant

    out = stage_slice(cfg, "align", source)
    try:
        overrides = parse_variant(variant)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    overrides = {k: v for k, v in overrides.items() if v != getattr(cfg.align, k)}
    if overrides:
        out["align"] = {**out["align"], **overrides}
        out["variant"] = variant
    return out


def _train_slice(cfg: Config, target: str | None) -> dict[str, Any]:
    recipe, model = _recipe_target(cfg, target)
    res = recipes.resolve(recipe)
    return {
        "recipe": {k: res[k] for k in ("name", "kind", "schedule_name", "schedule", "train", "modes")},
        "target": model,
        "pivot": _dump(cfg.pivot),
        "shards": cfg.logits.shards,
    }


def _merge_slice(cfg: Config, target: str | None) -> dict[str, Any]:
    name, _, method = (target or "").partition("/")
    merges = merge_pairs(cfg, ablations=True)
    if (name, method) not in merges:
        choices = [f"{r}/{m}" for r, m in merges]
        raise ConfigError(f"no merge {target!r}; the config has: {', '.join(choices) or 'none'}")
    recipe = fpablations.recipe(cfg, name)
    settings = cfg.merge.model_dump(mode="json", exclude={"methods", "recipes"})
    keep = ("method", "embedding_policy", "dtype", "max_shard_bytes", "threads", method)
    return {
        "merge": {k: v for k, v in {**settings, "method": method}.items() if k in keep},
        "recipe": recipe.name,
        "targets": recipes.targets(cfg, recipe),
        "pivot": _dump(cfg.pivot, TOKENIZER_KEYS),
    }


def merge_pairs(cfg: Config, ablations: bool = False) -> list[tuple[str, str]]:
    """(recipe, method) of every merge `all` builds; with `ablations`, the ablation grids' merges too."""
    out = [(r.name, m) for r in recipes.merge_recipes(cfg) for m in cfg.merge.methods]
    if ablations and cfg.ablations.grids:
        out += [p for p in fpablations.plan(cfg).merges if p not in out]
    return out


def eval_models(cfg: Config, ablations: bool = False) -> dict[str, dict[str, Any]]:
    """Every model a run uses or produces, by evaluation id: the config's models by name, each trained target as
    `train.{recipe}.{target}`, each merged model as `merge.{recipe}.{method}`; with `ablations`, also the models
    the ablation grids add (fusepipe.ablations)."""
    if ablations and cfg.ablations.grids:
        return {**recipes.eval_models(cfg), **fpablations.plan(cfg).eval_models}
    return recipes.eval_models(cfg)


def _evaluate_slice(cfg: Config, target: str | None) -> dict[str, Any]:
    model, _, suite = (target or "").partition("/")
    models = eval_models(cfg, ablations=True)
    if model not in models or suite not in cfg.eval_suites:
        choices = [f"{m}/{s}" for m in models for s in cfg.eval_suites]
        raise ConfigError(f"no evaluation {target!r}; the config has: {', '.join(choices[:12])}"
                          + (" ..." if len(choices) > 12 else ""))
    info = models[model]
    spec = {**_dump(info["spec"]), "name": model, "path": info["path"]}
    engine = {"engine": cfg.evaluate.engine} if cfg.evaluate.engine else {}
    spec.update(engine)
    resolved = suites.resolve(suite, {k: v.model_dump(exclude_none=True) for k, v in cfg.evaluate.suites.items()})
    out: dict[str, Any] = {"suite": resolved, "model": spec,
                           "about": {k: v for k, v in info.items() if k not in ("spec", "path")},
                           "pivot": cfg.pivot.name}
    if resolved["kind"] == "rm":
        out["reward_models"] = [{**_dump(r), **engine} for r in cfg.reward_models]
    if resolved["kind"] == "toy" and any(s.prompts_only for s in cfg.data.sources):
        out["prompt_set"] = True  # split the accuracy by where the item's prompt is in the training data
    if resolved["kind"] == "transfer":
        out["sources"] = [m.name for m in cfg.sources]
        out["pivot_model"] = _dump(cfg.pivot)
        out["logits"] = {"shards": cfg.logits.shards, "overlong": cfg.logits.overlong}
    return out


STAGE_SLICES: dict[str, Any] = {
    "toy_world": lambda cfg, target: {"toy": _dump(cfg.toy)},
    "data": lambda cfg, target: {"data": _dump(cfg.data), "pivot": _dump(cfg.pivot, TOKENIZER_KEYS)},
    "generate": lambda cfg, target: {"generate": _dump(cfg.generate), "model": _dump(cfg.model(target))},
    "reward": lambda cfg, target: {
        "reward": _dump(cfg.reward),
        "reward_model": _dump(cfg.reward_model(target)),
        "generators": [m.name for m in cfg.generators],
        "shards": cfg.generate.shards,
    },
    "vote": lambda cfg, target: _vote_slice(cfg),
    "logits": lambda cfg, target: {"logits": _dump(cfg.logits), "model": _dump(cfg.model(target))},
    "fuse": lambda cfg, target: _fuse_slice(cfg, target),
    "train": lambda cfg, target: _train_slice(cfg, target),
    "merge": lambda cfg, target: _merge_slice(cfg, target),
    "evaluate": lambda cfg, target: _evaluate_slice(cfg, target),
    "align": lambda cfg, target: {
        "align": _dump(cfg.align),
        "logits": {key: getattr(cfg.logits, key) for key in ("k", "shards", "overlong")},
        "modes": cfg.align_modes(target),
        "gen_shards": cfg.generate.shards,
        "pivot": _dump(cfg.pivot),
        "source": _dump(cfg.model(target)),
    },
}
STAGE_KEYS = tuple(STAGE_SLICES)
TARGETED = {"generate": "main_models", "reward": "reward_models", "logits": "models", "align": "aligned"}


def stage_slice(cfg: Config, stage: str, target: str | None = None) -> dict[str, Any]:
    """The part of `cfg` a stage depends on, as plain JSON-able data (for `target`: a model or reward model)."""
    if stage not in STAGE_SLICES:
        raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_SLICES)}")
    if stage in TARGETED:
        names = [m.name for m in getattr(cfg, TARGETED[stage])]
        if target not in names:
            raise ConfigError(f"stage {stage!r} needs --target, one of {', '.join(names)} (got {target!r})")
    return STAGE_SLICES[stage](cfg, target)


def slice_json(cfg: Config, stage: str, target: str | None = None) -> str:
    return json.dumps(stage_slice(cfg, stage, target), sort_keys=True, separators=(",", ":"))
