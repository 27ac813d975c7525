"""Plain-torch training of the toy models: causal LM on assistant tokens, and pairwise reward models.

Small and deterministic: one seed per model, fixed thread count, AdamW with linear warmup and cosine decay.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from fusepipe.chat import render


def _schedule(opt: torch.optim.Optimizer, step: int, total: int, lr: float, warmup: int) -> None:
    if step < warmup:
        cur = lr * (step + 1) / warmup
    else:
        cur = lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    for group in opt.param_groups:
        group["lr"] = cur


def _batches(n: int, batch: int, steps: int, rng: random.Random) -> Iterator[list[int]]:
    """`steps` batches of indices: shuffled epochs over range(n), concatenated."""
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch:
            epoch = list(range(n))
            rng.shuffle(epoch)
            order.extend(epoch)
        yield order[:batch]
        order = order[batch:]


def _length_grouped_batches(lengths: np.ndarray, batch: int, steps: int, rng: random.Random) -> Iterator[list[int]]:
    """`steps` batches of indices: shuffled epochs over range(len(lengths)), each batch of similar lengths (sorted
    within windows, batch order shuffled: the training loop's `micro_batches`), so padding costs little."""
    from fusepipe.train.data import micro_batches

    done = 0
    while len(lengths):
        for idx in micro_batches(list(range(len(lengths))), lengths, batch, rng, "shuffle"):
            if done == steps:
                return
            yield idx
            done += 1


def encode_sft(tokenizer, conversations: list[list[dict]], name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input_ids, labels) per conversation; labels are -100 outside the assistant targets."""
    out = []
    for conv in conversations:
        r = render(tokenizer, conv, name)
        labels = np.where(r.target, r.input_ids, -100).astype(np.int64)
        out.append((r.input_ids.astype(np.int64), labels))
    return out


def _pad(seqs: list[np.ndarray], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = np.full((len(seqs), width), value, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return torch.from_numpy(out)


def train_lm(model, examples, pad_id: int, steps: int, batch: int, lr: float, seed: int) -> list[float]:
    """Next-token cross-entropy on the assistant targets; returns the loss per step."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    model.train()
    losses = []
    for step, idx in enumerate(_batches(len(examples), batch, steps, rng)):
        seqs = [examples[i][0] for i in idx]
        ids = _pad(seqs, pad_id)
        labels = _pad([examples[i][1] for i in idx], -100)
        logits = model(input_ids=ids, attention_mask=_lengths_mask(seqs, ids.shape[1])).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        _schedule(opt, step, steps, lr, warmup=max(1, steps // 20))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def encode_pairs(tokenizer, pairs: list[tuple[list[dict], list[dict]]], name: str):
    """Token ids of (chosen, rejected) conversations rendered with the reward model's template."""
    out = []
    for chosen, rejected in pairs:
        a = tokenizer.apply_chat_template(chosen, tokenize=False)
        b = tokenizer.apply_chat_template(rejected, tokenize=False)
        out.append(
            (
                np.asarray(tokenizer(a, add_special_tokens=False)["input_ids"], dtype=np.int64),
                np.asarray(tokenizer(b, add_special_tokens=False)["input_ids"], dtype=np.int64),
            )
        )
    return out


def score(model, seqs: list[np.ndarray], pad_id: int, batch: int = 64) -> np.ndarray:
    """Scalar reward at the last non-pad token of each sequence (right padding)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(seqs), batch):
            ids = _pad(seqs[i : i + batch], pad_id)
            mask = _lengths_mask(seqs[i : i + batch], ids.shape[1])
            out.append(_last_scores(model, ids, mask))
    return torch.cat(out).numpy()


def _lengths_mask(seqs: list[np.ndarray], width: int) -> torch.Tensor:
    lengths = torch.tensor([len(s) for s in seqs])
    return (torch.arange(width)[None, :] < lengths[:, None]).long()


def _last_scores(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids, attention_mask=mask).logits  # [B, 1] pooled at last non-pad token by HF
    return logits[:, 0].float()


def train_rm(model, pairs, pad_id: int, steps: int, batch: int, lr: float, seed: int,
             grouped: bool = True) -> list[float]:
    """Bradley-Terry loss -log σ(r_chosen - r_rejected), over batches of pairs of similar lengths (1.7x faster a
    step than random batches on the toy pairs, and as accurate: benchmarks/RESULTS.md, toy reward models);
    `grouped=False`: random batches, the earlier recipe (benchmarks/rm_recipes.py compares the two)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    losses = []
    lengths = np.array([max(len(c), len(r)) for c, r in pairs])
    batches = _length_grouped_batches(lengths, batch, steps, rng) if grouped else _batches(len(pairs), batch, steps, rng)
    for step, idx in enumerate(batches):
        seqs = [pairs[i][0] for i in idx] + [pairs[i][1] for i in idx]
        ids = _pad(seqs, pad_id)
        r = _last_scores(model, ids, _lengths_mask(seqs, ids.shape[1]))
        loss = -F.logsigmoid(r[: len(idx)] - r[len(idx) :]).mean()
        _schedule(opt, step, steps, lr, warmup=max(1, steps // 20))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses
