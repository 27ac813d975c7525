"""Recipes: the papers' training setups as named defaults, resolved into plain settings for `fuse` and `train`.

A recipe's `kind` fills every field the config leaves unset:

| kind | targets | gt fusion | inf vote | schedule | lr | loss |
| --- | --- | --- | --- | --- | --- | --- |
| fusechat (FuseChat §2.3) | one per source | MinCE of the pair | — | fusechat: gt 3 ep, λ=0.9 | 5e-6 | ce |
| profuser (ProFuser) | one, all sources | MinCE of all | vote of all | profuser: inf 1 ep β=.1, then both 2 ep β=.5, w1=.1 w2=1 | 1.5e-5 | kl |
| infifusion_pairwise (InfiFusion §2.3) | one per source | MinCE of the pair | — | infifusion: gt 5 ep, λ=.5 | 1e-6 | ce |
| infifusion_unified (InfiFusion Eq. 4-7) | one, all sources | UDF | — | infifusion | 1e-6 | ce |
| sft (baseline) | one | the pivot's own (unused) | — | sft: gt 3 ep, SFT only | 5e-6 | ce |

Schedules (ProFuser's and its baselines, Table 3): `csft` SFT only; `fuse` training mode only; `simulfuse` both
modes at once; `reversefuse` training mode then both (mirror of profuser); `gtlen` training mode ordered short to
long ground truth.
"""

from __future__ import annotations

from typing import Any

from fusepipe import paths
from fusepipe.config import SCHEDULES, Config, RecipeConfig
from fusepipe.errors import ConfigError
from fusepipe.params.train import PhaseConfig


def _phase(name, modes, epochs, sft, fusion, weights=None, order="shuffle") -> PhaseConfig:
    return PhaseConfig(name=name, modes=modes, epochs=epochs, sft_weight=sft, fusion_weight=fusion,
                       mode_weights=weights or {}, order=order)


NAMED_SCHEDULES: dict[str, list[PhaseConfig]] = {
    "fusechat": [_phase("fuse", ["gt"], 3, 0.9, 0.1)],  # FuseChat: L = λ·SFT + (1-λ)·fusion, λ = 0.9
    "profuser": [  # ProFuser "Training Details": phase 1 inference mode, phase 2 co-fusion (Eq. 4-5)
        _phase("inference", ["inf"], 1, 1.0, 0.1),
        _phase("co-fusion", ["inf", "gt"], 2, 1.0, 0.5, {"inf": 0.1, "gt": 1.0}),
    ],
    "csft": [_phase("sft", ["gt"], 3, 1.0, 0.0)],
    "fuse": [_phase("train-mode", ["gt"], 3, 1.0, 0.5)],
    "simulfuse": [_phase("simultaneous", ["inf", "gt"], 3, 1.0, 0.5)],
    "reversefuse": [
        _phase("training", ["gt"], 1, 1.0, 0.1),
        _phase("co-fusion", ["gt", "inf"], 2, 1.0, 0.5, {"gt": 0.1, "inf": 1.0}),
    ],
    "gtlen": [_phase("gtlen", ["gt"], 3, 1.0, 0.5, order="length")],
    "infifusion": [_phase("fuse", ["gt"], 5, 0.5, 0.5)],  # InfiFusion Eq. 7: (1-λ)·SFT + λ·fusion, λ = 0.5
    "sft": [_phase("sft", ["gt"], 3, 1.0, 0.0)],
}
assert set(NAMED_SCHEDULES) == set(SCHEDULES)

KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "fusechat": {"pairwise": True, "schedule": "fusechat", "fusion": {"function": "mince"},
                 "train": {"lr": 5e-6, "loss": "ce"}},
    "profuser": {"pairwise": False, "schedule": "profuser", "fusion": {"function": "mince", "vote": "all"},
                 "train": {"lr": 1.5e-5, "loss": "kl"}},
    "infifusion_pairwise": {"pairwise": True, "schedule": "infifusion", "fusion": {"function": "mince"},
                            "train": {"lr": 1e-6, "loss": "ce"}},
    "infifusion_unified": {"pairwise": False, "schedule": "infifusion", "fusion": {"function": "udf"},
                           "train": {"lr": 1e-6, "loss": "ce"}},
    "sft": {"pairwise": False, "schedule": "sft", "fusion": {"function": "mince"}, "train": {"lr": 5e-6}},
}
UNIFIED_TARGET = "all"
SFT_TARGET = "sft"


def resolve(recipe: RecipeConfig) -> dict[str, Any]:
    """The recipe as plain settings, the kind's defaults under what the config sets explicitly."""
    d = KIND_DEFAULTS[recipe.kind]
    out = recipe.model_dump(mode="json")
    if recipe.pairwise is None:
        out["pairwise"] = d["pairwise"]
    for part in ("fusion", "train"):
        given = getattr(recipe, part).model_fields_set
        out[part].update({k: v for k, v in d.get(part, {}).items() if k not in given})
    schedule = recipe.schedule if recipe.schedule is not None else d["schedule"]
    if isinstance(schedule, str):
        if schedule not in NAMED_SCHEDULES:
            raise ConfigError(f"recipe {recipe.name!r}: unknown schedule {schedule!r}; named schedules: "
                              f"{', '.join(NAMED_SCHEDULES)}, or a list of phases")
        out["schedule_name"] = schedule
        schedule = NAMED_SCHEDULES[schedule]
    else:
        out["schedule_name"] = "custom"
    out["schedule"] = [p.model_dump(mode="json") for p in schedule]
    out["modes"] = sorted({m for p in out["schedule"] for m in p["modes"]})
    align = {k: v for k, v in out["align"].items() if v is not None}
    if recipe.align_vocab is not None:
        if align.get("vocab", recipe.align_vocab) != recipe.align_vocab:
            raise ConfigError(f"recipe {recipe.name!r}: align_vocab {recipe.align_vocab!r} and align.vocab "
                              f"{align['vocab']!r} disagree; set one of them")
        align["vocab"] = recipe.align_vocab
    out["align"] = align
    out.pop("align_vocab")
    return out


def align_overrides(cfg: Config, recipe: RecipeConfig | dict[str, Any]) -> dict[str, str]:
    """The recipe's alignment settings that differ from `align:` (none: it fuses the pairs' own alignment)."""
    res = resolve(recipe) if isinstance(recipe, RecipeConfig) else recipe
    return {k: v for k, v in res["align"].items() if v != getattr(cfg.align, k)}


def align_variant(cfg: Config, recipe: RecipeConfig | dict[str, Any]) -> str | None:
    """The align folder the recipe's pairs are read from: None (the pairs' own) or e.g. `vocab-mined`."""
    from fusepipe.params.align import variant_name

    return variant_name(align_overrides(cfg, recipe))


def fused_sources(cfg: Config, recipe: RecipeConfig | dict[str, Any]) -> list[str]:
    """The models a recipe fuses: its `sources`, else every source (role source)."""
    names = recipe.sources if isinstance(recipe, RecipeConfig) else recipe.get("sources")
    return list(names) if names is not None else [m.name for m in cfg.sources]


def targets(cfg: Config, recipe: RecipeConfig) -> list[str]:
    """The models a recipe trains: one per source (pairwise), or one."""
    if recipe.kind == "sft":
        return [SFT_TARGET]
    return fused_sources(cfg, recipe) if resolve(recipe)["pairwise"] else [UNIFIED_TARGET]


def members(cfg: Config, recipe: dict[str, Any], target: str) -> list[str]:
    """The models whose distributions a target fuses, pivot first."""
    if recipe["kind"] == "sft":
        return [cfg.pivot.name]
    if target == UNIFIED_TARGET:
        return [cfg.pivot.name, *fused_sources(cfg, recipe)]
    return [cfg.pivot.name, target]


def merge_recipes(cfg: Config) -> list[RecipeConfig]:
    """The recipes whose targets are merged: the pairwise ones (or those `merge.recipes` names)."""
    wanted = cfg.merge.recipes
    return [r for r in cfg.recipes if (wanted is None and resolve(r)["pairwise"]) or (wanted and r.name in wanted)]


def eval_models(cfg: Config) -> dict[str, dict[str, Any]]:
    """Every model a run uses or produces, by evaluation id: the config's models by name, each trained target as
    `train.{recipe}.{target}`, each merged model as `merge.{recipe}.{method}` (the ablation grids' models too:
    fusepipe.pipeline.eval_models)."""
    out = {m.name: {"path": m.path, "kind": m.role, "spec": m} for m in cfg.main_models}
    for r in cfg.recipes:
        for t in targets(cfg, r):
            out[f"train.{r.name}.{t}"] = {"path": paths.train_model(cfg.workdir, r.name, t), "kind": "train",
                                          "recipe": r.name, "recipe_kind": r.kind, "target": t, "spec": cfg.pivot}
    for r in merge_recipes(cfg):
        for m in cfg.merge.methods:
            out[f"merge.{r.name}.{m}"] = {"path": paths.merge_model(cfg.workdir, r.name, m), "kind": "merge",
                                          "recipe": r.name, "method": m, "spec": cfg.pivot}
    return out


def check(cfg: Config) -> None:
    """Recipe problems the schema cannot see: unique names, modes the logits stage captures."""
    names = [r.name for r in cfg.recipes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"recipes: names must be unique (duplicated: {', '.join(dupes)})")
    aligned = [m.name for m in cfg.aligned]
    for r in cfg.recipes:
        resolve(r)  # align / align_vocab agree
        if r.sources is not None:
            bad = [n for n in r.sources if n not in aligned]
            if bad or not r.sources or len(set(r.sources)) != len(r.sources):
                raise ConfigError(f"recipe {r.name!r}: sources must name distinct sources or controls (models: "
                                  f"{', '.join(aligned)}; got {r.sources})")
            if r.kind == "sft":
                raise ConfigError(f"recipe {r.name!r}: an sft recipe fuses nothing; drop its sources")
    unknown = [n for n in (cfg.merge.recipes or []) if n not in names]
    if unknown:
        raise ConfigError(f"merge.recipes: no recipe named {', '.join(unknown)} (recipes: {', '.join(names)})")
    from fusepipe.evaluate import suites

    custom = {k: v.model_dump(exclude_none=True) for k, v in cfg.evaluate.suites.items()}
    for name in cfg.eval_suites:
        suite = suites.resolve(name, custom)
        if suite["kind"] == "rm" and not cfg.reward_models:
            raise ConfigError(f"evaluate.run: suite {name!r} is judged by reward models but reward_models is empty")
        if suite["kind"] == "toy" and not cfg.toy.enabled:
            raise ConfigError(f"evaluate.run: suite {name!r} runs on the toy world's benchmark; set toy.enabled "
                              "or pick lm-eval suites (open_llm, infifusion, fusechat)")
        if suite["kind"] == "lm_eval" and not suite["tasks"]:
            raise ConfigError(f"evaluate.suites.{name}: an lm_eval suite needs tasks")
        if suite["kind"] == "transfer" and (not cfg.sources or "gt" not in cfg.logits.modes):
            raise ConfigError(f"evaluate.run: suite {name!r} measures models against the sources' aligned "
                              "ground-truth distributions; it needs source models and 'gt' in logits.modes")
    for r in cfg.recipes:
        res = resolve(r)
        missing = [m for m in res["modes"] if m not in cfg.logits.modes]
        if missing:
            raise ConfigError(f"recipe {r.name!r}: its schedule trains on mode(s) {', '.join(missing)} but "
                              f"logits.modes is {cfg.logits.modes}; add them there or pick another schedule")
    prompt_sets = [s.name for s in cfg.data.sources if s.prompts_only]
    if prompt_sets and not any("inf" in resolve(r)["modes"] for r in cfg.recipes):
        raise ConfigError(f"data.sources: {', '.join(prompt_sets)} hold(s) prompts without references "
                          "(prompts_only), which only the inference mode trains on, but no recipe's schedule uses "
                          "mode 'inf'; add a profuser recipe (or a schedule with inf) or remove prompts_only")
