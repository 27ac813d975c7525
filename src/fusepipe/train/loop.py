"""The training loop: DeepSpeed ZeRO over the planned steps, sparse fusion loss, checkpoints, resume, consolidation.

Per micro-batch: the backbone's hidden states, then the LM head only at target positions, in chunks of positions
(no [tokens × vocab] tensor beyond one chunk's logits), and per position

    loss_t = w_mode · (sft_weight · CE(gt token) + fusion_weight · Σ_teachers w_row · D(p_teacher, q_student))

summed and divided by the number of target positions of the whole optimizer step (all micro-batches, all ranks):
the token mean of the references under gradient accumulation. D is `losses.token_losses(kind=train.loss)` over
the teacher's top-k at `train.temperature`.

One process on CPU (gloo, torch AdamW as client optimizer, fp32); `torchrun` across the GPUs of a node on a
cluster (bf16). Checkpoints every `save_every` steps under `checkpoints/` (DeepSpeed's own format, with the step
and the config hash); a restarted job resumes from the latest one if the config hash matches and replays the same
data order. At the end, one consolidated Hugging Face folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from fusepipe.artifacts import write_json
from fusepipe.errors import FusepipeError
from fusepipe.train.data import Example, Step

log = logging.getLogger("fusepipe.train")

POSITION_CHUNK = 2048  # target positions per LM-head chunk


class TrainError(FusepipeError):
    """Training cannot go on (non-finite loss, bad checkpoint)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup_distributed() -> tuple[int, int]:
    """(rank, world size): from the launcher's environment, else one local process (DeepSpeed needs the env).

    One process that torchrun did not start serves its own rendezvous, on a free port of its own: a MASTER_PORT it
    inherited (a shell inside a torchrun, a test process that trained before) would put two such jobs side by side
    on one port (EADDRINUSE)."""
    alone = os.environ.get("WORLD_SIZE", "1") == "1" and "TORCHELASTIC_RUN_ID" not in os.environ
    if alone:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def ds_config(train: dict[str, Any], world: int, bf16: bool) -> dict[str, Any]:
    per_step = max(1, train["global_batch"] // train["micro_batch"])
    per_step = max(world, per_step - per_step % world)
    return {
        "train_micro_batch_size_per_gpu": train["micro_batch"],
        "gradient_accumulation_steps": per_step // world,
        "gradient_clipping": train["grad_clip"],
        "zero_optimization": {"stage": train["zero_stage"], "stage3_gather_16bit_weights_on_model_save": True},
        "bf16": {"enabled": bf16},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def cosine_with_warmup(total: int, warmup_ratio: float):
    warm = max(1, round(total * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def collate(examples: list[Example], pad_id: int, phase: dict[str, Any], temperature_k: int | None = None):
    """Tensors of one micro-batch: padded input ids, attention mask, and one entry per (teacher row, target
    position): batch index, position, label, teacher top-k, SFT weight, fusion weight."""
    import torch

    length = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    rows, pos, labels, t_ids, t_lp, sft_w, fus_w, modes = [], [], [], [], [], [], [], []
    weights = phase.get("mode_weights", {})
    for b, e in enumerate(examples):
        ids[b, : len(e.input_ids)] = torch.from_numpy(e.input_ids)
        mask[b, : len(e.input_ids)] = 1
        w_mode = weights.get(e.mode, 1.0)
        for r, t in enumerate(e.teachers):
            n = len(e.positions)
            rows.append(np.full(n, b))
            pos.append(e.positions)
            labels.append(e.labels)
            t_ids.append(t.ids)
            t_lp.append(t.logprobs)
            sft_w.append(np.full(n, w_mode * phase["sft_weight"] if r == 0 else 0.0))
            fus_w.append(np.full(n, w_mode * phase["fusion_weight"] * t.weight))
            modes.append(np.full(n, e.mode == "inf"))

    def cat(parts, dtype):
        return torch.from_numpy(np.concatenate(parts).astype(dtype))

    return {
        "input_ids": ids, "attention_mask": mask, "row": cat(rows, np.int64), "pos": cat(pos, np.int64),
        "labels": cat(labels, np.int64), "t_ids": cat(t_ids, np.int64), "t_lp": cat(t_lp, np.float32),
        "sft_w": cat(sft_w, np.float32), "fus_w": cat(fus_w, np.float32), "inf": cat(modes, bool),
    }


def backbone_of(model):
    """The decoder stack of a causal LM (what produces the hidden states the LM head reads)."""
    base = getattr(model, model.base_model_prefix, None)
    if base is None:
        raise TrainError(f"{type(model).__name__}: no backbone under base_model_prefix {model.base_model_prefix!r}")
    return base


class ChunkedHeadLoss:
    """Σ_t [a_t·SFT_t + b_t·D_t] through the LM head, one chunk of positions at a time, never keeping a chunk's
    logits: each chunk's gradients w.r.t. the hidden states and the head weight are taken right away (as fused
    linear-cross-entropy kernels do) and handed to autograd as the node's gradient. Peak extra memory: one
    chunk's [positions × vocab] logits, plus [positions × hidden] and the head's weight-sized gradient."""

    @staticmethod
    def apply(h, weight, bias, batch, kind, temperature, softcap, parts):
        import torch

        from fusepipe.losses import token_losses

        class _Fn(torch.autograd.Function):
            @staticmethod
            def forward(ctx, h_in, w_in, b_in):
                grad_h = torch.zeros_like(h_in, dtype=torch.float32)
                grad_w = torch.zeros_like(w_in, dtype=torch.float32)
                grad_b = None if b_in is None else torch.zeros_like(b_in, dtype=torch.float32)
                total = torch.zeros((), dtype=torch.float32, device=h_in.device)
                for start in range(0, len(h_in), POSITION_CHUNK):
                    sl = slice(start, start + POSITION_CHUNK)
                    with torch.enable_grad():
                        hc = h_in[sl].detach().requires_grad_(True)
                        wc = w_in.detach().requires_grad_(True)
                        bc = None if b_in is None else b_in.detach().requires_grad_(True)
                        logits = torch.nn.functional.linear(hc, wc, bc)
                        if softcap:
                            logits = softcap * torch.tanh(logits / softcap)
                        sft, fusion = token_losses(logits, batch["labels"][sl], batch["t_ids"][sl],
                                                   batch["t_lp"][sl], kind=kind, temperature=temperature)
                        loss = (batch["sft_w"][sl] * sft).sum() + (batch["fus_w"][sl] * fusion).sum()
                        grads = torch.autograd.grad(loss, [hc, wc] + ([bc] if bc is not None else []))
                    grad_h[sl] = grads[0]
                    grad_w += grads[1]
                    if bc is not None:
                        grad_b += grads[2]
                    total += loss.detach()
                    _log_parts(parts, batch, sl, sft.detach(), fusion.detach())
                ctx.save_for_backward(grad_h, grad_w, *([] if grad_b is None else [grad_b]))
                ctx.has_bias = grad_b is not None
                return total

            @staticmethod
            def backward(ctx, grad_out):
                saved = ctx.saved_tensors
                gh, gw = saved[0] * grad_out, saved[1] * grad_out
                gb = saved[2] * grad_out if ctx.has_bias else None
                return gh.to(h.dtype), gw.to(weight.dtype), (gb.to(bias.dtype) if gb is not None else None)

        return _Fn.apply(h, weight, bias)


def _log_parts(parts: dict[str, float], batch: dict[str, Any], sl: slice, sft, fusion) -> None:
    inf = batch["inf"][sl]
    first = batch["sft_w"][sl] > 0  # SFT is counted once per position (the first teacher row)
    parts["sft_gt"] += float(sft[~inf & first].sum())
    parts["sft_inf"] += float(sft[inf & first].sum())
    parts["fusion_gt"] += float(fusion[~inf].sum())
    parts["fusion_inf"] += float(fusion[inf].sum())


def micro_batch_loss(model, batch: dict[str, Any], loss_kind: str, temperature: float, device) -> tuple[Any, dict]:
    """Σ_t loss_t over the micro-batch (not yet normalised), and its parts for the log.

    The head runs only at target positions. Where its weight is a plain tensor, `ChunkedHeadLoss` keeps one
    chunk of logits at a time; under ZeRO-3 (partitioned weight, gathered by the module's hooks) the head is
    called as a module per chunk and autograd keeps each chunk's logits."""
    import torch

    from fusepipe.losses import token_losses

    batch = {k: v.to(device) for k, v in batch.items()}
    hidden = backbone_of(model)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    h = hidden[batch["row"], batch["pos"] - 1]  # the state at t-1 predicts the target token at t
    parts = {"sft_gt": 0.0, "sft_inf": 0.0, "fusion_gt": 0.0, "fusion_inf": 0.0}
    if isinstance(head, torch.nn.Linear) and not hasattr(head.weight, "ds_id"):
        total = ChunkedHeadLoss.apply(h, head.weight, head.bias, batch, loss_kind, temperature, softcap, parts)
        return total, parts
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(h), POSITION_CHUNK):
        sl = slice(start, start + POSITION_CHUNK)
        logits = head(h[sl])
        if softcap:
            logits = softcap * torch.tanh(logits / softcap)
        sft, fusion = token_losses(logits, batch["labels"][sl], batch["t_ids"][sl], batch["t_lp"][sl],
                                   kind=loss_kind, temperature=temperature)
        total = total + (batch["sft_w"][sl] * sft).sum() + (batch["fus_w"][sl] * fusion).sum()
        _log_parts(parts, batch, sl, sft.detach(), fusion.detach())
    return total, parts


class Checkpoints:
    """DeepSpeed checkpoints of one job under `folder`, tagged `step{N}`, with the config hash they belong to.

    `fusepipe.json` (config hash and step) is the commit record: written atomically once every rank has written the
    whole checkpoint, and after `log.json`. A job killed at any moment (SIGKILL, preemption) therefore resumes from
    the newest checkpoint that was complete, never from one cut short (DeepSpeed's own `latest` file is written in
    place, and before rank 0's record)."""

    def __init__(self, folder: Path, config_hash: str):
        self.folder, self.config_hash = folder, config_hash

    def latest(self) -> str | None:
        meta = self.folder / "fusepipe.json"
        if not meta.is_file():
            return None
        record = json.loads(meta.read_text())
        if record.get("config_hash") != self.config_hash:
            log.warning("%s: checkpoints of another configuration; starting over", self.folder)
            shutil.rmtree(self.folder, ignore_errors=True)
            return None
        return f"step{record['step']}"

    def save(self, engine, step: int, log_rows: list[dict], rank: int) -> None:
        import torch

        engine.save_checkpoint(str(self.folder), tag=f"step{step}", client_state={"step": step})
        if torch.distributed.is_initialized():
            torch.distributed.barrier()  # every rank's part is on disk before the record names it
        if rank == 0:
            write_json(log_rows, self.folder / "log.json")
            write_json({"config_hash": self.config_hash, "step": step}, self.folder / "fusepipe.json")
            older = sorted(int(p.name[4:]) for p in self.folder.glob("step*") if p.name[4:].isdigit()
                           and int(p.name[4:]) < step)
            for old in older[:-1]:  # keep this one and the one before
                shutil.rmtree(self.folder / f"step{old}", ignore_errors=True)


def train(params: dict[str, Any], examples: list[Example], steps: list[Step], tokenizer, model_path: str,
          out_dir: Path, config_hash: str) -> dict[str, Any]:
    """Run the planned steps; write the consolidated model to out_dir/model; return the run's summary."""
    rank, world = setup_distributed()
    import deepspeed
    import deepspeed.ops
    import torch
    from transformers import AutoModelForCausalLM

    train_cfg, schedule = params["recipe"]["train"], params["recipe"]["schedule"]
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # skip a ~75 s C++ build on CPU
    bf16 = train_cfg["dtype"] == "bfloat16" or (train_cfg["dtype"] == "auto" and on_gpu)
    torch.manual_seed(train_cfg["seed"])
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if train_cfg["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"])
    factor = cosine_with_warmup(len(steps), train_cfg["warmup_ratio"])
    # a callable: DeepSpeed builds the scheduler on the optimizer it actually steps (ZeRO-3 re-creates it)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, config=ds_config(train_cfg, world, bf16),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor))
    device = engine.device
    ckpts = Checkpoints(out_dir / "checkpoints", config_hash)
    log_rows: list[dict[str, Any]] = []
    start = 0
    tag = ckpts.latest()
    if tag is not None:
        _, client = engine.load_checkpoint(str(ckpts.folder), tag=tag)
        start = int(client["step"]) + 1
        saved = ckpts.folder / "log.json"
        log_rows = [r for r in json.loads(saved.read_text()) if r["step"] < start] if saved.is_file() else []
        log.info("resumed from %s/%s: continuing at step %d of %d", ckpts.folder, tag, start, len(steps))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    engine.train()
    for step in steps[start:]:
        t0 = time.perf_counter()
        phase = schedule[step.phase]
        mine = step.micro_batches[rank::world]
        n_positions = sum(len(examples[i].positions) for mb in step.micro_batches for i in mb)
        sums = {"sft_gt": 0.0, "sft_inf": 0.0, "fusion_gt": 0.0, "fusion_inf": 0.0}
        counts = {"gt": 0, "inf": 0}
        loss_value = 0.0
        for mb in mine:
            batch = collate([examples[i] for i in mb], pad_id, phase)
            # the model runs past engine.forward (backbone, then the head at target positions only), so do what
            # engine.forward does first: ZeRO-3 counts micro-steps there, and accumulates gradients only then
            if hasattr(engine.optimizer, "clear_backward_seen_flag"):
                engine.optimizer.clear_backward_seen_flag()
            total, parts = micro_batch_loss(engine.module, batch, train_cfg["loss"], train_cfg["temperature"], device)
            # DeepSpeed scales by 1/accumulation steps; the step's token mean divides by all its positions
            loss = total * (engine.gradient_accumulation_steps() * world / max(n_positions, 1))
            if not torch.isfinite(loss):
                keys = sorted({examples[i].key for i in mb})
                raise TrainError(f"step {step.index} (phase {phase['name']!r}): loss is {loss.item()} on samples "
                                 f"{', '.join(keys[:8])}; stopping (check those targets, or lower train.lr)")
            engine.backward(loss)
            engine.step()
            loss_value += float(total.detach())
            for key in sums:
                sums[key] += parts[key]
            for i in mb:
                counts[examples[i].mode] += len(examples[i].positions)
        grad_norm = engine.get_global_grad_norm()
        seconds = time.perf_counter() - t0
        row = {
            "step": step.index, "phase": phase["name"], "epoch": step.epoch, "lr": scheduler.get_last_lr()[0],
            "loss": loss_value / max(n_positions, 1) * world,
            "sft_gt": sums["sft_gt"] / max(counts["gt"], 1), "sft_inf": sums["sft_inf"] / max(counts["inf"], 1),
            "fusion_gt": sums["fusion_gt"] / max(counts["gt"], 1),
            "fusion_inf": sums["fusion_inf"] / max(counts["inf"], 1),
            "tokens_gt": counts["gt"], "tokens_inf": counts["inf"],
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "seconds": seconds, "tokens_per_s": (counts["gt"] + counts["inf"]) / max(seconds, 1e-9),
        }
        log_rows.append(row)
        if step.index % 10 == 0 or step.index == len(steps) - 1:
            log.info("step %d/%d %s: loss %.4f (sft gt %.3f inf %.3f, fusion gt %.3f inf %.3f) lr %.2e",
                     step.index + 1, len(steps), phase["name"], row["loss"], row["sft_gt"], row["sft_inf"],
                     row["fusion_gt"], row["fusion_inf"], row["lr"])
        if (step.index + 1) % train_cfg["save_every"] == 0 or step.index == len(steps) - 1:
            ckpts.save(engine, step.index, log_rows, rank)
        if os.environ.get("FUSEPIPE_TRAIN_STOP_AFTER") == str(step.index):  # fault injection for resume tests
            raise TrainError(f"stopped after step {step.index} (FUSEPIPE_TRAIN_STOP_AFTER); rerun to resume")
    if rank == 0:
        consolidate(ckpts.folder, f"step{steps[-1].index}", model_path, tokenizer, out_dir / "model")
        if not train_cfg.get("keep_checkpoints", False):  # the model is out; resume state is no longer needed
            shutil.rmtree(ckpts.folder, ignore_errors=True)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return {"steps": len(steps), "resumed_at": start, "log": log_rows}


def consolidate(ckpt_folder: Path, tag: str, model_path: str, tokenizer, out: Path) -> None:
    """The fp32 weights of a ZeRO checkpoint (any stage, any world size) as a Hugging Face folder in the pivot's
    dtype, with its tokenizer and chat template; written to a temporary folder, then renamed."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import AutoConfig, AutoModelForCausalLM

    state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_folder), tag=tag)
    config = AutoConfig.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and getattr(config, "tie_word_embeddings", False))]
    if missing or unexpected:
        raise TrainError(f"{ckpt_folder}/{tag}: checkpoint does not match the pivot's architecture (missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]})")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if dtype is not None and dtype != torch.float32:
        model = model.to(dtype)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
