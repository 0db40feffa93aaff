"""Masked reductions over the valid tokens of a padded batch.

Every function takes `values` and a `mask` of the same shape (bool, int or float; non-zero marks a
valid token) and follows verl 0.9.1's `verl.utils.torch_functional` numerically, epsilons included.
"""

from __future__ import annotations

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor, axis: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """sum(values * mask) over `axis` (all elements when None).

    Values outside the mask are zeroed first, so a NaN or inf in padding never leaks into the sum.
    """
    valid = torch.where(mask.bool(), values, 0.0) * mask
    return valid.sum() if axis is None else valid.sum(dim=axis)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, axis: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """sum(values * mask) / (sum(mask) + 1e-8): a fully masked input gives 0, not NaN."""
    count = mask.sum() if axis is None else mask.sum(dim=axis)
    return masked_sum(values, mask, axis) / (count + 1e-8)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the valid tokens; with `unbiased` the Bessel correction N / (N - 1) is applied.

    var = masked_mean((values - masked_mean(values))**2) * N / (N - 1),  N = sum(mask)

    Raises ValueError when N == 0, or when N == 1 with `unbiased` (the correction divides by zero),
    exactly where verl raises.
    """
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n_valid = mask.sum()
        if n_valid == 0:
            raise ValueError("masked_var: the mask selects no element; at least one must be 1.")
        if n_valid == 1:
            raise ValueError(
                "masked_var: the mask selects a single element, so the unbiased variance divides by zero; "
                "use a larger (mini-)batch."
            )
        variance = variance * (n_valid / (n_valid - 1))
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(values - mean) / sqrt(var + 1e-8) with mean and unbiased var over the valid tokens.

    Applied to every element (padding included; callers multiply by the mask where it matters).
    With `shift_mean=False` the mean is added back after scaling.
    """
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened += mean
    return whitened


def clip_by_value(x: torch.Tensor, tensor_min: torch.Tensor, tensor_max: torch.Tensor) -> torch.Tensor:
    """Element-wise clamp of `x` to [tensor_min, tensor_max] with tensor bounds: max(min(x, hi), lo)."""
    return torch.max(torch.min(x, tensor_max), tensor_min)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution softmax(logits) over the last axis.

    H = logsumexp(z) - sum_v softmax(z)_v * z_v     (equal to -sum p log p, but stable)

    Shapes: (..., vocab_size) -> (...).
    """
    probs = torch.nn.functional.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - torch.sum(probs * logits, dim=-1)


def sum_pi_squared_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """sum_v softmax(z)_v ** 2 over the last axis: the collision probability of each position's distribution, which
    the optimal token baselines' variance proxy reads (verl's calculate_sum_pi_squared_from_logits).

    sum_v p_v^2 = exp(logsumexp(2 z) - 2 logsumexp(z))     (no (.., vocab) probability tensor is formed)

    Shapes: (..., vocab_size) -> (...).
    """
    return torch.exp(torch.logsumexp(2.0 * logits, dim=-1) - 2.0 * torch.logsumexp(logits, dim=-1))
