"""benchmarks/gpu_check.sh: its CPU form (`--smoke`) runs the same code paths as the GPU run, with the modules the
device image lacks blocked, so the GPU run cannot fail on an import; the wheels its header carries cover what
fusepipe's training loop needs beyond the image."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
ABSENT_ON_DEVICE = "polars,vllm,datasets,snakemake"
IMAGE = {"torch", "numpy", "packaging", "psutil", "py-cpuinfo", "msgpack", "ninja", "einops", "tqdm", "transformers",
         "accelerate", "numba", "pyarrow", "tokenizers", "safetensors", "pyyaml", "click", "rich", "typing-extensions"}
"""What the device image holds (/work/.library/device/KINDS.md, "Python packages already there"), as far as the
check needs it."""


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def carried() -> dict[str, str]:
    """NAME==VERSION of the wheels the script's header makes (pip download + pip wheel lines)."""
    header = SCRIPT.read_text().split("set -euo pipefail")[0]
    return {norm(n): v for n, v in re.findall(r"\b([A-Za-z][\w.-]*)==([\w.]+)", header)}


def test_smoke_runs_the_gpu_code_paths_on_cpu_with_the_device_gaps(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "FUSEPIPE_BLOCK_IMPORTS": ABSENT_ON_DEVICE,
           "PYTHONPATH": str(REPO / "src")}  # fmt: skip
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(["bash", str(SCRIPT), "--smoke", "--json", str(out)], cwd=tmp_path, env=env, check=False,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "gpu_check: ok" in proc.stdout
    result = json.loads(out.read_text())
    assert set(result["loss_step"]) == {"sft", "fusion"}
    assert all(r["step_s"] > 0 and r["peak_mib"] > 0 for r in result["loss_step"].values())
    ds = result["deepspeed_step"]
    assert ds["zero_stage"] == 2 and ds["steps"] == 1 and ds["model_written"] and ds["loss"] > 0


def test_the_gpu_size_is_1b_and_its_flops():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check

    size = gpu_check.sizes(smoke=False, batch=4)
    total, compute = gpu_check.n_params(size)
    assert (size.seq, size.dtype) == (2048, "bfloat16") and 1.0e9 < total < 1.2e9
    from transformers import LlamaConfig, LlamaForCausalLM

    small = gpu_check.sizes(smoke=True, batch=2)  # the formula against a real model's parameter count
    model = LlamaForCausalLM(LlamaConfig(hidden_size=small.hidden, num_hidden_layers=small.layers,
                                         num_attention_heads=small.heads, num_key_value_heads=small.kv_heads,
                                         intermediate_size=small.intermediate, vocab_size=small.vocab,
                                         tie_word_embeddings=False))  # fmt: skip
    assert gpu_check.n_params(small)[0] == sum(p.numel() for p in model.parameters())
    assert gpu_check.flops_per_step(size) == 4 * 2048 * (6 * compute + 12 * 16 * 2048 * 2048)
    assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.4
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe", None) == 756.0


def test_carried_wheels_cover_the_training_loop_and_match_this_environment():
    wheels = carried()
    assert {"deepspeed", "pydantic", "pydantic-core", "hjson"} <= set(wheels)
    for dist in ("deepspeed", "pydantic", "pydantic-core", "typing-inspection"):
        for req in importlib.metadata.requires(dist) or []:
            if "extra ==" in req:
                continue
            name = norm(re.match(r"[A-Za-z0-9][\w.-]*", req).group(0))
            assert name in wheels or name in IMAGE, f"{dist} needs {name}: carry its wheel or check the image has it"
    for name, version in wheels.items():  # the smoke test ran these versions: the GPU run gets the same
        assert importlib.metadata.version(name) == version, f"{name}: carried {version}, this venv has another"
