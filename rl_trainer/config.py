"""Checks and derived values for the composed Hydra config, run once in the driver before Ray starts.

`configs/ppo_trainer.yaml` holds every default; this module never re-declares one. It normalises a few
verl conveniences (a plain-string `trainer.logger`, the two spellings of the custom reward function),
fills in values derived from other keys (`critic.enable`, the device, data seed), and checks every
choice and the batch arithmetic, raising `UserError` with the numbers and the fix.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from rl_trainer import compat
from rl_trainer.algos import ADV_ESTIMATOR_REGISTRY, KL_PENALTY_CHOICES, LOSS_AGG_MODES, POLICY_LOSS_REGISTRY
from rl_trainer.checkpoint import RESUME_MODES
from rl_trainer.data import TRUNCATION_MODES
from rl_trainer.dumps import DUMP_KEYS, check_dump_dir
from rl_trainer.errors import UserError
from rl_trainer.tracking import BACKENDS as LOGGERS

log = logging.getLogger(__name__)

ROLLOUT_ENGINES = ("hf", "vllm")
KL_CTRL_TYPES = ("fixed", "adaptive")
# Estimators that compare the n responses of a prompt with each other.
GROUP_ESTIMATORS = ("grpo", "grpo_passk", "rloo", "opo", "reinforce_plus_plus_baseline", "gpg")


def _choice(value, choices, key: str) -> None:
    if value not in choices:
        raise UserError(f"{key}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}")


@dataclass(frozen=True)
class BatchPlan:
    """The batch arithmetic of one training step, in sequences unless named otherwise."""

    world_size: int
    n: int
    train_sequences: int  # data.train_batch_size * n
    actor_mini_sequences_per_worker: int
    critic_mini_sequences_per_worker: int


def check_batch_arithmetic(cfg: DictConfig, world_size: int, use_critic: bool) -> BatchPlan:
    """verl's units: train_batch_size and ppo_mini_batch_size count prompts; an update splits
    ppo_mini_batch_size * n sequences over the workers; *_micro_batch_size_per_gpu counts sequences per worker."""
    n = cfg.actor_rollout_ref.rollout.n
    train_bs = cfg.data.train_batch_size
    for key, value in (("data.train_batch_size", train_bs), ("actor_rollout_ref.rollout.n", n)):
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{key}={value} must be a positive integer")
    train_sequences = train_bs * n
    if train_sequences % world_size:
        raise UserError(
            f"data.train_batch_size * rollout.n = {train_bs} * {n} = {train_sequences} sequences cannot be split over "
            f"{world_size} workers (trainer.nnodes * trainer.n_gpus_per_node); make it a multiple of {world_size}"
        )

    def per_worker_mini(section: str, mini: int) -> int:
        if not isinstance(mini, int) or mini < 1:
            raise UserError(f"{section}.ppo_mini_batch_size={mini} must be a positive integer (prompts per update)")
        if train_bs % mini:
            raise UserError(
                f"data.train_batch_size={train_bs} is not divisible by {section}.ppo_mini_batch_size={mini}; "
                f"use a mini-batch size that divides {train_bs}"
            )
        if (mini * n) % world_size:
            raise UserError(
                f"{section}.ppo_mini_batch_size * rollout.n = {mini} * {n} = {mini * n} sequences cannot be split over "
                f"{world_size} workers; make it a multiple of {world_size}"
            )
        return mini * n // world_size

    def check_micro(key: str, micro, per_worker: int, what: str) -> None:
        if micro is None:
            return
        if not isinstance(micro, int) or micro < 1:
            raise UserError(f"{key}={micro} must be a positive integer or null")
        if per_worker % micro:
            raise UserError(
                f"{key}={micro} does not divide the {per_worker} sequences per worker of {what}; "
                f"use a divisor of {per_worker}"
            )

    actor = cfg.actor_rollout_ref.actor
    actor_mini = per_worker_mini("actor_rollout_ref.actor", actor.ppo_mini_batch_size)
    check_micro(
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
        actor.ppo_micro_batch_size_per_gpu,
        actor_mini,
        f"an actor mini-batch (ppo_mini_batch_size * n / workers = {actor.ppo_mini_batch_size} * {n} / {world_size})",
    )
    per_worker = train_sequences // world_size
    step_what = f"a step (train_batch_size * n / workers = {train_bs} * {n} / {world_size})"
    check_micro("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",
                cfg.actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu, per_worker, step_what)
    check_micro("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu",
                cfg.actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu, per_worker, step_what)
    critic_mini = 0
    if use_critic:
        critic = cfg.critic
        critic_mini = per_worker_mini("critic", critic.ppo_mini_batch_size)
        check_micro("critic.ppo_micro_batch_size_per_gpu", critic.ppo_micro_batch_size_per_gpu, critic_mini,
                    f"a critic mini-batch ({critic.ppo_mini_batch_size} * {n} / {world_size})")
        check_micro("critic.forward_micro_batch_size_per_gpu", critic.forward_micro_batch_size_per_gpu, per_worker,
                    step_what)
    return BatchPlan(world_size, n, train_sequences, actor_mini, critic_mini)


def _check_unsupported(cfg: DictConfig) -> None:
    """verl keys that are declared so verl command lines parse, but whose non-default values are not implemented."""
    arr = cfg.actor_rollout_ref
    unsupported = {  # strategy: rl_trainer.compat (fsdp2 is a hint, others refused)
        "actor_rollout_ref.actor.use_dynamic_bsz": (arr.actor.use_dynamic_bsz, False),
        "critic.use_dynamic_bsz": (cfg.critic.use_dynamic_bsz, False),
        "actor_rollout_ref.actor.ulysses_sequence_parallel_size": (arr.actor.ulysses_sequence_parallel_size, 1),
        "actor_rollout_ref.actor.fsdp_config.fsdp_size": (arr.actor.fsdp_config.fsdp_size, -1),
        "reward_model.enable": (cfg.reward_model.enable, False),
        "data.reward_fn_key": (cfg.data.reward_fn_key, "data_source"),
        "actor_rollout_ref.hybrid_engine": (arr.hybrid_engine, True),
    }
    for key, (value, supported) in unsupported.items():
        if value != supported:
            raise UserError(f"{key}={value} is not supported by rl_trainer yet; use {key}={supported}")


def resolve_device(requested: str) -> str:
    _choice(requested, ("auto", "cpu", "cuda"), "trainer.device")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but torch sees no GPU; use trainer.device=cpu (or auto)")
    return requested


def validate_config(cfg: DictConfig, overrides: list[str] | None = None) -> BatchPlan:
    """Check `cfg` and fill in derived values in place. `overrides` are the command-line overrides (for warnings)."""
    compat.apply(cfg, overrides)  # verl keys rl_trainer does not implement, `+key`s, verl's older spellings
    arr, algo, trainer = cfg.actor_rollout_ref, cfg.algorithm, cfg.trainer
    with open_dict(cfg):
        # trainer.logger may be one name, as in verl's examples.
        if isinstance(trainer.logger, str):
            trainer.logger = [trainer.logger]
        for name in trainer.logger:
            _choice(name, LOGGERS, "trainer.logger")
        trainer.device = resolve_device(trainer.device)
        if cfg.data.seed is None:
            cfg.data.seed = trainer.seed
        # The custom reward function may be given under either spelling, not both differently.
        new, old = cfg.reward.custom_reward_function, cfg.custom_reward_function
        if new.path is not None:
            if old.path is not None and old.path != new.path:
                raise UserError(
                    f"custom_reward_function.path={old.path} and reward.custom_reward_function.path={new.path} "
                    "disagree; set only one of them"
                )
            cfg.custom_reward_function = new
        if cfg.critic.enable is None:
            cfg.critic.enable = algo.adv_estimator == "gae"
        # verl: clip_ratio_low/high fall back to clip_ratio.
        if arr.actor.clip_ratio_low is None:
            arr.actor.clip_ratio_low = arr.actor.clip_ratio
        if arr.actor.clip_ratio_high is None:
            arr.actor.clip_ratio_high = arr.actor.clip_ratio

    _choice(algo.adv_estimator, sorted(ADV_ESTIMATOR_REGISTRY), "algorithm.adv_estimator")
    _choice(arr.actor.loss_agg_mode, LOSS_AGG_MODES, "actor_rollout_ref.actor.loss_agg_mode")
    _choice(cfg.critic.loss_agg_mode, LOSS_AGG_MODES, "critic.loss_agg_mode")
    _choice(arr.actor.policy_loss.loss_mode, sorted(POLICY_LOSS_REGISTRY), "actor_rollout_ref.actor.policy_loss.loss_mode")
    _choice(arr.actor.kl_loss_type, KL_PENALTY_CHOICES, "actor_rollout_ref.actor.kl_loss_type")
    _choice(algo.kl_penalty, KL_PENALTY_CHOICES, "algorithm.kl_penalty")
    _choice(algo.kl_ctrl.type, KL_CTRL_TYPES, "algorithm.kl_ctrl.type")
    _choice(cfg.data.truncation, TRUNCATION_MODES, "data.truncation")
    _choice(trainer.resume_mode, RESUME_MODES, "trainer.resume_mode")
    _choice(trainer.nonfinite_grad, ("skip", "stop"), "trainer.nonfinite_grad")
    _choice(arr.rollout.name, ROLLOUT_ENGINES, "actor_rollout_ref.rollout.name")
    if arr.rollout.native_decode not in (None, True, False):
        raise UserError(f"actor_rollout_ref.rollout.native_decode={arr.rollout.native_decode!r} is not valid; choose "
                        "null (where the model has it), true or false")
    for key in ("actor.optim.lr_scheduler_type",):
        _choice(arr.actor.optim.lr_scheduler_type, ("constant", "cosine"), f"actor_rollout_ref.{key}")
    _choice(cfg.critic.optim.lr_scheduler_type, ("constant", "cosine"), "critic.optim.lr_scheduler_type")
    _check_unsupported(cfg)

    if arr.rollout.name == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise UserError(
                "actor_rollout_ref.rollout.name=vllm but vllm is not installed; pip install 'rl_trainer[vllm]' on a GPU "
                "machine (README: vLLM), or use actor_rollout_ref.rollout.name=hf"
            )
        if arr.rollout.tensor_model_parallel_size != 1:
            raise UserError(
                f"actor_rollout_ref.rollout.tensor_model_parallel_size={arr.rollout.tensor_model_parallel_size}: the "
                "vLLM rollout runs one engine per worker in this version; set it to 1"
            )
    if algo.adv_estimator == "remax":
        raise UserError("algorithm.adv_estimator=remax needs a greedy baseline response per prompt (reward_baselines), "
                        "which rl_trainer does not generate yet; use grpo, rloo or reinforce_plus_plus_baseline")
    if algo.adv_estimator == "gae" and not cfg.critic.enable:
        raise UserError("algorithm.adv_estimator=gae needs a value model; set critic.enable=true (or leave it null)")
    if algo.adv_estimator in GROUP_ESTIMATORS and arr.rollout.n < 2:
        log.warning(
            "algorithm.adv_estimator=%s with actor_rollout_ref.rollout.n=%d: every group has one response, so there "
            "is no baseline to compare against; use rollout.n >= 2", algo.adv_estimator, arr.rollout.n,
        )
    if not arr.actor.clip_ratio_c > 1:
        raise UserError(f"actor_rollout_ref.actor.clip_ratio_c={arr.actor.clip_ratio_c} must be > 1 (the dual-clip bound)")
    for key, lr in (("actor_rollout_ref.actor.optim.lr", arr.actor.optim.lr), ("critic.optim.lr", cfg.critic.optim.lr)):
        if not isinstance(lr, (int, float)) or not lr > 0:
            raise UserError(f"{key}={lr} must be a number > 0 (e.g. 1e-6 for the actor, 1e-5 for the critic)")
    if algo.kl_ctrl.type == "adaptive" and not algo.kl_ctrl.horizon > 0:
        raise UserError(f"algorithm.kl_ctrl.horizon={algo.kl_ctrl.horizon} must be > 0 for the adaptive controller")
    for key in ("nnodes", "n_gpus_per_node"):
        if not isinstance(trainer[key], int) or trainer[key] < 1:
            raise UserError(f"trainer.{key}={trainer[key]} must be a positive integer")
    if not trainer.cpus_per_worker > 0:
        raise UserError(f"trainer.cpus_per_worker={trainer.cpus_per_worker} must be > 0")
    for key in DUMP_KEYS:
        check_dump_dir(OmegaConf.select(cfg, key), key)
    if trainer.resume_mode == "resume_path" and not trainer.resume_from_path:
        raise UserError("trainer.resume_mode=resume_path needs trainer.resume_from_path=<checkpoint dir>")
    if not arr.actor.recompute_old_log_prob:
        off_policy = []
        if arr.actor.ppo_epochs != 1:
            off_policy.append(f"actor_rollout_ref.actor.ppo_epochs={arr.actor.ppo_epochs}")
        if arr.actor.ppo_mini_batch_size != cfg.data.train_batch_size:
            off_policy.append(f"actor_rollout_ref.actor.ppo_mini_batch_size={arr.actor.ppo_mini_batch_size} "
                              f"< data.train_batch_size={cfg.data.train_batch_size}")
        if algo.use_kl_in_reward:
            off_policy.append("algorithm.use_kl_in_reward=true (needs old_log_prob before the update)")
        if off_policy:
            raise UserError(
                "actor_rollout_ref.actor.recompute_old_log_prob=false needs an on-policy update, but "
                f"{'; '.join(off_policy)}; set actor_rollout_ref.actor.recompute_old_log_prob=true"
            )
    if arr.model.use_remove_padding:
        log.warning("actor_rollout_ref.model.use_remove_padding=true: padding-free packing is not implemented; "
                    "running the padded path (same numbers)")
    if cfg.trainer.balance_batch:
        log.warning("trainer.balance_batch=true is accepted but not implemented; batches keep their order")

    if not cfg.critic.enable and overrides:
        touched = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
        critic_keys = [k for k in touched if k.startswith("critic.") and k != "critic.enable"]
        if critic_keys:
            log.warning(
                "critic is disabled (algorithm.adv_estimator=%s), so %s has no effect; set critic.enable=true to train one",
                algo.adv_estimator, ", ".join(critic_keys),
            )
    world_size = trainer.nnodes * trainer.n_gpus_per_node
    return check_batch_arithmetic(cfg, world_size, cfg.critic.enable)


def needs_reference(cfg: DictConfig) -> bool:
    """The frozen reference model is loaded when a KL term uses it."""
    return bool(cfg.actor_rollout_ref.actor.use_kl_loss or cfg.algorithm.use_kl_in_reward)
