"""`python -m rl_trainer.tools.diagnose [overrides]`: what to paste into a bug report.

Versions, devices, CPU/GPU counts, the Ray cluster that `python -m rl_trainer.main` would join
(ray_kwargs.ray_init.address, else RAY_ADDRESS), and the batch arithmetic
of the config that the same overrides would give `python -m rl_trainer.main`.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys

from omegaconf import DictConfig

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


def ray_status(cfg: DictConfig | None) -> dict[str, str]:
    """The cluster `python -m rl_trainer.main` would join with this config: ray_kwargs.ray_init.address, else
    RAY_ADDRESS (rl_trainer.main.ray_address decides, so the two never disagree)."""
    if cfg is None:
        return {"ray": "not checked: the config did not compose (see [config])"}
    from rl_trainer.config import ray_address

    address = ray_address(cfg)
    if not address:
        why = ("ray_kwargs.ray_init.address=local" if cfg.ray_kwargs.ray_init.get("address") == "local"
               else "ray_kwargs.ray_init.address and RAY_ADDRESS unset")
        return {"ray": f"no cluster to join ({why}): main starts a local one on this machine"}
    source = "ray_kwargs.ray_init.address" if cfg.ray_kwargs.ray_init.get("address") else "RAY_ADDRESS"
    import ray

    try:
        ray.init(address=address, log_to_driver=False)
    except Exception as exc:  # report, don't crash: this is a diagnostic
        return {"ray": f"cannot connect to {source}={address}: {type(exc).__name__}: {exc}"}
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        total = ray.cluster_resources()
        return {"ray": f"connected to {address} ({source})", "alive_nodes": str(len(nodes)),
                "resources": ", ".join(f"{k}={v:g}" for k, v in sorted(total.items()) if k in ("CPU", "GPU", "memory"))}
    finally:
        ray.shutdown()


def compose_config(overrides: list[str]) -> tuple[DictConfig | None, str | None]:
    """The config `python -m rl_trainer.main` would compose from these overrides (verl's --config-path /
    --config-name included, resolved as main resolves them), or (None, the error)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from rl_trainer.errors import UserError
    from rl_trainer.main import config_flags

    try:
        argv, config_dir, name = config_flags(overrides)
        overrides[:] = [a for a in argv if not a.startswith(("--config-path=", "--config-name="))]
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            return compose(name, overrides=overrides), None
    except UserError as exc:
        return None, str(exc)
    except (HydraException, OmegaConfBaseException) as exc:  # an unknown key, a bad override: main would refuse it too
        return None, f"{type(exc).__name__}: {exc}"


def batch_plan(cfg: DictConfig, overrides: list[str]) -> dict[str, str]:
    from rl_trainer.config import validate_config
    from rl_trainer.errors import UserError

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


USAGE = """usage: python -m rl_trainer.tools.diagnose [--config-path=DIR] [--config-name=NAME] [key=value ...]

Prints versions, devices, the Ray cluster a run would join and the config's batch arithmetic for the given
overrides (the same ones `python -m rl_trainer.main` takes). Exits 1 when the config is invalid."""


def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in overrides):
        print(USAGE)
        return 0
    cfg, compose_error = compose_config(overrides)
    config = {"config": f"INVALID: {compose_error}"} if cfg is None else batch_plan(cfg, overrides)
    for title, section in (("versions", versions()), ("devices", devices()), ("ray", ray_status(cfg)),
                           ("config", config)):
        print(f"[{title}]")
        for key, value in section.items():
            print(f"  {key}: {value}")
    return 1 if str(config.get("config", "")).startswith("INVALID") else 0


if __name__ == "__main__":
    sys.exit(main())
