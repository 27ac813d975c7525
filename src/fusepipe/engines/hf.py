"""The transformers engine: always available, slow, and the numeric reference for vLLM in the tests.

- Loads `AutoModelForCausalLM` (generate) or `AutoModelForSequenceClassification` (score) on cuda:0 when there is
  a GPU, else on the CPU; dtype from the spec (`auto` = float32 on CPUs, the checkpoint's dtype on GPUs).
- Generation is a plain decode loop with a KV cache (no `model.generate`, so no generation_config.json sampling
  defaults sneak in). Greedy (temperature 0) runs in left-padded batches of `batch_size` (default 16); sampled
  requests run one at a time, each with its own `torch.Generator` seeded by `Request.seed`, so a response only
  depends on its seed, never on the batch. Filters as in vLLM: temperature, then top-k, then top-p.
- Scoring: the classifier's raw output at the last token of each conversation (right-padded batches through the
  base model and the `score` head; one conversation at a time for other heads).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fusepipe.engines.base import (
    EngineBase,
    EngineStats,
    Generation,
    Request,
    Sampling,
    TopK,
    chunks,
    resolve_dtype,
)
from fusepipe.engines.render import Renderer, check_scores, row_keys

DEFAULT_BATCH = 16
Picker = Callable[[torch.Tensor], torch.Tensor]  # logits [B, V] -> next ids [B]


class HFEngine(EngineBase):
    kind = "hf"

    def __init__(self, spec: dict[str, Any], task: str):
        start = time.perf_counter()
        self.name = spec["name"]
        self.task = task
        self.stats = EngineStats()
        self.batch_size = int(spec.get("batch_size") or DEFAULT_BATCH)
        self.renderer = Renderer(spec, task)
        self.device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        self.model = _load_model(spec, task, self.device)
        self._keep_last_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self.stats.load_s = time.perf_counter() - start
        self.stats.extra.update(device=str(self.device), dtype=str(self.model.dtype).removeprefix("torch."))

    # ---- generation -------------------------------------------------------------------------------------
    def generate(self, requests: list[Request], sampling: Sampling) -> list[Generation]:
        start = time.perf_counter()
        keys = row_keys([r.key for r in requests], len(requests))
        rendered = [
            self.renderer.prompt(r, sampling.max_tokens, k) for r, k in zip(requests, keys, strict=True)
        ]
        stop = set(self.renderer.stop_ids(sampling))
        outputs: list[list[int]] = []
        if sampling.temperature == 0:
            for batch in chunks([r.ids for r in rendered], self.batch_size):
                outputs += self._decode(batch, sampling.max_tokens, stop, _greedy)
        else:
            for request, prompt in zip(requests, rendered, strict=True):
                pick = _sampler(sampling, request.seed, self.device)
                outputs += self._decode([prompt.ids], sampling.max_tokens, stop, pick)
        gens = [
            self._generation(ids, r.ids, r.truncated, stop) for ids, r in zip(outputs, rendered, strict=True)
        ]
        self._count(gens, time.perf_counter() - start)
        return gens

    def _generation(self, ids: list[int], prompt: list[int], truncated: bool, stop: set[int]) -> Generation:
        reason = "stop" if ids and ids[-1] in stop else "length"
        return Generation(self.renderer.decode(ids), ids, reason, len(prompt), truncated)

    def _count(self, gens: list[Generation], seconds: float) -> None:
        self.stats.run_s += seconds
        self.stats.requests += len(gens)
        self.stats.prompt_tokens += sum(g.prompt_tokens for g in gens)
        self.stats.output_tokens += sum(len(g.token_ids) for g in gens)
        self.stats.truncated += sum(g.prompt_truncated for g in gens)

    @torch.inference_mode()
    def _decode(
        self, prompts: list[list[int]], max_new: int, stop: set[int], pick: Picker
    ) -> list[list[int]]:
        """Decode a left-padded batch until every row hit a stop id or `max_new` tokens."""
        ids, mask = _pad(prompts, self.renderer.pad_id, left=True, device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        extra = {"logits_to_keep": 1} if self._keep_last_logits else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
        generated: list[list[int]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        for step in range(max_new):
            nxt = pick(out.logits[:, -1, :])
            for row, token in enumerate(nxt.tolist()):
                if not done[row]:
                    generated[row].append(token)
                    done[row] = token in stop
            if all(done) or step == max_new - 1:
                break
            mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
            positions = positions[:, -1:] + 1
            out = self.model(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=positions,
                past_key_values=out.past_key_values,
                use_cache=True,
            )
        return generated

    # ---- scoring ----------------------------------------------------------------------------------------
    def score(self, conversations: list[list[dict[str, str]]], keys: list[str] | None = None) -> list[float]:
        start = time.perf_counter()
        keys = row_keys(keys, len(conversations))
        rendered = [self.renderer.conversation(c, k) for c, k in zip(conversations, keys, strict=True)]
        scores: list[float] = []
        for batch in chunks([r.ids for r in rendered], self.batch_size):
            scores += self._score_batch(batch)
        check_scores(self.name, scores, keys)
        self.stats.run_s += time.perf_counter() - start
        self.stats.requests += len(rendered)
        self.stats.prompt_tokens += sum(len(r.ids) for r in rendered)
        self.stats.truncated += sum(r.truncated for r in rendered)
        return scores

    @torch.inference_mode()
    def _score_batch(self, batch: list[list[int]]) -> list[float]:
        head, base = getattr(self.model, "score", None), self.model.base_model
        if not isinstance(head, torch.nn.Linear) or base is self.model:
            return [self._score_one(ids) for ids in batch]
        ids, mask = _pad(batch, self.renderer.pad_id, left=False, device=self.device)
        hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
        last = mask.sum(-1) - 1
        values = head(hidden[torch.arange(len(batch), device=self.device), last])
        return values[:, 0].float().tolist()

    def _score_one(self, ids: list[int]) -> float:
        """Any other head: one unpadded conversation, its model told there is no padding (last token = score)."""
        config = self.model.config.get_text_config()
        pad, config.pad_token_id = config.pad_token_id, None
        try:
            out = self.model(input_ids=torch.tensor([ids], device=self.device))
        finally:
            config.pad_token_id = pad
        return float(out.logits[0, 0])

    # ---- teacher-forced top-k ----------------------------------------------------------------------------
    def topk(self, sequences: list[list[int]], positions: list[np.ndarray], k: int) -> list[TopK]:
        """One forward per sequence; log-softmax in fp32 over the full vocabulary at the rows before targets."""
        start = time.perf_counter()
        out = []
        for ids, pos in zip(sequences, positions, strict=True):
            x = torch.tensor([ids], dtype=torch.long, device=self.device)
            with torch.no_grad():
                logits = self.model(input_ids=x).logits[0].float()
            rows = torch.as_tensor(np.asarray(pos) - 1, device=self.device)
            lp = torch.log_softmax(logits[rows], dim=-1)
            top = lp.topk(k, dim=-1)
            actual = torch.as_tensor(np.asarray(ids)[pos], device=self.device)
            tok = lp.gather(1, actual[:, None])[:, 0]
            ent = -(lp.exp() * lp).sum(dim=-1)
            out.append(TopK(top.indices.int().cpu().numpy(), top.values.cpu().numpy(), tok.cpu().numpy(),
                            ent.cpu().numpy(), "exact"))
            self.stats.prompt_tokens += len(ids)
        self.stats.requests += len(sequences)
        self.stats.run_s += time.perf_counter() - start
        return out

    def close(self) -> None:
        if getattr(self, "model", None) is None:
            return
        self.model = None
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _load_model(spec: dict[str, Any], task: str, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForSequenceClassification if task == "score" else AutoModelForCausalLM
    dtype = resolve_dtype(spec.get("dtype"), device.type == "cuda")
    model = cls.from_pretrained(
        spec["path"],
        dtype=dtype if dtype == "auto" else getattr(torch, dtype),
        trust_remote_code=spec.get("trust_remote_code", False),
    )
    return model.to(device).eval()


def _pad(
    rows: list[list[int]], pad_id: int, left: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of `rows` padded to the longest, on the left or on the right."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)


def _greedy(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(-1)


def _sampler(sampling: Sampling, seed: int, device: torch.device) -> Picker:
    """Temperature, top-k, top-p, then one draw from a generator seeded for this request only."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float() / sampling.temperature
        if 0 < sampling.top_k < logits.shape[-1]:
            kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if sampling.top_p < 1.0:
            logits = _top_p(logits, sampling.top_p)
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    return pick


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches `top_p` (at least one)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    drop = probs.cumsum(-1) - probs > top_p
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
