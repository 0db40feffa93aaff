"""rl_trainer.workers.forward.with_cache: the KV cache goes to a model under the name its forward declares."""

from __future__ import annotations

import warnings

import torch
from transformers import DynamicCache

from rl_trainer.workers.forward import with_cache


class _OldStyle(torch.nn.Module):  # transformers <= 5.23, and remote code written for it
    def forward(self, input_ids, past_key_values=None, use_cache=None):
        return past_key_values


class _NewStyle(torch.nn.Module):  # transformers >= 5.24 (past_key_values is a deprecated alias until 5.40)
    def forward(self, input_ids, cache=None, use_cache=None, **kwargs):
        if "past_key_values" in kwargs:
            warnings.warn("`past_key_values` is deprecated", FutureWarning)
        return cache


def test_each_model_gets_the_name_it_declares():
    cache = object()
    assert with_cache(_OldStyle(), cache) == {"past_key_values": cache, "use_cache": True}
    assert with_cache(_NewStyle(), cache) == {"cache": cache, "use_cache": True}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert _NewStyle()(None, **with_cache(_NewStyle(), cache)) is cache


def test_the_installed_transformers_fills_the_cache_without_a_future_warning(tiny_models):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"]).eval()
    cache = DynamicCache(config=model.config)
    ids = torch.tensor([[5, 6, 7]])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error", FutureWarning)
        model(input_ids=ids, attention_mask=torch.ones_like(ids), **with_cache(model, cache))
    assert cache.get_seq_length() == 3
