"""Process orchestration. Ray (worker_group.py): placement groups sized nnodes x n_gpus_per_node, and worker groups
that dispatch batches; cluster.py: waiting for a cluster's nodes. the torchrun driver that runs the same worker classes
without Ray lives in rl_trainer/tools/torchrun.py.

The Ray names load on first use, so `python -m rl_trainer.tools.torchrun` runs where Ray is not installed.
"""

__all__ = ["ResourcePool", "WorkerGroup", "WorkerGroupError"]


def __getattr__(name: str):
    if name in __all__:
        from rl_trainer.distributed import worker_group

        return getattr(worker_group, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
