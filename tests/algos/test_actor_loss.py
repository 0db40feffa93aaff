"""compute_actor_loss: pg_loss - entropy_coeff * entropy_loss + kl_loss_coef * kl_loss, every term aggregated alike."""

import pytest
import torch

from rl_trainer.algos import compute_actor_loss, compute_policy_loss

# One row, two valid tokens, on-policy (ratio 1): L_t = -A_t, so pg_loss = mean(-1, +1) = 0.
OLD = torch.zeros(1, 2)
ADV = torch.tensor([[1.0, -1.0]])
MASK = torch.ones(1, 2)
ENTROPY = torch.tensor([[1.0, 3.0]])  # entropy_loss = mean = 2.0
REF = torch.tensor([[-0.5, 0.5]])  # d = log_prob - ref = (0.5, -0.5); "abs": |d| -> kl_loss = 0.5


def test_terms_and_total_by_hand():
    log_prob = torch.zeros(1, 2, requires_grad=True)
    loss, terms = compute_actor_loss(OLD, log_prob, ADV, MASK, entropy=ENTROPY, entropy_coeff=0.1,
                                     ref_log_prob=REF, use_kl_loss=True, kl_loss_coef=0.1, kl_loss_type="abs")
    assert terms["actor/pg_loss"].item() == pytest.approx(0.0)
    assert terms["actor/entropy_loss"].item() == pytest.approx(2.0)
    assert terms["actor/kl_loss"].item() == pytest.approx(0.5)
    assert terms["actor/kl_coef"] == 0.1
    # total = 0 - 0.1 * 2.0 + 0.1 * 0.5 = -0.15
    assert loss.item() == pytest.approx(-0.15)
    loss.backward()
    # d pg / d log_prob_t = -A_t * ratio / T = (-0.5, +0.5); d kl / d log_prob_t = coef * sign(d_t) / T = (0.05, -0.05)
    # (the entropy tensor is an input here, so it adds no gradient to log_prob)
    assert torch.allclose(log_prob.grad, torch.tensor([[-0.45, 0.45]]))


def test_terms_off_is_the_policy_loss_alone():
    log_prob = torch.tensor([[0.1, -0.3]])
    loss, terms = compute_actor_loss(OLD, log_prob, ADV, MASK, clip_ratio_low=0.1, clip_ratio_high=0.3,
                                     entropy=ENTROPY)  # entropy given but entropy_coeff 0: not a term
    expected, clipfrac, ppo_kl, lower = compute_policy_loss(OLD, log_prob, ADV, MASK, clip_ratio_low=0.1,
                                                            clip_ratio_high=0.3)
    assert torch.equal(loss, expected)
    assert set(terms) == {"actor/pg_loss", "actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"}
    assert terms["actor/pg_clipfrac"] == clipfrac.item() and terms["actor/ppo_kl"] == ppo_kl.item()


def test_global_normalisers_apply_to_every_term():
    # dp_size 2 and 8 tokens in the global mini-batch: token-mean = sum / 8 * 2 = sum / 4.
    log_prob = torch.zeros(1, 2)
    _, terms = compute_actor_loss(OLD, log_prob, ADV, MASK, entropy=ENTROPY, entropy_coeff=0.1, ref_log_prob=REF,
                                  use_kl_loss=True, kl_loss_type="abs", dp_size=2, batch_num_tokens=8)
    assert terms["actor/entropy_loss"].item() == pytest.approx((1.0 + 3.0) / 4)
    assert terms["actor/kl_loss"].item() == pytest.approx((0.5 + 0.5) / 4)


def test_missing_inputs_are_named():
    with pytest.raises(ValueError, match="entropy"):
        compute_actor_loss(OLD, OLD, ADV, MASK, entropy_coeff=0.01)
    with pytest.raises(ValueError, match="ref_log_prob"):
        compute_actor_loss(OLD, OLD, ADV, MASK, use_kl_loss=True)
    with pytest.raises(ValueError, match="Unknown policy loss 'nope'"):
        compute_actor_loss(OLD, OLD, ADV, MASK, loss_mode="nope")
