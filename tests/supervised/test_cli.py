"""The older fsdp_sft_trainer's optim spellings: accepted on the command line without `+`, with verl's meaning."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from rl_trainer.errors import UserError
from rl_trainer.supervised.cli import CONFIG_DIR, apply_legacy_optim, check_optimizer_choice
from rl_trainer.workers.lr_schedule import lr_schedule_settings


def composed(name: str, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(name, overrides=list(overrides))


@pytest.mark.parametrize("name", ["sft_trainer", "rm_trainer"])
def test_older_optim_spelling_sets_the_newer_keys(name):
    # the GSM8K guides' line: optim.lr, betas, weight_decay, warmup_steps_ratio, clip_grad, lr_scheduler
    cfg = composed(name, "optim.lr=1e-5", "optim.betas=[0.9,0.95]", "optim.weight_decay=0.1",
                   "optim.warmup_steps_ratio=0.1", "optim.clip_grad=0.5", "optim.lr_scheduler=cosine")
    apply_legacy_optim(cfg, name)
    assert cfg.optim.lr_warmup_steps_ratio == 0.1 and cfg.optim.lr_scheduler_type == "cosine"
    # 250 steps: int(0.1 x 250) = 25 warm-up steps, then cosine over the 250 (the older trainer's schedule)
    assert lr_schedule_settings(cfg.optim, 250) == ("cosine", 25, 250)
    assert (cfg.optim.lr, list(cfg.optim.betas), cfg.optim.weight_decay, cfg.optim.clip_grad) == (1e-5, [0.9, 0.95],
                                                                                                   0.1, 0.5)


def test_both_spellings_agreeing_are_accepted():
    cfg = composed("sft_trainer", "optim.lr_scheduler=cosine", "optim.lr_scheduler_type=cosine",
                   "optim.warmup_steps_ratio=0.2", "optim.lr_warmup_steps_ratio=0.2")
    apply_legacy_optim(cfg, "sft_trainer")
    assert lr_schedule_settings(cfg.optim, 10) == ("cosine", 2, 10)


@pytest.mark.parametrize("overrides, match", [
    (["optim.lr_scheduler=wsd"], r"^optim\.lr_scheduler=wsd is not a learning-rate schedule"),
    (["optim.warmup_steps_ratio=1.5"], r"^optim\.warmup_steps_ratio=1\.5 must be a fraction"),
    (["optim.lr_scheduler=cosine", "optim.warmup_style=constant"],
     r"^optim\.lr_scheduler=cosine and optim\.warmup_style=constant disagree"),
    (["optim.warmup_steps_ratio=0.1", "optim.lr_warmup_steps_ratio=0.3"],
     r"^optim\.warmup_steps_ratio=0\.1 and optim\.lr_warmup_steps_ratio=0\.3 disagree.*set only optim\.lr_warmup"),
])
def test_conflicting_or_unknown_older_values_are_refused(overrides, match):
    with pytest.raises(UserError, match=match):
        apply_legacy_optim(composed("sft_trainer", *overrides), "sft_trainer")


@pytest.mark.parametrize("name", ["sft_trainer", "rm_trainer"])
def test_verls_optimizer_choice_keys_parse_and_only_the_implemented_values_pass(name):
    # verl 0.9.1's optim section (optim/fsdp.yaml) spelled out with its defaults: accepted as they are.
    check_optimizer_choice(composed(name, "optim.optimizer=AdamW", "optim.optimizer_impl=torch.optim",
                                    "optim.zero_indexed_step=true", "optim.override_optimizer_config=null"), name)
    for override, fix in (("optim.optimizer=SGD", "optim.optimizer=AdamW"),
                          ("optim.zero_indexed_step=false", "optim.zero_indexed_step=True"),
                          ("optim.override_optimizer_config={foreach:false}", "optim.override_optimizer_config=null")):
        with pytest.raises(UserError, match=rf"^{override.split('=')[0]}=.* is not supported .*; remove it or set {fix}$"):
            check_optimizer_choice(composed(name, override), name)
