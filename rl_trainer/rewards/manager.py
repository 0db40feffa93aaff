"""Turn generated responses into token-level scores: verl's "naive" and "dapo" reward managers, without Ray or
DataProto (`reward.reward_manager.name`, or its older spelling `reward_model.reward_manager`).

Each response is decoded, scored once by a function with the reward contract
`fn(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> float | dict`, and its score is
placed on its last valid token; every other position is 0. The advantage estimators then read
`token_level_scores` (GRPO/RLOO sum it over the response; GAE treats it as the reward at that step).

`dapo` is `naive` plus, as verl 0.9.1's DAPORewardManager: a scorer's number is also reported as the extra key
"acc" (a dict's "score" as "score"), so `algorithm.filter_groups.metric=acc` works with the rule scorers; and
DAPO's soft overlong punishment (`reward_model.overlong_buffer.*`, or verl 0.9.1's
`+reward_model.reward_kwargs.overlong_buffer_cfg.*` / `max_resp_len`), added to the score of every response.
verl's `batch` manager (one call of a batched user function) and `prime` (a process pool with a per-response
timeout, for code execution) are refused in one line; `naive` with a plain function gives the same scores.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rl_trainer.algos import compute_overlong_penalty
from rl_trainer.errors import UserError
from rl_trainer.rewards.registry import default_compute_score

REWARD_MANAGERS = ("naive", "dapo")
REFUSED_MANAGERS = {
    "batch": "verl's batch manager calls a batched function fn(data_sources, solution_strs, ...) once per step",
    "prime": "verl's prime manager scores in a process pool with a per-response timeout (code execution)",
}
OVERLONG_KEYS = ("enable", "len", "penalty_factor", "log")


@dataclass(frozen=True)
class OverlongBuffer:
    """DAPO's soft overlong punishment: responses longer than max_resp_len - len tokens are penalised."""

    len: int
    penalty_factor: float
    log: bool
    max_resp_len: int


def reward_manager_name(cfg: Mapping) -> str:
    """reward_model.reward_manager (verl's older spelling) when set, else reward.reward_manager.name; one of
    REWARD_MANAGERS, or a UserError naming the key."""
    legacy = cfg["reward_model"].get("reward_manager")
    key = "reward_model.reward_manager" if legacy is not None else "reward.reward_manager.name"
    name = legacy if legacy is not None else cfg["reward"]["reward_manager"]["name"]
    if name in REFUSED_MANAGERS:
        raise UserError(f"{key}={name}: rl_trainer does not implement it ({REFUSED_MANAGERS[name]}); use {key}=naive "
                        f"or dapo with custom_reward_function.path")
    if name not in REWARD_MANAGERS:
        raise UserError(f"{key}={name!r} is not valid; choose one of: {', '.join(REWARD_MANAGERS)}")
    return name


def overlong_buffer(cfg: Mapping) -> OverlongBuffer | None:
    """The overlong punishment the config asks for (None when off), from reward_model.overlong_buffer.* or verl
    0.9.1's reward_model.reward_kwargs.{overlong_buffer_cfg.*, max_resp_len} (setting both differently is an
    error). max_resp_len defaults to data.max_response_length (the DAPO recipe's value; verl 0.9.1 asserts it is
    given). Every mistake is a UserError naming the key."""
    kwargs = dict(cfg["reward_model"].get("reward_kwargs") or {})
    unknown = sorted(set(kwargs) - {"overlong_buffer_cfg", "max_resp_len"})
    if unknown:
        raise UserError(f"reward_model.reward_kwargs.{unknown[0]}: nothing in rl_trainer reads this key (only "
                        f"overlong_buffer_cfg.* and max_resp_len, for reward_manager=dapo); remove it")
    settings = _overlong_settings(dict(cfg["reward_model"]["overlong_buffer"]),
                                  dict(kwargs.get("overlong_buffer_cfg") or {}))
    if not settings["enable"]:
        return None
    prefix = "reward_model.overlong_buffer"
    if reward_manager_name(cfg) != "dapo":
        raise UserError(f"{prefix}.enable=true is read only by the dapo reward manager; set "
                        f"reward_model.reward_manager=dapo (or turn the buffer off)")
    max_resp_len = kwargs.get("max_resp_len", cfg["data"]["max_response_length"])
    length, factor = settings["len"], settings["penalty_factor"]
    if isinstance(max_resp_len, bool) or not isinstance(max_resp_len, int) or max_resp_len < 1:
        raise UserError(f"reward_model.reward_kwargs.max_resp_len={max_resp_len} must be a positive integer (tokens)")
    if isinstance(length, bool) or not isinstance(length, int) or not 0 < length <= max_resp_len:
        raise UserError(f"{prefix}.len={length} must be an integer > 0 and <= max_resp_len={max_resp_len} (the "
                        f"response budget); or set {prefix}.enable=false")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 0:
        raise UserError(f"{prefix}.penalty_factor={factor} must be a number >= 0 (the penalty at max_resp_len tokens)")
    return OverlongBuffer(length, float(factor), bool(settings["log"]), max_resp_len)


def _overlong_settings(recipe: dict, verl: dict) -> dict:
    """The recipe's reward_model.overlong_buffer.* and verl 0.9.1's overlong_buffer_cfg.* merged: a key given in
    verl's spelling wins unless the recipe's spelling set it to something else (an error)."""
    unknown = sorted(set(verl) - set(OVERLONG_KEYS))
    if unknown:
        raise UserError(f"reward_model.reward_kwargs.overlong_buffer_cfg.{unknown[0]} is not a key of DAPO's overlong "
                        f"buffer; use {', '.join(OVERLONG_KEYS)}")
    defaults = {"enable": False, "len": 0, "penalty_factor": 0.0, "log": False}
    for key, value in verl.items():
        if recipe[key] != defaults[key] and recipe[key] != value:
            raise UserError(f"reward_model.overlong_buffer.{key}={recipe[key]} and reward_model.reward_kwargs."
                            f"overlong_buffer_cfg.{key}={value} disagree; set only one of them")
        recipe[key] = value
    return recipe

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
    manager: str = "naive",
    overlong: OverlongBuffer | None = None,
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
        manager: "naive" or "dapo" (the module docstring); overlong: dapo's overlong punishment, or None.

    A row with no valid tokens is still scored (on the empty string) and, exactly like verl (which writes
    `reward_tensor[i, valid_response_length - 1]` with a length of 0), its score lands on the LAST column,
    a padding position. It is invisible to masked sums but counted by a plain `.sum(-1)`.

    Returns the scores and, for dict-returning scorers, every key besides "score" as a per-sample list (dapo: also
    "score", or "acc" for a number, and with overlong.log "overlong_reward" and "overlong", as verl). Unlike
    verl's naive manager, "score" itself is not repeated there, and a key missing from some rows is a `UserError`
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
        # valid_length 0 -> index -1: verl's behaviour, see the docstring
        scores[i, valid_length - 1] = _record_extra(result, manager, extra)
    if overlong is not None:
        _add_overlong_penalty(scores, torch.tensor(valid_lengths, dtype=torch.long), overlong, extra)
    _check_extra_complete(extra, responses.shape[0])
    return RewardOutput(scores, extra)


def _record_extra(result: float | dict, manager: str, extra: dict[str, list[Any]]) -> float:
    """A scorer's result: its score, and its other keys appended to `extra` (dapo: "score" too, "acc" for a number)."""
    if not isinstance(result, dict):
        if manager == "dapo":
            extra.setdefault("acc", []).append(result)
        return result
    for key, value in result.items():
        if key != "score" or manager == "dapo":
            extra.setdefault(key, []).append(value)
    return result["score"]


def _add_overlong_penalty(scores: torch.Tensor, lengths: torch.Tensor, overlong: OverlongBuffer,
                          extra: dict[str, list[Any]]) -> None:
    """dapo: score + penalty on each row's last valid token (rl_trainer.algos.compute_overlong_penalty)."""
    penalty = compute_overlong_penalty(lengths, overlong.max_resp_len, overlong.len, overlong.penalty_factor)
    rows = torch.arange(scores.shape[0])
    scores[rows, lengths - 1] += penalty.to(scores.device)  # length 0 -> column -1, where the score went too
    if overlong.log:
        extra["overlong_reward"] = penalty.tolist()
        extra["overlong"] = (penalty < 0).tolist()


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
