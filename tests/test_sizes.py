"""fusepipe.sizes: parameter counts from config.json against the real parameter count of tiny models of every
architecture family the papers use, the precedence local folder > params_b > hub table, and byte sizes."""

import pytest
import torch
import transformers as tf

from fusepipe import sizes
from fusepipe.config import ModelSpec, RewardModelSpec

SMALL = {"vocab_size": 300, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
         "num_attention_heads": 4}


def tiny(kind):
    """(config, model class) of a tiny model of each architecture family."""
    if kind == "llama":
        return tf.LlamaConfig(num_key_value_heads=2, **SMALL), tf.AutoModelForCausalLM
    if kind == "llama-bias":
        return tf.LlamaConfig(num_key_value_heads=2, attention_bias=True, mlp_bias=True, **SMALL), tf.AutoModelForCausalLM
    if kind == "mistral":
        return tf.MistralConfig(num_key_value_heads=2, sliding_window=None, **SMALL), tf.AutoModelForCausalLM
    if kind == "qwen2-tied":
        return tf.Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True, **SMALL), tf.AutoModelForCausalLM
    if kind == "mixtral":
        return (tf.MixtralConfig(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, **SMALL),
                tf.AutoModelForCausalLM)
    if kind == "gemma2":
        return tf.Gemma2Config(num_key_value_heads=2, head_dim=32, **SMALL), tf.AutoModelForCausalLM
    if kind == "phi3":
        return tf.Phi3Config(num_key_value_heads=4, pad_token_id=0, **SMALL), tf.AutoModelForCausalLM
    if kind == "gpt2":
        return tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_inner=96, n_positions=128, vocab_size=300), \
            tf.AutoModelForCausalLM
    if kind == "mpt":
        return tf.MptConfig(d_model=64, n_heads=4, n_layers=2, expansion_ratio=4, vocab_size=300), tf.AutoModelForCausalLM
    if kind == "deepseek_v2":
        return tf.DeepseekV2Config(
            num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
            n_shared_experts=2, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=16,
            qk_rope_head_dim=8, v_head_dim=16, n_group=1, topk_group=1, **SMALL), tf.AutoModelForCausalLM
    if kind == "llama-rm":
        return tf.LlamaConfig(num_key_value_heads=2, num_labels=1, **SMALL), tf.AutoModelForSequenceClassification
    raise AssertionError(kind)


KINDS = ["llama", "llama-bias", "mistral", "qwen2-tied", "mixtral", "gemma2", "phi3", "gpt2", "mpt", "deepseek_v2",
         "llama-rm"]


@pytest.mark.parametrize("kind", KINDS)
def test_param_count_from_config_json_equals_the_models_parameters(tmp_path, kind):
    cfg, cls = tiny(kind)
    cfg.save_pretrained(tmp_path)
    torch.manual_seed(0)
    model = cls.from_config(cfg)
    real = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    spec = ModelSpec(name="m", path=str(tmp_path), role="source")
    if kind == "llama-rm":  # no `architectures` in a bare config: a RewardModelSpec means a scalar head
        spec = RewardModelSpec(name="r", path=str(tmp_path), strength=1)
    assert sizes.param_count(spec) == real, kind
    assert sizes.weight_bytes(spec, "bfloat16") == 2 * real and sizes.weight_bytes(spec, "float32") == 4 * real


def test_mixture_of_experts_compute_uses_the_routed_experts_only(tmp_path):
    cfg, _ = tiny("mixtral")
    cfg.save_pretrained(tmp_path)
    arch = sizes.arch(ModelSpec(name="m", path=str(tmp_path), role="source"))
    assert arch.experts == 4 and arch.experts_per_token == 2
    dense = sizes.Arch(**{**SMALL_ARCH, "kv_heads": 2})
    assert arch.compute_params() == dense.compute_params() + 2 * 64 * 4  # two experts = one dense MLP, plus routers
    mixtral = sizes.HUB["mistralai/mixtral-8x7b-instruct-v0.1"]
    assert 46.6e9 < mixtral.params() < 46.8e9 and 12.5e9 < mixtral.compute_params() < 13.0e9


SMALL_ARCH = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 4, "intermediate": 2 * 96, "vocab": 300}


@pytest.mark.parametrize(
    "hub_id, billions",
    [
        ("openchat/openchat_3.5", 7.24), ("NousResearch/Nous-Hermes-2-SOLAR-10.7B", 10.73),
        ("internlm/internlm2-chat-20b", 19.86), ("Qwen/Qwen1.5-72B-Chat", 72.29), ("lmsys/vicuna-7b-v1.5", 6.74),
        ("mosaicml/mpt-7b-8k-chat", 6.65), ("meta-llama/Llama-3.1-8B", 8.03), ("Qwen/Qwen2.5-Math-7B-Instruct", 7.62),
        ("deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct", 15.71), ("google/gemma-2-9b-it", 9.24),
        ("sfairXC/FsfairX-LLaMA3-RM-v0.1", 7.50),
    ],
)
def test_hub_table_matches_the_published_sizes(hub_id, billions):
    spec = ModelSpec(name="m", path=hub_id, role="source")
    assert sizes.param_count(spec) / 1e9 == pytest.approx(billions, abs=0.01)


def test_precedence_local_then_params_b_then_hub_then_unknown(tmp_path):
    hub = ModelSpec(name="m", path="meta-llama/Llama-3.1-8B", role="pivot")
    assert sizes.param_count(hub) == 8_030_261_248
    assert sizes.param_count(hub.model_copy(update={"params_b": 8.5})) == 8_500_000_000
    unknown = RewardModelSpec(name="r", path="someone/unknown-rm", strength=1)
    assert sizes.param_count(unknown) is None and sizes.weight_bytes(unknown) is None
    assert sizes.kv_bytes_per_token(unknown) is None
    assert sizes.param_count(unknown.model_copy(update={"params_b": 2.0})) == 2_000_000_000
    cfg, _ = tiny("llama")
    cfg.save_pretrained(tmp_path)
    local = ModelSpec(name="m", path=str(tmp_path), role="source", params_b=99.0)  # config.json wins
    assert sizes.param_count(local) < 1e6


def test_kv_cache_bytes_per_token():
    llama3 = ModelSpec(name="m", path="meta-llama/Llama-3.1-8B", role="pivot", dtype="bfloat16")
    assert sizes.kv_bytes_per_token(llama3) == 2 * 32 * 8 * 128 * 2  # 128 KiB: GQA with 8 KV heads
    qwen72 = ModelSpec(name="m", path="Qwen/Qwen1.5-72B-Chat", role="source")
    assert sizes.kv_bytes_per_token(qwen72) == 2 * 80 * 64 * 128 * 2
    ds = ModelSpec(name="m", path="deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct", role="source")
    assert sizes.kv_bytes_per_token(ds, "float32") == 27 * (512 + 64) * 4  # MLA caches the latent


def test_lookups_are_cheap_and_offline(monkeypatch):
    import socket
    import time

    monkeypatch.setattr(socket, "socket", lambda *a, **k: (_ for _ in ()).throw(AssertionError("network")))
    spec = ModelSpec(name="m", path="Qwen/Qwen1.5-72B-Chat", role="source")
    t = time.perf_counter()
    for _ in range(1000):
        sizes.param_count(spec)
        sizes.weight_bytes(spec, "bfloat16")
    assert time.perf_counter() - t < 1.0
