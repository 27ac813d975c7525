"""Model configs of the toy world: four causal-LM architectures and a Llama sequence classifier.

vLLM's CPU attention needs head_dim in {32, 64, 80, 96, 112, 128, ...}: hidden 128 with 4 heads gives 32.
"""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    LlamaForSequenceClassification,
    MistralConfig,
    Qwen2Config,
)

from fusepipe.toy.world import Preset


def causal_lm(arch: str, vocab: int, preset: Preset, special: dict[str, int | None], seed: int):
    torch.manual_seed(seed)
    h, n_layers, inter = preset.hidden, preset.layers, preset.intermediate
    heads = h // 32
    common = {"vocab_size": vocab, "bos_token_id": special["bos"], "eos_token_id": special["eos"],
              "pad_token_id": special["pad"]}
    if arch == "gpt2":
        cfg = GPT2Config(n_embd=h, n_layer=n_layers, n_head=heads, n_inner=inter, n_positions=1024, **common)
    else:
        cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[arch]
        extra = {"sliding_window": None} if arch == "mistral" else {}
        cfg = cls(
            hidden_size=h, intermediate_size=inter, num_hidden_layers=n_layers, num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2), max_position_embeddings=1024,
            tie_word_embeddings=arch == "qwen2", **extra, **common,
        )
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)


def reward_model(vocab: int, preset: Preset, layers: int, special: dict[str, int | None], seed: int):
    torch.manual_seed(seed)
    h = preset.hidden
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=h, intermediate_size=preset.intermediate, num_hidden_layers=layers,
        num_attention_heads=h // 32, num_key_value_heads=max(1, h // 64), max_position_embeddings=1024,
        num_labels=1, bos_token_id=special["bos"], eos_token_id=special["eos"], pad_token_id=special["pad"],
    )
    return LlamaForSequenceClassification(cfg).to(torch.float32)
