"""Token-budget micro-batches (use_dynamic_bsz) and trainer.balance_batch on 2 gloo ranks: the same numbers as fixed
micro-batches of the same rows, log-probs and values back in the rows' order, and a run's metrics unchanged."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from helpers import in_process_run, small_run_overrides, worker_config
from rl_trainer.batch import Batch
from rl_trainer.distributed import ResourcePool, WorkerGroup
from rl_trainer.errors import UserError
from rl_trainer.trainer import _balance_batch
from rl_trainer.workers.actor import ActorRolloutRefWorker
from rl_trainer.workers.critic import CriticWorker

pytestmark = pytest.mark.slow

# Rows of prompt (<= 8) + response (<= 6) tokens, so a 20-token budget needs data.max_prompt_length=8 (8 + 6 <= 20).
SHORT_PROMPTS = ("data.max_prompt_length=8",)
DYNAMIC = (*SHORT_PROMPTS, "actor_rollout_ref.actor.use_dynamic_bsz=true",
           "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=20", "critic.ppo_max_token_len_per_gpu=20")


def ragged_batch(vocab: int, seed: int = 0) -> Batch:
    """8 sequences: left-padded 8-token prompts, ragged right-padded 6-token responses, random PPO inputs.

    Lengths (prompt + response) 14 6 7 14 | 8 7 10 10: with a 20-token budget, rank 0 (41 tokens) needs
    3 micro-batches ({14}, {14}, {6, 7}: ceil(41 / 20) = 3) and rank 1 (35 tokens) 2, so both run 3; fixed
    micro-batches of 2 rows are 2 per rank. Groups (uid) a-d are rows {0, 4}, {1, 5}, {2, 6}, {3, 7}."""
    g = torch.Generator().manual_seed(seed)
    bs, p, r = 8, 8, 6
    prompt_len = torch.tensor([8, 5, 3, 8, 6, 2, 7, 4])
    response_len = torch.tensor([6, 1, 4, 6, 2, 5, 3, 6])
    prompt_mask = (torch.arange(p) >= p - prompt_len[:, None]).long()
    response_mask = (torch.arange(r) < response_len[:, None]).long()
    ids = torch.randint(0, vocab, (bs, p + r), generator=g)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    return Batch({
        "input_ids": ids, "attention_mask": attention_mask, "position_ids": (attention_mask.cumsum(-1) - 1).clamp(min=0),
        "responses": ids[:, p:], "response_mask": response_mask,
        "old_log_probs": -8.3 + 0.05 * torch.randn(bs, r, generator=g),
        "ref_log_prob": -8.3 + 0.05 * torch.randn(bs, r, generator=g),
        "advantages": torch.randn(bs, r, generator=g) * response_mask,
        "values": 0.1 * torch.randn(bs, r, generator=g) * response_mask,
        "returns": torch.randn(bs, r, generator=g) * response_mask,
    }, {"uid": list("abcdabcd")})


@contextlib.contextmanager
def two_ranks(worker_cls, config: dict, *init_args):
    pool = ResourcePool(1, 2, "cpu", 1)
    group = WorkerGroup("test", worker_cls, pool, config)
    try:
        group.call("init_model", *init_args)
        yield group
    finally:
        group.shutdown()
        pool.release()


def update_once(group: WorkerGroup, update: str, batch: Batch, ckpt: str, save_args: tuple) -> dict:
    """Save a checkpoint to `ckpt`, then one update of `batch`. Saving first also in the runs that never load it:
    torch's optimizer state_dict gives an optimizer without state one (an Adam step with zero gradients, which
    moves nothing but counts), so every compared update is Adam's second step, with the same bias correction."""
    group.call("save_checkpoint", ckpt, *save_args)
    return {"metrics": group.dispatch_metrics(update, batch), "params": group.call("full_params")[0]}


def update_twice(group: WorkerGroup, update: str, batch: Batch, ckpt: str, save_args: tuple) -> dict:
    """`update_once` and, from the same saved state, one update of `batch` balanced over the 2 ranks."""
    out = update_once(group, update, batch, ckpt, save_args)
    group.call("load_checkpoint", ckpt)
    out["seqlen"] = {}
    balanced = _balance_batch(batch, 2, out["seqlen"], keep_groups=True)
    out["balanced_metrics"] = group.dispatch_metrics(update, balanced)
    out["balanced_params"] = group.call("full_params")[0]
    return out


@pytest.fixture(scope="module")
def actor_runs(ray_cluster, tiny_models, tmp_path_factory):
    model_dir = str(tiny_models["qwen2"])
    batch = ragged_batch(vocab=4096)
    runs = {}
    with two_ranks(ActorRolloutRefWorker, worker_config(model_dir, 2, 2, SHORT_PROMPTS), model_dir, 10, True) as group:
        runs["fixed"] = {"old": group.dispatch("compute_log_prob", batch),
                         "ref": group.dispatch("compute_ref_log_prob", batch)}
        runs["fixed"].update(update_twice(group, "update_actor", batch, str(tmp_path_factory.mktemp("a")), (None,)))
    config = worker_config(model_dir, 2, 2, DYNAMIC)
    # Set past the config check (which refuses a budget below one row): the workers' own check of the rows.
    config["actor_rollout_ref"]["ref"]["log_prob_max_token_len_per_gpu"] = 12
    with two_ranks(ActorRolloutRefWorker, config, model_dir, 10, True) as group:
        runs["dynamic"] = {"old": group.dispatch("compute_log_prob", batch)}
        with pytest.raises(UserError) as error:
            group.dispatch("compute_ref_log_prob", batch)
        runs["dynamic"]["ref_error"] = str(error.value)
        runs["dynamic"].update(update_once(group, "update_actor", batch, str(tmp_path_factory.mktemp("a")), (None,)))
    return batch, runs


@pytest.fixture(scope="module")
def critic_runs(ray_cluster, tiny_models, tmp_path_factory):
    model_dir = str(tiny_models["qwen2"])
    batch = ragged_batch(vocab=4096)
    gae = ("algorithm.adv_estimator=gae",)
    runs = {}
    with two_ranks(CriticWorker, worker_config(model_dir, 2, 2, (*gae, *SHORT_PROMPTS)), model_dir, 10) as group:
        runs["fixed"] = {"values": group.dispatch("compute_values", batch)["values"]}
        runs["fixed"].update(update_twice(group, "update_critic", batch, str(tmp_path_factory.mktemp("c")), ()))
    with two_ranks(CriticWorker, worker_config(model_dir, 2, 2, (*gae, *DYNAMIC)), model_dir, 10) as group:
        runs["dynamic"] = {"values": group.dispatch("compute_values", batch)["values"]}
        runs["dynamic"].update(update_once(group, "update_critic", batch, str(tmp_path_factory.mktemp("c")), ()))
    return batch, runs


def assert_same_params(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        # As in test_fsdp_update: the key bias's gradient is 0 in exact arithmetic, and Adam turns its float noise
        # (which depends on the micro-batch shapes) into steps of ~lr.
        atol = 1e-6 if name.endswith("k_proj.bias") else 1e-7
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=atol, msg=name)


def assert_same_update(got: dict, expected: dict, loss: str, role: str) -> None:
    # Adam's first step hardly depends on the gradient's scale, so the gradient norm (before clipping) checks the
    # scale and the parameters check the direction.
    assert got[f"{role}/grad_norm"] == pytest.approx(expected[f"{role}/grad_norm"], rel=1e-5)
    assert got[loss] == pytest.approx(expected[loss], rel=1e-5)
    assert expected[loss] != 0 and expected[f"{role}/grad_norm"] > 0


def test_dynamic_log_probs_equal_fixed_in_row_order(actor_runs):
    batch, runs = actor_runs
    fixed, dynamic = runs["fixed"]["old"], runs["dynamic"]["old"]
    mask = batch["response_mask"].bool()
    for key in ("old_log_probs", "entropys"):
        # Rows in another order would differ by far more than rounding (the rows' log-probs differ by ~0.1-1).
        torch.testing.assert_close(dynamic[key][mask], fixed[key][mask], rtol=1e-5, atol=1e-5, msg=key)
    assert fixed["old_log_probs"][mask].std() > 0.01


def test_dynamic_actor_update_equals_fixed_micro_batches(actor_runs):
    _, runs = actor_runs
    assert_same_update(runs["dynamic"]["metrics"], runs["fixed"]["metrics"], "actor/pg_loss", "actor")
    assert_same_params(runs["dynamic"]["params"], runs["fixed"]["params"])


def test_balanced_batch_gives_the_same_actor_update(actor_runs):
    _, runs = actor_runs
    fixed = runs["fixed"]
    # Lengths 14 6 7 14 | 8 7 10 10: 41 and 35 tokens in order. Groups a = 14 + 8 = 22, b = 6 + 7 = 13, c = 7 + 10 = 17,
    # d = 14 + 10 = 24 tokens: Karmarkar-Karp pairs [c | b] (spread 4) with [d | a] (2) into {c, a} = 39 and
    # {b, d} = 37, so rank 0 gets rows 0, 2, 4, 6 and rank 1 rows 1, 3, 5, 7: different rows, the same update.
    assert fixed["seqlen"]["global_seqlen/min"] == 35 and fixed["seqlen"]["global_seqlen/max"] == 41
    assert (fixed["seqlen"]["global_seqlen/balanced_min"], fixed["seqlen"]["global_seqlen/balanced_max"]) == (37, 39)
    assert_same_update(fixed["balanced_metrics"], fixed["metrics"], "actor/pg_loss", "actor")
    assert_same_params(fixed["balanced_params"], fixed["params"])


def test_a_row_longer_than_the_budget_stops_every_rank_in_one_line(actor_runs):
    _, runs = actor_runs
    # Rank 0 holds the 14-token rows, rank 1 none longer than 10: both agree on the longest and raise together (a
    # rank that went on would wait forever in the next collective), and the group still works afterwards.
    assert runs["dynamic"]["ref_error"] == (
        "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=12 is smaller than a sequence of 14 tokens (prompt + "
        "response); raise actor_rollout_ref.ref.log_prob_max_token_len_per_gpu to at least 14")
    assert math.isfinite(runs["dynamic"]["metrics"]["actor/pg_loss"])


def test_dynamic_values_and_critic_update_equal_fixed(critic_runs):
    batch, runs = critic_runs
    mask = batch["response_mask"].bool()
    torch.testing.assert_close(runs["dynamic"]["values"][mask], runs["fixed"]["values"][mask], rtol=1e-5, atol=1e-6)
    assert runs["fixed"]["values"][mask].std() > 0.01
    assert_same_update(runs["dynamic"]["metrics"], runs["fixed"]["metrics"], "critic/vf_loss", "critic")
    assert_same_params(runs["dynamic"]["params"], runs["fixed"]["params"])
    assert_same_update(runs["fixed"]["balanced_metrics"], runs["fixed"]["metrics"], "critic/vf_loss", "critic")
    assert_same_params(runs["fixed"]["balanced_params"], runs["fixed"]["params"])


# Measurements of the machine, not of the training.
TIMING_PREFIXES = ("timing_s/", "timing_per_token_ms/", "perf/throughput", "perf/time_per_step", "perf/peak_rss_gb/")


def test_gsm8k_run_metrics_equal_with_and_without_dynamic_bsz(tiny_models, gsm8k_dir, length_reward, tmp_path):
    # Two steps of the small GSM8K run through the CLI's config and input stages and the real trainer and worker, on
    # one gloo rank in this process (helpers.local_trainer: this is about configuration; the two-rank numbers are
    # the tests above). 256 tokens per micro-batch (>= 192 + 16 per row) instead of 4 rows.
    steps = {}
    for name, extra in (("fixed", []), ("dynamic", ["actor_rollout_ref.actor.use_dynamic_bsz=true",
                                                     "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=256"])):
        root = tmp_path / name
        steps[name] = in_process_run(small_run_overrides(tiny_models["qwen2"], gsm8k_dir, root, length_reward) + extra,
                                     root / "run")
    assert sorted(steps["fixed"]) == sorted(steps["dynamic"]) == [1, 2]
    for step in (1, 2):
        fixed, dynamic = steps["fixed"][step], steps["dynamic"][step]
        keys = {k for k in fixed if not k.startswith(TIMING_PREFIXES)}
        assert keys == {k for k in dynamic if not k.startswith(TIMING_PREFIXES)}
        assert "global_seqlen/balanced_max" in keys and "actor/grad_norm" in keys
        for key in sorted(keys):
            assert dynamic[key] == pytest.approx(fixed[key], rel=1e-4, abs=1e-6), (step, key)
