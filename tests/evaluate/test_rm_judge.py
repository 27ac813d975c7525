"""The reward-model judge's win rate on hand-made score tables."""

from __future__ import annotations

import math

from fusepipe.evaluate.stage import win_rate

PIVOT = {"a": {"r1": 1.0, "r2": 1.0, "r3": 1.0}, "b": {"r1": 0.0, "r2": 0.0, "r3": 0.0},
         "c": {"r1": 0.0, "r2": 0.0}}


def rows(*scores):
    return [{"sample_id": sid, "scores": s} for sid, s in scores]


def test_majority_of_rms_decides_each_prompt():
    per = rows(("a", {"r1": 2.0, "r2": 2.0, "r3": 0.0}),  # 2 of 3 prefer the model: a win
               ("b", {"r1": -1.0, "r2": 1.0, "r3": -1.0}))  # 1 of 3: a loss
    assert win_rate(per, PIVOT) == 0.5


def test_split_votes_and_equal_scores_count_half():
    per = rows(("c", {"r1": 1.0, "r2": -1.0}),  # 1-1 split
               ("a", {"r1": 1.0, "r2": 1.0, "r3": 1.0}))  # all equal
    assert win_rate(per, PIVOT) == 0.5


def test_prompts_the_pivot_lacks_are_skipped():
    assert win_rate(rows(("zz", {"r1": 9.0})), PIVOT) != win_rate(rows(("zz", {"r1": 9.0})), PIVOT)  # NaN
    assert math.isnan(win_rate([], PIVOT))
    assert win_rate(rows(("zz", {"r1": 9.0}), ("a", {"r1": 2.0, "r2": 2.0, "r3": 2.0})), PIVOT) == 1.0
