"""What `python -m rl_trainer.sft` and `python -m rl_trainer.rm` share: check the composed config, load the
tokenizer and the data (every refusal before the process group forms and before anything is written), then run the
loop (rl_trainer.supervised.loop)."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from rl_trainer.errors import UserError

CONFIG_DIR = str(Path(__file__).resolve().parent.parent.parent / "configs")
# Keys the older fsdp_sft_trainer command line adds with `+` (so they must not be declared in the YAML).
ADDED_KEYS = {"sft_trainer": ("data.prompt_dict_keys", "data.response_dict_keys")}
# The older fsdp_sft_trainer's optim spellings and verl 0.9.1's names of the same settings.
LEGACY_OPTIM = {"warmup_steps_ratio": "lr_warmup_steps_ratio", "lr_scheduler": "lr_scheduler_type"}
# Sections whose sub-keys are free-form (passed through to a library).
FREE_FORM = ("model.override_config", "data.apply_chat_template_kwargs")


@functools.lru_cache(maxsize=None)
def declared_config(name: str) -> DictConfig:
    """configs/<name>.yaml as shipped: its keys and defaults (read once; callers only read it)."""
    return OmegaConf.load(Path(CONFIG_DIR) / f"{name}.yaml")


def unknown_keys(cfg: Any, declared: Any, prefix: str = "") -> list[str]:
    """Dotted keys of `cfg` that `declared` (the shipped YAML) lacks."""
    out = []
    for key in cfg:
        path = f"{prefix}{key}"
        if path in FREE_FORM:
            continue
        if key not in declared:
            out.append(path)
        elif OmegaConf.is_dict(cfg[key]) and OmegaConf.is_dict(declared[key]):
            out += unknown_keys(cfg[key], declared[key], path + ".")
    return out


def check_keys(cfg: DictConfig, name: str) -> None:
    """A `+key` the trainer does not read is refused in one line (Hydra lets `+` add anything)."""
    declared = declared_config(name)
    unknown = [k for k in unknown_keys(cfg, declared) if k not in ADDED_KEYS.get(name, ()) and k != "hydra"]
    if unknown:
        raise UserError(f"{', '.join(unknown)}: not a key of rl_trainer's {name} (configs/{name}.yaml lists them); "
                        f"drop it or fix its spelling")
    for key in ADDED_KEYS.get(name, ()):
        value = OmegaConf.select(cfg, key)
        if value is not None and not (OmegaConf.is_list(value) and all(isinstance(v, str) for v in value)):
            raise UserError(f"{key}={value} must be a list of keys, e.g. +{key}=['question']")


def apply_legacy_optim(cfg: DictConfig, name: str) -> None:
    """The older fsdp_sft_trainer's `optim.warmup_steps_ratio` / `optim.lr_scheduler` set verl 0.9.1's
    `optim.lr_warmup_steps_ratio` / `optim.lr_scheduler_type` (the same warm-up int(ratio x total steps) and the same
    schedules); the two spellings at different values, where the newer one is not at its default, are refused."""
    from rl_trainer.workers.lr_schedule import LR_SCHEDULER_TYPES

    declared = declared_config(name).optim
    for old, new in LEGACY_OPTIM.items():
        value = cfg.optim[old]
        if value is None:
            continue
        if old == "lr_scheduler" and value not in LR_SCHEDULER_TYPES:
            raise UserError(f"optim.lr_scheduler={value} is not a learning-rate schedule of rl_trainer; use one of "
                            f"{list(LR_SCHEDULER_TYPES)} (verl's fsdp_sft_trainer also had wsd, not offered)")
        if old == "warmup_steps_ratio" and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise UserError(f"optim.warmup_steps_ratio={value} must be a fraction of the total steps in [0, 1]")
        newer = [(new, cfg.optim[new], declared[new])]
        if old == "lr_scheduler":
            newer.append(("warmup_style", cfg.optim.warmup_style, None))  # it would override lr_scheduler_type
        for key, current, default in newer:
            if current != default and current != value:
                raise UserError(f"optim.{old}={value} and optim.{key}={current} disagree (an older and a newer name "
                                f"of one setting); set only optim.{new}")
        cfg.optim[new] = value


# verl 0.9.1's optimizer-choice keys: the supervised trainers implement only their defaults (configs/*.yaml).
OPTIMIZER_CHOICE = ("optimizer", "optimizer_impl", "zero_indexed_step", "override_optimizer_config")


def check_optimizer_choice(cfg: DictConfig, name: str) -> None:
    """optim.optimizer / optimizer_impl / zero_indexed_step / override_optimizer_config: torch.optim.AdamW with
    zero-indexed scheduler steps (verl's defaults, declared in configs/<name>.yaml) is what the loop builds; another
    value is refused in one line."""
    declared = declared_config(name).optim
    for key in OPTIMIZER_CHOICE:
        value, supported = cfg.optim[key], declared[key]
        if value != supported:
            raise UserError(f"optim.{key}={value} is not supported by rl_trainer's supervised trainers (they use "
                            "torch.optim.AdamW with zero-indexed scheduler steps); remove it or set "
                            f"optim.{key}={supported if supported is not None else 'null'}")


def load_tokenizer(cfg: DictConfig, model_path: str) -> Any:
    from rl_trainer.workers.loading import load_tokenizer as load

    key = "model.tokenizer_path" if cfg.model.tokenizer_path else cfg.model_key
    tokenizer = load(str(cfg.model.tokenizer_path or model_path), key, cfg.model.trust_remote_code)
    if cfg.model.custom_chat_template:
        tokenizer.chat_template = cfg.model.custom_chat_template
    if not tokenizer.chat_template:
        raise UserError(f"{key}: the tokenizer has no chat template; set model.custom_chat_template")
    if tokenizer.eos_token is None:
        raise UserError(f"{key}: the tokenizer has no EOS token; pick a tokenizer that has one")
    return tokenizer


def prepare(cfg: DictConfig, name: str, task: Any) -> tuple[str, Any, list, list | None]:
    """Checks, model path, tokenizer and examples: (model path, tokenizer, train examples, val examples or None)."""
    from rl_trainer.config import resolve_device
    from rl_trainer.data.sources import resolve_data_files
    from rl_trainer.models.builtin import resolve_model_path
    from rl_trainer.supervised import loop

    check_keys(cfg, name)
    apply_legacy_optim(cfg, name)
    check_optimizer_choice(cfg, name)
    loop.check_contents(cfg)
    loop.check_batching(cfg)
    path, key = loop.resolve_model_key(cfg)
    with open_dict(cfg):
        cfg.model_key = key
        cfg.trainer.device = resolve_device(cfg.trainer.device)
        if isinstance(cfg.trainer.logger, str):
            cfg.trainer.logger = [cfg.trainer.logger]
    model_path = resolve_model_path(path, seed=cfg.trainer.seed)
    tokenizer = load_tokenizer(cfg, model_path)
    train_files = resolve_data_files(cfg.data.train_files, "data.train_files")
    train = task.load_examples(train_files, cfg, tokenizer, cfg.data.train_max_samples, "data.train_files")
    val = None
    if cfg.data.val_files:
        val_files = resolve_data_files(cfg.data.val_files, "data.val_files")
        val = task.load_examples(val_files, cfg, tokenizer, cfg.data.val_max_samples, "data.val_files")
    return model_path, tokenizer, train, val


def run(cfg: DictConfig, name: str, task: Any) -> dict[str, float]:
    """Train and return the last step's metrics (a UserError before anything is written on bad input)."""
    import datasets
    import transformers

    from rl_trainer.supervised import loop

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    model_path, tokenizer, train, val = prepare(cfg, name, task)
    loop.step_plan(cfg, len(train), int(os.environ.get("WORLD_SIZE", 1)))  # the batch arithmetic, before starting
    session = loop.Run(cfg.trainer.device)
    try:
        return loop.fit(session, task, cfg, model_path, tokenizer, train, val)
    finally:
        session.close()


def main(cfg: DictConfig, name: str, task: Any) -> None:
    """A user error ends in one line and exit status 2 (HYDRA_FULL_ERROR=1 shows the traceback)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(cfg, name, task)
    except UserError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
