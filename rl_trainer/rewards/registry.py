"""Rule scorers keyed by `data_source`, and `default_compute_score` that dispatches on it.

Adding a dataset is one decorated function:

    @register_reward_fn("my_org/my_dataset")
    def compute_score(solution_str: str, ground_truth: str) -> float | dict: ...

A registered scorer is called as `fn(solution_str, ground_truth)`; like verl's built-in scorers it does
not see `extra_info` or extra kwargs. Anything that needs them belongs in a custom reward function
(`custom_reward_function.path/.name`, see `rl_trainer.rewards.custom`).
"""

from collections.abc import Callable
from typing import Any

from rl_trainer.errors import UserError
from rl_trainer.rewards import digit_shift, digit_sort, gsm8k

RuleScorer = Callable[[str, str], Any]

_REWARD_FNS: dict[str, RuleScorer] = {}


def register_reward_fn(*data_sources: str) -> Callable[[RuleScorer], RuleScorer]:
    """Decorator: score rows whose `data_source` is any of `data_sources` with the decorated function."""

    def decorator(fn: RuleScorer) -> RuleScorer:
        for data_source in data_sources:
            if data_source in _REWARD_FNS and _REWARD_FNS[data_source] is not fn:
                raise ValueError(f"register_reward_fn: data_source {data_source!r} is already registered")
            _REWARD_FNS[data_source] = fn
        return fn

    return decorator


def registered_data_sources() -> list[str]:
    return sorted(_REWARD_FNS)


def get_reward_fn(data_source: str) -> RuleScorer:
    """The rule scorer for `data_source`; `UserError` (with the registered names) when there is none."""
    try:
        return _REWARD_FNS[data_source]
    except KeyError:
        raise UserError(
            f"no rule-based reward for data_source={data_source!r} (registered: "
            f"{', '.join(registered_data_sources())}); set custom_reward_function.path and "
            f"custom_reward_function.name to a file defining "
            f"fn(data_source, solution_str, ground_truth, extra_info=None, **kwargs)"
        ) from None


def default_compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    **kwargs: Any,
) -> float | dict:
    """Score one response with the rule scorer registered for `data_source`.

    Same contract as a custom reward function. `extra_info` and `kwargs` are accepted and ignored, as in
    verl. Returns a float, or the scorer's dict unchanged (it must hold a "score" key); a list/tuple
    result is reduced to its first element, as verl does.
    """
    result = get_reward_fn(data_source)(solution_str, ground_truth)
    if isinstance(result, dict):
        return result
    if isinstance(result, int | float | bool):
        return float(result)
    return float(result[0])


register_reward_fn("openai/gsm8k")(gsm8k.compute_score)
register_reward_fn("rl_trainer/digit_shift")(digit_shift.compute_score)
register_reward_fn("rl_trainer/digit_sort")(digit_sort.compute_score)
