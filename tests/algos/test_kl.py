"""KL estimators, straight-through gradients, KL controllers and KL-in-reward."""

import math

import pytest
import torch

from rl_trainer.algos import (
    KL_PENALTY_CHOICES,
    AdaptiveKLController,
    FixedKLController,
    apply_kl_penalty,
    compute_rewards,
    get_kl_controller,
    kl_penalty,
)


@pytest.mark.parametrize(
    "name, at_plus_one, at_minus_one",
    [
        # d = logprob - ref = +1 and -1.
        ("kl", 1.0, -1.0),
        ("k1", 1.0, -1.0),
        ("abs", 1.0, 1.0),
        ("mse", 0.5, 0.5),
        ("k2", 0.5, 0.5),
        # k3 = exp(-d) + d - 1: d = 1 -> e^-1 = 0.367879; d = -1 -> e - 2 = 0.718282.
        ("low_var_kl", math.exp(-1), math.e - 2),
        ("k3", math.exp(-1), math.e - 2),
    ],
)
def test_kl_estimators_by_hand(name, at_plus_one, at_minus_one):
    logprob = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-2.0, -1.0]])
    torch.testing.assert_close(kl_penalty(logprob, ref, name), torch.tensor([[at_plus_one, at_minus_one]]))


def test_k3_is_clamped_for_stability():
    # d = -30: ref - logprob = 30 is clamped to 20 and exp(20) - 20 - 1 is clamped to 10.
    assert kl_penalty(torch.tensor([[-31.0]]), torch.tensor([[-1.0]]), "k3").item() == 10.0


@pytest.mark.parametrize("base", ["kl", "k1", "abs", "k3", "low_var_kl", "k2", "mse"])
def test_straight_through_variants_have_base_value_and_k2_gradient(base):
    # The gradient of k2 = 0.5 d^2 w.r.t. logprob is d.
    logprob = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    ref = torch.tensor([[-2.0, -1.0, -0.5]])
    out = kl_penalty(logprob, ref, base + "+")
    torch.testing.assert_close(out, kl_penalty(logprob, ref, base))
    out.sum().backward()
    torch.testing.assert_close(logprob.grad, (logprob - ref).detach())
    assert base + "+" in KL_PENALTY_CHOICES


def test_unknown_kl_penalty_raises_like_verl():
    with pytest.raises(NotImplementedError, match="valid choices"):
        kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "full")


def test_compute_rewards_is_k1_penalty():
    # 1 - 0.5 * (-1 - (-2)) = 0.5
    out = compute_rewards(torch.tensor([1.0]), torch.tensor([-1.0]), torch.tensor([-2.0]), 0.5)
    torch.testing.assert_close(out, torch.tensor([0.5]))


def test_fixed_controller_never_moves():
    ctrl = get_kl_controller("fixed", kl_coef=0.1)
    ctrl.update(current_kl=5.0, n_steps=100)
    assert isinstance(ctrl, FixedKLController) and ctrl.value == 0.1


def test_adaptive_controller_moves_towards_target():
    # target 0.05, horizon 100. KL 0.1: error 0.1/0.05 - 1 = 1, clipped to 0.2; over 10 samples the
    # coefficient grows by 1 + 0.2 * 10 / 100 = 1.02 -> 0.102. KL 0.04: error -0.2 -> times 0.98.
    ctrl = get_kl_controller("adaptive", kl_coef=0.1, target_kl=0.05, horizon=100)
    assert isinstance(ctrl, AdaptiveKLController)
    ctrl.update(current_kl=0.1, n_steps=10)
    assert ctrl.value == pytest.approx(0.102)
    ctrl.update(current_kl=0.04, n_steps=10)
    assert ctrl.value == pytest.approx(0.102 * 0.98)


def test_controller_config_errors():
    with pytest.raises(ValueError, match="horizon"):
        get_kl_controller("adaptive", horizon=0)
    with pytest.raises(ValueError, match="fixed, adaptive"):
        get_kl_controller("pid")


def test_apply_kl_penalty_by_hand():
    # k1 per token: [-1 - (-2), -1 - (-1.5), pad] = [1, 0.5, masked]. beta = 0.1:
    # rewards = [0 - 0.1, 1 - 0.05, 0] = [-0.1, 0.95, 0]; current KL = mean over the 2 valid tokens = 0.75.
    scores = torch.tensor([[0.0, 1.0, 0.0]])
    old = torch.tensor([[-1.0, -1.0, -7.0]])
    ref = torch.tensor([[-2.0, -1.5, -1.0]])
    mask = torch.tensor([[1, 1, 0]])
    ctrl = AdaptiveKLController(init_kl_coef=0.1, target_kl=0.75, horizon=10)
    rewards, metrics = apply_kl_penalty(scores, old, ref, mask, ctrl, kl_penalty="kl")
    torch.testing.assert_close(rewards, torch.tensor([[-0.1, 0.95, 0.0]]))
    assert metrics["actor/reward_kl_penalty"] == pytest.approx(0.75)
    assert metrics["actor/reward_kl_penalty_coeff"] == 0.1  # the coefficient that was applied
    assert ctrl.value == pytest.approx(0.1)  # KL on target: error 0, no change
