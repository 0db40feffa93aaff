"""Rollout engines, chosen by actor_rollout_ref.rollout.name and never by fallback: hf (CPU default) | vllm."""

from __future__ import annotations

import torch

from rl_trainer.workers.rollout.base import Rollout, SamplingParams
from rl_trainer.workers.rollout.hf import HFRollout


def build_rollout(cfg, model_path: str, tokenizer, device: torch.device, local_rank: int, threads: int) -> Rollout:
    """The engine of `cfg.actor_rollout_ref.rollout.name` for one worker, loaded with `model_path`'s architecture
    (its weights arrive from the actor before every generation)."""
    from rl_trainer.workers import fsdp
    from rl_trainer.workers.loading import load_causal_lm

    arr = cfg.actor_rollout_ref
    rollout_cfg = arr.rollout
    return_log_probs = _calculate_log_probs(rollout_cfg)
    if rollout_cfg.name == "vllm":  # imported only when chosen: vLLM is an optional extra
        from rl_trainer.workers.rollout.vllm import VLLMRollout

        return VLLMRollout(model_path, tokenizer, rollout_cfg, rollout_cfg.prompt_length, rollout_cfg.response_length,
                           device, local_rank, threads, return_log_probs=return_log_probs,
                           trust_remote_code=arr.model.trust_remote_code)
    dtype = fsdp.DTYPES[rollout_cfg.dtype] if device.type == "cuda" else torch.float32
    model = load_causal_lm(model_path, dtype=dtype, trust_remote_code=arr.model.trust_remote_code,
                           override_config=dict(arr.model.override_config)).to(device)
    return HFRollout(model, tokenizer, rollout_cfg.response_length, share_prompts=arr.model.share_prompt_prefix,
                     return_log_probs=return_log_probs, native_decode=rollout_cfg.native_decode,
                     prompt_length=rollout_cfg.prompt_length)


def _calculate_log_probs(rollout_cfg) -> bool:
    """rollout.calculate_log_probs: null = on for vllm (its sampled-token log-probs are free), off for hf."""
    value = rollout_cfg.calculate_log_probs
    return rollout_cfg.name == "vllm" if value is None else bool(value)


__all__ = ["HFRollout", "Rollout", "SamplingParams", "build_rollout"]
