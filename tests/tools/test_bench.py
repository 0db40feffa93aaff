"""`python -m rl_trainer.tools.bench`: the standard workload through the real CLI, two steps (a smoke test: the
figures are printed and consistent; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO
from rl_trainer.tools.bench import STANDARD_WORKLOAD, command

pytestmark = pytest.mark.slow


def test_benchmark_runs_the_standard_workload_and_prints_its_figures(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "rl_trainer.tools.bench", "--steps", "2", "--run-dir", str(tmp_path / "run"),
         "--json", str(tmp_path / "summary.json")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for figure in ("step time", "tokens per step", "tokens/s", "phases (median)", "peak RSS", "optimizer state",
                   "launch -> end of step 1", "CPU by then"):
        assert figure in out.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == [2]
    # 32 sequences of up to 128 new tokens after prompts of at most 256 tokens.
    assert 32 * 10 < summary["tokens_per_step"] <= 32 * (256 + 128)
    assert 1 <= summary["response_length_mean"] <= 128
    assert {"gen", "ref", "update_actor"} <= summary["phases_s"].keys()
    assert "old_log_prob" not in summary["phases_s"]  # the on-policy update reuses its forward
    assert summary["peak_rss_gb"]["actor_rollout_ref"] > 0.1
    # AdamW's two fp32 moments of builtin:tiny-qwen2's 3.9M trained parameters: 8 bytes each, about 30 MiB.
    assert 25 < summary["optimizer_state_gb"]["actor_rollout_ref"] * 1024 < 35
    assert 0 < summary["launch_to_first_step_s"] < summary["total_s"]
    # The driver alone imports torch, transformers and Ray before step 1; the workers and Ray's processes add theirs.
    assert 1 < summary["launch_cpu_s"]["driver"] < summary["launch_cpu_s"]["total"]


def test_baseline_turns_the_optimisations_off_and_overrides_come_last(tmp_path):
    cmd = command(7, tmp_path, "/models/mine", baseline=True, overrides=["actor_rollout_ref.rollout.n=8"])
    assert cmd[1:3] == ["-m", "rl_trainer.main"]
    assert "actor_rollout_ref.model.share_prompt_prefix=false" in cmd
    assert "actor_rollout_ref.actor.recompute_old_log_prob=true" in cmd
    assert "actor_rollout_ref.rollout.native_decode=false" in cmd
    assert cmd.index("actor_rollout_ref.model.path=/models/mine") > cmd.index(STANDARD_WORKLOAD[0])
    assert cmd[-1] == "actor_rollout_ref.rollout.n=8"
