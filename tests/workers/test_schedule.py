"""The LR schedule (rl_trainer.workers.lr_schedule.build_lr_scheduler): warm-up, constant, cosine with min-lr, as verl 0.9.1.

The optimizer's lr is 1.0, so the scheduled lr at each step is the schedule's factor itself.
"""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from rl_trainer.errors import UserError
from rl_trainer.workers.lr_schedule import build_lr_scheduler, lr_schedule_settings


def _optim(**overrides):
    section = dict(lr=1.0, lr_warmup_steps=-1, lr_warmup_steps_ratio=0.0, lr_scheduler_type="constant",
                   warmup_style=None, min_lr_ratio=0.0, num_cycles=0.5, total_training_steps=-1)
    section.update(overrides)
    cfg = OmegaConf.create(section)
    OmegaConf.set_struct(cfg, True)  # as Hydra composes it
    return cfg


def _lrs(optim, total_steps: int, steps: int) -> list[float]:
    """The lr used by scheduler steps 0 .. steps-1, driving the scheduler as TrainState does (one step() each)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_lr_scheduler(optimizer, optim, total_steps)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def _verl_factor(step: int, warmup: int, total: int, kind: str, min_lr_ratio: float, num_cycles: float) -> float:
    """verl 0.9.1 verl/utils/torch_functional.py (get_constant_/get_cosine_schedule_with_warmup), restated."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    if kind == "constant":
        return 1.0
    progress = float(step - warmup) / float(max(1, total - warmup))
    x = math.cos(math.pi * float(num_cycles) * 2.0 * progress)
    return max(min_lr_ratio, x * (1 - min_lr_ratio) * 0.5 + (1 + min_lr_ratio) * 0.5)


def test_constant_with_warmup():
    # 4 warm-up steps: s / 4 for s < 4, then 1.
    assert _lrs(_optim(lr_warmup_steps=4), total_steps=10, steps=7) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_no_warmup_is_the_full_lr_from_step_0():
    assert _lrs(_optim(), total_steps=10, steps=3) == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("warmup_steps", [0, -1, None])
def test_zero_negative_or_null_warmup_steps_delegate_to_the_ratio(warmup_steps):
    # verl: lr_warmup_steps <= 0 (or None) -> int(ratio * total) = int(0.3 * 10) = 3 warm-up steps: 0, 1/3, 2/3, 1.
    lrs = _lrs(_optim(lr_warmup_steps=warmup_steps, lr_warmup_steps_ratio=0.3), total_steps=10, steps=5)
    assert lrs == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0, 1.0], abs=1e-15)


def test_cosine_with_min_lr():
    # w = 2, T = 10, m = 0.1, half a cycle: p = (s - 2) / 8, factor = 0.1 + 0.9 * (1 + cos(pi p)) / 2.
    #   s=1: warm-up 1/2.  s=2: p=0, 1.  s=4: p=1/4, 0.1 + 0.9 * (1 + sqrt(2)/2) / 2 = 0.868198...
    #   s=6: p=1/2, 0.1 + 0.9 / 2 = 0.55.  s=10: p=1, cos(pi) = -1, the floor 0.1.
    lrs = _lrs(_optim(lr_scheduler_type="cosine", lr_warmup_steps=2, min_lr_ratio=0.1), total_steps=10, steps=11)
    assert lrs[0] == 0.0 and lrs[1] == 0.5 and lrs[2] == 1.0
    assert lrs[4] == pytest.approx(0.1 + 0.9 * (1 + math.sqrt(2) / 2) / 2, abs=1e-15)
    assert lrs[4] == pytest.approx(0.8681980515339464, abs=1e-15)
    assert lrs[6] == pytest.approx(0.55, abs=1e-15)
    assert lrs[10] == pytest.approx(0.1, abs=1e-15)
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:]))  # decays monotonically after the warm-up


def test_cosine_full_cycle_comes_back_up():
    # num_cycles = 1, no warm-up, T = 4: factor = (1 + cos(2 pi s / 4)) / 2 = 1, 1/2, 0, 1/2, 1.
    lrs = _lrs(_optim(lr_scheduler_type="cosine", num_cycles=1.0), total_steps=4, steps=5)
    assert lrs == pytest.approx([1.0, 0.5, 0.0, 0.5, 1.0], abs=1e-15)


def test_optim_total_training_steps_wins_over_the_argument():
    # total from optim.total_training_steps = 8 (not the 100 passed); warm-up int(0.25 * 8) = 2;
    # s=5: p = 3/6 = 1/2, (1 + cos(pi/2)) / 2 = 1/2; s=8: p = 1, 0.
    optim = _optim(lr_scheduler_type="cosine", lr_warmup_steps_ratio=0.25, total_training_steps=8)
    assert lr_schedule_settings(optim, 100) == ("cosine", 2, 8)
    lrs = _lrs(optim, total_steps=100, steps=9)
    assert lrs[:2] == [0.0, 0.5] and lrs[5] == pytest.approx(0.5, abs=1e-15) and lrs[8] == pytest.approx(0.0, abs=1e-15)
    # -1 (the YAML default) falls back to the argument.
    assert lr_schedule_settings(_optim(lr_warmup_steps_ratio=0.25), 100) == ("constant", 25, 100)


@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.1, 1 / 3, 0.9])
@pytest.mark.parametrize("warmup, total, num_cycles", [(0, 1, 0.5), (3, 10, 0.5), (10, 100, 1.5), (4, 37, 0.25)])
def test_cosine_equals_verls_formula(warmup, total, num_cycles, min_lr_ratio):
    optim = _optim(lr_scheduler_type="cosine", lr_warmup_steps=warmup or -1, min_lr_ratio=min_lr_ratio,
                   num_cycles=num_cycles)
    lrs = _lrs(optim, total_steps=total, steps=total + 2)
    expected = [_verl_factor(s, warmup, total, "cosine", min_lr_ratio, num_cycles) for s in range(total + 2)]
    if min_lr_ratio == 0.0:
        assert lrs == expected  # transformers' get_cosine_schedule_with_warmup: bit-identical
    else:
        assert lrs == pytest.approx(expected, rel=0, abs=4.5e-16)  # one float64 rounding apart (docstring)


def test_verls_warmup_style_overrides_lr_scheduler_type():
    optim = _optim(lr_scheduler_type="constant", warmup_style="cosine")
    with pytest.warns(FutureWarning, match="optim.warmup_style is deprecated in verl; set optim.lr_scheduler_type=cosine"):
        assert lr_schedule_settings(optim, 4)[0] == "cosine"
    with pytest.warns(FutureWarning):
        lrs = _lrs(optim, total_steps=4, steps=3)
    assert lrs == pytest.approx([1.0, (1 + math.sqrt(2) / 2) / 2, 0.5], abs=1e-15)


def test_scheduler_state_resumes():
    optim = _optim(lr_scheduler_type="cosine", lr_warmup_steps=2, min_lr_ratio=0.1)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_lr_scheduler(optimizer, optim, 10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    resumed_optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    resumed = build_lr_scheduler(resumed_optimizer, optim, 10)
    resumed.load_state_dict(scheduler.state_dict())
    for opt, sched in ((optimizer, scheduler), (resumed_optimizer, resumed)):
        opt.step()
        sched.step()
    assert resumed.get_last_lr() == scheduler.get_last_lr() == [_verl_factor(6, 2, 10, "cosine", 0.1, 0.5)]


@pytest.mark.parametrize("overrides, message", [
    (dict(lr_scheduler_type="linear"), "actor.optim.lr_scheduler_type=linear is not a learning-rate schedule"),
    pytest.param(dict(warmup_style="wsd"), "actor.optim.warmup_style=wsd is not a learning-rate schedule",
                 marks=pytest.mark.filterwarnings("ignore:actor.optim.warmup_style is deprecated")),
    (dict(lr_scheduler_type="cosine", min_lr_ratio=1.5), "actor.optim.min_lr_ratio=1.5 must be within [0, 1]"),
])
def test_bad_schedule_is_a_one_line_error(overrides, message):
    with pytest.raises(UserError) as err:
        lr_schedule_settings(_optim(**overrides), 10, key="actor.optim")
    assert message in str(err.value) and "\n" not in str(err.value)
