"""A resumed run continues exactly: the same per-step metrics as a run that was never stopped."""

from __future__ import annotations

import shutil

import pytest

from helpers import read_steps, run_cli, small_run_overrides

pytestmark = pytest.mark.slow

TIMING_PREFIXES = ("timing_s/", "timing_per_token_ms/", "perf/throughput", "perf/time_per_step")


def non_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith(TIMING_PREFIXES)}


def test_resume_after_checkpoint_is_bit_identical_and_needs_the_optimizer_state(
    tiny_models, gsm8k_dir, length_reward, tmp_path
):
    def overrides(name: str, *extra: str) -> list[str]:
        return small_run_overrides(tiny_models["qwen2"], gsm8k_dir, tmp_path / name, length_reward) + [
            "trainer.total_training_steps=4", "trainer.save_freq=2", "actor_rollout_ref.actor.optim.lr=1e-3", *extra,
        ]

    # The uninterrupted run: 4 steps, checkpoints at steps 2 and 4.
    proc = run_cli(overrides("full"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-5000:]
    full = read_steps(tmp_path / "full" / "run")

    # The state a kill right after the step-2 checkpoint leaves (the tracker is written last, so it says 2).
    ckpt = tmp_path / "stopped" / "ckpt"
    shutil.copytree(tmp_path / "full" / "ckpt" / "global_step_2", ckpt / "global_step_2")
    (ckpt / "latest_checkpointed_iteration.txt").write_text("2")

    proc = run_cli(overrides("stopped"), cwd=tmp_path)  # resume_mode=auto is the default
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "resuming from" in proc.stdout
    resumed = read_steps(tmp_path / "stopped" / "run")
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert non_timing(resumed[step]) == non_timing(full[step]), f"step {step} differs after resume"

    # Without the optimizer state (fresh Adam moments) the continuation differs: the check above has teeth.
    proc = run_cli(
        overrides("no_optim", "trainer.resume_mode=resume_path", f"trainer.resume_from_path={ckpt / 'global_step_2'}",
                  "actor_rollout_ref.actor.checkpoint.load_contents=[model,extra]"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    no_optim = read_steps(tmp_path / "no_optim" / "run")
    assert any(non_timing(no_optim[s]) != non_timing(full[s]) for s in (3, 4))

    # Resuming a finished run says so and trains nothing.
    proc = run_cli(overrides("full"), cwd=tmp_path)
    assert proc.returncode == 0 and "already finished" in proc.stdout
