"""The `train` stage's settings (a recipe's `schedule:` phases and `train:`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fusepipe.params import Strict


class PhaseConfig(Strict):
    """One phase of a schedule: its data (modes), epochs and loss weights.

    L = Σ_mode w_mode · (sft_weight · L_SFT + fusion_weight · L_fusion), token mean (ProFuser Eq. 4-5)."""

    name: str = "train"
    modes: list[Literal["gt", "inf"]] = Field(default=["gt"], min_length=1)
    epochs: float = Field(default=1.0, gt=0)
    sft_weight: float = Field(default=1.0, ge=0)
    fusion_weight: float = Field(default=0.0, ge=0)
    mode_weights: dict[str, float] = Field(default_factory=dict, description="w per mode (default 1).")
    order: Literal["shuffle", "length"] = Field(
        default="shuffle", description="length: short to long ground truth (ProFuser's GTLen curriculum)."
    )


class TrainConfig(Strict):
    """DeepSpeed ZeRO fine-tuning of the pivot (fusepipe.train)."""

    lr: float = Field(default=5e-6, gt=0)
    global_batch: int = Field(default=128, ge=1, description="Sequences per optimizer step (all ranks).")
    micro_batch: int = Field(default=4, ge=1, description="Sequences per forward pass and rank.")
    max_len: int = Field(default=2048, ge=16)
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: float = Field(default=1.0, ge=0)
    zero_stage: Literal[2, 3] = 2
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto", description="auto: bfloat16 on GPUs, float32 on CPUs."
    )
    gradient_checkpointing: bool = True
    loss: Literal["ce", "kl", "reverse_kl", "jsd"] = "ce"
    temperature: float = Field(default=1.0, gt=0, description="Distillation temperature on the teacher top-k.")
    save_every: int = Field(default=200, ge=1, description="Checkpoint every N optimizer steps.")
    max_steps: int | None = Field(default=None, ge=1, description="Stop after N steps (smoke tests).")
    epochs_scale: float = Field(default=1.0, gt=0, description="Multiplies every phase's epochs (short runs).")
    keep_checkpoints: bool = Field(default=False, description="Keep checkpoints/ after the model is written.")
    seed: int = 0
    gpus: int = Field(default=1, ge=1, description="Processes (GPUs) per node of a training job on a cluster.")
    nodes: int = Field(default=1, ge=1, description="Nodes of a training job (> 1: one torchrun per node, srun).")
