"""FSDP2 data parallelism is exact: two gloo ranks with micro-batching == one process with the full batch."""

from __future__ import annotations

import pytest
import torch

from helpers import worker_config as make_config
from rl_trainer.batch import Batch
from rl_trainer.distributed import ResourcePool, WorkerGroup
from rl_trainer.workers.actor import ActorRolloutRefWorker
from rl_trainer.workers.critic import CriticWorker

pytestmark = pytest.mark.slow


def fixed_batch(vocab: int, seed: int = 0) -> Batch:
    """8 sequences: left-padded 8-token prompts, ragged right-padded 6-token responses, random PPO inputs."""
    g = torch.Generator().manual_seed(seed)
    bs, p, r = 8, 8, 6
    prompt_len = torch.tensor([8, 5, 3, 8, 6, 2, 7, 4])
    response_len = torch.tensor([6, 1, 4, 6, 2, 5, 3, 6])
    prompt_mask = (torch.arange(p) >= p - prompt_len[:, None]).long()
    response_mask = (torch.arange(r) < response_len[:, None]).long()
    ids = torch.randint(0, vocab, (bs, p + r), generator=g)
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return Batch({
        "input_ids": ids, "attention_mask": attention_mask, "position_ids": position_ids,
        "responses": ids[:, p:], "response_mask": response_mask,
        "old_log_probs": -8.3 + 0.05 * torch.randn(bs, r, generator=g),
        "ref_log_prob": -8.3 + 0.05 * torch.randn(bs, r, generator=g),
        "advantages": torch.randn(bs, r, generator=g) * response_mask,
        "values": 0.1 * torch.randn(bs, r, generator=g) * response_mask,
        "returns": torch.randn(bs, r, generator=g) * response_mask,
    })


def train_once(worker_cls, init_args, update: str, config: dict, workers: int, batch: Batch):
    pool = ResourcePool(1, workers, "cpu", 1)
    group = WorkerGroup("test", worker_cls, pool, config)
    try:
        group.call("init_model", *init_args)
        fractions = group.call("param_fraction")
        metrics = group.dispatch_metrics(update, batch)
        params = group.call("full_params")[0]
    finally:
        group.shutdown()
        pool.release()
    return params, fractions, metrics


@pytest.mark.parametrize("role", ["actor", "critic"])
def test_two_ranks_with_micro_batches_equal_one_rank_full_batch(role, ray_cluster, tiny_models):
    model_dir = str(tiny_models["qwen2"])
    batch = fixed_batch(vocab=4096)
    if role == "actor":
        cls, init, update = ActorRolloutRefWorker, (model_dir, 10, True), "update_actor"
    else:
        cls, init, update = CriticWorker, (model_dir, 10), "update_critic"
    extra = ("algorithm.adv_estimator=gae",) if role == "critic" else ()
    sharded, fractions, metrics2 = train_once(cls, init, update, make_config(model_dir, 2, 2, extra), 2, batch)
    single, _, metrics1 = train_once(cls, init, update, make_config(model_dir, 1, "null", extra), 1, batch)

    # Each rank holds half of the parameters (FSDP2 shards dim 0 of every tensor).
    assert all(0.45 < f < 0.55 for f in fractions), fractions
    assert sharded.keys() == single.keys()
    for name in single:
        # The key projection's bias has a gradient of exactly 0 in exact arithmetic (it adds q.b to every logit of a
        # query, which the softmax cancels); Adam normalises its float noise, which depends on the micro-batch's
        # shape (the forward skips the padding columns that every row of a micro-batch has), into steps of ~lr.
        atol = 1e-6 if name.endswith("k_proj.bias") else 1e-7
        torch.testing.assert_close(sharded[name], single[name], rtol=1e-5, atol=atol, msg=name)
    loss = "actor/pg_loss" if role == "actor" else "critic/vf_loss"
    assert metrics2[loss] == pytest.approx(metrics1[loss], rel=1e-5)
    assert metrics1[loss] != 0


def test_nonfinite_update_is_skipped_and_leaves_parameters_bit_equal(ray_cluster, tiny_models):
    # A NaN advantage on a valid token of rank 1's rows only: the loss there is NaN, so every rank must skip.
    model_dir = str(tiny_models["qwen2"])
    batch = fixed_batch(vocab=4096)
    batch["advantages"][5, 0] = float("nan")
    pool = ResourcePool(1, 2, "cpu", 1)
    group = WorkerGroup("test", ActorRolloutRefWorker, pool, make_config(model_dir, 2, 2))
    try:
        group.call("init_model", model_dir, 10, True)
        before = group.call("full_params")[0]
        metrics = group.dispatch_metrics("update_actor", batch)
        after = group.call("full_params")[0]
    finally:
        group.shutdown()
        pool.release()
    assert metrics["actor/skipped_steps"] == 1.0
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_nonfinite_update_stops_the_run_when_asked(ray_cluster, tiny_models):
    from rl_trainer.errors import UserError

    model_dir = str(tiny_models["qwen2"])
    batch = fixed_batch(vocab=4096)
    batch["advantages"][0, 0] = float("inf")
    pool = ResourcePool(1, 1, "cpu", 1)
    group = WorkerGroup("test", ActorRolloutRefWorker, pool,
                        make_config(model_dir, 1, "null", ("trainer.nonfinite_grad=stop",)))
    try:
        group.call("init_model", model_dir, 10, True)
        with pytest.raises(UserError, match="trainer.nonfinite_grad=stop"):
            group.dispatch_metrics("update_actor", batch)
    finally:
        group.shutdown()
        pool.release()


def test_entropy_coeff_adds_the_entropy_bonus_to_the_update(ray_cluster, tiny_models):
    # One mini-batch of 8 rows in micro-batches of 2: actor/entropy_loss is the token-mean entropy of the policy
    # before the step (the sum of the micro-batches' shares), which compute_log_prob measures with the same weights;
    # the bonus changes the update (different parameters) but not the policy loss measured before it.
    model_dir = str(tiny_models["qwen2"])
    batch = fixed_batch(vocab=4096)
    runs = {}
    for coeff in (0.0, 0.5):
        pool = ResourcePool(1, 1, "cpu", 1)
        config = make_config(model_dir, 1, 2, (f"actor_rollout_ref.actor.entropy_coeff={coeff}",))
        group = WorkerGroup("test", ActorRolloutRefWorker, pool, config)
        try:
            group.call("init_model", model_dir, 10, True)
            entropys = group.dispatch("compute_log_prob", batch)["entropys"]
            metrics = group.dispatch_metrics("update_actor", batch)
            runs[coeff] = (entropys, metrics, group.call("full_params")[0])
        finally:
            group.shutdown()
            pool.release()
    entropys, metrics, params = runs[0.5]
    mask = batch["response_mask"].float()
    assert metrics["actor/entropy_loss"] == pytest.approx(((entropys * mask).sum() / mask.sum()).item(), rel=1e-5)
    assert "actor/entropy_loss" not in runs[0.0][1]
    assert metrics["actor/pg_loss"] == pytest.approx(runs[0.0][1]["actor/pg_loss"], rel=1e-6)
    assert any(not torch.equal(params[name], runs[0.0][2][name]) for name in params)
