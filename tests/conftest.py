"""Shared fixtures. The toy world is built once per test session, by running the real pipeline
(`snakemake --cores 2 all` on a fresh copy of the default config); every test that needs toy models or
pipeline outputs reads from that run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

os.environ.setdefault("FUSEPIPE_NO_PROGRESS", "1")


def copy_workflow(dest: Path) -> Path:
    """A fresh copy of the workflow (Snakefile, rules, config) in `dest`, as a user's checkout would have."""
    for item in ("Snakefile", "workflow", "config", "slurm", "envs"):
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, dest / item)
        else:
            shutil.copy(src, dest / item)
    return dest


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*SNAKEMAKE, "--cores", "2", *args], cwd=workdir, capture_output=True, text=True, timeout=1800
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> Path:
    """A workflow copy on which `snakemake --cores 2 all` has run to completion (toy world included).

    While iterating, FUSEPIPE_TEST_PIPELINE=DIR reuses a folder where that already ran (CI never sets it)."""
    reuse = os.environ.get("FUSEPIPE_TEST_PIPELINE")
    if reuse:
        return Path(reuse)
    root = copy_workflow(tmp_path_factory.mktemp("pipeline"))
    proc = snakemake(root, "all")
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
