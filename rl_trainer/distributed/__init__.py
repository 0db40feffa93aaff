"""Process orchestration. Ray (worker_group.py): placement groups sized nnodes x n_gpus_per_node, and worker groups
that dispatch batches; cluster.py: waiting for a cluster's nodes; local_group.py: the in-process worker group with
the same verbs, one rank per process, which the torchrun driver (rl_trainer/tools/torchrun.py) and the Ray-free
tests of the loop use.

The names load on first use, so `python -m rl_trainer.tools.torchrun` runs where Ray is not installed (and
`python -m rl_trainer.distributed.cluster` does not import torch).
"""

__all__ = ["LocalWorkerGroup", "ResourcePool", "WorkerGroup", "WorkerGroupError"]


def __getattr__(name: str):
    if name == "LocalWorkerGroup":
        from rl_trainer.distributed import local_group

        return local_group.LocalWorkerGroup
    if name in __all__:
        from rl_trainer.distributed import worker_group

        return getattr(worker_group, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
