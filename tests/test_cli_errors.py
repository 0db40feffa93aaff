"""Bad command lines fail fast (before Ray starts) with one line that names the key and the fix."""

import pytest

from helpers import run_cli


@pytest.mark.parametrize(
    "override, expected",
    [
        ("algorithm.adv_estimator=ppo", "algorithm.adv_estimator='ppo' is not valid; choose one of: gae, gpg, grpo"),
        ("actor_rollout_ref.actor.loss_agg_mode=mean", "actor_rollout_ref.actor.loss_agg_mode='mean' is not valid"),
        ("actor_rollout_ref.rollout.name=vllm", "actor_rollout_ref.rollout.name=vllm"),
        ("critic.enable=false algorithm.adv_estimator=gae", "set critic.enable=true"),
        ("data.train_batch_size=6", "data.train_batch_size=6 is not divisible by actor_rollout_ref.actor.ppo_mini_batch_size=8"),
        ("trainer.logger=slack", "trainer.logger='slack' is not valid; choose one of: console, wandb, tensorboard"),
    ],
)
def test_bad_value_is_one_line(override, expected, tmp_path):
    proc = run_cli([*override.split(), f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert expected in lines[0]
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


def test_unknown_key_fails_with_hydras_error(tmp_path):
    proc = run_cli(["trainer.no_such_key=1", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    assert "Could not override 'trainer.no_such_key'" in proc.stderr


def test_overriding_critic_keys_while_the_critic_is_off_warns_in_one_line(tmp_path):
    # The batch-size error stops the run before Ray; the warning comes first, on one line.
    proc = run_cli(["critic.ppo_epochs=2", "data.train_batch_size=6", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path,
                   timeout=120)
    warnings = [line for line in proc.stdout.splitlines() if "WARNING" in line]
    assert len(warnings) == 1
    assert "critic is disabled" in warnings[0] and "critic.ppo_epochs" in warnings[0]
