"""Toy checkpoints for the merge tests: a small random Llama pivot and targets "fine-tuned" from it
(pivot + noise whose scale varies per tensor and per target)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

TOY = {"hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
           "intermediate_size": 256, "vocab_size": 300}  # fmt: skip
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"


def tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_pivot(path: Path, seed: int = 0, **overrides) -> Path:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**TOY, **overrides}))
    model.save_pretrained(path)
    tokenizer(model.config.vocab_size).save_pretrained(path)
    return path


def make_target(
    pivot: Path, path: Path, seed: int, scale: float = 0.01, rows: int | None = None, norm_scale: float | None = None
) -> Path:
    """pivot + N(0, (scale·u)²) per tensor, u ~ U(0.5, 2) per tensor; `rows` resizes the vocabulary;
    `norm_scale` replaces `scale` for the norm weights (tiny deltas: under mergekit's SCE weight guard)."""
    model = AutoModelForCausalLM.from_pretrained(pivot)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            u = 0.5 + 1.5 * torch.rand((), generator=g)
            s = norm_scale if norm_scale is not None and "norm" in name else scale
            p.add_(torch.randn(p.shape, generator=g) * s * u)
        if rows is not None:
            model.resize_token_embeddings(rows, mean_resizing=False)
    model.save_pretrained(path)
    for f in pivot.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy2(f, path / f.name)
    return path


@pytest.fixture(scope="session")
def toy_ckpts(tmp_path_factory) -> dict[str, Path]:
    """pivot, targets t1..t3 (noise 0.01), t_big (vocab 310 rows), n1/n2 (noise 0.01, norm weights 1e-3:
    every target's norm deltas fall under mergekit's SCE weight guard)."""
    root = tmp_path_factory.mktemp("toy_ckpts")
    pivot = make_pivot(root / "pivot")
    out = {"pivot": pivot, "root": root}
    for i in (1, 2, 3):
        out[f"t{i}"] = make_target(pivot, root / f"t{i}", seed=i)
    for i in (1, 2):
        out[f"n{i}"] = make_target(pivot, root / f"n{i}", seed=10 + i, norm_scale=1e-3)
    out["t_big"] = make_target(pivot, root / "t_big", seed=7, rows=310)
    return out


@pytest.fixture(scope="session")
def tied_ckpts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tied")
    pivot = make_pivot(root / "pivot", tie_word_embeddings=True)
    return {
        "pivot": pivot,
        "t1": make_target(pivot, root / "t1", 1),
        "t2": make_target(pivot, root / "t2", 2),
    }
