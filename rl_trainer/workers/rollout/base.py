"""The rollout interface: receive the actor's weights, generate responses for left-padded prompts."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable

import torch

from rl_trainer.batch import Batch


@dataclass(frozen=True)
class SamplingParams:
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 or 0: off

    @classmethod
    def from_config(cls, cfg) -> SamplingParams:
        return cls(bool(cfg.do_sample), float(cfg.temperature), float(cfg.top_p), int(cfg.top_k))


class Rollout(ABC):
    """A generation engine colocated with the actor (verl's hybrid engine)."""

    @abstractmethod
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Take the actor's current weights, one (name, full tensor) at a time."""

    @abstractmethod
    def generate(self, batch: Batch, sampling: SamplingParams) -> Batch:
        """Responses for `batch` (tensors `prompts`, `attention_mask`, `position_ids`; one row per sample).

        Returns tensors `prompts`, `responses` (right-padded to response_length), `input_ids`, `attention_mask`,
        `position_ids`, `response_mask` (1 up to and including the first EOS), with the input's non-tensor columns.
        """


def pad_prompts(batch: Batch, prompt_length: int | None, pad_id: int) -> Batch:
    """The generation inputs left-padded to `prompt_length` columns (actor_rollout_ref.rollout.prompt_length), as
    verl's agent loop pads every prompt to it: the dataset pads to data.max_prompt_length, which the config check
    keeps <= rollout.prompt_length. Added columns hold pad_id, mask 0 and position 0 (the dataset's padding);
    masked columns change no row's numbers. None or no wider: `batch` itself."""
    width = batch["prompts"].shape[1]
    if prompt_length is None or prompt_length <= width:
        return batch
    extra = prompt_length - width
    tensors = dict(batch.tensors)
    for key, fill in (("prompts", pad_id), ("attention_mask", 0), ("position_ids", 0)):
        value = tensors[key]
        tensors[key] = torch.cat([value.new_full((value.shape[0], extra), fill), value], dim=1)
    return Batch(tensors, dict(batch.non_tensors), dict(batch.meta))


def response_mask_from_eos(responses: torch.Tensor, eos_ids: list[int], generated_length: int) -> torch.Tensor:
    """1 on each response's tokens up to and including its first EOS; 0 after it and past `generated_length`."""
    is_eos = torch.isin(responses, torch.tensor(eos_ids, device=responses.device))
    after_eos = (torch.cumsum(is_eos.int(), dim=1) - is_eos.int()) > 0
    positions = torch.arange(responses.shape[1], device=responses.device)
    return (~after_eos & (positions < generated_length)).to(torch.int64)


def assemble(prompts: torch.Tensor, prompt_mask: torch.Tensor, prompt_positions: torch.Tensor,
             responses: torch.Tensor, response_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The sequence tensors of a generated batch, in verl's layout (left-padded prompt ++ right-padded response)."""
    steps = torch.arange(1, responses.shape[1] + 1, device=responses.device)
    response_positions = prompt_positions[:, -1:] + steps
    return {
        "prompts": prompts,
        "responses": responses,
        "input_ids": torch.cat([prompts, responses], dim=1),
        "attention_mask": torch.cat([prompt_mask, response_mask], dim=1),
        "position_ids": torch.cat([prompt_positions, response_positions], dim=1),
        "response_mask": response_mask,
    }
