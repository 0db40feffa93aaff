"""trainer.balance_batch: the driver's reorder of a step's rows (verl's _balance_batch) and its global_seqlen metrics;
the columns move together, so the advantages (by uid, over the whole batch) are the same ones, row for row."""

from __future__ import annotations

import pytest
import torch

from rl_trainer.algos import compute_advantage
from rl_trainer.batch import Batch
from rl_trainer.metrics import seqlen_balance_metrics
from rl_trainer.trainer import _balance_batch


def step_batch() -> Batch:
    """8 rows = 4 prompts x n=2 (uid a-d), 4 prompt + 4 response columns; lengths (prompt + response tokens)
    8 7 8 6 3 2 2 2: in dispatch order rank 0 (rows 0-3) would get 29 tokens, rank 1 (rows 4-7) 9."""
    prompt_len = torch.tensor([4, 4, 4, 4, 2, 2, 1, 1])
    response_len = torch.tensor([4, 3, 4, 2, 1, 0, 1, 1])
    attention_mask = torch.cat([(torch.arange(4) >= 4 - prompt_len[:, None]).long(),
                                (torch.arange(4) < response_len[:, None]).long()], dim=1)
    response_mask = attention_mask[:, 4:]
    scores = torch.zeros(8, 4)
    scores[torch.arange(8), (response_len - 1).clamp(min=0)] = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 0.0, 1.0, 0.2])
    return Batch({"attention_mask": attention_mask, "response_mask": response_mask,
                  "responses": torch.arange(32).view(8, 4), "token_level_rewards": scores * response_mask},
                 {"uid": list("aabbccdd"), "data_source": [f"src{i}" for i in range(8)]})


def test_global_seqlen_metrics_follow_verl():
    # Lengths 8 7 8 6 3 2 2 2 on 2 ranks. In order: 8+7+8+6 = 29 and 3+2+2+2 = 9 -> min 9, max 29, diff 20.
    # The parts {8, 6, 3, 2} / {7, 8, 2, 2} (any balanced split) hold 19 and 19; mean 38 / 2 = 19.
    metrics = seqlen_balance_metrics([8, 7, 8, 6, 3, 2, 2, 2], [[0, 3, 4, 5], [1, 2, 6, 7]])
    assert metrics == {"global_seqlen/min": 9, "global_seqlen/max": 29, "global_seqlen/minmax_diff": 20,
                       "global_seqlen/balanced_min": 19, "global_seqlen/balanced_max": 19, "global_seqlen/mean": 19.0}


def test_balance_batch_evens_the_ranks_and_moves_every_column():
    batch = step_batch()
    metrics = {}
    balanced = _balance_batch(batch, 2, metrics, keep_groups=False)
    lengths = balanced["attention_mask"].sum(-1)
    # Equal chunks of 4 rows per rank, now 19 tokens each (38 in all; the workloads 24576 s + s^2 are near-linear).
    assert [lengths[:4].sum().item(), lengths[4:].sum().item()] == [19, 19]
    assert metrics["global_seqlen/max"] == 29 and metrics["global_seqlen/balanced_max"] == 19
    # Rows keep their columns: the responses (row r holds 4r..4r+3) say where each came from, and uid /
    # data_source followed them.
    origin = (balanced["responses"][:, 0] // 4).tolist()
    assert sorted(origin) == list(range(8))
    assert list(balanced["uid"]) == [batch["uid"][i] for i in origin]
    assert list(balanced["data_source"]) == [f"src{i}" for i in origin]
    assert torch.equal(balanced["attention_mask"], batch["attention_mask"][origin])


def test_with_shared_prompts_whole_groups_move_and_keep_their_order():
    # Groups (uid) a = rows 0-1 (8 + 7 = 15 tokens), b = 2-3 (14), c = 4-5 (5), d = 6-7 (4); 2 groups per rank.
    # Group workloads (sum of 24576 s + s^2): a = 368753, b = 344164, c = 122893, d = 98312. Sorted d c b a, taken 2 at
    # a time: [c | d] (spread 24581) and [a | b] (spread 24589); the larger spread first, largest with smallest:
    # {a, d} = 19 and {b, c} = 19 tokens. Each part keeps its rows in their original order.
    batch = step_batch()
    metrics = {}
    balanced = _balance_batch(batch, 2, metrics, keep_groups=True)
    assert (balanced["responses"][:, 0] // 4).tolist() == [0, 1, 6, 7, 2, 3, 4, 5]
    assert list(balanced["uid"]) == list("aaddbbcc")
    assert metrics["global_seqlen/balanced_min"] == metrics["global_seqlen/balanced_max"] == 19


def test_groups_that_do_not_divide_over_the_ranks_are_balanced_row_by_row():
    batch = step_batch().index(list(range(6)))  # 3 groups on 2 ranks
    balanced = _balance_batch(batch, 2, {}, keep_groups=True)
    rows = _balance_batch(batch, 2, {}, keep_groups=False)
    assert torch.equal(balanced["responses"], rows["responses"])


@pytest.mark.parametrize("keep_groups", [False, True])
@pytest.mark.parametrize("estimator", ["grpo", "rloo", "reinforce_plus_plus"])
def test_advantages_are_the_same_row_for_row_after_balancing(estimator, keep_groups):
    batch = step_batch()
    balanced = _balance_batch(batch, 2, {}, keep_groups=keep_groups)
    origin = (balanced["responses"][:, 0] // 4).tolist()
    inputs = dict(gamma=1.0, lam=1.0, norm_adv_by_std_in_grpo=True)
    before, _ = compute_advantage(estimator, token_level_rewards=batch["token_level_rewards"],
                                  response_mask=batch["response_mask"], index=batch["uid"], **inputs)
    after, _ = compute_advantage(estimator, token_level_rewards=balanced["token_level_rewards"],
                                 response_mask=balanced["response_mask"], index=balanced["uid"], **inputs)
    assert before.abs().sum() > 0
    torch.testing.assert_close(after, before[origin], rtol=1e-6, atol=1e-6)
