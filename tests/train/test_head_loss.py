"""The chunked LM-head loss (gradients taken chunk by chunk in the forward) against plain autograd."""

from __future__ import annotations

import pytest
import torch

from fusepipe.losses import token_losses
from fusepipe.train import loop


def batch(n: int, v: int, k: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(v, generator=g)[:k] for _ in range(n)])
    ids[0, -2:] = -1  # padding
    lp = torch.log_softmax(torch.randn(n, k + 3, generator=g), -1)[:, :k]
    lp[ids < 0] = -torch.inf
    return {"labels": torch.randint(0, v, (n,), generator=g), "t_ids": ids, "t_lp": lp,
            "sft_w": torch.rand(n, generator=g), "fus_w": torch.rand(n, generator=g),
            "inf": torch.rand(n, generator=g) > 0.5}


@pytest.mark.parametrize("kind", ["ce", "kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize(("bias", "softcap"), [(False, None), (True, 30.0)])
def test_chunked_head_loss_matches_autograd(monkeypatch, kind, bias, softcap):
    monkeypatch.setattr(loop, "POSITION_CHUNK", 5)  # several chunks, the last one short
    n, hdim, v = 13, 8, 40
    torch.manual_seed(0)
    head = torch.nn.Linear(hdim, v, bias=bias)
    h = torch.randn(n, hdim, requires_grad=True)
    b = batch(n, v, 4)
    parts = {"sft_gt": 0.0, "sft_inf": 0.0, "fusion_gt": 0.0, "fusion_inf": 0.0}
    total = loop.ChunkedHeadLoss.apply(h, head.weight, head.bias, b, kind, 2.0, softcap, parts)
    (2.5 * total).backward()
    got = (h.grad.clone(), head.weight.grad.clone(), None if head.bias is None else head.bias.grad.clone())
    h.grad, head.weight.grad = None, None
    if head.bias is not None:
        head.bias.grad = None
    logits = head(h)
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    sft, fusion = token_losses(logits, b["labels"], b["t_ids"], b["t_lp"], kind=kind, temperature=2.0)
    ref = (b["sft_w"] * sft).sum() + (b["fus_w"] * fusion).sum()
    (2.5 * ref).backward()
    torch.testing.assert_close(total, ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[0], h.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], head.weight.grad, rtol=1e-5, atol=1e-6)
    if bias:
        torch.testing.assert_close(got[2], head.bias.grad, rtol=1e-5, atol=1e-6)
    inf = b["inf"]
    assert parts["fusion_inf"] == pytest.approx(float(fusion[inf].sum()), rel=1e-5)
    assert parts["sft_gt"] == pytest.approx(float(sft[~inf].sum()), rel=1e-5)
