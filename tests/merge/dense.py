"""Dense transcriptions: each method's formula written directly over whole tensors (no blocks, no radix
select), and two reference code paths transcribed line by line, to check fusepipe.merge.methods against."""

from __future__ import annotations

import math

import torch

from fusepipe.merge.methods import dare_generator


def top_k(key: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the k largest keys; ties go to the lowest flat index (stable sort)."""
    order = torch.sort(key.reshape(-1), descending=True, stable=True).indices
    mask = torch.zeros(key.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask.view(key.shape)


def _col(w: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return w.view(-1, *[1] * (like.dim() - 1))


def erase_mean(x: torch.Tensor, w: torch.Tensor, elect_on: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_j w_j e_j x_j / Σ_j w_j e_j with e_j = [sign(x_j) = sign(Σ_j x_j)] (0 → +)."""
    elect_on = x if elect_on is None else elect_on
    majority = torch.where(elect_on.sum(0) >= 0, 1.0, -1.0)
    we = (elect_on.sign() == majority).float() * _col(w, x)
    den = we.sum(0)
    return torch.where(den > 0, (we * x).sum(0) / torch.where(den > 0, den, 1.0), 0.0)


def coefficients(x: torch.Tensor, guard: float = 0.0) -> torch.Tensor:
    """η_j ∝ Σ x_j²; uniform when the sum is 0 or the sum of per-model means of squares is below `guard`."""
    sq = x.square().flatten(1).sum(1)
    uniform = sq.sum() == 0 or float(sq.sum()) / x[0].numel() < guard
    return torch.full_like(sq, 1 / len(sq)) if uniform else sq / sq.sum()


def sce(b, d, tau, semantics):
    """fusechat: mask only in η, no selection when ⌊τ·nnz⌋ = 0. mergekit (0.1.5): δ⊙m everywhere, an
    all-zero mask when ⌊τ·nnz⌋ = 0, the 1e-6 guard on Σ_j mean(δ̂_j²), the denominator clamped at 1e-6."""
    mergekit = semantics == "mergekit"
    mask = torch.ones(b.shape, dtype=torch.bool)
    if tau < 1:
        var = torch.var(d, dim=0, unbiased=False)
        k = int(torch.count_nonzero(var) * tau)
        if k > 0:
            mask = top_k(var, k)
        elif mergekit:
            mask = torch.zeros(b.shape, dtype=torch.bool)
    eta = coefficients(d * mask, 1e-6 if mergekit else 0.0)
    if not mergekit:
        return b + erase_mean(d, eta), eta
    x = d * mask
    majority = torch.where(x.sum(0) >= 0, 1.0, -1.0)
    we = (x.sign() == majority).float() * _col(eta, x)
    return b + (we * x).sum(0) / we.sum(0).clamp(min=1e-6), eta


def skewness(r: torch.Tensor) -> torch.Tensor:
    """Fisher-Pearson g1 per row, float64."""
    r = r.flatten(1).double()
    c = r - r.mean(1, keepdim=True)
    m2, m3 = c.square().mean(1), c.pow(3).mean(1)
    return torch.where(m2 > 0, m3 / m2.clamp(min=1e-300).pow(1.5), 0.0)


def rsaf_rate(b, d, rate="element", eps=1e-8):
    if rate == "element":
        return d.abs() / (b.abs() + eps)
    return d.abs() / (b.square().mean().sqrt() + eps)


def rsaf_ratio(skew: torch.Tensor, tau: float) -> torch.Tensor:
    return torch.where(skew >= 0, tau / (1 + skew), tau * (1 + skew.abs())).clamp(max=1)


def rsaf(b, d, tau, ratios, rate="element", select_by="magnitude", eps=1e-8, disjoint=True):
    """RSAF with given per-target ratios K_j (checked separately against `rsaf_ratio(skewness(r))`)."""
    n = b.numel()
    key = rsaf_rate(b, d, rate, eps) if select_by == "rate" and rate == "element" else d.abs()  # matrix: |δ|'s order
    mask = torch.stack([top_k(key[j], max(1, int(float(ratios[j]) * n))) for j in range(len(d))])
    x = d * mask
    eta = coefficients(x)
    if disjoint:
        return b + erase_mean(x, eta), eta
    majority = torch.where(x.sum(0) >= 0, 1.0, -1.0)
    return b + ((x.sign() == majority) * _col(eta, x) * x).sum(0), eta


def task_arithmetic(b, d, scaling, w):
    return b + scaling * (d * _col(w, d)).sum(0)


def ties(b, d, density, scaling, w):
    n = b.numel()
    k = n if density >= 1 else max(1, int(density * n))
    x = d * torch.stack([top_k(d[j].abs(), k) for j in range(len(d))])
    return b + scaling * erase_mean(x, w, elect_on=x * _col(w, x))


def dare(b, d, drop_rate, rescale, seed, combine, scaling, w, name):
    n = b.numel()
    keep = torch.stack(
        [torch.rand(n, generator=dare_generator(seed, name, j)) < 1 - drop_rate for j in range(len(d))]
    )
    x = d * keep.view(d.shape) / ((1 - drop_rate) if rescale else 1.0)
    if combine == "ties":
        merged = erase_mean(x, w, elect_on=x * _col(w, x))
    else:
        merged = (x * _col(w, x)).sum(0) / w.sum()
    return b + scaling * merged


def linear(b, d, w):
    thetas = b + d
    return (thetas * _col(w, d)).sum(0) / w.sum()


def slerp(v0, v1, t, dot_threshold=0.9995, eps=1e-8):
    """Shoemake's slerp of the flattened tensors, in float64."""
    a, c = v0.double().flatten(), v1.double().flatten()
    na, nc = a.norm(), c.norm()
    dot = float(((a / na if na > eps else a) * (c / nc if nc > eps else c)).sum().clamp(-1, 1))
    if abs(dot) > dot_threshold:
        return ((1 - t) * v0.double() + t * v1.double()).float()
    omega = math.acos(dot)
    s0, s1 = math.sin((1 - t) * omega) / math.sin(omega), math.sin(t * omega) / math.sin(omega)
    return (s0 * v0.double() + s1 * v1.double()).float()


# ---------------------------------------------------------------------------------------------------
# Reference code paths, transcribed


def mergekit_sce(tensors: list[torch.Tensor], base_tensor: torch.Tensor, select_topk: float) -> torch.Tensor:
    """mergekit 0.1.5 (PyPI) mergekit/merge_methods/sce.py `sce_merge` (with `sce_weight`,
    `sce_mask` and generalized_task_arithmetic.py `get_mask(method="sum")`), int8_mask=False."""
    mask_dtype = base_tensor.dtype
    task_vectors = torch.stack([t - base_tensor for t in tensors], dim=0)
    if select_topk < 1:
        mask = _mergekit_sce_mask(task_vectors, select_topk, mask_dtype)
        task_vectors = task_vectors * mask.unsqueeze(0)
    erase_mask = _mergekit_get_mask(task_vectors, mask_dtype)
    tv_weights = _mergekit_sce_weight(task_vectors)
    while tv_weights.dim() < task_vectors.dim():
        tv_weights = tv_weights.unsqueeze(-1)
    erased_weights = tv_weights * erase_mask
    merged_tv = (task_vectors * erased_weights).sum(dim=0)
    final_tv = merged_tv / torch.sum(erased_weights, dim=0).clamp(min=1e-6)
    return base_tensor + final_tv


def _mergekit_sce_weight(tvs):
    weights = tvs.square().reshape(tvs.shape[0], -1).mean(dim=1)
    weight_sum = torch.sum(weights).item()
    if abs(weight_sum) < 1e-6:
        return torch.ones_like(weights) / weights.shape[0]
    return weights / weight_sum


def _mergekit_sce_mask(tvs, density, mask_dtype):
    # 0.1.5: the early exits return a mask without the model axis (a6e4028 kept it: wrong-rank output, PR #700)
    if density <= 0:
        return torch.zeros_like(tvs[0], dtype=mask_dtype)
    if density >= 1:
        return torch.ones_like(tvs[0], dtype=mask_dtype)
    var = torch.var(tvs, dim=0, unbiased=False)
    nonzero = torch.count_nonzero(var)
    k = int(nonzero * density)
    if k == 0:
        return torch.zeros_like(var, dtype=mask_dtype)
    _, indices = torch.topk(var.abs().view(-1), k=k, largest=True)
    mask = torch.zeros_like(var, dtype=mask_dtype)
    mask.view(-1)[indices] = 1
    return mask


def _mergekit_get_mask(delta, mask_dtype):
    sign = delta.sign().to(mask_dtype)
    sign_weight = delta.sum(dim=0)
    majority_sign = (sign_weight >= 0).to(mask_dtype) * 2 - 1
    return sign == majority_sign


def fusechat_sce(tensors: list[torch.Tensor], base: torch.Tensor, select_topk: float) -> torch.Tensor:
    """FuseChat's bundled mergekit SCE (fanqiwan/FuseAI @7d9a307, FuseChat sce_merging.py `SCETask.execute`,
    `get_sce_weight`, `get_sce_mask`, `get_erase_mask`; see shared/reference/fusechat.md stage 5): the
    mask only enters the weights, erase and merge use the unmasked deltas."""
    deltas = torch.stack([x - base for x in tensors], dim=0)
    weights = _fusechat_sce_weight(deltas, select_topk)
    weights = torch.tensor(weights, dtype=deltas.dtype)
    while len(deltas.shape) > len(weights.shape):
        weights.unsqueeze_(-1)
    sign = deltas.sign()
    majority_sign = (deltas.sum(dim=0) >= 0).to(deltas.dtype) * 2 - 1
    erase_mask = sign == majority_sign
    erased_weights = weights * erase_mask
    mixed_delta = (deltas * erased_weights).sum(dim=0)
    divisor = erased_weights.sum(dim=0)
    divisor[divisor == 0] = 1
    return base + mixed_delta / divisor


def _fusechat_sce_weight(deltas, density):
    if density < 1:
        variance = torch.var(deltas, dim=0, unbiased=False, keepdim=False)
        k = int(density * torch.count_nonzero(variance))
        mask = torch.zeros_like(variance)
        if k > 0:
            mask.view(-1)[torch.topk(variance.abs().view(-1), k=k, largest=True).indices] = 1
        deltas = [delta * mask for delta in deltas]
    weights = [torch.sum(delta**2).item() / delta.numel() for delta in deltas]
    total = sum(weights)
    return [1.0 / len(weights)] * len(weights) if total == 0 else [w / total for w in weights]
