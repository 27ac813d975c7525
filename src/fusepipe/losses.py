"""Distillation losses against SPARSE teacher targets: one small pure function per kind, registered by name.

Inputs, for the N target positions a caller has gathered (it chunks over positions; nothing here is [N, V]
besides the student logits it is given):

- ``logits`` z: [N, V] student logits, any float dtype; cast ONCE to fp32, all math is fp32.
- ``labels``: [N] ground-truth next-token ids (for the SFT term).
- ``topk_ids``: [N, k] the teacher's top-k token ids in the student vocabulary, -1 = padding.
- ``topk_logprobs``: [N, k] the teacher's log-probs of those ids (log-softmax over its full vocabulary at
  temperature 1, so Σ exp ≤ 1 over the top-k), -inf at padding.

Assumptions: a row's non-pad ids are distinct (the alignment stage sums duplicate mass); an entry is a pad
where its id is negative or its log-prob is -inf. The teacher is a constant: no gradient reaches it.

Notation per position: lse = logsumexp_v z_v, log q_v = z_v − lse (the student), p = `teacher_probs`
(the teacher renormalised over its non-pad top-k, FuseLLM/FuseChat), S = that support. Pads contribute
exactly 0 (masked with `where`, never -inf·0), and an all-pad row has p = 0 and fusion loss 0.

`token_losses` returns per-position (sft, fusion); `combine` weights and sums them; `PAPER_WEIGHTS` holds
the papers' combinations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from fusepipe.errors import FusepipeError


class LossError(FusepipeError, ValueError):
    """A loss setting a user can fix (unknown kind, bad temperature, mismatched shapes)."""


# ---------------------------------------------------------------------------------------------------
# Teacher


def _log_softmax_on(x: Tensor, valid: Tensor) -> Tensor:
    """log softmax of x over the entries where `valid` (per row); 0 (a finite placeholder) elsewhere.

    Invalid entries are filled with the most negative finite float before the softmax, so an all-invalid
    row gives finite values (then masked) instead of NaN, and no -inf reaches a product or a gradient."""
    x = x.masked_fill(~valid, torch.finfo(x.dtype).min)
    return torch.log_softmax(x, dim=-1).masked_fill(~valid, 0.0)


def _teacher(topk_logprobs: Tensor, valid: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """(p, log p) over the valid entries, p = 0 and log p = 0 at the others; fp32, no gradient."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise LossError(f"temperature must be a positive finite number, got {temperature!r}")
    x = topk_logprobs.detach().float() / temperature
    log_p = _log_softmax_on(x, valid)
    return log_p.exp() * valid, log_p


def teacher_probs(topk_logprobs: Tensor, temperature: float = 1.0) -> Tensor:
    """p = softmax over the k entries of (logprob / T); pads (-inf) get exactly 0, all-pad rows all 0. [N, k].

    This is FuseLLM/FuseChat's softmax(topk_logits / T) renormalised over the stored top-k: logprob = logit −
    logsumexp(logits), and the shift cancels inside a softmax over any subset, so stored log-probs serve any T.
    """
    return _teacher(topk_logprobs, topk_logprobs > -math.inf, temperature)[0]


# ---------------------------------------------------------------------------------------------------
# Fusion losses: fn(terms) -> [N]


@dataclass(frozen=True)
class Terms:
    """What every fusion loss reads; all [N, k] fp32 with pads zeroed, except lse [N]."""

    p: Tensor
    """Teacher probabilities (constant)."""
    log_p: Tensor
    """Teacher log-probabilities (constant)."""
    z: Tensor
    """Student logits at the teacher's ids."""
    lse: Tensor
    """Student logsumexp over the full vocabulary, [N]."""
    valid: Tensor
    """Non-pad entries (bool)."""


FusionFn = Callable[[Terms], Tensor]
FUSION_LOSSES: dict[str, FusionFn] = {}
"""Fusion losses by name (the `kind` of `token_losses`)."""


def register(name: str) -> Callable[[FusionFn], FusionFn]:
    def wrap(fn: FusionFn) -> FusionFn:
        FUSION_LOSSES[name] = fn
        return fn

    return wrap


def _student_on_support(t: Terms) -> tuple[Tensor, Tensor]:
    """(q̃, log q̃): the student renormalised over the teacher's support S, q̃_j = softmax_{j∈S}(z_j)."""
    log_q = _log_softmax_on(t.z, t.valid)
    return log_q.exp() * t.valid, log_q


@register("ce")
def ce(t: Terms) -> Tensor:
    """CE(p, q) = −Σ_j p_j log q_j = Σ_j p_j · lse − Σ_j p_j · z_j (FuseLLM/FuseChat default).

    Σ_j p_j is 1 for a row with any target and 0 for an all-pad row."""
    return t.p.sum(-1) * t.lse - (t.p * t.z).sum(-1)


@register("kl")
def kl(t: Terms) -> Tensor:
    """Forward KL(p‖q) = Σ_j p_j (log p_j − log q_j) = CE(p, q) − H(p) (FuseLLM `kl`, ProFuser).

    Same gradient as `ce` (H(p) is a constant); the value is 0 when q equals p."""
    return ce(t) + (t.p * t.log_p).sum(-1)


@register("reverse_kl")
def reverse_kl(t: Terms) -> Tensor:
    """Reverse KL(q̃‖p) = Σ_{j∈S} q̃_j (log q̃_j − log p_j), q̃ = the student renormalised over S.

    Outside the teacher's stored top-k S there is no teacher mass to compare with (log p would be -inf), so
    the reverse KL is only defined on S: the student's mass outside S is not penalised by this term (the SFT
    term and the normalisation of q̃ aside), and its gradient reaches only the logits at S."""
    q, log_q = _student_on_support(t)
    return (q * (log_q - t.log_p)).sum(-1)


@register("jsd")
def jsd(t: Terms) -> Tensor:
    """Jensen–Shannon divergence on S: ½ KL(p‖m) + ½ KL(q̃‖m), m = (p + q̃)/2, q̃ as in `reverse_kl`.

    log m = logaddexp(log p, log q̃) − ln 2 stays finite where p or q̃ underflows; the value is in [0, ln 2]."""
    q, log_q = _student_on_support(t)
    log_m = torch.logaddexp(t.log_p, log_q) - math.log(2.0)
    return 0.5 * (t.p * (t.log_p - log_m)).sum(-1) + 0.5 * (q * (log_q - log_m)).sum(-1)


# ---------------------------------------------------------------------------------------------------
# Per-position losses


def token_losses(
    logits: Tensor,
    labels: Tensor,
    topk_ids: Tensor,
    topk_logprobs: Tensor,
    *,
    kind: str = "ce",
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """(sft, fusion), each [N] fp32, with lse = logsumexp(z) computed once and shared.

    sft = lse − z[label]: next-token CE on the ground truth. A negative label (e.g. -100) is clamped to id 0
    so the call never fails; its sft value is meaningless and the caller masks it (see `combine`).
    fusion = FUSION_LOSSES[kind] against p = softmax(topk_logprobs / T) over the non-pad top-k.
    Gradients reach `logits` only."""
    if kind not in FUSION_LOSSES:
        raise LossError(f"unknown fusion loss kind {kind!r}; allowed: {', '.join(FUSION_LOSSES)}")
    n, k = topk_ids.shape
    if logits.dim() != 2 or logits.shape[0] != n or labels.shape != (n,) or topk_logprobs.shape != (n, k):
        raise LossError(
            f"shapes must be logits [N, V], labels [N], topk_ids and topk_logprobs [N, k]; got "
            f"{tuple(logits.shape)}, {tuple(labels.shape)}, {tuple(topk_ids.shape)}, {tuple(topk_logprobs.shape)}"
        )
    z = logits.float()
    lse = torch.logsumexp(z, dim=-1)
    valid = (topk_ids >= 0) & (topk_logprobs > -math.inf)
    index = torch.cat([labels.clamp_min(0)[:, None], topk_ids.clamp_min(0)], dim=1).long()
    picked = z.gather(1, index)
    sft = lse - picked[:, 0]
    p, log_p = _teacher(topk_logprobs, valid, temperature)
    terms = Terms(p=p, log_p=log_p, z=torch.where(valid, picked[:, 1:], 0.0), lse=lse, valid=valid)
    return sft, FUSION_LOSSES[kind](terms)


# ---------------------------------------------------------------------------------------------------
# Combination


def _masked(x: Tensor, mask: Tensor) -> Tensor:
    """x · mask with exactly 0 where mask is 0 (even if x is inf/NaN there); mask bool or float."""
    return torch.where(mask != 0, x, 0.0) * mask


def combine(
    sft: Tensor,
    fusion: Tensor,
    *,
    sft_mask: Tensor,
    fusion_mask: Tensor,
    sft_weight: float,
    fusion_weight: float,
    position_weight: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """(Σ_t w_t · (a · sft_t · m_t + b · fusion_t · f_t), stats); a = sft_weight, b = fusion_weight,
    m = sft_mask, f = fusion_mask, w = position_weight (default 1; carries ProFuser's per-mode w1/w2).

    A SUM over positions, not a mean: the caller divides by the token count of the global batch, so that
    gradient accumulation gives the token mean of the references. stats: detached 0-dim fp32 tensors
    "sft_sum" = Σ m·sft, "fusion_sum" = Σ f·fusion (unweighted by a, b, w), "sft_tokens" = Σ m,
    "fusion_tokens" = Σ f (tensors, so that logging forces no device sync until the caller reads them)."""
    s = _masked(sft.float(), sft_mask)
    f = _masked(fusion.float(), fusion_mask)
    per_position = sft_weight * s + fusion_weight * f
    if position_weight is not None:
        per_position = per_position * position_weight
    stats = {
        "sft_sum": s.detach().sum(),
        "fusion_sum": f.detach().sum(),
        "sft_tokens": sft_mask.detach().float().sum(),
        "fusion_tokens": fusion_mask.detach().float().sum(),
    }
    return per_position.sum(), stats


# ---------------------------------------------------------------------------------------------------
# The papers' combinations


@dataclass(frozen=True)
class LossRecipe:
    sft_weight: float
    fusion_weight: float
    kind: str


PAPER_WEIGHTS: dict[str, LossRecipe] = {
    "fusechat": LossRecipe(sft_weight=0.9, fusion_weight=0.1, kind="ce"),
    "profuser": LossRecipe(sft_weight=1.0, fusion_weight=0.5, kind="kl"),
    "infifusion": LossRecipe(sft_weight=0.5, fusion_weight=0.5, kind="ce"),
}
"""Weights (a, b) and fusion kind of `combine` / `token_losses` as the papers combine them:

- FuseChat (Eq. 4 region, as FuseLLM): L = λ·L_SFT + (1−λ)·L_fusion, λ = 0.9, L_fusion = CE(p, q).
- ProFuser: L_Fuse = L_SFT + β·KL(P_S, P_T) (Eq. 4), forward KL teacher → student as FuseLLM's `kl`;
  β = 0.5 is the project's reading of the paper (shared/reference/profuser_infifusion_mergekit.md; its stage 1
  uses 0.1). The progressive objective L = w1·L_infer + w2·L_train (Eq. 5) weighs whole modes: pass w1/w2
  per position as `combine(position_weight=...)`.
- InfiFusion: L = (1−λ)·L_SFT + λ·L_fusion, λ = 0.5 (Eq. 7).
"""
