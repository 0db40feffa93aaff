"""rl_trainer's speed-ups change no numbers: shared prompt prefixes (model.share_prompt_prefix) and reusing the
update's forward as old_log_prob (actor.recompute_old_log_prob=false), in the update and in generation."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import worker_config
from rl_trainer.batch import Batch
from rl_trainer.distributed import ResourcePool, WorkerGroup
from rl_trainer.workers.actor import ActorRolloutRefWorker
from rl_trainer.workers.forward import prompt_groups, response_logits
from rl_trainer.workers.rollout.base import SamplingParams, assemble
from rl_trainer.workers.rollout.hf import HFRollout

OPTIMISATIONS_OFF = ("actor_rollout_ref.model.share_prompt_prefix=false", "actor_rollout_ref.actor.recompute_old_log_prob=true")
OPTIMISATIONS_ON = ("actor_rollout_ref.model.share_prompt_prefix=true", "actor_rollout_ref.actor.recompute_old_log_prob=false")


def grouped_batch(vocab: int, n: int = 4, seed: int = 0, r: int = 6) -> Batch:
    """2 prompts (left-padded, lengths 8 and 5) x n ragged responses of up to r tokens, with PPO inputs."""
    g = torch.Generator().manual_seed(seed)
    p = 8
    prompt_mask = (torch.arange(p) >= p - torch.tensor([8, 5])[:, None]).long()
    prompts = torch.randint(3, vocab, (2, p), generator=g) * prompt_mask
    prompts, prompt_mask = prompts.repeat_interleave(n, 0), prompt_mask.repeat_interleave(n, 0)
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    response_len = torch.tensor([6, 1, 4, 6, 2, 5, 3, 6])[: 2 * n].clamp(max=r)
    response_mask = (torch.arange(r) < response_len[:, None]).long()
    responses = torch.randint(3, vocab, (2 * n, r), generator=g) * response_mask
    batch = Batch(assemble(prompts, prompt_mask, positions, responses, response_mask))
    batch["ref_log_prob"] = -8.3 + 0.05 * torch.randn(2 * n, r, generator=g)
    batch["advantages"] = torch.randn(2 * n, r, generator=g) * response_mask
    return batch


def test_prompt_groups_find_repeated_prompts_in_any_order():
    batch = grouped_batch(vocab=100)
    order = torch.tensor([5, 0, 7, 2, 1, 6, 4, 3])
    prompts, mask = batch["prompts"][order], batch["attention_mask"][order, :8]
    first, inverse = prompt_groups(prompts, mask)
    assert len(first) == 2
    assert torch.equal(prompts[first][inverse], prompts)
    assert torch.equal(mask[first][inverse], mask)


@pytest.mark.parametrize("response_length", [6, 1])
def test_shared_prompt_forward_equals_full_forward_in_logits_and_gradients(tiny_models, response_length):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"])
    batch = grouped_batch(vocab=model.config.vocab_size, r=response_length)
    mask = batch["response_mask"].bool()
    results = []
    for share in (False, True):
        model.zero_grad()
        logits = response_logits(model, batch, torch.device("cpu"), share_prompts=share)
        log_probs = torch.log_softmax(logits, -1).gather(-1, batch["responses"][..., None])[..., 0]
        (log_probs * mask).sum().backward()
        results.append((logits.detach()[mask], [p.grad.clone() for p in model.parameters()]))
    (full, full_grads), (shared, shared_grads) = results
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-5)
    for a, b in zip(shared_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("do_sample", [False, True])
def test_generation_with_a_shared_prefill_gives_the_same_tokens(tiny_models, do_sample):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["qwen2"])
    batch = grouped_batch(vocab=model.config.vocab_size)
    prompts = Batch({"prompts": batch["prompts"], "attention_mask": batch["attention_mask"][:, :8],
                     "position_ids": batch["position_ids"][:, :8]})
    outputs = []
    for share in (False, True):
        torch.manual_seed(0)
        outputs.append(HFRollout(model, tokenizer, 12, share_prompts=share).generate(prompts, SamplingParams(do_sample)))
    for key in ("responses", "response_mask", "input_ids", "position_ids"):
        assert torch.equal(outputs[0][key], outputs[1][key]), key


@pytest.mark.slow
def test_three_updates_are_equal_with_every_optimisation_on_and_off(ray_cluster, tiny_models):
    """Two gloo ranks, micro-batches of 4 (one prompt group each), on-policy GRPO-style updates with KL loss on
    fixed responses: loss, KL, entropy, grad norm per update and the final parameters agree."""
    model_dir = str(tiny_models["qwen2"])
    batch = grouped_batch(vocab=4096)
    runs = {}
    for name, switches in (("off", OPTIMISATIONS_OFF), ("on", OPTIMISATIONS_ON)):
        config = worker_config(model_dir, 2, 4, switches)
        pool = ResourcePool(1, 2, "cpu", 1)
        group = WorkerGroup("test", ActorRolloutRefWorker, pool, config)
        try:
            group.call("init_model", model_dir, 10, True)
            initial = group.call("full_params")[0]
            history = []
            for _ in range(3):
                step = Batch(dict(batch.tensors))
                if name == "off":
                    step.update(group.dispatch("compute_log_prob", step))
                    entropy = float((step["entropys"] * step["response_mask"]).sum() / step["response_mask"].sum())
                metrics = group.dispatch_metrics("update_actor", step)
                if name == "off":
                    metrics["actor/entropy"] = entropy
                history.append(metrics)
            runs[name] = (history, group.call("full_params")[0])
        finally:
            group.shutdown()
            pool.release()
    (off, off_params), (on, on_params) = runs["off"], runs["on"]
    for before, after in zip(off, on):
        for key in ("actor/pg_loss", "actor/kl_loss", "actor/grad_norm", "actor/entropy"):
            assert after[key] == pytest.approx(before[key], rel=1e-4, abs=1e-7), key
    assert off[0]["actor/pg_loss"] != 0 and off[-1]["actor/kl_loss"] > 0
    # Adam turns float noise in a near-zero gradient into a step of up to ~lr (1e-4) on that element, so the
    # parameters are compared through their updates: each tensor's update agrees to 1e-3 of its size.
    for name in off_params:
        d_on, d_off = on_params[name] - initial[name], off_params[name] - initial[name]
        assert (d_on - d_off).norm() <= 1e-3 * d_off.norm() + 1e-9, name
        torch.testing.assert_close(d_on, d_off, rtol=0, atol=2e-5, msg=name)
    assert any(not torch.equal(off_params[name], initial[name]) for name in initial)
