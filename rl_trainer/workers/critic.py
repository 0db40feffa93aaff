"""The critic worker: an FSDP2 value model (LM backbone + scalar head) that predicts V(s_t) per response token."""

from __future__ import annotations

from pathlib import Path

import torch

from rl_trainer.algos import compute_value_loss, masked_mean
from rl_trainer.batch import Batch
from rl_trainer.workers import fsdp, lora
from rl_trainer.workers.common import WorkerBase, freeze_startup_objects, in_row_order
from rl_trainer.workers.forward import pad_responses, unpadded_inputs
from rl_trainer.workers.loading import load_value_model


def response_values(model: torch.nn.Module, batch: Batch, device: torch.device) -> torch.Tensor:
    """V at the position before each response token (the state the token was sampled in), (bs, R), masked; the
    model runs only on the columns some row attends to (rl_trainer.workers.forward.unpadded_inputs)."""
    t, _ = unpadded_inputs(batch, device)
    length = t["responses"].shape[1]
    values = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"], position_ids=t["position_ids"],
                   use_cache=False).logits.squeeze(-1).float()
    values = pad_responses(values[:, -length - 1 : -1], batch.tensors["responses"].shape[1])
    return values * batch.tensors["response_mask"].to(device)


class CriticWorker(WorkerBase):
    def init_model(self, model_path: str, total_steps: int, token_ids: dict | None = None) -> None:
        """`token_ids`: bos/eos/pad ids for the value model's config (critic.model.tokenizer_path's, read by the
        driver's input stage); critic.model.override_config overrides them, as in verl's HFModelConfig."""
        cfg = self.config.critic
        fsdp.seed_everything(self.config.trainer.seed)  # the new value head must be identical on every rank
        model = load_value_model(
            model_path, trust_remote_code=cfg.model.trust_remote_code,
            override_config={**(token_ids or {}), **dict(cfg.model.override_config)},
            gradient_checkpointing=cfg.model.enable_gradient_checkpointing,
        )
        if lora.enabled(cfg.model):  # adapters + the value head train (rl_trainer.workers.lora)
            model = lora.wrap(model, lora.LoraSettings.from_config(cfg.model, "critic.model"), value_model=True)
        mp = self.config.actor_rollout_ref.actor.fsdp_config.mixed_precision
        model = fsdp.shard_model(model, self.device, param_offload=cfg.model.fsdp_config.param_offload,
                                 reshard_after_forward=cfg.model.fsdp_config.reshard_after_forward,
                                 param_dtype=mp.param_dtype, reduce_dtype=mp.reduce_dtype)
        self.critic = self.train_state = fsdp.TrainState(
            model, cfg.optim, total_steps, cfg.grad_clip, optimizer_offload=cfg.model.fsdp_config.optimizer_offload
        )
        freeze_startup_objects()

    @torch.no_grad()
    def compute_values(self, batch: Batch) -> Batch:
        """V of every row, in micro-batches of critic.forward_micro_batch_size_per_gpu rows, or with
        critic.use_dynamic_bsz of critic.forward_max_token_len_per_gpu tokens; in the rows' order."""
        cfg = self.config.critic
        model = self.critic.model
        model.eval()
        micros, inverse = self.split_micro_batches(batch, cfg.forward_micro_batch_size_per_gpu, cfg.use_dynamic_bsz,
                                                   cfg.forward_max_token_len_per_gpu,
                                                   "critic.forward_max_token_len_per_gpu")
        return Batch({"values": in_row_order([response_values(model, mb, self.device).cpu() for mb in micros], inverse)})

    def update_critic(self, batch: Batch) -> dict[str, float]:
        """PPO epochs of clipped value regression onto the returns (the shared skeleton, WorkerBase.ppo_update),
        normalised over the global mini-batch."""
        cfg = self.config.critic

        def micro_loss(mb: Batch, agg: dict):
            mask = mb.tensors["response_mask"].to(self.device)
            vpreds = response_values(self.critic.model, mb, self.device)
            vf_loss, vf_clipfrac = compute_value_loss(
                vpreds, mb.tensors["returns"].to(self.device), mb.tensors["values"].to(self.device), mask,
                cfg.cliprange_value, loss_agg_mode=cfg.loss_agg_mode, **agg,
            )
            metrics = {"critic/vf_clipfrac": vf_clipfrac, "critic/vpred_mean": masked_mean(vpreds, mask)}
            return vf_loss, metrics, {"critic/vf_loss": vf_loss.detach()}

        return self.ppo_update("critic", batch, cfg, micro_loss)

    def save_checkpoint(self, path: str) -> None:
        """Sharded critic state into `path`, and `path`/huggingface as verl lays it out (WorkerBase.save_hf: the
        config always, the value model's weights with "hf_model" in critic.checkpoint.save_contents). The
        tokenizer is in the actor's folder: the critic reads the actor's token ids."""
        contents = list(self.config.critic.checkpoint.save_contents)
        self.critic.save(Path(path), contents, self.rank)
        from transformers import AutoModelForTokenClassification

        self.save_hf(str(Path(path) / "huggingface"), "hf_model" in contents, AutoModelForTokenClassification)
        torch.distributed.barrier()

    def load_checkpoint(self, path: str) -> None:
        self.critic.load(Path(path), list(self.config.critic.checkpoint.load_contents), self.rank)
