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

import torch

from rl_trainer.algos.kl import kl_penalty
from rl_trainer.algos.losses import agg_loss
from rl_trainer.algos.registry import get_policy_loss_fn


def compute_actor_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    loss_mode: str = "vanilla",
    loss_agg_mode: str = "token-mean",
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    entropy: torch.Tensor | None = None,
    entropy_coeff: float = 0.0,
    ref_log_prob: torch.Tensor | None = None,
    use_kl_loss: bool = False,
    kl_loss_coef: float = 0.001,
    kl_loss_type: str = "low_var_kl",
    **agg_kwargs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """The actor's scalar loss for one micro-batch, and its terms.

    Args:
        old_log_prob, log_prob, advantages, response_mask: (bs, response_length); log_prob carries the gradient.
        loss_mode: `actor_rollout_ref.actor.policy_loss.loss_mode`, a name in the policy-loss registry.
        entropy: (bs, response_length) per-token entropy of the policy; needed when entropy_coeff != 0
            (verl adds the bonus whenever it computes entropy, and computes it only when entropy_coeff != 0).
        ref_log_prob: (bs, response_length) reference log-probs; needed when use_kl_loss.
        kl_loss_type: a `kl_penalty` estimator name ("low_var_kl" = k3, "k3+" = k3 value with k2 gradient, ...).
        agg_kwargs: dp_size / batch_num_tokens / global_batch_size / loss_scale_factor, passed to every agg_loss.

    Returns:
        loss (scalar, differentiable) and a dict of detached terms: pg_loss, pg_clipfrac, ppo_kl, pg_clipfrac_lower,
        and entropy_loss / kl_loss (+ kl_coef) when those terms are on.
    """
    policy_loss_fn = get_policy_loss_fn(loss_mode)
    pg_loss, pg_clipfrac, ppo_kl, pg_clipfrac_lower = policy_loss_fn(
        old_log_prob, log_prob, advantages, response_mask, clip_ratio_low=clip_ratio_low,
        clip_ratio_high=clip_ratio_high, clip_ratio_c=clip_ratio_c, loss_agg_mode=loss_agg_mode, **agg_kwargs,
    )
    loss = pg_loss
    terms: dict[str, torch.Tensor | float] = {"pg_loss": pg_loss.detach(), "pg_clipfrac": pg_clipfrac,
                                              "ppo_kl": ppo_kl, "pg_clipfrac_lower": pg_clipfrac_lower}
    if entropy_coeff != 0:
        if entropy is None:
            raise ValueError("compute_actor_loss: entropy_coeff != 0 needs the per-token entropy")
        entropy_loss = agg_loss(entropy, response_mask, loss_agg_mode, **agg_kwargs)
        loss = loss - entropy_coeff * entropy_loss
        terms["entropy_loss"] = entropy_loss.detach()
    if use_kl_loss:
        if ref_log_prob is None:
            raise ValueError("compute_actor_loss: use_kl_loss needs ref_log_prob")
        kl_loss = agg_loss(kl_penalty(log_prob, ref_log_prob, kl_loss_type), response_mask, loss_agg_mode,
                           **agg_kwargs)
        loss = loss + kl_loss_coef * kl_loss
        terms["kl_loss"], terms["kl_coef"] = kl_loss.detach(), kl_loss_coef
    return loss, terms
