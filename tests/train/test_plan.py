"""The schedule's plan of optimizer steps and the per-position loss weights of a micro-batch."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fusepipe import config as fpconfig
from fusepipe import pipeline as fppipeline
from fusepipe import recipes
from fusepipe.errors import ArtifactError, ConfigError
from fusepipe.train.data import Example, Teacher, plan
from fusepipe.train.loop import collate, cosine_with_warmup

TRAIN = {"global_batch": 4, "micro_batch": 2, "seed": 0, "epochs_scale": 1.0, "max_steps": None}


def example(i: int, mode: str, n: int = 3, length: int = 8) -> Example:
    ids = np.arange(length, dtype=np.int64) + 10 * i
    t = Teacher("m", 1.0, np.zeros((n, 2), np.int32), np.zeros((n, 2), np.float32), np.ones(n, bool))
    return Example(f"s{i}", mode, ids, np.arange(length - n, length, dtype=np.int64), [t])


def examples(n_gt: int = 8, n_inf: int = 6) -> list[Example]:
    return [example(i, "gt", length=4 + i) for i in range(n_gt)] + [example(100 + i, "inf") for i in range(n_inf)]


def test_profuser_schedule_switches_data_and_weights_between_phases():
    ex = examples()
    schedule = recipes.resolve(fpconfig.RecipeConfig(name="p", kind="profuser"))["schedule"]
    steps = plan(ex, schedule, TRAIN, world=1)
    phase1 = [s for s in steps if s.phase == 0]
    phase2 = [s for s in steps if s.phase == 1]
    assert len(phase1) == 2 and len(phase2) == 2 * 4  # 6 inf / 4 per step; 14 examples / 4 per step, 2 epochs
    assert {ex[i].mode for s in phase1 for mb in s.micro_batches for i in mb} == {"inf"}
    assert {ex[i].mode for s in phase2 for mb in s.micro_batches for i in mb} == {"gt", "inf"}
    assert [s.index for s in steps] == list(range(len(steps)))
    # phase 2 weighs gt by w2 = 1 and inf by w1 = 0.1, SFT 1 and fusion β = 0.5 (ProFuser Eq. 4-5)
    batch = collate([ex[0], ex[-1]], 0, schedule[1])
    gt, inf = ~batch["inf"], batch["inf"]
    assert batch["sft_w"][gt].tolist() == [1.0] * 3 and batch["fus_w"][gt].tolist() == [0.5] * 3
    assert np.allclose(batch["sft_w"][inf].numpy(), 0.1) and np.allclose(batch["fus_w"][inf].numpy(), 0.05)
    batch = collate([ex[-1]], 0, schedule[0])  # phase 1: inference mode, λ = 0.1
    assert batch["sft_w"].tolist() == [1.0] * 3 and np.allclose(batch["fus_w"].numpy(), 0.1)


def test_every_step_has_the_same_number_of_micro_batches_and_covers_the_epoch():
    ex = examples(n_gt=7, n_inf=0)
    steps = plan(ex, [{"name": "a", "modes": ["gt"], "epochs": 1, "order": "shuffle"}], TRAIN, world=1)
    assert all(len(s.micro_batches) == 2 for s in steps)
    seen = [i for s in steps for mb in s.micro_batches for i in mb]
    assert set(seen) == set(range(7))


def test_the_plan_is_deterministic_and_epochs_reshuffle():
    ex = examples()
    phase = [{"name": "a", "modes": ["gt", "inf"], "epochs": 2, "order": "shuffle"}]
    a, b = plan(ex, phase, TRAIN, 1), plan(ex, phase, TRAIN, 1)
    assert [s.micro_batches for s in a] == [s.micro_batches for s in b]
    per_epoch = [[mb for s in a if s.epoch == e for mb in s.micro_batches] for e in (0, 1)]
    assert per_epoch[0] != per_epoch[1]


def test_gtlen_orders_short_to_long():
    ex = examples(n_gt=8, n_inf=0)
    schedule = recipes.NAMED_SCHEDULES["gtlen"]
    steps = plan(ex, [p.model_dump() for p in schedule], {**TRAIN, "epochs_scale": 1 / 3}, 1)
    lengths = [len(ex[i].input_ids) for s in steps for mb in s.micro_batches for i in mb]
    assert lengths == sorted(lengths)


def test_fractional_epochs_take_that_share():
    ex = examples(n_gt=8, n_inf=0)
    steps = plan(ex, [{"name": "a", "modes": ["gt"], "epochs": 1.5, "order": "shuffle"}], TRAIN, 1)
    assert sum(1 for s in steps if s.epoch == 1) == 1  # half of 8 examples = 4 = one step


def test_a_phase_without_examples_names_its_modes():
    with pytest.raises(ArtifactError) as err:
        plan(examples(n_inf=0), [{"name": "inference", "modes": ["inf"], "epochs": 1, "order": "shuffle"}], TRAIN, 1)
    assert str(err.value) == ("phase 'inference' trains on modes ['inf'] but the targets hold no example of them")


def test_cosine_schedule_warms_up_then_decays_to_zero():
    f = cosine_with_warmup(10, 0.2)
    values = [f(s) for s in range(11)]
    assert values[0] == 0.5 and values[1] == 1.0 and values[10] == 0.0
    assert all(a >= b for a, b in itertools.pairwise(values[1:]))


def test_recipe_defaults_follow_the_papers():
    fc = recipes.resolve(fpconfig.RecipeConfig(name="f", kind="fusechat"))
    assert fc["pairwise"] and fc["train"]["lr"] == 5e-6 and fc["schedule"][0]["sft_weight"] == 0.9
    pf = recipes.resolve(fpconfig.RecipeConfig(name="p", kind="profuser", train={"lr": 1e-3}))
    assert not pf["pairwise"] and pf["train"]["lr"] == 1e-3 and pf["train"]["loss"] == "kl"
    assert [p["modes"] for p in pf["schedule"]] == [["inf"], ["inf", "gt"]]
    uni = recipes.resolve(fpconfig.RecipeConfig(name="u", kind="infifusion_unified"))
    assert uni["fusion"]["function"] == "udf" and uni["schedule"][0]["fusion_weight"] == 0.5


def test_unknown_schedule_and_missing_modes_are_config_errors(tmp_path):
    with pytest.raises(ConfigError) as err:
        recipes.resolve(fpconfig.RecipeConfig(name="x", kind="fusechat", schedule="fastest"))
    assert str(err.value).startswith("recipe 'x': unknown schedule 'fastest'; named schedules: fusechat, profuser")
    raw = {"data": {"sources": [{"name": "a", "path": "a.jsonl"}]}, "logits": {"modes": ["gt"]},
           "models": [{"name": "p", "path": "p", "role": "pivot"}, {"name": "s", "path": "s", "role": "source"}],
           "recipes": [{"name": "pf", "kind": "profuser"}]}
    with pytest.raises(ConfigError) as err:
        fppipeline.load_dict(raw)
    assert str(err.value) == ("recipe 'pf': its schedule trains on mode(s) inf but logits.modes is ['gt']; add "
                              "them there or pick another schedule")
