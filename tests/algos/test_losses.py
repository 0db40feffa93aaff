"""PPO losses: hand-derived values (torchtune style), properties, gradients."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rl_trainer.algos import (
    LOSS_AGG_MODES,
    agg_loss,
    compute_entropy_loss,
    compute_policy_loss,
    compute_policy_loss_vanilla,
    compute_value_loss,
    entropy_from_logits,
    get_policy_loss_fn,
)

E = math.e


def one_token(log_ratio, advantage, **kwargs):
    old = torch.zeros(1, 1)
    new = torch.full((1, 1), float(log_ratio), requires_grad=True)
    out = compute_policy_loss(old, new, torch.full((1, 1), float(advantage)), torch.ones(1, 1), **kwargs)
    return new, out


def test_unclipped_ratio_gives_minus_advantage_times_ratio():
    # ratio = 1.1 is inside [0.8, 1.2]: loss = -A * ratio = -1.1; d loss / d log_prob = -A * ratio = -1.1.
    new, (loss, clipfrac, ppo_kl, clipfrac_lower) = one_token(math.log(1.1), 1.0)
    torch.testing.assert_close(loss, torch.tensor(-1.1))
    loss.backward()
    torch.testing.assert_close(new.grad, torch.tensor([[-1.1]]))
    assert clipfrac.item() == 0 and clipfrac_lower.item() == 0
    torch.testing.assert_close(ppo_kl, torch.tensor(-math.log(1.1)), atol=1e-6, rtol=1e-5)  # old - new


def test_positive_advantage_is_clipped_at_one_plus_eps():
    # ratio = e, A = 1: -A*ratio = -2.718 < -A*1.2 = -1.2, the max is -1.2 (clipped), and its gradient is 0.
    new, (loss, clipfrac, _, clipfrac_lower) = one_token(1.0, 1.0)
    torch.testing.assert_close(loss, torch.tensor(-1.2))
    loss.backward()
    assert new.grad.item() == 0
    assert clipfrac.item() == pytest.approx(1.0) and clipfrac_lower.item() == 0


def test_clip_higher_widens_only_the_upper_range():
    # ratio = 1.25, A = 1: with clip_ratio_high = 0.28 it is inside (loss -1.25); with 0.2 it clips to -1.2.
    _, (loss, *_) = one_token(math.log(1.25), 1.0, clip_ratio_high=0.28)
    torch.testing.assert_close(loss, torch.tensor(-1.25))
    _, (loss, *_) = one_token(math.log(1.25), 1.0)
    torch.testing.assert_close(loss, torch.tensor(-1.2))
    # A lower bound of 0.1: ratio 0.85, A = -1 -> -A * clip(0.85, 0.9, 1.2) = 0.9 > 0.85, so the loss is 0.9.
    _, (loss, *_) = one_token(math.log(0.85), -1.0, clip_ratio_low=0.1)
    torch.testing.assert_close(loss, torch.tensor(0.9))


def test_negative_advantage_below_dual_clip_keeps_the_ppo_loss():
    # A = -1, ratio = e: L1 = 2.718, L2 = 1.2 -> max 2.718; dual-clip bound -A * 3 = 3 is larger, so 2.718 stays.
    _, (loss, clipfrac, _, clipfrac_lower) = one_token(1.0, -1.0)
    torch.testing.assert_close(loss, torch.tensor(E))
    assert clipfrac.item() == 0 and clipfrac_lower.item() == 0


def test_dual_clip_caps_the_loss_of_far_off_policy_tokens():
    # A = -1, ratio = e^2 = 7.389: max(L1, L2) = 7.389 > 3 = -A * clip_ratio_c, so the loss is capped at 3
    # and the gradient vanishes.
    new, (loss, _, _, clipfrac_lower) = one_token(2.0, -1.0)
    torch.testing.assert_close(loss, torch.tensor(3.0))
    assert clipfrac_lower.item() == pytest.approx(1.0)
    loss.backward()
    assert new.grad.item() == 0


def test_log_ratio_is_clamped_at_20():
    # log_prob - old = 50 is clamped to 20 before exp, so ppo_kl = mean(old - new) = -20 (not -50), and
    # with A = -1 the loss is the dual-clip cap -A * 3 = 3 rather than overflowing.
    _, (loss, _, ppo_kl, _) = one_token(50.0, -1.0)
    assert ppo_kl.item() == pytest.approx(-20.0)
    assert loss.item() == pytest.approx(3.0)


def test_clip_ratio_c_must_exceed_one():
    with pytest.raises(ValueError, match="clip_ratio_c"):
        one_token(0.0, 1.0, clip_ratio_c=1.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-0.15, 0.15), st.floats(-2, 2)), min_size=1, max_size=12))
def test_property_no_clipping_means_minus_advantage_times_ratio(tokens):
    # |log ratio| <= 0.15 keeps the ratio within [0.86, 1.17], inside the default [0.8, 1.2].
    log_ratio = torch.tensor([[t[0] for t in tokens]])
    adv = torch.tensor([[t[1] for t in tokens]])
    mask = torch.ones_like(adv)
    loss, clipfrac, _, _ = compute_policy_loss(torch.zeros_like(adv), log_ratio, adv, mask)
    torch.testing.assert_close(loss, (-adv * log_ratio.exp()).mean())
    assert clipfrac.item() == 0


def test_masked_tokens_do_not_contribute():
    old = torch.zeros(1, 3)
    new = torch.tensor([[0.0, 0.0, 30.0]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, float("nan")]])  # padding may hold garbage
    loss, *_ = compute_policy_loss(old, new, adv, torch.tensor([[1, 1, 0]]))
    # token-mean over the two valid tokens: (-1 * 1 + 1 * 1) / 2 = 0
    assert loss.item() == 0
    loss.backward()
    assert new.grad[0, 2].item() == 0


def test_vanilla_policy_loss_is_registered():
    # The registry has verl's signature (config, metrics dict); "vanilla" is the config-reading form of
    # compute_policy_loss, with the same numbers (tests/algos/test_policy_losses.py compares them).
    assert get_policy_loss_fn("vanilla") is compute_policy_loss_vanilla


# ---------------------------------------------------------------------------------------------- agg_loss
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # the third row is fully masked


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", 7 / 3),  # (1 + 2 + 4) / 3 tokens
        ("token-sum", 7.0),
        ("seq-mean-token-sum", 3.5),  # ((1 + 2) + 4) / 2 sequences; the empty row is not counted
        ("seq-mean-token-mean", 2.75),  # (1.5 + 4) / 2
        ("seq-mean-token-sum-norm", 3.5 / 3),  # seq-mean-token-sum / response_length (3)
    ],
)
def test_agg_loss_modes(mode, expected):
    assert mode in LOSS_AGG_MODES
    torch.testing.assert_close(agg_loss(LOSS, MASK, mode), torch.tensor(expected))


def test_agg_loss_global_batch_arguments():
    # Rank-local loss scaled for data parallelism: token-mean over a global 6 tokens on 2 ranks: 7 / 6 * 2.
    torch.testing.assert_close(agg_loss(LOSS, MASK, "token-mean", dp_size=2, batch_num_tokens=6), torch.tensor(7 / 3))
    torch.testing.assert_close(
        agg_loss(LOSS, MASK, "seq-mean-token-sum-norm", loss_scale_factor=7.0), torch.tensor(0.5)
    )
    with pytest.raises(ValueError, match="batch_num_tokens"):
        agg_loss(LOSS, MASK, "token-mean", dp_size=2)
    with pytest.raises(ValueError, match="global_batch_size"):
        agg_loss(LOSS, MASK, "seq-mean-token-mean", dp_size=2)


def test_agg_loss_unknown_mode_lists_choices():
    with pytest.raises(ValueError, match="valid choices: token-mean"):
        agg_loss(LOSS, MASK, "mean")


# ------------------------------------------------------------------------------------------- value loss
def test_value_loss_takes_the_pessimistic_clipped_term():
    # vpred 1.0 moved 1.0 from the old value 0.0; clipped to 0.5. Return 2.0:
    # unclipped (1 - 2)^2 = 1, clipped (0.5 - 2)^2 = 2.25 -> max 2.25, times 0.5 = 1.125; clipped in 1 of 1 tokens.
    loss, clipfrac = compute_value_loss(
        torch.tensor([[1.0]]), torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.ones(1, 1), cliprange_value=0.5
    )
    torch.testing.assert_close(loss, torch.tensor(1.125))
    assert clipfrac.item() == pytest.approx(1.0)
    # Inside the range (vpred 0.3, return 1): both terms are 0.49 -> 0.245, no clipping.
    loss, clipfrac = compute_value_loss(
        torch.tensor([[0.3]]), torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.ones(1, 1), cliprange_value=0.5
    )
    torch.testing.assert_close(loss, torch.tensor(0.245))
    assert clipfrac.item() == 0


# ----------------------------------------------------------------------------------------------- entropy
def test_entropy_of_uniform_and_peaked_distributions():
    # Uniform over 4 tokens: H = log 4. A logit 100 above the rest: H ~ 0.
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]])
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([[math.log(4), 0.0]]), atol=1e-6, rtol=0)
    # Only the uniform token is valid: the mean entropy is log 4.
    torch.testing.assert_close(compute_entropy_loss(logits, torch.tensor([[1, 0]])), torch.tensor(math.log(4)))
