"""Streaming merge engine: sharded safetensors in (memory-mapped), one tensor at a time, shards out.

Per tensor the engine holds the fp32 deltas ``[K, ...]`` and the fp32 output (two buffers reused
across tensors) and the pivot's mapped tensor; mapped input pages are dropped (``madvise``) block by
block as the deltas are built (the method maps the pivot's back as it reads them), and the output is
cast to its dtype block by block as it is written. Peak RSS ≤ (K+2) × the largest tensor in fp32, plus a constant
(the runtime and a few blocks of temporaries).

Output: ``model-0000i-of-0000N.safetensors`` + ``model.safetensors.index.json``, the pivot's config,
tokenizer and chat template, and ``merge_manifest.json`` (method, parameters, per-tensor coefficients and
selected ratios). The folder is built beside its final path and renamed last.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import mmap
import shutil
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fusepipe.artifacts import atomic_path
from fusepipe.merge.methods import Method, Params, blocks, get_method, validate
from fusepipe.params.merge import MergeConfig, MergeError, load_config  # noqa: F401  (re-exported)
from fusepipe.progress import track

log = logging.getLogger(__name__)

MANIFEST = "merge_manifest.json"
INDEX = "model.safetensors.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".index.json")
DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
WRITE_BLOCK = 1 << 20
"""Elements per block when deltas are built and outputs cast (4 MiB of fp32)."""
FAULT_AROUND = 1 << 16


# ---------------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True)
class Entry:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in `file`
    end: int


class Checkpoint:
    """A Hugging Face model folder: its config.json and its safetensors tensors, memory-mapped."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise MergeError(
                f"{self.path} is not a model folder (no config.json); pass a save_pretrained folder"
            )
        self.config: dict[str, Any] = json.loads((self.path / "config.json").read_text())
        self.entries: dict[str, Entry] = {}
        for file in self._files():
            for name, entry in _read_header(file).items():
                if name in self.entries:
                    raise MergeError(f"tensor {name} appears twice in {self.path}; remove the stale shard")
                self.entries[name] = entry
        self._maps: dict[Path, mmap.mmap] = {}

    def _files(self) -> list[Path]:
        index = self.path / INDEX
        if index.is_file():
            return [self.path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise MergeError(f"{self.path} has no *.safetensors weights; re-save it with save_pretrained")
        return files

    @property
    def vocab_size(self) -> int | None:
        return self.config.get("vocab_size") or self.config.get("text_config", {}).get("vocab_size")

    def order(self) -> list[str]:
        """Tensor names in file and offset order (sequential reads)."""
        return sorted(self.entries, key=lambda n: (self.entries[n].file, self.entries[n].start))

    def ordered(self) -> list[tuple[str, Entry]]:
        return [(n, self.entries[n]) for n in self.order()]

    def tensor(self, name: str) -> torch.Tensor:
        """A zero-copy view of the mapped bytes (copy-on-write mapping: never written)."""
        e = self.entries[name]
        if math.prod(e.shape) == 0:
            return torch.empty(e.shape, dtype=e.dtype)
        if e.file not in self._maps:
            with open(e.file, "rb") as f:
                self._maps[e.file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        count = math.prod(e.shape)
        return torch.frombuffer(self._maps[e.file], dtype=e.dtype, count=count, offset=e.start).view(e.shape)

    def release(self, name: str, elements: slice | None = None) -> None:
        """Drop the tensor's pages (or those of a flat element range) from this process, with the
        64 KiB around them that the kernel's fault-around maps; they stay in the page cache."""
        e = self.entries[name]
        mm = self._maps.get(e.file)
        if mm is None or e.end <= e.start or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start, end = e.start, e.end
        if elements is not None:
            start, end = (
                e.start + elements.start * e.dtype.itemsize,
                e.start + elements.stop * e.dtype.itemsize,
            )
        start = max(0, start - FAULT_AROUND)
        start -= start % mmap.PAGESIZE
        mm.madvise(mmap.MADV_DONTNEED, start, min(len(mm), end + FAULT_AROUND) - start)


def _read_header(file: Path) -> dict[str, Entry]:
    try:
        with open(file, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
    except (OSError, struct.error, ValueError) as exc:
        raise MergeError(f"{file} is not a readable safetensors file ({exc}); re-save the model") from exc
    entries = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] not in DTYPES:
            raise MergeError(f"tensor {name} in {file} has unsupported dtype {meta['dtype']}")
        start, end = meta["data_offsets"]
        entries[name] = Entry(
            file, DTYPES[meta["dtype"]], tuple(meta["shape"]), 8 + size + start, 8 + size + end
        )
    return entries


# ---------------------------------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class Spec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty(0, dtype=self.dtype).element_size()


class ShardWriter:
    """Writes tensors, in a fixed order known up front, into shards of at most `max_bytes` (a larger
    tensor gets a shard of its own); each shard's header is written before its first tensor."""

    def __init__(self, folder: Path, specs: list[Spec], max_bytes: int):
        shards: list[list[Spec]] = [[]]
        size = 0
        for spec in specs:
            if shards[-1] and size + spec.nbytes > max_bytes:
                shards.append([])
                size = 0
            shards[-1].append(spec)
            size += spec.nbytes
        self.folder = folder
        self.shards = shards
        self.files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        self._pending = [(i, spec) for i, shard in enumerate(shards) for spec in shard]
        self._next = 0
        self._open: tuple[int, Any] | None = None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next tensor, cast to its planned dtype block by block (no full-size copy)."""
        shard, spec = self._pending[self._next]
        assert (spec.name, spec.shape) == (name, tuple(tensor.shape)), (spec, name)
        if self._open is None or self._open[0] != shard:
            self._start(shard)
        flat = tensor.contiguous().reshape(-1)
        for s in blocks(flat.numel(), WRITE_BLOCK) if flat.dtype != spec.dtype else [slice(None)]:
            self._open[1].write(flat[s].to(spec.dtype).view(torch.uint8).numpy())
        self._next += 1

    def _start(self, shard: int) -> None:
        if self._open is not None:
            self._open[1].close()
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for spec in self.shards[shard]:
            header[spec.name] = {
                "dtype": DTYPE_NAMES[spec.dtype], "shape": list(spec.shape), "data_offsets": [offset, offset + spec.nbytes]
            }  # fmt: skip
            offset += spec.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        f = open(self.folder / self.files[shard], "wb")  # noqa: SIM115 - closed by the next _start / close
        f.write(struct.pack("<Q", len(raw)) + raw)
        self._open = (shard, f)

    def close(self) -> None:
        """Close the last shard and write the index; every planned tensor must have been written."""
        assert self._next == len(self._pending), "not every tensor was written"
        if self._open is not None:
            self._open[1].close()
        weight_map = {spec.name: self.files[i] for i, spec in self._pending}
        total = sum(spec.nbytes for _, spec in self._pending)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (self.folder / INDEX).write_text(json.dumps(index, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------------
# Checks


def check_models(pivot: Checkpoint, targets: list[Checkpoint], policy: str) -> dict[str, int]:
    """Refuse mismatched architectures, tensor names or shapes; return, per vocabulary tensor whose row
    counts differ, the number of leading rows every model has (the rows that are merged)."""
    for t in targets:
        for key in ("model_type", "architectures", "tie_word_embeddings"):
            if key == "tie_word_embeddings" and not (key in pivot.config and key in t.config):
                continue  # an absent flag means the architecture's default: the tensor names decide
            if pivot.config.get(key) != t.config.get(key):
                raise MergeError(
                    f"architecture mismatch: {key} is {pivot.config.get(key)!r} in pivot {pivot.path} but "
                    f"{t.config.get(key)!r} in {t.path}; merge only models fine-tuned from the pivot"
                )
        missing = [n for n in pivot.order() if n not in t.entries]
        if missing:
            raise MergeError(
                f"tensor {missing[0]} of pivot {pivot.path} is missing in {t.path} ({len(missing)} missing); "
                "merge only models fine-tuned from the pivot"
            )
        extra = sorted(set(t.entries) - set(pivot.entries))
        if extra:
            raise MergeError(
                f"tensor {extra[0]} of {t.path} is not in pivot {pivot.path} ({len(extra)} extra); "
                "merge only models fine-tuned from the pivot"
            )
    rows: dict[str, int] = {}
    for name in pivot.order():
        p = pivot.entries[name]
        for t in targets:
            e = t.entries[name]
            if p.dtype.is_floating_point != e.dtype.is_floating_point:
                raise MergeError(
                    f"tensor {name} is {p.dtype} in pivot {pivot.path} but {e.dtype} in {t.path}"
                )
            if e.shape == p.shape:
                continue
            vocab = (
                len(p.shape) == 2 and p.shape[1:] == e.shape[1:]
                and p.shape[0] == pivot.vocab_size and e.shape[0] == t.vocab_size
            )  # fmt: skip
            if not vocab:
                raise MergeError(
                    f"tensor {name} has shape {list(e.shape)} in {t.path} but {list(p.shape)} in pivot "
                    f"{pivot.path}; merge only models fine-tuned from the pivot"
                )
            if e.shape[0] < p.shape[0] and policy == "crop":
                raise MergeError(
                    f"tensor {name} has {e.shape[0]} rows in {t.path}, fewer than the pivot's {p.shape[0]}; "
                    "embedding_policy 'crop' cannot fill them, use 'pivot'"
                )
            rows[name] = min(rows.get(name, p.shape[0]), e.shape[0])
    return rows


def _check_paths(pivot: Path, targets: list[Path], out: Path) -> None:
    if not targets:
        raise MergeError("no targets to merge; list at least one target model folder")
    resolved = out.resolve()
    for p in (pivot, *targets):
        if p.resolve() == resolved:
            raise MergeError(f"output {out} is also an input model; choose another output folder")


# ---------------------------------------------------------------------------------------------------
# The merge


def merge(
    pivot: str | Path, targets: list[str | Path], out: str | Path, config: MergeConfig
) -> dict[str, Any]:
    """Merge `targets` (fine-tuned from `pivot`) into `out` with `config.method`; return the manifest."""
    started = time.perf_counter()
    out = Path(out)
    _check_paths(Path(pivot), [Path(t) for t in targets], out)
    method, params = get_method(config.method), config.method_params()
    validate(config.method, params, len(targets))
    base_ckpt = Checkpoint(pivot)
    target_ckpts = [Checkpoint(t) for t in targets]
    rows = check_models(base_ckpt, target_ckpts, config.embedding_policy)
    specs = [Spec(n, _out_dtype(e.dtype, config.dtype), e.shape) for n, e in base_ckpt.ordered()]
    tensors: dict[str, dict[str, Any]] = {}
    with atomic_path(out) as tmp, _threads(config.threads):
        tmp.mkdir()
        _copy_side_files(base_ckpt.path, tmp, config.dtype)
        writer = ShardWriter(tmp, specs, config.max_shard_bytes)
        work = Workspace(len(target_ckpts))
        for spec in track(specs, f"merge {config.method}", total=len(specs), unit="tensors"):
            tensors[spec.name] = _merge_tensor(
                spec, base_ckpt, target_ckpts, rows.get(spec.name), method, params, work, writer
            )
        writer.close()
        manifest = {
            "method": config.method,
            "params": params.model_dump(),
            "embedding_policy": config.embedding_policy,
            "dtype": config.dtype,
            "pivot": str(pivot),
            "targets": [str(t) for t in targets],
            "shards": writer.files,
            "tensors": tensors,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    log.info(
        "merged %d tensors of %s and %d target(s) with %s into %s in %.1f s",
        len(specs), pivot, len(targets), config.method, out, time.perf_counter() - started,
    )  # fmt: skip
    return manifest


class Workspace:
    """The fp32 deltas [K, n] and output [n] buffers, reused across tensors and grown to the largest:
    nothing else of tensor size is allocated, and fresh memory would cost a page fault per 4 KiB."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.deltas = self.out = torch.empty(0)

    def take(self, n_merged: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.deltas.numel() < self.k * n_merged:
            self.deltas = torch.empty(0)  # free before growing
            self.deltas = torch.empty(self.k * n_merged)
        if self.out.numel() < n_out:
            self.out = torch.empty(0)
            self.out = torch.empty(n_out)
        return self.deltas[: self.k * n_merged].view(self.k, n_merged), self.out[:n_out]


def _merge_tensor(
    spec: Spec,
    pivot: Checkpoint,
    targets: list[Checkpoint],
    rows: int | None,
    method: Method,
    params: Params,
    work: Workspace,
    writer: ShardWriter,
) -> dict[str, Any]:
    """Merge one tensor (its first `rows` rows when the vocabulary sizes differ, the pivot's values
    after them), write it, and return its manifest facts."""
    base = pivot.tensor(spec.name)
    if not base.dtype.is_floating_point:
        writer.write(spec.name, base)
        return {}
    head = base if rows is None else base[:rows]
    deltas, out = work.take(head.numel(), base.numel())
    for j, t in enumerate(targets):
        source = t.tensor(spec.name)
        last = j == len(targets) - 1  # then the pivot's pages go too: the method maps them back as it reads
        release = [(t, spec.name)] + ([(pivot, spec.name)] if last else [])
        _fill_delta(
            deltas[j], (source if rows is None else source[:rows]).reshape(-1), head.reshape(-1), release
        )
        if not math.isfinite(float(deltas[j].sum())):
            raise MergeError(
                f"tensor {spec.name} has non-finite values in {t.path} or pivot {pivot.path}; "
                "fix or re-export the checkpoint"
            )
    result = method.fn(head, deltas.view(len(targets), *head.shape), params, name=spec.name, out=out)
    if rows is not None:
        out[head.numel() :] = base[rows:].reshape(-1)
        result.info["rows"] = {"merged": rows, "pivot": base.shape[0]}
    writer.write(spec.name, out.view(base.shape))
    pivot.release(spec.name)
    return result.info


def _fill_delta(
    delta: torch.Tensor, source: torch.Tensor, base: torch.Tensor, release: list[tuple[Checkpoint, str]]
) -> None:
    """delta = source − base in fp32, by blocks, dropping each block's mapped pages of `release` once read
    (so building K deltas never holds more than a block of the inputs)."""
    for s in blocks(delta.numel(), WRITE_BLOCK):
        delta[s].copy_(source[s])
        delta[s].sub_(base[s])
        for ckpt, name in release:
            ckpt.release(name, s)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _out_dtype(pivot_dtype: torch.dtype, setting: str) -> torch.dtype:
    if setting == "auto" or not pivot_dtype.is_floating_point:
        return pivot_dtype
    return getattr(torch, setting)


def _copy_side_files(pivot: Path, out: Path, dtype: str) -> None:
    """Copy the pivot's config, generation config, tokenizer files and chat template (every top-level
    file that is not a weight or a manifest); record the output dtype in config.json."""
    for f in sorted(pivot.iterdir()):
        if (
            f.is_file()
            and not f.name.endswith(WEIGHT_SUFFIXES)
            and f.name not in (MANIFEST, "_manifest.json")
        ):
            shutil.copy2(f, out / f.name)
    if dtype != "auto":
        config = json.loads((out / "config.json").read_text())
        for key in ("dtype", "torch_dtype"):
            if key in config or key == "dtype":
                config[key] = dtype
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
