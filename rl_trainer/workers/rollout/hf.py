"""Rollout with a Hugging Face model on its own KV cache: batched, left-padded prompts, stop at EOS. The CPU default.

The engine holds its own unsharded copy of the model (on GPU in bf16), refreshed from the FSDP actor before
every generation, parameter by parameter, so it always samples from the actor's current weights.

It decodes in a loop of its own rather than `model.generate`; on the standard CPU workload generation went from
about 3.2 s to 1.8-2.0 s a step (docs/performance.md, on different days):
  * no work on the prompt columns that every row pads;
  * prefill once per distinct prompt (actor_rollout_ref.model.share_prompt_prefix): the rollout.n rows of a
    prompt start from copies of one prefill instead of computing it n times;
  * the KV cache reserves room for the whole sequence and appends each token in place; transformers'
    DynamicCache concatenates (re-allocates and copies) every layer's cache on every token, which inside a Ray
    worker process costs about a third of the decode time;
  * rows that have produced EOS leave the batch and the cache, so the model stops computing them;
  * each decode step runs the model's modules without transformers' per-call machinery where the architecture
    allows (rollout.native_decode; rl_trainer.workers.rollout.native_decode);
  * sampling draws one uniform number per row against the cumulative distribution (inverse-CDF sampling: the
    distribution of `torch.multinomial`, at a fraction of its CPU cost).
The logits pass through transformers' own warpers (temperature, top-k, top-p), so the distribution sampled is
`generate`'s; greedy decoding equals `generate(do_sample=False)` token for token (tests/workers/test_rollout_hf.py).
"""

from __future__ import annotations

from typing import Iterable

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer
from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

from rl_trainer.batch import Batch
from rl_trainer.errors import UserError
from rl_trainer.workers.forward import prefill_distinct_prompts, unpadded_columns, with_cache
from rl_trainer.workers.rollout.base import Rollout, SamplingParams, assemble, response_mask_from_eos
from rl_trainer.workers.rollout.native_decode import NativeDecodeStep, unsupported_reason


class HFRollout(Rollout):
    def __init__(self, model: torch.nn.Module, tokenizer, response_length: int, share_prompts: bool = False,
                 return_log_probs: bool = False, native_decode: bool | None = None):
        self.model = model.eval()
        self.native_step = _native_step(model, native_decode)
        self.share_prompts = share_prompts
        self.return_log_probs = return_log_probs  # rollout_log_probs: log-prob of each sampled token, as sampled
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.response_length = response_length
        self.pad_id = tokenizer.pad_token_id
        eos = getattr(model.generation_config, "eos_token_id", None)
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = sorted({i for i in [*eos, tokenizer.eos_token_id] if i is not None})
        self._params = dict(self.model.named_parameters(remove_duplicate=False))  # tied weights under every name

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        for name, tensor in named_tensors:
            self._params[name].copy_(tensor)

    @torch.no_grad()
    def generate(self, batch: Batch, sampling: SamplingParams) -> Batch:
        device = next(self.model.parameters()).device
        prompts = batch["prompts"].to(device)
        prompt_mask = batch["attention_mask"].to(device)
        prompt_positions = batch["position_ids"].to(device)
        # The model sees no column that every row pads (data.max_prompt_length is usually far above most prompts).
        start, _ = unpadded_columns(prompt_mask, prompt_mask.shape[1])
        rows, prompt_len = prompts.shape[0], prompts.shape[1] - start
        eos = torch.tensor(self.eos_ids, device=device)
        warpers = _warpers(sampling)

        cache, logits = self._prefill(prompts[:, start:], prompt_mask[:, start:], prompt_positions[:, start:])
        responses = torch.full((rows, self.response_length), self.pad_id, dtype=prompts.dtype, device=device)
        with_log_probs = self.return_log_probs and sampling.do_sample
        log_probs = torch.zeros((rows, self.response_length), device=device) if with_log_probs else None
        attention = torch.cat([prompt_mask[:, start:], torch.zeros_like(responses)], dim=1)
        active = torch.arange(rows, device=device)  # batch rows still generating, in cache order
        next_position = prompt_positions[:, -1] + 1
        generated = 0
        for t in range(self.response_length):
            tokens, probs = _sample(logits, warpers, sampling.do_sample)
            responses[active, t] = tokens
            if with_log_probs:
                log_probs[active, t] = probs.gather(1, tokens[:, None]).squeeze(1).log()
            attention[active, prompt_len + t] = 1
            generated = t + 1
            running = ~torch.isin(tokens, eos)
            if t + 1 == self.response_length or not running.any():
                break
            if not running.all():  # finished rows leave the batch and the cache
                keep = running.nonzero().squeeze(1)
                active, tokens = active[keep], tokens[keep]
                cache.batch_select_indices(keep)
            logits = self._decode(tokens, attention[active, : prompt_len + t + 1], next_position[active] + t, cache)
        response_mask = response_mask_from_eos(responses, self.eos_ids, generated)
        tensors = assemble(prompts, prompt_mask, prompt_positions, responses, response_mask)
        if with_log_probs:
            tensors["rollout_log_probs"] = log_probs * response_mask
        return Batch({k: v.cpu() for k, v in tensors.items()}, dict(batch.non_tensors), dict(batch.meta))

    def _decode(self, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        """The logits after one new token per row, whose keys and values join `cache`."""
        if self.native_step is not None:
            return self.native_step(tokens, mask, positions, cache)
        return self.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions[:, None],
                          **with_cache(self.model, cache)).logits[:, -1]

    def _prefill(self, prompts: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor):
        """The cache of every row's prompt and the logits after its last token; computed once per distinct prompt
        when prompts are shared (then each row gets a copy of its prompt's cache)."""
        cache = _reserved_cache(self.model.config, prompts.shape[1] + self.response_length)
        logits = prefill_distinct_prompts(self.model, prompts, mask, positions, cache) if self.share_prompts else None
        if logits is None:  # not sharing, or no prompt repeats
            logits = self.model(input_ids=prompts, attention_mask=mask, position_ids=positions, logits_to_keep=1,
                                **with_cache(self.model, cache)).logits[:, -1]
        return cache, logits


class _ReservedLayer(DynamicLayer):
    """A DynamicLayer whose keys/values are views into a buffer reserved for `capacity` positions: appending a
    token writes it in place instead of concatenating (re-allocating and copying) the whole layer cache."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            rows_heads = key_states.shape[:2]
            self.key_buffer = key_states.new_empty(*rows_heads, self.capacity, key_states.shape[-1])
            self.value_buffer = value_states.new_empty(*rows_heads, self.capacity, value_states.shape[-1])
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise ValueError(f"KV cache reserved for {self.capacity} positions, asked for {end}")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
            self.keys, self.values = self.key_buffer[:, :, : self.length], self.value_buffer[:, :, : self.length]


def _native_step(model: torch.nn.Module, native_decode: bool | None) -> NativeDecodeStep | None:
    """rollout.native_decode: null = the native decode step where the architecture has one, else transformers'
    forward; true = the native step or a one-line error; false = transformers' forward."""
    if native_decode is False:
        return None
    reason = unsupported_reason(model)
    if reason is None:
        return NativeDecodeStep(model)
    if native_decode:
        raise UserError(f"actor_rollout_ref.rollout.native_decode=true: {reason}; set it to null (use transformers' "
                        "forward for such models) or false")
    return None


def _reserved_cache(config, capacity: int) -> Cache:
    """A cache of `_ReservedLayer`s for a model whose layers all use full attention (what DynamicCache builds as
    plain DynamicLayers); any other model (sliding windows, linear attention, ...) gets transformers' DynamicCache."""
    dynamic = DynamicCache(config=config)
    if not dynamic.layers or any(type(layer) is not DynamicLayer for layer in dynamic.layers):
        return dynamic
    return Cache(layers=[_ReservedLayer(capacity) for _ in dynamic.layers])


def _warpers(sampling: SamplingParams) -> LogitsProcessorList:
    """transformers' logits warpers for the sampling parameters, in `generate`'s order (none when greedy)."""
    warpers = LogitsProcessorList()
    if not sampling.do_sample:
        return warpers
    if sampling.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k > 0:
        warpers.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    return warpers


def _sample(logits: torch.Tensor, warpers: LogitsProcessorList,
            do_sample: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One token per row, and the distribution it was drawn from (None when greedy): argmax when greedy; otherwise
    inverse-CDF sampling from softmax(warped logits).

    u ~ U(0, 1] times the total mass picks the first token whose cumulative probability reaches it, which is token i
    with probability p_i (tokens of probability 0, e.g. cut by top-k/top-p, are never picked). The cumulative sum is
    in float64 so the last tokens of a 150k vocabulary keep their mass.
    """
    if not do_sample:
        return logits.argmax(dim=-1), None
    probs = torch.softmax(warpers(None, logits.float()), dim=-1)
    cdf = probs.double().cumsum_(dim=-1)
    u = (1.0 - torch.rand(len(cdf), 1, dtype=cdf.dtype, device=cdf.device)) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(1).clamp_(max=probs.shape[-1] - 1), probs
