"""Advantage estimators: token-level rewards -> (advantages, returns), both (bs, response_length).

Each estimator is registered under the name users pass as `algorithm.adv_estimator` and keeps the
name, signature and numbers of verl 0.9.1's `core_algos.py`. "Outcome" estimators assume one scalar
reward per response, score = token_level_rewards.sum(-1), and broadcast their per-response
advantage over the response's valid tokens. `index` holds one group id per row (the prompt's uid,
repeated for its n responses); groups need not be contiguous.

Where several rows form a group, group statistics use torch.mean and torch.std (Bessel-corrected,
n - 1 in the denominator) over the group's scores in row order, as verl does.
"""

from __future__ import annotations

import numpy as np
import torch

from rl_trainer.algos.grouping import group_mean_std, group_rows
from rl_trainer.algos.masked import masked_whiten
from rl_trainer.algos.registry import register_adv_est


@register_adv_est("gae")
def compute_gae_advantage_return(
    token_level_rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, https://arxiv.org/abs/1506.02438).

    Backwards over t, skipping masked positions (their value and TD error are not used):
        delta_t = r_t + gamma * V_{t'} - V_t          (t' = next valid position; V = 0 past the end)
        A_t     = delta_t + gamma * lam * A_{t'}
        returns = A + V                               (before whitening)
        advantages = masked_whiten(A, response_mask)  (over every valid token of the batch)

    Masked positions carry the running A and V through unchanged, so padding inside a response
    (e.g. tool observations) does not break the recursion.

    Args:
        token_level_rewards: (bs, response_length)
        values: (bs, response_length) critic values V(s_t)
        response_mask: (bs, response_length); 1 on response tokens
        gamma: discount factor; lam: GAE lambda.

    Returns:
        advantages, returns: (bs, response_length). Whitening raises ValueError when the batch has
        fewer than 2 valid tokens (the unbiased variance is undefined), as in verl.
    """
    with torch.no_grad():
        next_value = 0
        last_gae = 0
        advantages_reversed = []
        for t in reversed(range(token_level_rewards.shape[-1])):
            mask_t = response_mask[:, t]
            delta = token_level_rewards[:, t] + gamma * next_value - values[:, t]
            gae = delta + gamma * lam * last_gae
            next_value = values[:, t] * mask_t + (1 - mask_t) * next_value
            last_gae = gae * mask_t + (1 - mask_t) * last_gae
            advantages_reversed.append(last_gae)
        advantages = torch.stack(advantages_reversed[::-1], dim=1)
        returns = advantages + values
        advantages = masked_whiten(advantages, response_mask)
    return advantages, returns


@register_adv_est("grpo")
def compute_grpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO (Shao et al. 2024, https://arxiv.org/abs/2402.03300) and Dr.GRPO.

    For response i of group g with score s_i:
        A_i = (s_i - mean_g) / (std_g + epsilon)    if norm_adv_by_std_in_grpo   (GRPO)
        A_i =  s_i - mean_g                          otherwise                    (Dr.GRPO,
                                                      https://arxiv.org/abs/2503.20783)
    std_g is Bessel-corrected. A group of one has mean 0 and std 1, so its advantage is its raw
    score (divided by 1 + epsilon). A group whose scores are all equal gets 0.

    Args:
        token_level_rewards: (bs, response_length)
        response_mask: (bs, response_length)
        index: (bs,) group ids, e.g. a numpy object array of uid strings.

    Returns:
        advantages, returns: (bs, response_length), equal, A_i on every valid token of row i.
    """
    with torch.no_grad():
        scores = token_level_rewards.sum(dim=-1)
        mean, std = group_mean_std(scores, group_rows(index))
        if norm_adv_by_std_in_grpo:
            scores = (scores - mean) / (std + epsilon)
        else:
            scores = scores - mean
        scores = scores.unsqueeze(-1) * response_mask
    return scores, scores


@register_adv_est("grpo_passk")
def compute_grpo_passk_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass@k training (Chen et al. 2025, https://arxiv.org/abs/2503.19595).

    Only the best response of each group is credited, with the margin over the runner-up:
        A_best = (r_max - r_second_max) [/ (std_g + epsilon) if norm_adv_by_std_in_grpo]
        A_i    = 0 for every other response
    Ties are broken by torch.topk's choice of index, as in verl.

    Args and returns as `compute_grpo_outcome_advantage`. verl 0.9.1 reads
    `norm_adv_by_std_in_grpo` from its config object; here it is a keyword (same default).

    Raises:
        ValueError: a group has fewer than 2 responses.
    """
    with torch.no_grad():
        scores = token_level_rewards.sum(dim=-1)
        advantages = torch.zeros_like(scores)
        for key, rows in group_rows(index).items():
            group_scores = scores[rows]
            if group_scores.numel() < 2:
                raise ValueError(
                    f"grpo_passk needs at least 2 responses per group, got {group_scores.numel()} for group {key!r}; "
                    "set actor_rollout_ref.rollout.n >= 2."
                )
            top, top_idx = torch.topk(group_scores, 2)
            advantage = top[0] - top[1]
            if norm_adv_by_std_in_grpo:
                advantage = advantage / (torch.std(group_scores) + epsilon)
            advantages[rows[top_idx[0].item()]] = advantage
        advantages = advantages.unsqueeze(-1) * response_mask
    return advantages, advantages


@register_adv_est("reinforce_plus_plus_baseline")
def compute_reinforce_plus_plus_baseline_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ with a group-mean baseline (Hu 2025, https://arxiv.org/abs/2501.03262).

        A_i = s_i - mean_g          (a group of one keeps s_i)
        advantages = masked_whiten(A broadcast over valid tokens, response_mask) * response_mask

    The whitening is over every valid token of the batch (so long responses weigh more in its
    statistics). `epsilon` is unused, kept for verl's signature.

    Returns:
        advantages, returns: (bs, response_length), equal. Raises ValueError when the batch has
        fewer than 2 valid tokens.
    """
    with torch.no_grad():
        scores = token_level_rewards.sum(dim=-1)
        mean, _ = group_mean_std(scores, group_rows(index))
        scores = (scores - mean).unsqueeze(-1).tile([1, token_level_rewards.shape[-1]]) * response_mask
        scores = masked_whiten(scores, response_mask) * response_mask
    return scores, scores


@register_adv_est("rloo")
def compute_rloo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE Leave-One-Out (Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740).

    Baseline for response i is the mean of the other n - 1 responses of its group:
        A_i = s_i - (sum_g - s_i) / (n - 1) = s_i * n / (n - 1) - mean_g * n / (n - 1)
    (computed in the second form, as verl does). A group of one keeps its raw score.
    `epsilon` is unused, kept for verl's signature.

    Returns:
        advantages, returns: (bs, response_length), equal.
    """
    with torch.no_grad():
        scores = token_level_rewards.sum(dim=-1)
        advantages = scores.clone()
        for rows in group_rows(index).values():
            n = len(rows)
            if n > 1:
                group_scores = scores[rows]
                group_mean = torch.mean(group_scores)
                advantages[rows] = group_scores * n / (n - 1) - group_mean * n / (n - 1)
        advantages = advantages.unsqueeze(-1) * response_mask
    return advantages, advantages


@register_adv_est("opo")
def compute_opo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """On-Policy RL with Optimal reward baseline (Hao et al. 2025, https://arxiv.org/abs/2505.23585).

    The baseline is the length-weighted mean score of the group, L_i = number of valid tokens:
        b_g = sum_i L_i * s_i / sum_i L_i,      A_i = s_i - b_g     (a group of one: b = 0)
    `epsilon` is unused, kept for verl's signature.

    Returns:
        advantages, returns: (bs, response_length), equal.
    """
    with torch.no_grad():
        lengths = response_mask.sum(dim=-1)
        scores = token_level_rewards.sum(dim=-1)
        advantages = scores.clone()
        for rows in group_rows(index).values():
            if len(rows) > 1:
                group_lengths = lengths[rows]
                baseline = (group_lengths * scores[rows]).sum() / group_lengths.sum()
                advantages[rows] = scores[rows] - baseline
        advantages = advantages.unsqueeze(-1) * response_mask
    return advantages, advantages


@register_adv_est("reinforce_plus_plus")
def compute_reinforce_plus_plus_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu 2025, https://arxiv.org/abs/2501.03262): discounted return-to-go, whitened.

        G_t = r_t + gamma * G_{t'}      over valid positions (t' = next valid; masked positions carry
                                        G through unchanged and get return 0)
        advantages = masked_whiten(G, response_mask) * response_mask

    verl 0.9.1 reads gamma from its config object; here it is a keyword (default 1.0).

    Returns:
        advantages: (bs, response_length), whitened; returns: G (not whitened). Raises ValueError
        when the batch has fewer than 2 valid tokens.
    """
    with torch.no_grad():
        returns = torch.zeros_like(token_level_rewards)
        running_return = 0
        for t in reversed(range(token_level_rewards.shape[1])):
            mask_t = response_mask[:, t]
            new_running_return = token_level_rewards[:, t] + gamma * running_return
            returns[:, t] = new_running_return * mask_t
            running_return = new_running_return * mask_t + running_return * (1 - mask_t)
        advantages = masked_whiten(returns, response_mask) * response_mask
    return advantages, returns


@register_adv_est("remax")
def compute_remax_outcome_advantage(
    token_level_rewards: torch.Tensor,
    reward_baselines: torch.Tensor,
    response_mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ReMax (Li et al. 2023, https://arxiv.org/abs/2310.10505): the greedy response's reward as baseline.

        G_t = sum_{t' >= t} r_{t'} * mask_{t'}       (undiscounted return-to-go)
        A_t = G_t - b * mask_t                       (b = reward of the greedy response to the prompt)

    Args:
        token_level_rewards: (bs, response_length)
        reward_baselines: (bs,)
        response_mask: (bs, response_length)

    Returns:
        advantages, returns: (bs, response_length). Not whitened.
    """
    with torch.no_grad():
        returns = (token_level_rewards * response_mask).flip(dims=[-1]).cumsum(dim=-1).flip(dims=[-1])
        advantages = returns - reward_baselines.unsqueeze(-1) * response_mask
    return advantages, returns


@register_adv_est("gpg")
def compute_gpg_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
    f_norm: float = 1.0,
    alpha: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group Policy Gradient (Chu et al. 2025, https://arxiv.org/abs/2504.02546).

        alpha = bs / max(#rows with non-zero score, 1)
        A_i   = alpha * (s_i - mean_g) / f_norm          (a group of one: mean 0)

    Known verl 0.9.1 behaviour kept on purpose: the `alpha` argument is ignored (always recomputed
    as above) and `epsilon` is unused; both stay in the signature for compatibility.

    Returns:
        advantages, returns: (bs, response_length), equal.
    """
    with torch.no_grad():
        scores = token_level_rewards.sum(dim=-1)
        n_nonzero = torch.count_nonzero(scores)
        alpha = scores.shape[0] / n_nonzero.clamp(min=1)
        mean, _ = group_mean_std(scores, group_rows(index))
        scores = alpha * (scores - mean) / f_norm
        scores = scores.unsqueeze(-1) * response_mask
    return scores, scores
