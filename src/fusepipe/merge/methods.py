"""Merge methods: one small pure function per method, registered by name with a typed parameter model.

Every method has the signature ``fn(base, deltas, params, *, name, out=None) -> Merged`` for ONE tensor:
``base`` is the pivot's tensor (any float dtype), ``deltas`` the fp32 fusion/task vectors
``δ_j = θ_j − θ_pivot`` stacked as ``[K, *base.shape]``, ``name`` the tensor name (DARE seeds from it),
``out`` an optional fp32 buffer of at least ``base.numel()`` elements to write the result into (the
engine reuses one). The result is fp32 (the engine casts once to the output dtype) plus per-tensor
facts for the manifest.

All math is fp32. Work runs over flat blocks of ``CHUNK`` elements so that temporaries stay a constant
size: a method holds nothing larger than its output besides its inputs. Matrix-level statistics
(coefficients, top-k thresholds, skewness) are per-block fp32 sums accumulated in float64.

Selection of the top k elements ("Select" in SCE, TIES trimming, RSAF) is exact: a radix select over
the fp32 bit pattern of a non-negative key; ties at the threshold go to the lowest flat index.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from fusepipe.params.merge import (  # noqa: F401  (re-exported: the parameter models live with the config)
    WEIGHTS_DOC,
    DareParams,
    LinearParams,
    MergeError,
    Params,
    RsafParams,
    SceParams,
    SlerpParams,
    TaskArithmeticParams,
    TiesParams,
    Weights,
)

CHUNK = 1 << 16
"""Elements per block (per model row). Small enough to keep a block's temporaries in cache."""


@dataclass
class Merged:
    """A merged tensor (fp32) and what the manifest records about it (coefficients, selected ratios)."""

    tensor: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------
# Registry

MergeFn = Callable[..., Merged]


@dataclass(frozen=True)
class Method:
    name: str
    params: type[Params]
    fn: MergeFn
    targets: tuple[int, int | None] = (1, None)
    """Allowed number of targets K (min, max)."""


METHODS: dict[str, Method] = {}


def register(name: str, params: type[Params], targets: tuple[int, int | None] = (1, None)):
    def wrap(fn: MergeFn) -> MergeFn:
        METHODS[name] = Method(name, params, fn, targets)
        return fn

    return wrap


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise MergeError(f"unknown merge method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def validate(name: str, params: Params, k: int) -> None:
    """Check settings against the number of targets before any tensor is read."""
    method = get_method(name)
    lo, hi = method.targets
    if k < lo or (hi is not None and k > hi):
        allowed = f"{lo}" if lo == hi else f"{lo} to {hi}" if hi else f"at least {lo}"
        raise MergeError(
            f"{name} merges {allowed} target(s), got {k}; list fewer targets or pick another method"
        )
    weights = getattr(params, "weights", None)
    if weights is not None and len(weights) != k:
        raise MergeError(
            f"{name}.weights has {len(weights)} entries for {k} targets; give one weight per target"
        )
    if weights is not None and name in ("ties", "dare") and min(weights) <= 0:
        raise MergeError(f"{name}.weights must be positive (they weigh a sign election), got {weights}")
    if weights is not None and name == "linear" and sum(weights) <= 0:
        raise MergeError(f"linear.weights must have a positive sum, got {weights}")


# ---------------------------------------------------------------------------------------------------
# Building blocks (over flat blocks of CHUNK elements; loops over the K models, float masks: on CPU
# these are several times faster than reductions over the model axis and boolean masks)

ONE = torch.ones(())
TINY = torch.finfo(torch.float32).tiny


def blocks(n: int, size: int | None = None) -> Iterator[slice]:
    step = size or CHUNK
    return (slice(i, min(i + step, n)) for i in range(0, n, step))


def _weights(weights: Weights, k: int) -> list[float]:
    return [1.0] * k if weights is None else list(weights)


def _row_sum(rows: list[torch.Tensor] | torch.Tensor, w: list[float]) -> torch.Tensor:
    """Σ_j w_j rows_j."""
    acc = rows[0] * w[0]
    for row, wj in zip(rows[1:], w[1:]):
        acc.add_(row, alpha=wj)
    return acc


def variance(x: torch.Tensor) -> torch.Tensor:
    """Population variance over the models (torch.var(dim=0, unbiased=False)), two-pass in float64
    as torch.var computes it, so the selection ranks elements exactly as FuseChat's and mergekit's code."""
    rows = [r.double() for r in x]
    mean = _row_sum(rows, [1.0] * len(rows)).div_(len(rows))
    acc = torch.zeros_like(mean)
    for r in rows:
        acc += r.sub_(mean).square_()
    return acc.div_(len(rows)).float()


def erase(
    x: torch.Tensor, w: list[float], weighted_election: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """TIES/SCE Erase over models j: v_j = w_j x_j if `weighted_election` else x_j; γ = sign(Σ_j v_j)
    (0 → +); e_j = [sign(v_j) = γ] (a zero never agrees). Returns (Σ_j w_j e_j x_j, Σ_j w_j e_j);
    weights are ≥ 0."""
    v = [x[j] * w[j] for j in range(len(w))] if weighted_election else list(x)
    gamma = torch.copysign(ONE, _row_sum(v, [1.0] * len(v)))
    num, den = torch.zeros_like(gamma), torch.zeros_like(gamma)
    for j, vj in enumerate(v):
        agreeing = torch.mul(vj, gamma).clamp_(min=0)  # |v_j| where it agrees with γ, else 0
        num.add_(agreeing, alpha=1.0 if weighted_election else w[j])
        den.add_(agreeing.sign_(), alpha=w[j])
    return num.mul_(gamma), den


def erase_mean(
    x: torch.Tensor, w: list[float], weighted_election: bool = False, floor: float = TINY
) -> torch.Tensor:
    """Disjoint mean Σ_j w_j e_j x_j / max(Σ_j w_j e_j, floor) (TIES Eq. "disjoint merge"), 0 where no
    model agrees. mergekit's `sce` divides by max(·, 1e-6)."""
    num, den = erase(x, w, weighted_election)
    return num.div_(den.clamp_(min=floor))


MERGEKIT_GUARD = 1e-6
"""mergekit 0.1.5 `sce`: uniform weights when Σ_j mean(δ̂_j²) < 1e-6 (`sce_weight`), and its merge
divides by max(Σ_j η_j e_j, 1e-6)."""


def coefficients(sq_sums: list[float], n: int = 1, guard: float = 0.0) -> list[float]:
    """η_j = Σ δ̂_j² / Σ_j Σ δ̂_j² (FuseChat Eq. 7); uniform 1/K when Σ_j Σ δ̂_j² / n ≤ 0 (the default:
    only an exact zero) or < `guard`.

    mergekit's `sce_weight` falls back to uniform when the sum of per-model MEANS of squares (n
    elements) is below 1e-6, i.e. whenever RMS(δ̂) ≲ 1e-3/√K, typical of fine-tuning deltas after
    selection: `semantics: mergekit` passes guard=MERGEKIT_GUARD, `fusechat` keeps FuseChat's exact zero."""
    total = sum(sq_sums)
    if total == 0.0 or total / n < guard:
        return [1.0 / len(sq_sums)] * len(sq_sums)
    return [x / total for x in sq_sums]


def fp32_k(n: int, ratio: float) -> int:
    """int(n·ratio) as FuseChat's and mergekit's SCE compute it: `int(count_nonzero(var) * τ)`, i.e. an
    int64 tensor times a float, rounded through fp32."""
    return int(torch.tensor(n) * ratio)


KeyFn = Callable[[slice], torch.Tensor]
"""Block → non-negative fp32 keys, shape [rows, block]."""


@dataclass(frozen=True)
class TopK:
    """Exact per-row top-k of a key: keep key ≥ threshold, except that when more elements equal the
    threshold than fit in k, only the first `quota` of them (in flat order) are kept.

    quota −1: keep every element equal to the threshold (the usual case); threshold −inf keeps all."""

    threshold: torch.Tensor  # [rows, 1] fp32
    quota: list[int]

    @staticmethod
    def everything(rows: int) -> TopK:
        return TopK(torch.full((rows, 1), -math.inf), [-1] * rows)

    @staticmethod
    def select(key: KeyFn, n: int, ks: list[int]) -> TopK:
        """Radix select of the k-th largest key per row: a histogram of the high 16 bits of the fp32
        bit pattern (order-preserving for x ≥ 0), then of the low 16 bits inside the bin that holds
        rank k. Rows with k ≥ n keep everything. Two passes over the keys, no sort, no copy."""
        k = torch.tensor(ks, dtype=torch.int64)
        if bool((k >= n).all()):
            return TopK.everything(len(ks))
        high_hist = _histogram(key, n, lambda bits, row: bits >> 16)
        high, above = _bin_of_rank(high_hist, k)
        low_hist = _histogram(key, n, lambda bits, row: bits[(bits >> 16) == high[row]] & 0xFFFF)
        low, above_low = _bin_of_rank(low_hist, k - above)
        threshold = ((high << 16) | low).to(torch.int32).view(torch.float32)
        wanted = k - above - above_low
        equal = low_hist.gather(1, low[:, None])[:, 0]
        quota = [-1 if kk >= n or w == e else w for kk, w, e in zip(ks, wanted.tolist(), equal.tolist())]
        return TopK(torch.where(k >= n, -math.inf, threshold)[:, None], quota)

    def masks(self, key: KeyFn, n: int) -> Iterator[tuple[slice, torch.Tensor]]:
        """(block, float 0/1 mask [rows, block]) in block order; restartable, the same on every call."""
        quota = list(self.quota)
        for s in blocks(n):
            x = key(s)
            mask = torch.ge(x, self.threshold).float()
            for row, q in enumerate(quota):
                if q < 0:
                    continue
                equal = x[row] == self.threshold[row]
                count = int(equal.sum())
                if count > q:
                    mask[row].masked_fill_(equal & (equal.cumsum(0) > q) if q else equal, 0.0)
                quota[row] = max(0, q - count)
            yield s, mask


def _histogram(key: KeyFn, n: int, bins_of: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    """Per-row counts [rows, 2^16] of `bins_of(int32 bits of the key, row)` over all blocks (blocks
    of 2·CHUNK: a bincount costs its 2^16 bins on top of its input)."""
    hist: torch.Tensor | None = None
    for s in blocks(n, 2 * CHUNK):
        bits = key(s).view(torch.int32)
        if hist is None:
            hist = torch.zeros(bits.shape[0], 1 << 16, dtype=torch.int64)
        for row in range(bits.shape[0]):
            counts = torch.bincount(bins_of(bits[row], row))
            hist[row, : counts.numel()] += counts
    assert hist is not None
    return hist


def _bin_of_rank(hist: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the bin holding the k-th largest element, and how many elements lie in higher bins."""
    from_top = hist.flip(1).cumsum(1)
    i = (from_top < k[:, None]).sum(1).clamp(max=hist.shape[1] - 1)
    above = torch.where(i > 0, from_top.gather(1, (i - 1).clamp(min=0)[:, None])[:, 0], 0)
    return hist.shape[1] - 1 - i, above


def _flat(
    base: torch.Tensor, deltas: torch.Tensor, out: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat views of base and deltas, and the fp32 output: the first d elements of `out` or a new buffer."""
    n = base.numel()
    out = torch.empty(n) if out is None else out.view(-1)[:n]
    return base.reshape(n), deltas.reshape(deltas.shape[0], n), out


def _sq_sums(d: torch.Tensor, n: int, topk: TopK | None, key: KeyFn) -> list[float]:
    """Σ (δ_j ⊙ mask_j)² per model (fp32 dot products per block, summed in float64)."""
    acc = [0.0] * d.shape[0]
    masks = topk.masks(key, n) if topk is not None else ((s, None) for s in blocks(n))
    for s, mask in masks:
        x = d[:, s] if mask is None else d[:, s] * mask
        for j, row in enumerate(x):
            acc[j] += float(torch.dot(row, row))
    return acc


# ---------------------------------------------------------------------------------------------------
# Methods


@register("sce", SceParams)
def sce(
    base: torch.Tensor, deltas: torch.Tensor, p: SceParams, *, name: str, out: torch.Tensor | None = None
) -> Merged:
    """SCE (FuseChat Algorithm 1). Select (Eq. 6): mask m = top ⌊τ·nnz(var)⌋ elements by
    var_j(δ_j); Calculate (Eq. 7): η_j = Σ(δ_j⊙m)² / Σ_jΣ(δ_j⊙m)²; Erase (Eq. 8): keep δ_j where its
    sign equals sign(Σ_j δ_j); Merge (Eq. 9, as both codes do): θ + Σ_j η_j e_j δ_j / Σ_j η_j e_j.
    `semantics` says whether erase/merge see δ (fusechat) or δ⊙m (mergekit).

    fusechat: no element with nonzero variance (K = 1, identical or zero deltas) or ⌊τ·nnz⌋ = 0 → no
    selection, so K = 1 returns the target; uniform η only when Σ(δ⊙m)² = 0.
    mergekit (0.1.5's `sce`, rule for rule): ⌊τ·nnz⌋ = 0 → an all-zero mask, i.e. the pivot's tensor
    (K = 1 with τ < 1 included); uniform η when Σ_j mean(δ̂_j²) < 1e-6; denominator max(Σ_j η_j e_j, 1e-6)."""
    b, d, out = _flat(base, deltas, out)
    n = b.numel()
    mergekit = p.semantics == "mergekit"
    var_key: KeyFn = lambda s: out[s][None]
    topk, k = None, n
    if p.tau < 1:
        for s in blocks(n):
            out[s] = variance(d[:, s])
        k = fp32_k(int(torch.count_nonzero(out)), p.tau)
        if k > 0:
            topk = TopK.select(var_key, n, [k])
        elif mergekit:  # sce_mask: k == 0 → zeros; every δ̂_j = 0, the merge adds nothing
            out.copy_(b)
            return Merged(out.view(base.shape), {"coefficients": [1.0 / len(d)] * len(d), "selected": 0.0})
    guard = MERGEKIT_GUARD if mergekit else 0.0
    eta = coefficients(_sq_sums(d, n, topk, var_key), n, guard)
    masked = topk is not None and mergekit
    masks = topk.masks(var_key, n) if masked else ((s, None) for s in blocks(n))
    floor = MERGEKIT_GUARD if mergekit else TINY
    for s, mask in masks:
        x = d[:, s] * mask if masked else d[:, s]
        torch.add(b[s], erase_mean(x, eta, floor=floor), out=out[s])
    selected = k / n if topk is not None else 1.0
    return Merged(out.view(base.shape), {"coefficients": eta, "selected": selected})


@register("rsaf", RsafParams)
def rsaf(
    base: torch.Tensor, deltas: torch.Tensor, p: RsafParams, *, name: str, out: torch.Tensor | None = None
) -> Merged:
    """RSAF (InfiFusion Algorithm 1), per target j: rate r_j (Eq. 8), its Fisher-Pearson skewness
    S_j = m3/m2^1.5 (Eq. 9; S_j = 0 when r_j is constant), ratio K_j = τ/(1+S_j) if S_j ≥ 0 else
    τ(1+|S_j|), capped at 1 (Eq. 10); Select (Eq. 11): δ̂_j = top max(1, ⌊K_j·d⌋) elements of δ_j by
    |δ_j| or r_j (the same order as |δ_j| for a matrix-level rate); η_j = Σδ̂_j²/Σ_jΣδ̂_j² and Erase on δ̂ as SCE (Eq. 12); θ + Σ_j η_j e_j δ̂_j (Eq. 13),
    divided by Σ_j η_j e_j when `disjoint_mean`."""
    b, d, out = _flat(base, deltas, out)
    n, k_models = b.numel(), d.shape[0]
    if p.rate == "element":
        scale: KeyFn = lambda s: b[s].float().abs().add_(p.eps)
    else:
        rms = math.sqrt(sum(float(b[s].float().square().sum()) for s in blocks(n)) / max(n, 1))
        scale = lambda s: rms + p.eps
    rate: KeyFn = lambda s: d[:, s].abs().div_(scale(s))
    mean = [0.0] * k_models
    for s in blocks(n):
        mean = [m + float(x) for m, x in zip(mean, rate(s).sum(1))]
    mean_col = torch.tensor(mean, dtype=torch.float32)[:, None] / max(n, 1)
    m2, m3 = [0.0] * k_models, [0.0] * k_models
    for s in blocks(n):
        c = rate(s).sub_(mean_col)
        sq = c.square()
        m2 = [a + float(x) for a, x in zip(m2, sq.sum(1))]
        m3 = [a + float(x) for a, x in zip(m3, sq.mul_(c).sum(1))]
    skew = [(c3 / n) / (c2 / n) ** 1.5 if c2 > 0 else 0.0 for c2, c3 in zip(m2, m3)]
    ratio = [min(1.0, p.tau / (1 + sk) if sk >= 0 else p.tau * (1 + abs(sk))) for sk in skew]
    # Select by |δ_j| for select_by magnitude, and for a matrix-level rate too: dividing by one constant keeps
    # the order, but fp32 rounding would merge near-ties (δ one ulp apart) depending on how the RMS was summed.
    by_rate = p.select_by == "rate" and p.rate == "element"
    key: KeyFn = rate if by_rate else lambda s: d[:, s].abs()
    topk = TopK.select(key, n, [max(1, int(r * n)) for r in ratio])
    eta = coefficients(_sq_sums(d, n, topk, key))
    for s, mask in topk.masks(key, n):
        x = d[:, s] * mask
        merged = erase_mean(x, eta) if p.disjoint_mean else erase(x, eta)[0]
        torch.add(b[s], merged, out=out[s])
    info = {"coefficients": eta, "ratios": ratio, "skewness": skew}
    return Merged(out.view(base.shape), info)


@register("task_arithmetic", TaskArithmeticParams)
def task_arithmetic(
    base: torch.Tensor,
    deltas: torch.Tensor,
    p: TaskArithmeticParams,
    *,
    name: str,
    out: torch.Tensor | None = None,
) -> Merged:
    """Task arithmetic (Ilharco et al. 2023, Eq. 1 with λ): θ = θ_pivot + λ Σ_j w_j δ_j."""
    b, d, out = _flat(base, deltas, out)
    w = [p.scaling * wj for wj in _weights(p.weights, d.shape[0])]
    for s in blocks(b.numel()):
        torch.add(b[s], _row_sum(d[:, s], w), out=out[s])
    return Merged(out.view(base.shape))


@register("ties", TiesParams)
def ties(
    base: torch.Tensor, deltas: torch.Tensor, p: TiesParams, *, name: str, out: torch.Tensor | None = None
) -> Merged:
    """TIES (Yadav et al. 2023, Algorithm 1): trim δ̂_j = top max(1, ⌊density·d⌋) of δ_j by |δ_j|;
    elect γ = sign(Σ_j w_j δ̂_j); disjoint mean Σ_j w_j e_j δ̂_j / Σ_j w_j e_j; θ + λ·mean.
    Weights enter the election as in mergekit's `ties`."""
    b, d, out = _flat(base, deltas, out)
    n, k_models = b.numel(), d.shape[0]
    w = _weights(p.weights, k_models)
    key: KeyFn = lambda s: d[:, s].abs()
    k = n if p.density >= 1 else max(1, int(p.density * n))
    topk = TopK.select(key, n, [k] * k_models)
    for s, mask in topk.masks(key, n):
        torch.add(b[s], erase_mean(d[:, s] * mask, w, weighted_election=True), alpha=p.scaling, out=out[s])
    return Merged(out.view(base.shape))


def dare_generator(seed: int, name: str, j: int) -> torch.Generator:
    """The random stream for target j of tensor `name`: independent of tensor order and block size."""
    digest = hashlib.blake2b(f"{seed}\0{name}\0{j}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


@register("dare", DareParams)
def dare(
    base: torch.Tensor, deltas: torch.Tensor, p: DareParams, *, name: str, out: torch.Tensor | None = None
) -> Merged:
    """DARE (Yu et al. 2024, Eq. 2-3): δ̃_j = m_j ⊙ δ_j / (1−p) with m_j ~ Bernoulli(1−p), i.e.
    u < 1−p for u ~ U[0,1) from `dare_generator`; then `ties` (elect on Σ w_j δ̃_j + disjoint mean, as
    TIES) or `linear` (Σ_j w_j δ̃_j / Σ_j w_j); θ + λ·merged."""
    b, d, out = _flat(base, deltas, out)
    n, k_models = b.numel(), d.shape[0]
    w = _weights(p.weights, k_models)
    streams = [dare_generator(p.seed, name, j) for j in range(k_models)]
    keep_rate = 1 - p.drop_rate
    kept = [0.0] * k_models
    for s in blocks(n):
        x = torch.empty(k_models, s.stop - s.start)
        for j, g in enumerate(streams):
            torch.rand(s.stop - s.start, generator=g, out=x[j]).lt_(keep_rate)  # 1 = kept
            kept[j] += float(x[j].sum())
        x.mul_(d[:, s])
        if p.rescale:
            x.div_(keep_rate)
        if p.combine == "ties":
            merged = erase_mean(x, w, weighted_election=True)
        else:
            merged = _row_sum(x, [wj / sum(w) for wj in w])
        torch.add(b[s], merged, alpha=p.scaling, out=out[s])
    return Merged(out.view(base.shape), {"kept": [c / max(n, 1) for c in kept]})


@register("linear", LinearParams)
def linear(
    base: torch.Tensor, deltas: torch.Tensor, p: LinearParams, *, name: str, out: torch.Tensor | None = None
) -> Merged:
    """Linear average of the targets' full weights (Wortsman et al. 2022):
    Σ_j w_j θ_j / Σ_j w_j = θ_pivot + Σ_j w_j δ_j / Σ_j w_j."""
    b, d, out = _flat(base, deltas, out)
    w = _weights(p.weights, d.shape[0])
    w = [wj / sum(w) for wj in w]
    for s in blocks(b.numel()):
        torch.add(b[s], _row_sum(d[:, s], w), out=out[s])
    return Merged(out.view(base.shape))


@register("slerp", SlerpParams, targets=(1, 2))
def slerp(
    base: torch.Tensor, deltas: torch.Tensor, p: SlerpParams, *, name: str, out: torch.Tensor | None = None
) -> Merged:
    """SLERP of the whole tensor between v0 and v1: pivot→target when K = 1, target 1→target 2 when
    K = 2. cos Ω = ⟨v0/‖v0‖, v1/‖v1‖⟩ (a norm ≤ ε is left as is); |cos Ω| > dot_threshold →
    (1−t)v0 + t·v1, else sin((1−t)Ω)/sin Ω · v0 + sin(tΩ)/sin Ω · v1."""
    b, d, out = _flat(base, deltas, out)
    n = b.numel()

    def ends(s: slice) -> tuple[torch.Tensor, torch.Tensor]:
        return (b[s].float() if d.shape[0] == 1 else b[s] + d[0, s]), b[s] + d[-1, s]

    sq0 = sq1 = dot = 0.0
    for s in blocks(n):
        v0, v1 = ends(s)
        sq0, sq1, dot = (
            sq0 + float(torch.dot(v0, v0)),
            sq1 + float(torch.dot(v1, v1)),
            dot + float(torch.dot(v0, v1)),
        )
    norm0, norm1 = (math.sqrt(x) if math.sqrt(x) > p.eps else 1.0 for x in (sq0, sq1))
    cos = min(max(dot / (norm0 * norm1), -1.0), 1.0)
    if abs(cos) > p.dot_threshold:
        c0, c1 = 1 - p.t, p.t
    else:
        omega = math.acos(cos)
        c0, c1 = math.sin((1 - p.t) * omega) / math.sin(omega), math.sin(p.t * omega) / math.sin(omega)
    for s in blocks(n):
        v0, v1 = ends(s)
        torch.add(torch.mul(v0, c0), v1, alpha=c1, out=out[s])
    return Merged(out.view(base.shape), {"cos": cos})
