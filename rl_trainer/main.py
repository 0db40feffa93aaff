"""`python -m rl_trainer.main [overrides]`: the Hydra entry point.

Three stages. The config stage composes and checks the config alone (before anything starts, so a mistyped
command line fails in a second). The input stage resolves the model, tokenizer, reward function and datasets, in
a thread beside Ray's start and the workers' spawn (its seconds of imports and tokenisation overlap theirs); a bad
input still ends the run at start-up, in the same one line, before any worker loads a model, and Ray is shut down.
Then the worker groups load their models and the training loop runs.
"""

from __future__ import annotations

import logging
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from rl_trainer.errors import UserError, WorkerGroupError
from rl_trainer.sweep import job_tag, register_resolver

if TYPE_CHECKING:  # annotations only: the modules load when the stages run
    from rl_trainer.checkpoint import CheckpointManager
    from rl_trainer.config import BatchPlan

log = logging.getLogger("rl_trainer")
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")
register_resolver()  # before Hydra composes: configs/ppo_trainer.yaml names sweep jobs with it


# Configs in configs/ that belong to another entry point than this one.
OTHER_ENTRY_POINTS = {"sft_trainer": "rl_trainer.sft", "rm_trainer": "rl_trainer.rm"}


def config_flags(argv: list[str]) -> tuple[list[str], str, str]:
    """verl scripts pass `--config-path=config --config-name=ppo_trainer` (or -cp / -cn), meaning verl's own config
    directory; Hydra would look for `config` beside rl_trainer/main.py and fail. Returns (argv with the path made
    absolute, config dir, config name): a relative path that exists from the working directory is taken from there,
    one that does not becomes rl_trainer's configs/ (with a notice); a config name that directory lacks is an error.
    A `+key=value` becomes `++key=value` (add or override): verl scripts add with `+` keys their verl version lacked,
    which Hydra would refuse here because rl_trainer declares them ("An item is already at ..."); a `+key` that
    nothing reads is still refused, by rl_trainer.compat. Config groups (`+variant=grpo`) keep their `+`."""
    argv, config_dir, name = list(argv), CONFIG_DIR, "ppo_trainer"
    flags = {"--config-path": "path", "-cp": "path", "--config-name": "name", "-cn": "name"}
    i = 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        if flag not in flags:
            i += 1
            continue
        if not eq:  # `--config-path DIR`: the value is the next argument
            if i + 1 >= len(argv):
                raise UserError(f"{flag} needs a value, e.g. {flag}=ppo_trainer")
            value = argv.pop(i + 1)
        if flags[flag] == "name":
            name = value.removesuffix(".yaml")
            argv[i] = f"--config-name={name}"
        else:
            if Path(value).is_absolute() or (Path.cwd() / value).is_dir():
                config_dir = str((Path.cwd() / value).resolve())
            else:
                print(f"notice: {flag}={value} is not a directory here; reading rl_trainer's configs ({CONFIG_DIR}), "
                      "which hold verl's config names (ppo_trainer, ppo_megatron_trainer)", file=sys.stderr)
            argv[i] = f"--config-path={config_dir}"
        i += 1
    for i, arg in enumerate(argv):
        key = arg.split("=", 1)[0]
        if key.startswith("+") and not key.startswith("++") and not (Path(config_dir) / key[1:]).is_dir():
            argv[i] = "+" + arg
    shipped = ", ".join(sorted(p.stem for p in Path(CONFIG_DIR).glob("ppo*.yaml")))
    if config_dir == CONFIG_DIR and name in OTHER_ENTRY_POINTS:
        raise UserError(f"--config-name={name} is the config of python -m {OTHER_ENTRY_POINTS[name]}; run that "
                        f"(python -m rl_trainer.main trains PPO/GRPO with {shipped})")
    if not (Path(config_dir) / f"{name}.yaml").is_file():
        raise UserError(f"--config-name={name}: no {name}.yaml in {config_dir}; rl_trainer's configs are {shipped} "
                        "(SFT: python -m rl_trainer.sft; reward models: python -m rl_trainer.rm; verl's generation "
                        "and evaluation configs are not part of rl_trainer)")
    return argv, config_dir, name


class SweepJobFailed(Exception):
    """One multirun job failed (its error is printed); Hydra runs the remaining jobs, then exits 1."""


def run(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None) -> None:
    """Train with the composed config `cfg`, writing metrics to `run_dir`."""
    plan, checkpoints, resume_path = check_config(cfg, overrides)
    # Beside Ray's start, one thread imports the worker classes and then runs the input stage: one thread, in
    # this order, because transformers' lazy module can be seen half-initialised by a second importing thread.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rl_trainer-start")
    try:
        classes = executor.submit(worker_classes)
        inputs = executor.submit(load_inputs, cfg)
        train_on_ray(cfg, run_dir, plan, classes, inputs, checkpoints, resume_path)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def check_config(cfg: DictConfig, overrides: list[str] | None = None) -> tuple[BatchPlan, CheckpointManager, Any]:
    """The config stage: the config alone, this machine's resources and the checkpoint to resume from. Returns
    (the batch plan, the checkpoint manager, the checkpoint to resume from or None)."""
    from rl_trainer.checkpoint import CheckpointManager
    from rl_trainer.config import validate_config
    from rl_trainer.data.sources import check_data_files_exist

    plan = validate_config(cfg, overrides)  # before anything slow: a bad command line fails in a second
    check_local_resources(cfg)
    check_data_files_exist(cfg.data.train_files, "data.train_files")
    if runs_validation(cfg):
        check_data_files_exist(cfg.data.val_files, "data.val_files")
    trainer_cfg = cfg.trainer
    # One directory per step holds actor and critic, so the stricter of the two limits applies.
    limits = [k for k in (trainer_cfg.max_actor_ckpt_to_keep, trainer_cfg.max_critic_ckpt_to_keep) if k and k > 0]
    checkpoints = CheckpointManager(trainer_cfg.default_local_dir, min(limits) if limits else None)
    resume_path = checkpoints.resolve_resume(trainer_cfg.resume_mode, trainer_cfg.resume_from_path)  # fail fast
    return plan, checkpoints, resume_path


@dataclass
class Inputs:
    """What the input stage resolved and checked: model folders, the tokenizer, the reward function, the loaders."""

    model_path: str
    critic_path: str | None
    critic_token_ids: dict | None  # bos/eos/pad ids of critic.model.tokenizer_path, for the value model's config
    tokenizer: Any
    reward_fn: Any
    rm_paths: tuple[str, str | None] | None  # (reward model folder, its input tokenizer) with reward_model.enable
    train_loader: Any
    val_loader: Any


def load_inputs(cfg: DictConfig) -> Inputs:
    """The input stage (it only reads `cfg`: it runs in a thread beside Ray's start). Every error is a UserError
    naming the key or file."""
    quiet_libraries()
    from rl_trainer.config import check_lora_adapters
    from rl_trainer.models.builtin import resolve_model_path
    from rl_trainer.rewards.custom import get_custom_reward_fn
    from rl_trainer.workers.loading import load_tokenizer

    arr, data, seed = cfg.actor_rollout_ref, cfg.data, cfg.trainer.seed
    model_path = resolve_model_path(arr.model.path, seed=seed)
    critic_path = resolve_model_path(cfg.critic.model.path, seed=seed) if cfg.critic.enable else None
    check_lora_adapters(cfg)
    tokenizer_path = resolve_model_path(data.tokenizer, seed) if data.tokenizer else model_path
    tokenizer = load_tokenizer(tokenizer_path, trust_remote_code=arr.model.trust_remote_code)
    critic_token_ids = (critic_special_tokens(cfg, model_path, critic_path, tokenizer, tokenizer_path)
                        if cfg.critic.enable else None)
    reward_fn = get_custom_reward_fn(cfg)
    rm_paths = reward_model_paths(cfg, tokenizer) if cfg.reward_model.enable else None
    train_loader, val_loader = prompt_loaders(cfg, tokenizer)
    return Inputs(model_path, critic_path, critic_token_ids, tokenizer, reward_fn, rm_paths, train_loader, val_loader)


def critic_special_tokens(cfg: DictConfig, model_path: str, critic_path: str, tokenizer,
                          tokenizer_path: str) -> dict:
    """critic.model.tokenizer_path's bos/eos/pad token ids (null: critic.model.path's tokenizer, as in verl 0.9.1),
    which verl's HFModelConfig writes into the value model's config. `tokenizer` (loaded from `tokenizer_path`) is
    reused when the critic names the same folder, as by default."""
    from rl_trainer.models.builtin import critic_tokenizer_dir
    from rl_trainer.workers.loading import load_tokenizer, special_token_ids

    model = cfg.critic.model
    path = critic_tokenizer_dir(model.tokenizer_path, critic_path, cfg.actor_rollout_ref.model.path, model_path,
                                cfg.trainer.seed)
    if path != tokenizer_path:
        tokenizer = load_tokenizer(path, "critic.model.tokenizer_path", trust_remote_code=model.trust_remote_code)
    return special_token_ids(tokenizer)


def reward_model_paths(cfg: DictConfig, tokenizer) -> tuple[str, str | None]:
    """(reward model, input tokenizer or None) directories for reward_model.enable, checked in the input stage: the
    folder is a one-label classifier (not a causal LM), and its tokenizer takes this run's rows."""
    from rl_trainer.models.builtin import resolve_model_path
    from rl_trainer.workers.loading import load_tokenizer, reward_model_config
    from rl_trainer.workers.reward_model import check_reward_model_tokenizers

    rm, seed = cfg.reward_model, cfg.trainer.seed
    rm_path = resolve_model_path(rm.model.path, seed=seed)
    reward_model_config(rm_path, trust_remote_code=rm.model.trust_remote_code,
                        override_config=dict(rm.model.override_config))
    rm_tokenizer = load_tokenizer(rm_path, "reward_model.model.path", trust_remote_code=rm.model.trust_remote_code)
    src_path = resolve_model_path(rm.model.input_tokenizer, seed=seed) if rm.model.input_tokenizer else None
    src_tokenizer = None if src_path is None else load_tokenizer(
        src_path, "reward_model.model.input_tokenizer", trust_remote_code=rm.model.trust_remote_code)
    check_reward_model_tokenizers(rm_tokenizer, src_tokenizer, tokenizer, rm_path)
    return rm_path, src_path


def prompt_loaders(cfg: DictConfig, tokenizer):
    """The training loader and, when validation runs, the validation loader (None otherwise)."""
    from rl_trainer.config import prompts_per_generation_batch
    from rl_trainer.data.rl_dataset import PromptLoader, RLHFDataset
    from rl_trainer.data.sources import resolve_data_files

    data = cfg.data

    def dataset(files_key: str, files, max_samples: int, shuffle: bool) -> RLHFDataset:
        return RLHFDataset(
            resolve_data_files(files, files_key), tokenizer, prompt_key=data.prompt_key,
            max_prompt_length=data.max_prompt_length, filter_overlong_prompts=data.filter_overlong_prompts,
            truncation=data.truncation, max_samples=max_samples, shuffle=shuffle, seed=data.seed,
        )

    train_set = dataset("data.train_files", data.train_files, data.train_max_samples, data.shuffle)
    train_loader = PromptLoader(train_set, prompts_per_generation_batch(cfg), shuffle=data.shuffle, seed=data.seed)
    val_loader = None
    if runs_validation(cfg):
        val_set = dataset("data.val_files", data.val_files, data.val_max_samples, False)
        val_loader = PromptLoader(val_set, data.val_batch_size or len(val_set), shuffle=False, drop_last=False)
    return train_loader, val_loader


def runs_validation(cfg: DictConfig) -> bool:
    """Whether the run validates: data.val_files is set and trainer.test_freq, val_before_train or val_only asks."""
    t = cfg.trainer
    return bool(cfg.data.val_files) and (t.test_freq > 0 or t.val_before_train or t.val_only)


def train_on_ray(cfg: DictConfig, run_dir: Path, plan, classes: Future, inputs: Future, checkpoints,
                 resume_path) -> None:
    """Start (or join) Ray and spawn the worker groups (spawn_groups) while the start-up thread resolves `classes`
    (worker_classes) and `inputs` (load_inputs), then load the models, run PPOTrainer.fit, and tear everything
    down (also when an input turns out bad). The workers are spawned with the config before the data is read: the
    one value the data decides, the LR schedules' length (fill_total_training_steps), reaches them in init_model;
    only a resumed run waits for the data first, to know whether it is already finished. Until the input stage is
    done, this thread imports nothing that imports transformers."""
    import ray

    from rl_trainer.checkpoint import step_of
    from rl_trainer.config import fill_total_training_steps
    from rl_trainer.distributed import ResourcePool

    trainer_cfg = cfg.trainer
    worker_config = OmegaConf.to_container(cfg, resolve=True)
    _init_ray(cfg)  # seconds of waiting for Ray's processes, while the start-up thread works
    pool = actor = critic = reward_model = tracker = None
    try:
        # Before any spawn when the input stage finished beside Ray's start, and always when resuming: a bad input
        # ends the run, and so does a run that is already finished, without starting a worker.
        if inputs.done() or resume_path is not None:
            total_steps = fill_total_training_steps(cfg, len(inputs.result().train_loader))
            if resume_path is not None and step_of(resume_path) >= total_steps:
                print(f"training already finished: {resume_path} is step {step_of(resume_path)} of {total_steps}; "
                      "nothing to do")
                return
        pool = ResourcePool(trainer_cfg.nnodes, trainer_cfg.n_gpus_per_node, trainer_cfg.device, trainer_cfg.cpus_per_worker)
        actor, critic, reward_model = spawn_groups(cfg, pool, classes.result(), worker_config)
        data: Inputs = inputs.result()  # a bad input ends the run here, before any model loads
        from rl_trainer.tracking import Tracking
        from rl_trainer.trainer import PPOTrainer

        total_steps = fill_total_training_steps(cfg, len(data.train_loader))
        # Every input is valid: only now touch the checkpoint directory (leftovers of a run killed while saving).
        if checkpoints.cleanup_stale_tmp():
            resume_path = checkpoints.resolve_resume(trainer_cfg.resume_mode, trainer_cfg.resume_from_path)
        print(f"run directory: {run_dir.resolve()}   checkpoints: {Path(trainer_cfg.default_local_dir).resolve()}")
        print(f"model: {data.model_path}   workers: {plan.world_size} x {trainer_cfg.device}   steps: {total_steps}")
        tracker = Tracking(trainer_cfg.project_name, trainer_cfg.experiment_name, trainer_cfg.logger, run_dir,
                           OmegaConf.to_container(cfg, resolve=True))
        print(pool.describe_placement(actor.call("node_and_pid")), flush=True)
        use_ref = init_models(cfg, data, actor, critic, reward_model)
        PPOTrainer(
            cfg, tokenizer=data.tokenizer, train_loader=data.train_loader, val_loader=data.val_loader, actor=actor,
            critic=critic, reward_model=reward_model, use_ref=use_ref, reward_fn=data.reward_fn, tracker=tracker,
            checkpoints=checkpoints, total_steps=total_steps, resume_path=resume_path,
        ).fit()
    except WorkerGroupError as exc:
        latest = checkpoints.latest()
        raise WorkerGroupError(
            f"{exc}; last good checkpoint: {latest[1] if latest else 'none'}; rerun the same command to resume "
            f"from it (trainer.resume_mode=auto)"
        ) from exc
    finally:
        if tracker is not None:
            tracker.finish()
        for group in (reward_model, critic, actor):
            if group is not None:
                group.shutdown()
        if pool is not None:
            pool.release()
        ray.shutdown()


def spawn_groups(cfg: DictConfig, pool, classes: tuple[type, type, type], worker_config: dict) -> tuple:
    """(actor, critic or None, reward model or None) worker groups on `pool`, each process of a bundle taking an
    equal share of its CPUs / GPU; their models load later (init_model)."""
    from rl_trainer.distributed import WorkerGroup

    actor_cls, critic_cls, reward_model_cls = classes
    share = 1.0 / (1 + bool(cfg.critic.enable) + bool(cfg.reward_model.enable))
    actor = WorkerGroup("actor_rollout_ref", actor_cls, pool, worker_config, share=share)
    critic = WorkerGroup("critic", critic_cls, pool, worker_config, share=share) if cfg.critic.enable else None
    reward_model = (WorkerGroup("reward_model", reward_model_cls, pool, worker_config, share=share)
                    if cfg.reward_model.enable else None)
    return actor, critic, reward_model


def init_models(cfg: DictConfig, data: Inputs, actor, critic, reward_model) -> bool:
    """Every group loads its model; the LR schedules' length is the filled optim.total_training_steps. Returns
    whether the frozen reference model runs (a KL term uses it)."""
    from rl_trainer.config import needs_reference

    use_ref = needs_reference(cfg)
    actor.call("init_model", data.model_path, cfg.actor_rollout_ref.actor.optim.total_training_steps, use_ref)
    if critic is not None:
        critic.call("init_model", data.critic_path, cfg.critic.optim.total_training_steps, data.critic_token_ids)
    if reward_model is not None:
        reward_model.call("init_model", *data.rm_paths)
    return use_ref


def worker_classes() -> tuple[type, type, type]:
    """The worker groups' classes (actor + rollout + reference, critic, reward model)."""
    from rl_trainer.workers.actor import ActorRolloutRefWorker
    from rl_trainer.workers.critic import CriticWorker
    from rl_trainer.workers.reward_model import RewardModelWorker

    return ActorRolloutRefWorker, CriticWorker, RewardModelWorker


def check_local_resources(cfg: DictConfig) -> None:
    """Without a Ray cluster to join (ray_kwargs.ray_init.address or RAY_ADDRESS), the workers must fit on this
    machine: say so before starting Ray."""
    from rl_trainer.config import ray_address

    if ray_address(cfg):
        return  # the resource pool checks the cluster's nodes once connected
    t = cfg.trainer
    if t.nnodes > 1:
        raise UserError(f"trainer.nnodes={t.nnodes} needs a Ray cluster: run `ray start` on every machine "
                        f"(scripts/ray_start_head.sh, scripts/ray_start_worker.sh) and set RAY_ADDRESS or "
                        f"ray_kwargs.ray_init.address (README: On GPUs and several machines), or use trainer.nnodes=1")
    if t.device == "cuda":
        import torch

        if t.n_gpus_per_node > torch.cuda.device_count():
            raise UserError(f"trainer.n_gpus_per_node={t.n_gpus_per_node} but this machine has "
                            f"{torch.cuda.device_count()} GPU(s); lower trainer.n_gpus_per_node")
        return
    cpus = cfg.ray_kwargs.ray_init.num_cpus or os.cpu_count()
    need = t.n_gpus_per_node * t.cpus_per_worker
    if need > cpus:
        raise UserError(
            f"trainer.n_gpus_per_node * trainer.cpus_per_worker = {t.n_gpus_per_node} * {t.cpus_per_worker} CPUs but "
            f"Ray may use {cpus} on this machine; lower trainer.n_gpus_per_node or trainer.cpus_per_worker"
        )


def quiet_libraries() -> None:
    """Keep the driver's console to what a user reads: the run and placement lines, the progress bar, the metrics
    lines, and warnings that ask for an action. Off: datasets' progress bars (every "Generating train split",
    per-dataset map bar and "Creating parquet from Arrow format" of the data preparation) and transformers' loading
    bars. Worker processes quiet themselves (rl_trainer.workers.common.WorkerBase)."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def _init_ray(cfg: DictConfig) -> None:
    import ray

    from rl_trainer.config import ray_address

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    address = ray_address(cfg)
    if address:  # join a running cluster (ray start --head / --address on every node); its nodes set the CPUs
        try:
            ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)
        except ConnectionError as exc:
            source = "ray_kwargs.ray_init.address" if cfg.ray_kwargs.ray_init.get("address") else "RAY_ADDRESS"
            raise UserError(f"cannot join the Ray cluster at {source}={address}: {str(exc).splitlines()[0]}; start it "
                            f"with scripts/ray_start_head.sh, or unset {source} to run on this machine") from None
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # address="local": a new local Ray even if RAY_ADDRESS is set (ray_kwargs.ray_init.address=local)
        ray.init(address="local", num_cpus=cfg.ray_kwargs.ray_init.num_cpus, include_dashboard=False,
                 log_to_driver=True, logging_level=logging.WARNING)  # no "Started a local Ray instance" line


@hydra.main(config_path=CONFIG_DIR, config_name="ppo_trainer", version_base=None)
def main(cfg: DictConfig) -> None:
    """Recognised user errors end in one line (HYDRA_FULL_ERROR=1 shows the traceback); bugs keep theirs.

    In a multirun, each job checkpoints into its own subdirectory of trainer.default_local_dir (and dumps into its
    own subdirectories of trainer.rollout_data_dir / validation_data_dir), named by rl_trainer.sweep.job_tag; a
    failed job does not stop the others: its error is printed, the sweep goes on, and the command exits 1.
    """
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun:  # jobs must not share checkpoints (resume) or dumps (overwrites): one subdirectory each
        for key in ("default_local_dir", "rollout_data_dir", "validation_data_dir"):
            if cfg.trainer[key]:
                cfg.trainer[key] = str(Path(cfg.trainer[key]) / job_tag(overrides))
    try:
        run(cfg, Path(hydra_cfg.runtime.output_dir), overrides)
    except (UserError, WorkerGroupError) as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if multirun:
            print(f"error: job {hydra_cfg.job.num} ({job_tag(overrides)}): {exc}", file=sys.stderr)
            raise SweepJobFailed(f"job {hydra_cfg.job.num} failed: {exc}") from None
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2 if isinstance(exc, UserError) else 1)


if __name__ == "__main__":
    try:
        sys.argv[1:] = config_flags(sys.argv[1:])[0]
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    main()
