"""Name -> function registries for advantage estimators and policy losses.

A new estimator is one decorated function: `@register_adv_est("my_est")`. The names are what users
pass as `algorithm.adv_estimator` / `actor_rollout_ref.actor.policy_loss.loss_mode`, as in verl.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

ADV_ESTIMATOR_REGISTRY: dict[str, Callable[..., Any]] = {}
POLICY_LOSS_REGISTRY: dict[str, Callable[..., Any]] = {}


def _register(registry: dict[str, Callable[..., Any]], kind: str, name: str) -> Callable:
    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in registry and registry[name] is not fn:
            raise ValueError(f"{kind} {name!r} is already registered to {registry[name].__qualname__}")
        registry[name] = fn
        return fn

    return decorator


def _lookup(registry: dict[str, Callable[..., Any]], kind: str, name: str) -> Callable[..., Any]:
    if name not in registry:
        raise ValueError(f"Unknown {kind} {name!r}; valid choices: {', '.join(sorted(registry))}")
    return registry[name]


def register_adv_est(name: str) -> Callable:
    """Decorator registering an advantage estimator under `name`."""
    return _register(ADV_ESTIMATOR_REGISTRY, "advantage estimator", name)


def get_adv_estimator_fn(name: str) -> Callable[..., Any]:
    """The estimator registered as `name`; ValueError listing the valid names otherwise."""
    return _lookup(ADV_ESTIMATOR_REGISTRY, "advantage estimator", name)


def register_policy_loss(name: str) -> Callable:
    """Decorator registering a policy loss under `name`."""
    return _register(POLICY_LOSS_REGISTRY, "policy loss", name)


def get_policy_loss_fn(name: str) -> Callable[..., Any]:
    """The policy loss registered as `name`; ValueError listing the valid names otherwise."""
    return _lookup(POLICY_LOSS_REGISTRY, "policy loss", name)


def compute_advantage(adv_estimator: str, **inputs: Any) -> tuple[Any, Any]:
    """Run the estimator `adv_estimator` on whichever of `inputs` it takes.

    The driver passes everything it has (token_level_rewards, response_mask, index, values,
    reward_baselines, gamma, lam, norm_adv_by_std_in_grpo, ...); each estimator receives only the
    arguments in its signature, so estimators keep verl's exact signatures. A missing required
    input is a TypeError naming it.
    """
    fn = get_adv_estimator_fn(adv_estimator)
    params = inspect.signature(fn).parameters
    kwargs = {k: v for k, v in inputs.items() if k in params}
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)  # verl's **kwargs: optional
    missing = [
        p.name for p in params.values()
        if p.default is inspect.Parameter.empty and p.kind not in variadic and p.name not in kwargs
    ]
    if missing:
        raise TypeError(f"advantage estimator {adv_estimator!r} needs {', '.join(missing)}")
    return fn(**kwargs)
