"""An in-process worker group: the driver and its worker share one process, one rank per process (SPMD).

`LocalWorkerGroup` answers the same verbs as the Ray `WorkerGroup` (`call`, `dispatch`, `dispatch_metrics`,
`world_size`, `shutdown`), so `PPOTrainer.train_step` runs unchanged on it. Two places use it:

- the torchrun driver (rl_trainer/tools/torchrun.py): every torchrun process runs a driver and its local
  worker; the worker's torch.distributed group spans the torchrun ranks (torchrun's MASTER_ADDR/MASTER_PORT), so
  FSDP shards the model and reduces gradients over all of them, while each driver holds only its rank's share of
  the batch;
- the Ray-free tests of the loop (tests/test_trainer_loop.py): world size 1, gloo, in the pytest process.

From the driver's side the group has one worker: `world_size` is 1 (the number of parts `dispatch` splits this
driver's batch into), `call` returns a one-element list, and `dispatch` hands the whole batch to the worker. The
worker itself knows the torch.distributed world it belongs to (`ranks`). Per-rank metrics of the driver
(`perf/throughput`, `perf/peak_rss_gb/...`, the data metrics) are therefore this rank's; the worker's update
metrics are all-reduced over the ranks by the worker, as under Ray.

Several groups may live in one process (the critic next to the actor): the first forms the process's
torch.distributed group and ends it on `shutdown`; later ones share it. No Ray import.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from rl_trainer.batch import Batch


class LocalWorkerGroup:
    def __init__(self, name: str, worker_cls: type, config: dict, *, rank: int, ranks: int, device: str,
                 threads: int, device_index: int = 0, master: tuple[str, int] | None = None):
        """Build `worker_cls(config, rank, ranks, device, threads)` in this process and put it in the process's
        torch.distributed group of `ranks` processes: formed here at `master` (address, port), or from torchrun's
        environment when None; adopted when an earlier group of this process already formed it. `device_index`:
        this process's GPU (torchrun's LOCAL_RANK)."""
        self.name, self.world_size, self.ranks = name, 1, ranks
        self.worker = worker_cls(config, rank, ranks, device, threads)
        self.owns_process_group = not dist.is_initialized()
        if self.owns_process_group:
            address, port = master if master is not None else (None, None)
            self.worker.join_group(address, port, device_index=device_index)
        else:
            if dist.get_world_size() != ranks:
                raise ValueError(f"worker group {name!r} wants {ranks} ranks but this process's torch.distributed "
                                 f"group has {dist.get_world_size()}")
            self.worker.device = torch.device("cuda", device_index) if device == "cuda" else torch.device("cpu")

    def call(self, method: str, *args: Any, **kwargs: Any) -> list:
        """`method(*args, **kwargs)` on the worker; its result as a one-element list (results in rank order)."""
        return [getattr(self.worker, method)(*args, **kwargs)]

    def dispatch(self, method: str, batch: Batch, **kwargs: Any) -> Batch:
        """`method` on the whole batch (this driver's share). The worker gets its own container, as a Ray worker gets
        its own copy: keys it adds or drops do not reach the driver's batch."""
        return getattr(self.worker, method)(_container_copy(batch), **kwargs)

    def dispatch_metrics(self, method: str, batch: Batch) -> dict[str, float]:
        """Like dispatch, for methods that return metrics (all-reduced over the ranks by the worker)."""
        return getattr(self.worker, method)(_container_copy(batch))

    def shutdown(self) -> None:
        """End the process group if this group formed it (the worker's shutdown), after the groups that share it."""
        if self.owns_process_group:
            self.worker.shutdown()


def _container_copy(batch: Batch) -> Batch:
    return Batch(dict(batch.tensors), dict(batch.non_tensors), dict(batch.meta))
