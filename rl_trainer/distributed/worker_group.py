"""Worker groups on Ray placement groups: verl's resource pools and single-controller dispatch.

A `ResourcePool` reserves `nnodes` placement groups (one per node, STRICT_PACK) of `n_gpus_per_node` bundles;
each bundle is {CPU: cpus_per_worker} plus one GPU on CUDA. Several worker groups can share the pool (the
critic colocated with the actor): each takes a fraction of every bundle, as verl's colocated pools do.

A `WorkerGroup` starts one Ray actor per bundle (rank r on bundle r), forms their torch.distributed process
group, and offers two calls: `call` (same arguments on every rank) and `dispatch` (a `Batch` split into
world-size equal parts by rank, results concatenated back in rank order).
"""

from __future__ import annotations

from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rl_trainer.batch import Batch
from rl_trainer.errors import UserError, WorkerGroupError


class ResourcePool:
    def __init__(self, nnodes: int, n_per_node: int, device: str, cpus_per_worker: float, timeout_s: float = 60.0):
        self.nnodes, self.n_per_node, self.device, self.cpus_per_worker = nnodes, n_per_node, device, cpus_per_worker
        bundle = {"CPU": cpus_per_worker, **({"GPU": 1} if device == "cuda" else {})}
        have = ray.cluster_resources()
        for resource, per_worker in bundle.items():
            if nnodes * n_per_node * per_worker > have.get(resource, 0):
                raise UserError(
                    f"trainer.nnodes * trainer.n_gpus_per_node = {nnodes} * {n_per_node} workers need "
                    f"{nnodes * n_per_node * per_worker:g} {resource} but the Ray cluster has {have.get(resource, 0):g}; "
                    f"lower trainer.n_gpus_per_node / trainer.nnodes / trainer.cpus_per_worker or add machines"
                )
        self.placement_groups: list[PlacementGroup] = [
            placement_group([dict(bundle) for _ in range(n_per_node)], strategy="STRICT_PACK") for _ in range(nnodes)
        ]
        try:
            ray.get([pg.ready() for pg in self.placement_groups], timeout=timeout_s)
        except GetTimeoutError:
            self.release()
            raise UserError(
                f"cannot reserve {nnodes} node(s) x {n_per_node} workers x {bundle} within {timeout_s:.0f}s: the Ray "
                f"cluster has {{CPU: {have.get('CPU', 0):g}, GPU: {have.get('GPU', 0):g}}} in {len(ray.nodes())} "
                f"node(s); lower trainer.n_gpus_per_node / trainer.nnodes / trainer.cpus_per_worker or add machines"
            ) from None

    @property
    def world_size(self) -> int:
        return self.nnodes * self.n_per_node

    def bundle(self, rank: int) -> tuple[PlacementGroup, int]:
        return self.placement_groups[rank // self.n_per_node], rank % self.n_per_node

    def release(self) -> None:
        for pg in self.placement_groups:
            remove_placement_group(pg)


class WorkerGroup:
    def __init__(self, name: str, worker_cls: type, pool: ResourcePool, config: dict, share: float = 1.0):
        """Start `pool.world_size` actors of `worker_cls`, each taking `share` of its bundle, and join their group."""
        self.name = name
        self.world_size = pool.world_size
        remote_cls = ray.remote(worker_cls)
        threads = max(1, int(pool.cpus_per_worker))
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        self.workers = []
        for rank in range(self.world_size):
            pg, index = pool.bundle(rank)
            options = dict(
                num_cpus=pool.cpus_per_worker * share,
                num_gpus=share if pool.device == "cuda" else 0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index),
                name=f"{name}_rank{rank}_{id(self):x}",
                runtime_env={"env_vars": env},
                max_concurrency=1,
            )
            self.workers.append(remote_cls.options(**options).remote(config, rank, self.world_size, pool.device, threads))
        master_addr, master_port = self._get([self.workers[0].master_address.remote()])[0]
        self.call("join_group", master_addr, master_port)

    def _get(self, refs: list) -> list:
        """Results in rank order. Fails as soon as any rank fails: a dead rank must not leave the driver waiting on
        the others, which would block in a collective with it."""
        rank_of = {ref: rank for rank, ref in enumerate(refs)}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(ready[0])
            except RayActorError as exc:
                reason = str(getattr(exc, "error_msg", "") or exc).strip().splitlines()[0]
                raise WorkerGroupError(f"worker group {self.name!r} rank {rank_of[ready[0]]} died ({reason})") from exc
            except ray.exceptions.RayTaskError as exc:
                # A UserError inside a worker (e.g. a model path it cannot load) stays a one-line UserError;
                # anything else is a bug and keeps its traceback.
                if isinstance(exc.cause, UserError):
                    raise exc.cause from None
                raise
        return ray.get(refs)

    def call(self, method: str, *args: Any, **kwargs: Any) -> list:
        """`method(*args, **kwargs)` on every rank; the results in rank order."""
        return self._get([getattr(w, method).remote(*args, **kwargs) for w in self.workers])

    def dispatch(self, method: str, batch: Batch, **kwargs: Any) -> Batch:
        """Split `batch` by data-parallel rank, run `method` on each part, concatenate the parts back."""
        parts = batch.chunk(self.world_size)
        return Batch.concat(self._get([getattr(w, method).remote(p, **kwargs) for w, p in zip(self.workers, parts)]))

    def dispatch_metrics(self, method: str, batch: Batch) -> dict[str, float]:
        """Like dispatch, for methods that return the same all-reduced metrics dict on every rank."""
        parts = batch.chunk(self.world_size)
        return self._get([getattr(w, method).remote(p) for w, p in zip(self.workers, parts)])[0]

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker, no_restart=True)

