"""KL estimators between the policy and the reference model, and the KL-in-reward controllers.

See J. Schulman, "Approximating KL divergence" (http://joschu.net/blog/kl-approx.html) for k1/k2/k3.
Numbers follow verl 0.9.1's `core_algos.py` and `ray_trainer.apply_kl_penalty`.
"""

from __future__ import annotations

import numpy as np
import torch

from rl_trainer.algos.masked import masked_mean

KL_PENALTY_TYPES = ("kl", "k1", "abs", "mse", "k2", "low_var_kl", "k3")
# "+" variants (e.g. "k3+"): the forward value of the base estimator, the gradient of k2.
KL_PENALTY_CHOICES = KL_PENALTY_TYPES + tuple(name + "+" for name in KL_PENALTY_TYPES)


def kl_penalty_forward(logprob: torch.Tensor, ref_logprob: torch.Tensor, kl_penalty: str) -> torch.Tensor:
    """Per-token KL estimate of KL(pi || pi_ref) from the sampled tokens' log-probs, d = logprob - ref_logprob:

        kl / k1           d
        abs               |d|
        mse / k2          0.5 * d^2
        low_var_kl / k3   clamp(exp(-d') - (-d') - 1, -10, 10)  with -d' = clamp(ref_logprob - logprob, -20, 20)
                          (unbiased and always >= 0; the clamps are verl's, for stability)

    Shapes: (bs, response_length) -> (bs, response_length).
    """
    if kl_penalty in ("kl", "k1"):
        return logprob - ref_logprob
    if kl_penalty == "abs":
        return (logprob - ref_logprob).abs()
    if kl_penalty in ("mse", "k2"):
        return 0.5 * (logprob - ref_logprob).square()
    if kl_penalty in ("low_var_kl", "k3"):
        kl = torch.clamp(ref_logprob - logprob, min=-20, max=20)
        kld = (torch.exp(kl) - kl - 1).contiguous()
        return torch.clamp(kld, min=-10, max=10)
    # verl raises NotImplementedError here too ("full" needs whole-vocabulary log-probs).
    raise NotImplementedError(f"Unknown kl_penalty {kl_penalty!r}; valid choices: {', '.join(KL_PENALTY_CHOICES)}")


def kl_penalty(logprob: torch.Tensor, ref_logprob: torch.Tensor, kl_penalty: str) -> torch.Tensor:
    """KL estimate `kl_penalty` (see `kl_penalty_forward`), with a straight-through "+" option.

    "k1+", "k3+", ...: the value of the base estimator with the gradient of k2,
        out = k2 - stop_grad(k2) + stop_grad(base)
    because k2's gradient is the unbiased gradient of KL while k1's and k3's are not.
    Shapes: (bs, response_length) -> (bs, response_length).
    """
    straight_through = kl_penalty.endswith("+")
    base = kl_penalty[:-1] if straight_through else kl_penalty
    forward_score = kl_penalty_forward(logprob, ref_logprob, base)
    if not straight_through:
        return forward_score
    backward_score = 0.5 * (logprob - ref_logprob).square()
    return backward_score - backward_score.detach() + forward_score.detach()


_kl_estimate = kl_penalty  # apply_kl_penalty's argument `kl_penalty` (verl's name) shadows the function


def compute_rewards(
    token_level_scores: torch.Tensor, old_log_prob: torch.Tensor, ref_log_prob: torch.Tensor, kl_ratio: float
) -> torch.Tensor:
    """token_level_scores - kl_ratio * (old_log_prob - ref_log_prob): the k1 penalty with a fixed coefficient."""
    return token_level_scores - (old_log_prob - ref_log_prob) * kl_ratio


class FixedKLController:
    """A constant KL coefficient: `.value` stays `kl_coef`; `update` does nothing."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op (kept so both controllers share one interface)."""


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, https://arxiv.org/abs/1909.08593).

        e = clip(current_kl / target_kl - 1, -0.2, 0.2)
        value <- value * (1 + e * n_steps / horizon)

    The coefficient grows while the measured KL is above target and shrinks while it is below.
    """

    def __init__(self, init_kl_coef: float, target_kl: float, horizon: int):
        self.value = init_kl_coef
        self.target = target_kl
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move `.value` towards the target after `n_steps` samples with mean KL `current_kl`."""
        proportional_error = np.clip(current_kl / self.target - 1, -0.2, 0.2)
        self.value *= 1 + proportional_error * n_steps / self.horizon


def get_kl_controller(type: str = "fixed", kl_coef: float = 0.001, target_kl: float = 0.1, horizon: int = 10000):
    """The controller for `algorithm.kl_ctrl` ({type, kl_coef, target_kl, horizon})."""
    if type == "fixed":
        return FixedKLController(kl_coef=kl_coef)
    if type == "adaptive":
        if not horizon > 0:
            raise ValueError(f"algorithm.kl_ctrl.horizon must be > 0 for the adaptive controller, got {horizon}")
        return AdaptiveKLController(init_kl_coef=kl_coef, target_kl=target_kl, horizon=horizon)
    raise ValueError(f"Unknown algorithm.kl_ctrl.type {type!r}; valid choices: fixed, adaptive")


def apply_kl_penalty(
    token_level_scores: torch.Tensor,
    old_log_probs: torch.Tensor,
    ref_log_prob: torch.Tensor,
    response_mask: torch.Tensor,
    kl_ctrl: FixedKLController | AdaptiveKLController,
    kl_penalty: str = "kl",
) -> tuple[torch.Tensor, dict[str, float]]:
    """KL in the reward (`algorithm.use_kl_in_reward=true`): penalise each token's reward by its KL.

        kld     = kl_penalty(old_log_probs, ref_log_prob) * response_mask
        rewards = token_level_scores - beta * kld                  (beta = kl_ctrl.value before update)
        current_kl = mean over rows of (masked mean of kld over the row's tokens)
        kl_ctrl.update(current_kl, n_steps=bs)

    Returns:
        token_level_rewards: (bs, response_length)
        metrics: {"actor/reward_kl_penalty": current_kl, "actor/reward_kl_penalty_coeff": beta}
    """
    kld = _kl_estimate(old_log_probs, ref_log_prob, kl_penalty) * response_mask
    beta = kl_ctrl.value
    token_level_rewards = token_level_scores - beta * kld
    current_kl = torch.mean(masked_mean(kld, response_mask, axis=-1), dim=0).item()
    kl_ctrl.update(current_kl=current_kl, n_steps=token_level_scores.shape[0])
    return token_level_rewards, {"actor/reward_kl_penalty": current_kl, "actor/reward_kl_penalty_coeff": beta}
