"""Turn generated responses into token-level scores (verl's "naive" reward manager, without Ray or DataProto).

Each response is decoded, scored once by a function with the reward contract
`fn(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float | dict`, and its score is
placed on its last valid token; every other position is 0. The advantage estimators then read
`token_level_scores` (GRPO/RLOO sum it over the response; GAE treats it as the reward at that step).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rl_trainer.errors import UserError
from rl_trainer.rewards.registry import default_compute_score

ScoreFn = Callable[..., float | dict]


@dataclass
class RewardOutput:
    token_level_scores: torch.Tensor
    """(bs, response_length) float32: the score on each row's last valid token, 0 elsewhere."""
    reward_extra_info: dict[str, list[Any]] = field(default_factory=dict)
    """Keys a scorer returned besides "score", one value per sample (for metrics)."""


def compute_token_level_scores(
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    data_sources: Sequence[str],
    ground_truths: Sequence[Any],
    tokenizer: Any,
    extra_infos: Sequence[dict | None] | None = None,
    compute_score: ScoreFn | None = None,
) -> RewardOutput:
    """Score every response and put the score on its last valid token.

    Args:
        responses: (bs, response_length) token ids, right-padded.
        response_mask: (bs, response_length), 1 on valid (generated) tokens, 0 on padding. As in verl the
            valid tokens are taken to be the first `response_mask[i].sum()` ones.
        data_sources, ground_truths: one per row (the parquet's `data_source` and
            `reward_model.ground_truth`).
        tokenizer: anything with `decode(ids, skip_special_tokens=True)`; EOS/pad never reach the scorer.
        extra_infos: one dict (or None -> {}) per row, passed to the scorer as `extra_info`.
        compute_score: the scorer; None means `default_compute_score` (rule scorers by data_source).

    A row with no valid tokens is still scored (on the empty string) and, exactly like verl (which writes
    `reward_tensor[i, valid_response_length - 1]` with a length of 0), its score lands on the LAST column,
    a padding position. It is invisible to masked sums but counted by a plain `.sum(-1)`.

    Returns the scores and, for dict-returning scorers, every key besides "score" as a per-sample list.
    Unlike verl, "score" itself is not repeated there, and a key missing from some rows is a `UserError`
    (verl would silently return lists shorter than the batch).
    """
    _check_columns(responses, response_mask, data_sources=data_sources, ground_truths=ground_truths,
                   extra_infos=extra_infos)
    score_fn = compute_score or default_compute_score
    scores = torch.zeros(responses.shape, dtype=torch.float32, device=responses.device)
    extra: dict[str, list[Any]] = {}
    valid_lengths = response_mask.sum(dim=-1).tolist()
    for i in range(responses.shape[0]):
        valid_length = int(valid_lengths[i])
        text = tokenizer.decode(responses[i, :valid_length].tolist(), skip_special_tokens=True)
        extra_info = dict(extra_infos[i] or {}) if extra_infos is not None else {}
        result = score_fn(
            data_source=data_sources[i], solution_str=text, ground_truth=ground_truths[i], extra_info=extra_info
        )
        if isinstance(result, dict):
            reward = result["score"]
            for key, value in result.items():
                if key != "score":
                    extra.setdefault(key, []).append(value)
        else:
            reward = result
        scores[i, valid_length - 1] = reward  # valid_length 0 -> index -1: verl's behaviour, see docstring
    _check_extra_complete(extra, responses.shape[0])
    return RewardOutput(scores, extra)


def _check_columns(responses: torch.Tensor, response_mask: torch.Tensor, **columns: Sequence | None) -> None:
    if response_mask.shape != responses.shape:
        raise ValueError(f"response_mask {tuple(response_mask.shape)} and responses {tuple(responses.shape)} differ")
    for name, column in columns.items():
        if column is not None and len(column) != responses.shape[0]:
            raise ValueError(f"{name} has {len(column)} entries for a batch of {responses.shape[0]} responses")


def _check_extra_complete(extra: dict[str, list[Any]], batch_size: int) -> None:
    for key, values in extra.items():
        if len(values) != batch_size:
            raise UserError(
                f"reward function returned key {key!r} for {len(values)} of {batch_size} responses; "
                f"return the same dict keys for every response"
            )
