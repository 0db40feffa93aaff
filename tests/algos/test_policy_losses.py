"""The 12 registered policy losses (verl's signature): hand-derived values, gradients, metrics and where they raise."""

import math
from types import SimpleNamespace

import pytest
import torch

from rl_trainer.algos import (
    ActorLossConfig,
    PolicyLossConfig,
    RolloutCorrectionConfig,
    compute_actor_loss,
    compute_policy_loss,
    compute_policy_loss_vanilla,
    get_policy_loss_fn,
)

LOSSES = ("vanilla", "dppo_tv", "dppo_kl", "gspo", "sapo", "gpg", "clip_cov", "kl_cov", "geo_mean", "dro", "cispo",
          "bypass_mode")


def cfg(**policy_loss):
    """An actor config with verl's defaults (clip 0.2, clip_ratio_c 3, tau 1 / 1.05) and the given policy_loss keys."""
    return ActorLossConfig(policy_loss=PolicyLossConfig(**policy_loss))


def run(name, old, new, adv, mask=None, config=None, **kwargs):
    """Call a registered loss by keywords, as the actor does; returns (loss, metrics, d loss / d log_prob)."""
    log_prob = torch.tensor(new, dtype=torch.float32, requires_grad=True)
    old = torch.tensor(old, dtype=torch.float32)
    mask = torch.ones_like(old) if mask is None else torch.as_tensor(mask)
    loss, metrics = get_policy_loss_fn(name)(old_log_prob=old, log_prob=log_prob, advantages=torch.tensor(adv),
                                             response_mask=mask, config=config or cfg(), **kwargs)
    loss.backward()
    return loss.item(), metrics, log_prob.grad


def test_the_12_verl_losses_are_registered_and_unknown_names_raise():
    for name in LOSSES:
        assert callable(get_policy_loss_fn(name))
    with pytest.raises(ValueError, match="Unknown policy loss 'ppo'.*vanilla"):
        get_policy_loss_fn("ppo")


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_needs_a_config_and_accepts_a_bool_mask(name):
    old, new, adv = [[-1.0, -0.5, -2.0]], [[-0.9, -0.7, -1.5]], [[1.0, -1.0, 0.5]]
    config = cfg(dro_beta=0.1, rollout_correction=RolloutCorrectionConfig(rollout_is="token"))
    with pytest.raises(ValueError, match="config"):
        get_policy_loss_fn(name)(old_log_prob=torch.tensor(old), log_prob=torch.tensor(new),
                                 advantages=torch.tensor(adv), response_mask=torch.ones(1, 3), config=None)
    mask = [[True, True, False]]
    as_bool = run(name, old, new, adv, mask, config)
    as_float = run(name, old, new, adv, torch.tensor(mask, dtype=torch.float32), config)
    assert as_bool[0] == pytest.approx(as_float[0]) and as_bool[1] == pytest.approx(as_float[1])
    assert all(isinstance(v, float) for v in as_bool[1].values())


def test_vanilla_reads_the_config_and_applies_is_weights_per_token():
    # ratio 1.1 inside [0.8, 1.2], A = 1: per-token loss -1.1; with w = 0.5 it is -0.55, and so is the gradient.
    loss, metrics, grad = run("vanilla", [[0.0]], [[math.log(1.1)]], [[1.0]],
                              rollout_is_weights=torch.tensor([[0.5]]))
    assert loss == pytest.approx(-0.55) and grad.item() == pytest.approx(-0.55)
    assert set(metrics) == {"actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"}
    # Same numbers as the wave-1 compute_policy_loss, with low/high falling back to clip_ratio when None.
    old, new, adv = torch.zeros(2, 3), torch.tensor([[0.3, -0.4, 2.0], [0.1, 0.0, -1.0]]), torch.tensor([[1.0, -1, -1],
                                                                                                       [2, -2, 1]])
    config = ActorLossConfig(clip_ratio=0.1, clip_ratio_low=None, clip_ratio_high=0.3)
    expected, clipfrac, ppo_kl, lower = compute_policy_loss(old, new, adv, torch.ones(2, 3), 0.1, 0.3)
    got, metrics = compute_policy_loss_vanilla(old, new, adv, torch.ones(2, 3), config=config)
    assert got.item() == pytest.approx(expected.item())
    assert metrics["actor/pg_clipfrac"] == pytest.approx(clipfrac.item())
    assert metrics["actor/pg_clipfrac_lower"] == pytest.approx(lower.item()) and lower.item() > 0
    with pytest.raises(ValueError, match="clip_ratio_c"):
        compute_policy_loss_vanilla(old, new, adv, torch.ones(2, 3), config=ActorLossConfig(clip_ratio_c=1.0))


def test_global_batch_info_reaches_agg_loss():
    # token-mean with dp_size 2 over a global 4 tokens: sum / 4 * 2.
    config = ActorLossConfig(global_batch_info={"dp_size": 2, "batch_num_tokens": 4})
    loss, _, _ = run("gpg", [[0.0, 0.0]], [[-1.0, -1.0]], [[-1.0, -3.0]], config=config)
    # gpg's per-token loss is -l A = (-1, -3), the sum -4, scaled 2 / 4: -2.
    assert loss == pytest.approx(-2.0)


def test_dppo_tv_drops_tokens_whose_probability_moved_too_far():
    # p0 = 0.5 on both tokens, A = 1. Token 1: p = 0.6, p - p0 = 0.1 <= 0.2 valid, rho = 1.2 (< c = 3):
    # loss -A * 1.2 * log 0.6 = 0.61299; token 2: p = 0.8, moved 0.3 > 0.2, invalid: 0. token-mean: 0.30650.
    loss, metrics, grad = run("dppo_tv", [[math.log(0.5)] * 2], [[math.log(0.6), math.log(0.8)]], [[1.0, 1.0]])
    assert loss == pytest.approx(-1.2 * math.log(0.6) / 2, rel=1e-5)
    # d/dl of -A sg(tau) l valid / 2 = (-1.2 / 2, 0): the ratio is a detached coefficient.
    torch.testing.assert_close(grad, torch.tensor([[-0.6, 0.0]]))
    assert metrics["actor/pg_clipfrac"] == pytest.approx(0.5)
    assert metrics["actor/pg_clipfrac_lower"] == 0.0
    assert metrics["actor/ppo_kl"] == pytest.approx(-(math.log(1.2) + math.log(1.6)) / 2, rel=1e-5)
    # The truncation c = clip_ratio_c: rho = 1.2 > c = 1.1 counts in pg_clipfrac_lower and caps the coefficient.
    config = ActorLossConfig(clip_ratio_c=1.1)
    loss, metrics, _ = run("dppo_tv", [[math.log(0.5)]], [[math.log(0.6)]], [[1.0]], config=config)
    assert loss == pytest.approx(-1.1 * math.log(0.6), rel=1e-5) and metrics["actor/pg_clipfrac_lower"] == 1.0
    # Without the attribute, dppo's truncation is 20 (not vanilla's 3).
    ns = SimpleNamespace(clip_ratio=0.2, clip_ratio_low=None, clip_ratio_high=None, global_batch_info={})
    loss, _, _ = run("dppo_tv", [[0.0]], [[math.log(5.0)]], [[-1.0]], config=ns)  # p0 = 1 -> p = 5 (a stress case)
    assert loss == pytest.approx(5.0 * math.log(5.0), rel=1e-5)


def test_dppo_kl_uses_the_binary_kl_and_keeps_moves_in_the_advantage_direction():
    # p0 = 0.5 -> p = 0.05: b = 0.5 log(0.5/0.05) + 0.5 log(0.5/0.95) = 1.15129 - 0.32093 = 0.83036 > 0.2.
    # A = -1: invalid unless p >= p0 -> dropped (loss 0). A = +1: p <= p0 makes it valid:
    # loss = -A rho l = -(0.1) log 0.05 = 0.29957.
    old, new = [[math.log(0.5)]], [[math.log(0.05)]]
    loss, metrics, _ = run("dppo_kl", old, new, [[-1.0]])
    assert loss == 0.0 and metrics["actor/pg_clipfrac"] == 1.0
    loss, metrics, _ = run("dppo_kl", old, new, [[1.0]])
    assert loss == pytest.approx(-0.1 * math.log(0.05), rel=1e-5) and metrics["actor/pg_clipfrac"] == 0.0
    # p0 = 0.5 -> p = 0.3, A = -1: b = 0.5 log(0.5/0.3) + 0.5 log(0.5/0.7) = 0.25541 - 0.16824 = 0.08717 <= 0.2.
    loss, _, _ = run("dppo_kl", old, [[math.log(0.3)]], [[-1.0]])
    assert loss == pytest.approx(0.6 * math.log(0.3), rel=1e-5)


def test_gspo_uses_the_row_mean_log_ratio_on_every_token():
    # d = (0, 0.2): s = 0.1, r = e^0.1 = 1.10517 on both tokens (inside the clip range), A = 1:
    # loss = -1.10517 (token-mean); d loss / d l_t = -r / 2 = -0.55259 (the gradient of l - sg(l) is 1).
    loss, metrics, grad = run("gspo", [[0.0, 0.0]], [[0.0, 0.2]], [[1.0, 1.0]], loss_agg_mode="token-mean")
    assert loss == pytest.approx(-math.exp(0.1), rel=1e-5)
    torch.testing.assert_close(grad, torch.full((1, 2), -math.exp(0.1) / 2))
    assert metrics == pytest.approx({"actor/pg_clipfrac": 0.0, "actor/ppo_kl": -0.1, "actor/pg_clipfrac_lower": 0.0})
    # d = (0.1, 0.3): s = 0.2, r = 1.2214 > 1.2 with A = 1: clipped to -1.2, no gradient, pg_clipfrac 1.
    loss, metrics, grad = run("gspo", [[0.0, 0.0]], [[0.1, 0.3]], [[1.0, 1.0]], loss_agg_mode="token-mean")
    assert loss == pytest.approx(-1.2) and metrics["actor/pg_clipfrac"] == 1.0 and grad.abs().sum() == 0
    # s = 30 is clamped at 10 (not 20), and above it there is no gradient: A = -1 -> loss e^10.
    loss, metrics, grad = run("gspo", [[0.0]], [[30.0]], [[-1.0]], loss_agg_mode="token-mean")
    assert loss == pytest.approx(math.exp(10.0), rel=1e-5) and grad.item() == 0
    assert metrics["actor/ppo_kl"] == pytest.approx(-30.0)  # unclamped


def test_sapo_gates_smoothly_and_always_averages_per_sequence():
    # On-policy (rho = 1): g = sigmoid(0) * 4 / tau. Row 1: A = 1, tau_pos = 1 -> g = 2, loss -2.
    # Row 2: two tokens with A = -1, tau_neg = 1.05 -> g = 2 / 1.05 = 1.90476 each, loss +1.90476 each.
    # seq-mean-token-mean (whatever loss_agg_mode says): (-2 + 1.90476) / 2 = -0.047619 (token-mean would be 0.603).
    old = [[0.0, 0.0], [0.0, 0.0]]
    loss, metrics, grad = run("sapo", old, old, [[1.0, 0.0], [-1.0, -1.0]], mask=[[1, 0], [1, 1]],
                              loss_agg_mode="token-mean")
    assert loss == pytest.approx((-2 + 2 / 1.05) / 2, rel=1e-5)
    # d g / d rho at rho = 1 is tau * 1/4 * 4 / tau = 1, so d loss / d l = -A * rho * (row weight): row 1: -1 * 1/2,
    # row 2: +1 * 1/4 per token.
    torch.testing.assert_close(grad, torch.tensor([[-0.5, 0.0], [0.25, 0.25]]))
    assert metrics == {"actor/pg_clipfrac": 0.0, "actor/ppo_kl": 0.0, "actor/pg_clipfrac_lower": 0.0}


def test_gpg_is_plain_policy_gradient_without_metrics():
    # -l A = (-(-1)(1), -(-2)(2)) = (1, 4): token-mean 2.5; d/dl = -A / 2 = (-0.5, -1).
    loss, metrics, grad = run("gpg", [[5.0, 5.0]], [[-1.0, -2.0]], [[1.0, 2.0]])
    assert loss == pytest.approx(2.5) and metrics == {}
    torch.testing.assert_close(grad, torch.tensor([[-0.5, -1.0]]))


# On-policy batch for the covariance losses: A = (3, -1, -1, -1) (mean 0), l = (0, -2, -2, -2) (mean -1.5):
# cov = (4.5, 0.5, 0.5, 0.5). Only token 0 has clip_cov_lb = 1 < cov < 5 = clip_cov_ub; 4 tokens -> k = 1 slot.
COV_ADV = [[3.0, -1.0, -1.0, -1.0]]
COV_LOGP = [[0.0, -2.0, -2.0, -2.0]]


def test_clip_cov_cuts_the_gradient_of_high_covariance_tokens():
    # Token 0's loss becomes 0; the others keep -A rho = 1: token-mean 3 / 4; gradient (0, 1/4, 1/4, 1/4).
    loss, metrics, grad = run("clip_cov", COV_LOGP, COV_LOGP, COV_ADV)
    assert loss == pytest.approx(0.75)
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.25, 0.25, 0.25]]))
    assert metrics == pytest.approx({"actor/pg_clipfrac": 0.25, "actor/ppo_kl": 0.0})
    with pytest.raises(ValueError, match="clip_cov_ratio"):
        run("clip_cov", COV_LOGP, COV_LOGP, COV_ADV, config=cfg(clip_cov_ratio=0.0))


def test_clip_cov_picks_among_candidates_with_one_randperm():
    # Two candidates (tokens 0 and 3: cov 4 each in (1, 5)), one slot: the pick is candidates[randperm(2)[0]].
    adv, logp = [[2.0, 0.0, 0.0, -2.0]], [[0.0, -1.0, -1.0, -2.0]]  # mean A 0, mean l -1: cov = (2, 0, 0, 2)
    torch.manual_seed(3)
    picked = [0, 3][torch.randperm(2)[0].item()]
    torch.manual_seed(3)
    _, _, grad = run("clip_cov", logp, logp, adv, config=cfg(clip_cov_lb=1.0, clip_cov_ub=5.0))
    assert grad[0, picked].item() == 0 and grad[0, 3 - picked].item() != 0


def test_kl_cov_penalises_the_largest_covariance_token():
    # d = (0.1, 0, 0, 0): token 0 (cov 4.5, the largest) gets -A rho + coef |d| = -3 e^0.1 + 0.5 * 0.1 = -3.26551;
    # the others -A = 1. token-mean (-3.26551 + 3) / 4 = -0.066378. ppo_kl = mmean(|d|) = 0.025.
    old = [[-0.1, -2.0, -2.0, -2.0]]
    loss, metrics, grad = run("kl_cov", old, COV_LOGP, COV_ADV, config=cfg(ppo_kl_coef=0.5))
    assert loss == pytest.approx((-3 * math.exp(0.1) + 0.05 + 3) / 4, rel=1e-5)
    assert metrics == pytest.approx({"actor/ppo_kl": 0.025})
    # d/dl_0 = (-3 e^0.1 + 0.5 sign(d)) / 4 = -0.70388
    assert grad[0, 0].item() == pytest.approx((-3 * math.exp(0.1) + 0.5) / 4, rel=1e-5)
    # ppo_kl_coef None falls back to 1.0 (verl), not the YAML's 0.1: -3 e^0.1 + 0.1.
    loss, _, _ = run("kl_cov", old, COV_LOGP, COV_ADV, config=cfg(ppo_kl_coef=None))
    assert loss == pytest.approx((-3 * math.exp(0.1) + 0.1 + 3) / 4, rel=1e-5)
    with pytest.raises(ValueError, match="kl_cov_ratio"):
        run("kl_cov", old, COV_LOGP, COV_ADV, config=cfg(kl_cov_ratio=-1.0))


def test_geo_mean_clips_in_log_space_and_averages_all_rows():
    # Row 1: A = 1, d = (0.1, 0.5) -> dc = (0.1, 0.2), m = min(d, dc) = (0.1, 0.2), ratio = exp(0.15) = 1.16183,
    # loss_row = -1.16183. Row 2 is empty (loss_row 0) but counts in the mean: pg_loss = -0.580917.
    old, new, adv = [[0.0, 0.0], [0.0, 0.0]], [[0.1, 0.5], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]]
    loss, metrics, _ = run("geo_mean", old, new, adv, mask=[[1, 1], [0, 0]], loss_agg_mode="token-sum")
    assert loss == pytest.approx(-math.exp(0.15) / 2, rel=1e-5)
    assert metrics == pytest.approx({"actor/pg_clipfrac": 0.5, "actor/ppo_kl": -0.3, "actor/pg_clipfrac_lower": 0.0})
    # IS weights (0.25, 1) enter as their geometric mean exp((log 0.25 + log 1) / 2) = 0.5.
    loss, _, _ = run("geo_mean", old, new, adv, mask=[[1, 1], [0, 0]],
                     rollout_is_weights=torch.tensor([[0.25, 1.0], [0.0, 0.0]]))
    assert loss == pytest.approx(-math.exp(0.15) / 4, rel=1e-4)
    # A = -1, d = (-0.5, 0.1): dc = (-0.2, 0.1), m = max(d, dc) = (-0.2, 0.1), ratio exp(-0.05): loss +0.951229.
    loss, metrics, _ = run("geo_mean", [[0.0, 0.0]], [[-0.5, 0.1]], [[-1.0, -1.0]])
    assert loss == pytest.approx(math.exp(-0.05), rel=1e-5) and metrics["actor/pg_clipfrac_lower"] == 0.5


def test_dro_penalises_the_squared_log_ratio():
    # l = -1, l0 = -1.2, d = 0.2, A = 2, beta = 0.5: loss = -(l A - beta/2 d^2) = -(-2 - 0.01) = 2.01;
    # d loss / d l = -(A - beta d) = -1.9. ppo_kl = -d = -0.2.
    loss, metrics, grad = run("dro", [[-1.2]], [[-1.0]], [[2.0]], config=cfg(dro_beta=0.5))
    assert loss == pytest.approx(2.01) and grad.item() == pytest.approx(-1.9)
    assert metrics == pytest.approx({"actor/ppo_kl": -0.2})
    for beta in (None, 0.0):
        with pytest.raises(ValueError, match="dro_beta"):
            run("dro", [[-1.2]], [[-1.0]], [[2.0]], config=cfg(dro_beta=beta))


def test_cispo_clips_the_weight_but_keeps_the_gradient():
    # d = 1: rho = e, clipped to 1.2; A = 1, l = 1: loss = -1.2 * 1 * 1 = -1.2, and unlike PPO the gradient is
    # -1.2 (not 0). pg_clipfrac 1.
    loss, metrics, grad = run("cispo", [[0.0]], [[1.0]], [[1.0]])
    assert loss == pytest.approx(-1.2) and grad.item() == pytest.approx(-1.2)
    assert metrics == pytest.approx({"actor/pg_clipfrac": 1.0, "actor/ppo_kl": -1.0, "actor/pg_clipfrac_lower": 0.0})


def test_bypass_mode_reinforce_uses_truncated_is_weights():
    # old_log_prob = the rollout's: 0; l = log 3 -> pi / pi_rollout = 3, truncated at 2 -> W = 2.
    # loss = -A l W = -log 3 * 2 = -2.19722; gradient -A W = -2.
    rc = RolloutCorrectionConfig(rollout_is="token", rollout_is_threshold=2.0, loss_type="reinforce")
    loss, metrics, grad = run("bypass_mode", [[0.0]], [[math.log(3.0)]], [[1.0]], config=cfg(rollout_correction=rc),
                              rollout_is_weights=torch.tensor([[100.0]]))  # ignored
    assert loss == pytest.approx(-2 * math.log(3.0), rel=1e-5) and grad.item() == pytest.approx(-2.0)
    assert metrics["actor/ppo_kl"] == pytest.approx(-math.log(3.0), rel=1e-5)
    assert metrics["rollout_corr/rollout_is_mean"] == pytest.approx(2.0)
    assert metrics["rollout_corr/training_ppl"] == pytest.approx(1 / 3, rel=1e-5)  # the current policy's ppl


def test_bypass_mode_ppo_clip_is_vanilla_on_the_rejection_mask():
    # Log-ratios (0.1, 1.0); token_k1 "0.5_2" keeps -x in [log 0.5, log 2], so token 2 (x = 1 > log 2) is rejected.
    # The loss is vanilla on token 1 alone, with no IS weights: -A e^0.1 = -1.10517.
    rc = {"rollout_is": "token", "rollout_rs": "token_k1", "rollout_rs_threshold": "0.5_2"}
    loss, metrics, grad = run("bypass_mode", [[0.0, 0.0]], [[0.1, 1.0]], [[1.0, 1.0]],
                              config=cfg(rollout_correction=RolloutCorrectionConfig(**rc)))
    assert loss == pytest.approx(-math.exp(0.1), rel=1e-5)
    torch.testing.assert_close(grad, torch.tensor([[-math.exp(0.1), 0.0]]))
    assert metrics["rollout_corr/rollout_rs_masked_fraction"] == pytest.approx(0.5)
    assert {"actor/pg_clipfrac", "actor/ppo_kl", "rollout_corr/rollout_is_mean", "rollout_corr/kl"} <= set(metrics)


def test_bypass_mode_raises_without_its_config_or_with_an_unknown_loss_type():
    with pytest.raises(ValueError, match="rollout_correction"):
        run("bypass_mode", [[0.0]], [[0.0]], [[1.0]])
    with pytest.raises(ValueError, match="loss_type"):
        run("bypass_mode", [[0.0]], [[0.0]], [[1.0]], config=cfg(rollout_correction=RolloutCorrectionConfig(
            loss_type="ppo")))


def test_compute_actor_loss_passes_the_policy_loss_keys():
    old, new, adv, mask = torch.tensor([[-1.2]]), torch.tensor([[-1.0]]), torch.tensor([[2.0]]), torch.ones(1, 1)
    loss, terms = compute_actor_loss(old, new, adv, mask, loss_mode="dro", dro_beta=0.5)
    assert loss.item() == pytest.approx(2.01) and terms["actor/ppo_kl"] == pytest.approx(-0.2)
    # rollout_correction as a mapping (the YAML section) and IS weights from the batch.
    _, terms = compute_actor_loss(old, new, adv, mask, loss_mode="bypass_mode",
                                  rollout_correction={"rollout_is": "token", "loss_type": "reinforce"})
    assert "rollout_corr/rollout_is_mean" in terms
    loss, _ = compute_actor_loss(torch.zeros(1, 1), torch.zeros(1, 1), adv, mask, rollout_is_weights=torch.full((1, 1),
                                                                                                              0.5))
    assert loss.item() == pytest.approx(-1.0)  # -A * 1 * 0.5
    with pytest.raises(TypeError, match="rollout_isx"):
        compute_actor_loss(old, new, adv, mask, loss_mode="bypass_mode", rollout_correction={"rollout_isx": "token"})
