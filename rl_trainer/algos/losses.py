"""PPO losses: loss aggregation, the clipped policy surrogate, the clipped value loss, entropy.

All follow verl 0.9.1's `core_algos.py` numerically and are differentiable with the same gradients.
Shapes: per-token tensors are (bs, response_length); losses are scalars.
"""

from __future__ import annotations

import torch

from rl_trainer.algos.masked import clip_by_value, entropy_from_logits, masked_mean, masked_sum

LOSS_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def agg_loss(
    loss_mat: torch.Tensor,
    loss_mask: torch.Tensor,
    loss_agg_mode: str,
    dp_size: int = 1,
    batch_num_tokens: int | torch.Tensor | None = None,
    global_batch_size: int | torch.Tensor | None = None,
    loss_scale_factor: float | None = None,
) -> torch.Tensor:
    """Reduce a (bs, response_length) loss matrix to a scalar over the valid tokens.

    With M the mask, T = batch_num_tokens (default sum M), B = global_batch_size (default: rows with
    at least one valid token), L_i = sum_t loss_it * M_it, n_i = sum_t M_it:
        token-mean               sum_it loss_it M_it / T                 (every token weighs the same)
        token-sum                sum_it loss_it M_it
        seq-mean-token-sum       sum_i L_i / B
        seq-mean-token-mean      sum_i (L_i / (n_i + 1e-8)) / B           (every sequence weighs the same)
        seq-mean-token-sum-norm  sum_i L_i / B / loss_scale_factor        (Dr.GRPO; the factor defaults
                                                                          to response_length)
    Fully masked rows are left out of B. Each mode is multiplied by `dp_size`: with data parallelism,
    pass the global T or B so that the gradient average over ranks equals the global-batch loss
    (ValueError if they are missing while dp_size > 1). A batch with no valid token gives NaN for the
    mean modes, as in verl.
    """
    if loss_agg_mode == "token-mean":
        if batch_num_tokens is None:
            if dp_size > 1:
                raise ValueError("agg_loss: token-mean with dp_size > 1 needs the global batch_num_tokens")
            batch_num_tokens = loss_mask.sum()
        return masked_sum(loss_mat, loss_mask) / batch_num_tokens * dp_size
    if loss_agg_mode == "token-sum":
        return masked_sum(loss_mat, loss_mask) * dp_size
    if loss_agg_mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm"):
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1)
        seq_mask = (torch.sum(loss_mask, dim=-1) > 0).float()
    elif loss_agg_mode == "seq-mean-token-mean":
        seq_tokens = torch.sum(loss_mask, dim=-1)
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1) / (seq_tokens + 1e-8)
        seq_mask = (seq_tokens > 0).float()
    else:
        raise ValueError(f"Invalid loss_agg_mode {loss_agg_mode!r}; valid choices: {', '.join(LOSS_AGG_MODES)}")
    if global_batch_size is None:
        if dp_size > 1:
            raise ValueError(f"agg_loss: {loss_agg_mode} with dp_size > 1 needs the global_batch_size")
        global_batch_size = seq_mask.sum()
    loss = masked_sum(seq_losses, seq_mask) / global_batch_size * dp_size
    if loss_agg_mode == "seq-mean-token-sum-norm":
        loss = loss / (loss_mask.shape[-1] if loss_scale_factor is None else loss_scale_factor)
    return loss


def compute_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    loss_agg_mode: str = "token-mean",
    **agg_kwargs,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (https://arxiv.org/abs/1707.06347) with dual-clip for A < 0
    (https://arxiv.org/abs/1912.09729) and asymmetric clip ranges (DAPO's clip-higher).

        ratio = exp(clamp(log_prob - old_log_prob, -20, 20))
        L1 = -A * ratio,   L2 = -A * clip(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)
        L  = max(L1, L2)                         for A >= 0
        L  = min(max(L1, L2), -A * clip_ratio_c) for A < 0   (caps the loss of a far off-policy token)
        pg_loss = agg_loss(L, response_mask, loss_agg_mode, **agg_kwargs)

    Metrics (masked means over valid tokens, with verl's 1e-8 in the denominator):
        pg_clipfrac        fraction where the clipped term was taken (L2 > L1)
        ppo_kl             mean of old_log_prob - log_prob (clamped as above)
        pg_clipfrac_lower  fraction with A < 0 where the dual clip was taken

    Args:
        old_log_prob, log_prob, advantages, response_mask: (bs, response_length)
        clip_ratio_c: must be > 1.
        agg_kwargs: dp_size / batch_num_tokens / global_batch_size / loss_scale_factor for agg_loss.

    This is verl 0.9.1's deprecated `compute_policy_loss` (which names the clip ranges `cliprange_low/high`).
    The loss registered as "vanilla" (rl_trainer.algos.policy_losses.compute_policy_loss_vanilla) has verl's
    registry signature, reads the same parameters from the actor config and gives the same numbers.
    """
    pg_losses, pg_clipfrac, ppo_kl, pg_clipfrac_lower = ppo_clip_token_losses(
        old_log_prob, log_prob, advantages, response_mask, clip_ratio_low, clip_ratio_high, clip_ratio_c
    )
    pg_loss = agg_loss(pg_losses, response_mask, loss_agg_mode, **agg_kwargs)
    return pg_loss, pg_clipfrac, ppo_kl, pg_clipfrac_lower


def ppo_clip_token_losses(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-token loss matrix L of `compute_policy_loss` (before aggregation) and its three metrics.

    Shapes: (bs, response_length) in, L of the same shape, metrics 0-dim. ValueError if clip_ratio_c <= 1.
    """
    if not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c (the dual-clip bound) must be > 1.0, got {clip_ratio_c}")
    negative_approx_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    ppo_kl = masked_mean(-negative_approx_kl, response_mask)

    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1 - clip_ratio_low, 1 + clip_ratio_high)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_clipfrac = masked_mean(torch.gt(pg_losses2, pg_losses1).float(), response_mask)

    pg_losses3 = -advantages * clip_ratio_c
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    pg_clipfrac_lower = masked_mean(torch.gt(clip_pg_losses1, pg_losses3) * (advantages < 0).float(), response_mask)

    pg_losses = torch.where(advantages < 0, clip_pg_losses2, clip_pg_losses1)
    return pg_losses, pg_clipfrac, ppo_kl, pg_clipfrac_lower


def compute_value_loss(
    vpreds: torch.Tensor,
    returns: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    cliprange_value: float,
    loss_agg_mode: str = "token-mean",
    **agg_kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss.

        V_clip  = clip(vpreds, values - cliprange_value, values + cliprange_value)
        vf_loss = 0.5 * agg_loss(max((vpreds - R)^2, (V_clip - R)^2), response_mask, loss_agg_mode)
        vf_clipfrac = masked mean of [(V_clip - R)^2 > (vpreds - R)^2]

    Args:
        vpreds: (bs, response_length) current values; values: the values at rollout time;
        returns: GAE returns R. agg_kwargs: as for agg_loss.
    """
    vpredclipped = clip_by_value(vpreds, values - cliprange_value, values + cliprange_value)
    vf_losses1 = (vpreds - returns) ** 2
    vf_losses2 = (vpredclipped - returns) ** 2
    clipped_vf_losses = torch.max(vf_losses1, vf_losses2)
    vf_loss = 0.5 * agg_loss(clipped_vf_losses, response_mask, loss_agg_mode, **agg_kwargs)
    vf_clipfrac = masked_mean(torch.gt(vf_losses2, vf_losses1).float(), response_mask)
    return vf_loss, vf_clipfrac


def compute_entropy_loss(
    logits: torch.Tensor, response_mask: torch.Tensor, loss_agg_mode: str = "token-mean"
) -> torch.Tensor:
    """Mean policy entropy, agg_loss(entropy_from_logits(logits), response_mask, loss_agg_mode).

    logits: (bs, response_length, vocab_size). The actor subtracts entropy_coeff * this from its loss.
    """
    return agg_loss(entropy_from_logits(logits), response_mask, loss_agg_mode)
