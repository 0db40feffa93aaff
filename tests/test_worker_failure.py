"""A worker killed mid-run: the driver stops within seconds, names the group, rank and last checkpoint, and
leaves nothing running; the same command then resumes from that checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import ray_daemons, read_steps, run_cli, session_pids, session_processes, small_run_overrides, wait_gone

pytestmark = pytest.mark.slow


def worker_pids(name: str, sid: int) -> list[int]:
    """Pids of the Ray actors called `name` in session `sid` (the driver's: its Ray's raylet starts them there)."""
    out = subprocess.run(["pgrep", "-s", str(sid), "-f", f"ray::{name}"], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def test_killed_worker_stops_the_driver_and_the_run_resumes(tiny_models, gsm8k_dir, length_reward, tmp_path, own_ray):
    overrides = small_run_overrides(tiny_models["qwen2"], gsm8k_dir, tmp_path, length_reward) + [
        "trainer.total_training_steps=50", "trainer.save_freq=1",
    ]
    driver = subprocess.Popen([sys.executable, "-m", "rl_trainer.main", *overrides], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in driver.stdout:  # wait until step 1 (and its checkpoint) is done
            if line.startswith("step:1 "):
                break
        victims = worker_pids("ActorRolloutRefWorker", driver.pid)
        assert len(victims) == 2, victims
        os.kill(victims[-1], signal.SIGKILL)
        killed_at = time.monotonic()
        stdout, stderr = driver.communicate(timeout=120)
        stopped_after = time.monotonic() - killed_at
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 1, stderr[-3000:]
    assert stopped_after < 30, f"the driver needed {stopped_after:.0f}s to notice"
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: worker group 'actor_rollout_ref' rank "), last
    assert "last good checkpoint: " in last and "global_step_" in last
    # Ray's daemons and the surviving worker exit after the driver: wait for them (at most 30 s), then check.
    wait_gone(session_pids(driver.pid) + worker_pids("ActorRolloutRefWorker", driver.pid), timeout=30)
    assert not session_processes(driver.pid), session_processes(driver.pid)
    assert not worker_pids("ActorRolloutRefWorker", driver.pid) and not ray_daemons()

    # Rerunning the same command resumes from the last good checkpoint.
    done = int((tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text())
    proc = run_cli([o if o != "trainer.total_training_steps=50" else f"trainer.total_training_steps={done + 1}"
                    for o in overrides], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"global_step_{done}" in proc.stdout
    assert done + 1 in read_steps(tmp_path / "run")
