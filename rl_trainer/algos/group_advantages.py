"""Group-relative outcome advantages computed with scatter ops over group ids (no Python loop over groups): verl
0.9.1's `grpo_vectorized` and `rloo_vectorized`, and GDPO, which runs GRPO on each reward component separately.

As in advantages.py: score s_i = token_level_rewards[i].sum(), one advantage per response broadcast over its valid
tokens, `index` holds one group id per row (numpy object array of uid strings; groups need not be contiguous).
Shapes: token_level_rewards, response_mask (bs, response_length); index (bs,).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rl_trainer.algos.masked import masked_whiten
from rl_trainer.algos.registry import register_adv_est


def _group_ids(index: Any, device: torch.device) -> tuple[torch.Tensor, int]:
    """(bs,) group ids -> (bs,) int64 group numbers 0..G-1 and G.

    A local stand-in for the project's shared group-by-uid helper (to be swapped for it at merge)."""
    _, inverse = np.unique(np.asarray(index), return_inverse=True)
    inverse = torch.as_tensor(inverse.reshape(-1), dtype=torch.long, device=device)
    return inverse, int(inverse.max().item()) + 1 if inverse.numel() else 0


def _group_sum(values: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    return torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add_(0, groups, values)


@register_adv_est("grpo_vectorized")
def compute_grpo_vectorized_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO (https://arxiv.org/abs/2402.03300) with per-group sums by index_add: the numbers of `grpo`.

        n_g = group size, mean_g = sum_g s / n_g, std_g = sqrt(sum_g (s - mean_g)^2 / (n_g - 1))
        A_i = (s_i - mean_g) / (std_g + epsilon)   (Dr.GRPO without the division: norm_adv_by_std_in_grpo=False)
        a group of one has mean 0 and std 1.
    Scores are summed in float32, as verl does. `config` is unused (verl's signature).

    Returns:
        advantages, returns: (bs, response_length), equal, A_i * response_mask.
    """
    with torch.no_grad():
        scores = token_level_rewards.sum(dim=-1).to(torch.float32)
        groups, n_groups = _group_ids(index, scores.device)
        count = _group_sum(torch.ones_like(scores), groups, n_groups)
        mean = _group_sum(scores, groups, n_groups) / count.clamp_min(1.0)
        centered = scores - mean[groups]
        std = torch.sqrt(_group_sum(centered * centered, groups, n_groups) / (count - 1.0).clamp_min(1.0))
        single = count <= 1.0
        mean = torch.where(single, torch.zeros_like(mean), mean)
        std = torch.where(single, torch.ones_like(std), std)
        if norm_adv_by_std_in_grpo:
            scalars = (scores - mean[groups]) / (std[groups] + epsilon)
        else:
            scalars = scores - mean[groups]
        advantages = scalars.unsqueeze(-1) * response_mask
    return advantages, advantages


@register_adv_est("rloo_vectorized")
def compute_rloo_vectorized_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RLOO (https://arxiv.org/abs/2402.14740) with per-group sums: the mean of the other responses as baseline.

        A_i = s_i - (S_g - s_i) / (n - 1) = (n s_i - S_g) / (n - 1)     for a group of n >= 2 with score sum S_g
        A_i = 0                                                           for a group of one
    Unlike the loop version `rloo` (which keeps a singleton's raw score) a singleton gets 0, as in verl.
    `epsilon` and `config` are unused (verl's signature).

    Returns:
        advantages, returns: (bs, response_length), equal, A_i * response_mask.
    """
    with torch.no_grad():
        scores = token_level_rewards.sum(dim=-1)
        groups, n_groups = _group_ids(index, scores.device)
        count = _group_sum(torch.ones_like(scores), groups, n_groups)[groups]
        total = _group_sum(scores, groups, n_groups)[groups]
        advantages = (count * scores - total) / (count - 1).clamp_min(1) * (count > 1)
        advantages = advantages.unsqueeze(-1) * response_mask
    return advantages, advantages


def _config_get(config: Any, name: str) -> Any:
    return config.get(name, None) if hasattr(config, "get") else getattr(config, name, None)


def _gdpo_components(config: Any, non_tensor_batch: Any, batch: Any, response_mask: torch.Tensor
                     ) -> tuple[list[torch.Tensor], list[float] | None]:
    """GDPO's per-component token-level rewards: each non_tensor_batch[key] (one float per row) placed at the row's
    last response token (column attention_mask[:, P:].sum() - 1, P = prompts.shape[1]); and the optional weights."""
    keys = _config_get(config, "gdpo_reward_keys")
    if not keys:
        raise ValueError("gdpo needs algorithm.gdpo_reward_keys: the reward components your reward function returns "
                         "(e.g. ['format_reward', 'accuracy_reward'])")
    prompt_length = batch["prompts"].shape[1]
    last = batch["attention_mask"][:, prompt_length:].sum(dim=1).long() - 1
    rows = torch.arange(response_mask.shape[0], device=response_mask.device)
    components = []
    for key in keys:
        if key not in non_tensor_batch:
            raise ValueError(f"gdpo reward key {key!r} (algorithm.gdpo_reward_keys) is not in the batch; available: "
                             f"{sorted(non_tensor_batch)}; make the reward function return it")
        rewards = torch.zeros(response_mask.shape, dtype=torch.float32, device=response_mask.device)
        rewards[rows, last] = torch.as_tensor(np.asarray(non_tensor_batch[key], dtype=np.float32),
                                              device=response_mask.device)
        components.append(rewards)
    weights = _config_get(config, "gdpo_reward_weights")
    return components, (None if weights is None else [float(w) for w in weights])


@register_adv_est("gdpo")
def compute_gdpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config: Any = None,
    non_tensor_batch: Any = None,
    batch: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GDPO (https://arxiv.org/abs/2601.05242): normalise each reward component within its group, then combine.

        A_k = GRPO advantage of component k (same epsilon and norm_adv_by_std_in_grpo)
        A   = masked_whiten(sum_k w_k A_k, response_mask) * response_mask     (whitened over the batch's tokens)
    With config, non_tensor_batch and batch all given the components are config.gdpo_reward_keys (non-empty, each a
    key of non_tensor_batch; ValueError otherwise) with weights config.gdpo_reward_weights (default 1.0 each), and
    token_level_rewards is not used; otherwise the only component is token_level_rewards.

    Returns:
        advantages, returns: (bs, response_length), equal.
    """
    with torch.no_grad():
        components, weights = [token_level_rewards], None
        if config is not None and non_tensor_batch is not None and batch is not None:
            components, weights = _gdpo_components(config, non_tensor_batch, batch, response_mask)
        weights = [1.0] * len(components) if weights is None else weights
        if len(weights) != len(components):  # verl indexes the weights by component (extra ones go unused)
            raise ValueError(f"algorithm.gdpo_reward_weights has {len(weights)} values for {len(components)} "
                             "gdpo_reward_keys; give one weight per key")
        combined = None
        for weight, rewards in zip(weights, components):
            advantage, _ = compute_grpo_vectorized_outcome_advantage(rewards, response_mask, index, epsilon,
                                                                     norm_adv_by_std_in_grpo)
            combined = weight * advantage if combined is None else combined + weight * advantage
        advantages = masked_whiten(combined, response_mask) * response_mask
    return advantages, advantages
