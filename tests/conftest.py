"""Shared fixtures. The toy world is built once per test session, by running the real pipeline
(`snakemake --cores 2 all` on a fresh copy of the default config); every test that needs toy models or
pipeline outputs reads from that run. No test reads or writes the checkout it runs from: every test runs in an
empty folder, dry runs and pipeline runs happen in temporary copies (`copy_workflow`, `copy_pipeline`), and a test
that changes a pipeline's config or outputs changes its own copy.

Two environment variables shorten the session run (README, "Tests"):
- FUSEPIPE_TEST_PIPELINE=DIR: use DIR, a folder where `snakemake all` already ran, as it is (read only; while
  iterating on tests).
- FUSEPIPE_TEST_SEED_RUN=DIR: start the session run from a copy of DIR's results and Snakemake metadata (DIR is a
  checkout where `snakemake all` ran, e.g. after `make run`; CI sets it), so `snakemake all` there has nothing or
  little to do; it still runs, and still proves that the DAG is complete and up to date."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# Shards of the session's run, as the toy config sets them (tests iterate over them): generate.shards per model,
# logits.shards per (mode, model), which the align and fuse stages follow.
_TOY_CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
GEN_SHARDS, LOGITS_SHARDS = _TOY_CONFIG["generate"]["shards"], _TOY_CONFIG["logits"]["shards"]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

os.environ.setdefault("FUSEPIPE_NO_PROGRESS", "1")


def copy_workflow(dest: Path, src_root: Path = REPO) -> Path:
    """A fresh copy of the workflow (Snakefile, rules, config) in `dest`, as a user's checkout would have."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in ("Snakefile", "workflow", "config", "slurm", "envs"):
        src = src_root / item
        if src.is_dir():
            shutil.copytree(src, dest / item)
        else:
            shutil.copy(src, dest / item)
    return dest


def copy_run(src: Path, dest: Path, workdir: str = "results") -> Path:
    """`src`'s pipeline state into `dest`: its workdir (mtimes kept) and the Snakemake records a later run checks
    (`.snakemake/metadata`: params, code, inputs of every output; `.snakemake/incomplete`), not its locks or logs."""
    if not (src / workdir).is_dir():
        raise FileNotFoundError(f"{src / workdir}: no pipeline results here; run `snakemake --cores 2 all` in {src}")
    shutil.copytree(src / workdir, dest / workdir, symlinks=True)
    for record in ("metadata", "incomplete"):
        if (src / ".snakemake" / record).is_dir():
            shutil.copytree(src / ".snakemake" / record, dest / ".snakemake" / record, symlinks=True)
    return dest


def copy_pipeline(pipeline: Path, dest: Path) -> Path:
    """A private copy of a finished pipeline folder (its workflow, results and Snakemake records), for a test that
    runs Snakemake on it or changes it: the session's folder stays as every other test expects it."""
    return copy_run(pipeline, copy_workflow(dest, pipeline))


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*SNAKEMAKE, "--cores", "2", *args], cwd=workdir, capture_output=True, text=True, timeout=1800, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(autouse=True)
def _no_rendezvous_left_behind(monkeypatch):
    """A test that trains in-process sets RANK, MASTER_PORT, … (`setup_distributed`); undone after each test, so
    they never reach the Snakemake runs of later tests."""
    from fusepipe.evaluate.stage import DISTRIBUTED_ENV

    for name in DISTRIBUTED_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _run_outside_the_checkout(tmp_path_factory, monkeypatch):
    """Every test runs in an empty folder of its own: a relative path (the config's `workdir: results`, a model
    path under it, `config/config.yaml`) never reaches whatever `make run` left in the checkout."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> Path:
    """A workflow copy on which `snakemake --cores 2 all` has run to completion (toy world included). Tests read it;
    none writes into it (they copy it: `copy_pipeline`).

    While iterating, FUSEPIPE_TEST_PIPELINE=DIR reuses a folder where that already ran, as it is. With
    FUSEPIPE_TEST_SEED_RUN=DIR the copy starts from DIR's results and Snakemake records (after `make run` there:
    nothing to do), and `snakemake all` brings it up to date."""
    reuse = os.environ.get("FUSEPIPE_TEST_PIPELINE")
    if reuse:
        return Path(reuse).resolve()
    root = copy_workflow(tmp_path_factory.mktemp("pipeline"))
    seed = os.environ.get("FUSEPIPE_TEST_SEED_RUN")
    if seed:  # what the seed run left half-written (it was killed) is redone, never trusted
        copy_run(Path(seed).resolve(), root)
    proc = snakemake(root, "all", *(["--rerun-incomplete"] if seed else []))
    (root / "first_run.log").write_text(proc.stdout + proc.stderr)
    return root


@pytest.fixture(scope="session")
def toy(pipeline) -> Path:
    return pipeline / "results" / "toy"


def load_pipeline_config(root: Path, workdir: Path | None = None, edit=None):
    """The config of a workflow copy, its workdir made absolute (tests run from other folders); `edit(raw)` may
    change the raw mapping before it is validated."""
    from fusepipe import pipeline as fppipeline

    raw = yaml.safe_load((root / "config" / "config.yaml").read_text())
    if edit is not None:
        edit(raw)
    return fppipeline.load_dict({**raw, "workdir": str(workdir or root / "results")})


@pytest.fixture(scope="session")
def pipeline_cfg(pipeline):
    """The session pipeline's config (typed, workdir absolute)."""
    return load_pipeline_config(pipeline)
