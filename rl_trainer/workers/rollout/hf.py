"""Rollout with Hugging Face `generate`: batched, KV cache, left-padded prompts, stop at EOS. The CPU default.

The engine holds its own unsharded copy of the model (on GPU in bf16), refreshed from the FSDP actor before
every generation, parameter by parameter, so it always samples from the actor's current weights.

With `share_prompts` (actor_rollout_ref.model.share_prompt_prefix), the prefill runs once per distinct prompt and
`generate` continues from a cache that gives each of the rollout.n rows a copy of its prompt's keys/values:
the same tokens for the same random draws, with n times less prefill work.
"""

from __future__ import annotations

from typing import Iterable

import torch
from transformers import DynamicCache, GenerationConfig

from rl_trainer.batch import Batch
from rl_trainer.workers.forward import prompt_groups
from rl_trainer.workers.rollout.base import Rollout, SamplingParams, assemble, response_mask_from_eos


class HFRollout(Rollout):
    def __init__(self, model: torch.nn.Module, tokenizer, response_length: int, share_prompts: bool = False):
        self.model = model.eval()
        self.share_prompts = share_prompts
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.response_length = response_length
        self.pad_id = tokenizer.pad_token_id
        eos = getattr(model.generation_config, "eos_token_id", None)
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = sorted({i for i in [*eos, tokenizer.eos_token_id] if i is not None})
        self._params = dict(self.model.named_parameters())

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        for name, tensor in named_tensors:
            self._params[name].copy_(tensor)

    def _generation_config(self, sampling: SamplingParams) -> GenerationConfig:
        # Built from scratch: a model's own generation_config.json (repetition penalty, top_k=20, ...) must not
        # change what the trainer samples.
        kwargs = dict(max_new_tokens=self.response_length, eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
                      do_sample=sampling.do_sample, num_beams=1, use_cache=True, repetition_penalty=1.0)
        if sampling.do_sample:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p,
                          top_k=sampling.top_k if sampling.top_k > 0 else 0)
        return GenerationConfig(**kwargs)

    @torch.no_grad()
    def generate(self, batch: Batch, sampling: SamplingParams) -> Batch:
        device = next(self.model.parameters()).device
        prompts = batch["prompts"].to(device)
        prompt_mask = batch["attention_mask"].to(device)
        cache = self._shared_prefill(prompts, prompt_mask, batch["position_ids"].to(device)) if self.share_prompts else None
        out = self.model.generate(input_ids=prompts, attention_mask=prompt_mask, past_key_values=cache,
                                  generation_config=self._generation_config(sampling))
        generated = out[:, prompts.shape[1]:]
        responses = torch.full((prompts.shape[0], self.response_length), self.pad_id, dtype=prompts.dtype, device=device)
        responses[:, : generated.shape[1]] = generated
        response_mask = response_mask_from_eos(responses, self.eos_ids, generated.shape[1])
        tensors = assemble(prompts, prompt_mask, batch["position_ids"].to(device), responses, response_mask)
        return Batch({k: v.cpu() for k, v in tensors.items()}, dict(batch.non_tensors), dict(batch.meta))

    def _shared_prefill(self, prompts: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> DynamicCache | None:
        """The cache of every prompt but its last token, computed once per distinct prompt; None if none repeats.
        `generate` then runs only the last prompt token of each row before sampling."""
        first, inverse = prompt_groups(prompts, mask)
        if len(first) == len(prompts) or prompts.shape[1] < 2:
            return None
        cache = DynamicCache(config=self.model.config)
        self.model(input_ids=prompts[first, :-1], attention_mask=mask[first, :-1], position_ids=positions[first, :-1],
                   past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.batch_select_indices(inverse)
        return cache
