"""The `evaluate` stage's settings (`evaluate:` in the config)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fusepipe.params import Strict


class SuiteConfig(Strict):
    """An evaluation suite (overrides the preset of the same name; docs/evaluate.md)."""

    kind: Literal["lm_eval", "toy", "rm", "transfer"] | None = None
    tasks: list[str] | None = Field(default=None, description="lm-eval tasks as 'name' or 'name:num_fewshot'.")
    limit: float | None = Field(default=None, gt=0, description="lm-eval: examples per task (or a fraction).")
    batch_size: int | None = Field(default=None, ge=1)
    apply_chat_template: bool | None = None
    max_prompts: int | None = Field(
        default=None, ge=1, description="rm: held-out prompts judged; transfer: fusion conversations measured."
    )
    max_tokens: int | None = Field(default=None, ge=1, description="rm: tokens per greedy response.")


class EvaluateConfig(Strict):
    """Which suites every model of the run is evaluated on (fusepipe.evaluate)."""

    run: list[str] | None = Field(
        default=None,
        description="Suites per model: presets open_llm, infifusion, fusechat (lm-eval), toy (local task), rm "
        "(reward-model judge), transfer (KL of the model to each source's aligned distributions on the fusion "
        "data), or names defined under `suites`. None: toy (if the toy world is on) and rm (if "
        "there are reward models).",
    )
    suites: dict[str, SuiteConfig] = Field(default_factory=dict)
    engine: Literal["auto", "vllm", "hf"] | None = Field(
        default=None, description="Engine for the rm suite's generation and scoring; None: each model's own."
    )
