"""rl_trainer's speed-ups change no numbers: shared prompt prefixes (model.share_prompt_prefix), reusing the
update's forward as old_log_prob (actor.recompute_old_log_prob=false), and skipping the padding columns that every
row of a micro-batch masks, in the update, the critic and generation; and a CPU worker's allocator keeps the memory
it frees (rl_trainer.workers.common.keep_freed_memory)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import worker_config
from rl_trainer.batch import Batch
from rl_trainer.distributed import ResourcePool, WorkerGroup
from rl_trainer.workers.actor import ActorRolloutRefWorker
from rl_trainer.workers.actor import response_log_probs
from rl_trainer.workers.critic import response_values
from rl_trainer.workers.forward import prompt_groups, response_logits, unpadded_columns
from rl_trainer.workers.loading import load_value_model
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


def widened(batch: Batch, left: int, right: int) -> Batch:
    """`batch` with `left` more prompt columns and `right` more response columns, all of them padding."""
    p = batch["prompts"].shape[1]

    def pad(x, value=0):
        return torch.cat([torch.full((len(x), left), value, dtype=x.dtype), x], dim=1)

    responses = torch.cat([batch["responses"], torch.zeros(len(batch), right, dtype=torch.long)], dim=1)
    response_mask = torch.cat([batch["response_mask"], torch.zeros(len(batch), right, dtype=torch.long)], dim=1)
    out = Batch(assemble(pad(batch["prompts"]), pad(batch["attention_mask"][:, :p]), pad(batch["position_ids"][:, :p]),
                         responses, response_mask))
    for key in ("ref_log_prob", "advantages"):
        out[key] = torch.cat([batch[key], torch.zeros(len(batch), right)], dim=1)
    return out


def test_unpadded_columns_cover_every_attended_position():
    batch = grouped_batch(vocab=100)  # prompts of 8 and 5 tokens in 8 columns, responses of 1..6 tokens in 6
    assert unpadded_columns(batch["attention_mask"], 8) == (0, 14)
    assert unpadded_columns(batch["attention_mask"][4:], 8) == (3, 14)  # the rows of the 5-token prompt
    wide = widened(batch.index(slice(4, None)), left=7, right=5)
    assert unpadded_columns(wide["attention_mask"], 15) == (10, 21)
    assert unpadded_columns(torch.zeros(2, 9), 4) == (0, 5)


@pytest.mark.parametrize("share", [False, True])
def test_padding_columns_change_no_log_prob_value_or_gradient(tiny_models, share):
    """The same rows with 7 more padding columns before the prompts and 5 after the responses: the log-probs,
    entropies and critic values of every position, and the gradients, are those of the narrower batch."""
    policy = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"])
    torch.manual_seed(0)
    critic = load_value_model(str(tiny_models["qwen2"]))
    batch = grouped_batch(vocab=policy.config.vocab_size)
    results = []
    for b in (batch, widened(batch, left=7, right=5)):
        policy.zero_grad()
        log_probs, entropy = response_log_probs(policy, b, torch.device("cpu"), 0.7, True, share)
        (log_probs * b["response_mask"]).sum().backward()
        with torch.no_grad():
            values = response_values(critic, b, torch.device("cpu"))
        results.append((log_probs.detach()[:, :6], entropy[:, :6], values[:, :6], [p.grad.clone() for p in policy.parameters()]))
        if b is not batch:  # the added columns are masked: zeros, not computed
            assert not log_probs[:, 6:].any() and not entropy[:, 6:].any() and not values[:, 6:].any()
    mask = batch["response_mask"].bool()
    for narrow, wide in zip(results[0][:3], results[1][:3]):
        torch.testing.assert_close(wide[mask], narrow[mask], rtol=1e-5, atol=1e-5)
    for a, b in zip(results[0][3], results[1][3]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


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


@pytest.mark.parametrize("do_sample", [False, True])
def test_generation_ignores_prompt_padding_columns(tiny_models, do_sample):
    """Prompts left-padded to 15 columns instead of 8 give the same responses (greedy, and sampled with the same
    seed), and come back at their own width."""
    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["qwen2"])
    outputs = []
    for b in (grouped_batch(vocab=model.config.vocab_size), widened(grouped_batch(vocab=model.config.vocab_size), 7, 0)):
        p = b["prompts"].shape[1]
        prompts = Batch({"prompts": b["prompts"], "attention_mask": b["attention_mask"][:, :p],
                         "position_ids": b["position_ids"][:, :p]})
        torch.manual_seed(0)
        outputs.append(HFRollout(model, tokenizer, 12, share_prompts=True).generate(prompts, SamplingParams(do_sample)))
    narrow, wide = outputs
    assert wide["prompts"].shape[1] == 15 and torch.equal(wide["prompts"][:, 7:], narrow["prompts"])
    for key in ("responses", "response_mask"):
        assert torch.equal(wide[key], narrow[key]), key


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


def test_shuffled_mini_batches_differ_across_updates_and_repeat_on_resume():
    from rl_trainer.workers.common import mini_batches

    batch = Batch({"x": torch.arange(16)})
    order = lambda update, epoch: torch.cat([m["x"] for m in mini_batches(batch, 4, True, 7, update, epoch)]).tolist()
    assert sorted(order(0, 0)) == list(range(16))  # a permutation, split in 4 mini-batches
    assert order(0, 0) != order(1, 0)  # the next update draws another one (verl re-seeds: the same one)
    assert order(0, 0) != order(0, 1)  # so does the next epoch
    assert order(3, 1) == order(3, 1)  # a resumed run (same update count) draws the same again
    assert [m["x"].tolist() for m in mini_batches(batch, 8, False, 7, 5, 0)] == [list(range(8)), list(range(8, 16))]


FAULTS_PROBE = """
import resource, sys, torch
from rl_trainer.workers.common import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
def allocate_and_free():  # tensors of 0.5-24 MiB, as a step allocates logits, activations and gradients
    for mib in (1, 4, 16, 8, 2, 24):
        a, b = torch.empty(mib << 18).fill_(1.0), torch.empty(mib << 17).fill_(2.0)
        del a, b
allocate_and_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    allocate_and_free()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_a_cpu_worker_reuses_freed_memory_without_page_faults():
    """After keep_freed_memory (each CPU worker calls it at start-up), allocating again what was freed takes no
    new pages from the kernel; with glibc's defaults the same 20 rounds fault thousands of pages (6,144 measured),
    each zeroed and mapped by the kernel."""
    import subprocess
    import sys

    def faults(mode: str) -> tuple[str, int]:
        proc = subprocess.run([sys.executable, "-c", FAULTS_PROBE, mode], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        applied, count = proc.stdout.split()
        return applied, int(count)

    assert faults("keep") == ("True", 0)
    assert faults("default")[1] > 1000
