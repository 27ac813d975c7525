"""Training examples from the targets shards, and the deterministic plan of optimizer steps over a schedule.

An example is one (sample, mode): the conversation rendered with the pivot's chat template and tokenized
(`logits.capture.prepare`, the same targets the logits and align stages saw), and one or more teacher rows (sparse
distributions at every target token, a loss weight each). The plan lays every phase's examples into optimizer
steps of `global_batch` sequences: micro-batches of similar length (length bucketing: little padding), shuffled
with a seed per (phase, epoch) so a resumed run replays the same order.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fusepipe.errors import ArtifactError
from fusepipe.logits.capture import prepare


@dataclass
class Teacher:
    model: str
    weight: float
    ids: np.ndarray  # int32 [T, k]
    logprobs: np.ndarray  # float32 [T, k]
    valid: np.ndarray  # bool [T]


@dataclass
class Example:
    key: str
    mode: str
    input_ids: np.ndarray  # int64 [L]
    positions: np.ndarray  # int64 [T]: input positions of the target tokens (predicted from position - 1)
    teachers: list[Teacher] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        return self.input_ids[self.positions]


def _rows(table) -> list[dict[str, Any]]:
    k = table.schema.field("topk_ids").type.value_type.list_size
    out = []
    cols = {name: table.column(name).to_pylist() for name in ("sample_id", "mode", "model", "weight", "messages")}
    for name in ("token_ids", "topk_ids", "topk_logprobs", "valid"):
        cols[name] = table.column(name).to_pylist()
    for i in range(table.num_rows):
        out.append({
            **{name: cols[name][i] for name in ("sample_id", "mode", "model", "weight", "messages")},
            "token_ids": np.asarray(cols["token_ids"][i], np.int32),
            "topk_ids": np.asarray(cols["topk_ids"][i], np.int32).reshape(-1, k),
            "topk_logprobs": np.asarray(cols["topk_logprobs"][i], np.float32).reshape(-1, k),
            "valid": np.asarray(cols["valid"][i], bool),
        })
    return out


def load_examples(shard_paths: list[str | Path], tokenizer, pivot: dict[str, Any], max_len: int) -> list[Example]:
    """Every (sample, mode) of the targets shards, tokenized; rows of one (sample, mode) become its teachers."""
    from fusepipe.fuse.stage import read_targets

    examples: dict[tuple[str, str], Example] = {}
    for path in shard_paths:
        for r in _rows(read_targets(path)):
            key = (r["sample_id"], r["mode"])
            ex = examples.get(key)
            if ex is None:
                prep = prepare(tokenizer, r["messages"], last_only=r["mode"] == "inf", max_len=max_len,
                               overlong="truncate", name=pivot["name"], key=r["sample_id"])
                if prep is None:
                    continue
                ids = np.asarray(prep.ids, np.int64)
                ex = Example(r["sample_id"], r["mode"], ids, prep.positions)
                n = len(prep.positions)
                if not np.array_equal(ids[prep.positions], r["token_ids"][:n]):
                    raise ArtifactError(f"{path}: sample {r['sample_id']} ({r['mode']}): the pivot tokenizer gives "
                                        "other target tokens than the targets were built on; rerun logits, align "
                                        "and fuse with this pivot")
                examples[key] = ex
            n = len(ex.positions)  # a truncated example keeps the first n targets (whole messages)
            ex.teachers.append(Teacher(r["model"], float(r["weight"]), r["topk_ids"][:n], r["topk_logprobs"][:n],
                                       r["valid"][:n]))
    return sorted(examples.values(), key=lambda e: (e.mode, e.key))


@dataclass
class Step:
    """One optimizer step: its phase, epoch and micro-batches (lists of example indices), all ranks."""

    index: int
    phase: int
    epoch: int
    micro_batches: list[list[int]]


def micro_batches(indices: list[int], lengths: np.ndarray, size: int, rng: random.Random, order: str) -> list[list[int]]:
    """Micro-batches of `size`: length-sorted within windows of 50 micro-batches, then shuffled (order shuffle),
    or strictly short to long over the whole epoch (order length: the GTLen curriculum)."""
    if order == "length":
        ranked = sorted(indices, key=lambda i: (lengths[i], i))
        return [ranked[i : i + size] for i in range(0, len(ranked), size)]
    idx = list(indices)
    rng.shuffle(idx)
    window = 50 * size
    batches = []
    for start in range(0, len(idx), window):
        chunk = sorted(idx[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    rng.shuffle(batches)
    return batches


def plan(examples: list[Example], schedule: list[dict[str, Any]], train: dict[str, Any], world: int) -> list[Step]:
    """Every optimizer step of the run. A phase's fractional epochs take that share of its (shuffled) examples;
    a step holds `global_batch / micro_batch` micro-batches (a multiple of the world size)."""
    per_step = max(1, train["global_batch"] // train["micro_batch"])
    per_step = max(world, per_step - per_step % world)
    lengths = np.array([len(e.input_ids) for e in examples])
    steps: list[Step] = []
    for p, phase in enumerate(schedule):
        pool = [i for i, e in enumerate(examples) if e.mode in phase["modes"]]
        if not pool:
            raise ArtifactError(f"phase {phase['name']!r} trains on modes {phase['modes']} but the targets hold no "
                                "example of them")
        epochs = phase["epochs"] * train.get("epochs_scale", 1.0)
        for epoch in range(math.ceil(epochs - 1e-9)):
            rng = random.Random(f"{train['seed']}-{p}-{epoch}")
            share = min(1.0, epochs - epoch)
            take = pool if share >= 1 else sorted(rng.sample(pool, max(1, round(share * len(pool)))))
            mbs = micro_batches(take, lengths, train["micro_batch"], rng, phase["order"])
            for s in range(0, len(mbs), per_step):
                group = mbs[s : s + per_step]
                have = len(group)
                while len(group) < per_step:  # a short last step repeats its own micro-batches (fixed accumulation)
                    group.append(group[len(group) % have])
                steps.append(Step(len(steps), p, epoch, group))
    if train.get("max_steps"):
        steps = steps[: train["max_steps"]]
    return steps
