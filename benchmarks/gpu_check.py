"""GPU check: the fusion-loss training step against plain SFT at ~1B parameters, and one DeepSpeed ZeRO-2 step of
fusepipe's real training loop. Run through benchmarks/gpu_check.sh (it installs the carried wheels first).

    python benchmarks/gpu_check.py [--smoke] [--json PATH] [--batch 4] [--steps 10] [--warmup 3] [--rounds 1]

1. Fusion loss vs SFT (benchmarks/bench_loss.py's variants, each in a fresh process): a random-weight Llama built
   from a config (no download), hidden 2048, 16 layers, 32/8 heads, MLP 8192, vocabulary 32000 (1.10B parameters),
   batch × seq 2048, bf16 weights and AdamW. `sft`: HF's `model(input_ids, labels).loss` (full logits, then CE);
   `fusion`: the trainer's `fusepipe.train.loop.micro_batch_loss` (the head at target positions in chunks,
   SFT + the top-10 fusion CE, λ = 0.9). Printed: median step time (forward, backward, AdamW), peak
   `torch.cuda.max_memory_allocated`, their ratios to SFT, achieved TFLOP/s and MFU of both. Model FLOPs per
   step = tokens × (6·N + 12·L·d·T) (PaLM, appendix B; N = parameters without the input embedding, L layers,
   d hidden, T sequence length; attention counted over the full T×T as that convention does); the peak is the
   card's dense bf16 figure (H100/H200 SXM 989 TFLOP/s, H100 PCIe 756, A100 312) or `--peak-tflops`.
2. `fusepipe.train.loop.train` itself on a tiny Llama (hidden 64, 2 layers) with synthetic fusion targets: one
   optimizer step of two micro-batches under DeepSpeed ZeRO-2 (bf16 on a GPU, fp32 on CPU), a checkpoint and the
   consolidated Hugging Face folder. Printed: loss, step time, whether the model folder was written.

`--smoke`: the same code paths on CPU at toy size (hidden 128, 2 layers, vocabulary 8000, seq 128, fp32) in
seconds; tests/test_gpu_check.py runs it with the modules the device image lacks blocked (polars, vllm, datasets,
snakemake), so the GPU run cannot fail on an import. `FUSEPIPE_BLOCK_IMPORTS=a,b` blocks modules in every process.
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

PEAK_BF16 = {"H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4, "H800": 989.4, "A100": 312.0, "A800": 312.0}
"""Dense bf16 TFLOP/s by device name (the first key contained in torch.cuda.get_device_name())."""
VARIANTS = {"sft": "sft", "fusion": "sparse"}  # printed name -> bench_loss variant


class _Blocker(importlib.abc.MetaPathFinder):
    """Makes `import NAME` fail for the listed top-level modules, as on a machine that lacks them."""

    def __init__(self, names: set[str]):
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked: the device image lacks it)")


def block_imports() -> None:
    names = {n for n in os.environ.get("FUSEPIPE_BLOCK_IMPORTS", "").split(",") if n}
    if names:
        sys.meta_path.insert(0, _Blocker(names))


def sizes(smoke: bool, batch: int):
    from bench_loss import GPU_1B, QUICK

    return replace(QUICK, batch=2) if smoke else replace(GPU_1B, batch=batch)


def n_params(size) -> tuple[int, int]:
    """(all parameters, parameters without the input embedding) of the bench's Llama (untied head)."""
    h, hd = size.hidden, size.hidden // size.heads
    attn = h * size.heads * hd * 2 + 2 * h * size.kv_heads * hd
    layer = attn + 3 * h * size.intermediate + 2 * h
    embed = size.vocab * h
    total = embed + size.layers * layer + h + size.vocab * h
    return total, total - embed


def flops_per_step(size) -> float:
    _, n = n_params(size)
    tokens = size.batch * size.seq
    return tokens * (6 * n + 12 * size.layers * size.hidden * size.seq)


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def child(argv: list[str], timeout: int) -> dict:
    """Run this script in a fresh process (same blocked imports); its last stdout line is JSON."""
    proc = subprocess.run([sys.executable, __file__, *argv], check=False, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"gpu_check: `{' '.join(argv[:2])}` failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------- 1. loss step vs SFT


def loss_step(variant: str, size_json: str, device: str, steps: int, warmup: int) -> dict:
    """One bench_loss variant in this process: median-able step times and peak memory."""
    import bench_loss

    args = argparse.Namespace(threads=1, device=device,
                              prompt_frac=0.0, warmup=warmup, steps=steps)  # fmt: skip
    return bench_loss.run_one(variant, bench_loss.Size(**json.loads(size_json)), args)


def compare_losses(size, device: str, args) -> dict:
    import statistics

    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for name, variant in VARIANTS.items():
            runs[name].append(child(["--child-loss", variant, "--size", json.dumps(asdict(size)), "--device", device,
                                     "--steps", str(args.steps), "--warmup", str(args.warmup)], timeout=300))
    flops = flops_per_step(size)
    out = {}
    for name, rs in runs.items():
        seconds = statistics.median(t for r in rs for t in r["times"])
        out[name] = {"step_s": seconds, "peak_mib": max(r["peak_mib"] for r in rs),
                     "tflops": flops / seconds / 1e12}  # fmt: skip
    for r in out.values():
        r["time_vs_sft"] = r["step_s"] / out["sft"]["step_s"]
        r["memory_vs_sft"] = r["peak_mib"] / out["sft"]["peak_mib"]
    return out


# ------------------------------------------------------------------------------------- 2. DeepSpeed ZeRO-2 step


def deepspeed_step(folder: Path) -> dict:
    """One ZeRO-2 optimizer step of `fusepipe.train.loop.train` on a tiny Llama with synthetic fusion targets."""
    import numpy as np
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from fusepipe import pipeline as fppipeline
    from fusepipe.train import loop
    from fusepipe.train.data import Example, Teacher, plan

    vocab, k = 256, 10
    pivot = folder / "pivot"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=vocab)).save_pretrained(pivot)  # fmt: skip
    words = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3} | {f"w{i}": i for i in range(4, vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                        pad_token="<pad>")  # fmt: skip
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    tokenizer.save_pretrained(pivot)
    raw = {"models": [{"name": "pivot", "path": str(pivot), "role": "pivot"},
                      {"name": "src", "path": str(pivot), "role": "source"}],
           "data": {"sources": [{"name": "d", "path": "unused.jsonl"}]}, "logits": {"modes": ["gt"]},
           "recipes": [{"name": "fusechat", "kind": "fusechat"}]}  # fmt: skip
    params = fppipeline.stage_slice(fppipeline.load_dict(raw), "train", "fusechat/src")
    params["recipe"]["train"].update(micro_batch=2, global_batch=4, max_steps=1, save_every=1, zero_stage=2,
                                     gradient_checkpointing=True, lr=1e-4)  # fmt: skip
    rng = np.random.default_rng(0)
    examples = []
    for i in range(4):
        length = 48 + 8 * i
        ids = rng.integers(4, vocab, length).astype(np.int64)
        positions = np.arange(length // 2, length, dtype=np.int64)
        top = np.stack([(ids[positions] + j) % vocab for j in range(k)], 1).astype(np.int32)
        lp = np.log(np.full((len(positions), k), 0.9 / k, np.float32))
        examples.append(Example(f"s{i}", "gt", ids, positions,
                                [Teacher("src", 1.0, top, lp, np.ones(len(positions), bool))]))  # fmt: skip
    steps = plan(examples, params["recipe"]["schedule"], params["recipe"]["train"], 1)
    t0 = time.perf_counter()
    result = loop.train(params, examples, steps, tokenizer, str(pivot), folder / "out", "gpu-check")
    row = result["log"][0]
    import deepspeed

    return {"loss": row["loss"], "step_s": row["seconds"], "total_s": time.perf_counter() - t0,
            "grad_norm": row["grad_norm"], "steps": result["steps"], "deepspeed": deepspeed.__version__,
            "zero_stage": 2, "bf16": torch.cuda.is_available(),
            "model_written": (folder / "out" / "model" / "config.json").is_file()}  # fmt: skip


# --------------------------------------------------------------------------------------------------- driver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, toy size, seconds (what CI runs)")
    ap.add_argument("--batch", type=int, default=4, help="sequences of 2048 tokens per step (GPU)")
    ap.add_argument("--steps", type=int, help="timed steps per process (default 10; smoke 2)")
    ap.add_argument("--warmup", type=int, help="untimed steps per process (default 3; smoke 1)")
    ap.add_argument("--rounds", type=int, default=1, help="fresh processes per variant, interleaved")
    ap.add_argument("--peak-tflops", type=float, help="the device's dense bf16 TFLOP/s (default: by device name)")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    ap.add_argument("--child-loss", help=argparse.SUPPRESS)
    ap.add_argument("--child-deepspeed", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    ap.add_argument("--device", help=argparse.SUPPRESS)
    args = ap.parse_args()
    block_imports()
    os.environ.setdefault("FUSEPIPE_NO_PROGRESS", "1")
    if args.child_loss:
        print(json.dumps(loss_step(args.child_loss, args.size, args.device, args.steps, args.warmup)))
        return
    if args.child_deepspeed:
        print(json.dumps(deepspeed_step(args.child_deepspeed)))
        return

    import torch

    t_start = time.perf_counter()
    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not args.smoke:
        raise SystemExit("gpu_check: no CUDA device; run with --smoke for the CPU form")
    args.steps = args.steps or (2 if args.smoke else 10)
    args.warmup = args.warmup or (1 if args.smoke else 3)
    size = sizes(args.smoke, args.batch)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = peak_tflops(name, args.peak_tflops) if device == "cuda" else None
    import transformers

    print(f"GPU check: {name}, torch {torch.__version__}, transformers {transformers.__version__}"
          + (" (--smoke: CPU, toy size)" if args.smoke else ""), flush=True)  # fmt: skip
    total, _ = n_params(size)
    count = f"{total / 1e9:.2f}B" if total >= 1e9 else f"{total / 1e6:.1f}M"
    print(f"[1] fusion loss step vs plain SFT: Llama {count} parameters (hidden {size.hidden}, "
          f"{size.layers} layers, vocab {size.vocab}), batch {size.batch} x seq {size.seq}, {size.dtype}, "
          f"median of {args.steps} steps x {args.rounds} round(s), each variant in a fresh process", flush=True)
    losses = compare_losses(size, device, args)
    mem = "max_memory_allocated" if device == "cuda" else "ru_maxrss"
    print(f"| variant | step s | step / sft | peak {mem} MiB | peak / sft | TFLOP/s | MFU |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for variant, r in losses.items():
        r["mfu"] = r["tflops"] / peak if peak else None
        mfu = f"{r['mfu']:.3f}" if r["mfu"] is not None else "n/a"
        print(f"| {variant} | {r['step_s']:.4f} | {r['time_vs_sft']:.3f} | {r['peak_mib']:.0f} | "
              f"{r['memory_vs_sft']:.3f} | {r['tflops']:.3g} | {mfu} |", flush=True)  # fmt: skip
    print(f"    model FLOPs per step {flops_per_step(size) / 1e12:.2f} TFLOP (6N + 12·L·d·T per token); peak "
          + (f"{peak:.0f} TFLOP/s bf16" if peak else "unknown (--peak-tflops)"), flush=True)
    print("[2] DeepSpeed ZeRO-2: one step of fusepipe.train.loop.train (tiny Llama, synthetic fusion targets)",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        ds = child(["--child-deepspeed", tmp], timeout=300)
    ok = ds["model_written"] and ds["steps"] == 1 and ds["loss"] == ds["loss"]  # not NaN
    print(f"    deepspeed {ds['deepspeed']}, zero {ds['zero_stage']}, {'bf16' if ds['bf16'] else 'fp32'}: loss "
          f"{ds['loss']:.4f}, grad norm {ds['grad_norm']:.3f}, step {ds['step_s']:.2f} s, train() {ds['total_s']:.1f} s"
          f" (init, step, checkpoint, consolidation), model folder written: {ds['model_written']}", flush=True)
    elapsed = time.perf_counter() - t_start
    print(f"gpu_check: {'ok' if ok else 'FAILED'} in {elapsed:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "size": asdict(size),
                                         "params": total, "flops_per_step": flops_per_step(size), "peak_tflops": peak,
                                         "loss_step": losses, "deepspeed_step": ds, "seconds": elapsed,
                                         "ok": ok}, indent=1))  # fmt: skip
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
