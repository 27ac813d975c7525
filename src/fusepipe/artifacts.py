"""Artifacts on disk: atomic writes, Parquet with the project's settings, manifests, content hashes.

A crashed job must leave nothing that looks finished: every file is written to a temporary sibling and
renamed into place; folders are built beside their final path and renamed last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fusepipe import __version__

MANIFEST = "_manifest.json"
PARQUET_COMPRESSION = "zstd"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def write_parquet(table: pa.Table, path: str | Path, schema: pa.Schema | None = None, **kwargs: Any) -> Path:
    """Write `table` (cast to `schema`) atomically with zstd compression."""
    if schema is not None:
        table = table.select(schema.names).cast(schema)
    opts = {"compression": PARQUET_COMPRESSION, **kwargs}
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **opts)
    return Path(path)


def write_json(obj: Any, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


SNAKEMAKE_MARKER = ".snakemake_timestamp"


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, or of a folder's relative paths and file hashes (sorted; without the empty marker
    `.snakemake_timestamp` Snakemake adds to a folder output, so a folder hashes the same before and after)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for sub in sorted(p for p in path.rglob("*") if p.is_file() and p.name != SNAKEMAKE_MARKER):
            h.update(str(sub.relative_to(path)).encode())
            h.update(file_hash(sub).encode())
        return h.hexdigest()[:16]
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def code_version(*modules: str) -> str:
    """Hash of the package source files a stage runs (so a code edit reruns exactly that stage)."""
    root = Path(__file__).parent
    h = hashlib.sha256(__version__.encode())
    for mod in sorted(modules):
        target = root / mod
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]
        for f in files:
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def slice_hash(slice_: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(slice_, sort_keys=True).encode()).hexdigest()[:16]


class Manifest:
    """Collects what a stage did and writes `_manifest.json` beside its outputs."""

    def __init__(self, stage: str, config_slice: dict[str, Any], inputs: dict[str, Any] | None = None):
        self.stage = stage
        self.started = time.time()
        self.data: dict[str, Any] = {
            "stage": stage,
            "fusepipe_version": __version__,
            "config": config_slice,
            "config_hash": hashlib.sha256(json.dumps(config_slice, sort_keys=True).encode()).hexdigest()[:16],
            "inputs": {k: _describe_input(v) for k, v in (inputs or {}).items()},
            "timings_s": {},
        }
        self._phase_start: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.data["timings_s"][name] = round(time.perf_counter() - t0, 3)

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def write(self, folder: str | Path, outputs: dict[str, str | Path] | None = None, name: str = MANIFEST) -> Path:
        """Write to `folder/name` (sharded stages: `shard_manifest(shard_path)`, one per job)."""
        self.data["timings_s"]["total"] = round(time.time() - self.started, 3)
        if outputs:
            self.data["outputs"] = {k: {"path": str(v), "hash": file_hash(v)} for k, v in outputs.items()}
        return write_json(self.data, Path(folder) / name)


def shard_manifest(shard: str | Path) -> Path:
    """The manifest of one shard job: `shard-00003.parquet` -> `shard-00003_manifest.json` beside it."""
    shard = Path(shard)
    return shard.parent / f"{shard.stem}{MANIFEST}"


def _describe_input(value: Any) -> Any:
    if isinstance(value, (str, Path)) and Path(value).exists():
        return {"path": str(value), "hash": file_hash(value)}
    return value


def read_manifest(path: str | Path) -> dict[str, Any] | None:
    """The manifest that describes `path` (the file itself, the one in a folder, or beside a file)."""
    path = Path(path)
    for cand in (path, path / MANIFEST, shard_manifest(path), path.parent / MANIFEST):
        if cand.name.endswith(MANIFEST) and cand.is_file():
            return json.loads(cand.read_text())
    return None
