"""The actor + rollout + reference worker: one per device, verl's hybrid engine.

Each rank holds an FSDP2 shard of the trainable policy and, when a KL term needs it, of the frozen reference
model (with LoRA, none: the reference is the policy with its adapters disabled); its rollout engine generates with the actor's current weights (synced before every generation). The
driver calls these methods on every rank with that rank's slice of the batch.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from rl_trainer.algos import compute_actor_loss, entropy_from_logits, sum_pi_squared_from_logits
from rl_trainer.batch import Batch
from rl_trainer.metrics import probs_diff_metrics, probs_diff_sums
from rl_trainer.workers import fsdp, lora
from rl_trainer.workers.common import WorkerBase, freeze_startup_objects, in_row_order
from rl_trainer.workers.forward import pad_responses, response_logits
from rl_trainer.workers.loading import load_causal_lm, load_tokenizer
from rl_trainer.workers.rollout import SamplingParams, build_rollout


def response_log_probs(model: torch.nn.Module, batch: Batch, device: torch.device, temperature: float,
                       with_entropy: bool, share_prompts: bool,
                       entropy_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(response_t | prefix) for every response position, from logits / temperature (as verl), and, if asked,
    the entropy of each position's distribution (outside the autograd graph unless `entropy_grad`: a metric, not a
    loss term). See response_forward."""
    out = response_forward(model, batch, device, temperature, share_prompts, with_entropy=with_entropy,
                           entropy_grad=entropy_grad)
    return out["log_probs"], out.get("entropy")


def response_forward(model: torch.nn.Module, batch: Batch, device: torch.device, temperature: float,
                     share_prompts: bool, with_entropy: bool = False, entropy_grad: bool = True,
                     with_sum_pi_squared: bool = False) -> dict[str, torch.Tensor]:
    """One pass over the logits that score the response tokens (rl_trainer.workers.forward.response_logits),
    divided by the temperature as verl does: "log_probs" (bs, R), and from the same logits "entropy" (bs, R) and
    "sum_pi_squared" (bs, R; sum over the vocabulary of pi^2, for the optimal token baselines) when asked. The
    response columns that every row pads get no logits: their values are 0 (masked everywhere)."""
    response_len = batch.tensors["responses"].shape[1]
    logits = response_logits(model, batch, device, share_prompts).float()
    if temperature != 1.0:  # x / 1.0 == x: skip a pass over the (bs, R, V) logits
        logits = logits / temperature
    responses = batch.tensors["responses"][:, : logits.shape[1]].to(device)
    log_probs = -F.cross_entropy(logits.reshape(-1, logits.shape[-1]), responses.reshape(-1), reduction="none")
    out = {"log_probs": pad_responses(log_probs.view(responses.shape), response_len)}
    if with_sum_pi_squared:
        with torch.no_grad():
            out["sum_pi_squared"] = pad_responses(sum_pi_squared_from_logits(logits), response_len)
    if with_entropy:
        with torch.set_grad_enabled(torch.is_grad_enabled() and entropy_grad):
            out["entropy"] = pad_responses(entropy_from_logits(logits), response_len)
    return out


class ActorRolloutRefWorker(WorkerBase):
    def init_model(self, model_path: str, total_steps: int, with_ref: bool) -> None:
        cfg = self.config
        arr = cfg.actor_rollout_ref
        fsdp.seed_everything(cfg.trainer.seed)
        self.tokenizer = load_tokenizer(model_path, trust_remote_code=arr.model.trust_remote_code)
        load = dict(trust_remote_code=arr.model.trust_remote_code, override_config=dict(arr.model.override_config))
        actor = load_causal_lm(model_path, gradient_checkpointing=arr.model.enable_gradient_checkpointing, **load)
        self.lora = lora.enabled(arr.model)
        if self.lora:  # only the adapters train; the reference is this model with them disabled (ref-in-actor)
            actor = lora.wrap(actor, lora.LoraSettings.from_config(arr.model, "actor_rollout_ref.model"))
        fsdp_cfg = arr.actor.fsdp_config
        mp = dict(param_dtype=fsdp_cfg.mixed_precision.param_dtype, reduce_dtype=fsdp_cfg.mixed_precision.reduce_dtype)
        actor = fsdp.shard_model(actor, self.device, param_offload=fsdp_cfg.param_offload,
                                 reshard_after_forward=fsdp_cfg.reshard_after_forward, **mp)
        self.actor = self.train_state = fsdp.TrainState(
            actor, arr.actor.optim, total_steps, arr.actor.grad_clip, optimizer_offload=fsdp_cfg.optimizer_offload
        )
        self.ref = None
        if with_ref and not self.lora:
            ref = load_causal_lm(model_path, **load).eval()
            ref.requires_grad_(False)
            self.ref = fsdp.shard_model(ref, self.device, param_offload=arr.ref.fsdp_config.param_offload,
                                        reshard_after_forward=arr.ref.fsdp_config.reshard_after_forward, **mp)
        local_rank = self.rank % cfg.trainer.n_gpus_per_node  # this worker's index on its machine
        self.rollout = build_rollout(cfg, model_path, self.tokenizer, self.device, local_rank, self.threads)
        # Per-rank sampling stream: seed + rank (saved and restored with every checkpoint).
        fsdp.seed_everything(cfg.trainer.seed + self.rank)
        freeze_startup_objects()

    # ------------------------------------------------------------------------------------------- rollout
    def generate_sequences(self, prompts: Batch, validate: bool = False, greedy: bool = False) -> Batch:
        """Sync the actor's weights into the engine, then sample with rollout.* (training) or rollout.val_kwargs.*
        (validation); greedy: decode greedily whatever they say (ReMax's baseline, verl's do_sample=False)."""
        self.rollout.update_weights(self.rollout_weights())
        rollout_cfg = self.config.actor_rollout_ref.rollout
        sampling = SamplingParams(do_sample=False) if greedy else SamplingParams.from_config(
            rollout_cfg.val_kwargs if validate else rollout_cfg)
        return self.rollout.generate(prompts, sampling)

    def rollout_weights(self):
        """The actor's weights as the rollout engine's plain model names them, gathered one at a time (a collective);
        with LoRA, merged (base + scaling * B @ A: rl_trainer.workers.lora.merged_full_params). verl 0.9.1's default
        (model.lora.merge=false) hands vLLM the adapter instead; merged weights give the same model."""
        if self.lora:
            return lora.merged_full_params(self.actor.model, tied_aliases=True)
        return fsdp.iter_full_params(self.actor.model, tied_aliases=True)

    # ----------------------------------------------------------------------------------------- log-probs
    @torch.no_grad()
    def _log_probs(self, model, batch: Batch, section: str, **outputs: bool) -> dict[str, torch.Tensor]:
        """response_forward's outputs for every row ("log_probs", and "entropy" / "sum_pi_squared" where `outputs`
        asks: with_entropy=True, ...), in micro-batches of `section`'s log_prob_micro_batch_size_per_gpu rows, or
        with its log_prob_use_dynamic_bsz of log_prob_max_token_len_per_gpu tokens; in the rows' order."""
        temperature = self.config.actor_rollout_ref.rollout.temperature
        share = self.config.actor_rollout_ref.model.share_prompt_prefix
        cfg = OmegaConf.select(self.config, section)
        micros, inverse = self.split_micro_batches(batch, cfg.log_prob_micro_batch_size_per_gpu,
                                                   cfg.log_prob_use_dynamic_bsz, cfg.log_prob_max_token_len_per_gpu,
                                                   f"{section}.log_prob_max_token_len_per_gpu")
        parts: dict[str, list[torch.Tensor]] = {}
        for mb in micros:
            for key, value in response_forward(model, mb, self.device, temperature, share, **outputs).items():
                parts.setdefault(key, []).append(value.cpu())
        return {key: in_row_order(values, inverse) for key, values in parts.items()}

    def compute_log_prob(self, batch: Batch) -> Batch:
        """old_log_probs (and per-token entropy for the actor/entropy metric) under the current actor; with
        actor.calculate_sum_pi_squared also sum_pi_squared, from the same logits (verl's key and output)."""
        with_sum_pi_squared = bool(self.config.actor_rollout_ref.actor.calculate_sum_pi_squared)
        out = self._log_probs(self.actor.model, batch, "actor_rollout_ref.rollout", with_entropy=True,
                              with_sum_pi_squared=with_sum_pi_squared)
        tensors = {"old_log_probs": out["log_probs"], "entropys": out["entropy"]}
        if with_sum_pi_squared:
            tensors["sum_pi_squared"] = out["sum_pi_squared"]
        return Batch(tensors)

    def compute_ref_log_prob(self, batch: Batch) -> Batch:
        """ref_log_prob under the frozen reference: its own model, or with LoRA the actor with its adapters
        disabled (the base model, as verl's ref-in-actor; also when training starts from lora_adapter_path)."""
        if self.ref is not None:
            log_probs = self._log_probs(self.ref, batch, "actor_rollout_ref.ref")["log_probs"]
        else:
            with self.actor.model.disable_adapter():
                log_probs = self._log_probs(self.actor.model, batch, "actor_rollout_ref.ref")["log_probs"]
        return Batch({"ref_log_prob": log_probs})

    # ------------------------------------------------------------------------------------------- update
    def update_actor(self, batch: Batch) -> dict[str, float]:
        """PPO epochs over this rank's rows (the shared skeleton, WorkerBase.ppo_update) with the actor loss
        (rl_trainer.algos.compute_actor_loss: policy loss + entropy bonus + KL loss) on each micro-batch.

        With actor.recompute_old_log_prob=false (allowed only for an on-policy update: one epoch, one mini-batch)
        the batch has no old_log_probs: they are this forward's log-probs, detached (verl's on_policy branch),
        which is what a separate pass with the same weights computes; the update then also measures
        actor/entropy, which that pass would have.
        """
        actor_cfg = self.config.actor_rollout_ref.actor
        temperature = self.config.actor_rollout_ref.rollout.temperature
        share = self.config.actor_rollout_ref.model.share_prompt_prefix
        reuse_forward = not actor_cfg.recompute_old_log_prob
        loss_kwargs = self._loss_kwargs()
        entropy_sums = [0.0, 0.0]  # sum of entropy * mask, of mask: actor/entropy when the forward stands in
        diff_sums = []  # the weight-sync check, when the update's forward stands in for old_log_probs

        def micro_loss(mb: Batch, agg: dict):
            mask = mb.tensors["response_mask"].to(self.device)
            log_prob, entropy = response_log_probs(
                self.actor.model, mb, self.device, temperature, share_prompts=share,
                with_entropy=actor_cfg.entropy_coeff != 0 or reuse_forward, entropy_grad=actor_cfg.entropy_coeff != 0)
            if reuse_forward:
                old_log_prob = log_prob.detach()
                entropy_sums[0] += (entropy.detach() * mask).sum().item()
                entropy_sums[1] += mask.sum().item()
                if "rollout_log_probs" in mb:
                    diff_sums.append(probs_diff_sums(old_log_prob.cpu(), mb.tensors["rollout_log_probs"], mask.cpu()))
            else:
                old_log_prob = mb.tensors["old_log_probs"].to(self.device)
            ref = mb.tensors["ref_log_prob"].to(self.device) if actor_cfg.use_kl_loss else None
            is_weights = mb.tensors["rollout_is_weights"].to(self.device) if "rollout_is_weights" in mb else None
            loss, terms = compute_actor_loss(old_log_prob, log_prob, mb.tensors["advantages"].to(self.device), mask,
                                             entropy=entropy, ref_log_prob=ref, rollout_is_weights=is_weights,
                                             **loss_kwargs, **agg)
            # The loss terms are per-rank shares of the mini-batch loss: summed over micro-batches (the rank mean of
            # the world-size-scaled shares is the mini-batch loss); the ratios (the policy loss's metrics) averaged.
            summed = {k: terms.pop(k) for k in ("actor/pg_loss", "actor/entropy_loss", "actor/kl_loss") if k in terms}
            return loss, terms, summed

        out = self.ppo_update("actor", batch, actor_cfg, micro_loss, loss_scale_factor=actor_cfg.loss_scale_factor)
        if reuse_forward:  # token mean over the whole batch, as the driver computes it from a separate pass
            out["actor/entropy"] = (fsdp.global_sum(entropy_sums[0], self.device)
                                    / fsdp.global_sum(entropy_sums[1], self.device))
        if diff_sums:
            out.update(probs_diff_metrics(fsdp.all_reduce_sums_and_max(torch.stack(diff_sums), self.device)))
        return out

    def _loss_kwargs(self) -> dict:
        """compute_actor_loss's settings: every actor.policy_loss.* key (loss_mode, clip_cov_ratio, dro_beta, ...)
        and the actor-level keys the losses read, under verl's names (compute_actor_loss refuses a key it does not
        know). With algorithm.rollout_correction.bypass_mode the loss is bypass_mode, reading those settings (verl's
        apply_bypass_mode sets policy_loss.loss_mode and policy_loss.rollout_correction the same way)."""
        actor_cfg = self.config.actor_rollout_ref.actor
        kwargs = dict(
            **OmegaConf.to_container(actor_cfg.policy_loss, resolve=True),
            clip_ratio=actor_cfg.clip_ratio, tau_pos=actor_cfg.tau_pos, tau_neg=actor_cfg.tau_neg,
            loss_agg_mode=actor_cfg.loss_agg_mode, clip_ratio_low=actor_cfg.clip_ratio_low,
            clip_ratio_high=actor_cfg.clip_ratio_high, clip_ratio_c=actor_cfg.clip_ratio_c,
            entropy_coeff=actor_cfg.entropy_coeff, use_kl_loss=actor_cfg.use_kl_loss,
            kl_loss_coef=actor_cfg.kl_loss_coef, kl_loss_type=actor_cfg.kl_loss_type)
        rollout_corr = self.config.algorithm.rollout_correction
        if rollout_corr.bypass_mode:
            kwargs.update(loss_mode="bypass_mode", rollout_correction=OmegaConf.to_container(rollout_corr, resolve=True))
        return kwargs

    # -------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, path: str, hf_dir: str | None) -> None:
        """Sharded actor state into `path` (the model, and the optimizer / extra of save_contents); rank 0 also
        writes `hf_dir` (WorkerBase.save_hf: the full weights only with "hf_model" in save_contents, as verl)."""
        contents = list(self.config.actor_rollout_ref.actor.checkpoint.save_contents)
        self.actor.save(Path(path), contents, self.rank)
        if hf_dir:
            from transformers import AutoModelForCausalLM

            self.save_hf(hf_dir, "hf_model" in contents, AutoModelForCausalLM, self.tokenizer)
        torch.distributed.barrier()

    def load_checkpoint(self, path: str) -> None:
        self.actor.load(Path(path), list(self.config.actor_rollout_ref.actor.checkpoint.load_contents), self.rank)
