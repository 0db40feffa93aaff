"""DAPO's dynamic sampling (`algorithm.filter_groups`, https://arxiv.org/abs/2503.14476), and the learning-signal
metric every run logs. Driver side; numpy only.

A group (the rollout.n responses of one prompt) whose responses all get the same reward has advantage 0 under
every group-relative estimator (GRPO, RLOO, ...), so it costs a forward and backward pass and teaches nothing. With
`algorithm.filter_groups.enable=true` each step draws generation batches of `data.gen_batch_size` prompts from the
training loader, keeps the groups whose `metric` varies (and, as verl, groups of a single response), and stops once
`data.train_batch_size` groups are kept; the first `train_batch_size` kept groups train, the surplus is discarded.
When `max_num_gen_batches > 0` batches were not enough, the run stops with an error, as verl's DAPO trainer
raises. The semantics are those of verl's DAPO recipe trainer (`recipe/dapo/dapo_ray_trainer.py`, the keys of verl
0.9.1's `FilterGroupsConfig`): verl 0.9.1's own `RayPPOTrainer` does not read `filter_groups`, and its v1 replay
buffer refills prompts asynchronously and ignores `max_num_gen_batches`.

Metric names: `train/num_gen_batches` (the DAPO recipe's), and verl 0.9.1 v1's
`training/filter_groups/evicted_samples` (groups dropped for an all-equal metric) and
`training/filter_groups/discarded_surplus_samples` (kept groups beyond train_batch_size).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rl_trainer.errors import UserError

# Metrics from the summed scores: verl 0.9.1's "reward" (the pre-KL score), the recipe's seq_reward (the same) and
# seq_final_reward (after KL in reward, which rl_trainer.config refuses with filtering: here the same as well).
SCORE_METRICS = ("reward", "seq_reward", "seq_final_reward")


def metric_values(metric: str, sequence_scores: np.ndarray, reward_extra: dict[str, Sequence]) -> np.ndarray:
    """The filter metric of every row: the summed score, or a key the reward function returned."""
    if metric in SCORE_METRICS:
        return np.asarray(sequence_scores, dtype=np.float64)
    if metric not in reward_extra:
        have = ", ".join([*SCORE_METRICS, *sorted(reward_extra)])
        raise UserError(f"algorithm.filter_groups.metric={metric!r} is not among the values the reward step produces "
                        f"({have}); use one of them, or return {metric!r} in the reward function's dict")
    try:
        return np.asarray([float(v) for v in reward_extra[metric]], dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"algorithm.filter_groups.metric={metric!r}: the reward function's {metric!r} values are not "
                        f"numbers (e.g. {reward_extra[metric][0]!r}); use a numeric key") from None


def varying_group_rows(uids: Sequence[str], values: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(rows of the groups to keep, in batch order; kept groups; all groups). A group is kept when np.std of its
    values is > 0 (verl's test) or it has a single response."""
    groups: dict[str, list[int]] = {}
    for row, uid in enumerate(uids):
        groups.setdefault(uid, []).append(row)
    kept = {uid for uid, rows in groups.items() if len(rows) == 1 or np.std(values[rows]) > 0}
    rows = np.asarray([row for row, uid in enumerate(uids) if uid in kept], dtype=np.int64)
    return rows, len(kept), len(groups)


def equal_group_ratio(uids: Sequence[str], sequence_scores: np.ndarray) -> float:
    """The fraction of groups with at least two responses whose summed scores are all equal (no group-relative
    signal); 0.0 when no group has two responses."""
    groups: dict[str, list[float]] = {}
    for uid, score in zip(uids, sequence_scores):
        groups.setdefault(uid, []).append(float(score))
    sized = [v for v in groups.values() if len(v) > 1]
    return sum(1 for v in sized if max(v) == min(v)) / len(sized) if sized else 0.0
