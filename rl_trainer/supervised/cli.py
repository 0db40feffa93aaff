"""What `python -m rl_trainer.sft` and `python -m rl_trainer.rm` share: check the composed config, load the
tokenizer and the data (every refusal before the process group forms and before anything is written), then run the
loop (rl_trainer.supervised.loop)."""

from __future__ import annotations

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
# Sections whose sub-keys are free-form (passed through to a library).
FREE_FORM = ("model.override_config", "data.apply_chat_template_kwargs")


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
    declared = OmegaConf.load(Path(CONFIG_DIR) / f"{name}.yaml")
    unknown = [k for k in unknown_keys(cfg, declared) if k not in ADDED_KEYS.get(name, ()) and k != "hydra"]
    if unknown:
        raise UserError(f"{', '.join(unknown)}: not a key of rl_trainer's {name} (configs/{name}.yaml lists them); "
                        f"drop it or fix its spelling")
    for key in ADDED_KEYS.get(name, ()):
        value = OmegaConf.select(cfg, key)
        if value is not None and not (OmegaConf.is_list(value) and all(isinstance(v, str) for v in value)):
            raise UserError(f"{key}={value} must be a list of keys, e.g. +{key}=['question']")


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
