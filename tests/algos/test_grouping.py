"""rl_trainer.algos.grouping: rows by uid, and the per-group mean / std the estimators use."""

from __future__ import annotations

import math

import numpy as np
import torch

from rl_trainer.algos.grouping import group_mean_std, group_rows


def test_group_rows_in_order_of_first_appearance_from_any_index_type():
    expected = {"b": [0, 3], "a": [1, 2, 5], "c": [4]}  # groups need not be contiguous
    uids = ["b", "a", "a", "b", "c", "a"]
    assert group_rows(uids) == expected
    assert group_rows(np.array(uids, dtype=object)) == expected
    assert list(group_rows(np.array(uids, dtype=object))) == ["b", "a", "c"]
    assert group_rows(torch.tensor([7, 3, 3, 7, 1, 3])) == {7: [0, 3], 3: [1, 2, 5], 1: [4]}
    assert group_rows([]) == {}


def test_group_mean_std_bessel_corrected_and_groups_of_one():
    # Group "a" = rows 0, 2 with scores 1, 3: mean 2, std sqrt(((1-2)^2 + (3-2)^2) / (2-1)) = sqrt(2).
    # Group "b" = rows 1, 3, 4 with scores 2, 4, 9: mean 5, std sqrt((9 + 1 + 16) / 2) = sqrt(13).
    # Group "c" = row 5 alone: mean 0, std 1 (verl's convention).
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 9.0, 6.0])
    mean, std = group_mean_std(scores, group_rows(["a", "b", "a", "b", "b", "c"]))
    assert mean.tolist() == [2.0, 5.0, 2.0, 5.0, 5.0, 0.0]
    assert std.tolist() == torch.tensor([math.sqrt(2), math.sqrt(13), math.sqrt(2), math.sqrt(13),
                                         math.sqrt(13), 1.0]).tolist()
    assert mean.dtype == std.dtype == scores.dtype
