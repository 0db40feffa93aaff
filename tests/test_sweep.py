"""Hydra multirun: one run dir and one checkpoint dir per job, a failed job does not stop the others, and the
plot command compares the jobs. The estimator sweep doubles as the PPO (GAE + critic) reward-trend check."""

import subprocess
import sys

import pytest
from helpers import read_steps, run_cli

from rl_trainer.sweep import job_tag, swept_keys


def test_job_tag_names_a_job_by_the_overrides_it_sweeps():
    argv = ["-m", "algorithm.adv_estimator=grpo,gae", "data.train_files=/data/train.parquet", "x.n=range(1,3)",
            "hydra.sweep.dir=/tmp/sweep"]
    assert swept_keys(argv) == {"algorithm.adv_estimator", "x.n"}
    job = ["algorithm.adv_estimator=gae", "data.train_files=/data/train.parquet", "x.n=2"]
    assert job_tag(job, argv) == "algorithm.adv_estimator=gae,x.n=2"
    # Nothing swept: every override names the job, with "/" made safe for a directory name.
    assert job_tag(["data.train_files=/d/t.parquet"], ["-m", "data.train_files=/d/t.parquet"]) == \
        "data.train_files=_d_t.parquet"
    assert job_tag([], ["-m"]) == "defaults"
    long = [f"key{i}.value=abcdefghij" for i in range(20)]
    tag = job_tag(long, ["-m", *[o.replace("abcdefghij", "a,b") for o in long]])
    assert len(tag) == 120 and tag != job_tag(long[1:] + long[:1], ["-m", *[o.replace("abcdefghij", "a,b") for o in long]])


@pytest.mark.slow
def test_estimator_sweep_isolates_jobs_survives_a_failure_resumes_and_plots(tmp_path, shared_ray):
    sweep, checkpoints = tmp_path / "sweep", tmp_path / "ckpt"
    overrides = [
        "-m", "--config-name", "digit_shift", "algorithm.adv_estimator=no_such_estimator,grpo,gae",
        "trainer.total_training_steps=20", "trainer.test_freq=20", "trainer.save_freq=20", "trainer.logger=[]",
        f"hydra.sweep.dir={sweep}", f"trainer.default_local_dir={checkpoints}",
    ]
    result = run_cli(overrides, cwd=tmp_path, timeout=400, env=shared_ray)
    # The first job fails on its config; the other two still run, and the sweep exits non-zero.
    assert result.returncode == 1, result.stderr[-3000:]
    assert "error: job 0 (algorithm.adv_estimator=no_such_estimator): algorithm.adv_estimator" in result.stderr
    grpo, gae = (read_steps(sweep / f"{i}-algorithm.adv_estimator={name}") for i, name in ((1, "grpo"), (2, "gae")))
    assert max(grpo) == max(gae) == 20
    assert "critic/vf_loss" in gae[20] and "critic/vf_loss" not in grpo[20]
    # PPO learns: the training reward of the last five steps is well above the first five's.
    first, last = (sum(gae[s]["critic/score/mean"] for s in steps) / 5 for steps in (range(1, 6), range(16, 21)))
    assert last - first >= 0.2, (first, last)
    # One checkpoint directory per job, named by the swept value, never shared.
    for name in ("grpo", "gae"):
        assert (checkpoints / f"algorithm.adv_estimator={name}" / "global_step_20").is_dir()
    assert not (checkpoints / "global_step_20").exists()

    # The same sweep again: each job finds its own finished checkpoint (resume_mode=auto), not a sibling's.
    again = run_cli([o.replace(str(sweep), str(tmp_path / "sweep2")) for o in overrides], cwd=tmp_path, timeout=300,
                  env=shared_ray)
    assert again.stdout.count("training already finished") == 2, again.stdout[-3000:]
    assert f"{checkpoints}/algorithm.adv_estimator=gae/global_step_20 is step 20" in again.stdout

    plot = subprocess.run([sys.executable, "-m", "rl_trainer.tools.plot", str(sweep), "--out", str(tmp_path / "cmp.png")],
                          capture_output=True, text=True, timeout=120)
    assert plot.returncode == 0, plot.stderr
    assert (tmp_path / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
