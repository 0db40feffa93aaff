"""The learning-rate schedule of a verl `optim` section: its settings (checked by the driver before anything
starts, rl_trainer.config.check_optim) and the scheduler the workers build from them (rl_trainer.workers.fsdp.
TrainState). No torch or transformers at import: the driver's config stage imports this module."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from rl_trainer.errors import UserError

if TYPE_CHECKING:
    import torch

LR_SCHEDULER_TYPES = ("constant", "cosine")


def lr_schedule_settings(optim: Any, total_steps: int, key: str = "optim") -> tuple[str, int, int]:
    """(scheduler type, warm-up steps, total steps) of a verl `optim` section, resolved as verl 0.9.1 does.

    total: `optim.total_training_steps` when set (> 0), else `total_steps` (the trainer's step count).
    warm-up: `lr_warmup_steps` when > 0; None, 0 or negative delegate to int(lr_warmup_steps_ratio * total).
    type: verl's deprecated `warmup_style`, when set, overrides `lr_scheduler_type`. `key` names the section in
    errors (e.g. "actor_rollout_ref.actor.optim").
    """
    total = getattr(optim, "total_training_steps", None)
    total = int(total) if total is not None and total > 0 else int(total_steps)
    warmup = optim.lr_warmup_steps
    if warmup is None or warmup <= 0:
        warmup = int(optim.lr_warmup_steps_ratio * total)
    kind, kind_key = optim.lr_scheduler_type, "lr_scheduler_type"
    legacy = getattr(optim, "warmup_style", None)
    if legacy is not None:
        kind, kind_key = legacy, "warmup_style"
        warnings.warn(f"{key}.warmup_style is deprecated in verl; set {key}.lr_scheduler_type={legacy} instead",
                      FutureWarning, stacklevel=2)
    if kind not in LR_SCHEDULER_TYPES:
        raise UserError(f"{key}.{kind_key}={kind} is not a learning-rate schedule; use one of {list(LR_SCHEDULER_TYPES)}")
    if not 0.0 <= optim.min_lr_ratio <= 1.0:
        raise UserError(f"{key}.min_lr_ratio={optim.min_lr_ratio} must be within [0, 1] (the floor as a fraction of lr)")
    return kind, warmup, total


def build_lr_scheduler(optimizer: torch.optim.Optimizer, optim: Any, total_steps: int,
                       key: str = "optim") -> torch.optim.lr_scheduler.LambdaLR:
    """verl 0.9.1's LR schedule (verl/utils/torch_functional.py), built from transformers' schedulers.

    With w warm-up steps, T total steps, min-lr ratio m and c cycles, the factor on `lr` at scheduler step s is
        s / max(1, w)                                         for s < w
        constant: 1;   cosine: m + (1 - m) * 0.5 * (1 + cos(2 pi c p)),  p = (s - w) / max(1, T - w)
    constant is transformers.get_constant_schedule_with_warmup and cosine with m = 0 is
    transformers.get_cosine_schedule_with_warmup, both bit-identical to verl's. Where we knowingly differ: cosine
    with m > 0 is transformers.get_cosine_with_min_lr_schedule_with_warmup, whose factor equals verl's
    `max(m, cos * (1 - m) / 2 + (1 + m) / 2)` up to one float64 rounding (at most 2.2e-16, far below the fp32
    precision of the parameters it scales). verl's `zero_indexed_step=False` (torchtitan) is not offered.
    """
    import transformers  # here, not at the top: the driver's config check reads lr_schedule_settings without it

    kind, warmup, total = lr_schedule_settings(optim, total_steps, key)
    if kind == "constant":
        return transformers.get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)
    if optim.min_lr_ratio == 0.0:
        return transformers.get_cosine_schedule_with_warmup(
            optimizer, num_warmup_steps=warmup, num_training_steps=total, num_cycles=optim.num_cycles)
    return transformers.get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=warmup, num_training_steps=total, num_cycles=optim.num_cycles,
        min_lr_rate=optim.min_lr_ratio)
