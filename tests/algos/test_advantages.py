"""Advantage estimators: hand-derived examples, properties, and a loop reference for the grouping."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rl_trainer.algos import (
    ADV_ESTIMATOR_REGISTRY,
    compute_advantage,
    compute_gae_advantage_return,
    compute_gpg_outcome_advantage,
    compute_grpo_outcome_advantage,
    compute_grpo_passk_outcome_advantage,
    compute_opo_outcome_advantage,
    compute_reinforce_plus_plus_baseline_outcome_advantage,
    compute_reinforce_plus_plus_outcome_advantage,
    compute_remax_outcome_advantage,
    compute_rloo_outcome_advantage,
)


def outcome_batch(scores, lengths, width=4):
    """Rewards as a trainer produces them: each row's score on its last valid token."""
    mask = torch.zeros(len(scores), width, dtype=torch.int64)
    rewards = torch.zeros(len(scores), width)
    for row, (score, length) in enumerate(zip(scores, lengths)):
        mask[row, :length] = 1
        if length:
            rewards[row, length - 1] = score
    return rewards, mask


def uids(*names):
    return np.array(names, dtype=object)


def test_all_verl_names_are_registered():
    assert set(ADV_ESTIMATOR_REGISTRY) == {
        "gae", "grpo", "grpo_passk", "rloo", "opo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "remax", "gpg",
        # wave 2 (rl_trainer/algos/group_advantages.py, token_baselines.py): all 14 of verl 0.9.1's names
        "rloo_vectorized", "grpo_vectorized", "optimal_token_baseline", "tir_optimal_token_baseline", "gdpo",
    }


# ----------------------------------------------------------------------------------------------- GRPO
def test_grpo_hand_example_with_non_contiguous_group_and_group_of_one():
    # Group "a" is rows 0, 2, 3, 4 with scores [1, 0, 1, 0]: mean 0.5, Bessel std sqrt(4 * 0.25 / 3) = 0.57735,
    # so A = +-0.5 / (0.57735 + 1e-6) = +-0.866024. Group "b" (row 1) is alone: mean 0, std 1, A = 1 / (1 + 1e-6).
    rewards, mask = outcome_batch([1, 1, 0, 1, 0], [2, 4, 1, 3, 4])
    adv, ret = compute_grpo_outcome_advantage(rewards, mask, uids("a", "b", "a", "a", "a"))
    expected = torch.tensor([0.866024, 1 / (1 + 1e-6), -0.866024, 0.866024, -0.866024])
    torch.testing.assert_close(adv, expected[:, None] * mask, atol=1e-6, rtol=0)
    assert adv is ret or torch.equal(adv, ret)
    assert (adv[mask == 0] == 0).all()


def test_dr_grpo_drops_the_std_division():
    # Same batch: A = s - mean = +-0.5; the lone row keeps its raw score 1.
    rewards, mask = outcome_batch([1, 1, 0, 1, 0], [2, 4, 1, 3, 4])
    adv, _ = compute_grpo_outcome_advantage(rewards, mask, uids("a", "b", "a", "a", "a"), norm_adv_by_std_in_grpo=False)
    torch.testing.assert_close(adv, torch.tensor([0.5, 1, -0.5, 0.5, -0.5])[:, None] * mask)


def test_grpo_group_with_equal_rewards_gets_zero_advantage():
    # std = 0, so A = 0 / (0 + 1e-6) = 0: a group where every sample is right (or wrong) teaches nothing.
    rewards, mask = outcome_batch([1, 1, 1], [3, 1, 2])
    adv, _ = compute_grpo_outcome_advantage(rewards, mask, uids("a", "a", "a"))
    assert torch.equal(adv, torch.zeros_like(adv))


def test_grpo_fully_masked_row_gets_zero():
    rewards, mask = outcome_batch([1, 0, 0], [2, 2, 0])
    adv, _ = compute_grpo_outcome_advantage(rewards, mask, uids("a", "a", "a"))
    assert (adv[2] == 0).all()


def grpo_loop_reference(scores, index, epsilon, norm):
    """A plain-Python restatement of verl's GRPO grouping, to check the vectorized version against."""
    groups = {}
    for i, key in enumerate(index):
        groups.setdefault(key, []).append(float(scores[i]))
    out = []
    for i, key in enumerate(index):
        group = groups[key]
        if len(group) == 1:
            mean, std = 0.0, 1.0
        else:
            mean = sum(group) / len(group)
            std = math.sqrt(sum((g - mean) ** 2 for g in group) / (len(group) - 1))
        out.append((scores[i] - mean) / (std + epsilon) if norm else scores[i] - mean)
    return out


group_batches = st.lists(
    st.tuples(st.sampled_from("abcd"), st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0]), st.integers(1, 4)),
    min_size=1, max_size=16,
)


@settings(max_examples=60, deadline=None)
@given(group_batches, st.booleans())
def test_grpo_matches_loop_reference(batch, norm):
    index = uids(*[b[0] for b in batch])
    rewards, mask = outcome_batch([b[1] for b in batch], [b[2] for b in batch])
    adv, _ = compute_grpo_outcome_advantage(rewards, mask, index, norm_adv_by_std_in_grpo=norm)
    expected = torch.tensor(grpo_loop_reference([b[1] for b in batch], list(index), 1e-6, norm), dtype=torch.float32)
    torch.testing.assert_close(adv, expected[:, None] * mask, rtol=1e-5, atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 8), st.lists(st.floats(-3, 3, width=32), min_size=8, max_size=8))
def test_grpo_advantages_of_a_group_sum_to_zero_and_dr_grpo_is_grpo_times_std(n, values):
    scores = values[:n]
    rewards, mask = outcome_batch(scores, [1] * n, width=1)
    index = uids(*["g"] * n)
    adv, _ = compute_grpo_outcome_advantage(rewards, mask, index)
    dr_adv, _ = compute_grpo_outcome_advantage(rewards, mask, index, norm_adv_by_std_in_grpo=False)
    assert abs(adv.sum().item()) < 1e-3 * n
    std = torch.tensor(scores).std()
    torch.testing.assert_close(dr_adv, adv * (std + 1e-6), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ GRPO pass@k
def test_grpo_passk_credits_only_the_best_response():
    # Scores [0.2, 1.0, 0.5]: best is row 1, margin 1.0 - 0.5 = 0.5. std: mean 0.566667, squared deviations
    # 0.134444 + 0.187778 + 0.004444 = 0.326667, / 2 = 0.163333, sqrt = 0.404145 -> A = 0.5 / 0.404146 = 1.237176.
    rewards, mask = outcome_batch([0.2, 1.0, 0.5], [1, 2, 3])
    adv, _ = compute_grpo_passk_outcome_advantage(rewards, mask, uids("a", "a", "a"))
    torch.testing.assert_close(adv, torch.tensor([0.0, 1.237176, 0.0])[:, None] * mask, atol=1e-5, rtol=0)
    adv, _ = compute_grpo_passk_outcome_advantage(rewards, mask, uids("a", "a", "a"), norm_adv_by_std_in_grpo=False)
    torch.testing.assert_close(adv, torch.tensor([0.0, 0.5, 0.0])[:, None] * mask)


def test_grpo_passk_rejects_a_group_of_one():
    rewards, mask = outcome_batch([1.0, 0.0, 1.0], [1, 1, 1])
    with pytest.raises(ValueError, match="at least 2"):
        compute_grpo_passk_outcome_advantage(rewards, mask, uids("a", "a", "b"))


# ------------------------------------------------------------------------------------------------ RLOO
def test_rloo_uses_the_mean_of_the_other_responses():
    # Group "a" = [1, 0, 0]: row 0: 1 - (0 + 0) / 2 = 1; rows 1, 2: 0 - (1 + 0) / 2 = -0.5. "b" is alone: raw 3.
    rewards, mask = outcome_batch([1, 0, 3, 0], [1, 2, 3, 4])
    adv, _ = compute_rloo_outcome_advantage(rewards, mask, uids("a", "a", "b", "a"))
    torch.testing.assert_close(adv, torch.tensor([1.0, -0.5, 3.0, -0.5])[:, None] * mask)


# ------------------------------------------------------------------------------------------------- OPO
def test_opo_baseline_is_length_weighted():
    # Scores [1, 0] with lengths [1, 3]: b = (1*1 + 3*0) / 4 = 0.25, so A = [0.75, -0.25].
    rewards, mask = outcome_batch([1, 0], [1, 3])
    adv, _ = compute_opo_outcome_advantage(rewards, mask, uids("a", "a"))
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.25])[:, None] * mask)


# ------------------------------------------------------------------------------------------ REINFORCE++
def test_reinforce_plus_plus_discounted_return_then_whitened():
    # gamma = 0.5. Row 0 (mask 1 1, rewards 0 1): G = [0 + 0.5 * 1, 1] = [0.5, 1].
    # Row 1 (mask 1 0, rewards 2 0): G = [2, 0]. Valid G = [0.5, 1, 2]: mean 7/6, squared deviations sum 7/6,
    # unbiased var 7/12, std 0.763763 -> whitened [-0.872872, -0.218218, 1.091089], padding 0.
    rewards = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    adv, ret = compute_reinforce_plus_plus_outcome_advantage(rewards, mask, gamma=0.5)
    torch.testing.assert_close(ret, torch.tensor([[0.5, 1.0], [2.0, 0.0]]))
    torch.testing.assert_close(adv, torch.tensor([[-0.872872, -0.218218], [1.091089, 0.0]]), atol=1e-5, rtol=0)


def test_reinforce_plus_plus_baseline_whitens_group_centred_scores():
    # Group scores [1, 0] -> centred [0.5, -0.5] on 2 tokens each; 4 valid tokens, mean 0,
    # unbiased var 4 * 0.25 / 3 = 1/3 -> A = +-0.5 / 0.57735 = +-0.866025.
    rewards, mask = outcome_batch([1, 0], [2, 2], width=2)
    adv, _ = compute_reinforce_plus_plus_baseline_outcome_advantage(rewards, mask, uids("a", "a"))
    torch.testing.assert_close(adv, torch.tensor([[0.866025] * 2, [-0.866025] * 2]), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ ReMax
def test_remax_subtracts_the_greedy_baseline_from_the_return_to_go():
    # Reward 1 at t=1 of a 2-token response: G = [1, 1, 0]; baseline 0.25 on valid tokens -> [0.75, 0.75, 0].
    rewards = torch.tensor([[0.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    adv, ret = compute_remax_outcome_advantage(rewards, torch.tensor([0.25]), mask)
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 0.0]]))
    torch.testing.assert_close(adv, torch.tensor([[0.75, 0.75, 0.0]]))


# -------------------------------------------------------------------------------------------------- GPG
def test_gpg_rescales_by_the_fraction_of_nonzero_scores():
    # Scores [1, 0, 1, 0]: 2 of 4 non-zero -> alpha = 4 / 2 = 2; group mean 0.5 -> A = 2 * (+-0.5) / f_norm.
    rewards, mask = outcome_batch([1, 0, 1, 0], [1, 2, 3, 4])
    index = uids("a", "a", "a", "a")
    adv, _ = compute_gpg_outcome_advantage(rewards, mask, index)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 1.0, -1.0])[:, None] * mask)
    adv, _ = compute_gpg_outcome_advantage(rewards, mask, index, f_norm=2.0, alpha=5.0)  # alpha is ignored, as in verl
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, 0.5, -0.5])[:, None] * mask)


# -------------------------------------------------------------------------------------------------- GAE
def test_gae_hand_example_skips_padding_and_whitens():
    # gamma 0.9, lam 0.8; mask [1, 1, 0]; rewards [0, 1, 0]; values [0.5, 0.2, 9.0] (9.0 is padding, unused).
    # t=1: delta = 1 + 0.9 * 0 - 0.2 = 0.8, A = 0.8.   t=0: delta = 0 + 0.9 * 0.2 - 0.5 = -0.32,
    # A = -0.32 + 0.9 * 0.8 * 0.8 = 0.256. returns = A + V = [0.756, 1.0, 9.0] (padding: 0 + 9.0).
    # Whitening two valid values with the unbiased variance gives -+1/sqrt(2).
    rewards = torch.tensor([[0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, 9.0]])
    mask = torch.tensor([[1, 1, 0]])
    adv, ret = compute_gae_advantage_return(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(ret, torch.tensor([[0.756, 1.0, 9.0]]))
    torch.testing.assert_close(adv[:, :2], torch.tensor([[-1 / math.sqrt(2), 1 / math.sqrt(2)]]))


def test_gae_with_gamma_lam_one_is_return_minus_value():
    # gamma = lam = 1: A_t = sum of future rewards - V_t (before whitening), so returns = sum of future rewards.
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    _, ret = compute_gae_advantage_return(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret[mask.bool()], torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0]))


def test_gae_single_valid_token_raises_like_verl():
    # One valid token: the unbiased variance divides by N - 1 = 0, and verl raises.
    with pytest.raises(ValueError, match="single element"):
        compute_gae_advantage_return(torch.ones(1, 3), torch.zeros(1, 3), torch.tensor([[1, 0, 0]]), 1.0, 1.0)


# ---------------------------------------------------------------------------------------------- dispatch
def test_compute_advantage_passes_each_estimator_only_its_arguments():
    rewards, mask = outcome_batch([1, 0], [2, 2])
    everything = dict(
        token_level_rewards=rewards, response_mask=mask, index=uids("a", "a"), values=torch.zeros(2, 4),
        gamma=1.0, lam=1.0, norm_adv_by_std_in_grpo=False, reward_baselines=torch.zeros(2),
        old_log_probs=torch.zeros(2, 4), sum_pi_squared=torch.ones(2, 4),  # the optimal-token-baseline inputs
    )
    adv, _ = compute_advantage("grpo", **everything)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5])[:, None] * mask)
    for name in ADV_ESTIMATOR_REGISTRY:
        adv, ret = compute_advantage(name, **everything)
        assert adv.shape == ret.shape == rewards.shape


def test_compute_advantage_errors_name_the_problem():
    with pytest.raises(ValueError, match="valid choices: gae, gdpo, gpg, grpo"):
        compute_advantage("ppo", token_level_rewards=torch.zeros(1, 1))
    with pytest.raises(TypeError, match="values"):
        compute_advantage("gae", token_level_rewards=torch.zeros(1, 1), response_mask=torch.ones(1, 1), gamma=1, lam=1)
