"""`python -m rl_trainer.distributed.cluster --nodes N`: wait until a Ray cluster has N alive nodes.

Job scripts (scripts/slurm_grpo.sbatch) start `ray start --head` and `ray start --address` on their nodes in the
background; the trainer must not start before every node has joined, or the resource pool would find too few
nodes. This waits for the head's port to open (ray.init on a port nobody listens on retries for minutes), joins
the cluster at `--address` (default RAY_ADDRESS), and polls `ray.nodes()` until N are alive. Exit code 0 when they
are, 1 with a one-line error after `--timeout` seconds.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time


def _wait_for_port(address: str, deadline: float) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():  # "auto" and the like: nothing to probe, let Ray find it
        return
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens at {address} (is the Ray head up?)") from None
            time.sleep(0.5)


def wait_for_nodes(address: str, nodes: int, timeout_s: float = 300.0, poll_s: float = 1.0) -> int:
    """Block until the Ray cluster at `address` has at least `nodes` alive nodes; return how many it has.
    Raises TimeoutError (naming how many joined) after `timeout_s`."""
    import ray

    deadline = time.monotonic() + timeout_s
    _wait_for_port(address, deadline)
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        while True:
            alive = sum(1 for node in ray.nodes() if node.get("Alive"))
            if alive >= nodes:
                return alive
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {alive} of {nodes} Ray node(s) joined {address} within {timeout_s:g}s")
            time.sleep(poll_s)
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rl_trainer.distributed.cluster", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, required=True, help="alive nodes to wait for")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster (default: RAY_ADDRESS)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    args = parser.parse_args(argv)
    if not args.address:
        sys.exit("error: no Ray cluster address: pass --address or set RAY_ADDRESS")
    try:
        alive = wait_for_nodes(args.address, args.nodes, args.timeout)
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"Ray cluster at {args.address}: {alive} node(s) alive")


if __name__ == "__main__":
    main()
