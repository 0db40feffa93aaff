"""Plain helpers for the CLI tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def small_run_overrides(model_dir, data_dir, tmp_path, reward=None) -> list[str]:
    """A two-worker run small enough for CI: 4 prompts x n=4, 16-token responses, two steps."""
    overrides = [
        f"actor_rollout_ref.model.path={model_dir}",
        f"data.train_files={data_dir}/train.parquet",
        f"data.val_files={data_dir}/test.parquet",
        "data.train_batch_size=4",
        "data.max_prompt_length=192",
        "data.max_response_length=16",
        "data.val_max_samples=8",
        "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        "trainer.n_gpus_per_node=2",
        "trainer.total_training_steps=2",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        f"trainer.default_local_dir={tmp_path}/ckpt",
        f"hydra.run.dir={tmp_path}/run",
    ]
    if reward is not None:
        overrides.append(f"custom_reward_function.path={reward}")
    return overrides


def run_cli(overrides: list[str], cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m rl_trainer.main OVERRIDES` as a user runs it, in its own session.

    After it exits, `proc.leftover` lists the processes it left in its session (Ray daemons that outlive a killed
    driver); they are then killed, as a job scheduler would, so one test's debris never reaches the next.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "rl_trainer.main", *overrides], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True, env={**os.environ, **(env or {})},
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    result.leftover = session_processes(proc.pid)
    if result.leftover:
        os.killpg(proc.pid, signal.SIGKILL)
    return result


def session_processes(sid: int) -> list[str]:
    """Live processes (not zombies) of session `sid`."""
    out = subprocess.run(["ps", "-eo", "sid=,stat=,args="], capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines()
            if line.split(None, 1)[0] == str(sid) and not line.split()[1].startswith("Z")]


def ray_daemons() -> list[str]:
    """Ray's per-machine daemons, from any session (there should be none between tests)."""
    out = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()
            if not line.split()[0].startswith("Z") and ("raylet" in line or "gcs_server" in line)]


def read_steps(run_dir: Path) -> dict[int, dict]:
    """Per-step metrics of a run's metrics.jsonl, merged by step."""
    steps: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        steps.setdefault(record["step"], {}).update(record)
    return steps


def worker_config(model_dir, workers: int, micro, extra=()) -> dict:
    """A resolved config for worker tests: 2 prompts x n=4, 6-token responses, KL loss, `workers` ranks."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from rl_trainer.config import validate_config

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose("ppo_trainer", overrides=[
            f"actor_rollout_ref.model.path={model_dir}", "data.train_batch_size=2", "actor_rollout_ref.rollout.n=4",
            "actor_rollout_ref.actor.ppo_mini_batch_size=2", f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}",
            f"critic.ppo_micro_batch_size_per_gpu={micro}", "actor_rollout_ref.actor.use_kl_loss=true",
            "actor_rollout_ref.actor.optim.lr=1e-4", "critic.optim.lr=1e-4", f"trainer.n_gpus_per_node={workers}",
            "data.max_response_length=6", "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
            "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4", *extra,
        ])
    validate_config(cfg)
    return OmegaConf.to_container(cfg, resolve=True)
