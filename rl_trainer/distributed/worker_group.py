"""Worker groups on Ray placement groups: verl's resource pools and single-controller dispatch.

A `ResourcePool` reserves `nnodes` placement groups (one per node, STRICT_PACK) of `n_gpus_per_node` bundles;
each bundle is {CPU: cpus_per_worker} plus one GPU on CUDA. Several worker groups can share the pool (the
critic colocated with the actor): each takes a fraction of every bundle, as verl's colocated pools do.

Placement. `trainer.nnodes` means distinct machines, and the pool guarantees it: rank r runs on node-group
r // n_gpus_per_node, and no two node-groups share a node. Ray alone does not promise this: with STRICT_PACK
per group (verl's layout) it places each group by node utilisation, and on nodes of different sizes it puts two
groups on the bigger node (measured with Ray 2.60: 8 + 2 CPUs, two 1-CPU groups, both on the 8-CPU node). So the
groups are reserved one at a time; a group that lands on a node an earlier group already uses is kept reserved
(it fills that node, so the next attempt must go elsewhere) and released once all `nnodes` groups sit on distinct
nodes. This only uses Ray's public placement-group API and works for any n_gpus_per_node (a single STRICT_SPREAD
group would only cover n_gpus_per_node == 1). Before reserving anything, the pool counts the alive nodes that
can each host n_gpus_per_node workers (by their total resources) and stops with a one-line `UserError` when there
are fewer than nnodes; a reservation that still does not complete within `timeout_s` (resources busy with other
jobs) is the same kind of error. `placement()` / `describe_placement()` say which node each rank landed on.

A `WorkerGroup` starts one Ray actor per bundle (rank r on bundle r), forms their torch.distributed process
group, and offers two calls: `call` (same arguments on every rank) and `dispatch` (a `Batch` split into
world-size equal parts by rank, results concatenated back in rank order).
"""

from __future__ import annotations

import math
import time
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import PlacementGroup, placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rl_trainer.batch import Batch
from rl_trainer.errors import UserError, WorkerGroupError


def workers_per_node(nodes: list[dict], bundle: dict[str, float]) -> list[int]:
    """How many workers of `bundle` (e.g. {"CPU": 1, "GPU": 1}) each alive node of `ray.nodes()` can host, by its
    total resources; in the order of `nodes`."""
    counts = []
    for node in nodes:
        if not node.get("Alive"):
            continue
        have = node.get("Resources", {})
        counts.append(min(math.floor(have.get(r, 0) / need + 1e-9) for r, need in bundle.items() if need > 0))
    return counts


def check_slots(nnodes: int, n_per_node: int, bundle: dict[str, float], nodes: list[dict]) -> None:
    """A one-line `UserError` unless at least `nnodes` alive nodes can each host `n_per_node` workers of `bundle`.

    Counted per node, not over the cluster's total: 2 nodes x 1 CPU cannot host nnodes=1 n_gpus_per_node=2."""
    per_node = workers_per_node(nodes, bundle)
    fit = sum(count >= n_per_node for count in per_node)
    if fit >= nnodes:
        return
    shown = ", ".join(map(str, sorted(per_node, reverse=True)[:8])) + (", ..." if len(per_node) > 8 else "")
    spec = "{" + ", ".join(f"{k}: {v:g}" for k, v in bundle.items()) + "}"
    raise UserError(
        f"trainer.nnodes={nnodes} x trainer.n_gpus_per_node={n_per_node} needs {nnodes} Ray node(s) that can each "
        f"host {n_per_node} worker(s) of {spec}, but only {fit} of the cluster's {len(per_node)} alive node(s) can "
        f"(at most {shown or 0} worker(s) each); lower trainer.nnodes / trainer.n_gpus_per_node / "
        f"trainer.cpus_per_worker or add machines"
    )


class ResourcePool:
    def __init__(self, nnodes: int, n_per_node: int, device: str, cpus_per_worker: float, timeout_s: float = 60.0):
        self.nnodes, self.n_per_node, self.device, self.cpus_per_worker = nnodes, n_per_node, device, cpus_per_worker
        bundle = {"CPU": cpus_per_worker, **({"GPU": 1} if device == "cuda" else {})}
        check_slots(nnodes, n_per_node, bundle, ray.nodes())
        self.placement_groups: list[PlacementGroup] = []
        self._node_ids: list[str] = []
        spare: list[PlacementGroup] = []  # groups that landed on an already used node, held until the end
        deadline = time.monotonic() + timeout_s
        try:
            while len(self.placement_groups) < nnodes:
                pg = placement_group([dict(bundle) for _ in range(n_per_node)], strategy="STRICT_PACK")
                try:
                    ray.get(pg.ready(), timeout=max(0.0, deadline - time.monotonic()))
                except GetTimeoutError:
                    remove_placement_group(pg)
                    self.release()
                    have = ray.cluster_resources()
                    raise UserError(
                        f"cannot reserve {nnodes} node(s) x {n_per_node} workers x {bundle} within {timeout_s:.0f}s: the "
                        f"Ray cluster has {{CPU: {have.get('CPU', 0):g}, GPU: {have.get('GPU', 0):g}}} in "
                        f"{len(ray.nodes())} node(s), some of it in use; lower trainer.n_gpus_per_node / trainer.nnodes / "
                        f"trainer.cpus_per_worker or add machines"
                    ) from None
                node = _node_of(pg)
                if node in self._node_ids:
                    spare.append(pg)
                else:
                    self.placement_groups.append(pg)
                    self._node_ids.append(node)
        finally:
            for pg in spare:
                remove_placement_group(pg)

    @property
    def world_size(self) -> int:
        return self.nnodes * self.n_per_node

    def bundle(self, rank: int) -> tuple[PlacementGroup, int]:
        return self.placement_groups[rank // self.n_per_node], rank % self.n_per_node

    def placement(self) -> list[str]:
        """The Ray node id of each rank's bundle, in rank order."""
        return [self._node_ids[rank // self.n_per_node] for rank in range(self.world_size)]

    def describe_placement(self, node_and_pid: list[tuple[str, int]] | None = None) -> str:
        """One line: which node each rank landed on, e.g. `placement: rank 0 on node 1a2b3c4d5e6f (10.0.0.1, pid 42);
        rank 1 on node ...`. `node_and_pid` (WorkerBase.node_and_pid of every rank) adds the workers' pids."""
        ips = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes()}
        parts = []
        for index, node in enumerate(self._node_ids):
            ranks = range(index * self.n_per_node, (index + 1) * self.n_per_node)
            label = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}-{ranks[-1]}"
            detail = ips.get(node, "?")
            if node_and_pid is not None:
                detail += ", pid " + ",".join(str(node_and_pid[r][1]) for r in ranks)
            parts.append(f"{label} on node {node[:12]} ({detail})")
        return "placement: " + "; ".join(parts)

    def release(self) -> None:
        for pg in self.placement_groups:
            remove_placement_group(pg)
        self.placement_groups, self._node_ids = [], []


def _node_of(pg: PlacementGroup) -> str:
    """The node a ready STRICT_PACK placement group sits on."""
    return next(iter(placement_group_table(pg)["bundles_to_node_id"].values()))


class WorkerGroup:
    def __init__(self, name: str, worker_cls: type, pool: ResourcePool, config: dict, share: float = 1.0):
        """Start `pool.world_size` actors of `worker_cls`, each taking `share` of its bundle, and join their group."""
        self.name = name
        self.world_size = pool.world_size
        remote_cls = ray.remote(worker_cls)
        threads = max(1, int(pool.cpus_per_worker))
        self.workers = []
        for rank in range(self.world_size):
            pg, index = pool.bundle(rank)
            options = dict(
                num_cpus=pool.cpus_per_worker * share,
                num_gpus=share if pool.device == "cuda" else 0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index),
                name=f"{name}_rank{rank}_{id(self):x}",
                max_concurrency=1,  # no runtime_env: a worker Ray started in advance can host the actor at once
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

