"""Crash recovery, by fault injection: Snakemake and every process it started SIGKILLed (a preempted head job, a lost
ssh session, an OOM kill) in the middle of a sharded `logits` job, its shard open for writing (the writer opens its
temporary file before the engine loads, and renames it when the last row group is in), and of a `train` job, after
its first checkpoint. Then the recovery the README and docs/cluster.md give: the next run stops on the lock,
`snakemake --unlock`, `snakemake TARGET --rerun-incomplete`. Checked: no output ever appears under its final name
before it is complete, and the rerun ends with the same bytes as the session's uninterrupted run.

Each test runs on a private copy of the session's pipeline folder with one job's outputs removed, so Snakemake
runs exactly that job, with the command line, threads and environment of the rule."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import psutil
from conftest import SNAKEMAKE, copy_pipeline, snakemake

from fusepipe import paths
from fusepipe.artifacts import file_hash, shard_manifest

LOCKED = "Error: Directory cannot be locked."


def start(root: Path, target: str) -> subprocess.Popen:
    """`snakemake --cores 2 TARGET` in the background, in a session of its own (its process group holds its jobs)."""
    with (root / "killed_run.log").open("w") as log:
        return subprocess.Popen([*SNAKEMAKE, "--cores", "2", target], cwd=root, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def kill_all_when(proc: subprocess.Popen, root: Path, ready, what: str, timeout: float = 600) -> None:
    """Poll until `ready()`, then SIGKILL Snakemake and every process below it (its jobs, their engines)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log = (root / "killed_run.log").read_text()[-3000:]
            raise AssertionError(f"no {what} while snakemake ran (exit {proc.wait()}):\n{log}")
        time.sleep(0.005)
    tree = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for p in tree:  # anything that left Snakemake's process group
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(tree, timeout=30)


def recover(root: Path, target: str) -> subprocess.CompletedProcess:
    """The documented recovery: the run stops on the stale lock; unlock; rerun the target, incomplete jobs first."""
    locked = snakemake(root, target, check=False)
    assert locked.returncode != 0 and LOCKED in locked.stdout + locked.stderr
    snakemake(root, "--unlock")
    return snakemake(root, target, "--rerun-incomplete")


def without_timings(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k not in ("timings_s", "engine")} | {
        "engine": manifest["engine"]["kind"]}  # the rest of `engine` is its load and run seconds


def test_a_killed_logits_job_leaves_no_shard_and_reruns_to_the_same_bytes(pipeline, tmp_path):
    root = copy_pipeline(pipeline, tmp_path)
    shard = Path(paths.logits_shard("results", "gt", "qwen-arith", 0))
    for f in (shard, shard_manifest(shard)):
        (root / f).unlink()
    out = root / shard.parent
    proc = start(root, str(shard))
    kill_all_when(proc, root, lambda: any(out.glob(f".{shard.name}.tmp-*")), f"a temporary {shard.name}")
    assert list(out.glob(f".{shard.name}.tmp-*"))  # killed mid-write: the half-written file is all there is of it
    assert not list(out.glob(f"{shard.stem}*"))  # neither the shard nor its manifest

    proc = recover(root, str(shard))
    assert "rule logits_gt:" in proc.stdout + proc.stderr
    assert (root / shard).read_bytes() == (pipeline / shard).read_bytes()
    manifests = [json.loads((r / shard_manifest(shard)).read_text()) for r in (root, pipeline)]
    assert without_timings(manifests[0]) == without_timings(manifests[1])


def test_a_killed_train_job_resumes_from_its_checkpoint_to_the_same_model(pipeline, tmp_path):
    root = copy_pipeline(pipeline, tmp_path)
    folder = Path(paths.train_dir("results", "fusechat", "qwen-arith"))
    model = Path(paths.train_model("results", "fusechat", "qwen-arith"))
    shutil.rmtree(root / folder)
    record = root / folder / "checkpoints" / "fusepipe.json"
    proc = start(root, str(model))
    kill_all_when(proc, root, record.is_file, "a first checkpoint")
    first = json.loads(record.read_text())["step"]
    assert not (root / model).exists() and not (root / folder / "log.parquet").exists()

    proc = recover(root, str(model))
    assert "rule train:" in proc.stdout + proc.stderr
    manifest = json.loads((root / folder / "_manifest.json").read_text())
    assert manifest["resumed_at_step"] > first  # resumed, not restarted
    assert not (root / folder / "checkpoints").exists()
    # the same weights, tokenizer and config, byte for byte, as the session's uninterrupted run of this job
    assert sorted(p.name for p in (root / model).iterdir()) == sorted(p.name for p in (pipeline / model).iterdir())
    assert file_hash(root / model) == file_hash(pipeline / model)
    timing = ["seconds", "tokens_per_s"]
    logs = [pl.read_parquet(r / folder / "log.parquet").drop(timing) for r in (root, pipeline)]
    assert logs[0].equals(logs[1])
    manifests = [json.loads((r / folder / "_manifest.json").read_text()) for r in (root, pipeline)]
    skip = ("timings_s", "resumed_at_step", "tokens_per_s_median", "outputs")  # outputs: the log's hash (timings)
    assert {k: v for k, v in manifests[0].items() if k not in skip} == \
        {k: v for k, v in manifests[1].items() if k not in skip}
