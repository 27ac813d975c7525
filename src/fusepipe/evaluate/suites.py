"""Named evaluation suites: the papers' benchmark lists with their few-shot settings, the toy world's local task,
and the reward-model judge. `evaluate.suites` in the config adds or overrides suites by name."""

from __future__ import annotations

from typing import Any

# "task:num_fewshot" as the papers report them ("task" alone: the task's own default)
PRESETS: dict[str, dict[str, Any]] = {
    # ProFuser Table 1 / the Open LLM Leaderboard v1 settings
    "open_llm": {"kind": "lm_eval", "tasks": ["mmlu:5", "hellaswag:10", "arc_challenge:25", "winogrande:5",
                                             "gsm8k:5", "truthfulqa_mc2:0"]},
    # InfiFusion Table 2 (general, math, code)
    "infifusion": {"kind": "lm_eval", "tasks": ["mmlu:5", "gsm8k:8", "minerva_math:4", "humaneval:0"]},
    # FuseChat Tables 1-3 (the lm-eval-runnable part; MT-Bench / AlpacaEval need GPT-4 judges)
    "fusechat": {"kind": "lm_eval", "tasks": ["mmlu_pro:5", "piqa:0", "boolq:0", "gpqa_main_zeroshot:0", "gsm8k:5",
                                             "ifeval:0"]},
    # the toy world's held-out benchmark as a local lm-eval task (exact match per domain), offline
    "toy": {"kind": "toy"},
    # mean reward-model score of greedy responses to held-out prompts, and win rate against the pivot
    "rm": {"kind": "rm"},
    # what a model took from each source beyond the ground truth: KL(source aligned ‖ model) on the fusion data
    # (evaluate/transfer.py); models with the pivot's tokenizer only (the pivot, trained and merged models)
    "transfer": {"kind": "transfer", "max_prompts": 400},
}


def resolve(name: str, overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A suite's settings: the config's `evaluate.suites[name]` over the preset of that name."""
    from fusepipe.errors import ConfigError

    base = PRESETS.get(name, {})
    over = overrides.get(name, {})
    if not base and not over:
        raise ConfigError(f"evaluate.run: unknown suite {name!r}; presets: {', '.join(PRESETS)}, or define it "
                          "under evaluate.suites")
    suite = {"kind": "lm_eval", "tasks": [], "limit": None, "batch_size": 16, "apply_chat_template": True,
             "max_prompts": 200, "max_tokens": 128, **base, **{k: v for k, v in over.items() if v is not None}}
    suite["name"] = name
    return suite


def task_shots(entry: str) -> tuple[str, int | None]:
    name, _, shots = entry.partition(":")
    return name, int(shots) if shots else None
