"""The one supervised training loop, shared by `python -m rl_trainer.sft` and `python -m rl_trainer.rm`.

    steps = trainer.total_training_steps or (examples // data.train_batch_size) * trainer.total_epochs
    for each step: the step's data.train_batch_size examples (epoch e visits a permutation drawn from (seed, e); each
        rank takes its contiguous 1/world share) -> micro-batches (data.micro_batch_size_per_gpu examples, or with
        data.use_dynamic_bsz token budgets of data.max_token_len_per_gpu) -> the task's loss, gradients accumulated
        -> grad clip (optim.clip_grad), optimizer step (skipped, with a warning, when the loss or the gradient norm is
        not finite, as verl's FSDP engine does) -> LR scheduler step -> log train/* metrics
        every trainer.test_freq steps and at the last: val/* over data.val_files
        every trainer.save_freq steps and at the last: a checkpoint (sharded model/optimizer/extra, hf_model/)

Runs as one process (a process group of one) or under `torchrun --nproc_per_node N` (torchrun's environment): FSDP2
shards the model over the ranks with the same device and precision handling as the RL actor
(rl_trainer.workers.fsdp.shard_model: gloo and fp32 on CPU; NCCL, `engine.dtype` parameters and fp32 reduction on
CUDA). Resume (trainer.resume_mode) restores model, optimizer, scheduler and RNG; the data order is a function of
(seed, epoch, step), so a resumed run continues exactly as an uninterrupted one.

Where this knowingly differs from verl 0.9.1's sft_trainer: validation is the global token mean (SFT; pairs for the
reward model) over every validation example (verl averages per-batch losses and drops the last partial batch); here
only the remainder of the validation examples modulo the world size is left out, so that every rank runs as many
forward passes.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from rl_trainer.checkpoint import CheckpointManager, step_of
from rl_trainer.errors import UserError
from rl_trainer.tracking import ProgressBar, Tracking
from rl_trainer.workers import fsdp
from rl_trainer.workers.micro_batching import token_budget_micro_batches

log = logging.getLogger("rl_trainer")
SAVE_CONTENTS = ("model", "optimizer", "extra", "hf_model")


class Run:
    """This process's rank, the world, its device, and the distributed helpers the loop needs."""

    def __init__(self, device: str) -> None:
        env = os.environ
        torchrun = "RANK" in env and "WORLD_SIZE" in env and "MASTER_ADDR" in env
        self.rank = int(env["RANK"]) if torchrun else 0
        self.world = int(env["WORLD_SIZE"]) if torchrun else 1
        local_rank = int(env.get("LOCAL_RANK", 0)) if torchrun else 0
        if torchrun and device == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(env.get("LOCAL_WORLD_SIZE", self.world))))
        addr, port = (None, None) if torchrun else ("127.0.0.1", fsdp.free_port()[1])
        self.device = fsdp.init_process_group(self.rank, self.world, addr, port, device, local_rank)

    def sum(self, values: dict[str, Any]) -> dict[str, float]:
        """The values summed over ranks (one all-reduce)."""
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def max(self, value: int) -> int:
        t = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def broadcast(self, obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def frequency(value: Any, steps_per_epoch: int, key: str) -> int:
    """trainer.save_freq / test_freq: a number of steps (<= 0: never) or "after_each_epoch"."""
    if value == "after_each_epoch":
        return steps_per_epoch
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{key}={value!r} must be a number of steps (-1: never) or after_each_epoch")
    return value


def check_contents(cfg: DictConfig) -> None:
    for key in ("checkpoint.save_contents", "checkpoint.load_contents"):
        bad = [c for c in OmegaConf.select(cfg, key) if c not in SAVE_CONTENTS]
        if bad:
            raise UserError(f"{key}: {bad} not among {list(SAVE_CONTENTS)}; drop them")
    if "model" not in cfg.checkpoint.save_contents:
        raise UserError("checkpoint.save_contents must hold 'model' (a checkpoint without weights resumes nothing)")


def step_plan(cfg: DictConfig, examples: int, world: int) -> tuple[int, int]:
    """(steps per epoch, total steps), checked against the batch arithmetic."""
    batch = cfg.data.train_batch_size
    if batch < 1 or batch % world:
        raise UserError(f"data.train_batch_size={batch} must be a positive multiple of the {world} rank(s)")
    if not cfg.data.use_dynamic_bsz and cfg.data.micro_batch_size_per_gpu < 1:
        raise UserError(f"data.micro_batch_size_per_gpu={cfg.data.micro_batch_size_per_gpu} must be >= 1")
    per_epoch = examples // batch
    if per_epoch == 0:
        raise UserError(f"data.train_batch_size={batch} is more than the {examples} training examples; lower it")
    total = cfg.trainer.total_training_steps
    if total is not None and total < 1:
        raise UserError(f"trainer.total_training_steps={total} must be >= 1 (or null: epochs x steps per epoch)")
    return per_epoch, int(total) if total is not None else per_epoch * cfg.trainer.total_epochs


def step_rows(count: int, batch: int, seed: int, step: int, per_epoch: int, rank: int, world: int) -> np.ndarray:
    """This rank's example indices at `step` (1-based): its contiguous share of the step's global batch."""
    epoch, index = divmod(step - 1, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(count)
    share = batch // world
    start = index * batch + rank * share
    return order[start:start + share]


def micro_batches(run: Run, cfg: DictConfig, examples: Sequence) -> list[list]:
    """Fixed-size micro-batches, or token-budget ones (as many on every rank) with data.use_dynamic_bsz."""
    if not examples:
        return []
    if not cfg.data.use_dynamic_bsz:
        size = cfg.data.micro_batch_size_per_gpu
        return [list(examples[i:i + size]) for i in range(0, len(examples), size)]
    lengths = [len(e) for e in examples]
    parts = token_budget_micro_batches(lengths, cfg.data.max_token_len_per_gpu, "data.max_token_len_per_gpu",
                                       agree_max=run.max)
    return [[examples[i] for i in part] for part in parts]


def train_step(run: Run, state: fsdp.TrainState, task: Any, cfg: DictConfig, examples: Sequence,
               pad_id: int) -> dict[str, float]:
    """One optimizer step on this rank's `examples` of the global batch; metrics over all ranks."""
    weight = run.sum({"w": task.weight(examples)})["w"]
    micros = micro_batches(run, cfg, examples)
    state.model.train()
    sums: dict[str, float] = {}
    finite = True
    for i, micro in enumerate(micros):
        state.model.set_requires_gradient_sync(i == len(micros) - 1)
        loss, part = task.micro_loss(state.model, micro, max(weight, 1.0), run.world, pad_id, run.device)
        finite = finite and bool(torch.isfinite(loss))
        loss.backward()
        for key, value in part.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    lr = state.lr
    norm, stepped = state.clip_and_step(finite)
    if not stepped:
        log.warning("non-finite loss or gradient norm (%s): this step's update was skipped", norm)
    state.scheduler.step()
    tokens = run.sum({"t": sum(len(e) for e in examples)})["t"]
    out = task.metrics(run.sum(sums), "train")
    out.update({"train/grad_norm": norm, "train/lr": lr, "train/global_tokens": tokens,
                "train/skipped_steps": float(not stepped)})
    return out


def evaluate(run: Run, model: Any, task: Any, cfg: DictConfig, examples: Sequence, pad_id: int) -> dict[str, float]:
    """val/* over the validation examples: each rank its contiguous share (the remainder modulo the world size is
    left out, see the module docstring), sums over ranks."""
    share = len(examples) // run.world
    mine = examples[run.rank * share:(run.rank + 1) * share]
    model.eval()
    sums: dict[str, float] = {}
    with torch.no_grad():
        for micro in micro_batches(run, cfg, mine):
            _, part = task.micro_loss(model, micro, 1.0, 1, pad_id, run.device)
            for key, value in part.items():
                sums[key] = sums.get(key, 0.0) + float(value)
    return task.metrics(run.sum(sums), "val")


def save_checkpoint(run: Run, state: fsdp.TrainState, task: Any, cfg: DictConfig, manager: CheckpointManager,
                    step: int, tokenizer: Any) -> None:
    """global_step_<step>/ {model/ (sharded model, optimizer, per-rank scheduler + RNG), hf_model/ (a from_pretrained
    folder with the tokenizer)}, crash-safe (rl_trainer.checkpoint: written under a temporary name, then renamed)."""
    contents = list(cfg.checkpoint.save_contents)
    tmp = Path(run.broadcast(str(manager.begin(step)) if run.rank == 0 else None))
    state.save(tmp / "model", contents, run.rank)
    fsdp.export_hf(state.model, tmp / "hf_model", "hf_model" in contents, task.auto_class, run.rank, tokenizer)
    dist.barrier()
    if run.rank == 0:
        manager.commit(step, tmp)
    dist.barrier()


def resume(run: Run, state: fsdp.TrainState, cfg: DictConfig, manager: CheckpointManager) -> int:
    """The step to continue from: 0, or that of the checkpoint trainer.resume_mode picks (loaded into `state`)."""
    path = manager.resolve_resume(cfg.trainer.resume_mode, cfg.trainer.resume_from_path)
    if path is None:
        return 0
    state.load(path / "model", list(cfg.checkpoint.load_contents), run.rank)
    if run.rank == 0:
        print(f"resumed from {path}", flush=True)
    return step_of(path)


def build_state(run: Run, task: Any, cfg: DictConfig, model_path: str, tokenizer: Any, total: int) -> fsdp.TrainState:
    fsdp.seed_everything(cfg.trainer.seed)  # the same new head (reward model) on every rank
    model = task.load_model(model_path, cfg, tokenizer)
    model = fsdp.shard_model(model, run.device, param_offload=cfg.engine.param_offload,
                             reshard_after_forward=cfg.engine.reshard_after_forward, param_dtype=cfg.engine.dtype)
    return fsdp.TrainState(model, cfg.optim, total, grad_clip=cfg.optim.clip_grad,
                           optimizer_offload=cfg.engine.optimizer_offload)


def fit(run: Run, task: Any, cfg: DictConfig, model_path: str, tokenizer: Any, train: Sequence,
        val: Sequence | None) -> dict[str, float]:
    """Train `task` on `train` as the module docstring says; returns the last step's metrics."""
    per_epoch, total = step_plan(cfg, len(train), run.world)
    test_freq = frequency(cfg.trainer.test_freq, per_epoch, "trainer.test_freq")
    save_freq = frequency(cfg.trainer.save_freq, per_epoch, "trainer.save_freq")
    manager = CheckpointManager(cfg.trainer.default_local_dir, cfg.trainer.max_ckpt_to_keep)
    if run.rank == 0:
        manager.cleanup_stale_tmp()
    dist.barrier()
    state = build_state(run, task, cfg, model_path, tokenizer, total)
    start = resume(run, state, cfg, manager)
    tracking = Tracking(cfg.trainer.project_name, cfg.trainer.experiment_name, cfg.trainer.logger,
                        cfg.trainer.default_local_dir, cfg) if run.rank == 0 else None
    if tracking is not None:
        tracking.truncate_after(start)
    metrics: dict[str, float] = {}
    with ProgressBar(total, initial=start, enabled=None if run.rank == 0 else False) as bar:
        for step in range(start + 1, total + 1):
            began = time.perf_counter()
            rows = step_rows(len(train), cfg.data.train_batch_size, cfg.trainer.seed, step, per_epoch, run.rank,
                             run.world)
            metrics = train_step(run, state, task, cfg, [train[i] for i in rows], tokenizer.pad_token_id)
            metrics["train/epoch"] = (step - 1) // per_epoch
            last = step == total
            if val and (last or (test_freq > 0 and step % test_freq == 0)):
                metrics.update(evaluate(run, state.model, task, cfg, val, tokenizer.pad_token_id))
            if last or (save_freq > 0 and step % save_freq == 0):
                save_checkpoint(run, state, task, cfg, manager, step, tokenizer)
            metrics["timing_s/step"] = time.perf_counter() - began
            if tracking is not None:
                tracking.log(metrics, step)
            bar.update()
    if tracking is not None:
        tracking.finish()
    return metrics


def resolve_model_key(cfg: DictConfig) -> tuple[str, str]:
    """(path, key): model.path, or the older spelling model.partial_pretrain; both set and different is an error."""
    path, older = cfg.model.path, cfg.model.partial_pretrain
    if path is not None and older is not None and str(path) != str(older):
        raise UserError(f"model.path={path} and model.partial_pretrain={older} disagree; set one of them (they are "
                        f"the same key in verl's newer and older SFT trainers)")
    if path is None and older is None:
        raise UserError("set model.path (or the older spelling model.partial_pretrain) to the model to train")
    return (str(path), "model.path") if path is not None else (str(older), "model.partial_pretrain")


def check_batching(cfg: DictConfig) -> None:
    if cfg.data.use_dynamic_bsz and cfg.data.max_token_len_per_gpu < 1:
        raise UserError(f"data.max_token_len_per_gpu={cfg.data.max_token_len_per_gpu} must be >= 1 with "
                        f"data.use_dynamic_bsz=true")
    if cfg.data.max_length < 2:
        raise UserError(f"data.max_length={cfg.data.max_length} must be >= 2 tokens")
    if not math.isfinite(cfg.optim.clip_grad) or cfg.optim.clip_grad <= 0:
        raise UserError(f"optim.clip_grad={cfg.optim.clip_grad} must be > 0")
