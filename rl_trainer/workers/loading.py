"""Loading models and tokenizers with `from_pretrained` (hub id or local directory), with one-line errors.

Only the errors that mean "this is not something from_pretrained can read" become a one-line UserError: OSError
(missing directory or file, invalid hub id, unreadable config.json) and ValueError from reading a config or a
tokenizer (no or unknown `model_type`, no tokenizer files, remote code not trusted), a model type the Auto class
has no head for, and SafetensorError (a corrupt weights file). Anything else -- out of memory, a bug in model
code, an interrupt -- propagates with its traceback.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, AutoTokenizer)

from rl_trainer.errors import UserError

# What from_pretrained raises for a path it cannot read as a config / tokenizer (see the module docstring).
_UNREADABLE_FILES = (OSError, ValueError)
# For the weights, after the config was read: a ValueError there comes from model code, so it propagates.
_UNREADABLE_WEIGHTS = (OSError, SafetensorError)


def _explain(path: str, key: str, exc: Exception) -> UserError:
    where = "local directory" if os.path.isdir(os.path.expanduser(path)) else "hub id or local directory"
    return UserError(f"{key}={path}: cannot load it as a Hugging Face {where} ({type(exc).__name__}: "
                     f"{str(exc).splitlines()[0] if str(exc) else ''}); pass a model directory or hub id that "
                     f"from_pretrained can read")


def load_tokenizer(path: str, key: str = "actor_rollout_ref.model.path", trust_remote_code: bool = False):
    try:
        tokenizer = AutoTokenizer.from_pretrained(os.path.expanduser(path), trust_remote_code=trust_remote_code)
    except _UNREADABLE_FILES as exc:
        raise _explain(path, key, exc) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def special_token_ids(tokenizer) -> dict:
    """The bos/eos/pad token ids of a tokenizer from load_tokenizer (pad = eos where it has none): what verl's
    HFModelConfig writes into a model's config from the model's tokenizer_path."""
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def _model_config(path: str, key: str, trust_remote_code: bool, override_config: dict | None):
    try:
        config = AutoConfig.from_pretrained(os.path.expanduser(path), trust_remote_code=trust_remote_code)
    except _UNREADABLE_FILES as exc:
        raise _explain(path, key, exc) from exc
    for name, value in (override_config or {}).items():
        setattr(config, name, value)
    return config


def _from_pretrained(auto_cls, path: str, key: str, config, dtype: torch.dtype, trust_remote_code: bool,
                     gradient_checkpointing: bool) -> Any:
    remote = auto_cls.__name__ in (getattr(config, "auto_map", None) or {}) and trust_remote_code
    if not remote and type(config) not in auto_cls._model_mapping:
        raise UserError(f"{key}={path}: its model type {config.model_type!r} has no {auto_cls.__name__} in "
                        f"transformers; pass a model whose architecture has one (e.g. a Llama or Qwen2 decoder)")
    try:
        model = auto_cls.from_pretrained(os.path.expanduser(path), config=config, dtype=dtype,
                                         trust_remote_code=trust_remote_code)
    except _UNREADABLE_WEIGHTS as exc:
        raise _explain(path, key, exc) from exc
    if gradient_checkpointing:  # transformers 5.23's name; the old one (all that releases before it have) warns there
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def load_causal_lm(path: str, *, key: str = "actor_rollout_ref.model.path", dtype: torch.dtype = torch.float32,
                   trust_remote_code: bool = False, override_config: dict | None = None,
                   gradient_checkpointing: bool = False) -> Any:
    config = _model_config(path, key, trust_remote_code, override_config)
    return _from_pretrained(AutoModelForCausalLM, path, key, config, dtype, trust_remote_code, gradient_checkpointing)


def load_value_model(path: str, *, key: str = "critic.model.path", dtype: torch.dtype = torch.float32,
                     trust_remote_code: bool = False, override_config: dict | None = None,
                     gradient_checkpointing: bool = False) -> Any:
    """The LM backbone with a scalar head (verl: AutoModelForTokenClassification, num_labels=1).

    From a causal-LM checkpoint the head is new and initialised from the current torch seed; call
    `seed_everything` first so every rank builds the same head.
    """
    config = _model_config(path, key, trust_remote_code, override_config)
    config.num_labels = 1
    config.classifier_dropout = 0.0
    return _from_pretrained(AutoModelForTokenClassification, path, key, config, dtype, trust_remote_code,
                            gradient_checkpointing)


def init_reward_model(path: str, *, key: str = "model.path", pad_token_id: int | None = None,
                      dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
                      override_config: dict | None = None, gradient_checkpointing: bool = False) -> Any:
    """A sequence classifier with one label, to train as a reward model (python -m rl_trainer.rm; the PPO
    scoring side is `load_reward_model`): the score of a sequence is the head's output at its
    last token that is not padding (transformers' pooling, so a saved model scores the same after
    `AutoModelForSequenceClassification.from_pretrained`). From a causal-LM checkpoint the `score` head is new,
    initialised from the current torch seed (call `seed_everything` first so every rank builds the same one).
    `pad_token_id` fills the config's when it has none (the pooling needs it for batches of several rows)."""
    config = _model_config(path, key, trust_remote_code, override_config)
    config.num_labels = 1
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = pad_token_id
    return _from_pretrained(AutoModelForSequenceClassification, path, key, config, dtype, trust_remote_code,
                            gradient_checkpointing)


RM_TRAINING_HINT = ("train one from it with `python -m rl_trainer.rm model.partial_pretrain=PATH "
                    "data.train_files=PAIRS.parquet` and pass its huggingface export, or pass a folder saved from "
                    "AutoModelForSequenceClassification with num_labels=1")


def reward_model_config(path: str, *, key: str = "reward_model.model.path", trust_remote_code: bool = False,
                        override_config: dict | None = None):
    """The reward model's Hugging Face config, refused in one line when the folder says it is not a one-label
    classifier: a causal LM (architectures ending in ForCausalLM / LMHeadModel, no score head) or a head of several
    labels. The weights are checked when loaded (`load_reward_model`)."""
    config = _model_config(path, key, trust_remote_code, override_config)
    architectures = list(getattr(config, "architectures", None) or [])
    generative = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
    if architectures and all(a.endswith(generative) for a in architectures):
        raise UserError(f"{key}={path} is a causal LM ({', '.join(architectures)}) without a score head, not a "
                        f"reward model; {RM_TRAINING_HINT}")
    if any(a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in architectures) \
            and config.num_labels != 1:
        raise UserError(f"{key}={path}: its score head has {config.num_labels} labels; a reward model has one "
                        f"(num_labels=1): {RM_TRAINING_HINT}")
    return config


def load_reward_model(path: str, *, key: str = "reward_model.model.path", dtype: torch.dtype = torch.float32,
                      trust_remote_code: bool = False, override_config: dict | None = None) -> Any:
    """The reward model as verl's RewardModelWorker builds it: AutoModelForTokenClassification with num_labels=1 and
    no classifier dropout, so the forward gives a score at every position and the caller reads the one it wants.

    A decoder's AutoModelForSequenceClassification (Qwen2, Llama, ...) is that same backbone and one-label `score`
    head, without a bias: for its checkpoints the head is built without one (`token_classification_bias`), so the
    weights load exactly and the score at a sequence's last token is what AutoModelForSequenceClassification gives
    for it. Every weight of the model must come from the checkpoint: a missing one (a causal LM has no `score`) or
    one the model has no place for is refused in one line rather than initialised at random."""
    config = reward_model_config(path, key=key, trust_remote_code=trust_remote_code, override_config=override_config)
    config.num_labels = 1
    config.classifier_dropout = 0.0
    architectures = list(getattr(config, "architectures", None) or [])
    config.token_classification_bias = any(a.endswith("ForTokenClassification") for a in architectures)
    remote = "AutoModelForTokenClassification" in (getattr(config, "auto_map", None) or {}) and trust_remote_code
    if not remote and type(config) not in AutoModelForTokenClassification._model_mapping:
        raise UserError(f"{key}={path}: its model type {config.model_type!r} has no AutoModelForTokenClassification in "
                        f"transformers; pass a reward model whose architecture has one (e.g. a Llama or Qwen2 decoder)")
    try:
        model, info = AutoModelForTokenClassification.from_pretrained(
            os.path.expanduser(path), config=config, dtype=dtype, trust_remote_code=trust_remote_code,
            output_loading_info=True)
    except _UNREADABLE_WEIGHTS as exc:
        raise _explain(path, key, exc) from exc
    missing, unexpected = sorted(info.get("missing_keys") or []), sorted(info.get("unexpected_keys") or [])
    if missing or unexpected:
        what = "; ".join(f"{name}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                         for name, keys in (("missing", missing), ("unexpected", unexpected)) if keys)
        no_head = any(k.split(".")[0] == "score" for k in missing)
        raise UserError(f"{key}={path}: its weights do not fit a one-label reward model ({what})"
                        + (f"; it has no trained score head: {RM_TRAINING_HINT}" if no_head else ""))
    return model
