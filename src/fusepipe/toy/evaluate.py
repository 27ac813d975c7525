"""Exact-match accuracy of a toy chat model per domain (greedy decoding), and reward-model pair accuracy."""

from __future__ import annotations

import numpy as np
import torch

from fusepipe.toy.tasks import Item, check
from fusepipe.toy.train import score


def _encoded_batches(tokenizer, prompts: list[list[dict]], batch: int):
    """(start index, left-padded encoding) of each batch of chat prompts, generation prompt appended."""
    tokenizer.padding_side = "left"
    try:
        for i in range(0, len(prompts), batch):
            texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                     for p in prompts[i : i + batch]]
            yield i, tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = "right"


def generate(model, tokenizer, prompts: list[list[dict]], stop_ids: list[int], max_new_tokens: int = 40,
             batch: int = 64) -> list[str]:
    """Greedy responses, left-padded batches, stopping at any of `stop_ids`."""
    out = []
    for _, enc in _encoded_batches(tokenizer, prompts, batch):
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop_ids,
                                 pad_token_id=tokenizer.pad_token_id)
        out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
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


def sample(model, tokenizer, prompts: list[list[dict]], stop_ids: list[int], n: int, seed: int,
           temperature: float = 0.7, top_p: float = 0.95, max_new_tokens: int = 40, batch: int = 64) -> list[list[str]]:
    """`n` sampled responses per prompt (the pipeline's `generate` settings), seeded: the same on one machine."""
    torch.manual_seed(seed)
    out: list[list[str]] = [[] for _ in prompts]
    for i, enc in _encoded_batches(tokenizer, prompts, batch):
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                 top_p=top_p, top_k=0, num_return_sequences=n, eos_token_id=stop_ids,
                                 pad_token_id=tokenizer.pad_token_id)
        texts_out = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for j, text in enumerate(texts_out):
            out[i + j // n].append(text.strip())
    return out


def nll_per_byte(model, tokenizer, conversations: list[list[dict]], name: str, batch: int = 32) -> float:
    """Σ NLL of the assistant messages' tokens (turn-closing tokens included) / Σ their UTF-8 bytes, in nats: what
    the `logits` stage stores as nll_sum / n_bytes and MinCE compares with `ce_norm: byte`."""
    rows = assistant_nll(model, tokenizer, conversations, name, batch)
    return sum(nll for nll, _ in rows) / max(sum(n for _, n in rows), 1)


def assistant_nll(model, tokenizer, conversations: list[list[dict]], name: str,
                  batch: int = 32) -> list[tuple[float, int]]:
    """(Σ NLL of the assistant messages' tokens, their UTF-8 bytes) per conversation, in nats."""
    from fusepipe.logits.capture import prepare

    prepared = [prepare(tokenizer, conv, last_only=False, max_len=1 << 30, overlong="skip", name=name, key=str(i))
                for i, conv in enumerate(conversations)]
    out = []
    with torch.no_grad():
        for i in range(0, len(prepared), batch):
            chunk = prepared[i : i + batch]
            width = max(len(p.ids) for p in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for j, p in enumerate(chunk):
                ids[j, : len(p.ids)] = torch.tensor(p.ids)
                mask[j, : len(p.ids)] = 1
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            for j, p in enumerate(chunk):
                pos = torch.from_numpy(p.positions)
                out.append((-float(logp[j, pos - 1, ids[j, pos]].sum()), p.n_bytes))
    return out


def likelihood_pair_accuracy(model, tokenizer, pairs, name: str) -> float:
    """Share of (chosen, rejected) pairs a causal LM orders correctly by likelihood alone: Σ log p(chosen response)
    > Σ log p(rejected response) (the LM as a judge, no trained head)."""
    chosen = assistant_nll(model, tokenizer, [c for c, _ in pairs], name)
    rejected = assistant_nll(model, tokenizer, [r for _, r in pairs], name)
    return float(np.mean([c[0] < r[0] for c, r in zip(chosen, rejected)]))
