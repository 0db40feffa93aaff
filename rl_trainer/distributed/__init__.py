"""Ray orchestration: placement groups sized nnodes x n_gpus_per_node, and worker groups that dispatch batches."""

from rl_trainer.distributed.worker_group import ResourcePool, WorkerGroup, WorkerGroupError

__all__ = ["ResourcePool", "WorkerGroup", "WorkerGroupError"]
