"""The trainer end to end through its CLI: real Ray, two gloo FSDP workers, real parquet, tiny local models; the
guide's PPO and GRPO-variant lines train in this process (in_process_run)."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import in_process_run, read_steps, run_cli, small_run_overrides

pytestmark = pytest.mark.slow

ALWAYS = [
    *(f"critic/{group}/{stat}" for group in ("score", "rewards", "advantages", "returns") for stat in ("mean", "max", "min")),
    "actor/pg_loss", "actor/pg_clipfrac", "actor/pg_clipfrac_lower", "actor/ppo_kl", "actor/entropy",
    "actor/grad_norm", "actor/lr",
    *(f"{group}/{stat}" for group in ("response_length", "prompt_length") for stat in ("mean", "max", "min", "clip_ratio")),
    *(f"timing_s/{stage}" for stage in ("gen", "reward", "adv", "update_actor", "step")),
    "perf/total_num_tokens", "perf/throughput", "training/global_step", "training/epoch",
]
CRITIC = [*(f"critic/values/{stat}" for stat in ("mean", "max", "min")), "critic/vf_loss", "critic/vf_clipfrac",
          "timing_s/values", "timing_s/update_critic"]


def check_metrics(steps: dict[int, dict], required: list[str], last_step_only: tuple[str, ...] = ()) -> None:
    assert sorted(k for k in steps if k > 0) == [1, 2]
    for step in (1, 2):
        keys = required + list(last_step_only) if step == 2 else required
        missing = [k for k in keys if k not in steps[step]]
        assert not missing, f"step {step} lacks {missing}"
        bad = {k: steps[step][k] for k in keys if not math.isfinite(steps[step][k])}
        assert not bad, f"step {step} has non-finite {bad}"


def assert_ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def test_grpo_with_kl_loss_trains_validates_and_saves_a_loadable_hf_model(tiny_models, gsm8k_dir, length_reward, tmp_path,
                                                                             shared_ray):
    proc = run_cli(
        small_run_overrides(tiny_models["qwen2"], gsm8k_dir, tmp_path, length_reward)
        + ["actor_rollout_ref.actor.use_kl_loss=true", "trainer.test_freq=2", "trainer.save_freq=2",
           "trainer.log_val_generations=2"],
        cwd=tmp_path, env=shared_ray,
    )
    assert_ok(proc)
    assert proc.stdout.count("[validation] score=") == 2
    steps = read_steps(tmp_path / "run")
    check_metrics(steps, ALWAYS + ["actor/kl_loss", "timing_s/ref"],
                  last_step_only=("timing_s/testing", "timing_s/save_checkpoint", "val-core/openai/gsm8k/reward/mean@1"))
    assert steps[1]["critic/advantages/max"] > 0  # the custom reward gives GRPO something to learn from
    assert "critic/vf_loss" not in steps[1]  # no critic for GRPO
    assert "timing_s/old_log_prob" not in steps[1]  # on-policy: the update's forward gives old_log_prob (the default)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_dir = tmp_path / "ckpt" / "global_step_2" / "actor" / "huggingface"
    trained = AutoModelForCausalLM.from_pretrained(hf_dir)
    initial = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"])
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, dict(initial.named_parameters())[n])]
    assert len(changed) == len(list(initial.parameters())), "every actor parameter should have moved"
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "1 + 1?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    out = trained.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"


def test_ppo_with_critic_on_a_llama_model(tiny_models, gsm8k_dir, length_reward, tmp_path):
    # The guide's PPO line: GAE, a critic model, two PPO epochs for both.
    model = tiny_models["llama"]
    steps = in_process_run(
        small_run_overrides(model, gsm8k_dir, tmp_path, length_reward)
        + ["algorithm.adv_estimator=gae", f"critic.model.path={model}", "actor_rollout_ref.actor.ppo_epochs=2",
           "critic.ppo_epochs=2", "critic.optim.lr=1e-3", "actor_rollout_ref.model.enable_gradient_checkpointing=true"],
        tmp_path / "run",
    )
    check_metrics(steps, ALWAYS + CRITIC + ["timing_s/old_log_prob"])  # two epochs: the pass runs
    assert steps[2]["critic/vf_loss"] > 0


# The guide's GRPO variants, one run for all three (each only adds keys; none overrides another's): KL in the
# reward, Dr. GRPO's loss aggregation without the std division, and two responses per prompt.
GUIDE_LINES = {
    "kl-in-reward": ["algorithm.use_kl_in_reward=true", "algorithm.kl_ctrl.kl_coef=0.001"],
    "dr-grpo": ["actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-sum-norm", "algorithm.norm_adv_by_std_in_grpo=false"],
    "n2": ["actor_rollout_ref.rollout.n=2", "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
           "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4"],
}


def test_guide_command_lines(tiny_models, gsm8k_dir, length_reward, tmp_path):
    extra = [o for line in GUIDE_LINES.values() for o in line]
    keys = [o.split("=")[0] for o in extra]
    assert len(set(keys)) == len(keys)  # the lines are independent: no key set twice
    steps = in_process_run(small_run_overrides(tiny_models["qwen2"], gsm8k_dir, tmp_path, length_reward) + extra,
                           tmp_path / "run")
    check_metrics(steps, ALWAYS + ["actor/reward_kl_penalty", "actor/pg_loss", "timing_s/old_log_prob"])  # KL in reward


def test_default_run_with_no_arguments(tmp_path):
    """The quick start: GRPO on the bundled GSM8K with the built-in model, validation, a checkpoint, exit 0.

    It starts its own local Ray, as a user's first run does (the other runs here join the session's shared head)."""
    proc = run_cli([f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, timeout=600)
    assert_ok(proc)
    assert "run directory:" in proc.stdout and "checkpoints:" in proc.stdout
    steps = read_steps(tmp_path / "run")
    assert sorted(steps) == [0, 1, 2, 3, 4]  # validation before training is logged at step 0
    assert "val-core/openai/gsm8k/reward/mean@1" in steps[0] and "val-core/openai/gsm8k/reward/mean@1" in steps[4]
    check_metrics({k: steps[k] for k in (1, 2)}, ALWAYS)
    ckpt = tmp_path / "checkpoints" / "rl_trainer" / "gsm8k_grpo"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
    assert (ckpt / "global_step_4" / "actor" / "huggingface" / "config.json").exists()
    assert (tmp_path / "run" / ".hydra" / "config.yaml").exists()
