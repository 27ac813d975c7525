"""Exact-match accuracy of a toy chat model per domain (greedy decoding), and reward-model pair accuracy."""

from __future__ import annotations

import numpy as np
import torch

from fusepipe.toy.tasks import Item, check
from fusepipe.toy.train import score


def generate(model, tokenizer, prompts: list[list[dict]], stop_ids: list[int], max_new_tokens: int = 40,
             batch: int = 64) -> list[str]:
    """Greedy responses, left-padded batches, stopping at any of `stop_ids`."""
    tokenizer.padding_side = "left"
    out = []
    for i in range(0, len(prompts), batch):
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                 for p in prompts[i : i + batch]]
        enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids,
                                 pad_token_id=tokenizer.pad_token_id)
        out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    tokenizer.padding_side = "right"
    return out


def accuracy(model, tokenizer, items: list[Item], stop_ids: list[int]) -> dict[str, float]:
    """Per-domain share of items whose greedy answer passes the domain's checker."""
    prompts = [[{"role": "user", "content": it.prompt}] for it in items]
    responses = generate(model, tokenizer, prompts, stop_ids)
    hits: dict[str, list[bool]] = {}
    for it, r in zip(items, responses):
        hits.setdefault(it.domain, []).append(check(it, r))
    return {d: round(float(np.mean(v)), 4) for d, v in sorted(hits.items())}


def pairwise_accuracy(model, pairs, pad_id: int) -> float:
    """Share of (chosen, rejected) pairs the reward model orders correctly."""
    chosen = score(model, [c for c, _ in pairs], pad_id)
    rejected = score(model, [r for _, r in pairs], pad_id)
    return float(np.mean(chosen > rejected))
