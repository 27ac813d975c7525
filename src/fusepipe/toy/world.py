"""The toy world: a deterministic, local miniature of the papers' setting (DESIGN.md, "The toy world").

A pivot and three source chat models of different architectures and tokenizer families, each source trained
to be strong in one task domain while the pivot knows a little of everything; three reward models of clearly
different strength; the fusion dataset (ground truth more detailed than what the models say, as GPT-4
answers are in the papers), in the formats people have (OpenAI messages, ShareGPT, Orca); and a held-out
benchmark. Everything is saved as Hugging Face folders that transformers and vLLM load like real models.
"""

from __future__ import annotations

import json
import random
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fusepipe.toy.tasks import DOMAINS, Item
from fusepipe.toy.tokenizers import (
    CHATML_TEMPLATE,
    HASH_TEMPLATE,
    LLAMA_TEMPLATE,
    ZEPHYR_TEMPLATE,
    TokenizerSpec,
)

SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly and correctly."


@dataclass(frozen=True)
class ToyModel:
    name: str
    arch: str  # llama | qwen2 | mistral | gpt2
    tokenizer: TokenizerSpec
    strong: str | None  # the domain this model is trained to master (None: the pivot)
    role: str = "source"


@dataclass(frozen=True)
class ToyRewardModel:
    name: str
    tokenizer_of: str  # reuses the tokenizer (and chat template) of this toy model
    strength: int  # 1 = strongest
    label_noise: float  # share of training pairs whose preference is flipped
    layers: int
    steps_scale: float


@dataclass(frozen=True)
class Preset:
    sizes: dict[str, int]  # arith operand range, number of countries, number of words
    n_eval: int  # held-out benchmark prompts per domain
    n_fusion: dict[str, int]  # conversations per fusion-data source
    hidden: int
    layers: int
    intermediate: int
    lm_steps: int
    rm_steps: int
    batch: int
    lr: float
    rm_lr: float
    known_fraction: float  # share of a weak domain's items a model is trained on


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        sizes={"arith": 12, "facts": 16, "strings": 40}, n_eval=30,
        n_fusion={"arith": 96, "facts": 48, "strings": 40, "dialogue": 24},
        hidden=128, layers=2, intermediate=256, lm_steps=220, rm_steps=100, batch=32, lr=4e-3, rm_lr=1e-3,
        known_fraction=0.3,
    ),
    "small": Preset(
        sizes={"arith": 20, "facts": 40, "strings": 120}, n_eval=100,
        n_fusion={"arith": 400, "facts": 120, "strings": 120, "dialogue": 120},
        hidden=256, layers=4, intermediate=512, lm_steps=1500, rm_steps=600, batch=64, lr=2e-3, rm_lr=5e-4,
        known_fraction=0.3,
    ),
}

MODELS: tuple[ToyModel, ...] = (
    ToyModel(
        "llama-pivot", "llama",
        TokenizerSpec("metaspace_bpe", 640, LLAMA_TEMPLATE, "<s>", "</s>", "<pad>", "<unk>"),
        strong=None, role="pivot",
    ),
    ToyModel(
        "qwen-arith", "qwen2",
        TokenizerSpec(
            "bytelevel_bpe", 520, CHATML_TEMPLATE, None, "<|endoftext|>", "<|endoftext|>", None,
            ("<|im_start|>", "<|im_end|>"), end_of_turn="<|im_end|>",
        ),
        strong="arith",
    ),
    ToyModel(
        "mistral-facts", "mistral",
        TokenizerSpec("unigram", 480, HASH_TEMPLATE, "<s>", "</s>", "<pad>", "<unk>"),
        strong="facts",
    ),
    ToyModel(
        "gpt2-strings", "gpt2",
        TokenizerSpec(
            "bytelevel_bpe", 600, ZEPHYR_TEMPLATE, "<|endoftext|>", "<|endoftext|>", "<|endoftext|>", None,
            ("<|system|>", "<|user|>", "<|assistant|>"),
        ),
        strong="strings",
    ),
)

REWARD_MODELS: tuple[ToyRewardModel, ...] = (
    ToyRewardModel("rm-large", "qwen-arith", strength=1, label_noise=0.0, layers=2, steps_scale=3.0),
    ToyRewardModel("rm-medium", "llama-pivot", strength=2, label_noise=0.15, layers=2, steps_scale=1.5),
    ToyRewardModel("rm-small", "mistral-facts", strength=3, label_noise=0.3, layers=1, steps_scale=0.6),
)

# The fusion dataset: one file per source, each in a different format people actually have.
FUSION_FILES = {
    "arith": "arith.jsonl",  # OpenAI messages, JSONL
    "facts": "facts.json",  # ShareGPT conversations, one JSON array
    "strings": "strings.parquet",  # Orca style (system_prompt, question, response), Parquet
    "dialogue": "dialogue.jsonl",  # multi-turn OpenAI messages, JSONL
}


def output_paths(out: str | Path) -> dict[str, Path]:
    """Every path the toy world writes, keyed for the Snakefile and the default config."""
    out = Path(out)
    paths = {f"model:{m.name}": out / "models" / m.name for m in MODELS}
    paths |= {f"rm:{r.name}": out / "reward_models" / r.name for r in REWARD_MODELS}
    paths |= {f"data:{k}": out / "data" / f for k, f in FUSION_FILES.items()}
    paths["benchmark"] = out / "data" / "benchmark.jsonl"
    paths["manifest"] = out / "_manifest.json"
    return paths


def _frac(*key: Any) -> float:
    """A stable pseudo-random number in [0, 1) from a key (independent of Python's hash seed)."""
    return zlib.crc32(json.dumps(key).encode()) / 2**32


def known_items(model: ToyModel, items: dict[str, list[Item]], preset: Preset, seed: int) -> list[Item]:
    """All items of the model's strong domain, and a fixed random share of every other domain's."""
    out = []
    for domain, its in items.items():
        for it in its:
            if domain == model.strong or _frac(seed, model.name, it.key) < preset.known_fraction:
                out.append(it)
    return out


def conversation(items: list[Item], style: str, system: bool) -> list[dict]:
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}] if system else []
    for it in items:
        msgs.append({"role": "user", "content": it.prompt})
        msgs.append({"role": "assistant", "content": it.gt if style == "gt" else it.short})
    return msgs


def training_conversations(known: list[Item], rng: random.Random) -> list[list[dict]]:
    """What a toy model is trained on: each known item alone (some with a system prompt), plus dialogues."""
    convs = [conversation([it], "short", system=rng.random() < 0.15) for it in known]
    for _ in range(max(1, len(known) // 6)):
        convs.append(conversation(rng.sample(known, k=min(2, len(known))), "short", system=False))
    return convs


def tokenizer_corpus(items: dict[str, list[Item]], template_examples: list[str]) -> list[str]:
    lines = []
    for its in items.values():
        for it in its:
            lines += [it.prompt, it.gt, it.short]
    return lines + template_examples + [SYSTEM_PROMPT]


def fusion_data(items: dict[str, list[Item]], preset: Preset, seed: int) -> dict[str, list[list[dict]]]:
    """The fusion dataset: ground-truth conversations sampled from every domain, plus multi-turn dialogues."""
    rng = random.Random(f"fusion-{seed}")
    out = {}
    for domain in DOMAINS:
        pool = items[domain]
        picked = rng.sample(pool, k=min(preset.n_fusion[domain], len(pool)))
        out[domain] = [conversation([it], "gt", system=domain == "strings") for it in picked]
    everything = [it for d in DOMAINS for it in items[d]]
    out["dialogue"] = [
        conversation(rng.sample(everything, k=rng.choice([2, 3, 4])), "gt", system=rng.random() < 0.5)
        for _ in range(preset.n_fusion["dialogue"])
    ]
    return out


def benchmark(items: dict[str, list[Item]], preset: Preset, seed: int) -> list[Item]:
    rng = random.Random(f"benchmark-{seed}")
    return [it for d in DOMAINS for it in rng.sample(items[d], k=min(preset.n_eval, len(items[d])))]


def write_fusion_files(data: dict[str, list[list[dict]]], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / FUSION_FILES["arith"], "w") as f:
        f.writelines(json.dumps({"messages": conv}) + "\n" for conv in data["arith"])
    role_from = {"user": "human", "assistant": "gpt", "system": "system"}
    sharegpt = [
        {"id": f"facts-{i}", "conversations": [{"from": role_from[m["role"]], "value": m["content"]} for m in conv]}
        for i, conv in enumerate(data["facts"])
    ]
    (folder / FUSION_FILES["facts"]).write_text(json.dumps(sharegpt, indent=1))
    orca = {
        "system_prompt": [c[0]["content"] for c in data["strings"]],
        "question": [c[1]["content"] for c in data["strings"]],
        "response": [c[2]["content"] for c in data["strings"]],
    }
    pq.write_table(pa.table(orca), folder / FUSION_FILES["strings"])
    with open(folder / FUSION_FILES["dialogue"], "w") as f:
        f.writelines(json.dumps({"messages": conv}) + "\n" for conv in data["dialogue"])


def write_benchmark(items: list[Item], path: Path) -> None:
    with open(path, "w") as f:
        for it in items:
            row = {"domain": it.domain, "key": it.key, "prompt": it.prompt, "answer": it.answer, "gt": it.gt}
            f.write(json.dumps(row) + "\n")


def rm_pairs(items: dict[str, list[Item]], rng: random.Random, n_wrong: int) -> list[tuple[list[dict], list[dict]]]:
    """(chosen, rejected) conversation pairs: a correct answer against `n_wrong` corruptions of it, in both
    the ground-truth and the short style (the reward model must judge the answer, not the style)."""
    pairs = []
    for domain in DOMAINS:
        for it in items[domain]:
            others = [o.answer for o in items[domain] if o.answer != it.answer]
            for style in ("short", "gt"):
                good = conversation([it], style, system=False)
                for wrong in rng.sample(others, k=min(n_wrong, len(others))):
                    bad = good[-1]["content"].replace(it.answer, wrong)
                    pairs.append((good, good[:-1] + [{"role": "assistant", "content": bad}]))
    return pairs


def stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"first": round(float(a[:10].mean()), 4), "last": round(float(a[-10:].mean()), 4)}
