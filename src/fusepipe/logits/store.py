"""Parquet shards of teacher-forced top-k captures: the record, the log-prob code, the writer and readers.

One row per (sample, model, mode), schema `fusepipe.schemas.logits_schema(k)`; docs/logits.md has the
measurements behind each choice. Log-probs are computed in fp32 and stored as a fixed-point code:

    code    c = round(-logprob · 512), clamped to [0, 65535]           uint16, step 2^-9 nat
    value   logprob = -c / 512                                         exact in fp32
    bound   |logprob - value| ≤ 2^-10 = 9.77e-4 nat for logprob ≥ FLOOR = -65535/512 ≈ -127.998, so every
            probability is within e^(2^-10) - 1 = 9.77e-4 relative error of fp32. Lower log-probs (-inf
            included) are stored as FLOOR and counted (`WriterStats.n_clamped`).

- `topk_logprobs` is non-increasing along k, so its codes are too: a row stores the first code and the
  non-negative gaps between ranks, g[0] = c[0], g[j] = c[j] - c[j-1] (lossless on the integers, the bound
  holds at every rank): logprob[j] = -(g[0] + … + g[j]) / 512.
- `token_logprob` uses the plain code; `entropy` (nats ≥ 0) the code with the sign flipped, entropy = c / 512,
  abs error ≤ 2^-10 nat (the same bound as token_logprob: UDF-style weights 1/(H + CE) add the two).
- Redundancy with the target token is stored as nulls: `topk_ids[t, r]` is null where it equals
  `token_ids[t]` (the null marks the target's rank r), and `token_logprob[t]` is null where its code equals
  the code of `topk_logprobs[t, r]`. Readers fill both back exactly.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fusepipe.artifacts import atomic_path
from fusepipe.errors import ArtifactError
from fusepipe.schemas import (
    LOGITS_CODE,
    LOGITS_K,
    LOGITS_SCALE,
    check_schema,
    logits_schema,
    topk_tail_entropy,
)

SCALE = LOGITS_SCALE  # codes per nat
MAX_CODE = int(np.iinfo(np.uint16).max)
FLOOR = -MAX_CODE / SCALE  # the lowest storable log-prob, ≈ -127.998
MAX_ABS_ERROR = 0.5 / SCALE  # 2^-10 nat: |logprob - stored| above FLOOR
MAX_REL_ERROR = math.expm1(MAX_ABS_ERROR)  # |p_stored / p - 1| above FLOOR, 9.77e-4
MODES = ("gt", "inf")
ENTROPY_KINDS = ("exact", "topk_tail")

PER_SAMPLE = ("sample_id", "model", "mode", "entropy_kind", "nll_sum", "n_tokens", "n_bytes")
PER_TOKEN = (
    "token_ids", "offsets", "message_index", "turn_end", "topk_ids", "topk_logprobs", "token_logprob", "entropy",
)  # fmt: skip
# Decoding a column needs these others (nulls refer to the target token and its rank in the top-k).
NEEDS = {"topk_ids": ("token_ids",), "token_logprob": ("topk_ids", "token_ids", "topk_logprobs"),
         "entropy": ("topk_logprobs", "entropy_kind")}
ID_COLUMNS = ("token_ids", "topk_ids")
INT32_MAX = int(np.iinfo(np.int32).max)
# Integer per-token columns: their stored type and the range they must lie in.
RANGES = {
    "token_ids": (np.int32, 0, INT32_MAX),
    "topk_ids": (np.int32, 0, INT32_MAX),
    "offsets": (np.int32, 0, INT32_MAX),
    "message_index": (np.int16, 0, int(np.iinfo(np.int16).max)),
}


@dataclass
class SampleLogits:
    """One sample's capture: T target tokens (all assistant turns), k ranks; NumPy arrays in fp32/int32.

    `offsets[t]` is the char span [start, end) of target token t in the text of assistant message
    `message_index[t]`; `turn_end[t]` flags template end-of-turn tokens kept as targets. `topk_*` are in rank
    order, best first; log-probs are log-softmax over the full vocabulary at temperature 1. `entropy` is
    exact (`entropy_kind="exact"`) or top-k terms plus one tail bucket (`"topk_tail"`). `nll_sum` is
    -Σ token_logprob as the engine computed it; `n_bytes` the UTF-8 bytes of the target text.

    Read with `read_shard(path, columns=...)`, the fields not read are None.
    """

    sample_id: str
    model: str
    mode: str
    token_ids: np.ndarray  # [T] int32
    offsets: np.ndarray  # [T, 2] int32
    message_index: np.ndarray  # [T] int32 (stored int16)
    turn_end: np.ndarray  # [T] bool
    topk_ids: np.ndarray  # [T, k] int32
    topk_logprobs: np.ndarray  # [T, k] float32
    token_logprob: np.ndarray  # [T] float32
    entropy: np.ndarray  # [T] float32
    entropy_kind: str
    nll_sum: float
    n_tokens: int
    n_bytes: int

    def validate(self, k: int) -> None:
        """Raise ValueError naming the sample and the field when a shape or a label is off (values are checked
        when encoded, `encode_columns`)."""
        t, name = self.n_tokens, f"sample {self.sample_id}"
        shapes = {
            "token_ids": (t,), "offsets": (t, 2), "message_index": (t,), "turn_end": (t,),
            "topk_ids": (t, k), "topk_logprobs": (t, k), "token_logprob": (t,), "entropy": (t,),
        }  # fmt: skip
        for field_name, shape in shapes.items():
            got = np.shape(getattr(self, field_name))
            if got != shape:
                raise ValueError(
                    f"{name}: {field_name} has shape {got}, expected {shape} (n_tokens={t}, k={k})"
                )
        if self.mode not in MODES:
            raise ValueError(f"{name}: mode {self.mode!r} is not one of {MODES}")
        if self.entropy_kind not in ENTROPY_KINDS:
            raise ValueError(f"{name}: entropy_kind {self.entropy_kind!r} is not one of {ENTROPY_KINDS}")
        if not 0 <= self.n_bytes <= INT32_MAX:
            raise ValueError(f"{name}: n_bytes {self.n_bytes} outside [0, 2^31)")


# --- the code ---------------------------------------------------------------------------------------------


def encode_logprobs(logprobs: np.ndarray) -> tuple[np.ndarray, int]:
    """(uint16 codes round(-logprob · 512) clamped to [0, 65535], how many were below FLOOR).

    Raises ValueError on NaN or on a value above 2^-10 (not a log-probability: logits passed by mistake?).
    """
    x = np.asarray(logprobs, np.float32)
    if np.isnan(x).any():
        raise ValueError("log-probs contain NaN")
    if x.size and float(x.max()) > MAX_ABS_ERROR:
        raise ValueError(f"log-prob {float(x.max()):.4g} > 0: not log-probabilities (logits?)")
    below = x < FLOOR
    scaled = np.where(below, np.float32(FLOOR), x) * np.float32(-SCALE)  # exact in fp32: × 2^9
    return np.rint(scaled).astype(np.uint16), int(below.sum())


def decode_logprobs(codes: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """fp32 log-probs -c / scale (exact in fp32 for scale a power of two)."""
    return np.asarray(codes, np.float32) * np.float32(-1.0 / scale)


def to_gaps(codes: np.ndarray) -> np.ndarray:
    """[T, k] non-decreasing codes -> uint16 [c[0], c[1] - c[0], …]; ValueError if a rank is above the one before."""
    gaps = np.diff(codes.astype(np.int32), axis=-1, prepend=0)
    if (gaps < 0).any():
        raise ValueError("topk_logprobs must be non-increasing along k (rank order, best first)")
    return gaps.astype(np.uint16)


def from_gaps(gaps: np.ndarray) -> np.ndarray:
    """Inverse of `to_gaps`: the codes, int32 (cumulative sums along k)."""
    return np.cumsum(gaps, axis=-1, dtype=np.int32)


def encode_entropy(entropy: np.ndarray) -> np.ndarray:
    """uint16 codes round(entropy · 512) for entropy in [0, 127.998] nats (abs error ≤ 2^-10 nat)."""
    x = np.asarray(entropy, np.float32)
    if np.isnan(x).any() or (x.size and float(x.min()) < -MAX_ABS_ERROR):
        raise ValueError("entropy must be a non-negative number of nats")
    return encode_logprobs(-np.maximum(x, 0))[0]


def decode_entropy(codes: np.ndarray, scale: int = SCALE) -> np.ndarray:
    return np.asarray(codes, np.float32) * np.float32(1.0 / scale)


@dataclass
class Stored:
    """Per-token columns as stored: codes, and the null masks of the redundancy with the target token."""

    topk_gaps: np.ndarray  # [N, k] uint16
    topk_null: np.ndarray  # [N, k] bool: topk_ids equals token_ids there
    token_code: np.ndarray  # [N] uint16
    token_null: np.ndarray  # [N] bool: token_code equals the top-k code at the target's rank
    entropy_code: np.ndarray  # [N] uint16
    n_clamped: int
    entropy_null: np.ndarray | None = None  # [N] bool: derived from the stored top-k (topk_tail samples)


def first_true(mask: np.ndarray) -> np.ndarray:
    """Per row of a [N, k] bool array, the first column that is True, or -1."""
    return np.where(mask.any(axis=1), mask.argmax(axis=1), -1)


def concat(samples: list[SampleLogits]) -> dict[str, np.ndarray]:
    """The per-token arrays of `samples`, concatenated, integers range-checked and cast to their stored type."""
    out = {}
    for name in PER_TOKEN:
        parts = [np.asarray(getattr(s, name)) for s in samples]
        values = np.concatenate(parts) if parts else np.empty(0)
        if name in RANGES:
            dtype, lo, hi = RANGES[name]
            if values.size and not lo <= int(values.min()) <= int(values.max()) <= hi:
                raise ValueError(f"{name} outside [{lo}, {hi}]")
            values = values.astype(dtype, copy=False)
        out[name] = values
    return out


def encode_columns(columns: dict[str, np.ndarray], target_nulls: bool = True) -> Stored:
    """Codes and null masks of concatenated per-token arrays (ValueError on a value the code rejects);
    `target_nulls=False` stores the redundancy with the target token too (no nulls)."""
    topk_codes, clamped_topk = encode_logprobs(columns["topk_logprobs"])
    token_code, clamped_token = encode_logprobs(columns["token_logprob"])
    topk_null = columns["topk_ids"] == columns["token_ids"][:, None]
    topk_null &= target_nulls
    rank = first_true(topk_null)
    rows = np.flatnonzero(rank >= 0)
    token_null = np.zeros(len(token_code), bool)
    token_null[rows] = token_code[rows] == topk_codes[rows, rank[rows]]
    gaps = to_gaps(topk_codes)
    entropy_code = encode_entropy(columns["entropy"])
    derived = columns.get("derived_entropy")
    return Stored(gaps, topk_null, token_code, token_null, entropy_code, clamped_topk + clamped_token,
                  None if derived is None or not derived.any() else derived)


def encode_samples(
    samples: list[SampleLogits], target_nulls: bool = True
) -> tuple[dict[str, np.ndarray], Stored]:
    """(concatenated arrays, stored form) of `samples`; a ValueError names the first sample at fault."""
    try:
        columns = concat(samples)
        columns["derived_entropy"] = np.repeat([s.entropy_kind == "topk_tail" for s in samples],
                                               [s.n_tokens for s in samples]).astype(bool)
        return columns, encode_columns(columns, target_nulls)
    except ValueError:
        for sample in samples:
            try:
                encode_columns(concat([sample]))
            except ValueError as err:
                raise ValueError(f"sample {sample.sample_id}: {err}") from None
        raise


# --- writing ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteOptions:
    """Parquet settings of a shard, measured on the synthetic stand-in at k=10 (docs/logits.md)."""

    compression_level: int = 3  # zstd, codes and everything else
    id_compression_level: int = 1  # zstd, token ids: higher levels find spurious matches and cost more
    samples_per_row_group: int = 512
    tokens_per_row_group: int = 1 << 18  # flush earlier when samples are long (bounded memory)
    byte_stream_split: bool = True  # on every numeric per-token column
    target_nulls: bool = True  # null where topk_ids / token_logprob repeat the target (readers fill them)


@dataclass
class WriterStats:
    n_samples: int = 0
    n_tokens: int = 0
    n_clamped: int = 0  # log-probs below FLOOR, stored as FLOOR
    n_row_groups: int = 0


class _Aborted(Exception):
    """Thrown into `atomic_path` so that it deletes the temporary file."""


class ShardWriter:
    """Streams `SampleLogits` into one Parquet shard; the file appears at `path` only on `close()`.

    Samples are buffered and encoded and written as one row group per `samples_per_row_group` samples (or
    `tokens_per_row_group` tokens), so memory stays bounded; shapes are checked by `write`, values when their
    row group is encoded (a ValueError names the sample). The file is written to a hidden temporary sibling
    (`fusepipe.artifacts.atomic_path`) and renamed onto `path` by `close()`; leaving the `with` block on an
    exception, or `abort()`, deletes it, so a crashed job leaves nothing that looks finished.
    """

    def __init__(self, path: str | Path, k: int = LOGITS_K, options: WriteOptions | None = None):
        self.path, self.k = Path(path), k
        self.options = options or WriteOptions()
        self.schema = logits_schema(k)
        self.stats = WriterStats()
        self._buffer: list[SampleLogits] = []
        self._buffered_tokens = 0
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        try:
            self._writer = pq.ParquetWriter(tmp, self.schema, **parquet_kwargs(self.schema, self.options))
        except BaseException:
            self._atomic.__exit__(_Aborted, _Aborted(), None)
            raise
        self._open = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, typ: type[BaseException] | None, *exc: object) -> None:
        if typ is None:
            self.close()
        else:
            self.abort()

    def write(self, sample: SampleLogits) -> None:
        if not self._open:
            raise ValueError(f"{self.path}: the writer is closed")
        sample.validate(self.k)
        self._buffer.append(sample)
        self._buffered_tokens += sample.n_tokens
        opts = self.options
        if (
            len(self._buffer) >= opts.samples_per_row_group
            or self._buffered_tokens >= opts.tokens_per_row_group
        ):
            self.flush()

    def write_all(self, samples: Iterable[SampleLogits]) -> None:
        for sample in samples:
            self.write(sample)

    def flush(self) -> None:
        """Encode the buffered samples and write them as one row group."""
        samples, self._buffer, self._buffered_tokens = self._buffer, [], 0
        if not samples:
            return
        columns, stored = encode_samples(samples, self.options.target_nulls)
        self._writer.write_table(to_table(samples, columns, stored, self.schema), row_group_size=len(samples))
        self.stats.n_samples += len(samples)
        self.stats.n_tokens += len(columns["token_ids"])
        self.stats.n_clamped += stored.n_clamped
        self.stats.n_row_groups += 1

    def close(self) -> Path:
        """Flush, finish the file and rename it onto `path`."""
        if self._open:
            try:
                self.flush()
                self._writer.close()
            except BaseException:
                self.abort()
                raise
            self._open = False
            self._atomic.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; `path` is left as it was."""
        if self._open:
            self._open = False
            self._buffer = []
            with contextlib.suppress(Exception):
                self._writer.close()
            self._atomic.__exit__(_Aborted, _Aborted(), None)


def write_shard(
    path: str | Path, samples: Iterable[SampleLogits], k: int = LOGITS_K, options: WriteOptions | None = None
) -> WriterStats:
    """Write all `samples` to one shard (atomically); returns the writer's counts."""
    with ShardWriter(path, k, options) as writer:
        writer.write_all(samples)
    return writer.stats


def leaf_path(schema: pa.Schema, name: str) -> str:
    """A column's Parquet leaf path: "topk_ids" -> "topk_ids.list.element.list.element"."""
    path, t = [name], schema.field(name).type
    while pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
        path += ["list", "element"]
        t = t.value_type
    return ".".join(path)


def parquet_kwargs(schema: pa.Schema, options: WriteOptions) -> dict[str, Any]:
    """pyarrow.parquet.ParquetWriter keyword arguments: zstd per column, dictionary only for the labels,
    byte-stream split for numeric per-token columns, statistics only where readers prune on them."""
    numeric = [n for n in PER_TOKEN if n != "turn_end"]
    levels = {leaf_path(schema, n): options.compression_level for n in schema.names}
    levels |= {leaf_path(schema, n): options.id_compression_level for n in ID_COLUMNS}
    return {
        "compression": "zstd",
        "compression_level": levels,
        "use_dictionary": ["model", "mode", "entropy_kind"],
        "column_encoding": {leaf_path(schema, n): "BYTE_STREAM_SPLIT" for n in numeric}
        if options.byte_stream_split
        else None,
        "write_statistics": ["sample_id", "n_tokens"],
    }


def list_array(values: np.ndarray, offsets: pa.Array, value_type: pa.DataType, width: int = 0,
          null: np.ndarray | None = None) -> pa.Array:  # fmt: skip
    """list<value_type> (list<fixed_size_list<value_type, width>> if width) from flat values and offsets."""
    inner = pa.array(values.reshape(-1), value_type, mask=None if null is None else null.reshape(-1))
    if width:
        inner = pa.FixedSizeListArray.from_arrays(inner, width)
    return pa.ListArray.from_arrays(offsets, inner)


def to_table(
    samples: list[SampleLogits], columns: dict[str, np.ndarray], stored: Stored, schema: pa.Schema
) -> pa.Table:
    """One Arrow table, a row per sample, in the stored form (codes, nulls), cast to `schema`."""
    k = schema.field("topk_ids").type.value_type.list_size
    lengths = np.array([s.n_tokens for s in samples], np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))

    def labels(name: str) -> pa.Array:
        return pa.array([getattr(s, name) for s in samples], pa.string())

    table = {
        "sample_id": labels("sample_id"),
        "model": labels("model"),
        "mode": labels("mode"),
        "entropy_kind": labels("entropy_kind"),
        "n_tokens": pa.array(lengths, pa.int32()),
        "n_bytes": pa.array([s.n_bytes for s in samples], pa.int32()),
        "nll_sum": pa.array([s.nll_sum for s in samples], pa.float32()),
        "token_ids": list_array(columns["token_ids"], offsets, pa.int32()),
        "offsets": list_array(columns["offsets"], offsets, pa.int32(), 2),
        "message_index": list_array(columns["message_index"], offsets, pa.int16()),
        "turn_end": list_array(columns["turn_end"].astype(np.bool_), offsets, pa.bool_()),
        "topk_ids": list_array(columns["topk_ids"], offsets, pa.int32(), k, null=stored.topk_null),
        "topk_logprobs": list_array(stored.topk_gaps, offsets, pa.uint16(), k),
        "token_logprob": list_array(stored.token_code, offsets, pa.uint16(), null=stored.token_null),
        "entropy": list_array(stored.entropy_code, offsets, pa.uint16(), null=stored.entropy_null),
    }
    return pa.table([table[f.name].cast(f.type) for f in schema], schema=schema)


# --- reading ----------------------------------------------------------------------------------------------


def check_shard(path: str | Path, k: int | None = None) -> pa.Schema:
    """The shard's schema, checked against `logits_schema(k)` (k read from the file when None) and its code."""
    found = check_schema(path, logits_schema(_file_k(path) if k is None else k))
    code = (found.metadata or {}).get(b"fusepipe.logits.code", b"").decode()
    if code != LOGITS_CODE:
        raise ArtifactError(
            f"{path}: log-prob code {code!r}, this fusepipe reads {LOGITS_CODE!r}; rerun logits"
        )
    return found


def _file_k(path: str | Path) -> int:
    """k of a shard's `topk_ids` column (the default when unreadable: `check_schema` then says what is wrong)."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid):
        return LOGITS_K
    idx = schema.get_field_index("topk_ids")
    t = schema.field(idx).type if idx >= 0 else None
    if t is not None and pa.types.is_list(t) and pa.types.is_fixed_size_list(t.value_type):
        return t.value_type.list_size
    return LOGITS_K


def read_shard(path: str | Path, columns: Iterable[str] | None = None) -> Iterator[SampleLogits]:
    """Yield the shard's samples, one row group in memory at a time, log-probs decoded to fp32.

    `columns`: read only these fields (and what decoding them needs, see NEEDS); the others are None.
    """
    for flat in decoded_row_groups(path, columns):
        yield from _samples(flat)


def decoded_row_groups(path: str | Path, columns: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """Per row group, the decoded columns as flat arrays: per-sample lists (`sample_id`, …), per-token
    arrays over all its samples ([N], [N, 2], [N, k]) and `ptr` [rows + 1] (sample i is ptr[i]:ptr[i+1])."""
    schema = check_shard(path)
    scale = int((schema.metadata or {})[b"fusepipe.logits.scale"])
    wanted = _with_needs(columns)
    with pq.ParquetFile(path) as pf:
        for i in range(pf.num_row_groups):
            yield _decode(pf.read_row_group(i, columns=wanted), scale)


def decoded_tables(path: str | Path, columns: Iterable[str] | None = None) -> Iterator[pa.Table]:
    """Per row group, an Arrow table with the stored columns decoded (fp32 log-probs, nulls filled): what
    polars and pandas users want, `pl.from_arrow(table)`."""
    for flat in decoded_row_groups(path, columns):
        yield _decoded_table(flat)


def read_sample(path: str | Path, sample_id: str) -> SampleLogits:
    """One sample of a shard (row groups whose `sample_id` statistics exclude it are not read)."""
    schema = check_shard(path)
    scale = int((schema.metadata or {})[b"fusepipe.logits.scale"])
    with pq.ParquetFile(path) as pf:
        idx = pf.schema_arrow.get_field_index("sample_id")
        for i in range(pf.num_row_groups):
            stats = pf.metadata.row_group(i).column(idx).statistics
            if stats is not None and stats.has_min_max and not stats.min <= sample_id <= stats.max:
                continue
            ids = pf.read_row_group(i, columns=["sample_id"]).column(0).to_pylist()
            if sample_id in ids:
                row = pf.read_row_group(i).slice(ids.index(sample_id), 1)
                return next(_samples(_decode(row, scale)))
    raise KeyError(f"{path}: no sample {sample_id!r}")


def bytes_per_token(path: str | Path) -> float | None:
    """File size / target tokens in it (None for a shard without tokens)."""
    with pq.ParquetFile(path) as pf:
        n_tokens = int(pc.sum(pf.read(columns=["n_tokens"]).column(0)).as_py() or 0)
    return Path(path).stat().st_size / n_tokens if n_tokens else None


def _with_needs(columns: Iterable[str] | None) -> list[str] | None:
    if columns is None:
        return None
    wanted = ["sample_id", "n_tokens", *columns]
    unknown = [c for c in wanted if c not in PER_SAMPLE + PER_TOKEN]
    if unknown:
        raise ValueError(f"unknown logits columns {unknown}; known: {PER_SAMPLE + PER_TOKEN}")
    for name in list(wanted):
        wanted += NEEDS.get(name, ())
    return list(dict.fromkeys(wanted))


def _leaf(column: pa.ChunkedArray) -> pa.Array:
    """The innermost values of a list (of fixed-size lists) column, as one array."""
    arr = column.combine_chunks()
    while pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        arr = arr.flatten()
    return arr


def _numpy(column: pa.ChunkedArray, dtype: Any, width: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """(values with nulls as 0, null mask or None) of a list column, [N] or [N, width]."""
    arr = _leaf(column)
    null = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else None
    values = pc.fill_null(arr, 0) if arr.null_count else arr
    out = values.to_numpy(zero_copy_only=False).astype(dtype, copy=null is not None)  # filled later: writable
    if width:
        out = out.reshape(-1, width)
        null = None if null is None else null.reshape(-1, width)
    return out, null


def _decode(table: pa.Table, scale: int) -> dict[str, Any]:
    """Flat decoded arrays of one row group (see `decoded_row_groups`)."""
    names = set(table.column_names)
    out: dict[str, Any] = {name: table.column(name).to_pylist() for name in PER_SAMPLE if name in names}
    out["ptr"] = np.concatenate([[0], np.cumsum(np.asarray(out["n_tokens"], np.int64))])
    k = table.schema.field("topk_ids").type.value_type.list_size if "topk_ids" in names else 0
    plain = {"token_ids": (np.int32, 0), "offsets": (np.int32, 2), "message_index": (np.int32, 0),
             "turn_end": (np.bool_, 0)}  # fmt: skip
    for name, (dtype, width) in plain.items():
        if name in names:
            out[name] = _numpy(table.column(name), dtype, width)[0]
    derived = None
    if "entropy" in names:
        codes, derived = _numpy(table.column("entropy"), np.uint16)
        out["entropy"] = decode_entropy(codes, scale)
    if "topk_ids" in names:
        ids, target = _numpy(table.column("topk_ids"), np.int32, k)
        rank = np.full(len(ids), -1) if target is None else first_true(target)
        if target is not None:
            ids[target] = np.broadcast_to(out["token_ids"][:, None], ids.shape)[target]
        out["topk_ids"] = ids
    if "topk_logprobs" in names:
        width = table.schema.field("topk_logprobs").type.value_type.list_size
        topk_codes = from_gaps(_numpy(table.column("topk_logprobs"), np.uint16, width)[0])
        out["topk_logprobs"] = decode_logprobs(topk_codes, scale)
    if derived is not None:  # topk_tail samples: recomputed from the stored top-k
        out["entropy"][derived] = topk_tail_entropy(out["topk_logprobs"][derived])
    if "token_logprob" in names:
        codes, same = _numpy(table.column("token_logprob"), np.int32)
        if same is not None:
            codes[same] = topk_codes[same, rank[same]]
        out["token_logprob"] = decode_logprobs(codes, scale)
    return out


def _samples(flat: dict[str, Any]) -> Iterator[SampleLogits]:
    ptr = flat["ptr"]
    for row in range(len(ptr) - 1):
        lo, hi = ptr[row], ptr[row + 1]
        fields = {name: flat[name][row] if name in flat else None for name in PER_SAMPLE}
        fields |= {name: flat[name][lo:hi] if name in flat else None for name in PER_TOKEN}
        yield SampleLogits(**fields)


def _decoded_table(flat: dict[str, Any]) -> pa.Table:
    offsets = pa.array(flat["ptr"].astype(np.int32))
    types = {"sample_id": pa.string(), "model": pa.string(), "mode": pa.string(), "entropy_kind": pa.string(),
             "nll_sum": pa.float32(), "n_tokens": pa.int32(), "n_bytes": pa.int32()}  # fmt: skip
    columns = {name: pa.array(flat[name], types[name]) for name in PER_SAMPLE if name in flat}
    for name in PER_TOKEN:
        if name in flat:
            values = flat[name]
            width = values.shape[1] if values.ndim == 2 else 0
            columns[name] = list_array(values, offsets, pa.from_numpy_dtype(values.dtype), width)
    return pa.table(columns)
