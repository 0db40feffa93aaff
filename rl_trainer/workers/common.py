"""What the actor and the critic workers share: joining their group, micro-batching, loss bookkeeping."""

from __future__ import annotations

import gc
import os
import warnings
from collections import defaultdict
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from rl_trainer.batch import Batch
from rl_trainer.errors import UserError
from rl_trainer.metrics import peak_rss_bytes
from rl_trainer.workers import fsdp


class WorkerBase:
    """A Ray actor that is one rank of a worker group with its own torch.distributed process group."""

    def __init__(self, config: dict, rank: int, world_size: int, device: str, threads: int):
        self.config: DictConfig = OmegaConf.create(config)
        self.rank, self.world_size, self.device_type, self.threads = rank, world_size, device, threads
        if device == "cpu":
            # OMP/MKL thread counts come from the actor's runtime_env (they must be set before torch is imported).
            torch.set_num_threads(threads)
        self.device: torch.device | None = None
        quiet_worker_console(rank)

    train_state: fsdp.TrainState  # the trained model of this worker, set by init_model

    def param_fraction(self) -> float:
        """Fraction of the trained model's parameters held by this rank (about 1 / world size)."""
        return fsdp.local_param_fraction(self.train_state.model)

    def full_params(self, keep: bool = True) -> dict[str, torch.Tensor]:
        """The trained model's full parameters on CPU (a collective: call on every rank). keep=False takes part in
        the gathering without keeping a copy (an empty dict), for ranks that only help another one collect."""
        return {name: t.cpu().clone() for name, t in fsdp.iter_full_params(self.train_state.model) if keep}

    def master_address(self) -> tuple[str, int]:
        """Called on rank 0 before the group forms: where the other ranks should connect."""
        return fsdp.free_port()

    def join_group(self, master_addr: str | None, master_port: int | None, device_index: int = 0) -> None:
        """Join the group hosted at master_addr:master_port (Ray), or at torchrun's MASTER_ADDR/MASTER_PORT when
        None; `device_index` is this worker's GPU among those it sees (Ray shows each worker only its own)."""
        self.device = fsdp.init_process_group(self.rank, self.world_size, master_addr, master_port, self.device_type,
                                              device_index)
        if master_addr is not None:
            # torchrun's variables, for libraries that adopt this process group (vLLM's external_launcher executor).
            os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size), MASTER_ADDR=master_addr,
                              MASTER_PORT=str(master_port))

    def global_batch_info(self, mini: Batch, mini_size: int, **extra) -> dict:
        """agg_loss arguments that normalise a rank-local micro-batch loss by the whole mini-batch across ranks
        (verl's global_batch_info): its valid-token count and sequence count, and the world size."""
        return dict(dp_size=self.world_size, global_batch_size=mini_size * self.world_size,
                    batch_num_tokens=fsdp.global_sum(mini.tensors["response_mask"].sum().item(), self.device), **extra)

    def peak_rss_bytes(self) -> int:
        return peak_rss_bytes()

    def node_and_pid(self) -> tuple[str, int]:
        import ray

        return ray.util.get_node_ip_address(), os.getpid()

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def quiet_worker_console(rank: int) -> None:
    """No "Loading weights" bar per rank; and every rank runs the same code, so a library warning (Python warnings,
    transformers' logger) is shown once, by rank 0 of the group, instead of once per worker."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if rank != 0:
        warnings.simplefilter("ignore")
        transformers.utils.logging.set_verbosity_error()


def freeze_startup_objects() -> None:
    """Move everything allocated so far (Ray, torch, transformers, the models) out of the garbage collector's
    reach (`gc.freeze`, as vLLM does after start-up): every later collection then scans only the objects of the
    training loop. Decoding allocates many short-lived objects per token, and a worker's full collections over its
    whole start-up heap cost about 0.1-0.2 s of generation per step on the standard CPU workload."""
    gc.collect()
    gc.freeze()


def check_step(stepped: bool, policy: str, role: str, norm: float) -> None:
    """trainer.nonfinite_grad=stop: a skipped (non-finite) update ends the run with one line."""
    if not stepped and policy == "stop":
        raise UserError(
            f"non-finite {role} loss or gradient norm ({norm}); the update was not applied and the run stops "
            f"(trainer.nonfinite_grad=stop); set trainer.nonfinite_grad=skip to skip such steps instead"
        )


def micro_batches(batch: Batch, size: int | None) -> list[Batch]:
    return [batch] if not size else batch.split(size)


def mini_batches(batch: Batch, size: int, shuffle: bool, seed: int) -> list[Batch]:
    """The rank-local mini-batches of one PPO epoch (optionally a seeded shuffle of the rows first)."""
    if shuffle:
        generator = torch.Generator().manual_seed(seed)
        batch = batch.index(torch.randperm(len(batch), generator=generator))
    return batch.split(size)


class MetricSums:
    """Per-rank accumulation of metric values; `reduce` averages over calls and then over ranks."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = defaultdict(list)

    def add(self, **metrics: float) -> None:
        for key, value in metrics.items():
            self.values[key].append(float(value.detach().item() if isinstance(value, torch.Tensor) else value))

    def reduce(self, device: torch.device) -> dict[str, Any]:
        out = {}
        for key in sorted(self.values):
            local = sum(self.values[key]) / len(self.values[key])
            out[key] = fsdp.global_mean(local, device)
        return out
