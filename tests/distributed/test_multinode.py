"""Multi-node Ray: the trainer joins a running cluster, puts each node-group on its own node, and refuses a
cluster whose nodes are too small in one line.

The cluster is simulated (ray.cluster_utils.Cluster): 2 nodes of 1 CPU each, the head included, all on this
machine. They share one IP, so nodes are told apart by node id. One module-scoped cluster serves every test;
the last test adds a third node and removes it again.
"""

from __future__ import annotations

import re

import pytest
from helpers import REPO, run_cli, stop_shared_ray

from rl_trainer.distributed.worker_group import check_slots, workers_per_node
from rl_trainer.errors import UserError
from rl_trainer.tracking import read_metrics

# The digit-shift task on its 0.4M-parameter model: 1-token responses, so a step takes well under a second.
TINY = ["--config-name", "digit_shift", "trainer.total_training_steps=2", "trainer.val_before_train=false",
        "trainer.test_freq=-1", "trainer.save_freq=-1", "trainer.cpus_per_worker=1"]
PLACEMENT = re.compile(r"^placement: (.*)$", re.MULTILINE)


@pytest.fixture(scope="module")
def cluster(isolated_env):
    from ray.cluster_utils import Cluster

    stop_shared_ray()  # this module's cluster is the only one
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def node_ids(cluster) -> set[str]:
    return {node.node_id for node in cluster.list_all_nodes()}


@pytest.mark.slow
def test_grpo_on_two_nodes_puts_one_rank_on_each(cluster, tmp_path):
    proc = run_cli([*TINY, "trainer.nnodes=2", "trainer.n_gpus_per_node=1", f"hydra.run.dir={tmp_path}/run",
                    f"trainer.default_local_dir={tmp_path}/ckpt"],
                   cwd=tmp_path, timeout=180, env={"RAY_ADDRESS": cluster.address})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert not proc.leftover  # a driver that joined a cluster leaves no Ray daemons of its own behind
    assert {record["step"] for record in read_metrics(tmp_path / "run")} == {1, 2}

    # "placement: rank 0 on node 1a2b3c4d5e6f (192.0.2.2, pid 123); rank 1 on node ..."
    placements = PLACEMENT.findall(proc.stdout)
    assert len(placements) == 1, proc.stdout[-3000:]
    ranks = dict(re.findall(r"rank (\d) on node ([0-9a-f]{12}) ", placements[0]))
    assert sorted(ranks) == ["0", "1"], placements[0]
    assert ranks["0"] != ranks["1"], f"both ranks on one node: {placements[0]}"
    assert {node[:12] for node in node_ids(cluster)} == set(ranks.values())


@pytest.mark.slow
def test_too_few_slots_per_node_is_one_line_even_when_the_total_suffices(cluster, tmp_path):
    # 2 CPUs in all, but no node can host 2 workers; the address comes from the config key this time.
    proc = run_cli([*TINY, "trainer.nnodes=1", "trainer.n_gpus_per_node=2", f"hydra.run.dir={tmp_path}/run",
                    f"trainer.default_local_dir={tmp_path}/ckpt", f"ray_kwargs.ray_init.address={cluster.address}"],
                   cwd=tmp_path, timeout=120, env={"RAY_ADDRESS": ""})
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-6000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: trainer.nnodes=1 x trainer.n_gpus_per_node=2 needs 1 Ray node(s) that can each host 2 worker(s) of "
        "{CPU: 1}, but only 0 of the cluster's 2 alive node(s) can (at most 1, 1 worker(s) each); lower "
        "trainer.nnodes / trainer.n_gpus_per_node / trainer.cpus_per_worker or add machines"
    ], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not proc.leftover


@pytest.mark.slow
def test_wait_for_nodes(cluster):
    from rl_trainer.distributed.cluster import wait_for_nodes

    assert wait_for_nodes(cluster.address, 2, timeout_s=30) == 2
    with pytest.raises(TimeoutError, match=r"only 2 of 3 Ray node\(s\) joined"):
        wait_for_nodes(cluster.address, 3, timeout_s=0.5, poll_s=0.1)


@pytest.mark.slow
def test_node_groups_land_on_distinct_nodes_when_one_node_could_take_both(cluster):
    # Nodes of 1, 1 and 8 CPUs: Ray 2.60 puts two 1-CPU STRICT_PACK groups both on the 8-CPU node (the lowest
    # utilisation); the pool must still use two nodes.
    import ray

    from rl_trainer.distributed import ResourcePool

    big = cluster.add_node(num_cpus=8)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        pool = ResourcePool(2, 1, "cpu", 1, timeout_s=30)
        try:
            placed = pool.placement()
            assert placed[0] != placed[1] and set(placed) <= node_ids(cluster)
            assert pool.describe_placement().startswith("placement: rank 0 on node ")
        finally:
            pool.release()
        # Two workers per node: only the big node can host a group, so nnodes=2 is refused before reserving.
        with pytest.raises(UserError, match=r"only 1 of the cluster's 3 alive node\(s\) can \(at most 8, 1, 1 "):
            ResourcePool(2, 2, "cpu", 1)
    finally:
        ray.shutdown()
        cluster.remove_node(big)
        cluster.wait_for_nodes()


# --- no Ray needed ---

def test_slots_are_counted_per_node_not_over_the_cluster():
    def node(alive=True, **resources):
        return {"Alive": alive, "Resources": resources}

    two_small = [node(CPU=1.0), node(CPU=1.0), node(alive=False, CPU=64.0)]
    assert workers_per_node(two_small, {"CPU": 1}) == [1, 1]
    check_slots(2, 1, {"CPU": 1}, two_small)
    with pytest.raises(UserError, match=r"^trainer.nnodes=1 x trainer.n_gpus_per_node=2 needs 1 Ray node"):
        check_slots(1, 2, {"CPU": 1}, two_small)
    gpus = [node(CPU=32.0, GPU=8.0), node(CPU=4.0, GPU=8.0), node(CPU=32.0)]
    assert workers_per_node(gpus, {"CPU": 2, "GPU": 1}) == [8, 2, 0]
    assert workers_per_node([node(CPU=1.0)], {"CPU": 0.5}) == [2]
    with pytest.raises(UserError, match=r"only 1 of the cluster's 3 alive node\(s\) can \(at most 8, 2, 0 worker"):
        check_slots(2, 8, {"CPU": 2, "GPU": 1}, gpus)


def test_the_config_key_wins_over_ray_address_and_skips_the_local_checks(monkeypatch):
    from hydra import compose, initialize_config_dir

    from rl_trainer.config import ray_address
    from rl_trainer.main import check_local_resources

    def cfg(*overrides):
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
            return compose("ppo_trainer", overrides=list(overrides))

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(cfg()) is None
    with pytest.raises(UserError, match="ray_kwargs.ray_init.address"):
        check_local_resources(cfg("trainer.nnodes=2"))
    check_local_resources(cfg("trainer.nnodes=2", "ray_kwargs.ray_init.address=10.0.0.1:6379"))  # the cluster decides
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    assert ray_address(cfg()) == "10.0.0.2:6379"
    assert ray_address(cfg("ray_kwargs.ray_init.address=10.0.0.1:6379")) == "10.0.0.1:6379"
    assert ray_address(cfg("ray_kwargs.ray_init.address=local")) is None


def test_scripts_are_executable_bash():
    import os
    import subprocess

    for name in ("ray_start_head.sh", "ray_start_worker.sh", "slurm_grpo.sbatch"):
        path = REPO / "scripts" / name
        assert os.access(path, os.X_OK), name
        subprocess.run(["bash", "-n", str(path)], check=True)
