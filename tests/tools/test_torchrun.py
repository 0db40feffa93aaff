"""The training loop under torchrun, with Ray and Hydra made unimportable: what a GPU box without them runs."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

import pytest

from helpers import REPO
from rl_trainer.errors import UserError

SMALL = ["--steps", "2", "--prompts-per-rank", "2", "--prompt-length", "12", "data.max_response_length=8",
         "actor_rollout_ref.rollout.n=4", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
         "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
         "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4"]


def torchrun_without_ray_or_hydra(tmp_path, args: list[str], ranks: int = 2) -> subprocess.CompletedProcess:
    blocked = tmp_path / "blocked"
    for module in ("ray", "hydra"):
        (blocked / module).mkdir(parents=True, exist_ok=True)
        (blocked / module / "__init__.py").write_text(f"raise ImportError('{module} is not installed here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), str(REPO)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
         "-m", "rl_trainer.tools.torchrun", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_ranks_train_grpo_under_torchrun_without_ray_or_hydra(tmp_path):
    proc = torchrun_without_ray_or_hydra(tmp_path, [*SMALL, "actor_rollout_ref.actor.use_kl_loss=true"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = re.findall(r"^step (\d): .* tokens (\d+) .* grad_norm (\S+)$", proc.stdout, flags=re.M)
    assert [s[0] for s in steps] == ["1", "2"], proc.stdout
    for _, tokens, grad_norm in steps:
        assert int(tokens) > 2 * 2 * 4 * 6  # 2 ranks x 2 prompts x n=4, each at least half of 12 prompt tokens
        assert 0 < float(grad_norm) < float("inf")  # an update happened (the parity reward splits GRPO groups)


@pytest.mark.slow
def test_torchrun_runs_the_clis_train_step_with_critic_kl_in_reward_and_validation(tmp_path):
    """The loop is PPOTrainer.train_step: a critic with GAE, the KL penalty in the reward and validation every
    step work here as under Ray (the tool's own step had none of them)."""
    proc = torchrun_without_ray_or_hydra(tmp_path, [
        *SMALL, "algorithm.adv_estimator=gae", "algorithm.use_kl_in_reward=true", "trainer.test_freq=1",
        "critic.ppo_micro_batch_size_per_gpu=4"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "critic" in proc.stdout.splitlines()[0], proc.stdout  # the start line names the critic group
    steps = re.findall(r"^step (\d): .* values \S+s .* update_critic \S+s .* testing \S+s .* val reward (\S+)  "
                       r"kl_in_reward (\S+)  vf_loss (\S+)  critic_grad_norm (\S+)  pg_loss \S+  grad_norm (\S+)$",
                       proc.stdout, flags=re.M)
    assert [s[0] for s in steps] == ["1", "2"], proc.stdout
    # At step 1 the actor still equals the reference, so the KL estimate (k1: old - ref log-prob) is 0.
    assert abs(float(steps[0][2])) < 1e-3, proc.stdout
    for _, val_reward, kl, vf_loss, critic_grad_norm, grad_norm in steps:
        assert 0.0 <= float(val_reward) <= 1.0  # the parity rule scores 0 or 1 per response
        assert math.isfinite(float(kl))
        assert 0 < float(vf_loss) < float("inf") and 0 < float(critic_grad_norm) < float("inf")
        assert 0 < float(grad_norm) < float("inf")


def test_torchrun_refuses_what_it_cannot_honour_in_one_line():
    from rl_trainer.tools.torchrun import check_tool_config, load_config

    with pytest.raises(UserError, match=r"trainer\.save_freq=2: the torchrun driver does not save checkpoints"):
        check_tool_config(load_config(["trainer.save_freq=2"]))
    with pytest.raises(UserError, match=r"trainer\.resume_mode=resume_path"):
        check_tool_config(load_config(["trainer.save_freq=-1", "trainer.resume_mode=resume_path",
                                       "trainer.resume_from_path=/nowhere/global_step_1"]))
    with pytest.raises(UserError, match=r"reward_model\.enable=true: the torchrun driver scores its random prompts"):
        check_tool_config(load_config(["trainer.save_freq=-1", "reward_model.enable=true",
                                       "reward_model.model.path=/nowhere/rm"]))
