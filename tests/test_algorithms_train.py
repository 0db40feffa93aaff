"""verl's wave-2 algorithms train, each through the CLI's own config and input stages and the real trainer and worker
(digit-shift, two steps each, one gloo rank in this process: helpers.cli_config + helpers.local_trainer): every
policy loss, rollout correction in verl's decoupled and bypass modes, the optimal token baselines with the actor's
sum_pi_squared, and gdpo with per-key rewards. These tests are about configuration, so they run in one process
(~2 s a run instead of a CLI start-up with Ray); Hydra's multirun through the CLI is test_sweep.py's. The math itself
is unit-tested in tests/algos/.

The rollout samples with top_k=3, so the rollout's log-prob of a sampled token is that of the renormalised top-3
distribution while the actor scores the full softmax (verl's vLLM rollout in its processed-logprobs mode differs
the same way): pi_train / pi_rollout = p / (p restricted to the top 3) < 1 on every token, so the IS weights are
visibly below 1 and token_k1 rejection bites.
"""

from __future__ import annotations

import math

import pytest
from helpers import cli_config, local_trainer, read_steps

LOSSES = ("vanilla", "dppo_tv", "dppo_kl", "gspo", "sapo", "gpg", "clip_cov", "kl_cov", "geo_mean", "dro", "cispo")
# Each loss's own metrics (the contract's keys): seeing exactly these shows the chosen loss is the one that ran.
PPO_METRICS = {"actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"}
LOSS_METRICS = {name: PPO_METRICS for name in LOSSES} | {
    "gpg": set(), "kl_cov": {"actor/ppo_kl"}, "dro": {"actor/ppo_kl"}, "clip_cov": {"actor/pg_clipfrac", "actor/ppo_kl"}}
MISMATCH = [
    "actor_rollout_ref.rollout.top_k=3",
    "algorithm.rollout_correction.rollout_is=token",
    "algorithm.rollout_correction.rollout_is_threshold=2.0",
    "algorithm.rollout_correction.rollout_rs=token_k1",
    # k1 = -log(pi_train / pi_rollout) = -log(top-3 mass) is about 0.9-1.15 here: keep k1 in [log 0.5, log 2.7].
    "algorithm.rollout_correction.rollout_rs_threshold=0.5_2.7",
]


def train_two_steps(tmp_path, name: str, *extra: str) -> dict[int, dict]:
    """The per-step metrics of `python -m rl_trainer.main --config-name digit_shift ... EXTRA`, trained in this
    process: two steps of digit-shift, each step two mini-batches (so the policy moves between them and the losses'
    ratios differ from 1), one worker, no validation, no checkpoints."""
    cfg = cli_config(["trainer.total_training_steps=2", "trainer.val_before_train=false", "trainer.test_freq=-1",
                      "trainer.save_freq=-1", "trainer.resume_mode=disable", "trainer.n_gpus_per_node=1",
                      "actor_rollout_ref.actor.ppo_mini_batch_size=8", f"trainer.default_local_dir={tmp_path / 'ckpt' / name}",
                      *extra], config_name="digit_shift")
    with local_trainer(cfg, tmp_path / name) as trainer:
        trainer.fit()
    steps = read_steps(tmp_path / name)
    assert max(steps) == 2, (name, sorted(steps))
    return steps


def assert_trained(steps: dict[int, dict], what: str) -> None:
    """Both updates applied with a finite loss, and the policy got a gradient. (Not necessarily at every step: most
    groups of a random model score all 0, and a step whose few positive-advantage tokens are rejected or clipped
    has none.)"""
    for step in (1, 2):
        assert steps[step]["actor/skipped_steps"] == 0 and math.isfinite(steps[step]["actor/pg_loss"]), (what, step)
    assert max(steps[step]["actor/grad_norm"] for step in (1, 2)) > 0, what


def assert_weights_below_one(steps: dict[int, dict], what: str, bypass: bool = False) -> None:
    """Every token's weight is p / p_top3 = the top-3 mass < 1 (TIS at 2.0 does not bind), and token_k1 rejects some
    tokens, not all. In bypass mode the weights are the current policy's against the rollout's, measured in each
    micro-batch of the update: after the first mini-batch's step the policy has moved, so a weight may pass 1."""
    for m in steps.values():
        assert 0 < m["rollout_corr/rollout_is_mean"] < 0.9, (what, m["rollout_corr/rollout_is_mean"])
        assert m["rollout_corr/rollout_is_max"] < (1.1 if bypass else 1), (what, m["rollout_corr/rollout_is_max"])
        assert m["rollout_corr/kl"] > 0 and m["rollout_corr/training_ppl"] > m["rollout_corr/rollout_ppl"], what
        assert m["rollout_corr/rollout_rs_masked_fraction"] < 1, what
    # Some weight falls below 1 / 2.0 (the low fraction is live) and token_k1 masks some tokens, in some step: after
    # the first update a sharper policy can put all the top-3 masses above 0.5 and every k1 inside the band.
    for metric in ("rollout_corr/rollout_is_ratio_fraction_low", "rollout_corr/rollout_rs_masked_fraction"):
        assert max(m[metric] for m in steps.values()) > 0, (what, metric)


@pytest.mark.slow
def test_every_policy_loss_trains_with_decoupled_rollout_correction(tmp_path):
    key = "actor_rollout_ref.actor.policy_loss.loss_mode"
    grad_norms = set()
    for loss in LOSSES:
        steps = train_two_steps(tmp_path, loss, f"{key}={loss}", "actor_rollout_ref.actor.policy_loss.dro_beta=0.1",
                                *MISMATCH)
        assert_trained(steps, loss)
        last = steps[2]
        assert {k for k in PPO_METRICS if k in last} == LOSS_METRICS[loss], (loss, sorted(last))
        assert_weights_below_one(steps, loss)
        grad_norms.add(round(last["actor/grad_norm"], 6))
    # The losses are different objectives off-policy (the second mini-batch): most give different gradients.
    assert len(grad_norms) >= 6, grad_norms


@pytest.mark.slow
def test_token_baselines_gdpo_and_bypass_mode_train(tmp_path):
    reward = tmp_path / "two_part_reward.py"
    reward.write_text(
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):\n"
        "    correct = float(solution_str.strip() == str(ground_truth).strip())\n"
        "    digit = float(solution_str.strip().isdigit())\n"
        "    return {'score': correct, 'correct': correct, 'digit': digit}\n")
    for estimator in ("optimal_token_baseline", "tir_optimal_token_baseline", "gdpo"):
        steps = train_two_steps(tmp_path, estimator, f"algorithm.adv_estimator={estimator}",
                                f"custom_reward_function.path={reward}", "algorithm.gdpo_reward_keys=[correct,digit]",
                                "algorithm.gdpo_reward_weights=[1.0,0.5]", *MISMATCH)
        assert_trained(steps, estimator)
        assert_weights_below_one(steps, estimator)
        assert steps[2]["critic/advantages/max"] > 0 > steps[2]["critic/advantages/min"], estimator
    gdpo = steps[2]
    assert 0 <= gdpo["gdpo/correct/mean"] <= gdpo["gdpo/digit/mean"] <= 1, gdpo
    assert gdpo["gdpo/digit/min"] in (0, 1) and gdpo["gdpo/correct/std"] >= 0

    # Bypass mode: no old-log-prob pass (old_log_probs = the rollout's), the loss applies IS / RS against the
    # current policy, and its rollout_corr/* metrics come from the update.
    for loss_type in ("ppo_clip", "reinforce"):
        steps = train_two_steps(tmp_path, f"bypass-{loss_type}", f"algorithm.rollout_correction.loss_type={loss_type}",
                                "algorithm.rollout_correction.bypass_mode=true", *MISMATCH)
        assert_trained(steps, loss_type)
        assert "timing_s/old_log_prob" not in steps[2], loss_type
        assert_weights_below_one(steps, loss_type, bypass=True)
        # ppo_clip: the PPO ratio is pi / pi_rollout = the top-3 mass, about 0.4 here, below 1 - clip_ratio: every
        # kept token of negative advantage is clipped.
        if loss_type == "ppo_clip":
            assert all(steps[step]["actor/pg_clipfrac"] > 0 for step in (1, 2)), loss_type
