"""What the actor and the critic workers share: joining their group, micro-batching, loss bookkeeping."""

from __future__ import annotations

import gc
import os
import warnings
from collections import defaultdict
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from rl_trainer.batch import Batch
from rl_trainer.errors import UserError
from rl_trainer.metrics import peak_rss_bytes
from rl_trainer.workers import fsdp, lora
from rl_trainer.workers.micro_batching import inverse_permutation, token_budget_micro_batches


# One micro-batch's part of an update: (micro_batch, agg_loss normalisers) -> (loss, averaged metrics, summed metrics).
MicroLoss = Callable[[Batch, dict], tuple[torch.Tensor, dict[str, Any], dict[str, Any]]]
# Where each role's update keys live in the config (for the messages that name them).
SECTIONS = {"actor": "actor_rollout_ref.actor", "critic": "critic"}


class WorkerBase:
    """A Ray actor that is one rank of a worker group with its own torch.distributed process group."""

    def __init__(self, config: dict, rank: int, world_size: int, device: str, threads: int):
        self.config: DictConfig = OmegaConf.create(config)
        self.rank, self.world_size, self.device_type, self.threads = rank, world_size, device, threads
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # before any tokenizer runs: no fork warnings, no oversubscription
        if device == "cpu":
            torch.set_num_threads(threads)  # torch's OpenMP and MKL pools alike
            keep_freed_memory()
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

    def save_hf(self, hf_dir: str, with_weights: bool, auto_class: Any, tokenizer: Any = None) -> None:
        """A Hugging Face folder of the trained model (rl_trainer.workers.fsdp.export_hf; call it on every rank).
        With LoRA the weights are the merged model (no PEFT needed to load it), and the adapter itself is always
        written to `hf_dir`/lora_adapter in PEFT's format (rl_trainer.workers.lora)."""
        model = self.train_state.model
        if not lora.is_lora(model):
            fsdp.export_hf(model, hf_dir, with_weights, auto_class, self.rank, tokenizer)
            return
        adapter = lora.adapter_full_state(model, self.rank == 0)  # collectives: the same order on every rank
        fsdp.export_hf(model, hf_dir, with_weights, auto_class, self.rank, tokenizer,
                       params=lora.merged_full_params(model))
        if adapter is not None and self.rank == 0:
            lora.save_adapter(model, os.path.join(hf_dir, lora.ADAPTER_DIR), adapter)

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

    def ppo_update(self, role: str, batch: Batch, section: DictConfig, micro_loss: MicroLoss,
                   **agg_extra) -> dict[str, float]:
        """The PPO update skeleton the actor and the critic share: epochs -> mini-batches -> micro-batches.

        For each of `section.ppo_epochs` epochs over this rank's rows, split into mini-batches of
        ppo_mini_batch_size * rollout.n / world_size rows (shuffled when `section.shuffle`), each an optimizer step:
        gradients accumulate over its micro-batches (`split_micro_batches`: ppo_micro_batch_size_per_gpu rows, or
        with use_dynamic_bsz a token budget of ppo_max_token_len_per_gpu; only the last one synchronises them
        across ranks); `micro_loss(micro_batch, agg)` returns (loss, metrics, summed): `agg` holds the global-batch
        normalisers (global_batch_info), so each micro-batch loss is already its share of the mini-batch loss and no
        accumulation scaling is needed, whatever the micro-batches' sizes: the summed micro-batch losses are the
        mini-batch's loss, so token-budget micro-batches give the fixed micro-batches' gradient up to float rounding
        (verl 0.9.1's engine normalises the same way; its older dp_actor scaled each dynamic micro-batch's loss by
        rows / mini-batch rows instead, which that normalisation makes unnecessary). `metrics` are averaged over
        micro-batches (so ratios such as pg_clipfrac depend on the micro-batch split, as in verl), `summed` summed
        over a mini-batch's micro-batches (its share of the loss) and then averaged over mini-batches. Then grad
        clip, a skipped step on a non-finite loss or gradient norm (trainer.nonfinite_grad), and one LR scheduler
        step for the whole update. Metrics are averaged over ranks; `<role>/lr` is the LR it used.
        """
        state = self.train_state
        mini_size = section.ppo_mini_batch_size * self.config.actor_rollout_ref.rollout.n // self.world_size
        state.model.train()
        metrics = MetricSums()
        update = state.scheduler.last_epoch  # updates so far: restored with the scheduler on resume
        for epoch in range(section.ppo_epochs):
            for mini in mini_batches(batch, mini_size, section.shuffle, self.config.trainer.seed, update, epoch):
                agg = self.global_batch_info(mini, mini_size, **agg_extra)
                summed: dict[str, float] = defaultdict(float)
                loss_finite = True
                micros, _ = self.split_micro_batches(mini, section.ppo_micro_batch_size_per_gpu, section.use_dynamic_bsz,
                                                     section.ppo_max_token_len_per_gpu,
                                                     f"{SECTIONS[role]}.ppo_max_token_len_per_gpu")
                for i, mb in enumerate(micros):
                    state.model.set_requires_gradient_sync(i == len(micros) - 1)
                    loss, micro_metrics, micro_summed = micro_loss(mb, agg)
                    loss_finite = loss_finite and bool(torch.isfinite(loss))
                    loss.backward()
                    metrics.add(**micro_metrics)
                    for key, value in micro_summed.items():
                        summed[key] += float(value)
                grad_norm, stepped = state.clip_and_step(loss_finite)
                check_step(stepped, self.config.trainer.nonfinite_grad, role, grad_norm)
                metrics.add(**summed, **{f"{role}/grad_norm": grad_norm, f"{role}/skipped_steps": float(not stepped)})
        lr = state.lr
        state.scheduler.step()
        out = metrics.reduce(self.device)
        out[f"{role}/lr"] = lr
        return out

    def split_micro_batches(self, batch: Batch, size: int | None, dynamic: bool, max_token_len: int,
                            key: str) -> tuple[list[Batch], np.ndarray | None]:
        """This rank's micro-batches of `batch`: consecutive chunks of at most `size` rows (None: one), or with
        `dynamic` (use_dynamic_bsz) token-budget micro-batches of at most `max_token_len` prompt + response tokens
        (rl_trainer.workers.micro_batching.token_budget_micro_batches; as many on every rank, a collective). With
        `dynamic`, also the row order that puts the micro-batches' concatenated rows back in `batch`'s order
        (`in_row_order`); None otherwise. `key` names max_token_len's config key in errors."""
        if not dynamic:
            return micro_batches(batch, size), None
        lengths = batch.tensors["attention_mask"].sum(-1).tolist()
        parts = token_budget_micro_batches(lengths, max_token_len, key, agree_max=self.global_max)
        return [batch.index(part) for part in parts], inverse_permutation([i for part in parts for i in part])

    def global_max(self, value: int) -> int:
        """The largest `value` over this worker group's ranks (a collective)."""
        t = torch.tensor([int(value)], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def peak_rss_bytes(self) -> int:
        return peak_rss_bytes()

    def optimizer_state_bytes(self) -> int:
        """Bytes of this rank's optimizer state (its shard of the Adam moments: 2 x trained parameters, fp32)."""
        total = 0
        for state in self.train_state.optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    local = value.to_local() if hasattr(value, "to_local") else value
                    total += local.numel() * local.element_size()
        return total

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


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a CPU worker frees for its next allocations instead of handing it back
    to the kernel: allocations under 32 MiB come from the heap (M_MMAP_THRESHOLD at its 64-bit maximum; glibc's
    default starts at 128 KiB and only rises as mmapped blocks are freed), and freed memory stays in the process
    (M_TRIM_THRESHOLD at 2 GiB, the largest value its int takes). A training step allocates and frees the same
    tensors in every micro-batch (a micro-batch's logits on the standard workload are 16 MiB); by default each
    comes back as fresh pages that the kernel zeroes and maps one page fault at a time (about 34,000 faults a
    second in a worker on the standard CPU workload, 5 % of its time; docs/performance.md, change 9). The numbers
    computed are unchanged; the worker's resident memory stays near its peak between steps. Returns whether it
    applied (glibc only: elsewhere, e.g. macOS or musl, the allocator is left as it is)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, (1 << 31) - 1))


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
    """Chunks of at most `size` rows (verl's micro-batches): the last may be shorter, and a size above the batch's
    gives the whole batch in one chunk; None = the whole batch."""
    return [batch] if not size else batch.split(size)


def in_row_order(outputs: list[torch.Tensor], inverse: np.ndarray | None) -> torch.Tensor:
    """The micro-batches' outputs, concatenated, in the rows' original order (`split_micro_batches`' inverse)."""
    out = torch.cat(outputs)
    return out if inverse is None else out[torch.from_numpy(inverse)]


def mini_batches(batch: Batch, size: int, shuffle: bool, seed: int, update: int, epoch: int) -> list[Batch]:
    """The rank-local mini-batches of one PPO epoch; with `shuffle`, of a permutation of the rows drawn from
    (seed, update, epoch): a different one at every update and every epoch, the same again after a resume.

    verl 0.9.1 differs knowingly: it seeds its mini-batch loader with `data_loader_seed` at every update, so each
    step draws the same sequence of permutations."""
    if shuffle:
        entropy = np.random.SeedSequence([seed, update, epoch]).generate_state(1, np.uint64)[0]
        generator = torch.Generator().manual_seed(int(entropy))
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
