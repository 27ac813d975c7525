"""The `generate` stage's settings (`generate:` in the config)."""

from __future__ import annotations

from pydantic import Field

from fusepipe.params import Strict


class GenerateConfig(Strict):
    """Inference mode (ProFuser): sample responses from every model of the fusion.

    ProFuser samples one hypothesis per model and reports top-p 0.95, top-k 10, temperature 2 "for both training
    and inference phases"; temperature 2 with top-k 10 reads like the distillation setting, so sampling and
    distillation are separate keys here (distillation settings belong to the fusion stages).
    """

    n: int = Field(default=1, ge=1, description="Responses per prompt and model (ProFuser: 1).")
    seed: int = Field(default=0, description="Base seed; each response's seed hashes (seed, sample_id, model, index).")
    temperature: float = Field(default=1.0, ge=0, description="0 = greedy.")
    top_p: float = Field(default=0.95, gt=0, le=1)
    top_k: int = Field(default=0, ge=0, description="0 = no top-k filter.")
    max_tokens: int = Field(default=512, ge=1)
    shards: int = Field(default=1, ge=1, description="Shards of the prompts; one job per (model, shard).")
    batch_size: int = Field(default=512, ge=1, description="Requests per engine call.")
    models: list[str] | None = Field(default=None, description="Models that generate; None = all `models`.")
