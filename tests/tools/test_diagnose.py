"""`python -m rl_trainer.tools.diagnose`: versions, devices, Ray cluster and the config's batch arithmetic."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def diagnose(*overrides: str, env: dict | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "rl_trainer.tools.diagnose", *overrides], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_reports_versions_devices_and_batch_arithmetic():
    out = diagnose("data.train_batch_size=16", "actor_rollout_ref.actor.ppo_mini_batch_size=4")
    for section in ("[versions]", "[devices]", "[ray]", "[config]"):
        assert section in out
    assert "torch: 2." in out and "transformers: " in out and "vllm: " in out
    assert f"cpu_count: {os.cpu_count()}" in out
    # 16 prompts * n=4 = 64 sequences over 2 workers; 4-prompt mini-batches -> 4 optimizer steps per step.
    assert "16 * 4 = 64 (32 per worker)" in out
    assert "4 optimizer step(s) per training step" in out


def test_an_invalid_config_is_reported_not_raised():
    out = diagnose("data.train_batch_size=6")
    assert "config: INVALID: data.train_batch_size=6 is not divisible" in out


@pytest.mark.slow
def test_reports_a_running_ray_cluster(tmp_path, own_ray):  # `ray stop --force` stops every Ray
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    ray_bin = Path(sys.executable).parent / "ray"
    env = {**os.environ, "RAY_TMPDIR": os.environ["RAY_TMPDIR"]}
    subprocess.run([str(ray_bin), "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True, env=env, timeout=120)
    try:
        out = diagnose(env={"RAY_ADDRESS": f"127.0.0.1:{port}"})
        assert f"connected to 127.0.0.1:{port}" in out and "alive_nodes: 1" in out and "CPU=1" in out
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True, env=env, timeout=120)
