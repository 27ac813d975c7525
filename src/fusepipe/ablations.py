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
| tokenizer | paper, band, offsets, mined, em, last, chain | `abl-tokenizer-{value}`: the base recipe's target of the control's source, its pair aligned with that one setting; plus `abl-tokenizer-control`, the target of the control (the source's twin with the pivot's tokenizer) | InfiFusion's homogeneous case (paper) |

The tokenizer grid's table is the alignment efficiency (fusepipe.evaluate.efficiency): the gain over SFT of a target
fused with the heterogeneous source, divided by the gain of the target fused with its homogeneous twin.

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
    "tokenizer": "Alignment efficiency: heterogeneous source vs its homogeneous twin (InfiFusion §2.2)",
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
    align: str | None = None  # tokenizer grid: the align folder of the value's pair (None: the pair's own)


@dataclass
class Plan:
    """What the configured grids need beyond `all`."""

    recipes: list[RecipeConfig] = field(default_factory=list)  # generated recipes (not in cfg.recipes)
    merges: list[tuple[str, str]] = field(default_factory=list)  # (recipe, method) every grid merge, all's too
    grids: dict[str, list[Variant]] = field(default_factory=dict)
    eval_models: dict[str, dict[str, Any]] = field(default_factory=dict)  # evaluation ids not in eval_models(cfg)
    tokenizer: dict[str, Any] | None = None  # tokenizer grid: control, source, baseline / other / control models
    skipped: dict[str, str] = field(default_factory=dict)  # grid -> why it does not run (a config without control)

    @property
    def models(self) -> list[str]:
        """Every evaluation id the grids read, in grid order, once."""
        return list(dict.fromkeys(v.model for vs in self.grids.values() for v in vs))



def _signature(cfg: Config, recipe: RecipeConfig, per_target: bool = False) -> str:
    """The recipe's resolved settings without its name: equal signatures train the same models. `per_target`:
    without its sources too (a pairwise recipe's target depends on its own pair only)."""
    import json

    from fusepipe import recipes

    res = recipes.resolve(recipe)
    res.pop("name")
    if per_target:
        res.pop("sources")
    res["align"] = recipes.align_overrides(cfg, res)
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
    key = cfg.model_dump_json(include={"ablations", "recipes", "merge", "align", "workdir", "logits", "models", "data"})
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
        return target_model(recipe, _unified_target(cfg, recipe))

    def make(name: str, kind: str, **settings: Any) -> RecipeConfig:
        from fusepipe.config import RecipeConfig

        return RecipeConfig(name=name, kind=kind, **settings, **({"train": a.train} if a.train is not None else {}))

    def tokenizer_value(value: str, ref: bool) -> Variant:
        """The base recipe's target of the control's source, fused through the value's alignment setting."""
        from fusepipe.config import TOKENIZER_VALUES

        t = out.tokenizer or tokenizer_setup()
        base, source = _recipe(cfg, a.tokenizer.recipe, "ablations.tokenizer.recipe", pairwise=True), t["source"]
        key = TOKENIZER_VALUES[value]
        settings = {**recipes.resolve(base)["align"], **({key: value} if key else {})}
        variant = recipes.align_variant(cfg, {"align": settings})
        if variant == recipes.align_variant(cfg, base):  # the base recipe's own target
            recipe, origin = base, "config"
        else:
            candidate = base.model_copy(update={"name": f"{PREFIX}-tokenizer-{_slug(value)}", "sources": [source],
                                                "align": base.align.model_copy(update=settings), "align_vocab": None})
            same = _signature(cfg, candidate, per_target=True)
            # a grid (vocab) may train this very target already
            recipe, origin = next(((r, o) for r, o in known.values() if source in recipes.fused_sources(cfg, r)
                                   and _signature(cfg, r, per_target=True) == same), (None, None))
            if recipe is None:
                recipe, origin = use("tokenizer", value, candidate)
        return Variant("tokenizer", value, target_model(recipe, source), recipe.name, origin, ref, align=variant)

    def target_model(recipe: RecipeConfig, target: str) -> str:
        model = f"train.{recipe.name}.{target}"
        if model not in base_models:
            out.eval_models[model] = {"path": paths.train_model(cfg.workdir, recipe.name, target), "kind": "train",
                                      "recipe": recipe.name, "recipe_kind": recipe.kind, "target": target,
                                      "spec": cfg.pivot}
        return model

    def tokenizer_setup() -> dict[str, Any]:
        """The grid's fixed rows: the control's own target, the SFT baseline, an unrelated source's target."""
        t = a.tokenizer
        base = _recipe(cfg, t.recipe, "ablations.tokenizer.recipe", pairwise=True)
        control = tokenizer_control(cfg)
        source = control.twin_of
        fused = recipes.fused_sources(cfg, base)
        if source not in fused:
            raise ConfigError(f"ablations.tokenizer.recipe: recipe {base.name!r} does not fuse {source!r}, the "
                              f"source whose twin {control.name!r} is")
        sft = next((r for r in cfg.recipes if r.name == t.baseline), None)
        if sft is None or sft.kind != "sft":
            raise ConfigError(f"ablations.tokenizer.baseline: no recipe of kind sft named {t.baseline!r} (recipes: "
                              f"{', '.join(f'{r.name} ({r.kind})' for r in cfg.recipes)})")
        other = t.other or next((s for s in fused if s != source), None)
        if other is None or other not in fused or other == source:
            raise ConfigError(f"ablations.tokenizer.other: needs a source other than {source!r} that recipe "
                              f"{base.name!r} fuses (it fuses {', '.join(fused)}; got {t.other!r})")
        if t.data_source is not None and t.data_source not in [d.name for d in cfg.data.sources]:
            raise ConfigError(f"ablations.tokenizer.data_source: no data source {t.data_source!r} (data.sources: "
                              f"{', '.join(d.name for d in cfg.data.sources)})")
        if "gt" not in cfg.logits.modes:
            raise ConfigError("ablations.tokenizer: the efficiency is measured on the ground-truth mode; add 'gt' "
                              "to logits.modes")
        twin, _ = use("tokenizer", "control", base.model_copy(update={"name": f"{PREFIX}-tokenizer-control",
                                                                        "sources": [control.name]}))
        out.tokenizer = {"control": control.name, "source": source, "recipe": base.name,
                         "control_model": target_model(twin, control.name), "control_recipe": twin.name,
                         "baseline": f"train.{sft.name}.sft", "other": other,
                         "other_model": f"train.{base.name}.{other}", "data_source": t.data_source,
                         "metric": t.metric, "limit": t.limit}
        return out.tokenizer

    for grid in a.grids:
        if grid == "tokenizer" and not cfg.controls and a.tokenizer.control is None:
            # e.g. a config over the toy one that lists its own models: the other grids still run
            out.skipped[grid] = ("no model with role control (a source's twin with the pivot's tokenizer, "
                                 "`twin_of`) in models")
            continue
        values, reference = _values(cfg, grid)
        variants = []
        for value in values:
            ref = value == reference
            if grid == "merge":
                base = _recipe(cfg, a.merge.recipe, "ablations.merge.recipe", pairwise=True)
                reused = "config" if (base.name, value) in base_merges else None
                variants.append(Variant(grid, value, merged(base, value), base.name, reused, ref))
            elif grid == "tokenizer":
                variants.append(tokenizer_value(value, ref))
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


def tokenizer_control(cfg: Config):
    """The tokenizer grid's control model (`ablations.tokenizer.control`, else the config's only control)."""
    controls = cfg.controls
    name = cfg.ablations.tokenizer.control
    if name is None and len(controls) == 1:
        return controls[0]
    found = next((m for m in controls if m.name == name), None)
    if found is None:
        have = ", ".join(m.name for m in controls) or "none"
        raise ConfigError(f"ablations.tokenizer.control: {'name one control' if name is None else repr(name)}; the "
                          f"grid needs a model with role control (the source's twin with the pivot's tokenizer); "
                          f"controls in models: {have}")
    return found


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
            if grid == "tokenizer":
                row["coverage"] = [paths.align_coverage(cfg.workdir, cfg.pivot.name, p.tokenizer["source"], v.align)]
            rows.append(row)
        grids.append({"grid": grid, "title": GRID_TITLES[grid], "variants": rows})
    out = {"pivot": cfg.pivot.name, "grids": grids, "skipped": p.skipped}
    if p.tokenizer is not None:
        out["tokenizer"] = {**p.tokenizer, "file": paths.ablation_file(cfg.workdir, "tokenizer.json")}
    return out


def report_models(params: dict[str, Any]) -> list[str]:
    """Every evaluation id the ablations report reads (pivot first): the grids' models and the tokenizer grid's
    baseline, control and other targets."""
    t = params.get("tokenizer") or {}
    extra = [t[k] for k in ("baseline", "control_model", "other_model") if k in t]
    return list(dict.fromkeys([params["pivot"], *[v["model"] for g in params["grids"] for v in g["variants"]],
                               *extra]))


def efficiency_params(cfg: Config) -> dict[str, Any]:
    """What `fusepipe efficiency` reads (the tokenizer grid's measurement): the students, the control's aligned
    ground-truth shards, the fusion data, the pivot."""
    from fusepipe import paths, recipes

    p = plan(cfg)
    t = p.tokenizer
    if t is None:
        raise ConfigError("ablations.grids: no tokenizer grid; add `tokenizer` to measure the alignment efficiency")
    models = {**recipes.eval_models(cfg), **p.eval_models}
    students = {"baseline": t["baseline"], "other": t["other_model"], "control": t["control_model"]}
    students |= {f"value:{v.value}": v.model for v in p.grids["tokenizer"]}
    return {
        "tokenizer": {k: t[k] for k in ("control", "source", "other", "data_source", "limit")},
        "students": {role: {"model": m, "path": models[m]["path"]} for role, m in students.items()},
        "teacher_shards": [paths.align_shard(cfg.workdir, cfg.pivot.name, t["control"], "gt", i)
                           for i in range(cfg.logits.shards)],
        "pivot_model": cfg.pivot.model_dump(mode="json", exclude={"params_b"}),  # sizing only: no rerun
        "logits": {"shards": cfg.logits.shards, "overlong": cfg.logits.overlong},
    }



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
    lines += [f"{grid}: skipped: {why}" for grid, why in p.skipped.items()]
    lines.append(f"generated recipes: {', '.join(r.name for r in p.recipes) or 'none'}")
    lines.append(f"new merges: {', '.join(f'{r}/{m}' for r, m in p.merges if f'merge.{r}.{m}' in p.eval_models)}")
    return "\n".join(lines)
