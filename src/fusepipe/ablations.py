"""Ablation grids (`snakemake ablations`): the papers' comparisons re-run on the configured world.

`ablations:` in the config lists the grids; each grid value becomes a recipe (or a merge of an existing recipe)
that goes through the same fuse / train / merge / evaluate rules as the configured recipes, by name:

| grid | values | a value becomes | paper (reference) |
| --- | --- | --- | --- |
| merge | sce, rsaf, ties, task_arithmetic, dare, linear | `merge.{recipe}.{method}`: the base recipe's trained targets merged (nothing retrained) | FuseChat Table 2 (sce) |
| vocab | ms, mined, em (ms_reference) | `abl-vocab-{map}`: a copy of the base recipe on the pairs aligned with that vocabulary map, merged | FuseChat Fig. 4c (ms) |
| schedule | profuser, simulfuse, reversefuse, gtlen, fuse, csft | `abl-schedule-{name}`: kind `schedule.kind` on that schedule | ProFuser Tables 1-2 (profuser) |
| fusion | mince, udf, naive | `abl-fusion-{fn}`: kind `fusion.kind` with that fusion function | InfiFusion Table 2 (udf) |
| structure | pairwise, unified | `abl-structure-pairwise` (kind `infifusion_pairwise`, merged) or the unified kind | InfiFusion Table 2 (pairwise) |

A generated recipe whose resolved settings equal an existing one's (a configured recipe, or one another grid
generated) is not generated: the grid reuses that recipe's model, so e.g. the schedule grid's `profuser` value is
the configured `profuser` run and the structure grid's `unified` value is the fusion grid's `udf` one. Generated
recipes never enter `all`; their artifacts live beside the configured ones (`train/abl-*/`, `eval/train.abl-*`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fusepipe.errors import ConfigError

if TYPE_CHECKING:
    from fusepipe.config import Config, RecipeConfig

PREFIX = "abl"
GRID_TITLES = {
    "merge": "Merge methods (FuseChat Table 2; InfiFusion Table 2 for RSAF)",
    "vocab": "Vocabulary alignment (FuseChat Figure 4c)",
    "schedule": "Training schedules (ProFuser Tables 1-2)",
    "fusion": "Fusion functions of one unified target (InfiFusion Table 2)",
    "structure": "Pairwise fusion + merge vs one unified target (InfiFusion Table 2)",
}


@dataclass(frozen=True)
class Variant:
    """One grid value: the model evaluated for it (an evaluation id) and where it comes from."""

    grid: str
    value: str
    model: str  # evaluation id: train.{recipe}.{target} or merge.{recipe}.{method}
    recipe: str  # the recipe trained for it
    reused: str | None  # None: generated for this grid; else where it comes from ("config", "grid fusion", ...)
    reference: bool  # the paper's choice; the grid's deltas are against it
    vocab: str | None = None  # vocab grid: the vocabulary map (its alignment coverage is shown)


@dataclass
class Plan:
    """What the configured grids need beyond `all`."""

    recipes: list[RecipeConfig] = field(default_factory=list)  # generated recipes (not in cfg.recipes)
    merges: list[tuple[str, str]] = field(default_factory=list)  # (recipe, method) every grid merge, all's too
    grids: dict[str, list[Variant]] = field(default_factory=dict)
    eval_models: dict[str, dict[str, Any]] = field(default_factory=dict)  # evaluation ids not in eval_models(cfg)

    @property
    def models(self) -> list[str]:
        """Every evaluation id the grids read, in grid order, once."""
        return list(dict.fromkeys(v.model for vs in self.grids.values() for v in vs))

    @property
    def vocab_variants(self) -> list[str]:
        """Vocabulary maps other than `align.vocab` the grids align with."""
        return list(dict.fromkeys(r.align_vocab for r in self.recipes if r.align_vocab))


def _signature(cfg: Config, recipe: RecipeConfig) -> str:
    """The recipe's resolved settings without its name: equal signatures train the same models."""
    import json

    from fusepipe import recipes

    res = recipes.resolve(recipe)
    res.pop("name")
    if res.get("align_vocab") in (None, cfg.align.vocab):
        res["align_vocab"] = None
    return json.dumps(res, sort_keys=True)


def _values(cfg: Config, grid: str) -> tuple[list[str], str]:
    g = getattr(cfg.ablations, grid)
    return list(g.values), g.reference


def _recipe(cfg: Config, name: str, where: str, *, pairwise: bool = False) -> RecipeConfig:
    from fusepipe import recipes

    recipe = next((r for r in cfg.recipes if r.name == name), None)
    if recipe is None:
        raise ConfigError(f"{where}: no recipe named {name!r} (recipes: {', '.join(r.name for r in cfg.recipes)})")
    if pairwise and not recipes.resolve(recipe)["pairwise"]:
        raise ConfigError(f"{where}: recipe {name!r} trains one unified target; this grid merges one target per "
                          "source, so it needs a pairwise recipe (kind fusechat or infifusion_pairwise)")
    return recipe


def check(cfg: Config) -> None:
    """Grid problems the schema cannot see: base recipes that exist and are pairwise, modes captured."""
    a = cfg.ablations
    for grid in a.grids:
        if grid == "merge":
            _recipe(cfg, a.merge.recipe, "ablations.merge.recipe", pairwise=True)
        if grid == "vocab":
            _recipe(cfg, a.vocab.recipe, "ablations.vocab.recipe", pairwise=True)
    plan(cfg)  # every generated recipe must resolve and train on captured modes


def _unified_target(cfg: Config, recipe: RecipeConfig) -> str:
    from fusepipe import recipes

    return recipes.targets(cfg, recipe)[0]


_CACHE: dict[int, tuple[Config, str, Plan]] = {}


def plan(cfg: Config) -> Plan:
    """The configured grids expanded into variants, generated recipes and merges (deterministic; cached per
    config object and content, since Snakemake asks for it in every job's slice)."""
    key = cfg.model_dump_json(include={"ablations", "recipes", "merge", "align", "workdir", "logits"})
    hit = _CACHE.get(id(cfg))
    if hit is not None and hit[0] is cfg and hit[1] == key:
        return hit[2]
    out = _plan(cfg)
    _CACHE[id(cfg)] = (cfg, key, out)
    return out


def extra_recipes(cfg: Config) -> list[RecipeConfig]:
    """Recipes the ablation grids generate; they run only for `snakemake ablations`."""
    return plan(cfg).recipes if cfg.ablations.grids else []


def recipe(cfg: Config, name: str) -> RecipeConfig:
    """A configured or ablation-generated recipe by name."""
    return next(r for r in [*cfg.recipes, *extra_recipes(cfg)] if r.name == name)


def _plan(cfg: Config) -> Plan:
    from fusepipe import paths, recipes

    a = cfg.ablations
    out = Plan()
    known = {_signature(cfg, r): (r, "config") for r in cfg.recipes}
    base_merges = {(r.name, m) for r in recipes.merge_recipes(cfg) for m in cfg.merge.methods}
    base_models = recipes.eval_models(cfg)

    def use(grid: str, value: str, candidate: RecipeConfig) -> tuple[RecipeConfig, str | None]:
        """The candidate, or the existing recipe with its settings."""
        sig = _signature(cfg, candidate)
        if sig in known:
            recipe, origin = known[sig]
            return recipe, origin
        for mode in recipes.resolve(candidate)["modes"]:
            if mode not in cfg.logits.modes:
                raise ConfigError(f"ablations.{grid}: value {value!r} trains on mode {mode!r} but logits.modes is "
                                  f"{cfg.logits.modes}; add it there or drop the value")
        known[sig] = (candidate, f"grid {grid}")
        out.recipes.append(candidate)
        return candidate, None

    def merged(recipe: RecipeConfig, method: str) -> str:
        if (recipe.name, method) not in out.merges:
            out.merges.append((recipe.name, method))
        model = f"merge.{recipe.name}.{method}"
        if model not in base_models:
            out.eval_models[model] = {"path": paths.merge_model(cfg.workdir, recipe.name, method), "kind": "merge",
                                      "recipe": recipe.name, "method": method, "spec": cfg.pivot}
        return model

    def trained(recipe: RecipeConfig) -> str:
        target = _unified_target(cfg, recipe)
        model = f"train.{recipe.name}.{target}"
        if model not in base_models:
            out.eval_models[model] = {"path": paths.train_model(cfg.workdir, recipe.name, target), "kind": "train",
                                      "recipe": recipe.name, "recipe_kind": recipe.kind, "target": target,
                                      "spec": cfg.pivot}
        return model

    def make(name: str, kind: str, **settings: Any) -> RecipeConfig:
        from fusepipe.config import RecipeConfig

        return RecipeConfig(name=name, kind=kind, **settings, **({"train": a.train} if a.train is not None else {}))

    for grid in a.grids:
        values, reference = _values(cfg, grid)
        variants = []
        for value in values:
            ref = value == reference
            if grid == "merge":
                base = _recipe(cfg, a.merge.recipe, "ablations.merge.recipe", pairwise=True)
                reused = "config" if (base.name, value) in base_merges else None
                variants.append(Variant(grid, value, merged(base, value), base.name, reused, ref))
            elif grid == "vocab":
                base = _recipe(cfg, a.vocab.recipe, "ablations.vocab.recipe", pairwise=True)
                candidate = base.model_copy(update={"name": f"{PREFIX}-vocab-{_slug(value)}", "align_vocab": value})
                recipe, origin = use(grid, value, candidate)
                model = merged(recipe, a.vocab.merge)
                reused = origin if origin is None else (
                    "config" if (recipe.name, a.vocab.merge) in base_merges else origin)
                variants.append(Variant(grid, value, model, recipe.name, reused, ref, vocab=value))
            elif grid == "schedule":
                recipe, origin = use(grid, value, make(f"{PREFIX}-schedule-{_slug(value)}", a.schedule.kind,
                                                       schedule=value))
                model = merged(recipe, a.schedule.merge) if recipes.resolve(recipe)["pairwise"] else trained(recipe)
                variants.append(Variant(grid, value, model, recipe.name, origin, ref))
            elif grid == "fusion":
                recipe, origin = use(grid, value, make(f"{PREFIX}-fusion-{_slug(value)}", a.fusion.kind,
                                                       fusion={"function": value}))
                model = merged(recipe, a.fusion.merge) if recipes.resolve(recipe)["pairwise"] else trained(recipe)
                variants.append(Variant(grid, value, model, recipe.name, origin, ref))
            elif grid == "structure":
                kind = a.structure.pairwise_kind if value == "pairwise" else a.structure.unified_kind
                recipe, origin = use(grid, value, make(f"{PREFIX}-structure-{value}", kind))
                model = merged(recipe, a.structure.merge) if value == "pairwise" else trained(recipe)
                variants.append(Variant(grid, value, model, recipe.name, origin, ref))
        out.grids[grid] = variants
    return out


def _slug(value: str) -> str:
    return value.replace("_", "-")


def report_params(cfg: Config, p: Plan | None = None) -> dict[str, Any]:
    """What `fusepipe ablations --report` reads: per grid its variants, and the pivot (a context row)."""
    from fusepipe import paths

    p = p or plan(cfg)
    grids = []
    for grid, variants in p.grids.items():
        rows = []
        for v in variants:
            row = {"value": v.value, "model": v.model, "recipe": v.recipe, "reused": v.reused,
                   "reference": v.reference}
            if v.vocab is not None:
                variant = None if v.vocab == cfg.align.vocab else vocab_variant(v.vocab)
                row["coverage"] = [paths.align_coverage(cfg.workdir, cfg.pivot.name, s.name, variant)
                                   for s in cfg.sources]
            rows.append(row)
        grids.append({"grid": grid, "title": GRID_TITLES[grid], "variants": rows})
    return {"pivot": cfg.pivot.name, "grids": grids}


def vocab_variant(vocab: str) -> str:
    """The align folder of a vocabulary map other than `align.vocab`: align/{pivot}~{source}/vocab-{map}/."""
    return f"vocab-{vocab}"


def describe(cfg: Config) -> str:
    """The plan as text (`fusepipe ablations --list`)."""
    p = plan(cfg)
    lines = []
    for grid, variants in p.grids.items():
        lines.append(f"{grid}: {GRID_TITLES[grid]}")
        for v in variants:
            origin = "new" if v.reused is None else f"reused ({v.reused})"
            lines.append(f"  {v.value:<16} {v.model:<40} {origin}{'  [reference]' if v.reference else ''}")
    lines.append(f"generated recipes: {', '.join(r.name for r in p.recipes) or 'none'}")
    lines.append(f"new merges: {', '.join(f'{r}/{m}' for r, m in p.merges if f'merge.{r}.{m}' in p.eval_models)}")
    return "\n".join(lines)
