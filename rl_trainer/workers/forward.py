"""Model forwards over generated rows (left-padded prompt ++ right-padded response): the logits that score each
response token, with the prompt computed once per group of rows that share it.

GRPO/RLOO/... batches hold `rollout.n` copies of every prompt. A prompt's hidden states do not depend on the
response that follows it (causal attention), so the forward can run the model once on each distinct prompt,
give every row a view of its prompt's key/value cache, and run the model on the response tokens only
(`actor_rollout_ref.model.share_prompt_prefix`). The logits are the same as a full forward's up to float
rounding, and so are the gradients: autograd sums each response's gradient into its prompt's one computation,
which is what the n separate prompt computations of a full forward add up to. With n=4 and GSM8K-length prompts
this removes about a third of the tokens a step pushes through the model.

Whatever the sharing, a forward runs only on the columns some row of its micro-batch attends to
(`unpadded_columns`): verl's layout left-pads every prompt to data.max_prompt_length and right-pads every response
to data.max_response_length, and on GSM8K with max_prompt_length=256 that padding would be about a fifth of the
tokens through the model. Dropping columns that every row masks changes no row's result (a masked key gets no
attention weight), only the work.
"""

from __future__ import annotations

import functools
import inspect

import torch
from transformers import DynamicCache

from rl_trainer.batch import Batch


def unpadded_columns(attention_mask: torch.Tensor, prompt_len: int) -> tuple[int, int]:
    """(start, end): the smallest column range of a left-padded prompt ++ right-padded response block that holds
    every unmasked position of every row; `start` <= prompt_len < `end`, so at least the first response column
    stays (the column range of a block with nothing unmasked is (0, prompt_len + 1))."""
    attended = attention_mask.bool().any(dim=0)
    prompt_cols = attended[:prompt_len].nonzero()
    response_cols = attended[prompt_len:].nonzero()
    start = int(prompt_cols[0]) if len(prompt_cols) else 0
    end = prompt_len + (int(response_cols[-1]) + 1 if len(response_cols) else 1)
    return start, end


def unpadded_inputs(batch: Batch, device: torch.device) -> tuple[dict[str, torch.Tensor], int]:
    """`input_ids`, `attention_mask`, `position_ids` and `responses` of a generated batch cut to its
    `unpadded_columns`, on `device`; and the number of prompt columns left."""
    prompt_len = batch.tensors["input_ids"].shape[1] - batch.tensors["responses"].shape[1]
    start, end = unpadded_columns(batch.tensors["attention_mask"], prompt_len)
    t = {k: batch.tensors[k][:, start:end].to(device) for k in ("input_ids", "attention_mask", "position_ids")}
    t["responses"] = batch.tensors["responses"][:, : end - prompt_len].to(device)
    return t, prompt_len - start


def pad_responses(x: torch.Tensor, response_len: int) -> torch.Tensor:
    """(bs, r, ...) -> (bs, response_len, ...): zeros on the right for the response columns no row attends to."""
    if x.shape[1] == response_len:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], response_len - x.shape[1], *x.shape[2:])], dim=1)


def prompt_groups(prompts: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, inverse): the first row of each distinct (prompt, mask) and, for every row, the index of its group
    in `first`. Rows are grouped by content, so any order of the batch works."""
    key = torch.cat([prompts, prompt_mask.to(prompts.dtype)], dim=1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    rows = torch.arange(len(prompts), device=prompts.device)
    first = torch.full((int(inverse.max()) + 1,), len(prompts), dtype=rows.dtype, device=rows.device)
    first = first.scatter_reduce(0, inverse, rows, reduce="amin")
    return first, inverse


def with_cache(model: torch.nn.Module, cache) -> dict:
    """The keyword arguments that hand `cache` (a transformers Cache) to `model`'s forward, with use_cache=True.

    transformers 5.24 renamed the forward's `past_key_values` to `cache` (the old name warns a FutureWarning on
    every call and goes in 5.40); older releases, and remote-code models written for them, take `past_key_values`.
    The name is read from the forward's signature, so each model gets the one it declares.
    """
    return {_cache_parameter(type(model)): cache, "use_cache": True}


@functools.lru_cache(maxsize=None)
def _cache_parameter(model_cls: type) -> str:
    params = inspect.signature(model_cls.forward).parameters  # follows the decorators' __wrapped__
    return "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"


def prefill_distinct_prompts(model: torch.nn.Module, prompts: torch.Tensor, mask: torch.Tensor,
                             positions: torch.Tensor, cache) -> torch.Tensor | None:
    """Run the model once per distinct prompt into `cache`, then give every row a copy of its prompt's keys and
    values (differentiable indexing, so gradients flow back into the one computation). Returns the logits after
    each row's last prompt token, (bs, V), in the rows' order; None, having run nothing, when no prompt repeats."""
    first, inverse = prompt_groups(prompts, mask)
    if len(first) == len(prompts):
        return None
    logits = model(input_ids=prompts[first], attention_mask=mask[first], position_ids=positions[first],
                   logits_to_keep=1, **with_cache(model, cache)).logits[:, -1]
    cache.batch_select_indices(inverse)
    return logits[inverse]


def response_logits(model: torch.nn.Module, batch: Batch, device: torch.device, share_prompts: bool) -> torch.Tensor:
    """Logits (bs, r, V) where position t scores response token t (from the position before it), for the first
    r <= R response columns: those up to the last one any row of the batch attends to (`unpadded_columns`; the
    prompt columns that every row pads are not computed either). `pad_responses` restores the full R.

    Full forward: the model over all P + R positions, keeping only the last R + 1 positions' logits
    (`logits_to_keep`). Shared prompts: one forward over the distinct prompts (its last position scores response
    token 0; `prefill_distinct_prompts`), then one over responses[:, :-1] on top of each row's copy of its prompt's
    cache. The full forward is used when no prompt repeats, or when the model recomputes activations in backward
    (Hugging Face turns the cache off under gradient checkpointing).
    """
    t, prompt_len = unpadded_inputs(batch, device)
    response_len = t["responses"].shape[1]
    if share_prompts and not (model.training and _recomputes_activations(model)):
        cache = DynamicCache(config=model.config)
        head = prefill_distinct_prompts(model, t["input_ids"][:, :prompt_len], t["attention_mask"][:, :prompt_len],
                                        t["position_ids"][:, :prompt_len], cache)
        if head is not None:
            if response_len == 1:  # the prompt pass scores the only response token
                return head[:, None]
            rest = model(input_ids=t["responses"][:, :-1], attention_mask=t["attention_mask"][:, :-1],
                         position_ids=t["position_ids"][:, prompt_len:-1], **with_cache(model, cache)).logits
            return torch.cat([head[:, None], rest], dim=1)
    logits = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"], position_ids=t["position_ids"],
                   use_cache=False, logits_to_keep=response_len + 1).logits
    return logits[:, :-1, :]


def _recomputes_activations(model: torch.nn.Module) -> bool:
    # transformers 5 renamed is_gradient_checkpointing (deprecated) to is_activation_checkpointing.
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(model, name, False))
