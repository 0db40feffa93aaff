"""Rollout correction: IS weights (TIS / IcePop), rejection masks, off-policy metrics, the combined call, by hand."""

import math

import pytest
import torch

from rl_trainer.algos import (
    compute_offpolicy_metrics,
    compute_rollout_correction_and_rejection_mask,
    compute_rollout_correction_weights,
    compute_rollout_rejection_mask,
)
from rl_trainer.algos.rollout_correction import parse_rollout_is_threshold, parse_rollout_rs_thresholds

LOG3, LOG2 = math.log(3.0), math.log(2.0)


@pytest.mark.parametrize("spec, parsed", [(2.0, (2.0, None)), (3, (3.0, None)), ("1.5", (1.5, None)),
                                          ("0.5_2", (2.0, 0.5)), (" 0.5_2.0 ", (2.0, 0.5))])
def test_is_threshold_grammar(spec, parsed):
    assert parse_rollout_is_threshold(spec) == parsed


@pytest.mark.parametrize("spec", [True, "", "two", "0.5_x", [2.0], 0, -1.0, "0_2", "3_2", None])
def test_is_threshold_refuses_malformed_specs(spec):
    with pytest.raises(ValueError, match="rollout_is_threshold"):
        parse_rollout_is_threshold(spec)


def test_token_tis_weights_and_metrics():
    # raw = (3, 0.5) on the valid tokens (the third is padding): truncated at 2 -> (2, 0.5, 0).
    log_ratio = torch.tensor([[LOG3, -LOG2, 5.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0]])
    weights, m = compute_rollout_correction_weights(log_ratio, mask, "token", 2.0)
    torch.testing.assert_close(weights, torch.tensor([[2.0, 0.5, 0.0]]))
    assert not weights.requires_grad
    # mean 1.25; max 2, min 0.5; raw > 2: 1 of 2; raw < 1/2: none (0.5 is not < 0.5).
    # std: E[c^2] = (4 + 0.25) / 2 = 2.125, minus 1.25^2 = 0.5625 -> 0.75. ESS: c / 1.25 = (1.6, 0.4),
    # mean of squares (2.56 + 0.16) / 2 = 1.36 -> 1 / 1.36 = 0.73529. One row: q = 1.25, q_raw = 1.75.
    assert m == pytest.approx({
        "rollout_is_mean": 1.25, "rollout_is_max": 2.0, "rollout_is_min": 0.5, "rollout_is_ratio_fraction_high": 0.5,
        "rollout_is_ratio_fraction_low": 0.0, "rollout_is_std": 0.75, "rollout_is_eff_sample_size": 1 / 1.36,
        "rollout_is_seq_mean": 1.25, "rollout_is_seq_std": 0.0, "rollout_is_seq_max": 1.25, "rollout_is_seq_min": 1.25,
        "rollout_is_seq_max_deviation": 0.25, "rollout_is_seq_fraction_high": 0.0, "rollout_is_seq_fraction_low": 0.0,
    }, rel=1e-5)


def test_icepop_zeroes_weights_outside_the_bounds():
    # "0.6_2": raw (3, 0.5, 1.0) -> 3 and 0.5 are out (weights 0), 1.0 stays; oob ratio 2/3.
    weights, m = compute_rollout_correction_weights(torch.tensor([[LOG3, -LOG2, 0.0]]), torch.ones(1, 3), "token",
                                                    "0.6_2")
    torch.testing.assert_close(weights, torch.tensor([[0.0, 0.0, 1.0]]))
    assert m["rollout_is_oob_ratio"] == pytest.approx(2 / 3)
    assert m["rollout_is_ratio_fraction_low"] == pytest.approx(1 / 3)  # lo = l = 0.6, not 1/u


def test_sequence_level_weights_and_batch_normalisation():
    # Row 1: S = 0.2 + 0.3 = 0.5 -> e^0.5 = 1.64872 on both tokens; row 2: S = 1.5 -> e^1.5 = 4.48169, truncated to 2.
    log_ratio = torch.tensor([[0.2, 0.3], [1.0, 0.5]])
    weights, m = compute_rollout_correction_weights(log_ratio, torch.ones(2, 2), "sequence", 2.0)
    torch.testing.assert_close(weights, torch.tensor([[math.exp(0.5)] * 2, [2.0, 2.0]]))
    assert m["rollout_is_max"] == pytest.approx(math.exp(1.5), rel=1e-5)  # from S, before truncation
    assert m["rollout_is_min"] == pytest.approx(math.exp(0.5), rel=1e-5)
    assert m["rollout_is_ratio_fraction_high"] == 0.5  # S > log 2 in row 2 only
    # Normalised by the mean over rows of each row's weight, (1.64872 + 2) / 2 = 1.82436; metrics are from before.
    normalised, m = compute_rollout_correction_weights(log_ratio, torch.ones(2, 2), "sequence", 2.0, True)
    factor = (math.exp(0.5) + 2) / 2
    torch.testing.assert_close(normalised, weights / factor)
    assert m["rollout_is_batch_norm_factor"] == pytest.approx(factor, rel=1e-5)
    assert m["rollout_is_mean"] == pytest.approx(factor, rel=1e-5)
    # Token level: weights (2, 0.5) -> mean 1.25 -> (1.6, 0.4).
    normalised, m = compute_rollout_correction_weights(torch.tensor([[LOG3, -LOG2]]), torch.ones(1, 2), "token", 2.0,
                                                       True)
    torch.testing.assert_close(normalised, torch.tensor([[1.6, 0.4]]))
    assert m["rollout_is_batch_norm_factor"] == pytest.approx(1.25)


def test_weights_refuse_a_bad_level_or_an_empty_mask():
    with pytest.raises(ValueError, match="rollout_is"):
        compute_rollout_correction_weights(torch.zeros(1, 2), torch.ones(1, 2), "geometric")
    with pytest.raises(ValueError, match="no valid token"):
        compute_rollout_correction_weights(torch.zeros(1, 2), torch.zeros(1, 2), "token")


def test_token_k1_rejection_keeps_ratios_inside_the_bounds():
    # x = (0.1, 1.0, -1.0): k1 = -x = (-0.1, -1, 1); "0.5_2" keeps k1 in [log 0.5, log 2] = [-0.693, 0.693].
    mask = torch.tensor([[True, True, True]])
    out, m = compute_rollout_rejection_mask(torch.tensor([[0.1, 1.0, -1.0]]), mask, "token_k1", "0.5_2")
    assert out.dtype == torch.bool and out.tolist() == [[True, False, False]]
    assert m["rollout_rs_token_k1_masked_fraction"] == pytest.approx(2 / 3)
    assert m["rollout_rs_token_k1_seq_masked_fraction"] == 1.0
    assert m["rollout_rs_masked_fraction"] == pytest.approx(2 / 3) and m["rollout_rs_seq_masked_fraction"] == 1.0
    # Diagnostics: mean of k1 = (-0.1 - 1 + 1) / 3; above log 2: 1/3, below log 0.5: 1/3.
    assert m["rollout_rs_token_k1_mean"] == pytest.approx(-0.1 / 3, rel=1e-5)
    assert m["rollout_rs_token_k1_fraction_high"] == pytest.approx(1 / 3)
    assert m["rollout_rs_token_k1_fraction_low"] == pytest.approx(1 / 3)


def test_sequence_rejection_drops_whole_rows_and_options_combine():
    # seq_max_k2 "0.3": row 1 has x = 1.0 -> k2 = 0.5 > 0.3, rejected; row 2 max k2 = 0.02, kept; row 3 is empty.
    log_ratio = torch.tensor([[0.1, 1.0], [0.2, 0.1], [0.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 1], [0, 0]])
    out, m = compute_rollout_rejection_mask(log_ratio, mask, "seq_max_k2", 0.3)
    assert out.dtype == torch.int64 and out.tolist() == [[0, 0], [1, 1], [0, 0]]
    assert m["rollout_rs_seq_max_k2_seq_masked_fraction"] == 0.5  # of the 2 non-empty rows
    assert m["rollout_rs_seq_masked_fraction"] == pytest.approx(1 / 3)  # of all 3 rows
    assert m["rollout_rs_seq_max_k2_max"] == pytest.approx(0.5)
    assert m["rollout_rs_seq_max_k2_min"] == pytest.approx(0.02)
    # Two options, one threshold each; a duplicate is dropped. token_k3 "0.01" rejects row 2's first token
    # (e^0.2 - 1.2 = 0.0214 > 0.01; e^0.1 - 1.1 = 0.0052 passes) while seq_max_k2 rejects row 1.
    out, m = compute_rollout_rejection_mask(log_ratio, mask, "seq_max_k2, token_k3, seq_max_k2", "0.3,0.01")
    assert out.tolist() == [[0, 0], [0, 1], [0, 0]]
    assert m["rollout_rs_masked_fraction"] == pytest.approx(3 / 4)
    # seq_sum_k1 with a single u means l = 1/u: "2" keeps row sums of -x in [-log 2, log 2]; row 1 sums to -1.1.
    out, _ = compute_rollout_rejection_mask(log_ratio, mask, "seq_sum_k1", "2")
    assert out.tolist() == [[0, 0], [1, 1], [0, 0]]


@pytest.mark.parametrize("rs, threshold, match", [
    ("token_k4", 2.0, "unknown"), (" , ", 2.0, "names no option"), (None, 2.0, "rollout_rs"),
    ("token_k1", None, "rollout_rs_threshold"), ("token_k1,token_k2", "1,2,3", "3 values for 2"),
    ("token_k2", "0.5_2", "token_k2"), ("token_k1", "2_0.5", "token_k1"), ("seq_mean_k3", "-1", "seq_mean_k3"),
])
def test_rejection_refuses_malformed_specs(rs, threshold, match):
    with pytest.raises(ValueError, match=match):
        compute_rollout_rejection_mask(torch.zeros(1, 2), torch.ones(1, 2), rs, threshold)


def test_rejection_of_an_empty_batch_returns_the_mask():
    mask = torch.ones(0, 3)
    out, m = compute_rollout_rejection_mask(torch.zeros(0, 3), mask, "token_k1", 2.0)
    assert out is mask and m == {}
    assert parse_rollout_rs_thresholds(["token_k1", "seq_max_k3"], 4) == {"token_k1": (0.25, 4.0),
                                                                         "seq_max_k3": (None, 4.0)}


def test_offpolicy_metrics_by_hand():
    # One row: old = (log 0.5, log 0.5), rollout = (log 0.25, log 0.5); x = old - rollout = (log 2, 0).
    old, rollout = torch.tensor([[-LOG2, -LOG2]]), torch.tensor([[-2 * LOG2, -LOG2]])
    m = compute_offpolicy_metrics(old, rollout, torch.ones(1, 2))
    # mt = -log 2 -> training ppl 2; mr = -1.5 log 2 -> rollout ppl 2^1.5; delta = mr - mt = -0.5 log 2.
    # kl = mean(rollout - old) = -log 2 / 2; k3 = mean(e^x - x - 1) = (1 - log 2) / 2;
    # chi2_token = (4 + 1) / 2 - 1 = 1.5; chi2_seq = e^(2 log 2) - 1 = 3.
    assert m == pytest.approx({
        "training_ppl": 2.0, "training_log_ppl": LOG2, "kl": -LOG2 / 2, "k3_kl": (1 - LOG2) / 2,
        "rollout_ppl": 2 ** 1.5, "rollout_log_ppl": 1.5 * LOG2, "log_ppl_diff": -0.5 * LOG2,
        "log_ppl_abs_diff": 0.5 * LOG2, "log_ppl_diff_max": -0.5 * LOG2, "log_ppl_diff_min": -0.5 * LOG2,
        "ppl_ratio": 2 ** -0.5, "chi2_token": 1.5, "chi2_seq": 3.0,
    }, rel=1e-5)
    assert set(compute_offpolicy_metrics(old, None, torch.ones(1, 2))) == {"training_ppl", "training_log_ppl"}
    with pytest.raises(ValueError, match="no valid token"):
        compute_offpolicy_metrics(old, rollout, torch.zeros(1, 2))


def test_combined_call_prefixes_metrics_and_switches_parts_off():
    old, rollout, mask = torch.tensor([[LOG3, 0.1]]), torch.zeros(1, 2), torch.ones(1, 2)
    weights, out, m = compute_rollout_correction_and_rejection_mask(old, rollout, mask)
    assert weights is None and torch.equal(out, mask) and out is not mask
    assert all(k.startswith("rollout_corr/") for k in m) and "rollout_corr/kl" in m
    weights, out, m = compute_rollout_correction_and_rejection_mask(old, rollout, mask, rollout_is="token",
                                                                    rollout_rs="token_k1", rollout_rs_threshold="0.5_2")
    torch.testing.assert_close(weights, torch.tensor([[2.0, math.exp(0.1)]]))
    assert out.tolist() == [[0.0, 1.0]]  # log 3 > log 2 is rejected
    assert m["rollout_corr/rollout_is_mean"] == pytest.approx((2 + math.exp(0.1)) / 2)
    assert m["rollout_corr/rollout_rs_masked_fraction"] == 0.5
    weights, _, _ = compute_rollout_correction_and_rejection_mask(old, rollout, mask, rollout_is="token",
                                                                  rollout_is_threshold=None)
    assert weights is None
    with pytest.raises(ValueError, match="shape"):
        compute_rollout_correction_and_rejection_mask(old, torch.zeros(1, 3), mask)
    with pytest.raises(ValueError, match="no valid token"):
        compute_rollout_correction_and_rejection_mask(old, rollout, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="rollout_rs_threshold"):
        compute_rollout_correction_and_rejection_mask(old, rollout, mask, rollout_rs="token_k1")
