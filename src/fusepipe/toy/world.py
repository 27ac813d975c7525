"""The toy world: a deterministic, local miniature of the papers' setting (DESIGN.md, "The toy world").

A pivot and three source chat models of different architectures and tokenizer families, three reward models of
clearly different strength, the fusion dataset in the formats people have (OpenAI messages, ShareGPT, Orca) and a
held-out benchmark. Everything is saved as Hugging Face folders that transformers and vLLM load like real models.

The premise it embodies, as the papers' setting does (FuseChat §1, ProFuser §1, InfiFusion §1): **each source is
a better predictor of the fusion data's responses than the pivot, in its own domain.**
- The fusion ground truth is written in a "house style" (`Item.gt`: a worked, detailed answer) that every toy
  model has seen in training, beside a short style (`Item.short`).
- A source is trained on every item of its own domain, in both styles; on the other domains, like the pivot, on a
  fixed random share (`known_fraction`). So a source knows its domain's ground truth and the pivot does not: its
  NLL per byte there is much lower (the manifest's `source_advantage`).
- The reward models judge the models' actual responses: they are trained on the models' own sampled answers
  (checked by the domain's checker) besides synthetic corruptions, and measured on held-out items' real
  candidate pairs (`reward_models.*.real_pair_accuracy`).
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

from fusepipe.toy.tasks import DOMAINS, Item, check
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
    """A reward model is built as real ones are: a language model first (here a Llama that learns `knows` of every
    domain's items, in both styles), then a scalar head trained on preference pairs, `label_noise` of them flipped."""

    name: str
    tokenizer_of: str  # reuses the tokenizer (and chat template) of this toy model
    strength: int  # 1 = strongest
    label_noise: float  # share of training pairs whose preference is flipped
    layers: int
    steps_scale: float  # preference steps, × preset.rm_steps
    knows: float = 1.0  # share of every domain's items its language model learns
    base_scale: float = 1.0  # language-model steps, × preset.lm_steps


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
    samples: int = 2  # sampled responses per model and item prompt: the reward models' real candidates
    rm_heldout: float = 0.2  # share of items whose real candidates only measure the reward models


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        sizes={"arith": 12, "facts": 40, "strings": 120}, n_eval=100,
        n_fusion={"arith": 96, "facts": 80, "strings": 80, "dialogue": 24},
        hidden=128, layers=2, intermediate=256, lm_steps=400, rm_steps=100, batch=32, lr=4e-3, rm_lr=1e-3,
        known_fraction=0.3,
    ),
    "small": Preset(
        sizes={"arith": 20, "facts": 60, "strings": 200}, n_eval=150,
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

# The homogeneous control (InfiFusion's same-tokenizer case): the arith expert again, trained the same way on the
# same items, but a Llama with the pivot's tokenizer, so its alignment onto the pivot is the identity. Built on
# demand by its own rule (`toy_twin`: config/twin.yaml, the tokenizer ablation grid), with the seed it would have
# as the world's fifth model; it feeds no reward model, so the world is the same with or without it.
TWIN = ToyModel("llama-arith-twin", "llama", MODELS[0].tokenizer, strong="arith")
TWIN_INDEX = len(MODELS)  # its seed is world seed + 101 · TWIN_INDEX


def models() -> tuple[ToyModel, ...]:
    """The world's toy language models (the twin is not one of them: `TWIN`)."""
    return MODELS


# rm-large reads the Llama family's vocabulary: with it, the same recipe orders held-out real answers .85-.88 of the
# time against .68-.70 with Qwen's (2 seeds; cutting the template's trailing newline does not close the gap), for
# less build time, as its sequences are shorter (benchmarks/RESULTS.md, "Toy reward models on real candidates").
REWARD_MODELS: tuple[ToyRewardModel, ...] = (
    ToyRewardModel("rm-large", "llama-pivot", strength=1, label_noise=0.0, layers=2, steps_scale=4.5, knows=1.0),
    ToyRewardModel("rm-medium", "llama-pivot", strength=2, label_noise=0.15, layers=2, steps_scale=1.5, knows=0.6),
    ToyRewardModel("rm-small", "mistral-facts", strength=3, label_noise=0.3, layers=1, steps_scale=0.6, knows=0.3,
                   base_scale=0.5),
)

# The fusion dataset: one file per source, each in a different format people actually have.
FUSION_FILES = {
    "arith": "arith.jsonl",  # OpenAI messages, JSONL
    "facts": "facts.json",  # ShareGPT conversations, one JSON array
    "strings": "strings.parquet",  # Orca style (system_prompt, question, response), Parquet
    "dialogue": "dialogue.jsonl",  # multi-turn OpenAI messages, JSONL
    "prompts": "prompts.jsonl",  # prompts without references (a `prompts_only` source), OpenAI messages, JSONL
}


def output_paths(out: str | Path) -> dict[str, Path]:
    """Every path the toy world writes, keyed for the Snakefile and the default config."""
    out = Path(out)
    paths = {f"model:{m.name}": out / "models" / m.name for m in models()}
    paths |= {f"rm:{r.name}": out / "reward_models" / r.name for r in REWARD_MODELS}
    paths |= {f"data:{k}": out / "data" / f for k, f in FUSION_FILES.items()}
    paths |= {f"candidates:{m.name}": out / "candidates" / f"{m.name}.jsonl" for m in models()}
    paths["benchmark"] = out / "data" / "benchmark.jsonl"
    paths["manifest"] = out / "_manifest.json"
    return paths


def twin_path(out: str | Path) -> Path:
    """The twin's model folder (its own rule's output; `_manifest.json` inside it says how it was built)."""
    return Path(out) / "models" / TWIN.name


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
    """What a toy model is trained on: each known item alone in both styles, the house style (the fusion ground
    truth's) and the short one (some with a system prompt), plus two-item dialogues."""
    convs = []
    for it in known:
        convs.append(conversation([it], "short", system=rng.random() < 0.15))
        convs.append(conversation([it], "gt", system=rng.random() < 0.15))
    for _ in range(max(1, len(known) // 6)):
        convs.append(conversation(rng.sample(known, k=min(2, len(known))), rng.choice(["short", "gt"]), system=False))
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


def prompt_set(items: dict[str, list[Item]], fusion: dict[str, list[list[dict]]]) -> list[list[dict]]:
    """The prompt set without references: one user turn for every item whose prompt no ground-truth conversation
    of the fusion data asks (the papers' prompt collections, which only ProFuser's inference mode can learn from:
    the sources answer them, the reward models vote)."""
    asked = {m["content"] for convs in fusion.values() for conv in convs for m in conv if m["role"] == "user"}
    return [[{"role": "user", "content": it.prompt}] for d in DOMAINS for it in items[d] if it.prompt not in asked]


def prompt_set_size(preset: str, seed: int) -> int:
    """How many prompts the toy world's prompt set will hold (for `fusepipe plan` before the world is built)."""
    from fusepipe.toy.tasks import all_items

    items = all_items(PRESETS[preset].sizes, seed)
    return len(prompt_set(items, fusion_data(items, PRESETS[preset], seed)))


def benchmark(items: dict[str, list[Item]], preset: Preset, seed: int) -> list[Item]:
    rng = random.Random(f"benchmark-{seed}")
    return [it for d in DOMAINS for it in rng.sample(items[d], k=min(preset.n_eval, len(items[d])))]


def write_fusion_files(data: dict[str, list[list[dict]]], prompts: list[list[dict]], folder: Path) -> None:
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
    with open(folder / FUSION_FILES["prompts"], "w") as f:
        f.writelines(json.dumps({"messages": conv}) + "\n" for conv in prompts)


def write_benchmark(items: list[Item], path: Path) -> None:
    with open(path, "w") as f:
        for it in items:
            row = {"domain": it.domain, "key": it.key, "prompt": it.prompt, "answer": it.answer, "gt": it.gt}
            f.write(json.dumps(row) + "\n")


def rm_heldout(item: Item, preset: Preset, seed: int) -> bool:
    """Items whose real candidates measure the reward models and never train them (a fixed random share)."""
    return _frac(seed, "rm-heldout", item.domain, item.key) < preset.rm_heldout


def corruption_pairs(items: dict[str, list[Item]], rng: random.Random, n_wrong: int) -> list[tuple[list[dict], list[dict]]]:
    """(chosen, rejected) conversation pairs: a correct answer against `n_wrong` corruptions of it, in both styles.
    These teach a reward model every item's answer (it must know an answer to judge a response to it)."""
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


def candidate_pairs(items: dict[str, list[Item]], candidates: list[dict], rng: random.Random | None,
                    per_item: int | None) -> list[tuple[list[dict], list[dict]]]:
    """(chosen, rejected) pairs of REAL responses to the same prompt: a correct one (by the domain's checker; the
    item's own answers in both styles count as correct ones too when `rng` is given) against each distinct wrong
    one. `candidates`: {"domain", "key", "response"} rows. With `rng`, at most `per_item` pairs per item, sampled;
    without, every (correct, wrong) combination of real candidates (the held-out measurement)."""
    by_key = {(it.domain, it.key): it for d in DOMAINS for it in items[d]}
    responses: dict[tuple[str, str], set[str]] = {}
    for row in candidates:
        if row["response"].strip():
            responses.setdefault((row["domain"], row["key"]), set()).add(row["response"].strip())
    pairs = []
    for key in sorted(responses):
        it = by_key[key]
        good = sorted(r for r in responses[key] if check(it, r))
        bad = sorted(r for r in responses[key] if not check(it, r))
        if rng is not None:
            good = sorted(set(good) | {it.gt, it.short})
        combos = [(g, b) for b in bad for g in good]
        if rng is not None and per_item is not None and len(combos) > per_item:
            combos = rng.sample(combos, per_item)
        user = [{"role": "user", "content": it.prompt}]
        pairs += [(user + [{"role": "assistant", "content": g}], user + [{"role": "assistant", "content": b}])
                  for g, b in combos]
    return pairs


def stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"first": round(float(a[:10].mean()), 4), "last": round(float(a[-10:].mean()), 4)}
