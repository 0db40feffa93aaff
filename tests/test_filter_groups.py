"""DAPO's dynamic sampling and the no-signal metric: the pure pieces by hand, the config's one-line refusals, and
the loop (PPOTrainer over an in-process worker group, no Ray): filter_groups trains only on varying groups and
resumes exactly; ReMax generates its greedy baseline and trains."""

from __future__ import annotations

import numpy as np
import pytest

from rl_trainer.errors import UserError
from rl_trainer.filter_groups import equal_group_ratio, metric_values, varying_group_rows


def test_varying_group_rows_keeps_groups_whose_metric_varies():
    uids = ["a", "a", "b", "b", "c", "c", "d"]
    values = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    rows, kept, total = varying_group_rows(uids, values)
    # a varies (std 0.5), b and c are all-equal, d has one response (kept, as verl)
    assert rows.tolist() == [0, 1, 6] and (kept, total) == (2, 4)
    # b and c are all-equal among the groups of two or more: 2 of 3
    assert equal_group_ratio(uids, values) == pytest.approx(2 / 3)
    assert equal_group_ratio(["a"], np.array([1.0])) == 0.0


def test_metric_values_read_scores_or_a_reward_key():
    scores = np.array([0.5, 1.0])
    assert metric_values("reward", scores, {}).tolist() == [0.5, 1.0]
    assert metric_values("acc", scores, {"acc": [True, False]}).tolist() == [1.0, 0.0]
    with pytest.raises(UserError, match=r"metric='acc' is not among .*\(reward, seq_reward, seq_final_reward, x\)"):
        metric_values("acc", scores, {"x": [1, 2]})


@pytest.mark.parametrize("overrides, message", [
    (["data.gen_batch_size=4", "data.train_batch_size=8"],
     "data.gen_batch_size=4 < data.train_batch_size=8: dynamic sampling draws generation batches"),
    (["algorithm.filter_groups.metric=acc"],
     "algorithm.filter_groups.metric='acc' is not produced by the naive reward manager with the built-in rule "
     "scorers (they return one number); use one of reward, seq_reward, seq_final_reward; or set "
     "reward_model.reward_manager=dapo, which reports acc"),
    (["algorithm.filter_groups.metric=seq_final_reward", "algorithm.use_kl_in_reward=true"],
     "algorithm.filter_groups.metric=seq_final_reward with algorithm.use_kl_in_reward=true"),
    (["data.gen_batch_size=9", "trainer.n_gpus_per_node=2"],
     "data.gen_batch_size * rollout.n = 9 sequences cannot be split over 2 workers"),
    (["algorithm.filter_groups.max_inflight_gen_batches=2"],
     "algorithm.filter_groups.max_inflight_gen_batches=2: rl_trainer does not implement concurrent DAPO generation"),
])
def test_bad_filter_groups_config_is_one_line(overrides, message):
    from test_config import refusal

    got = refusal(["algorithm.filter_groups.enable=true", "actor_rollout_ref.rollout.n=1", *overrides])
    assert got.startswith(message), got


def test_good_filter_groups_configs_validate():
    from test_config import validated

    validated(["algorithm.filter_groups.enable=true", "data.gen_batch_size=16"])
    validated(["algorithm.filter_groups.enable=true", "algorithm.filter_groups.metric=acc",
               "reward_model.reward_manager=dapo"])
    validated(["algorithm.adv_estimator=remax"])


# Even GSM8K rows always score 0 (an all-equal group), odd rows score their response's characters: different
# responses almost surely differ, so their groups vary.
PARITY_REWARD = (
    "def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):\n"
    "    return 0.0 if extra_info['index'] % 2 == 0 else sum(map(ord, solution_str)) / 1000\n"
)


def _steps_and_dumps(trainer, run_dir, dump_dir):
    import json

    from helpers import read_steps

    trainer.fit()
    dumps = {int(p.stem): [json.loads(line) for line in p.read_text().splitlines()] for p in dump_dir.glob("*.jsonl")}
    return read_steps(run_dir), dumps


def test_filter_groups_trains_only_varying_groups_and_resumes_exactly(tiny_models, gsm8k_dir, tmp_path):
    from helpers import local_trainer, loop_config

    reward = tmp_path / "parity.py"
    reward.write_text(PARITY_REWARD)
    extra = ["algorithm.filter_groups.enable=true", "data.train_max_samples=12", "data.gen_batch_size=2",
             "trainer.total_training_steps=2", "trainer.save_freq=1", f"trainer.rollout_data_dir={tmp_path}/dump"]
    cfg = loop_config(tiny_models["qwen2"], gsm8k_dir, tmp_path, extra, reward=reward)
    with local_trainer(cfg, tmp_path / "run", None) as trainer:
        steps, dumps = _steps_and_dumps(trainer, tmp_path / "run", tmp_path / "dump")
    assert sorted(dumps) == [1, 2]
    for step, records in dumps.items():
        groups: dict = {}
        for record in records:
            groups.setdefault(record["uid"], []).append(record)
        assert len(groups) == 2 and len(records) == 4  # data.train_batch_size groups of rollout.n
        for group in groups.values():  # only odd rows, whose scores differ
            assert {r["index"] % 2 for r in group} == {1} and len({r["score"] for r in group}) == 2
        metrics = steps[step]
        # every generation batch draws 2 prompts: kept (train_batch_size + surplus) + dropped = 2 per batch
        kept = 2 + metrics["training/filter_groups/discarded_surplus_samples"]
        assert kept + metrics["training/filter_groups/evicted_samples"] == 2 * metrics["train/num_gen_batches"]
        assert metrics["critic/score/all_equal_group_ratio"] == (
            metrics["training/filter_groups/evicted_samples"] / (2 * metrics["train/num_gen_batches"]))
    assert sum(steps[s]["training/filter_groups/evicted_samples"] for s in (1, 2)) > 0  # even prompts were drawn

    # Resume from step 1's checkpoint: step 2 draws the same generation batches and trains on the same data.
    import shutil

    shutil.rmtree(tmp_path / "dump")
    with local_trainer(cfg, tmp_path / "resumed", None) as trainer:
        trainer.resume_path = tmp_path / "ckpt" / "global_step_1"
        resumed, resumed_dumps = _steps_and_dumps(trainer, tmp_path / "resumed", tmp_path / "dump")
    assert list(resumed_dumps) == [2]
    same = ("uid", "step")
    assert ([{k: v for k, v in r.items() if k not in same} for r in resumed_dumps[2]]
            == [{k: v for k, v in r.items() if k not in same} for r in dumps[2]])
    numbers = [k for k in steps[2] if not k.startswith(("timing_s/", "perf/", "timing_per_token_ms/"))]
    assert {k: resumed[2][k] for k in numbers} == {k: steps[2][k] for k in numbers}


def test_remax_baseline_is_the_greedy_response_reward(tiny_models, gsm8k_dir, length_reward, tmp_path):
    import json

    import torch

    from helpers import local_trainer, loop_config
    from test_trainer_loop import phases

    cfg = loop_config(tiny_models["qwen2"], gsm8k_dir, tmp_path, ["algorithm.adv_estimator=remax",
                      f"trainer.rollout_data_dir={tmp_path}/dump"], reward=length_reward)
    calls: list = []
    with local_trainer(cfg, tmp_path / "run", calls) as trainer:
        prompts = next(iter(trainer.train_loader))
        greedy = trainer._generate(prompts, greedy=True)  # the weights the step's baseline sees
        baseline = trainer._score(greedy).token_level_scores.sum(-1)
        trainer.global_step = 1
        metrics = trainer.train_step(prompts, epoch=0)
    assert phases(calls)[:2] == ["generate_sequences", "generate_sequences"]
    assert "timing_s/gen_max" in metrics and metrics["actor/grad_norm"] > 0
    records = [json.loads(line) for line in (tmp_path / "dump" / "1.jsonl").read_text().splitlines()]
    # ReMax, outcome reward: every valid token's advantage is score - baseline of its prompt (2 prompts x n=2)
    expected = [r["score"] - baseline[i // 2].item() for i, r in enumerate(records)]
    assert torch.allclose(torch.tensor([r["advantage"] for r in records]), torch.tensor(expected), atol=1e-6)


def test_a_step_without_signal_says_so_once(tiny_models, gsm8k_dir, tmp_path, caplog):
    """A random model on GSM8K scores 0 everywhere: every group is all-equal, every GRPO advantage is 0."""
    from helpers import local_trainer, loop_config, read_steps

    cfg = loop_config(tiny_models["qwen2"], gsm8k_dir, tmp_path, ["trainer.total_training_steps=2"])
    with local_trainer(cfg, tmp_path / "run", None) as trainer, caplog.at_level("WARNING", "rl_trainer.trainer"):
        trainer.fit()
    steps = read_steps(tmp_path / "run")
    assert [steps[s]["critic/score/all_equal_group_ratio"] for s in (1, 2)] == [1.0, 1.0]
    notices = [r.getMessage() for r in caplog.records if "no learning signal" in r.getMessage()]
    assert len(notices) == 1 and notices[0].startswith("step 1: no learning signal: every advantage is 0")
    assert "--config-name digit_shift" in notices[0] and "algorithm.filter_groups.enable=true" in notices[0]
