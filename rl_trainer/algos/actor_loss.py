"""The actor's loss, one unit: policy loss + entropy bonus + KL loss, as verl 0.9.1's `ppo_loss`
(verl/workers/utils/losses.py) assembles it, and as torchtune's `PPOLoss` is one module.

    loss = pg_loss - entropy_coeff * entropy_loss + kl_loss_coef * kl_loss

    pg_loss      = policy_loss_fn(old_log_prob, log_prob, advantages, response_mask, ...)
                   (the function registered as `loss_mode`, e.g. "vanilla": PPO's clipped surrogate)
    entropy_loss = agg_loss(entropy, response_mask, loss_agg_mode)            (only when entropy_coeff != 0)
    kl_loss      = agg_loss(kl_penalty(log_prob, ref_log_prob, kl_loss_type),
                            response_mask, loss_agg_mode)                      (only when use_kl_loss)

Every term is aggregated with the same `loss_agg_mode` and the same global-batch normalisers (`agg_kwargs`:
dp_size, batch_num_tokens, global_batch_size, loss_scale_factor; verl's `global_batch_info`), so a micro-batch's
loss is its share of the whole mini-batch's loss across ranks and gradient accumulation needs no extra scaling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from rl_trainer.algos import policy_losses  # noqa: F401  (registers the policy losses)
from rl_trainer.algos.kl import kl_penalty
from rl_trainer.algos.loss_config import ActorLossConfig, PolicyLossConfig, RolloutCorrectionConfig
from rl_trainer.algos.losses import agg_loss
from rl_trainer.algos.registry import get_policy_loss_fn


def compute_actor_loss(
    old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor, response_mask: torch.Tensor, *,
    loss_mode: str = "vanilla", loss_agg_mode: str = "token-mean", clip_ratio: float = 0.2,
    clip_ratio_low: float | None = 0.2, clip_ratio_high: float | None = 0.2, clip_ratio_c: float = 3.0,
    tau_pos: float = 1.0, tau_neg: float = 1.05, clip_cov_ratio: float | None = 0.0002, clip_cov_lb: float | None = 1.0,
    clip_cov_ub: float | None = 5.0, kl_cov_ratio: float | None = 0.0002, ppo_kl_coef: float | None = 0.1,
    dro_beta: float | None = None, rollout_correction: Any = None, rollout_is_weights: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None, entropy_coeff: float = 0.0, ref_log_prob: torch.Tensor | None = None,
    use_kl_loss: bool = False, kl_loss_coef: float = 0.001, kl_loss_type: str = "low_var_kl", **agg_kwargs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """The actor's scalar loss for one micro-batch, and its terms.

    Args:
        old_log_prob, log_prob, advantages, response_mask: (bs, response_length); log_prob carries the gradient.
        loss_mode: `actor_rollout_ref.actor.policy_loss.loss_mode`, a name in the policy-loss registry.
        clip_ratio, clip_ratio_low/high (None -> clip_ratio), clip_ratio_c, tau_pos, tau_neg: the `actor.*` keys;
        clip_cov_ratio/lb/ub, kl_cov_ratio, ppo_kl_coef, dro_beta, rollout_correction: the `actor.policy_loss.*`
            keys (verl's names and defaults; rollout_correction is a mapping of `algorithm.rollout_correction.*`
            keys, needed by loss_mode=bypass_mode). They reach the loss as its config (loss_config.ActorLossConfig).
        rollout_is_weights: (bs, response_length) rollout-correction IS weights, or None.
        entropy: (bs, response_length) per-token entropy of the policy; needed when entropy_coeff != 0
            (verl adds the bonus whenever it computes entropy, and computes it only when entropy_coeff != 0).
        ref_log_prob: (bs, response_length) reference log-probs; needed when use_kl_loss.
        kl_loss_type: a `kl_penalty` estimator name ("low_var_kl" = k3, "k3+" = k3 value with k2 gradient, ...).
        agg_kwargs: dp_size / batch_num_tokens / global_batch_size / loss_scale_factor, passed to every agg_loss
            (verl's global_batch_info).

    Returns:
        loss (scalar, differentiable) and its terms under the names verl logs: actor/pg_loss (detached) and the
        policy loss's metrics (actor/pg_clipfrac, actor/ppo_kl, actor/pg_clipfrac_lower for vanilla; each loss its
        own, rollout_corr/* for bypass_mode), plus actor/entropy_loss and actor/kl_loss, actor/kl_coef when on.
    """
    config = ActorLossConfig(
        clip_ratio=clip_ratio, clip_ratio_low=clip_ratio_low, clip_ratio_high=clip_ratio_high,
        clip_ratio_c=clip_ratio_c, tau_pos=tau_pos, tau_neg=tau_neg, loss_agg_mode=loss_agg_mode,
        loss_scale_factor=agg_kwargs.get("loss_scale_factor"), global_batch_info=dict(agg_kwargs),
        policy_loss=PolicyLossConfig(loss_mode=loss_mode, clip_cov_ratio=clip_cov_ratio, clip_cov_lb=clip_cov_lb,
                                     clip_cov_ub=clip_cov_ub, kl_cov_ratio=kl_cov_ratio, ppo_kl_coef=ppo_kl_coef,
                                     dro_beta=dro_beta, rollout_correction=_rollout_correction(rollout_correction)))
    pg_loss, pg_metrics = get_policy_loss_fn(loss_mode)(
        old_log_prob=old_log_prob, log_prob=log_prob, advantages=advantages, response_mask=response_mask,
        loss_agg_mode=loss_agg_mode, config=config, rollout_is_weights=rollout_is_weights)
    loss = pg_loss
    terms: dict[str, torch.Tensor | float] = {"actor/pg_loss": pg_loss.detach(), **pg_metrics}
    if entropy_coeff != 0:
        if entropy is None:
            raise ValueError("compute_actor_loss: entropy_coeff != 0 needs the per-token entropy")
        entropy_loss = agg_loss(entropy, response_mask, loss_agg_mode, **agg_kwargs)
        loss = loss - entropy_coeff * entropy_loss
        terms["actor/entropy_loss"] = entropy_loss.detach()
    if use_kl_loss:
        if ref_log_prob is None:
            raise ValueError("compute_actor_loss: use_kl_loss needs ref_log_prob")
        kl_loss = agg_loss(kl_penalty(log_prob, ref_log_prob, kl_loss_type), response_mask, loss_agg_mode,
                           **agg_kwargs)
        loss = loss + kl_loss_coef * kl_loss
        terms["actor/kl_loss"], terms["actor/kl_coef"] = kl_loss.detach(), kl_loss_coef
    return loss, terms


def _rollout_correction(section: Any) -> Any:
    """A mapping of `algorithm.rollout_correction.*` keys (dict or OmegaConf node) as a RolloutCorrectionConfig
    (an unknown key is a TypeError naming it); None or an attribute-style object as it is."""
    if isinstance(section, Mapping):
        return RolloutCorrectionConfig(**{str(k): v for k, v in section.items()})
    return section
