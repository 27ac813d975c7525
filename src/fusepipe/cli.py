"""`fusepipe STAGE ...`: one subcommand per pipeline stage, plus `inspect`, `schema` and `summary`.

Snakemake calls each stage with its config slice (`--config-json`); people call it with the whole config
(`--config config/config.yaml`), from which the same slice is taken. Errors print one line and exit 2;
`--debug` shows the traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from fusepipe import config as fpconfig
from fusepipe import pipeline as fppipeline
from fusepipe.errors import FusepipeError
from fusepipe.progress import setup_logging

log = logging.getLogger("fusepipe")


def _slice(stage: str, config_path: str | None, config_json: str | None, target: str | None = None) -> dict[str, Any]:
    if config_json:
        return json.loads(config_json)
    cfg = fppipeline.load(config_path or "config/config.yaml")
    return fppipeline.stage_slice(cfg, stage, target)


def _targets(kind: str, config_path: str | None, config_json: str | None, target: str | None) -> list[str]:
    """The model(s) a per-model stage runs for: --target, else (whole config) all of them."""
    if target or config_json:
        if not target:
            raise click.UsageError("--target is required together with --config-json")
        return [target]
    cfg = fppipeline.load(config_path or "config/config.yaml")
    models = {"generate": cfg.generators, "reward": cfg.reward_models, "logits": cfg.main_models,
              "align": cfg.sources}[kind]
    return [m.name for m in models]


def _shards(shard: int | None, n: int, where: str) -> list[int]:
    """--shard checked against the `n` shards the config has (`where` says which key), else all of them."""
    if shard is not None and not 0 <= shard < n:
        raise click.BadParameter(f"shard {shard} out of range: {where}", param_hint="--shard")
    return [shard] if shard is not None else list(range(n))


def _workdir(config_path: str | None, config_json: str | None, option: str = "--out") -> str:
    if config_json:
        raise click.UsageError(f"{option} is required together with --config-json")
    return fppipeline.load(config_path or "config/config.yaml").workdir


config_options = [
    click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Pipeline config YAML."),
    click.option("--config-json", help="The stage's config slice as JSON (what Snakemake passes)."),
]


def with_config(f):
    for opt in reversed(config_options):
        f = opt(f)
    return f


class Group(click.Group):
    """Turns FusepipeError into `error: ...` and exit code 2 unless --debug."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FusepipeError as err:
            if ctx.params.get("debug"):
                raise
            click.echo(f"error: {err}", err=True)
            sys.exit(2)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Verbose logs and full tracebacks.")
@click.version_option(package_name="fusepipe")
def cli(debug: bool) -> None:
    """fusepipe: knowledge fusion of heterogeneous chat LLMs, one stage at a time."""
    setup_logging(debug)


@cli.command("toy_world")
@with_config
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default: WORKDIR/toy).")
@click.option("--cpus", type=click.IntRange(min=1),
              help="CPUs to use: max(1, CPUS // toy.threads) models are built side by side (default: "
              "toy.workers of --config, else 1). The world is the same for any value.")
@click.option("--twin", is_flag=True, help="Build only llama-arith-twin, the arith expert with the pivot's "
              "tokenizer (the homogeneous control: config/twin.yaml, the tokenizer ablation grid).")
def toy_world_cmd(config_path, config_json, out, cpus, twin):
    """Build the toy world: tiny heterogeneous chat models, reward models and data."""
    from fusepipe.toy import stage

    params = _slice("toy_world", config_path, config_json)
    out = out or str(Path(_workdir(config_path, config_json)) / "toy")
    if twin:
        stage.run_twin(params, out)
        return
    if cpus is not None:
        workers = max(1, cpus // int(params["toy"]["threads"]))
    else:
        workers = 1 if config_json else fppipeline.load(config_path or "config/config.yaml").toy.workers
    result = stage.run(params, out, workers=workers)
    for name, rep in result["models"].items():
        log.info("%-14s %-8s accuracy %s", name, rep["arch"], rep["accuracy"])


@cli.command("data")
@with_config
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default: WORKDIR/data).")
def data_cmd(config_path, config_json, out):
    """Ingest, clean and split the conversation datasets into data/{train,eval}.parquet."""
    from fusepipe.data import stage

    params = _slice("data", config_path, config_json)
    out = out or str(Path(_workdir(config_path, config_json)) / "data")
    stage.run(params, out)


workdir_option = click.option(
    "--workdir", type=click.Path(file_okay=False), help="Workdir (default: the config's; required with --config-json)."
)
target_option = click.option("--target", help="The model (generate) or reward model (reward); default: all.")
shard_option = click.option("--shard", type=int, help="Shard index; default: all shards.")


@cli.command("generate")
@with_config
@workdir_option
@target_option
@shard_option
def generate_cmd(config_path, config_json, workdir, target, shard):
    """Sample responses of a model for every training prompt of a shard: gen/{model}/shard-*.parquet."""
    from fusepipe import paths
    from fusepipe.generate import stage

    workdir = workdir or _workdir(config_path, config_json, "--workdir")
    for name in _targets("generate", config_path, config_json, target):
        params = _slice("generate", config_path, config_json, name)
        n = params["generate"]["shards"]
        for i in _shards(shard, n, f"the config has {n} shard(s)"):
            stage.run(params, paths.data(workdir), paths.gen_shard(workdir, name, i), i)


@cli.command("reward")
@with_config
@workdir_option
@target_option
@shard_option
def reward_cmd(config_path, config_json, workdir, target, shard):
    """Score every generated response of a shard with a reward model: reward/{rm}/shard-*.parquet."""
    from fusepipe import paths
    from fusepipe.reward import stage

    workdir = workdir or _workdir(config_path, config_json, "--workdir")
    for name in _targets("reward", config_path, config_json, target):
        params = _slice("reward", config_path, config_json, name)
        for i in _shards(shard, params["shards"], f"the config has {params['shards']} shard(s)"):
            gens = [paths.gen_shard(workdir, m, i) for m in params["generators"]]
            stage.run(params, paths.data(workdir), gens, paths.reward_shard(workdir, name, i), i)


@cli.command("vote")
@with_config
@workdir_option
@click.option("--shards", type=int,
              help="Reward and generation shards to read (default: generate.shards of the config).")
def vote_cmd(config_path, config_json, workdir, shards):
    """The reward models' vote per prompt, over all generators and each (pivot, source) pair."""
    from fusepipe import paths
    from fusepipe.reward import vote_stage

    workdir = workdir or _workdir(config_path, config_json, "--workdir")
    params = _slice("vote", config_path, config_json)
    if shards is None:
        if config_json:
            raise click.UsageError("--shards is required together with --config-json")
        shards = fppipeline.load(config_path or "config/config.yaml").generate.shards
    inputs = [paths.reward_shard(workdir, r["name"], i) for r in params["reward_models"] for i in range(shards)]
    gens = [paths.gen_shard(workdir, m["name"], i) for m in params["models"] for i in range(shards)]
    vote_stage.run(params, inputs, gens, paths.vote_choices(workdir))


@cli.command("logits")
@with_config
@workdir_option
@click.option("--mode", type=click.Choice(["gt", "inf"]), required=True, help="gt: ground truth; inf: voted responses.")
@click.option("--target", help="The model; default: all models.")
@shard_option
@click.option("--gen-shards", type=int, help="Generation shards to read in mode inf (default: generate.shards).")
def logits_cmd(config_path, config_json, workdir, mode, target, shard, gen_shards):
    """Teacher-forced top-k log-probs of a model at every target token: logits/{mode}/{model}/shard-*.parquet."""
    from fusepipe import paths
    from fusepipe.logits import stage

    workdir = workdir or _workdir(config_path, config_json, "--workdir")
    names = _targets("logits", config_path, config_json, target)
    if mode == "inf" and gen_shards is None:
        if config_json:
            raise click.UsageError("--gen-shards is required with --mode inf and --config-json")
        gen_shards = fppipeline.load(config_path or "config/config.yaml").generate.shards
    for name in names:
        params = _slice("logits", config_path, config_json, name)
        n = params["logits"]["shards"]
        for i in _shards(shard, n, f"logits.shards is {n}"):
            gens = [paths.gen_shard(workdir, name, j) for j in range(gen_shards or 0)]
            stage.run(params, mode, i, paths.data(workdir), paths.logits_shard(workdir, mode, name, i),
                      vote_path=paths.vote_choices(workdir) if mode == "inf" else None, gen_paths=gens)


@cli.command("align")
@with_config
@workdir_option
@click.option("--step", type=click.Choice(["links", "vocab", "project", "coverage", "all"]), default="all",
              show_default=True, help="links and project run per (mode, shard); vocab and coverage per pair.")
@click.option("--mode", type=click.Choice(["gt", "inf"]), help="Only this mode (links/project); default: all.")
@click.option("--target", help="The source model (pair pivot~source); default: every source.")
@shard_option
def align_cmd(config_path, config_json, workdir, step, mode, target, shard):
    """Align sources to the pivot: DTW links, mapping statistics, vocabulary map, projection: align/{pivot}~{source}/."""
    from fusepipe.align import stage

    workdir = workdir or _workdir(config_path, config_json, "--workdir")
    steps = list(stage.STEPS) if step == "all" else [step]
    for name in _targets("align", config_path, config_json, target):
        params = _slice("align", config_path, config_json, name)
        n = params["logits"]["shards"]
        _shards(shard, n, f"logits.shards is {n}")
        for one in steps:
            stage.run(params, workdir, one, mode if one in ("links", "project") else None,
                      shard if one in ("links", "project") else None)


def _recipe_targets(config_path, config_json, recipe, target) -> list[str]:
    """`recipe/target` names a command runs for: the one given, else (whole config) every target of the config."""
    if config_json:
        if not (recipe and target):
            raise click.UsageError("--recipe and --target are required together with --config-json")
        return [f"{recipe}/{target}"]
    from fusepipe import recipes as fprecipes

    cfg = fppipeline.load(config_path or "config/config.yaml")
    names = [f"{r.name}/{t}" for r in cfg.recipes if recipe in (None, r.name) for t in fprecipes.targets(cfg, r)
             if target in (None, t)]
    if not names:
        have = [f"{r.name}/{t}" for r in cfg.recipes for t in fprecipes.targets(cfg, r)]
        raise click.BadParameter(f"no recipe target {recipe or '*'}/{target or '*'}; the config has: "
                                 f"{', '.join(have) or 'no recipes'}", param_hint="--recipe/--target")
    return names


recipe_option = click.option("--recipe", help="Recipe name (config `recipes:`); default: all.")
recipe_target_option = click.option("--target", help="The recipe's target (a source, or all / sft); default: all.")


@cli.command("fuse")
@with_config
@workdir_option
@recipe_option
@recipe_target_option
@shard_option
def fuse_cmd(config_path, config_json, workdir, recipe, target, shard):
    """Training targets of a recipe: MinCE / UDF / RM-vote / naive: targets/{recipe}/{target}/shard-*.parquet."""
    from fusepipe import paths
    from fusepipe.fuse import stage

    workdir = workdir or _workdir(config_path, config_json, "--workdir")
    for name in _recipe_targets(config_path, config_json, recipe, target):
        params = _slice("fuse", config_path, config_json, name)
        n = params["logits"]["shards"]
        for i in _shards(shard, n, f"logits.shards is {n}"):
            r, t = name.split("/", 1)
            stage.run(params, workdir, i, paths.targets_shard(workdir, r, t, i))


@cli.command("train")
@with_config
@workdir_option
@recipe_option
@recipe_target_option
def train_cmd(config_path, config_json, workdir, recipe, target):
    """Fine-tune the pivot on a recipe target with DeepSpeed ZeRO: train/{recipe}/{target}/model/."""
    from fusepipe.train import stage

    workdir = workdir or _workdir(config_path, config_json, "--workdir")
    for name in _recipe_targets(config_path, config_json, recipe, target):
        stage.run(_slice("train", config_path, config_json, name), workdir)


def _merge_names(config_path, config_json, recipe, method) -> list[str]:
    if config_json:
        if not (recipe and method):
            raise click.UsageError("--recipe and --method are required together with --config-json")
        return [f"{recipe}/{method}"]
    from fusepipe import recipes as fprecipes

    cfg = fppipeline.load(config_path or "config/config.yaml")
    names = [f"{r.name}/{m}" for r in fprecipes.merge_recipes(cfg) for m in cfg.merge.methods
             if recipe in (None, r.name) and method in (None, m)]
    if not names:
        have = [f"{r.name}/{m}" for r in fprecipes.merge_recipes(cfg) for m in cfg.merge.methods]
        raise click.BadParameter(f"no merge {recipe or '*'}/{method or '*'}; the config has: "
                                 f"{', '.join(have) or 'none (no pairwise recipe)'}", param_hint="--recipe/--method")
    return names


@cli.group("merge")
def merge_group():
    """Merge a pairwise recipe's trained targets in parameter space: merge/{recipe}/{method}/model/."""


merge_options = [
    click.option("--recipe", help="A pairwise recipe (config `recipes:`); default: all merged ones."),
    click.option("--method", help="Merge method (config `merge.methods`); default: all."),
]


def with_merge_options(f):
    for opt in reversed(merge_options):
        f = opt(f)
    return f


@merge_group.command("run")
@with_config
@workdir_option
@with_merge_options
def merge_run_cmd(config_path, config_json, workdir, recipe, method):
    """Merge with the configured method(s), streaming tensor by tensor over safetensors."""
    from fusepipe.merge import stage

    workdir = workdir or _workdir(config_path, config_json, "--workdir")
    for name in _merge_names(config_path, config_json, recipe, method):
        stage.run_stage(_slice("merge", config_path, config_json, name), workdir)


@merge_group.command("export-mergekit")
@with_config
@workdir_option
@with_merge_options
@click.option("--out", type=click.Path(dir_okay=False), help="Write the YAML here (default: print it).")
def merge_export_cmd(config_path, config_json, workdir, recipe, method, out):
    """The mergekit YAML that runs the same merge (notes where the semantics differ)."""
    from fusepipe import paths
    from fusepipe.merge.export import export_mergekit

    workdir = workdir or _workdir(config_path, config_json, "--workdir")
    texts = []
    for name in _merge_names(config_path, config_json, recipe, method):
        params = _slice("merge", config_path, config_json, name)
        targets = [paths.train_model(workdir, params["recipe"], t) for t in params["targets"]]
        texts.append(export_mergekit(params["merge"], params["pivot"]["path"], targets))
    text = "---\n".join(texts)
    if out:
        Path(out).write_text(text)
    else:
        click.echo(text, nl=False)


@cli.command("evaluate")
@with_config
@workdir_option
@click.option("--model", "model", help="Evaluation id (a config model, train.R.T or merge.R.M); default: all.")
@click.option("--suite", help="Suite name (config evaluate.run); default: all.")
@click.option("--gather", is_flag=True, help="Only collect the model's suite results into results.json.")
def evaluate_cmd(config_path, config_json, workdir, model, suite, gather):
    """Evaluate models on the configured suites: eval/{model}/{suite}.json and eval/{model}/results.json."""
    from fusepipe import paths
    from fusepipe.evaluate import stage

    workdir = workdir or _workdir(config_path, config_json, "--workdir")
    if config_json:
        if not model:
            raise click.UsageError("--model is required together with --config-json")
        params = json.loads(config_json)
        if gather:
            suites = params["suites"]
            stage.gather(model, [paths.eval_suite(workdir, model, s) for s in suites], paths.eval_results(workdir, model))
        else:
            stage.run(params, workdir)
        return
    cfg = fppipeline.load(config_path or "config/config.yaml")
    models = [m for m in fppipeline.eval_models(cfg) if model in (None, m)]
    suites = [s for s in cfg.eval_suites if suite in (None, s)]
    if not models or not suites:
        raise click.BadParameter(f"no evaluation {model or '*'}/{suite or '*'}; models: "
                                 f"{', '.join(fppipeline.eval_models(cfg))}; suites: {', '.join(cfg.eval_suites)}",
                                 param_hint="--model/--suite")
    pivot_first = sorted(models, key=lambda m: m != cfg.pivot.name)  # the rm win rate needs the pivot's answers
    for m in pivot_first:
        if not gather:
            for s in suites:
                stage.run(fppipeline.stage_slice(cfg, "evaluate", f"{m}/{s}"), workdir)
        done = [paths.eval_suite(workdir, m, s) for s in cfg.eval_suites]
        if all(Path(p).is_file() for p in done):
            stage.gather(m, done, paths.eval_results(workdir, m))
        else:
            log.info("%s: results.json waits for every suite (%s)", m, ", ".join(cfg.eval_suites))


@cli.command("report")
@with_config
@workdir_option
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default: WORKDIR/report).")
def report_cmd(config_path, config_json, workdir, out):
    """report/index.html, summary.txt, results.csv: the headline table (printed), then every metric and plots."""
    from fusepipe import paths
    from fusepipe.report import stage

    workdir = workdir or _workdir(config_path, config_json, "--workdir")
    if config_json:
        params = json.loads(config_json)
    else:
        cfg = fppipeline.load(config_path or "config/config.yaml")
        params = {"pivot": cfg.pivot.name, "models": list(fppipeline.eval_models(cfg))}
    results = [paths.eval_results(workdir, m) for m in params["models"]]
    missing = [r for r in results if not Path(r).is_file()]
    if missing:
        raise FusepipeError(f"{missing[0]}: missing; run `fusepipe evaluate` first ({len(missing)} model(s) lack results)")
    done = stage.run(params, workdir, results, out or str(Path(workdir) / "report"))
    click.echo(done["summary"])


@cli.command("seeds")
@click.argument("workdirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
def seeds_cmd(workdirs):
    """The headline over finished runs of different seeds (e.g. `results results-seed1`): mean of the runs, intervals
    on the pooled items, each run's mean and Δ SFT beside it."""
    from fusepipe.report import seeds

    if len(workdirs) < 2:
        raise click.UsageError("give two or more workdirs, one finished run per seed (e.g. results results-seed1)")
    click.echo(seeds.summary(list(workdirs)))


@cli.command("ablations")
@with_config
@workdir_option
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default: WORKDIR/report).")
@click.option("--list", "list_only", is_flag=True, help="Print the grids' variants (new or reused) and exit.")
def ablations_cmd(config_path, config_json, workdir, out, list_only):
    """report/ablations.md and .html: one table per ablation grid (`snakemake ablations` runs the grids)."""
    from fusepipe import ablations, paths
    from fusepipe.report import ablations as report_ablations

    if list_only:
        if config_json:
            raise click.UsageError("--list reads the whole config (--config), not a slice")
        click.echo(ablations.describe(fppipeline.load(config_path or "config/config.yaml")))
        return
    workdir = workdir or _workdir(config_path, config_json, "--workdir")
    if config_json:
        params = json.loads(config_json)
    else:
        params = ablations.report_params(fppipeline.load(config_path or "config/config.yaml"))
    missing = [paths.eval_results(workdir, m) for m in ablations.report_models(params)
               if not Path(paths.eval_results(workdir, m)).is_file()]
    if missing:
        raise FusepipeError(f"{missing[0]}: missing; run `snakemake ablations` ({len(missing)} model(s) lack results)")
    if "tokenizer" in params and not Path(params["tokenizer"]["file"]).is_file():
        raise FusepipeError(f"{params['tokenizer']['file']}: missing; run `snakemake ablations` (the tokenizer "
                            "grid's efficiency is measured by `fusepipe efficiency`)")
    done = report_ablations.run(params, workdir, out or str(Path(workdir) / "report"))
    click.echo(done["markdown"])


@cli.command("efficiency")
@with_config
@workdir_option
@click.option("--out", type=click.Path(dir_okay=False), help="Output JSON (default: WORKDIR/ablations/tokenizer.json).")
def efficiency_cmd(config_path, config_json, workdir, out):
    """The tokenizer grid's alignment efficiency: each target's KL to the control (the source's homogeneous twin),
    its gain over SFT, and gain / the control target's gain (fusepipe.evaluate.efficiency)."""
    from fusepipe import ablations, paths
    from fusepipe.evaluate import efficiency

    workdir = workdir or _workdir(config_path, config_json, "--workdir")
    if config_json:
        params = json.loads(config_json)
    else:
        params = ablations.efficiency_params(fppipeline.load(config_path or "config/config.yaml"))
    result = efficiency.run(params, workdir, out or paths.ablation_file(workdir, "tokenizer.json"))
    for value, fig in result["values"].items():
        eff = "n/a" if fig["efficiency"] is None else f"{fig['efficiency']:.2f}"
        net = "n/a" if fig["efficiency_net"] is None else f"{fig['efficiency_net']:.2f}"
        click.echo(f"{value:<14} gain {fig['gain']:+.4f}  efficiency {eff}  net {net}")


@cli.command("inspect")
@click.argument("path", type=click.Path(exists=True))
@click.option("--sample-id", help="Show only this row.")
@click.option("-n", "--rows", default=5, show_default=True, help="Rows to show.")
def inspect_cmd(path, sample_id, rows):
    """Print an artifact's schema, row count, manifest and first rows."""
    from fusepipe.inspect import inspect_path

    inspect_path(path, sample_id=sample_id, n_rows=rows)


@cli.command("schema")
def schema_cmd():
    """Print the config's JSON schema (the content of config/schema.yaml)."""
    click.echo(schema_yaml(), nl=False)


def schema_yaml() -> str:
    header = "# Generated from fusepipe.config by `fusepipe schema`; a test keeps it in sync. Do not edit.\n"
    return header + yaml.safe_dump(fpconfig.json_schema(), sort_keys=False, width=110)


@cli.command("plan")
@click.option("--configfile", required=True, type=click.Path(dir_okay=False),
              help="Config or recipe, deep-merged over --base as `snakemake --configfile` does.")
@click.option("--base", default="config/config.yaml", show_default=True, help="Config the file is merged over "
              "('' for none).")
@click.option("--gpu", type=click.Choice(["a100", "a800", "h100", "h800", "h200"]), default="h100", show_default=True)
@click.option("--mfu-forward", type=float, default=0.40, show_default=True, help="MFU of prefill/teacher forcing.")
@click.option("--mfu-decode", type=float, default=0.10, show_default=True, help="MFU of sampling.")
@click.option("--mfu-train", type=float, default=0.35, show_default=True, help="MFU of training.")
@click.option("--tokens", multiple=True, metavar="SOURCE=TOTAL[/RESPONSE]",
              help="Tokens per sample of a data source (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_cmd(configfile, base, gpu, mfu_forward, mfu_decode, mfu_train, tokens, as_json):
    """Jobs, GPU-hours, CPU-hours, disk and peak memory per stage, before spending any of them."""
    from fusepipe import plan

    per_source = {}
    for item in tokens:
        name, _, value = item.partition("=")
        total, _, response = value.partition("/")
        if not name or not total.isdigit() or (response and not response.isdigit()):
            raise click.BadParameter(f"{item!r}: expected SOURCE=TOTAL or SOURCE=TOTAL/RESPONSE", param_hint="--tokens")
        per_source[name] = (int(total), int(response or int(total) * 2 // 3))
    cfg = plan.load(configfile, base or None)
    a = plan.Assumptions(gpu=gpu, mfu_forward=mfu_forward, mfu_decode=mfu_decode, mfu_train=mfu_train,
                         tokens=per_source)
    result = plan.estimate(cfg, a)
    click.echo(plan.to_json(result) if as_json else plan.table(result))


@cli.command("summary")
@click.option("--workdir", default="results", show_default=True)
def summary_cmd(workdir):
    """A short table of what the pipeline built (printed at the end of `snakemake all`)."""
    from fusepipe.inspect import summary

    summary(workdir)


def main() -> None:
    cli(prog_name="fusepipe")


if __name__ == "__main__":
    main()
