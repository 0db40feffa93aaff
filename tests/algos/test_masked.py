"""Masked statistics: padding never leaks, Bessel correction, verl's error cases."""

import pytest
import torch

from rl_trainer.algos import masked_mean, masked_sum, masked_var, masked_whiten


def test_padding_values_never_leak():
    values = torch.tensor([[1.0, 3.0, float("nan")], [5.0, float("inf"), 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_sum(values, mask).item() == 9.0
    torch.testing.assert_close(masked_mean(values, mask), torch.tensor(3.0))  # 9 / (3 + 1e-8)
    torch.testing.assert_close(masked_mean(values, mask, axis=-1), torch.tensor([2.0, 5.0]))


def test_fully_masked_mean_is_zero_not_nan():
    assert masked_mean(torch.ones(2, 2), torch.zeros(2, 2)).item() == 0.0


def test_unbiased_variance_and_whitening():
    # Valid values [1, 2, 3]: mean 2, squared deviations 2, unbiased var 2 / 2 = 1, so whitening is x - 2.
    values = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    torch.testing.assert_close(masked_var(values, mask), torch.tensor(1.0))
    torch.testing.assert_close(masked_var(values, mask, unbiased=False), torch.tensor(2 / 3))
    whitened = masked_whiten(values, mask)
    torch.testing.assert_close(whitened[mask.bool()], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(masked_whiten(values, mask, shift_mean=False)[mask.bool()], torch.tensor([1.0, 2.0, 3.0]))


@pytest.mark.parametrize("mask, message", [([[0, 0]], "no element"), ([[1, 0]], "single element")])
def test_variance_of_fewer_than_two_tokens_raises(mask, message):
    with pytest.raises(ValueError, match=message):
        masked_var(torch.tensor([[1.0, 2.0]]), torch.tensor(mask))
