"""Logits shards: the storage format against a naive Parquet layout, and the log-prob code against float16.

    PYTHONPATH=src python benchmarks/bench_logits.py [--samples 2000] [--k 10 50] [--repeats 5] [--seed 0]
                                                     [--sections storage columns options errors]

Data: the synthetic stand-in of `fusepipe.logits.synthetic` (32k-vocabulary ids drawn Zipf-like, peaked
distributions, samples of 100–500 target tokens, the target the top-1 65 % of the time), drawn once per k.
Sections, each a function of SECTIONS:
- storage: bytes per target token, write and read throughput (tokens/s, median of --repeats) of
  `fusepipe.logits.store` against a naive layout (float32 log-probs, int32 ids as plain nested lists,
  pyarrow's default settings: snappy, dictionaries), both streamed one row group per 512 samples from the
  same `SampleLogits` records; their ratios. Write time includes encoding, read time decoding to NumPy.
- columns: bytes per token of each stored column, and of the top-k log-probs and ids alone under other
  representations (float32, float16, absolute codes, gap codes; ids plain, split, with target nulls).
- options: bytes per token and write throughput for the alternatives of each Parquet setting.
- errors: max |stored - fp32| log-prob by range, float16 against the code (requirement: ≤ 1e-3).
- stage: the `logits` stage (gt mode, one shard) against bare vLLM `prompt_logprobs=10` on the same rendered
  conversations of a built toy world (`--toy results/toy --data results/data/train.parquet`, repeated to
  `--conversations`), each run a fresh process; goal stage / bare <= 1.10.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fusepipe.logits.store import (
    MAX_ABS_ERROR,
    SampleLogits,
    WriteOptions,
    bytes_per_token,
    concat,
    decode_logprobs,
    decoded_row_groups,
    encode_columns,
    encode_logprobs,
    read_shard,
    write_shard,
)
from fusepipe.logits.synthetic import SyntheticCaptures

GOAL_BYTES_PER_TOKEN = 30.0  # at k=10 (issue 4)
NAIVE_ROWS_PER_GROUP = 512


def draw(n: int, k: int, seed: int) -> tuple[list[SampleLogits], int]:
    samples = list(SyntheticCaptures(k=k, seed=seed).samples(n))
    return samples, sum(s.n_tokens for s in samples)


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall seconds of each function over `repeats` rounds after one untimed round, the functions
    interleaved in each round (so a change of load on the machine hits all of them alike)."""
    for fn in fns.values():  # warm-up: first use of the codecs, page cache
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


# --- the naive layout ---------------------------------------------------------------------------------------


def naive_table(samples: list[SampleLogits]) -> pa.Table:
    """float32 log-probs, int32 ids, every per-token field a plain (nested) list."""
    offsets = pa.array(np.concatenate([[0], np.cumsum([s.n_tokens for s in samples])]).astype(np.int32))
    cols = concat(samples)

    def ragged(values: np.ndarray, dtype: pa.DataType) -> pa.Array:
        inner = pa.array(values.reshape(-1), dtype)
        if values.ndim == 2:
            inner_offsets = pa.array(np.arange(0, values.size + 1, values.shape[1], dtype=np.int32))
            inner = pa.ListArray.from_arrays(inner_offsets, inner)
        return pa.ListArray.from_arrays(offsets, inner)

    table = {name: pa.array([getattr(s, name) for s in samples]) for name in ("sample_id", "model", "mode")}
    table |= {
        "entropy_kind": pa.array([s.entropy_kind for s in samples]),
        "n_tokens": pa.array([s.n_tokens for s in samples], pa.int32()),
        "n_bytes": pa.array([s.n_bytes for s in samples], pa.int32()),
        "nll_sum": pa.array([s.nll_sum for s in samples], pa.float32()),
        "token_ids": ragged(cols["token_ids"], pa.int32()),
        "offsets": ragged(cols["offsets"], pa.int32()),
        "message_index": ragged(cols["message_index"].astype(np.int32), pa.int32()),
        "turn_end": ragged(cols["turn_end"], pa.bool_()),
        "topk_ids": ragged(cols["topk_ids"], pa.int32()),
        "topk_logprobs": ragged(cols["topk_logprobs"].astype(np.float32), pa.float32()),
        "token_logprob": ragged(cols["token_logprob"].astype(np.float32), pa.float32()),
        "entropy": ragged(cols["entropy"].astype(np.float32), pa.float32()),
    }
    return pa.table(table)


def naive_write(path: Path, samples: list[SampleLogits]) -> None:
    writer = None
    for start in range(0, len(samples), NAIVE_ROWS_PER_GROUP):
        table = naive_table(samples[start : start + NAIVE_ROWS_PER_GROUP])
        writer = writer or pq.ParquetWriter(path, table.schema)  # pyarrow's defaults
        writer.write_table(table)
    if writer is not None:
        writer.close()


def naive_read(path: Path) -> int:
    """Row group by row group, every per-token column to flat NumPy arrays; returns the token count."""
    n = 0
    pf = pq.ParquetFile(path)
    for i in range(pf.num_row_groups):
        table = pf.read_row_group(i)
        for name in (
            "token_ids",
            "offsets",
            "turn_end",
            "topk_ids",
            "topk_logprobs",
            "token_logprob",
            "entropy",
        ):
            arr = table.column(name).combine_chunks().flatten()
            while pa.types.is_list(arr.type):
                arr = arr.flatten()
            arr.to_numpy(zero_copy_only=False)
        n += len(table.column("token_ids").combine_chunks().flatten())
    return n


# --- sections ---------------------------------------------------------------------------------------------


def storage(args: argparse.Namespace, tmp: Path) -> None:
    print(f"\n## storage: {args.samples} samples, median of {args.repeats} interleaved rounds\n")
    print("write: SampleLogits records -> file (encoding included); read: file -> flat NumPy arrays per row")
    print("group (fusepipe: decoded_row_groups, log-probs decoded to fp32) or -> SampleLogits (read_shard)\n")
    print(
        f"{'k':>3} {'layout':<9} {'B/token':>8} {'write Mtok/s':>13} {'read Mtok/s':>12} {'records Mtok/s':>15}"
    )
    for k in args.k:
        samples, n_tokens = draw(args.samples, k, args.seed)
        ours, naive = tmp / f"ours-{k}.parquet", tmp / f"naive-{k}.parquet"
        t = timed(
            {
                "ours_write": lambda: write_shard(ours, samples, k=k),  # noqa: B023
                "naive_write": lambda: naive_write(naive, samples),  # noqa: B023
                "ours_read": lambda: sum(len(g["token_ids"]) for g in decoded_row_groups(ours)),  # noqa: B023
                "naive_read": lambda: naive_read(naive),  # noqa: B023
                "ours_records": lambda: sum(s.n_tokens for s in read_shard(ours)),  # noqa: B023
            },
            args.repeats,
        )
        ours_bpt, naive_bpt = bytes_per_token(ours), naive.stat().st_size / n_tokens
        rate = {name: n_tokens / seconds / 1e6 for name, seconds in t.items()}
        print(
            f"{k:>3} {'fusepipe':<9} {ours_bpt:>8.2f} {rate['ours_write']:>13.3f} {rate['ours_read']:>12.3f}"
            f" {rate['ours_records']:>15.3f}"
        )
        print(
            f"{k:>3} {'naive':<9} {naive_bpt:>8.2f} {rate['naive_write']:>13.3f} {rate['naive_read']:>12.3f}"
        )
        goal = f", goal ≤ {GOAL_BYTES_PER_TOKEN:g} B/token" if k == 10 else ""
        print(
            f"    {n_tokens} tokens{goal}; naive / fusepipe: size {naive_bpt / ours_bpt:.2f}×, write time "
            f"{t['naive_write'] / t['ours_write']:.2f}×, read time "
            f"{t['naive_read'] / t['ours_read']:.2f}×"
        )


def column_sizes(path: Path, n_tokens: int) -> dict[str, float]:
    md, out = pq.ParquetFile(path).metadata, {}
    for i in range(md.num_row_groups):
        for j in range(md.num_columns):
            col = md.row_group(i).column(j)
            name = col.path_in_schema.split(".")[0]
            out[name] = out.get(name, 0.0) + col.total_compressed_size / n_tokens
    return out


def single_column(
    tmp: Path, values: np.ndarray, n_tokens: int, null: np.ndarray | None = None, **kw
) -> float:
    """Bytes per token of one fixed-size-list column [N, k] written alone with `kw` (zstd, no dictionary)."""
    inner = pa.array(values.reshape(-1), mask=None if null is None else null.reshape(-1))
    table = pa.table({"x": pa.FixedSizeListArray.from_arrays(inner, values.shape[1])})
    path = tmp / "column.parquet"
    pq.write_table(table, path, use_dictionary=False, **kw)
    return pq.ParquetFile(path).metadata.row_group(0).column(0).total_compressed_size / n_tokens


def columns(args: argparse.Namespace, tmp: Path) -> None:
    samples, n_tokens = draw(args.samples, 10, args.seed)
    path = tmp / "ours.parquet"
    write_shard(path, samples)
    sizes = column_sizes(path, n_tokens)
    print(f"\n## columns at k=10 ({n_tokens} tokens): B/token of each stored column\n")
    for name, size in sizes.items():
        print(f"{name:<14} {size:6.2f}")
    print(f"{'file':<14} {bytes_per_token(path):6.2f}")
    cols = concat(samples)
    stored = encode_columns(cols)
    lp = cols["topk_logprobs"].astype(np.float32)
    absolute = encode_logprobs(lp)[0]
    zstd = {"compression": "zstd", "compression_level": 3}
    split = {**zstd, "use_byte_stream_split": True}
    print("\ntop-k log-probs alone (k=10 per token):")
    for label, values, kw in (
        ("float32, snappy (naive)", lp, {"compression": "snappy"}),
        ("float32, split + zstd", lp, split),
        ("float16, split + zstd (misses 1e-3)", lp.astype(np.float16), split),
        ("uint16 absolute code, split + zstd", absolute, split),
        ("uint16 absolute code, zstd", absolute, zstd),
        ("uint16 gap code, zstd", stored.topk_gaps, zstd),
        ("uint16 gap code, split + zstd (chosen)", stored.topk_gaps, split),
    ):
        print(f"  {label:<40} {single_column(tmp, values, n_tokens, **kw):6.2f}")
    ids = cols["topk_ids"]
    print("top-k ids alone:")
    for label, null, kw in (
        ("int32, snappy + dictionary (naive)", None, {"compression": "snappy"}),
        ("int32, zstd 3", None, zstd),
        ("int32, split + zstd 3", None, split),
        ("int32, split + zstd 1", None, {**split, "compression_level": 1}),
        ("int32, split + zstd 1, target nulls (chosen)", stored.topk_null, {**split, "compression_level": 1}),
    ):
        print(f"  {label:<47} {single_column(tmp, ids, n_tokens, null, **kw):6.2f}")


def options(args: argparse.Namespace, tmp: Path) -> None:
    samples, n_tokens = draw(min(args.samples, 600), 10, args.seed)
    print(f"\n## options at k=10 ({n_tokens} tokens): one setting changed from the chosen defaults\n")
    variants = {
        "chosen": WriteOptions(),
        "no byte-stream split": WriteOptions(byte_stream_split=False),
        "no target nulls": WriteOptions(target_nulls=False),
        "zstd 1 everywhere": WriteOptions(compression_level=1),
        "zstd 3 everywhere": WriteOptions(id_compression_level=3),
        "zstd 9 everywhere": WriteOptions(compression_level=9, id_compression_level=9),
        "64 samples per row group": WriteOptions(samples_per_row_group=64),
        "2048 samples per row group": WriteOptions(samples_per_row_group=2048),
    }
    path = tmp / "variant.parquet"
    for label, opts in variants.items():
        seconds = timed({"write": lambda: write_shard(path, samples, options=opts)}, args.repeats)["write"]  # noqa: B023
        print(f"{label:<28} {bytes_per_token(path):6.2f} B/token {n_tokens / seconds / 1e6:6.3f} Mtok/s")


def errors(args: argparse.Namespace, tmp: Path) -> None:
    print("\n## max |stored - fp32| log-prob by range (requirement ≤ 1e-3; code bound 2^-10 = 9.77e-4)\n")
    print(f"{'range':<16} {'float16':>10} {'code':>10}  float16 ok?")
    edges = [0, -0.5, -1, -2, -4, -8, -16, -32, -64, -127.99]
    for hi, lo in itertools.pairwise(edges):
        lp = np.linspace(lo, hi, 2_000_001, dtype=np.float32)
        half = np.abs(lp.astype(np.float16).astype(np.float32) - lp).max()
        code = np.abs(decode_logprobs(encode_logprobs(lp)[0]) - lp).max()
        assert code <= MAX_ABS_ERROR
        print(f"[{lo:>6}, {hi:>5})  {half:>10.3g} {code:>10.3g}  {'yes' if half <= 1e-3 else 'NO'}")


def _stage_run(kind: str, args: argparse.Namespace, tmp: Path) -> float:
    """One timed run in this fresh process: the `logits` stage (gt mode, one shard, writing its shard) or bare
    vLLM prompt_logprobs on the same conversations rendered the same way (no writing). Imports before the clock."""
    import torch
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from fusepipe.engines.vllm import engine_args, prepare_env
    from fusepipe.logits import stage as logits_stage
    from fusepipe.logits.capture import prepare

    prepare_env()
    spec = {"name": args.model, "path": str(args.toy / "models" / args.model), "chat_template": None,
            "dtype": "float32", "max_model_len": 512, "engine": "vllm", "kv_cache_memory_bytes": None,
            "tensor_parallel_size": 1, "gpu_memory_utilization": 0.9, "max_num_seqs": 256,
            "trust_remote_code": False}
    data = tmp / "train.parquet"
    start = time.perf_counter()
    if kind == "stage":
        cfg = {"k": 10, "modes": ["gt"], "shards": 1, "overlong": "truncate", "batch_size": 256}
        logits_stage.run({"logits": cfg, "model": spec}, "gt", 0, data, tmp / "logits" / "shard-00000.parquet")
        return time.perf_counter() - start
    rows = pq.ParquetFile(data).read(columns=["sample_id", "messages"]).to_pylist()
    tok = AutoTokenizer.from_pretrained(spec["path"])
    llm = LLM(**engine_args({**spec, "max_logprobs": 10}, "topk", torch.cuda.is_available()))
    preps = [prepare(tok, r["messages"], last_only=False, max_len=512, overlong="truncate", name=args.model,
                     key=r["sample_id"]) for r in rows]
    outs = llm.generate([TokensPrompt(prompt_token_ids=p.ids) for p in preps],
                        SamplingParams(max_tokens=1, prompt_logprobs=10, detokenize=False), use_tqdm=False)
    assert len(outs) == len(rows)
    return time.perf_counter() - start


def stage(args: argparse.Namespace, tmp: Path) -> None:
    """The `logits` stage against bare vLLM prompt_logprobs, each run a fresh process (as a Snakemake job)."""
    import subprocess
    import sys

    if not (args.toy / "models" / args.model).is_dir():
        print(f"stage: skipped (no toy model at {args.toy / 'models' / args.model}; pass --toy results/toy)")
        return
    rows = pq.ParquetFile(args.data).read().to_pylist()
    copies = [{**rows[i % len(rows)], "sample_id": f"{i // len(rows):04x}{rows[i % len(rows)]['sample_id'][4:]}"}
              for i in range(args.conversations)]
    pq.write_table(pa.Table.from_pylist(copies, schema=pq.read_schema(args.data)), tmp / "train.parquet")
    times: dict[str, list[float]] = {"bare": [], "stage": []}
    for _ in range(args.repeats):
        for kind, seconds in times.items():
            cmd = [sys.executable, __file__, "--one", kind, "--tmp", str(tmp), "--toy", str(args.toy),
                   "--model", args.model]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            seconds.append(float(out.split("SECONDS")[-1]))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"stage vs bare vLLM prompt_logprobs=10: {args.conversations} conversations, {args.model}, "
          f"{args.repeats} repeats (fresh process each; engine start included, imports excluded)")
    for k, v in times.items():
        print(f"  {k:6s} {med[k]:7.2f} s   runs: {', '.join(f'{x:.2f}' for x in v)}")
    print(f"  stage / bare = {med['stage'] / med['bare']:.3f} (goal <= 1.10; the stage also encodes and writes)")


SECTIONS = {"storage": storage, "columns": columns, "options": options, "errors": errors, "stage": stage}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--k", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--toy", type=Path, default=Path("results/toy"), help="stage: a built toy world")
    parser.add_argument("--data", type=Path, default=Path("results/data/train.parquet"), help="stage: its data")
    parser.add_argument("--model", default="mistral-facts", help="stage: the model")
    parser.add_argument("--conversations", type=int, default=800, help="stage: conversations (data repeated)")
    parser.add_argument("--one", choices=["bare", "stage"], help=argparse.SUPPRESS)
    parser.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(f"SECONDS {_stage_run(args.one, args, args.tmp):.4f}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sections:
            SECTIONS[name](args, Path(tmp))


if __name__ == "__main__":
    main()
