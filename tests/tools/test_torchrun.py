"""The worker classes under torchrun, with Ray and Hydra made unimportable: what a GPU box without them runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from helpers import REPO


@pytest.mark.slow
def test_two_ranks_train_grpo_under_torchrun_without_ray_or_hydra(tmp_path):
    blocked = tmp_path / "blocked"
    for module in ("ray", "hydra"):
        (blocked / module).mkdir(parents=True)
        (blocked / module / "__init__.py").write_text(f"raise ImportError('{module} is not installed here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), str(REPO)]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "rl_trainer.tools.torchrun", "--steps", "2", "--prompts-per-rank", "2", "--prompt-length", "12",
         "data.max_response_length=8", "actor_rollout_ref.rollout.n=4", "actor_rollout_ref.actor.use_kl_loss=true",
         "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
         "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
         "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = re.findall(r"^step (\d): .* tokens (\d+) .* grad_norm (\S+)$", proc.stdout, flags=re.M)
    assert [s[0] for s in steps] == ["1", "2"], proc.stdout
    for _, tokens, grad_norm in steps:
        assert int(tokens) > 2 * 2 * 4 * 6  # 2 ranks x 2 prompts x n=4, each at least half of 12 prompt tokens
        assert 0 < float(grad_norm) < float("inf")  # an update happened (the parity reward splits GRPO groups)
