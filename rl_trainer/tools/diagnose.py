"""`python -m rl_trainer.tools.diagnose [overrides]`: what to paste into a bug report.

Versions, devices, CPU/GPU counts, the Ray cluster (when RAY_ADDRESS points at one), and the batch arithmetic
of the config that the same overrides would give `python -m rl_trainer.main`.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

PACKAGES = ("rl_trainer", "torch", "transformers", "ray", "vllm", "hydra-core", "omegaconf", "datasets", "pyarrow",
            "wandb", "tokenizers")


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def devices() -> dict[str, str]:
    import torch

    out = {"cpu_count": str(os.cpu_count()), "torch_threads": str(torch.get_num_threads()),
           "cuda_available": str(torch.cuda.is_available())}
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda or "?"
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            out[f"gpu{i}"] = f"{props.name}, {props.total_memory / 2**30:.0f} GiB, bf16={torch.cuda.is_bf16_supported()}"
        out["nccl"] = ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else "?"
    return out


def ray_status() -> dict[str, str]:
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        return {"ray": "no cluster configured (RAY_ADDRESS unset): main starts a local one on this machine"}
    import ray

    try:
        ray.init(address=address, log_to_driver=False)
    except Exception as exc:  # report, don't crash: this is a diagnostic
        return {"ray": f"cannot connect to RAY_ADDRESS={address}: {type(exc).__name__}: {exc}"}
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        total = ray.cluster_resources()
        return {"ray": f"connected to {address}", "alive_nodes": str(len(nodes)),
                "resources": ", ".join(f"{k}={v:g}" for k, v in sorted(total.items()) if k in ("CPU", "GPU", "memory"))}
    finally:
        ray.shutdown()


def batch_plan(overrides: list[str]) -> dict[str, str]:
    from hydra import compose, initialize_config_dir

    from rl_trainer.config import validate_config
    from rl_trainer.errors import UserError
    from rl_trainer.main import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose("ppo_trainer", overrides=overrides)
    try:
        plan = validate_config(cfg, overrides)
    except UserError as exc:
        return {"config": f"INVALID: {exc}"}
    arr = cfg.actor_rollout_ref
    return {
        "adv_estimator": cfg.algorithm.adv_estimator, "critic": str(cfg.critic.enable), "device": cfg.trainer.device,
        "workers": f"{cfg.trainer.nnodes} node(s) x {cfg.trainer.n_gpus_per_node} = {plan.world_size}",
        "sequences per step": f"data.train_batch_size * rollout.n = {cfg.data.train_batch_size} * {plan.n} = "
                              f"{plan.train_sequences} ({plan.train_sequences // plan.world_size} per worker)",
        "actor mini-batch": f"{arr.actor.ppo_mini_batch_size} prompts = {plan.actor_mini_sequences_per_worker} sequences "
                            f"per worker, micro-batch {arr.actor.ppo_micro_batch_size_per_gpu}, "
                            f"{cfg.data.train_batch_size // arr.actor.ppo_mini_batch_size * arr.actor.ppo_epochs} "
                            f"optimizer step(s) per training step",
        "model": arr.model.path, "rollout": arr.rollout.name,
    }


def main(argv: list[str] | None = None) -> None:
    overrides = list(sys.argv[1:] if argv is None else argv)
    for title, section in (("versions", versions()), ("devices", devices()), ("ray", ray_status()),
                           ("config", batch_plan(overrides))):
        print(f"[{title}]")
        for key, value in section.items():
            print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
