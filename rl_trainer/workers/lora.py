"""LoRA on PEFT: wrapping a model with adapters (verl 0.9.1's `model.lora_rank` keys), and the weights that leave it.

A LoRA model here is a `peft.PeftModel` around the Hugging Face model, sharded with FSDP2 like any other (the frozen
base and the adapters both sharded). Three views of it leave the worker:
- `merged_full_params`: (plain Hugging Face name, base + scaling * B @ A) for every weight, gathered one at a time:
  what the rollout engines load every step and what the HF export writes (a model `from_pretrained` reads with
  no PEFT installed);
- `adapter_full_state`: the adapter's own tensors (and a value head trained next to them), for PEFT's
  `save_pretrained` format (`PeftModel.from_pretrained` loads it);
- the reference policy: the same model under `model.disable_adapter()` (verl's ref-in-actor).

Where we knowingly differ from verl: the critic's adapters use PEFT's TOKEN_CLS task, so its freshly initialised
value head trains in full next to them (verl wraps the critic as a CAUSAL_LM task, which leaves the head frozen).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from omegaconf import OmegaConf

from rl_trainer.errors import UserError
from rl_trainer.workers import fsdp

ADAPTER = "default"  # PEFT's name of the one adapter
ADAPTER_DIR = "lora_adapter"
VALUE_HEADS = ("score", "classifier")  # a token-classification model's head (PEFT's TOKEN_CLS modules_to_save)  # the adapter's folder inside an HF export (verl's model merger writes the same name)


@dataclass(frozen=True)
class LoraSettings:
    """A model section's LoRA keys; `section` is its dotted config path (e.g. actor_rollout_ref.model)."""

    section: str
    rank: int
    alpha: float
    target_modules: str | list[str]
    exclude_modules: str | list[str] | None
    adapter_path: str | None
    gradient_checkpointing: bool = False

    @classmethod
    def from_config(cls, model_cfg: Any, section: str) -> "LoraSettings":
        plain = lambda v: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v  # noqa: E731
        path = model_cfg.get("lora_adapter_path")
        return cls(section, model_cfg.lora_rank, model_cfg.lora_alpha, plain(model_cfg.target_modules),
                   plain(model_cfg.exclude_modules), os.path.expanduser(path) if path else None,
                   bool(model_cfg.enable_gradient_checkpointing))


def enabled(model_cfg: Any) -> bool:
    """LoRA is on with lora_rank > 0 or a lora_adapter_path (then the adapter's own rank, alpha and targets apply).

    verl 0.9.1 differs knowingly: its trainer treats lora_adapter_path alone as LoRA (the reference comes from the
    actor with adapters disabled, and its example run_qwen2_5-3b_gsm8k_grpo_lora_from_adapter.sh sets only the
    path), but its FSDP engine loads the adapter only with lora_rank > 0; here the adapter is always loaded."""
    return model_cfg.lora_rank > 0 or model_cfg.get("lora_adapter_path") is not None


def _linear_names(model: torch.nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def check_targets(model: torch.nn.Module, settings: LoraSettings) -> None:
    """Every name in target_modules (PEFT's rule: the module's name or its last dotted parts) names a module of the
    model; a regex string must match one. The error lists the model's linear module names."""
    targets = settings.target_modules
    if targets == "all-linear":
        return
    names = [name for name, _ in model.named_modules() if name]
    suffixes = sorted({name.rsplit(".", 1)[-1] for name in _linear_names(model)})
    if isinstance(targets, str):
        missing = [] if any(re.fullmatch(targets, n) for n in names) else [targets]
    else:
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise UserError(f"{settings.section}.target_modules names no module of the model: {missing}; its linear "
                        f"modules are {suffixes} (or use all-linear)")


def wrap(model: torch.nn.Module, settings: LoraSettings, value_model: bool = False) -> torch.nn.Module:
    """`model` with LoRA adapters (PEFT), only the adapters (and a value model's head) trainable; from
    `settings.adapter_path` when set. Call before sharding, after seeding (every rank must draw the same A)."""
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model

    task = TaskType.TOKEN_CLS if value_model else TaskType.CAUSAL_LM
    if settings.gradient_checkpointing:  # the checkpointed blocks' inputs must carry grads (the base is frozen)
        model.enable_input_require_grads()
    key = f"{settings.section}.lora_adapter_path"
    if settings.adapter_path:
        try:
            model = PeftModel.from_pretrained(model, settings.adapter_path, is_trainable=True)
        except (RuntimeError, ValueError, KeyError) as exc:  # size mismatch / targets absent: another base model
            raise UserError(f"{key}={settings.adapter_path} does not fit {settings.section}.path's model "
                            f"({type(exc).__name__}: {_first_line(exc)}); pass an adapter trained on this base "
                            f"model") from exc
        return model
    check_targets(model, settings)
    exclude = settings.exclude_modules
    if value_model:  # the value head trains in full (TOKEN_CLS's modules_to_save), so it gets no adapter
        heads = [name for name in VALUE_HEADS if isinstance(getattr(model, name, None), torch.nn.Module)]
        exclude = heads + ([exclude] if isinstance(exclude, str) else list(exclude or []))
    config = LoraConfig(task_type=task, r=settings.rank, lora_alpha=settings.alpha, bias="none",
                        target_modules=settings.target_modules, exclude_modules=exclude or None)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    head = model.get_output_embeddings()
    try:
        model = get_peft_model(model, config)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{settings.section}.lora_rank={settings.rank}: PEFT cannot add LoRA adapters to "
                        f"{type(model).__name__} ({_first_line(exc)}); use lora_rank=0 (full fine-tuning) or "
                        f"target its nn.Linear modules") from exc
    _check_adapted_layers(model, settings, head if tied else None)
    return model


def _check_adapted_layers(model: torch.nn.Module, settings: LoraSettings, tied_head: torch.nn.Module | None) -> None:
    """Adapters only on nn.Linear layers (what `merged_full_params` merges), and not on an output head that shares
    its weight with the input embedding (its merged weight would overwrite the embedding)."""
    from peft.tuners.lora import LoraLayer

    key = f"{settings.section}.target_modules"
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        base = module.get_base_layer()
        if type(base) is not torch.nn.Linear:
            raise UserError(f"{key} puts LoRA on {name.removeprefix('base_model.model.')} "
                            f"({type(base).__name__}); rl_trainer merges LoRA into nn.Linear layers only: target "
                            f"linear modules (e.g. all-linear)")
        if tied_head is not None and base is tied_head:
            raise UserError(f"{key} puts LoRA on {name.removeprefix('base_model.model.')}, the output head tied to "
                            f"the input embedding (tie_word_embeddings=true); leave it out (all-linear does)")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def _hf_name(name: str) -> str:
    """A PEFT parameter name as the plain model names it."""
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".").replace(f".modules_to_save.{ADAPTER}.", ".")


def merged_full_params(model: torch.nn.Module, tied_aliases: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(plain HF name, full tensor) of the merged model: every adapted weight is W + scaling * B @ A (PEFT's
    merge for nn.Linear), everything else as it is; a collective (fsdp.iter_full_params, one tensor at a time:
    a layer's base weight waits only until its A and B have been gathered)."""
    from peft.tuners.lora import LoraLayer

    scaling = {name: m.scaling[ADAPTER] for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in fsdp.iter_full_params(model, tied_aliases=tied_aliases):
        if ".original_module." in name:  # the value head's frozen copy (modules_to_save)
            continue
        module, part = _lora_part(name)
        if module is None:
            yield _hf_name(name), tensor
            continue
        parts = pending.setdefault(module, {})
        parts[part] = tensor
        if len(parts) == 3:
            del pending[module]
            delta = parts["B"].float() @ parts["A"].float() * scaling[module]
            yield _hf_name(module + ".weight"), (parts["W"].float() + delta).to(parts["W"].dtype)
    if pending:
        raise RuntimeError(f"LoRA layers without A, B or base weight: {sorted(pending)}")


def _lora_part(name: str) -> tuple[str | None, str]:
    """(LoRA module, W | A | B) for an adapted layer's base weight or adapter matrix, else (None, "")."""
    for marker, part in ((".base_layer.weight", "W"), (f".lora_A.{ADAPTER}.weight", "A"),
                         (f".lora_B.{ADAPTER}.weight", "B")):
        if name.endswith(marker):
            return name[: -len(marker)], part
    return None, ""


def adapter_full_state(model: torch.nn.Module, keep: bool) -> dict[str, torch.Tensor]:
    """The trainable tensors (adapters, a value head) in full on CPU, under the PEFT model's names (a collective:
    every rank gathers; only `keep` ranks keep a copy)."""
    out = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            full = (param.full_tensor() if hasattr(param, "full_tensor") else param).detach()
            if keep:
                out[name] = full.cpu().clone()
    return out


def save_adapter(model: torch.nn.Module, folder: str, state: dict[str, torch.Tensor]) -> None:
    """PEFT's adapter folder (adapter_config.json + adapter_model.safetensors) from the gathered `state`."""
    model.save_pretrained(folder, state_dict=state)
