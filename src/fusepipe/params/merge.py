"""Merge settings as pydantic models, without torch: the per-method parameters, `MergeConfig` (read by the engine
and the mergekit export) and `MergeStageConfig` (the pipeline config's `merge:`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fusepipe.errors import FusepipeError


class MergeError(FusepipeError, ValueError):
    """A merge input or setting a user can fix; the message is one line naming tensor, models and fix."""


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Weights = list[float] | None
WEIGHTS_DOC = "Per-target weights, in target order; None = 1 each."


class SceParams(Params):
    """SCE, FuseChat §2.4 Algorithm 1 (Eq. 5-9)."""

    tau: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description="Select ratio τ: top fraction of elements by variance (FuseChat B.2: 0.1).",
    )
    semantics: Literal["fusechat", "mergekit"] = Field(
        default="fusechat",
        description="fusechat: the selection mask only feeds the coefficients, erase/merge use full deltas "
        "(FuseChat's sce_merging.py); mergekit: mergekit 0.1.5's `sce` rule for rule (the mask applied to the "
        "deltas, uniform weights under its 1e-6 guard, the pivot's tensor where nothing is selected).",
    )


class RsafParams(Params):
    """RSAF, InfiFusion Appendix A Algorithm 1 (Eq. 8-13)."""

    tau: float = Field(default=0.1, gt=0, le=1, description="Base top-K ratio τ (InfiFusion App. B: 0.1).")
    rate: Literal["element", "matrix"] = Field(
        default="element",
        description="element: r = |δ|/(|θ_pivot|+ε) per element (Eq. 8); matrix: r = |δ|/(RMS(θ_pivot)+ε), "
        "whose skewness is that of |δ|.",
    )
    select_by: Literal["magnitude", "rate"] = Field(
        default="magnitude",
        description="Rank elements by |δ| (TIES-style Select) or by the rate r (rate matrix: the order of |δ|).",
    )
    eps: float = Field(default=1e-8, gt=0, description="ε in the rate's denominator.")
    disjoint_mean: bool = Field(
        default=True,
        description="true: divide by Σ_j η_j e_j per element as SCE's code does; false: Eq. 13 literally "
        "(θ + Σ_j η_j δ'_j).",
    )


class TaskArithmeticParams(Params):
    """Task arithmetic, Ilharco et al. 2023: θ = θ_pivot + λ Σ_j w_j δ_j."""

    scaling: float = Field(default=0.3, description="λ (FuseChat B.2 best of 0.3/0.4/0.5).")
    weights: Weights = Field(default=None, description=WEIGHTS_DOC)


class TiesParams(Params):
    """TIES, Yadav et al. 2023: trim, elect sign, disjoint mean."""

    density: float = Field(
        default=0.6,
        gt=0,
        le=1,
        description="Fraction of each δ_j kept by magnitude (FuseChat B.2: trim 0.4).",
    )
    scaling: float = Field(default=1.0, description="λ applied to the merged delta.")
    weights: Weights = Field(default=None, description=WEIGHTS_DOC)


class DareParams(Params):
    """DARE, Yu et al. 2024: drop each delta element with probability p, rescale by 1/(1-p), combine."""

    drop_rate: float = Field(default=0.4, ge=0, lt=1, description="Drop probability p (FuseChat B.2: 0.4).")
    rescale: bool = Field(default=True, description="Multiply kept elements by 1/(1-p).")
    seed: int = Field(default=0, description="Seed; each (tensor, target) draws from its own derived stream.")
    combine: Literal["ties", "linear"] = Field(
        default="ties", description="ties: sign election + disjoint mean; linear: weighted mean Σ w δ / Σ w."
    )
    scaling: float = Field(default=1.0, description="λ applied to the merged delta.")
    weights: Weights = Field(default=None, description=WEIGHTS_DOC)


class LinearParams(Params):
    """Linear (model soup), Wortsman et al. 2022: θ = Σ_j w_j θ_j / Σ_j w_j over the targets."""

    weights: Weights = Field(default=None, description=WEIGHTS_DOC)


class SlerpParams(Params):
    """SLERP between two models (Shoemake 1985), per tensor, as mergekit's `slerp`."""

    t: float = Field(default=0.5, ge=0, le=1, description="Interpolation factor; 0 = first endpoint.")
    dot_threshold: float = Field(
        default=0.9995, gt=0, le=1, description="|cos Ω| above this falls back to linear interpolation."
    )
    eps: float = Field(default=1e-8, gt=0, description="Norms at or below ε are not normalised.")


class MergeConfig(BaseModel):
    """The `merge` stage's settings: the method, its parameters, and how the output is written."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["sce", "rsaf", "task_arithmetic", "ties", "dare", "linear", "slerp"] = "sce"
    sce: SceParams = SceParams()
    rsaf: RsafParams = RsafParams()
    task_arithmetic: TaskArithmeticParams = TaskArithmeticParams()
    ties: TiesParams = TiesParams()
    dare: DareParams = DareParams()
    linear: LinearParams = LinearParams()
    slerp: SlerpParams = SlerpParams()
    embedding_policy: Literal["crop", "pivot"] = Field(
        default="crop",
        description="Embeddings/LM heads whose row counts differ. Both keep the pivot's rows (its tokenizer "
        "is copied). crop (FuseChat): cut longer targets to the pivot's rows; a shorter target is an error. "
        "pivot: merge the rows every model has; rows only some models have keep the pivot's values.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Output dtype of floating tensors; auto = the pivot's, per tensor."
    )
    max_shard_bytes: int = Field(default=5_000_000_000, ge=1, description="Largest output shard in bytes.")
    threads: int = Field(
        default=1,
        ge=1,
        description="torch intra-op threads while merging. Blocks are cache-sized, so OpenMP synchronising "
        "every op outweighs a second thread on small or shared machines (measured 2-6x slower with 2 threads "
        "on 2 cores); measure before raising it.",
    )

    def method_params(self) -> Params:
        return getattr(self, self.method)


class MergeStageConfig(MergeConfig):
    """Merging each pairwise recipe's targets (`merge/{recipe}/{method}/model/`; docs/merge.md)."""

    methods: list[Literal["sce", "rsaf", "task_arithmetic", "ties", "dare", "linear", "slerp"]] = Field(
        default=["sce"], description="Methods to merge with, one model each (FuseChat: sce; InfiFusion: rsaf)."
    )
    recipes: list[str] | None = Field(default=None, description="Recipes to merge; None = every pairwise one.")


def load_config(params: dict[str, Any] | MergeConfig) -> MergeConfig:
    """Validate the merge config slice; a bad key or value is a one-line MergeError."""
    if isinstance(params, MergeConfig):
        return params
    try:
        return MergeConfig.model_validate(params)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise MergeError(f"merge config: {where}: {err['msg']} (got {err.get('input')!r})") from None


