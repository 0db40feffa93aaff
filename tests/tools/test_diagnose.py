"""`python -m rl_trainer.tools.diagnose`: versions, devices, Ray cluster and the config's batch arithmetic."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import session_pids, wait_gone
from rl_trainer.tools.diagnose import compose_config, ray_status


def diagnose(*overrides: str, env: dict | None = None, returncode: int = 0) -> str:
    proc = subprocess.run([sys.executable, "-m", "rl_trainer.tools.diagnose", *overrides], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})
    assert proc.returncode == returncode, proc.stderr
    return proc.stdout


def test_reports_versions_devices_and_batch_arithmetic():
    out = diagnose("data.train_batch_size=16", "actor_rollout_ref.actor.ppo_mini_batch_size=4", "trainer.n_gpus_per_node=2")
    for section in ("[versions]", "[devices]", "[ray]", "[config]"):
        assert section in out
    assert "torch: 2." in out and "transformers: " in out and "vllm: " in out
    assert f"cpu_count: {os.cpu_count()}" in out
    # 16 prompts * n=4 = 64 sequences over 2 workers; 4-prompt mini-batches -> 4 optimizer steps per step.
    assert "16 * 4 = 64 (32 per worker)" in out
    assert "4 optimizer step(s) per training step" in out


def test_an_invalid_config_is_reported_not_raised_and_exits_1():
    out = diagnose("data.train_batch_size=6", returncode=1)
    assert "config: INVALID: data.train_batch_size=6 is not divisible" in out
    assert "[versions]" in out  # the rest of the report is still printed


def test_an_unknown_key_is_reported_not_raised(capsys):
    from rl_trainer.tools.diagnose import main

    assert main(["trainer.no_such_key=1"]) == 1
    out = capsys.readouterr().out
    assert "config: INVALID: ConfigCompositionException" in out and "no_such_key" in out
    assert "ray: not checked: the config did not compose" in out


def test_help_prints_usage(capsys):
    from rl_trainer.tools.diagnose import main

    assert main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: python -m rl_trainer.tools.diagnose")


def test_address_local_wins_over_ray_address_as_in_main(monkeypatch):
    # main joins nothing for address=local even with RAY_ADDRESS set, so diagnose must not connect either
    # (port 1 would refuse the connection: a message other than "no cluster to join" would mean it tried).
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    cfg, error = compose_config(["ray_kwargs.ray_init.address=local"])
    assert error is None
    assert ray_status(cfg) == {"ray": "no cluster to join (ray_kwargs.ray_init.address=local): main starts a local "
                                      "one on this machine"}
    monkeypatch.delenv("RAY_ADDRESS")
    cfg, _ = compose_config([])
    assert "ray_kwargs.ray_init.address and RAY_ADDRESS unset" in ray_status(cfg)["ray"]


@pytest.mark.slow
def test_reports_a_running_ray_cluster(tmp_path, own_ray):
    with socket.socket() as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    ray_bin = Path(sys.executable).parent / "ray"
    # In a session of its own, so that stopping it kills this cluster only (`ray stop --force` would stop every Ray on
    # the machine, including those of tests running beside this one).
    start = subprocess.Popen([str(ray_bin), "start", "--head", f"--port={port}", "--num-cpus=1",
                              "--include-dashboard=false", "--disable-usage-stats"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = start.communicate(timeout=120)
        assert start.returncode == 0, output
        out = diagnose(env={"RAY_ADDRESS": f"127.0.0.1:{port}"})
        assert f"connected to 127.0.0.1:{port} (RAY_ADDRESS)" in out and "alive_nodes: 1" in out and "CPU=1" in out
        # The key wins over RAY_ADDRESS, as in main: a RAY_ADDRESS where nothing listens is not looked at.
        out = diagnose(f"ray_kwargs.ray_init.address=127.0.0.1:{port}", env={"RAY_ADDRESS": "127.0.0.1:1"})
        assert f"connected to 127.0.0.1:{port} (ray_kwargs.ray_init.address)" in out and "alive_nodes: 1" in out
    finally:
        daemons = session_pids(start.pid)
        if daemons:
            os.killpg(start.pid, signal.SIGKILL)
        wait_gone(daemons, timeout=30)
