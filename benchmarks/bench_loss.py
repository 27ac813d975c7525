"""Training step with the sparse fusion loss against plain SFT and against FuseChat's dense-target loss.

    PYTHONPATH=src python benchmarks/bench_loss.py [--quick] [--steps 6] [--warmup 2] [--rounds 2] [--chunk N]
                                                   [--threads 1] [--prompt-frac 0.0] [--device cpu|cuda]

One full training step = forward + backward + AdamW step of a random-weight Llama (`transformers.LlamaConfig`),
same batch and loss weights (FuseChat: λ = 0.9 on SFT, 0.1 on the fusion CE, teacher top-k = 10) in each variant:
- sft: plain SFT the HF way, `model(input_ids, labels=labels).loss` (full logits [B, T, V], then CE).
- sparse: what the trainer runs, `fusepipe.train.loop.micro_batch_loss`: backbone hidden states, then the LM head
  on chunks of `--chunk` target positions inside `ChunkedHeadLoss`, which takes each chunk's gradients at once
  (SFT + `fusepipe.losses.token_losses`, kind "ce"), so only one chunk's [chunk, V] logits is alive.
- sparse_1bw: the same chunks but ONE backward at the end: autograd keeps every chunk's logits (logsumexp saves
  its input), so memory is that of full logits. Shown to make the point that chunking alone does not save it.
- dense: FuseChat's way: the same forward as sft, plus a DENSE [B, T−1, V] target built in the step by scattering
  softmax(top-k log-probs / T) (FuseChat's collator does this per batch) and a soft-target CE over it.
All target positions have a label and a teacher row (10 % of teacher entries padded); `--prompt-frac` masks a
leading share of each sequence (the sparse variants then compute no logits there; HF-style ones still do).

Time: median wall seconds of `--steps` timed steps after `--warmup` untimed ones (the first allocates AdamW's
state), pooled over `--rounds`; every variant runs in a fresh process per round, the variants interleaved, so a
change of load hits all alike. Ratios are against sft in the same run. Machines are noisy: read the ratios.

Memory, CPU: each process reads its peak resident set size, `getrusage(RUSAGE_SELF).ru_maxrss` (the kernel's
high-water mark of resident pages: what the machine must hold, allocator caching and fragmentation included),
once after the imports and once at the end. "peak" = end − after imports: model, data, gradients, AdamW state and
the step's transient tensors, i.e. the same scope as `torch.cuda.max_memory_allocated` on a GPU; "over model" =
end − after building model, optimizer and data (gradients, AdamW state and transients). The mark cannot go down,
so every variant runs in its own process. GPU (`--device cuda`, or by default when CUDA is available): a 1B-scale
Llama in bf16 (hidden 2048, 16 layers, seq 2048), vocabularies 32k and 128k, `torch.cuda.max_memory_allocated`.

Goal (issue): sparse within 5 % of sft's step time and 3 % of its peak memory.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

VARIANTS = ("sft", "sparse", "sparse_1bw", "dense")
LAMBDA = 0.9  # FuseChat: L = λ·L_SFT + (1−λ)·L_fusion
TOPK = 10
PAD_RATE = 0.1
GOAL_TIME = 1.05
GOAL_MEMORY = 1.03


@dataclass(frozen=True)
class Size:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    seq: int
    batch: int
    chunk: int
    dtype: str = "float32"


CPU = Size(hidden=256, layers=4, heads=4, kv_heads=4, intermediate=704, vocab=32000, seq=256, batch=2, chunk=128)
QUICK = Size(hidden=128, layers=2, heads=4, kv_heads=4, intermediate=352, vocab=8000, seq=128, batch=2, chunk=64)
GPU_1B = Size(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, vocab=32000, seq=2048, batch=1,
              chunk=1024, dtype="bfloat16")
GPU = (GPU_1B, replace(GPU_1B, vocab=128256))


# --- one process: one variant ---------------------------------------------------------------------------------


def build(size: Size, device: str, prompt_frac: float, seed: int = 0):
    """Model, AdamW, and a batch: input_ids, HF labels (-100 on the prompt), and for the target positions
    (position t predicts token t+1) their labels and a sparse teacher (distinct ids, best first, 10 % pads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    dtype = getattr(torch, size.dtype)
    config = LlamaConfig(
        hidden_size=size.hidden, num_hidden_layers=size.layers, num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads, intermediate_size=size.intermediate, vocab_size=size.vocab,
        max_position_embeddings=size.seq, tie_word_embeddings=False,
    )
    with torch.device(device):  # initialise where it runs: a 1B model's fp32 init on the host takes minutes
        model = LlamaForCausalLM(config)
    model = model.to(dtype=dtype).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    g = torch.Generator(device="cpu").manual_seed(seed)
    b, t, v = size.batch, size.seq, size.vocab
    input_ids = torch.randint(0, v, (b, t), generator=g)
    labels = input_ids.clone()
    labels[:, : int(prompt_frac * t)] = -100
    target = labels[:, 1:] != -100  # [B, T-1]: positions whose next token is a target
    tgt_labels = labels[:, 1:][target]
    n = tgt_labels.numel()
    # distinct ids: the label (top-1 most of the time in real data) plus increasing random offsets
    offsets = torch.cat([torch.zeros(n, 1, dtype=torch.long),
                         torch.randint(1, max(2, v // (2 * TOPK)), (n, TOPK - 1), generator=g).cumsum(1)], 1)
    topk_ids = (tgt_labels[:, None] + offsets) % v
    logits = torch.randn(n, TOPK, generator=g) * 2
    topk_lps = (torch.log_softmax(logits, -1) + math.log(0.9)).sort(-1, descending=True).values
    pad = torch.rand(n, TOPK, generator=g) < PAD_RATE
    pad[:, 0] = False
    topk_ids = topk_ids.masked_fill(pad, -1)
    topk_lps = topk_lps.masked_fill(pad, -math.inf)
    batch = {
        "input_ids": input_ids, "labels": labels, "target": target, "tgt_labels": tgt_labels,
        "topk_ids": topk_ids.int(), "topk_lps": topk_lps.float(),
    }
    return model, optimizer, {k: x.to(device) for k, x in batch.items()}


def step_sft(model, batch, size):
    model(input_ids=batch["input_ids"], labels=batch["labels"]).loss.backward()


def _sparse(model, batch, size, backward_per_chunk: bool):
    from fusepipe.losses import combine, token_losses

    backbone = getattr(model, model.base_model_prefix)
    head = model.get_output_embeddings()
    hidden = backbone(input_ids=batch["input_ids"]).last_hidden_state  # [B, T, H]
    h = hidden[:, :-1][batch["target"]]  # [N, H]: target positions only
    leaf = h.detach().requires_grad_(True) if backward_per_chunk else h
    n = h.shape[0]
    total = 0.0
    for s in range(0, n, size.chunk):
        rows = slice(s, s + size.chunk)
        sft, fusion = token_losses(head(leaf[rows]), batch["tgt_labels"][rows], batch["topk_ids"][rows],
                                   batch["topk_lps"][rows], kind="ce", temperature=1.0)
        mask = torch.ones_like(sft, dtype=torch.bool)
        loss, _ = combine(sft, fusion, sft_mask=mask, fusion_mask=mask, sft_weight=LAMBDA,
                          fusion_weight=1 - LAMBDA)
        loss = loss / n  # the caller's division by the batch's token count
        if backward_per_chunk:
            loss.backward()
        else:
            total = total + loss
    if backward_per_chunk:
        h.backward(leaf.grad)
    else:
        total.backward()


def step_sparse(model, batch, size):
    """The trainer's own path: `fusepipe.train.loop.micro_batch_loss` (backbone, then `ChunkedHeadLoss`)."""
    from fusepipe.train import loop

    loop.POSITION_CHUNK = size.chunk
    if "row" not in batch:  # the trainer's micro-batch layout, built once per process
        rows, cols = batch["target"].nonzero(as_tuple=True)
        n = len(rows)
        batch.update(row=rows, pos=cols + 1, t_ids=batch["topk_ids"].long(), t_lp=batch["topk_lps"],
                     sft_w=torch.full((n,), LAMBDA, device=rows.device),
                     fus_w=torch.full((n,), 1 - LAMBDA, device=rows.device),
                     inf=torch.zeros(n, dtype=torch.bool, device=rows.device))
    mb = {"input_ids": batch["input_ids"], "attention_mask": torch.ones_like(batch["input_ids"]),
          "labels": batch["tgt_labels"], **{k: batch[k] for k in ("row", "pos", "t_ids", "t_lp", "sft_w", "fus_w",
                                                                    "inf")}}
    total, _ = loop.micro_batch_loss(model, mb, "ce", 1.0, batch["input_ids"].device)
    (total / len(mb["labels"])).backward()


def step_sparse_1bw(model, batch, size):
    _sparse(model, batch, size, backward_per_chunk=False)


def step_dense(model, batch, size):
    """FuseChat's trainer: HF SFT loss plus CE(logits, dense target) masked to the target positions."""
    from fusepipe.losses import teacher_probs

    out = model(input_ids=batch["input_ids"], labels=batch["labels"])
    logits = out.logits[:, :-1]  # [B, T-1, V]
    target = batch["target"]
    p = teacher_probs(batch["topk_lps"]).to(logits.dtype)
    ids = batch["topk_ids"].clamp_min(0).long()
    rows = target.reshape(-1).nonzero()  # [N, 1]
    dense = torch.zeros(target.numel(), size.vocab, dtype=logits.dtype, device=logits.device)
    dense.index_put_((rows.expand_as(ids), ids), p, accumulate=True)  # pads add 0 (clamped onto id 0)
    fusion = F.cross_entropy(logits.reshape(-1, size.vocab), dense, reduction="none")
    fusion = (fusion * target.reshape(-1)).sum() / target.sum()
    (LAMBDA * out.loss + (1 - LAMBDA) * fusion).backward()


STEPS = {"sft": step_sft, "sparse": step_sparse, "sparse_1bw": step_sparse_1bw, "dense": step_dense}


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_one(variant: str, size: Size, args: argparse.Namespace) -> dict:
    """Build, run warm-up and timed steps of one variant in this process; times and memory as a dict."""
    torch.set_num_threads(args.threads)
    import transformers  # noqa: F401  (imports before the first memory mark)

    import fusepipe.losses  # noqa: F401

    cuda = args.device == "cuda"
    rss0 = maxrss_mib()
    model, optimizer, batch = build(size, args.device, args.prompt_frac)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated() / 2**20
    rss1 = maxrss_mib()
    fn = STEPS[variant]
    times = []
    for i in range(args.warmup + args.steps):
        optimizer.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        fn(model, batch, size)
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    rss2 = maxrss_mib()
    result = {"variant": variant, "times": times, "n_targets": int(batch["target"].sum())}
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
        result |= {"peak_mib": peak, "over_model_mib": peak - base_gpu}
    else:
        result |= {"peak_mib": rss2 - rss0, "over_model_mib": rss2 - rss1}
    return result


# --- the driver ---------------------------------------------------------------------------------------------------


def measure(size: Size, args: argparse.Namespace) -> dict[str, dict]:
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--one", variant, "--size", json.dumps(asdict(size)),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
                   "--prompt-frac", str(args.prompt_frac), "--device", args.device]
            out = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{variant} failed:\n{out.stderr[-4000:]}")
            runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {
        v: {
            "time": statistics.median(t for r in rs for t in r["times"]),
            "peak": max(r["peak_mib"] for r in rs),
            "over_model": max(r["over_model_mib"] for r in rs),
            "n_targets": rs[0]["n_targets"],
        }
        for v, rs in runs.items()
    }


def table(size: Size, res: dict[str, dict], args: argparse.Namespace) -> str:
    base = res["sft"]
    mem = "max_memory_allocated" if args.device == "cuda" else "ru_maxrss"
    head = (
        f"Llama hidden {size.hidden}, {size.layers} layers, vocab {size.vocab}, batch {size.batch} x seq {size.seq}, "
        f"{size.dtype}, {args.device} ({args.threads} threads), top-k {TOPK}, chunk {size.chunk}, "
        f"{base['n_targets']} target positions; median of {args.steps} steps x {args.rounds} rounds"
    )
    lines = [
        head,
        f"| variant | step (s) | step / sft | peak {mem} (MiB) | peak / sft | over model (MiB) | over model / sft |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v, r in res.items():
        lines.append(
            f"| {v} | {r['time']:.3f} | {r['time'] / base['time']:.3f} | {r['peak']:.0f} | "
            f"{r['peak'] / base['peak']:.3f} | {r['over_model']:.0f} | {r['over_model'] / base['over_model']:.3f} |"
        )
    t, m = res["sparse"]["time"] / base["time"], res["sparse"]["peak"] / base["peak"]
    lines.append(
        f"goal sparse/sft: time {t:.3f} <= {GOAL_TIME} {'met' if t <= GOAL_TIME else 'MISSED'}, "
        f"peak memory {m:.3f} <= {GOAL_MEMORY} {'met' if m <= GOAL_MEMORY else 'MISSED'}"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller CPU sizes (smoke run)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per process")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per process")
    ap.add_argument("--rounds", type=int, default=2, help="fresh processes per variant, interleaved")
    ap.add_argument("--chunk", type=int, help="target positions per logits chunk (default: by size)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    ap.add_argument("--prompt-frac", type=float, default=0.0, help="leading share of each sequence masked")
    ap.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    ap.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, Size(**json.loads(args.size)), args)))
        return
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = GPU if args.device == "cuda" else (QUICK if args.quick else CPU,)
    if args.device == "cuda" and args.quick:
        sizes = (replace(GPU_1B, layers=4, seq=1024),)
    for size in sizes:
        if args.chunk:
            size = replace(size, chunk=args.chunk)
        print(table(size, measure(size, args), args), flush=True)
        print()


if __name__ == "__main__":
    main()
