"""Model sizes without loading a model or touching the network: parameters, weight bytes, KV-cache bytes per token.

`param_count(spec)` (a ModelSpec or RewardModelSpec) tries, in order:
1. a local Hugging Face folder: its `config.json` read into an `Arch` and counted (below);
2. the spec's `params_b` (billions), when set;
3. `HUB`, a table of the papers' hub models (architectures from their config.json files);
4. None: the size is unknown (callers say so and ask for `params_b`).

Counting (all matrices, no buffers), per decoder layer with hidden h, heads a, KV heads g, head dim d:
- attention: q h·a·d + k,v 2·h·g·d + o a·d·h (+ biases where the architecture has them); DeepSeek-V2's MLA:
  q h·a·(d_nope+d_rope), kv_a h·(r_kv+d_rope), kv_b r_kv·a·(d_nope+d_v), o a·d_v·h, one norm of r_kv;
- MLP: gated (SwiGLU) 3·h·f, plain 2·h·f (+ biases); MoE: E·3·h·f_e + router h·E + shared experts S·3·h·f_e;
- norms: n per layer (2; Gemma-2 4) of h (RMSNorm) or 2·h (LayerNorm with bias), plus the final one;
- embeddings V·h (+ learned positions P·h), the LM head V·h unless tied, or a reward head h·labels instead.
`weight_bytes` is that × bytes per element; `kv_bytes_per_token` 2·L·g·d·bytes (MLA caches L·(r_kv+d_rope)).
Everything here is cheap (a dict lookup or one small JSON read, cached), so Snakemake rules may call it per job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}  # auto: checkpoints are bf16/fp16
TIED_BY_DEFAULT = {"gpt2", "gemma", "gemma2", "gemma3_text", "mpt"}


@dataclass(frozen=True)
class Arch:
    """A decoder-only transformer's shape, as far as parameter counts and KV caches need it."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    head_dim: int | None = None  # None: hidden // heads
    tied: bool = False
    gated: bool = True  # SwiGLU/GeGLU (3 matrices) or a plain MLP (2)
    experts: int = 1  # routed experts per MoE layer (1: dense)
    experts_per_token: int = 1
    moe_intermediate: int | None = None  # None: intermediate
    shared_experts: int = 0
    dense_layers: int = 0  # leading layers with a dense MLP (DeepSeek first_k_dense_replace)
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    norm_bias: bool = False  # LayerNorm with a bias (GPT-2) instead of RMSNorm
    norms_per_layer: int = 2
    positions: int = 0  # learned position embeddings (GPT-2)
    kv_lora_rank: int | None = None  # DeepSeek-V2 multi-head latent attention
    q_lora_rank: int | None = None
    qk_nope_dim: int = 0
    qk_rope_dim: int = 0
    v_head_dim: int = 0
    reward_labels: int = 0  # >0: a reward/classification head of this many outputs instead of the LM head

    @property
    def dim(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def attention(self) -> int:
        h, a, g, d = self.hidden, self.heads, self.kv_heads, self.dim
        if self.kv_lora_rank:
            qd = self.qk_nope_dim + self.qk_rope_dim
            q = (h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * a * qd) if self.q_lora_rank else h * a * qd
            kv = h * (self.kv_lora_rank + self.qk_rope_dim) + self.kv_lora_rank
            kv += self.kv_lora_rank * a * (self.qk_nope_dim + self.v_head_dim)
            return q + kv + a * self.v_head_dim * h
        n = h * a * d + 2 * h * g * d + a * d * h
        if self.qkv_bias:
            n += a * d + 2 * g * d
        return n + (h if self.out_bias else 0)

    def mlp(self, width: int) -> int:
        n = (3 if self.gated else 2) * self.hidden * width
        return n + (((2 if self.gated else 1) * width + self.hidden) if self.mlp_bias else 0)

    def ffn(self, active: bool = False) -> int:
        """The MLP parameters of all layers (active: only the experts a token is routed to)."""
        dense = self.mlp(self.intermediate)
        if self.experts <= 1:
            return self.layers * dense
        width = self.moe_intermediate or self.intermediate
        routed = self.experts_per_token if active else self.experts
        moe = routed * self.mlp(width) + self.shared_experts * self.mlp(width) + self.hidden * self.experts
        return self.dense_layers * dense + (self.layers - self.dense_layers) * moe

    def norms(self) -> int:
        return (self.norms_per_layer * self.layers + 1) * self.hidden * (2 if self.norm_bias else 1)

    def embeddings(self) -> int:
        return (self.vocab + self.positions) * self.hidden

    def head(self) -> int:
        if self.reward_labels:
            return self.hidden * self.reward_labels
        return 0 if self.tied else self.vocab * self.hidden

    def params(self, active: bool = False) -> int:
        return self.embeddings() + self.layers * self.attention() + self.ffn(active) + self.norms() + self.head()

    def compute_params(self) -> int:
        """Parameters a token's forward pass multiplies with (FLOPs ≈ 2 × this): active experts only, the
        input embedding lookup excluded, the LM head's V·h matmul included (tied or not)."""
        lookup = self.vocab * self.hidden + self.positions * self.hidden
        logits = 0 if self.reward_labels else self.vocab * self.hidden
        return self.params(active=True) - lookup - self.head() + logits + self.hidden * self.reward_labels

    def largest_tensor(self) -> int:
        """Elements of the largest single weight: the embedding / LM head, one MLP (or expert) matrix, or the
        attention projections (the streaming merge holds (K + 2) of these in fp32)."""
        width = max(self.intermediate, self.moe_intermediate or 0)
        return max(self.vocab * self.hidden, self.hidden * width, self.heads * self.dim * self.hidden)

    def kv_elements_per_token(self) -> int:
        if self.kv_lora_rank:
            return self.layers * (self.kv_lora_rank + self.qk_rope_dim)
        return 2 * self.layers * self.kv_heads * self.dim


# ---------------------------------------------------------------------------------------------- config.json


def from_config(c: dict[str, Any]) -> Arch:
    """An `Arch` from a Hugging Face config.json (llama, mistral, mixtral, qwen2, gemma2, phi3, internlm2,
    deepseek_v2, gpt2, mpt and alike). Raises KeyError/TypeError for configs without the usual keys."""
    mt = c.get("model_type", "")
    names = c.get("architectures") or []
    labels = 0
    if any(n.endswith("ForSequenceClassification") for n in names):
        labels = len(c["id2label"]) if c.get("id2label") else c.get("num_labels", 2)
    elif any("Reward" in n for n in names):
        labels = 1
    tied = c.get("tie_word_embeddings", mt in TIED_BY_DEFAULT)
    if mt == "gpt2":
        h = c["n_embd"]
        return Arch(hidden=h, layers=c["n_layer"], heads=c["n_head"], kv_heads=c["n_head"],
                    intermediate=c.get("n_inner") or 4 * h, vocab=c["vocab_size"], tied=tied, gated=False,
                    qkv_bias=True, out_bias=True, mlp_bias=True, norm_bias=True, positions=c["n_positions"],
                    reward_labels=labels)
    if mt == "mpt":
        h, heads = c["d_model"], c["n_heads"]
        kv = (c.get("attn_config") or {}).get("kv_n_heads") or heads
        bias = not c.get("no_bias", True)
        return Arch(hidden=h, layers=c["n_layers"], heads=heads, kv_heads=kv,
                    intermediate=int(c.get("expansion_ratio", 4) * h), vocab=c["vocab_size"], tied=True, gated=False,
                    qkv_bias=bias, out_bias=bias, mlp_bias=bias, norm_bias=bias, reward_labels=labels)
    heads = c["num_attention_heads"]
    experts = c.get("num_local_experts") or c.get("n_routed_experts") or c.get("num_experts") or 1
    return Arch(
        hidden=c["hidden_size"], layers=c["num_hidden_layers"], heads=heads,
        kv_heads=c.get("num_key_value_heads") or heads, intermediate=c["intermediate_size"],
        vocab=c["vocab_size"], head_dim=c.get("head_dim"), tied=tied,
        experts=experts, experts_per_token=c.get("num_experts_per_tok") or 1 if experts > 1 else 1,
        moe_intermediate=c.get("moe_intermediate_size"), shared_experts=c.get("n_shared_experts") or 0,
        dense_layers=(c.get("first_k_dense_replace") or 0) if experts > 1 else 0,
        qkv_bias=mt in ("qwen2", "qwen2_moe") or bool(c.get("attention_bias")) or (mt == "internlm2" and c.get("bias")),
        out_bias=bool(c.get("attention_bias")) and mt != "qwen2" or (mt == "internlm2" and bool(c.get("bias"))),
        mlp_bias=bool(c.get("mlp_bias")), norms_per_layer=4 if mt in ("gemma2", "gemma3_text") else 2,
        kv_lora_rank=c.get("kv_lora_rank"), q_lora_rank=c.get("q_lora_rank"),
        qk_nope_dim=c.get("qk_nope_head_dim") or 0, qk_rope_dim=c.get("qk_rope_head_dim") or 0,
        v_head_dim=c.get("v_head_dim") or 0, reward_labels=labels,
    )


# ---------------------------------------------------------------------------------------------- the papers' hub models

_MISTRAL_7B = Arch(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336, vocab=32000)
_LLAMA2_7B = Arch(hidden=4096, layers=32, heads=32, kv_heads=32, intermediate=11008, vocab=32000)
_LLAMA3_8B = Arch(hidden=4096, layers=32, heads=32, kv_heads=8, intermediate=14336, vocab=128256)
_QWEN25_7B = Arch(hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944, vocab=152064, qkv_bias=True)

HUB: dict[str, Arch] = {
    # FuseChat-7B (pivot OpenChat-3.5; sources)
    "openchat/openchat_3.5": replace(_MISTRAL_7B, vocab=32002),
    "berkeley-nest/starling-lm-7b-alpha": replace(_MISTRAL_7B, vocab=32002),
    "nousresearch/nous-hermes-2-solar-10.7b": replace(_MISTRAL_7B, layers=48, vocab=32002),
    "internlm/internlm2-chat-20b": Arch(hidden=6144, layers=48, heads=48, kv_heads=8, intermediate=16384, vocab=92544),
    "mistralai/mixtral-8x7b-instruct-v0.1": replace(_MISTRAL_7B, experts=8, experts_per_token=2),
    "qwen/qwen1.5-72b-chat": Arch(hidden=8192, layers=80, heads=64, kv_heads=64, intermediate=24576, vocab=152064,
                                  qkv_bias=True),
    "mistralai/mistral-7b-v0.1": _MISTRAL_7B,
    "mistralai/mistral-7b-instruct-v0.2": _MISTRAL_7B,
    # ProFuser (target Vicuna-7B-v1.5; sources; reward models)
    "lmsys/vicuna-7b-v1.5": _LLAMA2_7B,
    "meta-llama/llama-2-7b-chat-hf": _LLAMA2_7B,
    "mosaicml/mpt-7b-8k-chat": Arch(hidden=4096, layers=32, heads=32, kv_heads=32, intermediate=16384, vocab=50432,
                                    tied=True, gated=False),
    "openbmb/eurus-rm-7b": replace(_MISTRAL_7B, reward_labels=1),
    "sfairxc/fsfairx-llama3-rm-v0.1": replace(_LLAMA3_8B, reward_labels=1),
    "berkeley-nest/starling-rm-7b-alpha": replace(_LLAMA2_7B, reward_labels=1),
    # InfiFusion (pivot Llama-3.1-8B; homogeneous and heterogeneous sources)
    "meta-llama/llama-3.1-8b": _LLAMA3_8B,
    "meta-llama/meta-llama-3.1-8b": _LLAMA3_8B,
    "meta-llama/llama-3.1-8b-instruct": _LLAMA3_8B,
    "meta-llama/meta-llama-3.1-8b-instruct": _LLAMA3_8B,
    "meta-llama/meta-llama-3-8b-instruct": _LLAMA3_8B,
    "ajibawa-2023/code-llama-3-8b": _LLAMA3_8B,
    "nvidia/openmath2-llama3.1-8b": _LLAMA3_8B,
    "qwen/qwen2.5-math-7b-instruct": _QWEN25_7B,
    "qwen/qwen2.5-7b-instruct": _QWEN25_7B,
    "deepseek-ai/deepseek-coder-v2-lite-instruct": Arch(
        hidden=2048, layers=27, heads=16, kv_heads=16, intermediate=10944, vocab=102400, experts=64,
        experts_per_token=6, moe_intermediate=1408, shared_experts=2, dense_layers=1, kv_lora_rank=512,
        qk_nope_dim=128, qk_rope_dim=64, v_head_dim=128),
    # other common members
    "google/gemma-2-9b-it": Arch(hidden=3584, layers=42, heads=16, kv_heads=8, intermediate=14336, vocab=256000,
                                 head_dim=256, tied=True, norms_per_layer=4),
    "microsoft/phi-3-mini-4k-instruct": Arch(hidden=3072, layers=32, heads=32, kv_heads=32, intermediate=8192,
                                             vocab=32064),
}


# ---------------------------------------------------------------------------------------------- lookups


@lru_cache(maxsize=256)
def _local_arch(path: str, mtime: float) -> Arch | None:
    try:
        return from_config(json.loads((Path(path) / "config.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _resolve(spec: Any) -> tuple[Arch | None, int | None]:
    """(architecture, parameters) by the precedence of `param_count`; either may be None."""
    cfg = Path(str(spec.path)) / "config.json"
    if cfg.is_file():
        found = _local_arch(str(cfg.parent), cfg.stat().st_mtime)
        if found is not None:
            if hasattr(spec, "strength") and not found.reward_labels:  # a reward model: a scalar head, no LM head
                found = replace(found, reward_labels=1)
            return found, found.params()
    hub = HUB.get(str(spec.path).strip("/").lower())
    if getattr(spec, "params_b", None):
        return hub, round(spec.params_b * 1e9)
    return hub, hub.params() if hub else None


def arch(spec: Any) -> Arch | None:
    """The architecture of a spec's model: its local config.json, else the hub table (None: unknown)."""
    return _resolve(spec)[0]


def param_count(spec: Any) -> int | None:
    """Parameters of a ModelSpec/RewardModelSpec: local config.json, else `params_b`, else the hub table, else None."""
    return _resolve(spec)[1]


def compute_params(spec: Any) -> int | None:
    """Parameters a token's forward pass multiplies with (`Arch.compute_params`: MoE routed experts only); with
    only `params_b` known, that, scaled like the architecture's ratio when the hub table has it."""
    found, n = _resolve(spec)
    if n is None:
        return None
    if found is None:
        return n
    return int(n * found.compute_params() / found.params())


def dtype_bytes(dtype: str | None) -> int:
    if dtype not in DTYPE_BYTES and dtype is not None:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype or "auto"]


def weight_bytes(spec: Any, dtype: str | None = None) -> int | None:
    """Bytes of the weights: param_count × bytes per element of `dtype` (default: the spec's; auto = 2)."""
    n = param_count(spec)
    return None if n is None else n * dtype_bytes(dtype or getattr(spec, "dtype", None))


def kv_bytes_per_token(spec: Any, dtype: str | None = None) -> int | None:
    """KV-cache bytes per token: 2·layers·kv_heads·head_dim·bytes (MLA: layers·(kv_lora_rank+rope_dim)·bytes)."""
    found = arch(spec)
    return None if found is None else found.kv_elements_per_token() * dtype_bytes(dtype or getattr(spec, "dtype", None))
