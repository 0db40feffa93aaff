"""LoRA with the vLLM rollout: the engine gets the merged weights (base + adapter) every step, so it samples from the
current policy (greedy = a plain HF model with the merged weights; rollout_probs_diff at the synced level).

Needs a vLLM that generates here (CI: .venv-vllm, `pytest -m vllm`); elsewhere it skips, as
tests/workers/test_rollout_vllm.py, whose helpers it uses.
"""

from __future__ import annotations

import pytest
import torch

from tests.workers.test_rollout_vllm import TEXTS, _hf_greedy, _ppo_inputs, _prompts, _worker
from tests.workers.test_rollout_vllm import model_dir  # noqa: F401 (the fixture: skips without a usable vLLM)

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
LORA = ("actor_rollout_ref.model.lora_rank=8", "actor_rollout_ref.model.lora_alpha=16")


@pytest.fixture(scope="module")
def worker(model_dir):
    w = _worker(model_dir, LORA)
    yield w
    w.shutdown()


def _merged_greedy(worker, batch) -> torch.Tensor:
    """Greedy responses of a plain Hugging Face model holding the actor's merged weights (base + adapter)."""
    return _hf_greedy(worker, batch, dict(worker.rollout_weights()))


def test_vllm_follows_the_adapter_update_by_update(worker):
    from rl_trainer.metrics import probs_diff_metrics, probs_diff_sums

    assert worker.ref is None and all(p.requires_grad == (".lora_" in n)
                                      for n, p in worker.actor.model.named_parameters())
    prompts = _prompts(worker, TEXTS)
    before = worker.generate_sequences(prompts, validate=True)
    assert torch.equal(before["responses"], _merged_greedy(worker, prompts))
    for _ in range(2):  # two strong updates of the adapters only
        sampled = worker.generate_sequences(_prompts(worker, TEXTS, n=4))
        assert worker.update_actor(_ppo_inputs(sampled, worker, advantage=1.0))["actor/grad_norm"] > 0
    after = worker.generate_sequences(prompts, validate=True)
    assert torch.equal(after["responses"], _merged_greedy(worker, prompts))
    assert not torch.equal(after["responses"], before["responses"]), "the updates must change greedy decoding"

    batch = worker.generate_sequences(_prompts(worker, TEXTS, n=4))
    batch.update(worker.compute_log_prob(batch))
    gap = probs_diff_metrics(probs_diff_sums(batch["old_log_probs"], batch["rollout_log_probs"], batch["response_mask"]))
    assert gap["training/rollout_probs_diff_mean"] < 1e-4, gap
    assert gap["training/rollout_probs_diff_max"] < 1e-3, gap
