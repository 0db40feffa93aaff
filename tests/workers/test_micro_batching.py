"""The partitioning behind use_dynamic_bsz and trainer.balance_batch: Karmarkar-Karp as verl 0.9.1 runs it, token
budgets, the inverse permutation; expected parts derived by hand."""

from __future__ import annotations

import numpy as np
import pytest

from rl_trainer.errors import UserError
from rl_trainer.workers.micro_batching import (balanced_rank_order, inverse_permutation, karmarkar_karp,
                                               token_budget_micro_batches, workload)


def test_workload_is_verls_dense_transformer_estimate():
    # 24576 * s + s^2: s = 1 -> 24577, s = 100 -> 2457600 + 10000.
    assert workload([1, 100]).tolist() == [24577, 2467600]


def test_karmarkar_karp_merges_the_largest_differences_first():
    # Values 8 7 6 5 4 (indices 0-4), two parts of any size. States start as [v, 0] (spread v):
    #   8 with 7 -> [8, 7] (spread 1); 6 with 5 -> [6, 5] (1); then 4 (spread 4) with the spread-1 state whose top part
    #   is larger, [8, 7]: largest part of one with the smallest of the other -> [4 + 7, 0 + 8] = [11, 8] (3);
    #   finally [11, 8] with [6, 5] -> [11 + 5, 8 + 6] = [16, 14].
    # So {4, 7, 5} = indices [1, 3, 4] and {8, 6} = [0, 2]: not the optimum 15 / 15, the heuristic's answer (verl's).
    assert karmarkar_karp([8, 7, 6, 5, 4], 2, equal_size=False) == [[1, 3, 4], [0, 2]]


def test_karmarkar_karp_equal_size_gives_every_part_the_same_count():
    # Values 1..6 (indices 0-5) sorted and taken k = 2 at a time: A = [2 | 1], B = [4 | 3], C = [6 | 5], spread 1 each.
    # Ties pop the larger top part first: C with B -> [6 + 3, 5 + 4] = [9, 9]; its parts tie on sum and size, and the
    # one holding index 5 ranks first. Then A (spread 1) with it: [2 + (5 + 4), 1 + (6 + 3)] = [11, 10].
    assert karmarkar_karp([1, 2, 3, 4, 5, 6], 2, equal_size=True) == [[1, 3, 4], [0, 2, 5]]
    with pytest.raises(ValueError, match="equal size"):
        karmarkar_karp([1, 2, 3], 2, equal_size=True)


def test_budget_micro_batches_grow_until_every_one_fits():
    # 6 + 6 + 6 = 18 tokens, budget 10: ceil(18 / 10) = 2 micro-batches would put two 6s together (12 > 10), so 3.
    parts = token_budget_micro_batches([6, 6, 6], 10, "k")
    assert sorted(map(sorted, parts)) == [[0], [1], [2]]
    # 9 1 9 1, budget 10: two micro-batches suffice and each pairs a 9 with a 1 (10 tokens each).
    parts = token_budget_micro_batches([9, 1, 9, 1], 10, "k")
    assert len(parts) == 2 and all(sorted([9, 1, 9, 1][i] for i in p) == [1, 9] for p in parts)


def test_budget_micro_batches_are_ordered_lightest_at_both_ends():
    # 10 10 10 10 5 5 (indices 0-5), budget 20: ceil(50 / 20) = 3 parts, which the workloads split into {10, 10} = [0, 1]
    # and two {10, 5}: [2, 5], [3, 4]. By workload, heaviest first: [0, 1], then the tie by first index, largest first:
    # [3, 4], [2, 5]. verl's layout takes every other one reversed, then the rest: [2, 5], [0, 1] | [3, 4].
    assert token_budget_micro_batches([10, 10, 10, 10, 5, 5], 20, "k") == [[2, 5], [0, 1], [3, 4]]


def test_every_row_is_in_exactly_one_budget_micro_batch():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=64).tolist()
    parts = token_budget_micro_batches(lengths, 512, "k")
    order = [i for p in parts for i in p]
    assert sorted(order) == list(range(64))
    assert all(sum(lengths[i] for i in p) <= 512 for p in parts)
    assert len(parts) >= -(-sum(lengths) // 512)


def test_a_sequence_longer_than_the_budget_is_one_line_naming_the_key():
    with pytest.raises(UserError) as error:
        token_budget_micro_batches([5, 30], 20, "actor_rollout_ref.actor.ppo_max_token_len_per_gpu")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("actor_rollout_ref.actor.ppo_max_token_len_per_gpu=20 is smaller than a sequence of 30")


def other_rank(*values):
    """agree_max against one other rank whose values, call by call, are `values` (stands for the all-reduce)."""
    values = iter(values)
    return lambda value: max(value, next(values))


def test_ranks_agree_on_the_largest_count_and_length():
    # This rank's 4 one-token rows fit in 1 micro-batch; the other rank (longest row 1) needs 3 and all of its fit:
    # both make 3.
    assert len(token_budget_micro_batches([1, 1, 1, 1], 100, "k", agree_max=other_rank(1, 3, 0))) == 3
    with pytest.raises(UserError, match="sequence of 500 tokens"):  # the other rank holds a row too long: both stop
        token_budget_micro_batches([1, 1], 100, "k", agree_max=other_rank(500))


def test_inverse_permutation_restores_the_order():
    order = np.array([3, 0, 2, 1])
    values = np.array([10, 11, 12, 13])
    assert values[order][inverse_permutation(order)].tolist() == [10, 11, 12, 13]


def test_balanced_rank_order_gives_equal_chunks_of_similar_tokens():
    # Lengths 100 100 1 1 on 2 ranks: in order, rank 0 would get 200 tokens and rank 1 two. Equal-size parts from
    # the sorted pairs [1 | 1] (indices 3, 2) and [100 | 100] (1, 0): merged largest with smallest -> {1, 2}, {0, 3}.
    # Inside a part, sorted by workload and laid out as rows 0, 2, ... then ..., 3, 1: [2, 1] and [3, 0].
    order, parts = balanced_rank_order([100, 100, 1, 1], 2)
    assert parts == [[2, 1], [3, 0]]
    assert order.tolist() == [2, 1, 3, 0]


# ---------------------------------------------------------------------------------- config checks of the budgets
def validated(*overrides: str):
    from hydra import compose, initialize_config_dir

    from helpers import REPO
    from rl_trainer.config import validate_config

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose("ppo_trainer", overrides=["trainer.device=cpu", *overrides])
    validate_config(cfg)
    return cfg


def test_budgets_default_to_verls_and_interpolate_as_there():
    cfg = validated("algorithm.adv_estimator=gae", "actor_rollout_ref.actor.use_dynamic_bsz=true")
    arr = cfg.actor_rollout_ref
    assert arr.actor.ppo_max_token_len_per_gpu == 16384 and cfg.critic.ppo_max_token_len_per_gpu == 32768
    assert arr.rollout.log_prob_use_dynamic_bsz and arr.ref.log_prob_use_dynamic_bsz and cfg.critic.use_dynamic_bsz
    assert arr.rollout.log_prob_max_token_len_per_gpu == arr.ref.log_prob_max_token_len_per_gpu == 16384
    assert cfg.critic.forward_max_token_len_per_gpu == 32768
    assert cfg.trainer.balance_batch is True


@pytest.mark.parametrize("overrides, message", [
    # 256 + 128 = 384 tokens per row by default: a 300-token budget cannot hold one.
    (["actor_rollout_ref.actor.use_dynamic_bsz=true", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=300"],
     "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=300 is smaller than one sequence (rollout.prompt_length + "
     "rollout.response_length = 384 tokens) with actor_rollout_ref.actor.use_dynamic_bsz=true; set "
     "actor_rollout_ref.actor.ppo_max_token_len_per_gpu to at least 384"),
    (["actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true",
      "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=100"],
     "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=100 is smaller than one sequence"),
    (["algorithm.adv_estimator=gae", "critic.use_dynamic_bsz=true", "critic.forward_max_token_len_per_gpu=383"],
     "critic.forward_max_token_len_per_gpu=383 is smaller than one sequence"),
    (["actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=0"],
     "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=0 must be a positive integer"),
])
def test_a_budget_below_one_row_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(UserError) as error:
        validated(*overrides)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_small_budget_is_fine_while_its_switch_is_off():
    validated("actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=100")  # log_prob_use_dynamic_bsz=false
