"""Rows grouped by their prompt's uid: the groups of GRPO, RLOO, OPO, ... and of the generation dumps.

`index` holds one group id per row (the prompt's uid, repeated for its n responses); groups need not be
contiguous. Pure Python/torch, shared by the advantage estimators and rl_trainer.dumps.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np
import torch


def group_rows(index: np.ndarray | Sequence[Hashable] | torch.Tensor) -> dict[Hashable, list[int]]:
    """Group id -> the rows carrying it, in row order (groups in order of first appearance).

    >>> group_rows(["a", "b", "a"])
    {'a': [0, 2], 'b': [1]}
    """
    keys = index.tolist() if hasattr(index, "tolist") else list(index)
    groups: dict[Hashable, list[int]] = {}
    for row, key in enumerate(keys):
        groups.setdefault(key, []).append(row)
    return groups


def group_mean_std(scores: torch.Tensor, groups: dict[Hashable, list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and std of `scores` (bs,) over the row's group, as torch.mean / torch.std (Bessel-corrected,
    n - 1 in the denominator) of the group's scores in row order, in the dtype of `scores`.

    A group of one gets mean 0 and std 1 (verl's convention in the estimators: its score passes through, up to
    the division by 1 + epsilon).
    """
    mean = torch.zeros_like(scores)
    std = torch.ones_like(scores)
    for rows in groups.values():
        if len(rows) > 1:
            group_scores = scores[rows]
            mean[rows] = torch.mean(group_scores)
            std[rows] = torch.std(group_scores)
    return mean, std
