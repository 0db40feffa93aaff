"""The in-process pieces that wire verl's wave-2 algorithms into training (no Ray): sum_pi_squared from the actor's
logits, what the driver hands each estimator (verl's compute_advantage), decoupled rollout correction entering the
batch before the advantages, and the config's derived switches. Two-step training runs of every loss and estimator
are tests/test_algorithms_train.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from helpers import loop_config
from rl_trainer.algos import compute_grpo_vectorized_outcome_advantage, sum_pi_squared_from_logits
from rl_trainer.batch import Batch
from rl_trainer.errors import UserError
from rl_trainer.trainer import _verl_estimator_inputs
from rl_trainer.workers.actor import response_forward
from test_trainer_loop import phases
from workers.test_optimisations import grouped_batch


def test_sum_pi_squared_from_logits_by_hand():
    # logits (0, ln 3): p = (1/4, 3/4), sum p^2 = 1/16 + 9/16 = 0.625; uniform over 4: 4 * (1/4)^2 = 0.25;
    # shifting the logits changes nothing.
    logits = torch.tensor([[0.0, math.log(3.0)], [5.0, 5.0 + math.log(3.0)]])
    torch.testing.assert_close(sum_pi_squared_from_logits(logits), torch.tensor([0.625, 0.625]))
    torch.testing.assert_close(sum_pi_squared_from_logits(torch.zeros(3, 4)), torch.full((3,), 0.25))


def test_the_actor_returns_sum_pi_squared_from_its_own_logits(tiny_models):
    """response_forward's sum_pi_squared is sum softmax(logits / T)^2 of a plain full forward, at every valid
    response position, next to the same pass's log-probs."""
    policy = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"])
    batch = grouped_batch(vocab=policy.config.vocab_size)
    out = response_forward(policy, batch, torch.device("cpu"), 0.7, share_prompts=True, with_sum_pi_squared=True)
    with torch.no_grad():
        logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        position_ids=batch["position_ids"]).logits[:, 7:-1] / 0.7  # the logits scoring responses
    probs = torch.softmax(logits.float(), dim=-1)
    mask = batch["response_mask"].bool()
    torch.testing.assert_close(out["sum_pi_squared"][mask], (probs ** 2).sum(-1)[mask], rtol=1e-5, atol=1e-6)
    log_probs = probs.gather(-1, batch["responses"][..., None]).squeeze(-1).log()
    torch.testing.assert_close(out["log_probs"][mask], log_probs[mask], rtol=1e-4, atol=1e-5)
    assert not out["sum_pi_squared"].requires_grad  # an input of the advantages, never of the loss's graph


def algorithm(**keys) -> OmegaConf:
    base = {"adv_estimator": "grpo", "norm_adv_by_std_in_grpo": False, "gdpo_reward_keys": None,
            "gdpo_reward_weights": None}
    return OmegaConf.create({**base, **keys})


def scored_batch() -> Batch:
    batch = grouped_batch(vocab=100, n=2)
    batch["uid"] = ["a", "a", "b", "b"]
    for key in ("old_log_probs", "sum_pi_squared"):
        batch[key] = torch.rand(batch["responses"].shape)
    return batch


@pytest.mark.parametrize("estimator, gets_flag", [("grpo", True), ("grpo_passk", True), ("grpo_vectorized", False),
                                                  ("gdpo", False), ("rloo", False)])
def test_norm_adv_by_std_reaches_the_estimators_verl_passes_it_to(estimator, gets_flag):
    # verl's compute_advantage passes norm_adv_by_std_in_grpo to GRPO (and grpo_passk reads it from its config);
    # grpo_vectorized and gdpo keep their default (std normalisation).
    algo = algorithm(adv_estimator=estimator, gdpo_reward_keys=["acc"])
    inputs = _verl_estimator_inputs(algo, scored_batch(), {"acc": [1.0, 0.0, 0.0, 0.0]}, {})
    assert ("norm_adv_by_std_in_grpo" in inputs) == gets_flag and inputs["config"] is algo


def test_grpo_vectorized_keeps_std_normalisation_when_the_flag_is_off():
    from rl_trainer.algos import compute_advantage

    batch = scored_batch()
    scores = torch.zeros(batch["responses"].shape)
    scores[torch.arange(4), batch["response_mask"].sum(-1) - 1] = torch.tensor([1.0, 0.0, 3.0, 1.0])
    algo = algorithm(adv_estimator="grpo_vectorized")
    advantages, _ = compute_advantage("grpo_vectorized", token_level_rewards=scores,
                                      response_mask=batch["response_mask"], index=batch["uid"],
                                      **_verl_estimator_inputs(algo, batch, {}, {}))
    expected, _ = compute_grpo_vectorized_outcome_advantage(scores, batch["response_mask"], batch["uid"])
    torch.testing.assert_close(advantages, expected)
    # Group a: scores 1, 0 -> mean 0.5, unbiased std 0.7071: +-0.7071 (not +-0.5, the Dr.GRPO value).
    assert abs(float(advantages[0, 0]) - 0.5 / math.sqrt(0.5)) < 1e-4


def test_gdpo_gets_the_reward_components_and_logs_them():
    batch, metrics = scored_batch(), {}
    extra = {"acc": [1.0, 0.0, 1.0, 1.0], "fmt": [1, 1, 0, 1]}
    inputs = _verl_estimator_inputs(algorithm(adv_estimator="gdpo", gdpo_reward_keys=["acc", "fmt"]), batch, extra,
                                    metrics)
    assert list(inputs["non_tensor_batch"]["acc"]) == extra["acc"] and "uid" in inputs["non_tensor_batch"]
    assert inputs["batch"]["prompts"] is batch["prompts"]
    # acc: mean 0.75, population std sqrt(0.75 * 0.25) = 0.433 (np.std, as verl logs it).
    assert metrics["gdpo/acc/mean"] == 0.75 and abs(metrics["gdpo/acc/std"] - 0.4330127) < 1e-6
    assert (metrics["gdpo/fmt/min"], metrics["gdpo/fmt/max"]) == (0.0, 1.0)
    with pytest.raises(UserError, match="algorithm.gdpo_reward_keys names 'length', which the reward function does "
                                        r"not return \(its keys besides score: \['acc', 'fmt'\]\)"):
        _verl_estimator_inputs(algorithm(adv_estimator="gdpo", gdpo_reward_keys=["length"]), batch, extra, {})


def test_token_baselines_get_the_actor_outputs_and_the_is_weights():
    batch = scored_batch()
    batch["rollout_is_weights"] = torch.full(batch["responses"].shape, 0.5)
    inputs = _verl_estimator_inputs(algorithm(adv_estimator="optimal_token_baseline"), batch, {}, {})
    for key in ("old_log_probs", "sum_pi_squared", "rollout_is_weights"):
        assert inputs[key] is batch[key]


def test_correction_switches_are_derived_once(tiny_models, gsm8k_dir, tmp_path):
    # Correction on: the rollout's log-probs are turned on for the HF engine; the token baselines get sum_pi_squared.
    cfg = loop_config(tiny_models["qwen2"], gsm8k_dir, tmp_path, ["algorithm.rollout_correction.rollout_is=sequence",
                                                                 "algorithm.adv_estimator=optimal_token_baseline"])
    assert cfg.actor_rollout_ref.rollout.calculate_log_probs is True
    assert cfg.actor_rollout_ref.actor.calculate_sum_pi_squared is True
    cfg = loop_config(tiny_models["qwen2"], gsm8k_dir, tmp_path)
    assert cfg.actor_rollout_ref.rollout.calculate_log_probs is None
    assert cfg.actor_rollout_ref.actor.calculate_sum_pi_squared is False
    with pytest.raises(UserError, match="bypass_mode=true replaces the policy loss by bypass_mode"):
        loop_config(tiny_models["qwen2"], gsm8k_dir, tmp_path, ["algorithm.rollout_correction.bypass_mode=true",
                                                               "actor_rollout_ref.actor.policy_loss.loss_mode=gspo"])
    with pytest.raises(UserError, match="do_sample=false"):
        loop_config(tiny_models["qwen2"], gsm8k_dir, tmp_path, ["algorithm.rollout_correction.rollout_rs=token_k2",
                                                               "algorithm.rollout_correction.rollout_rs_threshold=2",
                                                               "actor_rollout_ref.rollout.do_sample=false"])


def test_one_step_in_bypass_and_decoupled_mode_in_process(tiny_models, gsm8k_dir, length_reward, tmp_path):
    """The driver loop around a real worker (tests/test_trainer_loop.py's harness), the rollout sampling top-3 (so
    the IS weights, the top-3 mass, are below 1): bypass mode asks for no old-log-prob pass and logs rollout_corr/*
    from the update; decoupled mode computes them in the driver after the old-log-prob pass. (The rejection
    bounds here keep every token: the tiny Qwen2's top-3 mass is far from the digit model's, see the CLI test.)"""
    from helpers import local_trainer

    rejection = ["actor_rollout_ref.rollout.top_k=3", "algorithm.rollout_correction.rollout_is=token",
                 "algorithm.rollout_correction.rollout_rs=token_k1",
                 "algorithm.rollout_correction.rollout_rs_threshold='0.001_1000'"]
    for mode in ("bypass", "decoupled"):
        extra = rejection + (["algorithm.rollout_correction.bypass_mode=true"] if mode == "bypass" else [])
        cfg = loop_config(tiny_models["qwen2"], gsm8k_dir, tmp_path / mode, extra, reward=length_reward)
        calls: list = []
        with local_trainer(cfg, tmp_path / mode / "run", calls) as trainer:
            trainer.global_step = 1
            metrics = trainer.train_step(next(iter(trainer.train_loader)), epoch=0)
        expected = ["generate_sequences", "update_actor"]
        assert phases(calls) == (expected if mode == "bypass" else expected[:1] + ["compute_log_prob"] + expected[1:])
        assert 0 < metrics["rollout_corr/rollout_is_mean"] < 1 and math.isfinite(metrics["actor/pg_loss"])
        assert ("timing_s/old_log_prob" in metrics) == (mode == "decoupled")
