"""grpo_vectorized, rloo_vectorized, gdpo, the optimal token baselines and DAPO's overlong penalty, by hand."""

import math

import numpy as np
import pytest
import torch

from rl_trainer.algos import (
    ADV_ESTIMATOR_REGISTRY,
    compute_gdpo_outcome_advantage,
    compute_grpo_outcome_advantage,
    compute_grpo_vectorized_outcome_advantage,
    compute_multi_turn_optimal_token_baseline_advantage,
    compute_optimal_token_baseline_advantage,
    compute_overlong_penalty,
    compute_rloo_vectorized_outcome_advantage,
    get_adv_estimator_fn,
    masked_whiten,
)


def uids(*names):
    return np.array(names, dtype=object)


def last_token_rewards(scores, lengths, width=3):
    mask = torch.zeros(len(scores), width)
    rewards = torch.zeros(len(scores), width)
    for row, (score, length) in enumerate(zip(scores, lengths)):
        mask[row, :length] = 1
        if length:
            rewards[row, length - 1] = score
    return rewards, mask


def test_all_14_verl_estimator_names_are_registered():
    assert len(ADV_ESTIMATOR_REGISTRY) == 14
    assert get_adv_estimator_fn("grpo_vectorized") is compute_grpo_vectorized_outcome_advantage
    assert get_adv_estimator_fn("tir_optimal_token_baseline") is compute_multi_turn_optimal_token_baseline_advantage


@pytest.mark.parametrize("norm", [True, False])
def test_grpo_vectorized_equals_the_loop_version(norm):
    # Non-contiguous groups, a singleton (mean 0 / std 1) and an all-equal group (advantage 0).
    generator = torch.Generator().manual_seed(0)
    rewards = torch.rand(7, 3, generator=generator)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 1]])
    rewards[5], rewards[6] = torch.tensor([1.0, 0, 0]), torch.tensor([0.5, 0.5, 0])
    index = uids("a", "b", "a", "b", "single", "c", "c")
    expected, _ = compute_grpo_outcome_advantage(rewards, mask, index, norm_adv_by_std_in_grpo=norm)
    got, returns = compute_grpo_vectorized_outcome_advantage(rewards, mask, index, norm_adv_by_std_in_grpo=norm)
    torch.testing.assert_close(got, expected)
    assert torch.equal(got, returns) and torch.all(got[5:] == 0)


def test_rloo_vectorized_by_hand_and_singletons_get_zero():
    # Group a: scores (1, 0, 0), n = 3, S = 1: (3 * 1 - 1) / 2 = 1, (0 - 1) / 2 = -0.5 (twice). Singleton b: 0.
    rewards, mask = last_token_rewards([1.0, 0.0, 5.0, 0.0], [2, 3, 1, 1])
    adv, ret = compute_rloo_vectorized_outcome_advantage(rewards, mask, uids("a", "a", "b", "a"))
    torch.testing.assert_close(adv, torch.tensor([1.0, -0.5, 0.0, -0.5])[:, None] * mask)
    assert torch.equal(adv, ret)


def test_gdpo_normalises_each_component_then_whitens_the_weighted_sum():
    # One group of two rows, prompt length 2, response lengths 2 and 1 (last positions 1 and 0).
    # Component "acc" = (1, 0): GRPO -> (+-0.5 / (0.70711 + 1e-6)) = (0.70711, -0.70711); "fmt" = (1, 1): 0.
    # Weights (2, 1): (1.41421, -1.41421) on each valid token: row 1 twice, row 2 once. Whitened over the 3
    # valid tokens: mean 0.47140, then (x - mean) / std; compare with masked_whiten of that sum.
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    batch = {"prompts": torch.zeros(2, 2), "attention_mask": torch.tensor([[1, 1, 1, 1], [0, 1, 1, 0]])}
    non_tensor = {"acc": np.array([1.0, 0.0]), "fmt": np.array([1.0, 1.0])}
    config = {"gdpo_reward_keys": ["acc", "fmt"], "gdpo_reward_weights": [2.0, 1.0]}
    unused = torch.full((2, 2), 100.0)  # token_level_rewards are not used in the multi-component mode
    adv, ret = compute_gdpo_outcome_advantage(unused, mask, uids("p", "p"), config=config, non_tensor_batch=non_tensor,
                                              batch=batch)
    combined = 2 * torch.tensor([[1.0, 1.0], [-1.0, 0.0]]) * 0.5 / (math.sqrt(0.5) + 1e-6)
    torch.testing.assert_close(adv, masked_whiten(combined, mask) * mask)
    assert torch.equal(adv, ret)
    # Without config/batch the only component is token_level_rewards: whiten(GRPO(rewards)).
    rewards = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    grpo, _ = compute_grpo_outcome_advantage(rewards, mask, uids("p", "p"))
    torch.testing.assert_close(compute_gdpo_outcome_advantage(rewards, mask, uids("p", "p"))[0],
                               masked_whiten(grpo, mask) * mask)


def test_gdpo_refuses_missing_reward_keys():
    mask, batch = torch.ones(2, 2), {"prompts": torch.zeros(2, 1), "attention_mask": torch.ones(2, 3)}
    with pytest.raises(ValueError, match="gdpo_reward_keys"):
        compute_gdpo_outcome_advantage(mask, mask, uids("p", "p"), config={}, non_tensor_batch={}, batch=batch)
    with pytest.raises(ValueError, match="'acc'"):
        compute_gdpo_outcome_advantage(mask, mask, uids("p", "p"), config={"gdpo_reward_keys": ["acc"]},
                                       non_tensor_batch={"fmt": np.ones(2)}, batch=batch)


# pi = 0.5 on every sampled token and sum pi^2 = 0.5: v = 1 - 2 * 0.5 + 0.5 = 0.5 per valid token.
HALF = math.log(0.5)


def otb(fn, rewards, mask, index, **kwargs):
    old = torch.full(mask.shape, HALF)
    return fn(rewards, mask, index, old, torch.full(mask.shape, 0.5), **kwargs)


def test_optimal_token_baseline_by_hand_with_the_zero_tail():
    # Row 1: length 3, reward 1 at the end -> G = (1, 1, 1), W = (0.5, 1.0, 1.5). Row 2: length 1, reward 0.
    # B_0 = (1 * 0.5 + 0 * 0.5) / (0.5 + 0.5) = 0.5; B_1 = B_2 = 1 * W / W = 1 (only row 1 is valid there), but row 1
    # is the single longest row (3 > 1), so its baseline is 0 from column 1: A_1 = (0.5, 1, 1), A_2 = (-0.5, 0, 0).
    rewards, mask = last_token_rewards([1.0, 0.0], [3, 1])
    adv, ret = otb(compute_optimal_token_baseline_advantage, rewards, mask, uids("p", "p"))
    torch.testing.assert_close(adv, torch.tensor([[0.5, 1.0, 1.0], [-0.5, 0.0, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    # Without the zero tail row 1 keeps B = 1 at columns 1-2 (up to epsilon): A_1 = (0.5, 0, 0).
    adv, _ = otb(compute_optimal_token_baseline_advantage, rewards, mask, uids("p", "p"), handle_zero_tail=False)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.0, 0.0], [-0.5, 0.0, 0.0]]))
    # A singleton's baseline is 0: its advantage is its return.
    adv, ret = otb(compute_optimal_token_baseline_advantage, rewards, mask, uids("p", "q"))
    torch.testing.assert_close(adv, ret * mask)


def test_optimal_token_baseline_weights_the_variance_by_squared_is_weights():
    # Equal lengths 2, rewards (1, 0). IS weights (1, 1) and (0, 0): row 2's W is 0, so B = G_1 and A_1 = 0,
    # A_2 = -1 (instead of the unweighted B = 0.5: A = (0.5, -0.5)).
    rewards, mask = last_token_rewards([1.0, 0.0], [2, 2], width=2)
    adv, _ = otb(compute_optimal_token_baseline_advantage, rewards, mask, uids("p", "p"))
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.5], [-0.5, -0.5]]))
    weights = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    adv, _ = otb(compute_optimal_token_baseline_advantage, rewards, mask, uids("p", "p"), rollout_is_weights=weights)
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.0], [-1.0, -1.0]]))


def test_tir_optimal_token_baseline_aligns_positions_by_token_count():
    # Row 1 mask (1, 0, 1), reward 1 at column 2: G = (1, 1, 1), W = (0.5, 0.5, 1.0) -> compacted W (0.5, 1), G (1, 1).
    # Row 2 mask (1, 1, 0), reward 0: compacted W (0.5, 1), G (0, 0). Equal lengths: no zero tail.
    # B = (0.5 / 1, 1 / 2) = (0.5, 0.5): A_1 = (0.5, 0.5) at columns 0 and 2; A_2 = (-0.5, -0.5) at columns 0 and 1.
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = otb(compute_multi_turn_optimal_token_baseline_advantage, rewards, mask, uids("p", "p"))
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.0, 0.5], [-0.5, -0.5, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    # The column-aligned version differs: column 1 has only row 2 (B = 0), column 2 only row 1 (B = 1).
    adv, _ = otb(compute_optimal_token_baseline_advantage, rewards, mask, uids("p", "p"))
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.0, 0.0], [-0.5, 0.0, 0.0]]))
    # On right-padded rows the two agree; an empty row leaves its group (its partner is then a singleton).
    rewards, mask = last_token_rewards([1.0, 0.0, 2.0, 0.0], [3, 1, 2, 0])
    index = uids("p", "p", "q", "q")
    tir, _ = otb(compute_multi_turn_optimal_token_baseline_advantage, rewards, mask, index)
    plain, _ = otb(compute_optimal_token_baseline_advantage, rewards, mask, index)
    torch.testing.assert_close(tir[:2], plain[:2])
    torch.testing.assert_close(tir[2:], torch.tensor([[2.0, 2.0, 0.0], [0.0, 0.0, 0.0]]))


def test_overlong_penalty_is_linear_past_the_buffer_and_unclamped():
    # max 10, buffer 4, factor 1: free up to 6 tokens; L = 8 -> -(8 - 6) / 4 = -0.5; L = 10 -> -1; L = 12 -> -1.5.
    penalty = compute_overlong_penalty(torch.tensor([3, 6, 8, 10, 12]), 10, 4, 1.0)
    assert penalty.dtype == torch.float32
    torch.testing.assert_close(penalty, torch.tensor([0.0, 0.0, -0.5, -1.0, -1.5]))
    for bad in (0, 11):
        with pytest.raises(ValueError, match="overlong_buffer.len"):
            compute_overlong_penalty(torch.tensor([1]), 10, bad, 1.0)
