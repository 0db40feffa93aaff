"""The bad-input corpus: each mistake ends in one line that names the culprit and the fix, a non-zero exit, no Ray
process left running, and an existing checkpoint directory left as it was.

Mistakes caught before Ray are checked in this process through the CLI's own code path (compose, then
rl_trainer.main.run); a sample of them, and those found while training, go through the real CLI."""

from __future__ import annotations

import hashlib
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import cli_config, config_stage_error, local_trainer, ray_daemons, run_cli, small_run_overrides
from rl_trainer.checkpoint import COMPLETE_MARKER
from rl_trainer.errors import UserError

pytestmark = pytest.mark.usefixtures("own_ray")  # no Ray may run: each case asserts that none is left


@pytest.fixture(scope="module")
def bad(tmp_path_factory, gsm8k_dir, tiny_models):
    """Broken inputs, one file or directory each."""
    root = tmp_path_factory.mktemp("bad")
    good = pq.read_table(gsm8k_dir / "train.parquet").slice(0, 16)
    (root / "garbage.parquet").write_bytes(b"this is not a parquet file")
    pq.write_table(good.drop(["prompt"]), root / "no_prompt.parquet")
    pq.write_table(good.set_column(good.schema.get_field_index("reward_model"), "reward_model",
                                   pa.array(["42"] * len(good))), root / "bad_reward_model.parquet")
    pq.write_table(good.slice(0, 0), root / "empty.parquet")
    no_template = root / "no_chat_template"
    shutil.copytree(tiny_models["qwen2"], no_template)
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    (no_template / "chat_template.jinja").unlink(missing_ok=True)
    (root / "raises.py").write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
                                    "    raise KeyError('oops')\n")
    (root / "not_a_number.py").write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
                                          "    return 'correct'\n")
    return root


# (id, overrides with {bad} for the fixture dir, text the one-line error must contain)
BEFORE_RAY = [
    ("missing-train-file", ["data.train_files=/nonexistent/train.parquet"], "/nonexistent/train.parquet"),
    ("unreadable-train-file", ["data.train_files={bad}/garbage.parquet"], "garbage.parquet"),
    ("no-prompt-column", ["data.train_files={bad}/no_prompt.parquet"], "data.prompt_key"),
    ("malformed-reward-model", ["data.train_files={bad}/bad_reward_model.parquet"], "reward_model"),
    ("empty-dataset", ["data.train_files={bad}/empty.parquet"], "empty.parquet"),
    ("all-prompts-too-long-filtered", ["data.max_prompt_length=8"], "data.max_prompt_length"),
    ("prompt-too-long-unfiltered", ["data.max_prompt_length=8", "data.filter_overlong_prompts=false"],
     "data.truncation"),
    ("nonexistent-model", ["actor_rollout_ref.model.path=/nonexistent/model"],
     "actor_rollout_ref.model.path=/nonexistent/model"),
    ("no-chat-template", ["actor_rollout_ref.model.path={bad}/no_chat_template"], "chat template"),
    ("unknown-estimator", ["algorithm.adv_estimator=ppo"],
     "algorithm.adv_estimator='ppo' is not valid; choose one of: gae, gdpo, gpg, grpo"),
    ("unknown-loss-mode", ["actor_rollout_ref.actor.policy_loss.loss_mode=ppo"],
     "actor_rollout_ref.actor.policy_loss.loss_mode='ppo' is not valid; choose one of: bypass_mode, cispo, clip_cov"),
    ("dro-without-beta", ["actor_rollout_ref.actor.policy_loss.loss_mode=dro"],
     "actor_rollout_ref.actor.policy_loss.loss_mode=dro needs actor_rollout_ref.actor.policy_loss.dro_beta > 0"),
    ("malformed-is-threshold", ["algorithm.rollout_correction.rollout_is=token",
                                "algorithm.rollout_correction.rollout_is_threshold='2_0.5'"],
     "algorithm.rollout_correction.rollout_is_threshold='2_0.5' is not valid; use a positive number u"),
    ("unknown-rs-option", ["algorithm.rollout_correction.rollout_rs=token_k4",
                           "algorithm.rollout_correction.rollout_rs_threshold=2.0"],
     "algorithm.rollout_correction.rollout_rs option 'token_k4' (in 'token_k4') is unknown; valid options: token_k1"),
    ("malformed-rs-threshold", ["algorithm.rollout_correction.rollout_rs=seq_max_k2",
                                "algorithm.rollout_correction.rollout_rs_threshold='0.5_2'"],
     "algorithm.rollout_correction.rollout_rs_threshold '0.5_2' for option 'seq_max_k2' is not valid; *_k1 options"),
    ("bypass-without-rollout-log-probs", ["algorithm.rollout_correction.bypass_mode=true",
                                          "actor_rollout_ref.rollout.calculate_log_probs=false"],
     "algorithm.rollout_correction.bypass_mode=true needs the rollout's log-probs, but "
     "actor_rollout_ref.rollout.calculate_log_probs=false"),
    ("bypass-loss-mode-without-bypass", ["actor_rollout_ref.actor.policy_loss.loss_mode=bypass_mode"],
     "set algorithm.rollout_correction.bypass_mode=true"),
    ("gdpo-without-reward-keys", ["algorithm.adv_estimator=gdpo"],
     "algorithm.adv_estimator=gdpo needs algorithm.gdpo_reward_keys"),
    ("token-baseline-in-bypass-mode", ["algorithm.adv_estimator=optimal_token_baseline",
                                       "algorithm.rollout_correction.bypass_mode=true"],
     "algorithm.adv_estimator=optimal_token_baseline needs the old-log-prob pass"),
    ("unknown-loss-agg-mode", ["actor_rollout_ref.actor.loss_agg_mode=mean"],
     "actor_rollout_ref.actor.loss_agg_mode='mean' is not valid; choose one of: token-mean"),
    ("unknown-kl-loss-type", ["actor_rollout_ref.actor.kl_loss_type=k4"], "actor_rollout_ref.actor.kl_loss_type='k4'"),
    ("gae-without-critic", ["algorithm.adv_estimator=gae", "critic.enable=false"], "set critic.enable=true"),
    ("batch-not-divisible", ["data.train_batch_size=6"],
     "data.train_batch_size=6 is not divisible by actor_rollout_ref.actor.ppo_mini_batch_size=4"),
    ("micro-batch-not-divisible", ["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=3"],
     "ppo_micro_batch_size_per_gpu=3 does not divide the 8 sequences per worker"),
    ("more-workers-than-cpus", ["trainer.n_gpus_per_node=8", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
                                "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
                                "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2"],
     "trainer.n_gpus_per_node * trainer.cpus_per_worker = 8 * 1 CPUs"),
    ("several-nodes-without-cluster", ["trainer.nnodes=2", "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
                                       "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4"], "RAY_ADDRESS"),
    ("critic-tokenizer-missing", ["algorithm.adv_estimator=gae", "critic.model.tokenizer_path=/nonexistent/tok"],
     "critic.model.tokenizer_path=/nonexistent/tok"),
    ("reward-file-missing", ["custom_reward_function.path=/nonexistent/reward.py"], "/nonexistent/reward.py"),
    ("reward-function-missing", ["custom_reward_function.path={bad}/raises.py", "custom_reward_function.name=score"],
     "score"),
    ("negative-lr", ["actor_rollout_ref.actor.optim.lr=-1e-6"], "actor_rollout_ref.actor.optim.lr=-1e-06 must be"),
    ("zero-lr", ["actor_rollout_ref.actor.optim.lr=0"], "actor_rollout_ref.actor.optim.lr=0 must be a number > 0"),
    ("resume-path-missing", ["trainer.resume_mode=resume_path", "trainer.resume_from_path=/nonexistent/global_step_3"],
     "trainer.resume_from_path"),
    ("vllm-not-installed", ["actor_rollout_ref.rollout.name=vllm"], "actor_rollout_ref.rollout.name=vllm"),
    ("unknown-logger", ["trainer.logger=slack"], "trainer.logger='slack' is not valid"),
    ("filter-groups-metric-nothing-produces", ["algorithm.filter_groups.enable=true",
                                               "algorithm.filter_groups.metric=acc"],
     "algorithm.filter_groups.metric='acc' is not produced by the naive reward manager"),
    ("rollout-mode-sync", ["actor_rollout_ref.rollout.mode=sync"],
     "actor_rollout_ref.rollout.mode=sync was removed in verl 0.9.1 (its only mode is async)"),
    ("optim-total-training-steps-set", ["actor_rollout_ref.actor.optim.total_training_steps=100"],
     "actor_rollout_ref.actor.optim.total_training_steps=100 is filled in by the trainer"),
    ("rollout-prompt-length-below-data", ["actor_rollout_ref.rollout.prompt_length=64"],
     "actor_rollout_ref.rollout.prompt_length=64 < data.max_prompt_length=192"),
    ("reused-old-log-prob-off-policy", ["actor_rollout_ref.actor.recompute_old_log_prob=false",
                                        "actor_rollout_ref.actor.ppo_epochs=2"],
     "actor_rollout_ref.actor.recompute_old_log_prob=false needs an on-policy update, but "
     "actor_rollout_ref.actor.ppo_epochs=2"),
]
# Found while training (the reward function runs on the first batch), after Ray has started.
DURING_TRAINING = [
    ("reward-function-raises", ["custom_reward_function.path={bad}/raises.py"], "raises.py"),
    ("reward-not-a-number", ["custom_reward_function.path={bad}/not_a_number.py"], "not_a_number.py"),
]


def checkpoint_fingerprint(ckpt):
    return {str(p.relative_to(ckpt)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(ckpt.rglob("*"))
            if p.is_file()}


def existing_checkpoint(tmp_path):
    """A complete-looking checkpoint directory; returns it and its fingerprint, which no bad input may change."""
    ckpt = tmp_path / "ckpt"
    (ckpt / "global_step_1" / "actor").mkdir(parents=True)
    (ckpt / "global_step_1" / "actor" / "weights.bin").write_bytes(b"\x00" * 1024)
    (ckpt / "global_step_1" / COMPLETE_MARKER).write_text("")
    (ckpt / "latest_checkpointed_iteration.txt").write_text("1")
    return ckpt, checkpoint_fingerprint(ckpt)


def case_args(case, overrides, bad, tiny_models, gsm8k_dir, tmp_path) -> list[str]:
    args = small_run_overrides(tiny_models["qwen2"], gsm8k_dir, tmp_path) + ["data.train_max_samples=32"]
    args += [o.format(bad=bad) for o in overrides]
    if case in {c[0] for c in DURING_TRAINING}:
        args.append("trainer.resume_mode=disable")  # the fake checkpoint above is for inspection, not resuming
    return args


@pytest.mark.parametrize("case, overrides, expected", BEFORE_RAY, ids=[c[0] for c in BEFORE_RAY])
def test_bad_input_is_one_line(case, overrides, expected, bad, tiny_models, gsm8k_dir, tmp_path, capfd):
    # In this process, through the code path the CLI takes before Ray (helpers.config_stage_error); what the CLI
    # then prints (`error: <message>`, exit 2) is shown by test_bad_input_through_the_cli on a sample of cases.
    import ray

    ckpt, before = existing_checkpoint(tmp_path)
    exc = config_stage_error(case_args(case, overrides, bad, tiny_models, gsm8k_dir, tmp_path), tmp_path / "run")

    assert isinstance(exc, UserError), repr(exc)
    message = str(exc)
    assert message.strip() and "\n" not in message.strip(), message
    assert expected in message, message
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert not ray.is_initialized() and not ray_daemons()
    assert checkpoint_fingerprint(ckpt) == before


@pytest.mark.parametrize("overrides, expected", [
    (["data.train_files=/nonexistent/train.parquet"], "data file /nonexistent/train.parquet does not exist; check "
                                                      "data.train_files"),
    (["data.val_files=/nonexistent/val.parquet", "trainer.test_freq=1"], "check data.val_files"),
    (["data.val_files=/nonexistent/val.parquet", "trainer.test_freq=-1", "trainer.val_before_train=false"], None),
])
def test_a_missing_data_file_fails_in_the_config_stage(overrides, expected, tiny_models, gsm8k_dir, tmp_path):
    """Before Ray starts (the CLI's check_config), not after it as the input stage's reading of the files would: a
    mistyped path fails in seconds. A validation file is checked only where the run validates."""
    task = [o for o in small_run_overrides(tiny_models["qwen2"], gsm8k_dir, tmp_path) if not o.startswith("hydra.")]
    if expected is None:
        cli_config(task + overrides)
    else:
        with pytest.raises(UserError, match=expected):
            cli_config(task + overrides)


@pytest.mark.parametrize("case, overrides, expected", DURING_TRAINING, ids=[c[0] for c in DURING_TRAINING])
def test_bad_reward_found_while_training_is_one_line(case, overrides, expected, bad, tiny_models, gsm8k_dir, tmp_path):
    # In this process, through the CLI's config and input stages and the real trainer and worker (one rank, no Ray):
    # the first batch's scoring stops the run with a one-line UserError naming the file.
    # What the CLI then prints and leaves behind is test_bad_input_through_the_cli's, on the first of these cases.
    task = [o for o in case_args(case, overrides, bad, tiny_models, gsm8k_dir, tmp_path) if not o.startswith("hydra.")]
    cfg = cli_config(task + ["trainer.n_gpus_per_node=1"])
    with local_trainer(cfg, tmp_path / "run") as trainer, pytest.raises(UserError) as error:
        trainer.fit()
    assert expected in str(error.value) and "\n" not in str(error.value), str(error.value)


# Through the real CLI: one case per stage that can refuse (data, model, local resources), and one found while
# training (the batch-size check's CLI run is test_overriding_critic_keys_while_the_critic_is_off_warns_in_one_line).
CLI_CASES = [c for c in BEFORE_RAY if c[0] in {"unreadable-train-file", "no-chat-template", "more-workers-than-cpus"}]


@pytest.mark.parametrize("case, overrides, expected", CLI_CASES + [pytest.param(*DURING_TRAINING[0], marks=pytest.mark.slow)],
                         ids=[c[0] for c in CLI_CASES + DURING_TRAINING[:1]])
def test_bad_input_through_the_cli(case, overrides, expected, bad, tiny_models, gsm8k_dir, tmp_path):
    ckpt, before = existing_checkpoint(tmp_path)
    proc = run_cli(case_args(case, overrides, bad, tiny_models, gsm8k_dir, tmp_path), cwd=tmp_path, timeout=180)

    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: "), proc.stderr[-4000:]
    assert expected in lines[-1], lines[-1]
    assert "Traceback" not in proc.stderr
    assert not proc.leftover and not ray_daemons(), proc.leftover
    assert checkpoint_fingerprint(ckpt) == before


def test_unknown_key_fails_with_hydras_error(tmp_path):
    proc = run_cli(["trainer.no_such_key=1", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    assert "Could not override 'trainer.no_such_key'" in proc.stderr


def test_full_traceback_behind_hydra_full_error(tmp_path):
    proc = run_cli(["algorithm.adv_estimator=ppo", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, timeout=120,
                   env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "UserError" in proc.stderr


def test_overriding_critic_keys_while_the_critic_is_off_warns_in_one_line(tmp_path):
    # The batch-size error stops the run before Ray; the warning comes first, on one line.
    proc = run_cli(["critic.ppo_epochs=2", "data.train_batch_size=6", f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path,
                   timeout=120)
    warnings = [line for line in proc.stdout.splitlines() if "WARNING" in line]
    assert len(warnings) == 1
    assert "critic is disabled" in warnings[0] and "critic.ppo_epochs" in warnings[0]
    # The CLI run of the corpus' batch-not-divisible case: exit 2, the error as the last stderr line.
    assert proc.returncode == 2, proc.stderr[-4000:]
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error: data.train_batch_size=6 is not divisible by"), lines[-1]
    assert "Traceback" not in proc.stderr and not proc.leftover
