"""Each merge method against a dense transcription of its formula, on random tensors shaped by
hypothesis (K = 1, all-zero deltas, opposite signs, ties, sparse deltas, several block sizes)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fusepipe.merge import methods as M
from fusepipe.merge.methods import MergeError

from . import dense

# derandomize: CI draws the same examples every run (a random draw once found RSAF-by-rate near-ties decided
# differently by blocks and the dense reference: test_rsaf_matrix_rate_selects_in_the_order_of_magnitude)
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
CASES = ["random", "zeros", "opposite", "quantized", "sparse", "identical", "tiny"]


@contextlib.contextmanager
def chunk(size: int):
    old, M.CHUNK = M.CHUNK, size
    try:
        yield
    finally:
        M.CHUNK = old


@st.composite
def problems(draw, k_min=1, k_max=4):
    """(base, deltas [K, ...], block size) with deltas shaped by one of CASES."""
    k = draw(st.integers(k_min, k_max))
    shape = draw(st.sampled_from([(1,), (7,), (13, 5), (4, 3, 6), (24, 33)]))
    case = draw(st.sampled_from(CASES))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    base = torch.randn(shape, generator=g)
    d = torch.randn((k, *shape), generator=g) * (0.5 + torch.rand((k,) + (1,) * len(shape), generator=g))
    if case == "zeros":
        d.zero_()
    elif case == "opposite":
        d[1::2] = -d[0::2][: k // 2]
    elif case == "quantized":  # many exact ties in |δ| and in the variance
        d = (d * 2).round() / 2
    elif case == "sparse":
        d *= torch.rand(d.shape, generator=g) < 0.2
    elif case == "identical":
        d[:] = d[0].clone()
    elif case == "tiny":  # fine-tuning-sized deltas: Σ_j mean(δ_j²) on either side of mergekit's 1e-6 guard
        d *= draw(st.sampled_from([1e-4, 4e-4, 1e-3]))
    d = (base + d) - base  # the deltas a checkpoint yields: θ_j − θ_pivot in fp32
    return base, d, draw(st.sampled_from([7, 97, 1 << 16]))


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Exact top-k


@given(problems(), st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4))
@SETTINGS
def test_topk_equals_stable_sort(problem, fractions):
    _, d, size = problem
    keys = d.reshape(len(d), -1).abs()
    n = keys.shape[1]
    ks = [max(1, int(f * n)) for f in fractions[: len(d)]]
    with chunk(size):
        topk = M.TopK.select(lambda s: keys[:, s], n, ks)
        mask = torch.cat([m for _, m in topk.masks(lambda s: keys[:, s], n)], dim=1)
    for j, k in enumerate(ks):
        assert torch.equal(mask[j], dense.top_k(keys[j], k)), (j, k)
        assert int(mask[j].sum()) == k


def test_topk_everything_row():
    keys = torch.rand(2, 10)
    topk = M.TopK.select(lambda s: keys[:, s], 10, [10, 3])
    mask = torch.cat([m for _, m in topk.masks(lambda s: keys[:, s], 10)], dim=1)
    assert mask[0].all() and int(mask[1].sum()) == 3


# ---------------------------------------------------------------------------------------------------
# SCE


@given(problems(), st.sampled_from([0.1, 0.5, 1.0]), st.sampled_from(["fusechat", "mergekit"]))
@SETTINGS
def test_sce_equals_dense(problem, tau, semantics):
    b, d, size = problem
    with chunk(size):
        got = M.sce(b, d, M.SceParams(tau=tau, semantics=semantics), name="w")
    want, eta = dense.sce(b, d, tau, semantics)
    close(got.tensor, want)
    close(torch.tensor(got.info["coefficients"]), eta.float())


@given(problems(k_max=1), st.sampled_from([0.1, 1.0]), st.sampled_from(["fusechat", "mergekit"]))
@SETTINGS
def test_sce_single_target(problem, tau, semantics):
    """K = 1: the target; mergekit 0.1.5 with τ < 1 selects nothing (no element varies): the pivot's tensor."""
    b, d, size = problem
    with chunk(size):
        got = M.sce(b, d, M.SceParams(tau=tau, semantics=semantics), name="w").tensor
    assert torch.equal(got, b if semantics == "mergekit" and tau < 1 else b + d[0])


@given(problems(), st.sampled_from([0.1, 1.0]), st.sampled_from(["fusechat", "mergekit"]))
@SETTINGS
def test_sce_untouched_tensor_returns_base(problem, tau, semantics):
    b, d, _ = problem
    got = M.sce(b, torch.zeros_like(d), M.SceParams(tau=tau, semantics=semantics), name="w").tensor
    assert torch.equal(got, b)


def test_sce_opposite_signs_keep_the_larger_side():
    b = torch.zeros(4)
    d = torch.tensor([[1.0, -2.0, 3.0, -1.0], [-2.0, 1.0, -1.0, 1.0]])
    got = M.sce(b, d, M.SceParams(tau=1.0), name="w").tensor
    # column sums -1, -1, 2, 0 → majorities -, -, +, + (0 counts as +); one model survives per column
    assert torch.equal(got, torch.tensor([-2.0, -2.0, 3.0, 1.0]))


@given(problems(), st.sampled_from([0.1, 0.5, 1.0]))
@settings(SETTINGS, max_examples=100)
def test_sce_mergekit_semantics_equals_mergekit_code(problem, tau):
    """mergekit 0.1.5's sce transcribed (dense.mergekit_sce) agrees everywhere: K = 1, no element varying,
    ⌊τ·nnz⌋ = 0, tiny deltas under its 1e-6 weight guard; only exact ties in the variance are left out
    (torch.topk's order among them is unspecified)."""
    b, d, size = problem
    var = torch.var(d, dim=0, unbiased=False)
    k = int(torch.count_nonzero(var) * tau)
    assume(tau == 1 or k == 0 or k == var.numel() or torch.unique(var).numel() == var.numel())
    with chunk(size):
        got = M.sce(b, d, M.SceParams(tau=tau, semantics="mergekit"), name="w").tensor
    close(got, dense.mergekit_sce(list(b + d), b, tau))


@given(problems(), st.sampled_from([0.1, 0.5, 1.0]))
@SETTINGS
def test_sce_fusechat_semantics_equals_fusechat_code(problem, tau):
    b, d, size = problem
    var = torch.var(d, dim=0, unbiased=False)
    k = int(torch.count_nonzero(var) * tau)
    assume(
        tau == 1 or k == 0 or torch.unique(var).numel() == var.numel()
    )  # topk's order at ties is unspecified
    assume(tau == 1 or k > 0 or not var.any())  # FuseChat: uniform weights when it selects nothing
    with chunk(size):
        got = M.sce(b, d, M.SceParams(tau=tau, semantics="fusechat"), name="w").tensor
    close(got, dense.fusechat_sce(list(b + d), b, tau))


def test_mergekit_semantics_single_target_is_the_pivot_as_in_mergekit():
    """mergekit 0.1.5: one target, τ < 1: no element varies, k = 0, an all-zero mask: the pivot's tensor
    (mergekit @a6e4028 returned a tensor of the wrong rank there, PR #700). FuseChat semantics: the target."""
    b, d = torch.randn(5, 3), torch.randn(1, 5, 3)
    assert torch.equal(dense.mergekit_sce([b + d[0]], b, 0.1), b)
    assert torch.equal(M.sce(b, d, M.SceParams(tau=0.1, semantics="mergekit"), name="w").tensor, b)
    assert torch.equal(M.sce(b, d, M.SceParams(tau=0.1, semantics="fusechat"), name="w").tensor, b + d[0])


def test_weight_guard_in_mergekit_semantics_only():
    """Fine-tuning-sized deltas (Σ_j mean(δ_j²) = 1e-7 < 1e-6): mergekit's guard makes the weights uniform,
    and so does `semantics: mergekit`; `fusechat` keeps η ∝ Σδ̂² (here 1 : 9), as FuseChat's code does."""
    g = torch.Generator().manual_seed(0)
    b, u = torch.randn(1000, generator=g), torch.randn(1000, generator=g)
    d = torch.stack([1e-4 * u, 3e-4 * u])
    fusechat = M.sce(b, d, M.SceParams(tau=1.0, semantics="fusechat"), name="w")
    close(torch.tensor(fusechat.info["coefficients"]), torch.tensor([0.1, 0.9]))
    mergekit = M.sce(b, d, M.SceParams(tau=1.0, semantics="mergekit"), name="w")
    assert mergekit.info["coefficients"] == [0.5, 0.5] == _mergekit_weights(d)
    close(mergekit.tensor, dense.mergekit_sce(list(b + d), b, 1.0))
    big = M.sce(b, d * 10, M.SceParams(tau=1.0, semantics="mergekit"), name="w")  # mean 1e-5: above the guard
    close(torch.tensor(big.info["coefficients"]), torch.tensor([0.1, 0.9]))


def test_mergekit_semantics_clamps_the_denominator_at_1e_6():
    """Where only a target with a weight below 1e-6 agrees, mergekit divides by 1e-6, not by its weight."""
    b = torch.zeros(2)
    d = torch.tensor([[1.0, 0.0], [0.0, 1e-4]])  # η ≈ [1, 1e-8]; element 1: only target 2 has a delta
    got = M.sce(b, d, M.SceParams(tau=1.0, semantics="mergekit"), name="w").tensor
    close(got, dense.mergekit_sce(list(b + d), b, 1.0))
    assert float(got[1]) == pytest.approx(1e-4 * (5e-9 / (0.5 + 5e-9)) / 1e-6, rel=1e-3)  # η_2 δ / 1e-6
    assert torch.equal(M.sce(b, d, M.SceParams(tau=1.0, semantics="fusechat"), name="w").tensor, d.sum(0))


def _mergekit_weights(d):
    return dense._mergekit_sce_weight(d).tolist()


# ---------------------------------------------------------------------------------------------------
# RSAF


RSAF_PARAMS = st.fixed_dictionaries({
    "tau": st.sampled_from([0.1, 1.0]),
    "rate": st.sampled_from(["element", "matrix"]),
    "select_by": st.sampled_from(["magnitude", "rate"]),
    "disjoint_mean": st.booleans(),
})  # fmt: skip


@given(problems(), RSAF_PARAMS)
@SETTINGS
def test_rsaf_equals_dense(problem, kw):
    b, d, size = problem
    p = M.RsafParams(**kw)
    with chunk(size):
        got = M.rsaf(b, d, p, name="w")
    rate = dense.rsaf_rate(b, d, p.rate, p.eps)
    skew = dense.skewness(rate)
    well_defined = (
        rate.flatten(1).double().var(1, correction=0) > 1e-12
    )  # skewness of a near-constant rate is noise
    close(torch.tensor(got.info["skewness"])[well_defined], skew.float()[well_defined])
    ratios = torch.tensor(got.info["ratios"], dtype=torch.float64)
    close(ratios, dense.rsaf_ratio(torch.tensor(got.info["skewness"], dtype=torch.float64), p.tau))
    want, eta = dense.rsaf(b, d, p.tau, ratios, p.rate, p.select_by, p.eps, p.disjoint_mean)
    close(got.tensor, want)
    close(torch.tensor(got.info["coefficients"]), eta.float())


@pytest.mark.parametrize(
    ("make", "sign"),
    [
        (lambda g, n: torch.empty(n).exponential_(generator=g), 1),  # long right tail: S > 0
        (lambda g, n: 1 - 0.2 * torch.empty(n).exponential_(generator=g).clamp(max=4.9), -1),  # S < 0
    ],
)
@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_rsaf_ratio_follows_skewness_sign(make, sign, tau):
    g = torch.Generator().manual_seed(1)
    b = torch.where(torch.rand(4000, generator=g) < 0.5, -1.0, 1.0)  # |θ| = 1: the rate is |δ|
    d = torch.stack([make(g, 4000) * torch.where(torch.rand(4000, generator=g) < 0.5, -1.0, 1.0)])
    got = M.rsaf(b, d, M.RsafParams(tau=tau), name="w").info
    s = got["skewness"][0]
    assert s * sign > 0.5
    want = tau / (1 + s) if s >= 0 else min(1.0, tau * (1 + abs(s)))
    assert got["ratios"][0] == pytest.approx(want)
    assert (want < tau) if sign > 0 else (want > tau or want == 1.0)


def test_rsaf_matrix_rate_selects_in_the_order_of_magnitude():
    """A matrix-level rate |δ|/RMS(θ) has the order of |δ|, but fp32 division merges deltas one ulp apart
    into a tie (broken by index), and whether it does depends on the RMS's last bit (block size, summation
    order): a hypothesis draw once found blockwise and dense RSAF-by-rate disagreeing there. Selection by
    rate must equal selection by magnitude, whatever the blocks."""
    rms = 1.4834539
    pairs = []
    for x in torch.linspace(0.75, 0.99, 4000).tolist():
        a = torch.tensor([x, x])
        a[1] = torch.nextafter(a[0], torch.tensor(2.0))  # the larger one last: an index tie-break picks a[0]
        if (a / rms)[0] == (a / rms)[1]:
            pairs.append(a)
    assert len(pairs) > 20  # the premise: division merges many near-ties
    d = torch.cat(pairs[:21])[None] * torch.where(torch.arange(42) % 3 == 0, -1.0, 1.0)
    b = torch.full((42,), rms)  # RMS(θ) = rms
    for size in (7, 1 << 16):
        with chunk(size):
            by_rate = M.rsaf(b, d, M.RsafParams(tau=0.5, rate="matrix", select_by="rate"), name="w")
            by_mag = M.rsaf(b, d, M.RsafParams(tau=0.5, rate="matrix", select_by="magnitude"), name="w")
        assert torch.equal(by_rate.tensor, by_mag.tensor), size
        kept = (by_rate.tensor != b).nonzero()[:, 0]
        for i in range(0, 42, 2):  # within a pair, the larger |δ| is never dropped for the smaller
            assert not (i in kept and i + 1 not in kept), (size, i)


def test_rsaf_untouched_matrix_has_zero_skew():
    got = M.rsaf(torch.randn(50), torch.zeros(2, 50), M.RsafParams(), name="w")
    assert got.info["skewness"] == [0.0, 0.0] and got.info["ratios"] == [0.1, 0.1]


# ---------------------------------------------------------------------------------------------------
# Task arithmetic, TIES, DARE, linear, SLERP


def _weights(draw_weights, k):
    return None if draw_weights is None else [0.5 + i for i in range(k)]


@given(problems(), st.sampled_from([0.3, 1.0]), st.sampled_from([None, "ramp"]))
@SETTINGS
def test_task_arithmetic_equals_dense(problem, scaling, weights):
    b, d, size = problem
    w = _weights(weights, len(d))
    with chunk(size):
        got = M.task_arithmetic(b, d, M.TaskArithmeticParams(scaling=scaling, weights=w), name="w").tensor
    close(got, dense.task_arithmetic(b, d, scaling, torch.tensor(w or [1.0] * len(d))))


@given(problems(), st.sampled_from([0.1, 0.6, 1.0]), st.sampled_from([None, "ramp"]))
@SETTINGS
def test_ties_equals_dense(problem, density, weights):
    b, d, size = problem
    w = _weights(weights, len(d))
    with chunk(size):
        got = M.ties(b, d, M.TiesParams(density=density, scaling=0.7, weights=w), name="w").tensor
    close(got, dense.ties(b, d, density, 0.7, torch.tensor(w or [1.0] * len(d))))


@given(problems(), st.sampled_from([0.0, 0.4, 0.9]), st.booleans(), st.sampled_from(["ties", "linear"]),
       st.sampled_from([None, "ramp"]))  # fmt: skip
@SETTINGS
def test_dare_equals_dense(problem, drop_rate, rescale, combine, weights):
    b, d, size = problem
    w = _weights(weights, len(d))
    p = M.DareParams(drop_rate=drop_rate, rescale=rescale, seed=3, combine=combine, scaling=0.9, weights=w)
    with chunk(size):
        got = M.dare(b, d, p, name="layer.w").tensor
    want = dense.dare(b, d, drop_rate, rescale, 3, combine, 0.9, torch.tensor(w or [1.0] * len(d)), "layer.w")
    close(got, want)


def test_dare_seeds():
    b, d = torch.zeros(20000), torch.ones(2, 20000)
    run = lambda seed, name: M.dare(b, d, M.DareParams(seed=seed, combine="linear"), name=name)
    first = run(0, "a")
    assert torch.equal(first.tensor, run(0, "a").tensor)
    assert not torch.equal(first.tensor, run(1, "a").tensor)
    assert not torch.equal(first.tensor, run(0, "b").tensor)
    assert first.info["kept"] == pytest.approx([0.6, 0.6], abs=0.02)


@given(problems(), st.sampled_from([None, "ramp"]))
@SETTINGS
def test_linear_equals_dense(problem, weights):
    b, d, size = problem
    w = _weights(weights, len(d))
    with chunk(size):
        got = M.linear(b, d, M.LinearParams(weights=w), name="w").tensor
    close(got, dense.linear(b, d, torch.tensor(w or [1.0] * len(d))))


@given(problems(k_max=2), st.sampled_from([0.0, 0.3, 1.0]), st.sampled_from([0.9995, 0.1]))
@SETTINGS
def test_slerp_equals_dense(problem, t, threshold):
    b, d, size = problem
    with chunk(size):
        got = M.slerp(b, d, M.SlerpParams(t=t, dot_threshold=threshold), name="w").tensor
    v0 = b if len(d) == 1 else b + d[0]
    close(got, dense.slerp(v0, b + d[-1], t, threshold))


def test_slerp_interpolates_on_the_great_circle():
    b, d = torch.tensor([1.0, 0.0]), torch.tensor([[-1.0, 1.0]])  # pivot e1 → target e2
    got = M.slerp(b, d, M.SlerpParams(t=0.5), name="w").tensor
    close(got, torch.tensor([2**-0.5, 2**-0.5]))


# ---------------------------------------------------------------------------------------------------
# Settings


def test_validate_messages():
    with pytest.raises(MergeError, match=r"slerp merges 1 to 2 target\(s\), got 3"):
        M.validate("slerp", M.SlerpParams(), 3)
    with pytest.raises(MergeError, match="ties.weights has 1 entries for 2 targets"):
        M.validate("ties", M.TiesParams(weights=[1.0]), 2)
    with pytest.raises(MergeError, match=r"dare.weights must be positive \(they weigh a sign election\)"):
        M.validate("dare", M.DareParams(weights=[1.0, 0.0]), 2)
    with pytest.raises(MergeError, match="linear.weights must have a positive sum"):
        M.validate("linear", M.LinearParams(weights=[1.0, -1.0]), 2)
    with pytest.raises(MergeError, match="unknown merge method 'magic'"):
        M.validate("magic", M.LinearParams(), 2)


def test_all_methods_registered():
    assert set(M.METHODS) == {"sce", "rsaf", "task_arithmetic", "ties", "dare", "linear", "slerp"}
