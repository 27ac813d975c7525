"""fusepipe.losses against a dense [N, V] reference (values and gradients), its properties, and combine.

Ids are distinct within a row (the module's stated assumption); pads are id -1 with log-prob -inf, placed
anywhere in a row, and rows may be all padding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fusepipe.losses import (
    FUSION_LOSSES,
    PAPER_WEIGHTS,
    LossError,
    combine,
    teacher_probs,
    token_losses,
)

KINDS = ("ce", "kl", "reverse_kl", "jsd")
TEMPERATURES = (0.5, 1.0, 2.0)
LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------------
# Data


def make_case(n: int, v: int, k: int, seed: int, scale: float = 2.0, pad_rate: float = 0.3, all_pad_row=True):
    """Random student logits, labels and a sparse teacher (distinct ids, random pads, all-pad rows)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, v, generator=g) * scale
    labels = torch.randint(0, v, (n,), generator=g)
    ids = torch.stack([torch.randperm(v, generator=g)[:k] for _ in range(n)])
    teacher = torch.log_softmax(torch.randn(n, v, generator=g) * scale, dim=-1)
    logprobs = teacher.gather(1, ids)
    pad = torch.rand(n, k, generator=g) < pad_rate
    if all_pad_row and n > 1:
        pad[int(torch.randint(0, n, (1,), generator=g))] = True
    ids = ids.masked_fill(pad, -1)
    logprobs = logprobs.masked_fill(pad, -math.inf)
    return logits, labels, ids, logprobs


# ---------------------------------------------------------------------------------------------------
# Dense reference: float64, a [N, V] teacher built by scattering p


def dense_teacher(ids: torch.Tensor, logprobs: torch.Tensor, v: int, temperature: float):
    """(P [N, V], support S [N, V] bool) with P = softmax(logprob / T) over each row's non-pad entries."""
    valid = ids >= 0
    x = torch.where(valid, logprobs.double() / temperature, -math.inf)
    has = valid.any(-1, keepdim=True)
    p = torch.where(has, torch.exp(x - torch.where(has, torch.logsumexp(x, -1, keepdim=True), 0.0)), 0.0)
    p = torch.where(valid, p, 0.0)
    P = torch.zeros(ids.shape[0], v, dtype=torch.float64).scatter_add_(1, ids.clamp_min(0), p)
    S = torch.zeros(ids.shape[0], v, dtype=torch.long).scatter_add_(1, ids.clamp_min(0), valid.long()) > 0
    return P, S


def dense_losses(logits: torch.Tensor, labels, ids, logprobs, kind: str, temperature: float):
    """(sft, fusion) per position from the dense [N, V] teacher, with torch's own losses where they exist."""
    z = logits.double()
    P, S = dense_teacher(ids, logprobs, z.shape[1], temperature)
    sft = F.cross_entropy(z, labels, reduction="none")
    if kind == "ce":
        return sft, F.cross_entropy(z, P, reduction="none")
    if kind == "kl":
        return sft, F.kl_div(F.log_softmax(z, -1), P, reduction="none").sum(-1)
    # reverse KL and JSD on the support S: q̃ = softmax of z over S (off S: a finite fill whose exp is 0)
    log_q = torch.log_softmax(z.masked_fill(~S, -1e4), -1)
    q = torch.where(S, log_q.exp(), 0.0)
    log_P = torch.where(S, P.clamp_min(1e-300).log(), 0.0)
    log_q = torch.where(S, log_q, 0.0)
    if kind == "reverse_kl":
        return sft, torch.where(S, q * (log_q - log_P), 0.0).sum(-1)
    M = (P + q) / 2
    log_M = torch.where(S, M.clamp_min(1e-300).log(), 0.0)
    return sft, (0.5 * torch.where(S, P * (log_P - log_M) + q * (log_q - log_M), 0.0)).sum(-1)


def values_and_grads(fn, logits, *rest, **kw):
    """(sft, fusion, d(Σ sft + 3·Σ fusion)/d logits) of one implementation."""
    x = logits.detach().clone().requires_grad_(True)
    sft, fusion = fn(x, *rest, **kw)
    (sft.sum() + 3.0 * fusion.sum()).backward()
    return sft.detach(), fusion.detach(), x.grad


def check_against_dense(logits, labels, ids, logprobs, kind, temperature, rtol=1e-4, atol=1e-5):
    sft, fus, grad = values_and_grads(token_losses, logits, labels, ids, logprobs, kind=kind, temperature=temperature)
    ref_sft, ref_fus, ref_grad = values_and_grads(
        dense_losses, logits.double(), labels, ids, logprobs, kind=kind, temperature=temperature
    )
    assert sft.dtype == fus.dtype == torch.float32
    assert grad.dtype == logits.dtype
    assert torch.isfinite(fus).all() and torch.isfinite(grad.float()).all()
    torch.testing.assert_close(sft.double(), ref_sft, rtol=rtol, atol=atol)
    torch.testing.assert_close(fus.double(), ref_fus, rtol=rtol, atol=atol)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------------
# Agreement with the dense reference


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_dense_reference(kind, temperature):
    logits, labels, ids, logprobs = make_case(n=7, v=50, k=6, seed=1)
    assert (ids < 0).all(-1).any() and (ids < 0).any(-1).sum() > 1  # an all-pad row and partial ones
    check_against_dense(logits, labels, ids, logprobs, kind, temperature)


@pytest.mark.parametrize("kind", KINDS)
def test_pads_clamped_onto_a_real_id_0(kind):
    """Pads gather id 0; a row whose real target is id 0 must still count it once, and pads not at all."""
    logits, labels, _, _ = make_case(n=3, v=6, k=3, seed=8)
    ids = torch.tensor([[-1, 0, 4], [0, -1, -1], [2, 0, 5]])
    logprobs = torch.tensor([[-math.inf, -0.7, -1.2], [-0.1, -math.inf, -math.inf], [-2.0, -0.5, -1.0]])
    check_against_dense(logits, labels, ids, logprobs, kind, 0.5)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_logits_compute_in_fp32(kind):
    logits, labels, ids, logprobs = make_case(n=6, v=40, k=5, seed=2)
    logits = logits.bfloat16()
    # The reference sees the same (bf16-rounded) logits; only the bf16 gradient is rounded.
    check_against_dense(logits, labels, ids, logprobs, kind, 1.0, rtol=2e-2, atol=2e-3)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 6),
    v=st.integers(2, 64),
    k=st.integers(1, 8),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(0.1, 6.0),
    pad_rate=st.sampled_from([0.0, 0.3, 0.8]),
    temperature=st.sampled_from(TEMPERATURES),
)
def test_matches_dense_reference_random(n, v, k, seed, scale, pad_rate, temperature):
    logits, labels, ids, logprobs = make_case(n, v, min(k, v), seed, scale, pad_rate)
    for kind in KINDS:
        check_against_dense(logits, labels, ids, logprobs, kind, temperature)


# ---------------------------------------------------------------------------------------------------
# Teacher probabilities


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 6), v=st.integers(2, 64), k=st.integers(1, 8), seed=st.integers(0, 2**31 - 1),
       temperature=st.sampled_from(TEMPERATURES))
def test_teacher_probs_renormalise_topk_logits(n, v, k, seed, temperature):
    k = min(k, v)
    g = torch.Generator().manual_seed(seed)
    teacher_logits = torch.randn(n, v, generator=g) * 3
    ids = torch.stack([torch.randperm(v, generator=g)[:k] for _ in range(n)])
    logprobs = torch.log_softmax(teacher_logits, -1).gather(1, ids)
    pad = torch.rand(n, k, generator=g) < 0.3
    pad[0] = True
    logprobs = logprobs.masked_fill(pad, -math.inf)
    p = teacher_probs(logprobs, temperature)
    # softmax(logprob/T) over the top-k == softmax(logit/T) over the top-k (the logsumexp shift cancels)
    expected = torch.softmax((teacher_logits.gather(1, ids) / temperature).masked_fill(pad, -math.inf), -1)
    expected = torch.nan_to_num(expected, nan=0.0)  # all-pad rows: 0
    torch.testing.assert_close(p, expected, rtol=1e-5, atol=1e-6)
    assert (p[pad] == 0).all() and (p[0] == 0).all() and torch.isfinite(p).all()
    sums = p.sum(-1)
    torch.testing.assert_close(sums, (~pad).any(-1).float(), rtol=1e-5, atol=1e-6)


def test_teacher_probs_all_pad_and_temperature_error():
    p = teacher_probs(torch.full((2, 3), -math.inf))
    assert p.shape == (2, 3) and (p == 0).all()
    with pytest.raises(LossError) as err:
        teacher_probs(torch.zeros(1, 2), temperature=0.0)
    assert str(err.value) == "temperature must be a positive finite number, got 0.0"


# ---------------------------------------------------------------------------------------------------
# Properties


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), v=st.integers(2, 64), k=st.integers(1, 8), seed=st.integers(0, 2**31 - 1),
       scale=st.floats(0.1, 8.0), temperature=st.sampled_from(TEMPERATURES))
def test_bounds(n, v, k, seed, scale, temperature):
    logits, labels, ids, logprobs = make_case(n, v, min(k, v), seed, scale)
    out = {kind: token_losses(logits, labels, ids, logprobs, kind=kind, temperature=temperature) for kind in KINDS}
    sft = out["ce"][0]
    p = teacher_probs(logprobs.masked_fill(ids < 0, -math.inf), temperature)
    entropy = -torch.special.xlogy(p, p).sum(-1)
    tol = 1e-5
    assert (sft >= -tol).all()
    assert (out["ce"][1] >= entropy - tol).all()  # Gibbs: CE(p, q) ≥ H(p), the bound no student beats
    torch.testing.assert_close(out["kl"][1], out["ce"][1] - entropy, rtol=1e-5, atol=1e-5)
    assert (out["kl"][1] >= -tol).all()
    assert (out["reverse_kl"][1] >= -tol).all()
    assert ((out["jsd"][1] >= -tol) & (out["jsd"][1] <= LN2 + tol)).all()
    empty = (ids < 0).all(-1)
    for kind in KINDS:
        assert (out[kind][0] == sft).all()  # the SFT term does not depend on the kind
        assert (out[kind][1][empty] == 0).all()


@pytest.mark.parametrize("outside", [-math.inf, -1e4])
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_zero_divergence_when_student_equals_teacher(outside, temperature):
    """Student = the renormalised teacher on its support, (almost) no mass elsewhere: kl = reverse_kl = jsd = 0,
    ce = H(p); gradients finite even with -inf logits and pads clamped onto an -inf column."""
    logits, labels, ids, logprobs = make_case(n=6, v=30, k=5, seed=3)
    p = teacher_probs(logprobs, temperature)
    z = torch.full_like(logits, outside)
    for row in range(ids.shape[0]):
        keep = ids[row] >= 0
        z[row, ids[row][keep]] = p[row][keep].log()
    z[(ids < 0).all(-1)] = 0.0  # rows without a teacher: any finite student
    labels = torch.where((ids >= 0).any(-1), ids.max(-1).values, labels)  # a finite-logit label
    entropy = -torch.special.xlogy(p, p).sum(-1)
    for kind, expected in (("kl", 0.0), ("reverse_kl", 0.0), ("jsd", 0.0), ("ce", entropy)):
        sft, fusion, grad = values_and_grads(token_losses, z, labels, ids, logprobs, kind=kind, temperature=temperature)
        torch.testing.assert_close(fusion, torch.as_tensor(expected).expand_as(fusion).float(), rtol=0, atol=1e-5)
        assert torch.isfinite(grad).all() and torch.isfinite(sft).all()


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_reaches_logits_only(kind):
    logits, labels, ids, logprobs = make_case(n=5, v=20, k=4, seed=4)
    x = logits.clone().requires_grad_(True)
    lp = logprobs.clone().requires_grad_(True)
    sft, fusion = token_losses(x, labels, ids, lp, kind=kind, temperature=2.0)
    (sft.sum() + fusion.sum()).backward()
    assert lp.grad is None and x.grad is not None and torch.isfinite(x.grad).all()
    empty = (ids < 0).all(-1)
    # an all-pad row gets the SFT gradient only: softmax(z) − onehot(label)
    sft_grad = torch.softmax(logits, -1) - F.one_hot(labels, logits.shape[1])
    torch.testing.assert_close(x.grad[empty], sft_grad[empty], rtol=1e-5, atol=1e-6)


def test_negative_labels_are_tolerated_and_int32_ids_accepted():
    logits, labels, ids, logprobs = make_case(n=4, v=16, k=3, seed=5)
    labels[1] = -100
    sft, fusion = token_losses(logits, labels, ids.int(), logprobs)
    ref_sft, ref_fusion = token_losses(logits, labels.clamp_min(0), ids, logprobs)
    assert torch.equal(sft, ref_sft) and torch.equal(fusion, ref_fusion)


# ---------------------------------------------------------------------------------------------------
# combine


def test_combine_weighted_masked_sum():
    sft = torch.tensor([1.0, 2.0, 3.0, float("nan")])
    fusion = torch.tensor([10.0, float("inf"), 30.0, 40.0])
    sft_mask = torch.tensor([True, True, False, False])
    fusion_mask = torch.tensor([1.0, 0.0, 0.5, 1.0])
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    loss, stats = combine(sft, fusion, sft_mask=sft_mask, fusion_mask=fusion_mask, sft_weight=0.9,
                          fusion_weight=0.1, position_weight=w)
    expected = 1 * (0.9 * 1 + 0.1 * 10) + 2 * (0.9 * 2) + 3 * (0.1 * 0.5 * 30) + 4 * (0.1 * 40)
    assert loss.dim() == 0 and loss.item() == pytest.approx(expected)
    assert {k: v.item() for k, v in stats.items()} == pytest.approx(
        {"sft_sum": 3.0, "fusion_sum": 10 + 15 + 40, "sft_tokens": 2.0, "fusion_tokens": 2.5}
    )
    loss_default, _ = combine(sft, fusion, sft_mask=sft_mask, fusion_mask=fusion_mask, sft_weight=0.9,
                              fusion_weight=0.1)
    assert loss_default.item() == pytest.approx(0.9 * 3 + 0.1 * (10 + 15 + 40))


def test_combine_is_a_sum_over_chunks_and_stats_are_detached():
    logits, labels, ids, logprobs = make_case(n=8, v=32, k=4, seed=6)
    x = logits.clone().requires_grad_(True)
    sft_mask = torch.rand(8, generator=torch.Generator().manual_seed(0)) < 0.7
    fusion_mask = (ids >= 0).any(-1)
    kw = {"sft_weight": 0.5, "fusion_weight": 0.5}

    def loss_of(rows):
        sft, fusion = token_losses(x[rows], labels[rows], ids[rows], logprobs[rows], kind="ce")
        return combine(sft, fusion, sft_mask=sft_mask[rows], fusion_mask=fusion_mask[rows], **kw)

    whole, stats = loss_of(slice(None))
    parts = [loss_of(slice(0, 3)), loss_of(slice(3, 8))]
    torch.testing.assert_close(whole, parts[0][0] + parts[1][0])
    for key in stats:
        assert not stats[key].requires_grad
        torch.testing.assert_close(stats[key], parts[0][1][key] + parts[1][1][key])
    assert stats["sft_tokens"].item() == sft_mask.sum().item()


# ---------------------------------------------------------------------------------------------------
# Registry, errors, paper weights


def test_unknown_kind_message():
    logits, labels, ids, logprobs = make_case(n=2, v=8, k=2, seed=7)
    with pytest.raises(ValueError) as err:
        token_losses(logits, labels, ids, logprobs, kind="mse")
    assert str(err.value) == "unknown fusion loss kind 'mse'; allowed: ce, kl, reverse_kl, jsd"
    assert isinstance(err.value, LossError)


def test_shape_mismatch_message():
    logits, labels, ids, logprobs = make_case(n=2, v=8, k=2, seed=7)
    with pytest.raises(LossError, match=r"shapes must be logits \[N, V\]"):
        token_losses(logits[:1], labels, ids, logprobs)


def test_registry_and_paper_weights():
    assert tuple(FUSION_LOSSES) == KINDS
    assert {name: (r.sft_weight, r.fusion_weight, r.kind) for name, r in PAPER_WEIGHTS.items()} == {
        "fusechat": (0.9, 0.1, "ce"),
        "profuser": (1.0, 0.5, "kl"),
        "infifusion": (0.5, 0.5, "ce"),
    }
