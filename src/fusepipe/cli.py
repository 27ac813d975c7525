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
from fusepipe.errors import FusepipeError
from fusepipe.progress import setup_logging

log = logging.getLogger("fusepipe")


def _slice(stage: str, config_path: str | None, config_json: str | None) -> dict[str, Any]:
    if config_json:
        return json.loads(config_json)
    cfg = fpconfig.load(config_path or "config/config.yaml")
    return fpconfig.stage_slice(cfg, stage)


def _workdir(config_path: str | None, config_json: str | None) -> str:
    if config_json:
        raise click.UsageError("--out is required together with --config-json")
    return fpconfig.load(config_path or "config/config.yaml").workdir


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
def toy_world_cmd(config_path, config_json, out):
    """Build the toy world: tiny heterogeneous chat models, reward models and data."""
    from fusepipe.toy import stage

    params = _slice("toy_world", config_path, config_json)
    out = out or str(Path(_workdir(config_path, config_json)) / "toy")
    result = stage.run(params, out)
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
