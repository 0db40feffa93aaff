"""Reward shaping that depends only on response lengths: DAPO's overlong penalty (verl 0.9.1's `dapo` reward
manager, https://arxiv.org/abs/2503.14476, "soft overlong punishment")."""

from __future__ import annotations

import torch


def compute_overlong_penalty(response_lengths: torch.Tensor, max_response_length: int, overlong_buffer_len: int,
                             penalty_factor: float) -> torch.Tensor:
    """The length penalty added to every response's score (correct or not) by DAPO's reward manager.

        penalty = min(-(L - (max_response_length - overlong_buffer_len)) / overlong_buffer_len * penalty_factor, 0)

    0 up to max_response_length - overlong_buffer_len tokens, then linear down to -penalty_factor at
    L = max_response_length; not clamped below for longer L. The reward manager writes score + penalty at the
    last valid response token (column L - 1).

    Args:
        response_lengths: (bs,) int64, the number of valid response tokens L.
        max_response_length: data.max_response_length; overlong_buffer_len: reward_model.overlong_buffer.len;
        penalty_factor: reward_model.overlong_buffer.penalty_factor.

    Returns:
        (bs,) float32 penalties (<= 0). ValueError if overlong_buffer_len <= 0 or > max_response_length.
    """
    if not 0 < overlong_buffer_len <= max_response_length:
        raise ValueError(f"overlong_buffer.len={overlong_buffer_len} must be > 0 and <= max_response_length="
                         f"{max_response_length}")
    exceed = response_lengths.to(torch.float64) - (max_response_length - overlong_buffer_len)
    return torch.clamp(-exceed / overlong_buffer_len * penalty_factor, max=0.0).to(torch.float32)
