"""The Optimal Token Baseline (OTB) family: a per-position baseline shared by the responses to a prompt, weighted by
each response's accumulated gradient-variance proxy (verl 0.9.1's `optimal_token_baseline` and its multi-turn
variant `tir_optimal_token_baseline`).

Theory (https://yingru.notion.site/The-Optimal-Token-Baseline-399211a558b782cfa936014c0d42dfb8): for the
score-function gradient of a softmax policy, ||grad log pi(y_t)||^2 over the logits is 1 - 2 pi(y_t) + sum_v pi_v^2,
so with G_t the return-to-go and W_t = sum_{j <= t} (1 - 2 pi_j + sum pi^2) the variance-minimising baseline at
position t is B_t = E[G_t W_t] / E[W_t] over the prompt's responses.

Inputs, all (bs, response_length): token_level_rewards, response_mask (M), old_log_probs (log-prob of the sampled
token), sum_pi_squared (sum over the vocabulary of pi^2 at that position), optional rollout_is_weights (w);
index (bs,) group ids.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rl_trainer.algos.grouping import group_rows
from rl_trainer.algos.registry import register_adv_est

# The estimator names of this module: the trainer gives them old_log_probs, sum_pi_squared and rollout_is_weights.
TOKEN_BASELINE_ESTIMATORS = ("optimal_token_baseline", "tir_optimal_token_baseline")


def _returns_and_path_variance(token_level_rewards: torch.Tensor, response_mask: torch.Tensor,
                               old_log_probs: torch.Tensor, sum_pi_squared: torch.Tensor,
                               rollout_is_weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """G_t = sum_{t' >= t} r M (return-to-go) and W_t = cumsum_t (v M), v = (1 - 2 exp(old_log_probs) +
    sum_pi_squared) [* w^2], the sum running from the first column through masked positions."""
    returns = (token_level_rewards * response_mask).flip(dims=[-1]).cumsum(dim=-1).flip(dims=[-1])
    variance = 1 - 2 * torch.exp(old_log_probs) + sum_pi_squared
    if rollout_is_weights is not None:
        variance = variance * rollout_is_weights ** 2
    return returns, (variance * response_mask).cumsum(dim=-1)


def _zero_tail(baselines: torch.Tensor, rows: list[int], lengths: torch.Tensor) -> None:
    """If exactly one row of the group is the longest, strictly longer than the runner-up (length L2), its
    baseline is 0 from column L2 on: no other response estimates the baseline there."""
    ordered = torch.sort(lengths).values
    longest, second = int(ordered[-1].item()), int(ordered[-2].item())
    at_max = (lengths == longest).nonzero(as_tuple=True)[0]
    if at_max.numel() == 1 and longest > second:
        baselines[rows[int(at_max[0])], second:] = 0.0


@register_adv_est("optimal_token_baseline")
def compute_optimal_token_baseline_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    old_log_probs: torch.Tensor,
    sum_pi_squared: torch.Tensor,
    rollout_is_weights: torch.Tensor | None = None,
    handle_zero_tail: bool = True,
    epsilon: float = 1e-8,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """OTB: A_t = G_t - B_t with a per-column baseline shared within each group of >= 2 responses.

        B_t = sum_i G_it W_it M_it / (sum_i W_it M_it + epsilon)      (over the group's rows i, per column t)
        handle_zero_tail: the single longest row's baseline is 0 past the second-longest length (see _zero_tail)
        a group of one: B = 0 (its advantage is its return)
        advantages = (G - B) * M
    With rollout_is_weights W is built from v * w^2 (the baseline minimising the variance under truncated IS).

    Returns:
        advantages: (bs, response_length); returns: G (bs, response_length).
    """
    with torch.no_grad():
        returns, path_variance = _returns_and_path_variance(token_level_rewards, response_mask, old_log_probs,
                                                            sum_pi_squared, rollout_is_weights)
        baselines = torch.zeros_like(returns)
        for rows in group_rows(index).values():
            if len(rows) < 2:
                continue
            mask = response_mask[rows]
            weights = path_variance[rows] * mask
            baselines[rows] = (returns[rows] * weights).sum(dim=0) / (weights.sum(dim=0) + epsilon)
            if handle_zero_tail:
                _zero_tail(baselines, rows, mask.sum(dim=-1))
        advantages = (returns - baselines) * response_mask
    return advantages, returns


@register_adv_est("tir_optimal_token_baseline")
def compute_multi_turn_optimal_token_baseline_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    old_log_probs: torch.Tensor,
    sum_pi_squared: torch.Tensor,
    rollout_is_weights: torch.Tensor | None = None,
    handle_zero_tail: bool = True,
    epsilon: float = 1e-8,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """OTB for multi-turn (tool-integrated) responses, positions aligned by **token count**.

    G and W are computed on the padded rows as in `compute_optimal_token_baseline_advantage`; then each row's valid
    tokens are compacted in order (holes from tool observations removed), the per-position baseline and the
    zero-tail rule are applied on the compacted rows (rows without a valid token are left out of their group; a
    group of one has baseline 0), and the advantages are scattered back to the original positions, times M.
    Equal to `optimal_token_baseline` for right-padded rows.

    Returns:
        advantages: (bs, response_length); returns: G (bs, response_length), not compacted.
    """
    with torch.no_grad():
        returns, path_variance = _returns_and_path_variance(token_level_rewards, response_mask, old_log_probs,
                                                            sum_pi_squared, rollout_is_weights)
        valid = response_mask.bool()
        lengths = valid.sum(dim=-1)
        width = int(lengths.max().item()) if lengths.numel() else 0
        compact_w = path_variance.new_zeros((returns.shape[0], width))
        compact_g = torch.zeros_like(compact_w)
        for row in range(returns.shape[0]):
            compact_w[row, : lengths[row]] = path_variance[row, valid[row]]
            compact_g[row, : lengths[row]] = returns[row, valid[row]]
        baselines = torch.zeros_like(compact_g)
        for rows in group_rows(index).values():
            rows = [row for row in rows if lengths[row] > 0]  # rows with no valid token take no part
            if len(rows) < 2:
                continue
            weights = compact_w[rows]
            baselines[rows] = ((compact_g[rows] * weights).sum(dim=0) / (weights.sum(dim=0) + epsilon)).to(
                baselines.dtype)
            if handle_zero_tail:
                _zero_tail(baselines, rows, lengths[rows])
        advantages = torch.zeros_like(returns)
        for row in range(returns.shape[0]):  # an empty row's slice is empty
            advantages[row, valid[row]] = (compact_g[row] - baselines[row])[: lengths[row]]
        advantages = advantages * response_mask
    return advantages, returns
