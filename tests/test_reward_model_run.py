"""reward_model.enable=true end to end: the CLI trains GRPO on a reward model's scores (two actor and two reward-model
workers on gloo) and a run resumed from its step-1 checkpoint continues exactly.

The reward model is a tiny random Qwen2ForSequenceClassification saved with save_pretrained: its scores are
arbitrary real numbers, where GSM8K's rule scorer gives a random policy 0 or 1, so the metrics show which one
scored training (the reward model) and which one scored validation (the rule, as verl's FSDP reward-model worker).
"""

from __future__ import annotations

import pytest

from helpers import read_steps, run_cli, save_reward_model, small_run_overrides
from test_resume import non_timing

pytestmark = pytest.mark.slow


def test_a_reward_model_run_trains_and_resumes_exactly(tiny_models, gsm8k_dir, tmp_path, shared_ray):
    rm_dir = save_reward_model(tmp_path / "rm", tiny_models["qwen2"])
    extra = ["reward_model.enable=true", f"reward_model.model.path={rm_dir}", "reward_model.micro_batch_size_per_gpu=4",
             "trainer.save_freq=1", "trainer.test_freq=2", "data.val_max_samples=2"]
    reference = small_run_overrides(tiny_models["qwen2"], gsm8k_dir, tmp_path / "a") + extra
    proc = run_cli(reference, cwd=tmp_path, env=shared_ray)
    assert proc.returncode == 0, proc.stderr[-5000:]
    expected = read_steps(tmp_path / "a" / "run")
    assert sorted(expected) == [1, 2]
    for step in (1, 2):
        metrics = expected[step]
        score = metrics["critic/score/mean"]
        assert score not in (0.0, 1.0) and metrics["critic/score/max"] > metrics["critic/score/min"], metrics
        assert metrics["actor/grad_norm"] > 0 and metrics["timing_s/reward"] > 0
        assert metrics["perf/peak_rss_gb/reward_model"] > 0
    assert expected[2]["val-core/openai/gsm8k/reward/mean@1"] in (0.0, 0.5, 1.0)  # the rule: 2 prompts, 0 or 1 each

    resumed = small_run_overrides(tiny_models["qwen2"], gsm8k_dir, tmp_path / "b") + extra + [
        "trainer.resume_mode=resume_path", f"trainer.resume_from_path={tmp_path / 'a' / 'ckpt' / 'global_step_1'}",
        "trainer.save_freq=-1"]
    proc = run_cli(resumed, cwd=tmp_path, env=shared_ray)
    assert proc.returncode == 0, proc.stderr[-5000:]
    steps = read_steps(tmp_path / "b" / "run")
    assert sorted(steps) == [2]
    assert non_timing(steps[2]) == non_timing(expected[2])
