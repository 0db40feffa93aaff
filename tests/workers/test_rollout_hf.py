"""The HF rollout's decode loop against transformers' own `generate` and the model's probabilities."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from rl_trainer.batch import Batch
from rl_trainer.errors import UserError
from rl_trainer.workers.forward import with_cache
from rl_trainer.workers.rollout.base import SamplingParams
from rl_trainer.workers.rollout.hf import HFRollout, _reserved_cache
from rl_trainer.workers.rollout.native_decode import NativeDecodeStep


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_models):
    return AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"]).eval(), AutoTokenizer.from_pretrained(tiny_models["qwen2"])


def prompts_batch(tokenizer, texts: list[str], n: int) -> Batch:
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    mask = enc.attention_mask.repeat_interleave(n, 0)
    return Batch({"prompts": enc.input_ids.repeat_interleave(n, 0), "attention_mask": mask,
                  "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)})


def hf_generate(model, batch: Batch, eos: list[int], pad: int, length: int) -> torch.Tensor:
    config = GenerationConfig(max_new_tokens=length, do_sample=False, eos_token_id=eos, pad_token_id=pad)
    out = model.generate(input_ids=batch["prompts"], attention_mask=batch["attention_mask"], generation_config=config)
    generated = out[:, batch["prompts"].shape[1]:]
    return torch.nn.functional.pad(generated, (0, length - generated.shape[1]), value=pad)


@pytest.mark.parametrize("share_prompts, n, native", [(False, 2, None), (True, 2, None), (True, 1, None), (True, 2, False)])
def test_greedy_decoding_equals_generate_token_for_token_with_early_eos(model_and_tokenizer, share_prompts, n, native):
    model, tokenizer = model_and_tokenizer
    # Prompts out of sorted order, repeated n times (n=1: nothing to share, as in validation).
    batch = prompts_batch(tokenizer, ["Natalia sold clips to 48 of her friends.", "How many?", "2 + 2 = 4; 3 + 3 ="], n)
    free = hf_generate(model, batch, [tokenizer.eos_token_id], tokenizer.pad_token_id, 24)
    # Make a token that greedy decoding emits mid-way in some rows the EOS, so rows finish at different steps.
    stop = int(free[0, 5])
    model.generation_config.eos_token_id = [stop]
    try:
        rollout = HFRollout(model, tokenizer, 24, share_prompts=share_prompts, native_decode=native)
        assert (rollout.native_step is not None) == (native is None)  # Qwen2 has the native decode step
        ours = rollout.generate(batch, SamplingParams(do_sample=False))
        reference = hf_generate(model, batch, rollout.eos_ids, tokenizer.pad_token_id, 24)
    finally:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    lengths = ours["response_mask"].sum(-1)
    assert lengths.min() < 24 and lengths.max() > lengths.min(), lengths  # early and ragged stops happened
    assert torch.equal(ours["responses"], reference)
    first_stop = (ours["responses"] == stop).int().argmax(-1)
    assert torch.equal(lengths[lengths < 24], first_stop[lengths < 24] + 1)


@pytest.mark.parametrize("sampling", [SamplingParams(temperature=0.7, top_k=3), SamplingParams(temperature=0.2, top_p=0.5)])
def test_sampling_draws_from_the_warped_model_distribution(model_and_tokenizer, sampling):
    model, tokenizer = model_and_tokenizer
    draws = 4000
    batch = prompts_batch(tokenizer, ["Natalia sold clips"], draws)
    torch.manual_seed(0)
    first = HFRollout(model, tokenizer, 1, share_prompts=True).generate(batch, sampling)["responses"][:, 0]
    with torch.no_grad():
        logits = model(input_ids=batch["prompts"][:1], attention_mask=batch["attention_mask"][:1]).logits[0, -1]
    from rl_trainer.workers.rollout.hf import _warpers

    probs = torch.softmax(_warpers(sampling)(None, logits[None].float())[0], -1)
    allowed = probs > 0
    assert 2 <= allowed.sum() < len(probs) and allowed[first].all()  # never a token the warpers cut
    counts = torch.bincount(first, minlength=len(probs)).double()
    sigma = (draws * probs * (1 - probs)).sqrt()
    assert ((counts - draws * probs).abs() <= 4.5 * sigma + 1).all()


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_native_decode_step_equals_the_model_forward(tiny_models, arch):
    """Logits and cache of 6 decode steps after a left-padded prefill: the native step against the model's forward
    (Qwen2: q/k/v biases, tied head; Llama: no biases, its own head)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch]).eval()
    g = torch.Generator().manual_seed(0)
    mask = (torch.arange(7) >= torch.tensor([0, 3, 5])[:, None]).long()
    prompts = torch.randint(3, model.config.vocab_size, (3, 7), generator=g) * mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    step = NativeDecodeStep(model)
    caches, logits = [], []
    with torch.no_grad():
        for _ in range(2):
            caches.append(_reserved_cache(model.config, 16))
            model(input_ids=prompts, attention_mask=mask, position_ids=positions, **with_cache(model, caches[-1]))
        for t in range(6):
            tokens = torch.randint(3, model.config.vocab_size, (3,), generator=g)
            mask = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], dim=1)
            pos = positions[:, -1] + t + 1
            reference = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=pos[:, None],
                              **with_cache(model, caches[0])).logits[:, -1]
            torch.testing.assert_close(step(tokens, mask, pos, caches[1]), reference, rtol=1e-5, atol=1e-5)
    for a, b in zip(caches[0].layers, caches[1].layers):
        torch.testing.assert_close(b.keys, a.keys)
        torch.testing.assert_close(b.values, a.values)


def test_native_decode_true_refuses_another_architecture():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=64, n_positions=32))
    with pytest.raises(UserError, match=r"rollout.native_decode=true: GPT2LMHeadModel .*set it to null"):
        HFRollout(model, _Tokenizer(), 4, native_decode=True)
    assert HFRollout(model, _Tokenizer(), 4).native_step is None  # null: transformers' forward for this model


class _Tokenizer:
    pad_token_id = eos_token_id = 0


def test_native_decode_config_takes_null_true_or_false(tiny_models):
    from helpers import worker_config

    with pytest.raises(UserError, match=r"actor_rollout_ref.rollout.native_decode='auto' is not valid; choose null"):
        worker_config(tiny_models["qwen2"], 1, 4, ["actor_rollout_ref.rollout.native_decode=auto"])
