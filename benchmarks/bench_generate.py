"""The `generate` and `reward` stages against bare vLLM calls on the same prompts and settings, in one run.

    python benchmarks/bench_generate.py --toy results/toy --data results/data/train.parquet [--prompts 600]

Stage = `fusepipe.generate.stage.run` / `fusepipe.reward.stage.run` end to end for one model and one shard: read
the Parquet data, render with the model's template, start the engine, generate/score, decode, write the Parquet
shard and manifest. Bare = what a user would write with vLLM alone: `LLM(**same engine args)` then `llm.chat(...)`
with the same per-request seeds (generation), or `classify(...)` on the same rendered conversations (reward).
Both include the engine start. Runs alternate (bare, stage, bare, ...) `--repeats` times; the script prints the
median wall time of each and the overhead ratio (goal: stage / bare <= 1.10).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fusepipe.engines import derive_seed
from fusepipe.engines.vllm import engine_args, prepare_env
from fusepipe.generate import stage as generate_stage
from fusepipe.generate.stage import prompt_of
from fusepipe.reward import stage as reward_stage
from fusepipe.schemas import CONVERSATION


def replicate(data: Path, n: int, out: Path) -> Path:
    """`n` prompts: the training conversations repeated, each copy with its own sample_id (distinct seeds)."""
    rows = pq.read_table(data).to_pylist()
    copies = [{**r, "sample_id": f"{i // len(rows):04x}{r['sample_id'][4:]}"} for i, r in
              zip(range(n), (rows[j % len(rows)] for j in range(n)))]
    pq.write_table(pa.Table.from_pylist(copies, schema=CONVERSATION), out)
    return out


def spec_of(toy: Path, name: str, kind: str) -> dict:
    folder = "models" if kind == "generate" else "reward_models"
    return {"name": name, "path": str(toy / folder / name), "chat_template": None, "dtype": "float32",
            "max_model_len": 512, "tensor_parallel_size": 1, "gpu_memory_utilization": 0.9, "max_num_seqs": 256,
            "trust_remote_code": False, "engine": "vllm", "kv_cache_memory_bytes": None}


def bare_generate(spec: dict, gen_cfg: dict, data: Path) -> float:
    import torch
    from vllm import LLM, SamplingParams

    start = time.perf_counter()
    rows = pq.read_table(data, columns=["sample_id", "messages"]).to_pylist()
    llm = LLM(**engine_args(spec, "generate", torch.cuda.is_available()))
    convs = [prompt_of(r["messages"], r["sample_id"]) for r in rows]
    params = [SamplingParams(n=1, seed=derive_seed(gen_cfg["seed"], r["sample_id"], spec["name"], 0),
                             temperature=gen_cfg["temperature"], top_p=gen_cfg["top_p"], max_tokens=gen_cfg["max_tokens"])
              for r in rows]
    outs = llm.chat(convs, params, use_tqdm=False)
    assert len(outs) == len(rows)
    elapsed = time.perf_counter() - start
    _release(llm)
    return elapsed


def bare_reward(spec: dict, data: Path, gen_path: Path) -> float:
    import torch
    from transformers import AutoTokenizer
    from vllm import LLM, PoolingParams
    from vllm.inputs import TokensPrompt

    start = time.perf_counter()
    prompts = {r["sample_id"]: prompt_of(r["messages"], r["sample_id"])
               for r in pq.read_table(data, columns=["sample_id", "messages"]).to_pylist()}
    gens = pq.read_table(gen_path, columns=["sample_id", "response"]).to_pylist()
    tok = AutoTokenizer.from_pretrained(spec["path"])
    llm = LLM(**engine_args(spec, "score", torch.cuda.is_available()))
    ids = [tok.apply_chat_template([*prompts[g["sample_id"]], {"role": "assistant", "content": g["response"]}],
                                   tokenize=True, return_dict=True)["input_ids"] for g in gens]
    outs = llm.classify([TokensPrompt(prompt_token_ids=i) for i in ids],
                        pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
    assert len(outs) == len(gens)
    elapsed = time.perf_counter() - start
    _release(llm)
    return elapsed


def _release(llm) -> None:
    import gc

    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm, core
    gc.collect()


def measure(kind: str, args: argparse.Namespace, tmp: Path) -> float:
    """One timed run of `kind` in this (fresh) process; vLLM, transformers and the package are imported before the
    clock (a job pays the imports once, whoever calls vLLM)."""
    from transformers import AutoTokenizer  # noqa: F401
    from vllm import LLM, PoolingParams, SamplingParams  # noqa: F401

    data = tmp / "train.parquet"
    model, rm = spec_of(args.toy, args.model, "generate"), spec_of(args.toy, args.rm, "score")
    gen_out = tmp / "gen" / args.model / "shard-00000.parquet"
    if kind == "bare-generate":
        return bare_generate(model, GEN_CFG, data)
    if kind == "bare-reward":
        return bare_reward(rm, data, gen_out)
    start = time.perf_counter()
    if kind == "stage-generate":
        generate_stage.run({"generate": GEN_CFG, "model": model}, data, gen_out, 0)
    else:
        reward_stage.run({"reward": {"batch_size": 1024}, "reward_model": rm, "generators": [args.model], "shards": 1},
                         data, [gen_out], tmp / "reward" / args.rm / "shard-00000.parquet", 0)
    return time.perf_counter() - start


GEN_CFG = {"n": 1, "seed": 0, "temperature": 0.7, "top_p": 0.95, "top_k": 0, "max_tokens": 48, "shards": 1,
           "batch_size": 1024, "models": None}
KINDS = ("bare-generate", "stage-generate", "bare-reward", "stage-reward")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--toy", type=Path, default=Path("results/toy"))
    ap.add_argument("--data", type=Path, default=Path("results/data/train.parquet"))
    ap.add_argument("--model", default="llama-pivot")
    ap.add_argument("--rm", default="rm-large")
    ap.add_argument("--prompts", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    prepare_env()
    if args.one:
        print(f"SECONDS {measure(args.one, args, args.tmp):.4f}")
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    replicate(args.data, args.prompts, tmp / "train.parquet")
    # every run in a fresh process (as a Snakemake job is), alternating bare and stage
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    for _ in range(args.repeats):
        for kind in KINDS:
            cmd = [sys.executable, __file__, "--one", kind, "--tmp", str(tmp), "--toy", str(args.toy),
                   "--model", args.model, "--rm", args.rm]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            times[kind].append(float(out.split("SECONDS")[-1]))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.prompts} prompts, model {args.model}, reward model {args.rm}, {args.repeats} repeats, medians "
          "(each run a fresh process; engine start included, imports excluded)")
    for k, v in times.items():
        print(f"  {k:15s} {med[k]:7.2f} s   runs: {', '.join(f'{x:.2f}' for x in v)}")
    for what in ("generate", "reward"):
        ratio = med[f"stage-{what}"] / med[f"bare-{what}"]
        print(f"{what}: stage / bare = {ratio:.3f}  (overhead {100 * (ratio - 1):+.1f} %, goal <= +10 %)")


if __name__ == "__main__":
    main()
