"""DeepSpeed ZeRO on CPU (gloo, one process) against a plain torch loop, checkpoint resume after an interruption,
and the non-finite-loss stop; on the toy pivot and the fusechat targets of the session's pipeline run."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fusepipe import paths
from fusepipe import pipeline as fppipeline
from fusepipe.models import load_tokenizer
from fusepipe.train import loop
from fusepipe.train.data import load_examples, plan
from fusepipe.train.loop import TrainError, collate, cosine_with_warmup, micro_batch_loss

STEPS = 4


@pytest.fixture(scope="module")
def setup(pipeline_cfg):
    cfg = pipeline_cfg
    params = fppipeline.stage_slice(cfg, "train", "fusechat/qwen-arith")
    params["recipe"]["train"].update(micro_batch=4, global_batch=8, max_steps=STEPS, save_every=2,
                                     gradient_checkpointing=False, lr=1e-3)
    tok = load_tokenizer(params["pivot"])
    shards = [paths.targets_shard(cfg.workdir, "fusechat", "qwen-arith", i) for i in range(cfg.logits.shards)]
    examples = load_examples(shards, tok, params["pivot"], params["recipe"]["train"]["max_len"])
    steps = plan(examples, params["recipe"]["schedule"], params["recipe"]["train"], 1)
    return params, tok, examples, steps


def run(setup, tmp_path, **train):
    params, tok, examples, steps = setup
    params = copy.deepcopy(params)
    params["recipe"]["train"].update(train)
    result = loop.train(params, examples, steps, tok, params["pivot"]["path"], tmp_path, "hash")
    return [r["loss"] for r in result["log"]], load_file(tmp_path / "model" / "model.safetensors"), result


def plain_torch(setup) -> list[float]:
    """The same steps without DeepSpeed: AdamW, the cosine schedule, global-norm clipping, the token mean."""
    from transformers import AutoModelForCausalLM

    params, tok, examples, steps = setup
    cfg, schedule = params["recipe"]["train"], params["recipe"]["schedule"]
    torch.manual_seed(cfg["seed"])
    model = AutoModelForCausalLM.from_pretrained(params["pivot"]["path"], dtype=torch.float32)
    model.config.use_cache = False
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(len(steps), cfg["warmup_ratio"]))
    losses = []
    for step in steps:
        n = sum(len(examples[i].positions) for mb in step.micro_batches for i in mb)
        total = 0.0
        for mb in step.micro_batches:
            batch = collate([examples[i] for i in mb], tok.pad_token_id, schedule[step.phase])
            loss, _ = micro_batch_loss(model, batch, cfg["loss"], cfg["temperature"], "cpu")
            (loss / n).backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(total / n)
    return losses


def test_zero2_and_zero3_follow_a_plain_torch_loop(setup, tmp_path):
    reference = plain_torch(setup)
    zero2, weights2, _ = run(setup, tmp_path / "z2", zero_stage=2)
    zero3, weights3, _ = run(setup, tmp_path / "z3", zero_stage=3)
    assert len(reference) == STEPS and reference[-1] < reference[0]
    np.testing.assert_allclose(zero2, reference, rtol=1e-4)
    np.testing.assert_allclose(zero3, reference, rtol=1e-4)
    for name in weights2:  # ZeRO-2 runs the fused chunked head, ZeRO-3 the module path: fp32 summation order differs
        torch.testing.assert_close(weights3[name], weights2[name], rtol=1e-4, atol=5e-5)


def test_an_interrupted_run_resumes_to_the_same_weights(setup, tmp_path, monkeypatch):
    straight, straight_weights, _ = run(setup, tmp_path / "straight")
    monkeypatch.setenv("FUSEPIPE_TRAIN_STOP_AFTER", "1")  # dies after the checkpoint of step 1 (save_every 2)
    with pytest.raises(TrainError, match=r"stopped after step 1 \(FUSEPIPE_TRAIN_STOP_AFTER\); rerun to resume"):
        run(setup, tmp_path / "resumed")
    assert (tmp_path / "resumed" / "checkpoints" / "step1").is_dir()
    assert not (tmp_path / "resumed" / "model").exists()
    monkeypatch.delenv("FUSEPIPE_TRAIN_STOP_AFTER")
    resumed, weights, result = run(setup, tmp_path / "resumed")
    assert result["resumed_at"] == 2
    assert resumed == straight  # the log of the first steps comes back from the checkpoint
    for name, tensor in straight_weights.items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=0)  # bit-exact
    assert not (tmp_path / "resumed" / "checkpoints").exists()  # dropped once the model is out


def test_checkpoints_of_another_configuration_are_not_resumed(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("FUSEPIPE_TRAIN_STOP_AFTER", "1")
    with pytest.raises(TrainError):
        run(setup, tmp_path)
    monkeypatch.delenv("FUSEPIPE_TRAIN_STOP_AFTER")
    params, tok, examples, steps = setup
    result = loop.train(copy.deepcopy(params), examples, steps, tok, params["pivot"]["path"], tmp_path, "other")
    assert result["resumed_at"] == 0


def test_a_non_finite_loss_stops_with_the_step_and_samples(setup, tmp_path):
    params, tok, examples, steps = setup
    bad = copy.deepcopy(examples)
    first = steps[0].micro_batches[0][0]
    bad[first].teachers[0].weight = math.nan  # a corrupt targets row
    with pytest.raises(TrainError) as err:
        loop.train(copy.deepcopy(params), bad, steps, tok, params["pivot"]["path"], tmp_path, "hash")
    msg = str(err.value)
    assert msg.startswith("step 0 (phase 'fuse'): loss is nan on samples ")
    assert bad[first].key in msg and msg.endswith("stopping (check those targets, or lower train.lr)")
