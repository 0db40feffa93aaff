"""Devices, process groups and FSDP2: the one place that knows about torch.distributed.

Workers ask this module for their device, wrap models with `shard_model`, keep model + optimizer +
scheduler in a `TrainState`, and save/load sharded checkpoints with torch.distributed.checkpoint (each
rank writes its own shards; a checkpoint resumes bit-exactly on the same world size).

CPU: gloo, fp32 everywhere. CUDA: NCCL, bf16 parameters in forward/backward with fp32 master weights and
fp32 gradient reduction (FSDP2 MixedPrecisionPolicy).
"""

from __future__ import annotations

import math
import random
import socket
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard

from rl_trainer.workers.lr_schedule import build_lr_scheduler

# Checkpoints hold the parameters that train (all of them in full fine-tuning; with LoRA the adapters, not the frozen
# base, which is loaded again from model.path) and the buffers.
TRAINED_ONLY = StateDictOptions(ignore_frozen_params=True)
# Loading sets those and leaves the frozen ones as they are (not strict about them); every trained key must still be
# in the checkpoint, because dcp.load fills a template of exactly those keys and fails on one it does not find.
LOAD_TRAINED = StateDictOptions(ignore_frozen_params=True, strict=False)
DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
          "float32": torch.float32}


def free_port() -> tuple[str, int]:
    """An address of this node and a free TCP port on it (for rank 0 to host the process group)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    try:
        import ray

        addr = ray.util.get_node_ip_address()
    except Exception:  # outside Ray (tests that build a process group by hand)
        addr = "127.0.0.1"
    return addr, port


def init_process_group(rank: int, world_size: int, master_addr: str | None, master_port: int | None, device: str,
                       device_index: int = 0) -> torch.device:
    """Join this worker group's own process group (gloo on CPU, NCCL on CUDA); returns the device to use.

    master_addr None: torchrun's environment (env://). device_index: this process's GPU among those it sees (0
    under Ray, which shows each worker exactly its own; LOCAL_RANK under torchrun).
    """
    if device == "cuda":
        torch.cuda.set_device(device_index)
        backend, dev = "nccl", torch.device("cuda", device_index)
    else:
        backend, dev = "gloo", torch.device("cpu")
    init_method = "env://" if master_addr is None else f"tcp://{master_addr}:{master_port}"
    dist.init_process_group(backend=backend, init_method=init_method, rank=rank, world_size=world_size,
                            device_id=dev if device == "cuda" else None)
    return dev


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks to shard one by one (HF models name their class in `_no_split_modules`)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__} (no _no_split_modules)")
    return layers


def shard_model(model: torch.nn.Module, device: torch.device, *, param_offload: bool = False,
                reshard_after_forward: bool = True, param_dtype: str = "bf16", reduce_dtype: str = "fp32") -> FSDPModule:
    """FSDP2: shard each decoder layer, then the root (embeddings, final norm, head). Mixed precision on CUDA only."""
    mp = MixedPrecisionPolicy(param_dtype=DTYPES[param_dtype], reduce_dtype=DTYPES[reduce_dtype]) \
        if device.type == "cuda" else MixedPrecisionPolicy()
    offload = CPUOffloadPolicy() if param_offload and device.type == "cuda" else OffloadPolicy()
    if not (param_offload and device.type == "cuda"):
        model.to(device)
    kwargs = dict(mp_policy=mp, offload_policy=offload, reshard_after_forward=reshard_after_forward)
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def iter_full_params(model: torch.nn.Module, tied_aliases: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) for every parameter, gathered one at a time: never a second full copy of the model.

    A collective: every rank must iterate to the end. A parameter shared by several modules (tied input and output
    embeddings) appears once, under its first name; with `tied_aliases` it appears under each of its names (gathered
    once), for engines that keep the tied copies apart (vLLM's weight reload).
    """
    named = list(model.named_parameters(remove_duplicate=not tied_aliases))
    uses = Counter(id(param) for _, param in named)
    held: dict[int, torch.Tensor] = {}  # a shared parameter, until its last name has been yielded
    for name, param in named:
        key = id(param)
        full = held.get(key)
        if full is None:
            full = (param.full_tensor() if hasattr(param, "full_tensor") else param).detach()
        uses[key] -= 1
        if uses[key]:
            held[key] = full
        else:
            held.pop(key, None)
        yield name, full


def export_hf(model: torch.nn.Module, hf_dir: str | Path, with_weights: bool, auto_class: Any, rank: int,
              tokenizer: Any = None, params: Iterator[tuple[str, torch.Tensor]] | None = None) -> None:
    """A Hugging Face folder of a sharded model, as verl's FSDP checkpoint manager writes it: rank 0 always saves the
    model config (and generation config, and `tokenizer` if given); the full weights, loadable with
    `auto_class.from_pretrained`, only `with_weights` ("hf_model" in save_contents). The weights are gathered from
    every rank (a collective: call it on all of them) into a model built on the meta device: only they take memory.
    `params`: the (name, full tensor) pairs to write instead of the model's own (LoRA: the merged weights)."""
    source = iter_full_params(model) if params is None else params
    weights = {name: t.cpu().clone() for name, t in source if rank == 0} if with_weights else None
    if rank != 0:
        return
    generation_config = getattr(model, "generation_config", None) if model.can_generate() else None
    if weights is not None:
        with torch.device("meta"):
            folder = auto_class.from_config(model.config)
        if generation_config is not None:
            folder.generation_config = generation_config
        folder.save_pretrained(hf_dir, state_dict=weights)
    else:
        model.config.save_pretrained(hf_dir)
        if generation_config is not None:
            generation_config.save_pretrained(hf_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(hf_dir)


def local_param_fraction(model: torch.nn.Module) -> float:
    """Fraction of the model's parameters that this rank holds (1 / world size for evenly divisible shapes)."""
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in model.parameters())
    total = sum(p.numel() for p in model.parameters())
    return local / total


def global_sum(value: float | int, device: torch.device) -> float:
    t = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item()


def all_reduce_sums_and_max(rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Combine per-part statistics rows [..., max] over the parts and over all ranks: every column but the last is
    summed, the last is the maximum (rl_trainer.metrics.probs_diff_sums)."""
    sums, top = rows[:, :-1].sum(0).to(device), rows[:, -1].max().reshape(1).to(device)
    dist.all_reduce(sums)
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    return torch.cat([sums, top]).cpu()


def global_mean(value: float, device: torch.device) -> float:
    return global_sum(value, device) / dist.get_world_size()


class TrainState:
    """A sharded model with its AdamW optimizer and LR scheduler: one optimizer step, save, load.

    `optim` is the verl `optim` config section (lr, weight_decay, betas, lr_warmup_steps(_ratio),
    lr_scheduler_type, min_lr_ratio, num_cycles, total_training_steps); `total_steps` the number of scheduler steps
    of the run, used when `optim.total_training_steps` is not set (see `build_lr_scheduler`).
    """

    def __init__(self, model: FSDPModule, optim: Any, total_steps: int, grad_clip: float, optimizer_offload: bool = False):
        self.model = model
        self.grad_clip = grad_clip
        self.optimizer_offload = optimizer_offload
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=optim.lr, weight_decay=optim.weight_decay,
            betas=tuple(optim.betas),
        )
        self.scheduler = build_lr_scheduler(self.optimizer, optim, total_steps)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def clip_and_step(self, loss_finite: bool = True) -> tuple[float, bool]:
        """Clip the global gradient norm and step, unless the loss or the norm is not finite: then the gradients are
        dropped and the parameters and optimizer state stay exactly as they were. Returns (norm, stepped)."""
        if dist.is_initialized():  # every rank must take the same decision
            loss_finite = global_sum(0.0 if loss_finite else 1.0, self.model_device) == 0
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=self.grad_clip)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        norm = float(norm)
        if loss_finite and math.isfinite(norm):
            self._move_optimizer_state(self.model_device)
            self.optimizer.step()
            self._move_optimizer_state(torch.device("cpu"))
            stepped = True
        else:
            stepped = False
        self.optimizer.zero_grad(set_to_none=True)
        return norm, stepped

    @property
    def model_device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _move_optimizer_state(self, device: torch.device) -> None:
        """optimizer_offload on GPU: the Adam moments live on CPU outside the optimizer step."""
        if not self.optimizer_offload or self.model_device.type == "cpu":
            return
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    state[key] = value.to(device, non_blocking=True)

    # ---------------------------------------------------------------------------------------- checkpoints
    def _sharded_state(self, with_optim: bool) -> dict:
        """Templates of the sharded model (and optimizer) state, to save from or load into."""
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer if with_optim else [], options=TRAINED_ONLY)
        return {"model": model_sd, "optimizer": optim_sd} if with_optim else {"model": model_sd}

    def save(self, path: Path, contents: list[str], rank: int) -> None:
        """Sharded model/optimizer (torch.distributed.checkpoint) + per-rank scheduler and RNG states."""
        path.mkdir(parents=True, exist_ok=True)
        dcp.save(self._sharded_state("optimizer" in contents), checkpoint_id=str(path / "sharded"))
        if "extra" in contents:
            extra = {"scheduler": self.scheduler.state_dict(), "rng": rng_state()}
            torch.save(extra, path / f"extra_rank{rank}.pt")

    def load(self, path: Path, contents: list[str], rank: int) -> None:
        with_optim = "optimizer" in contents
        state = self._sharded_state(with_optim)
        dcp.load(state, checkpoint_id=str(path / "sharded"))
        set_state_dict(self.model, self.optimizer if with_optim else [], model_state_dict=state["model"],
                       optim_state_dict=state.get("optimizer", {}), options=LOAD_TRAINED)
        if "extra" in contents:
            extra = torch.load(path / f"extra_rank{rank}.pt", weights_only=False)
            self.scheduler.load_state_dict(extra["scheduler"])
            set_rng_state(extra["rng"])


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
