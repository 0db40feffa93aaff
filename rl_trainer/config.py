"""Checks and derived values for the composed Hydra config, run once in the driver before Ray starts (the input
stage, rl_trainer.main.load_inputs, calls check_lora_adapters while Ray starts).

`configs/ppo_trainer.yaml` holds every default; this module never re-declares one. `validate_config` runs the
named checks below in order, once, up front: `normalise` (verl conveniences and values derived from other keys),
`check_choices`, `check_unsupported`, `check_algorithm`, `check_rewards`, `check_policy_loss`,
`check_rollout_correction`, `check_estimator_inputs`, `check_optim`, `check_lora`, `check_rollout`,
`check_dynamic_bsz`, `check_reward_model`, `check_checkpoint`, `check_trainer`, `warn_ineffective` and
`check_batch_arithmetic`. Each raises `UserError` with the key, the numbers and the fix; downstream code (workers,
trainer, rewards) trusts a validated config and does not check again. `fill_total_training_steps` is the one value
filled in later, once the dataset's length is known.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from rl_trainer import compat
from rl_trainer.algos import (ADV_ESTIMATOR_REGISTRY, KL_PENALTY_CHOICES, LOSS_AGG_MODES, POLICY_LOSS_REGISTRY,
                              TOKEN_BASELINE_ESTIMATORS)
from rl_trainer.checkpoint import RESUME_MODES
from rl_trainer.data import TRUNCATION_MODES
from rl_trainer.dumps import DUMP_KEYS, check_dump_dir
from rl_trainer.errors import UserError
from rl_trainer.filter_groups import SCORE_METRICS
from rl_trainer.rewards.custom import custom_reward_config
from rl_trainer.rewards.manager import overlong_buffer, reward_manager_name
from rl_trainer.tracking import BACKENDS as LOGGERS

log = logging.getLogger(__name__)

ROLLOUT_ENGINES = ("hf", "vllm")
# verl 0.9.1's RolloutConfig accepts only "async" (its __post_init__ raises on "sync": removed).
ROLLOUT_MODES = ("async",)
KL_CTRL_TYPES = ("fixed", "adaptive")
# verl's checkpoint contents (verl/utils/checkpoint/checkpoint_manager.py): sharded model, optimizer, extra
# (LR scheduler + RNG), and hf_model (a full Hugging Face folder under huggingface/).
CHECKPOINT_CONTENTS = ("model", "optimizer", "extra", "hf_model")
# Estimators that compare the n responses of a prompt with each other.
GROUP_ESTIMATORS = ("grpo", "grpo_passk", "rloo", "opo", "reinforce_plus_plus_baseline", "gpg")
OPTIM_SECTIONS = ("actor_rollout_ref.actor.optim", "critic.optim")


def _choice(value, choices, key: str) -> None:
    if value not in choices:
        raise UserError(f"{key}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}")


def _positive_int(value, key: str, what: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{key}={value} must be a positive integer{what}")


@dataclass(frozen=True)
class BatchPlan:
    """The batch arithmetic of one training step, in sequences unless named otherwise."""

    world_size: int
    n: int
    train_sequences: int  # data.train_batch_size * n
    actor_mini_sequences_per_worker: int
    critic_mini_sequences_per_worker: int


def _mini_sequences_per_worker(section: str, mini, train_bs: int, n: int, world_size: int) -> int:
    """verl's units: ppo_mini_batch_size counts prompts; one update splits mini * n sequences over the workers."""
    _positive_int(mini, f"{section}.ppo_mini_batch_size", " (prompts per update)")
    if train_bs % mini:
        raise UserError(f"data.train_batch_size={train_bs} is not divisible by {section}.ppo_mini_batch_size={mini}; "
                        f"use a mini-batch size that divides {train_bs}")
    if (mini * n) % world_size:
        raise UserError(f"{section}.ppo_mini_batch_size * rollout.n = {mini} * {n} = {mini * n} sequences cannot be "
                        f"split over {world_size} workers; make it a multiple of {world_size}")
    return mini * n // world_size


def _check_update_micro(key: str, micro, per_worker: int, what: str) -> None:
    """The update's micro-batch must divide the per-worker mini-batch, so every gradient-accumulation step holds the
    same number of sequences (verl asserts it). One at least as large as the mini-batch is one micro-batch holding
    all of it: verl's assert refuses that, but the numbers are exactly those of micro = the mini-batch (the loss is
    normalised by the global mini-batch either way), and it lets small runs keep the default key."""
    _check_forward_micro(key, micro)
    if micro is not None and micro < per_worker and per_worker % micro:
        raise UserError(f"{key}={micro} does not divide the {per_worker} sequences per worker of {what}; "
                        f"use a divisor of {per_worker}")


def _check_forward_micro(key: str, micro) -> None:
    """A forward-only micro-batch (log-probs, reference, values) is a chunk of at most `micro` sequences: it need
    not divide the batch, and may exceed it (one chunk then holds the whole batch). verl 0.9.1's engine workers
    assert divisibility here too (verl/workers/engine/utils.py, prepare_micro_batches), as its update does; its
    earlier dp_actor split into chunks of at most this many, as here. A row's log-probs and values do not depend
    on the chunk it is computed in, so the numbers are verl's; only that assert is not copied."""
    if micro is not None:
        _positive_int(micro, key, " or null")


def check_batch_arithmetic(cfg: DictConfig, world_size: int, use_critic: bool) -> BatchPlan:
    """verl's units: train_batch_size and ppo_mini_batch_size count prompts; *_micro_batch_size_per_gpu counts
    sequences per worker. Only the update micro-batches must divide their (per-worker) mini-batch."""
    arr = cfg.actor_rollout_ref
    n, train_bs = arr.rollout.n, cfg.data.train_batch_size
    _positive_int(train_bs, "data.train_batch_size")
    _positive_int(n, "actor_rollout_ref.rollout.n")
    train_sequences = train_bs * n
    if train_sequences % world_size:
        raise UserError(
            f"data.train_batch_size * rollout.n = {train_bs} * {n} = {train_sequences} sequences cannot be split over "
            f"{world_size} workers (trainer.nnodes * trainer.n_gpus_per_node); make it a multiple of {world_size}")
    actor = arr.actor
    actor_mini = _mini_sequences_per_worker("actor_rollout_ref.actor", actor.ppo_mini_batch_size, train_bs, n,
                                            world_size)
    _check_update_micro("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", actor.ppo_micro_batch_size_per_gpu,
                        actor_mini, f"an actor mini-batch (ppo_mini_batch_size * n / workers = "
                                    f"{actor.ppo_mini_batch_size} * {n} / {world_size})")
    _check_forward_micro("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",
                         arr.rollout.log_prob_micro_batch_size_per_gpu)
    _check_forward_micro("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu",
                         arr.ref.log_prob_micro_batch_size_per_gpu)
    critic_mini = 0
    if use_critic:
        critic = cfg.critic
        critic_mini = _mini_sequences_per_worker("critic", critic.ppo_mini_batch_size, train_bs, n, world_size)
        _check_update_micro("critic.ppo_micro_batch_size_per_gpu", critic.ppo_micro_batch_size_per_gpu, critic_mini,
                            f"a critic mini-batch ({critic.ppo_mini_batch_size} * {n} / {world_size})")
        _check_forward_micro("critic.forward_micro_batch_size_per_gpu", critic.forward_micro_batch_size_per_gpu)
    return BatchPlan(world_size, n, train_sequences, actor_mini, critic_mini)


# The token-budget switches and their budgets (verl's names): (flag key, budget keys it enables).
DYNAMIC_BSZ_KEYS = (
    ("actor_rollout_ref.actor.use_dynamic_bsz", ("actor_rollout_ref.actor.ppo_max_token_len_per_gpu",)),
    ("actor_rollout_ref.rollout.log_prob_use_dynamic_bsz", ("actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu",)),
    ("actor_rollout_ref.ref.log_prob_use_dynamic_bsz", ("actor_rollout_ref.ref.log_prob_max_token_len_per_gpu",)),
    ("critic.use_dynamic_bsz", ("critic.ppo_max_token_len_per_gpu", "critic.forward_max_token_len_per_gpu")),
    ("reward_model.use_dynamic_bsz", ("reward_model.forward_max_token_len_per_gpu",)),
)


def check_dynamic_bsz(cfg: DictConfig) -> None:
    """Token budgets (use_dynamic_bsz): every switch a bool, every budget a positive integer, and an enabled one at
    least a full row (rollout.prompt_length + rollout.response_length tokens), which verl asserts for padded rows.
    The critic's and the reward model's keys are checked only when it is enabled."""
    row = cfg.actor_rollout_ref.rollout.prompt_length + cfg.actor_rollout_ref.rollout.response_length
    for flag_key, budget_keys in DYNAMIC_BSZ_KEYS:
        if (flag_key.startswith("critic.") and not cfg.critic.enable) or \
                (flag_key.startswith("reward_model.") and not cfg.reward_model.enable):
            continue
        flag = OmegaConf.select(cfg, flag_key)
        if not isinstance(flag, bool):
            raise UserError(f"{flag_key}={flag!r} must be true or false")
        for key in budget_keys:
            budget = OmegaConf.select(cfg, key)
            if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
                raise UserError(f"{key}={budget} must be a positive integer (tokens per micro-batch on a worker)")
            if flag and budget < row:
                raise UserError(
                    f"{key}={budget} is smaller than one sequence (rollout.prompt_length + rollout.response_length = "
                    f"{row} tokens) with {flag_key}=true; set {key} to at least {row}")


def check_reward_model(cfg: DictConfig) -> None:
    """reward_model.enable=true: a model path and positive sizes. With a custom reward function as well, one notice
    line says which scores what: the reward model scores training and the function scores validation, as verl's
    FSDP RewardModelWorker runs them (verl 0.9.1's served reward model, reward.reward_model.*, which rl_trainer
    refuses, would instead score training with the function, which then queries the reward model itself)."""
    rm = cfg.reward_model
    if not isinstance(rm.enable, bool):
        raise UserError(f"reward_model.enable={rm.enable!r} must be true or false")
    if not rm.enable:
        return
    if not rm.model.path:
        raise UserError("reward_model.enable=true needs reward_model.model.path: a reward model folder (saved from "
                        "AutoModelForSequenceClassification, num_labels=1), e.g. the huggingface export of "
                        "`python -m rl_trainer.rm`")
    for key in ("micro_batch_size_per_gpu", "max_length"):
        if rm[key] is not None:
            _positive_int(rm[key], f"reward_model.{key}", " or null")
    path, name, _ = custom_reward_config(cfg)
    if path:
        log.warning("reward_model.enable=true: the reward model scores training responses; %s:%s (the custom reward "
                    "function) scores validation only", path, name)


def resolve_device(requested: str) -> str:
    _choice(requested, ("auto", "cpu", "cuda"), "trainer.device")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("trainer.device=cuda but torch sees no GPU; use trainer.device=cpu (or auto)")
    return requested


def ray_address(cfg: DictConfig) -> str | None:
    """The Ray cluster to join: ray_kwargs.ray_init.address, else RAY_ADDRESS; None = start a local Ray (also when
    the key is "local", whatever RAY_ADDRESS says)."""
    key = cfg.ray_kwargs.ray_init.get("address")
    if key:
        return None if key == "local" else str(key)
    return os.environ.get("RAY_ADDRESS") or None


def resolve_cpus_per_worker(cfg: DictConfig) -> int:
    """trainer.cpus_per_worker=null (the default): on CPU without a cluster to join, this machine's CPUs (or
    ray_kwargs.ray_init.num_cpus) shared out among its trainer.n_gpus_per_node workers, so that the workers use
    every core and no two share one (measured: one worker with 2 threads beats 2 workers with 1 thread each on 2
    cores, docs/performance.md); else 1, as verl reserves per GPU worker."""
    trainer = cfg.trainer
    if trainer.device != "cpu" or ray_address(cfg):
        return 1
    cpus = cfg.ray_kwargs.ray_init.num_cpus or os.cpu_count() or 1
    return max(1, int(cpus) // max(1, int(trainer.n_gpus_per_node)))


def normalise(cfg: DictConfig) -> None:
    """verl conveniences and values derived from other keys, filled in place."""
    arr, trainer = cfg.actor_rollout_ref, cfg.trainer
    with open_dict(cfg):
        if isinstance(trainer.logger, str):  # one name, as in verl's examples
            trainer.logger = [trainer.logger]
        trainer.device = resolve_device(trainer.device)
        if trainer.cpus_per_worker is None:
            trainer.cpus_per_worker = resolve_cpus_per_worker(cfg)
        if cfg.data.seed is None:
            cfg.data.seed = trainer.seed
        if cfg.critic.enable is None:
            cfg.critic.enable = cfg.algorithm.adv_estimator == "gae"
        # verl: clip_ratio_low/high fall back to clip_ratio.
        if arr.actor.clip_ratio_low is None:
            arr.actor.clip_ratio_low = arr.actor.clip_ratio
        if arr.actor.clip_ratio_high is None:
            arr.actor.clip_ratio_high = arr.actor.clip_ratio
        # What the estimator and the rollout correction read is computed for them (verl asserts it was asked for).
        if cfg.algorithm.adv_estimator in TOKEN_BASELINE_ESTIMATORS:
            arr.actor.calculate_sum_pi_squared = True
        if rollout_correction_on(cfg) and arr.rollout.calculate_log_probs is None:
            arr.rollout.calculate_log_probs = True
        if arr.actor.recompute_old_log_prob is None:
            arr.actor.recompute_old_log_prob = resolve_recompute_old_log_prob(cfg)
        reconcile_custom_reward(cfg)


def reconcile_custom_reward(cfg: DictConfig) -> None:
    """The one place the two spellings meet: `custom_reward_function.*` (verl's legacy section) and
    `reward.custom_reward_function.*` (its newer one). rl_trainer.rewards.custom.custom_reward_config picks the
    section (the one with a path; different paths are an error); both sections then hold its values, so any reader
    of either sees the same function."""
    path, name, reward_kwargs = custom_reward_config(cfg)
    chosen = {"path": path, "name": name, "reward_kwargs": reward_kwargs}
    with open_dict(cfg):
        cfg.custom_reward_function = dict(chosen)
        cfg.reward.custom_reward_function = dict(chosen)


def check_choices(cfg: DictConfig) -> None:
    """Every key that takes one of a fixed set of values."""
    arr, algo, trainer = cfg.actor_rollout_ref, cfg.algorithm, cfg.trainer
    for name in trainer.logger:
        _choice(name, LOGGERS, "trainer.logger")
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


def check_unsupported(cfg: DictConfig) -> None:
    """verl keys that are declared so verl command lines parse, but whose non-default values are not implemented."""
    arr = cfg.actor_rollout_ref
    unsupported = {  # strategy: rl_trainer.compat (fsdp2 is a hint, others refused)
        "actor_rollout_ref.actor.ulysses_sequence_parallel_size": (arr.actor.ulysses_sequence_parallel_size, 1),
        "actor_rollout_ref.actor.fsdp_config.fsdp_size": (arr.actor.fsdp_config.fsdp_size, -1),
        "critic.fsdp.fsdp_size": (cfg.critic.fsdp.fsdp_size, -1),
        "data.reward_fn_key": (cfg.data.reward_fn_key, "data_source"),
        "actor_rollout_ref.hybrid_engine": (arr.hybrid_engine, True),
    }
    for key, (value, supported) in unsupported.items():
        if value != supported:
            raise UserError(f"{key}={value} is not supported by rl_trainer yet; use {key}={supported}")


def check_algorithm(cfg: DictConfig) -> None:
    """The estimator's needs, the clip and KL-controller bounds, and the on-policy condition of reusing the
    update's forward as old_log_prob."""
    arr, algo = cfg.actor_rollout_ref, cfg.algorithm
    if algo.adv_estimator == "gae" and not cfg.critic.enable:
        raise UserError("algorithm.adv_estimator=gae needs a value model; set critic.enable=true (or leave it null)")
    if algo.adv_estimator in GROUP_ESTIMATORS and arr.rollout.n < 2:
        log.warning("algorithm.adv_estimator=%s with actor_rollout_ref.rollout.n=%d: every group has one response, so "
                    "there is no baseline to compare against; use rollout.n >= 2", algo.adv_estimator, arr.rollout.n)
    if not arr.actor.clip_ratio_c > 1:
        raise UserError(f"actor_rollout_ref.actor.clip_ratio_c={arr.actor.clip_ratio_c} must be > 1 (the dual-clip bound)")
    if algo.kl_ctrl.type == "adaptive" and not algo.kl_ctrl.horizon > 0:
        raise UserError(f"algorithm.kl_ctrl.horizon={algo.kl_ctrl.horizon} must be > 0 for the adaptive controller")
    if arr.actor.recompute_old_log_prob:
        return
    off_policy = off_policy_reasons(cfg)
    if off_policy:
        raise UserError("actor_rollout_ref.actor.recompute_old_log_prob=false needs an on-policy update, but "
                        f"{'; '.join(off_policy)}; set actor_rollout_ref.actor.recompute_old_log_prob=true")


def off_policy_reasons(cfg: DictConfig) -> list[str]:
    """Why the update's own forward cannot stand in for the old-log-prob pass (empty: it can): more than one
    epoch or mini-batch (the weights move between the pass and later forwards), KL in the reward (it needs
    old_log_prob before the update)."""
    actor, reasons = cfg.actor_rollout_ref.actor, []
    if actor.ppo_epochs != 1:
        reasons.append(f"actor_rollout_ref.actor.ppo_epochs={actor.ppo_epochs}")
    if actor.ppo_mini_batch_size != cfg.data.train_batch_size:
        reasons.append(f"actor_rollout_ref.actor.ppo_mini_batch_size={actor.ppo_mini_batch_size} "
                       f"< data.train_batch_size={cfg.data.train_batch_size}")
    if cfg.algorithm.use_kl_in_reward:
        reasons.append("algorithm.use_kl_in_reward=true (needs old_log_prob before the update)")
    return reasons


def resolve_recompute_old_log_prob(cfg: DictConfig) -> bool:
    """actor.recompute_old_log_prob=null (the default): skip the separate old-log-prob pass exactly when the
    update is on-policy and nothing reads old_log_prob before the update (the rollout correction, the optimal
    token baselines' sum_pi_squared) and every step updates the actor (trainer.critic_warmup <= 1: in a warm-up
    step only the pass would measure actor/entropy); the numbers are the same either way
    (tests/workers/test_optimisations.py)."""
    needs_pass = (off_policy_reasons(cfg) or rollout_correction_on(cfg)
                  or cfg.algorithm.adv_estimator in TOKEN_BASELINE_ESTIMATORS or cfg.trainer.critic_warmup > 1)
    return bool(needs_pass)


def check_rewards(cfg: DictConfig) -> None:
    """The reward manager and DAPO's overlong buffer (rl_trainer.rewards.manager reads them the same way), and
    DAPO's dynamic sampling: algorithm.filter_groups.* with data.gen_batch_size."""
    reward_manager_name(cfg)
    if overlong_buffer(cfg) is not None and cfg.reward_model.enable:
        raise UserError("reward_model.overlong_buffer.enable=true with reward_model.enable=true: the training reward is "
                        "the reward model's score, which verl's dapo manager returns as it is (no overlong penalty); "
                        "turn one of them off")
    groups, data = cfg.algorithm.filter_groups, cfg.data
    if not groups.enable:
        return
    gen = data.gen_batch_size
    if gen is not None:
        _positive_int(gen, "data.gen_batch_size", " (prompts per generation batch) or null")
        if gen < data.train_batch_size:
            raise UserError(f"data.gen_batch_size={gen} < data.train_batch_size={data.train_batch_size}: dynamic "
                            f"sampling draws generation batches of gen_batch_size prompts and keeps train_batch_size of "
                            f"them; set data.gen_batch_size >= {data.train_batch_size} (or null)")
    rows = (gen or data.train_batch_size) * cfg.actor_rollout_ref.rollout.n
    world = cfg.trainer.nnodes * cfg.trainer.n_gpus_per_node
    if rows % world:
        raise UserError(f"data.gen_batch_size * rollout.n = {rows} sequences cannot be split over {world} workers; "
                        f"make it a multiple of {world}")
    if isinstance(groups.max_num_gen_batches, bool) or not isinstance(groups.max_num_gen_batches, int):
        raise UserError(f"algorithm.filter_groups.max_num_gen_batches={groups.max_num_gen_batches} must be an integer "
                        "(<= 0: no limit)")
    check_filter_metric(cfg)


def check_filter_metric(cfg: DictConfig) -> None:
    """algorithm.filter_groups.metric must be something the reward step produces. A key of a custom function's
    result is only known once it runs (the trainer checks it on the first batch)."""
    metric, manager = cfg.algorithm.filter_groups.metric, reward_manager_name(cfg)
    if metric == "seq_final_reward" and cfg.algorithm.use_kl_in_reward:
        raise UserError("algorithm.filter_groups.metric=seq_final_reward with algorithm.use_kl_in_reward=true: groups "
                        "are filtered before the log-prob passes (the KL penalty needs them); use metric=reward")
    if metric in SCORE_METRICS:
        return
    if cfg.reward_model.enable:
        raise UserError(f"algorithm.filter_groups.metric={metric!r} with reward_model.enable=true: the reward model "
                        f"returns only its score; use metric=reward")
    if cfg.custom_reward_function.path:
        return
    produced = [*SCORE_METRICS, *(("acc",) if manager == "dapo" else ())]
    if metric not in produced:
        hint = "; or set reward_model.reward_manager=dapo, which reports acc" if metric == "acc" else ""
        raise UserError(f"algorithm.filter_groups.metric={metric!r} is not produced by the {manager} reward manager "
                        f"with the built-in rule scorers (they return one number); use one of "
                        f"{', '.join(produced)}{hint}")


ROLLOUT_CORRECTION = "algorithm.rollout_correction"
POLICY_LOSS = "actor_rollout_ref.actor.policy_loss"


# Hydra reads digits around an underscore as one number (0.5_2 -> 0.52): an "l_u" bound must be quoted.
QUOTE_HINT = " (on the command line quote an 'l_u' bound, e.g. rollout_rs_threshold=\"'0.5_2'\": Hydra reads 0.5_2 as 0.52)"


def rollout_correction_on(cfg: DictConfig) -> bool:
    """Whether algorithm.rollout_correction does anything beyond its metrics: IS weights, rejection or bypass mode."""
    rc = cfg.algorithm.rollout_correction
    return rc.rollout_is is not None or rc.rollout_rs is not None or bool(rc.bypass_mode)


def check_policy_loss(cfg: DictConfig) -> None:
    """The policy loss's own settings, where verl's loss would raise at the first update.

    Knowingly stricter than verl 0.9.1: bypass_mode=true with another loss_mode is refused (verl's apply_bypass_mode
    replaces it silently), and loss_mode=bypass_mode without bypass_mode=true is refused (verl would run it against
    the recomputed old_log_prob with RolloutCorrectionConfig's dataclass defaults, not the rollout's log-probs)."""
    loss = cfg.actor_rollout_ref.actor.policy_loss
    mode = loss.loss_mode
    if mode == "dro" and (loss.dro_beta is None or not loss.dro_beta > 0):
        raise UserError(f"{POLICY_LOSS}.loss_mode=dro needs {POLICY_LOSS}.dro_beta > 0 (the weight of its quadratic "
                        f"log-ratio penalty), got {loss.dro_beta}; set e.g. {POLICY_LOSS}.dro_beta=0.1")
    for name, ratio in (("clip_cov", "clip_cov_ratio"), ("kl_cov", "kl_cov_ratio")):
        if mode == name and loss[ratio] is not None and not loss[ratio] > 0:
            raise UserError(f"{POLICY_LOSS}.{ratio}={loss[ratio]} must be > 0 for loss_mode={name} (the fraction of "
                            f"tokens it selects, e.g. 0.0002)")
    bypass = cfg.algorithm.rollout_correction.bypass_mode
    if mode == "bypass_mode" and not bypass:
        raise UserError(f"{POLICY_LOSS}.loss_mode=bypass_mode reads the rollout's log-probs as old_log_probs, which "
                        f"only bypass mode provides; set {ROLLOUT_CORRECTION}.bypass_mode=true instead (it selects "
                        "this loss, as in verl)")
    if bypass and mode not in ("vanilla", "bypass_mode"):
        raise UserError(f"{ROLLOUT_CORRECTION}.bypass_mode=true replaces the policy loss by bypass_mode (as verl), "
                        f"but {POLICY_LOSS}.loss_mode={mode}; leave loss_mode at vanilla or set bypass_mode=false")


def check_rollout_correction(cfg: DictConfig) -> None:
    """algorithm.rollout_correction: its choices and specs (the error quotes the spec and the grammar), the rollout
    log-probs it needs, and the passes it needs before the advantages.

    Knowingly different from verl 0.9.1: normalise turns rollout.calculate_log_probs on when the correction needs
    it (verl needs it set by hand and, without the log-probs, skips the correction silently); here a correction
    that would get no log-probs (calculate_log_probs=false, greedy rollouts) is refused instead of skipped."""
    from rl_trainer.algos.rollout_correction import (parse_rollout_is_threshold, parse_rollout_rs,
                                                     parse_rollout_rs_thresholds)

    rc, arr = cfg.algorithm.rollout_correction, cfg.actor_rollout_ref
    if rc.rollout_is is not None:
        _choice(rc.rollout_is, ("token", "sequence"), f"{ROLLOUT_CORRECTION}.rollout_is")
    _choice(rc.loss_type, ("ppo_clip", "reinforce"), f"{ROLLOUT_CORRECTION}.loss_type")
    for flag in ("bypass_mode", "rollout_is_batch_normalize"):
        if not isinstance(rc[flag], bool):
            raise UserError(f"{ROLLOUT_CORRECTION}.{flag}={rc[flag]!r} must be true or false")
    try:
        if rc.rollout_is is not None and rc.rollout_is_threshold is not None:
            parse_rollout_is_threshold(rc.rollout_is_threshold)
        if rc.rollout_rs is not None:
            parse_rollout_rs_thresholds(parse_rollout_rs(rc.rollout_rs), rc.rollout_rs_threshold)
    except ValueError as error:
        raise UserError(f"{ROLLOUT_CORRECTION}.{error}{QUOTE_HINT}") from None
    if isinstance(rc.rollout_is_threshold, float) and rc.rollout_is_threshold < 1 and rc.rollout_is is not None:
        log.warning("%s.rollout_is_threshold=%s truncates every IS weight at %s < 1%s", ROLLOUT_CORRECTION,
                    rc.rollout_is_threshold, rc.rollout_is_threshold, QUOTE_HINT)
    if not rollout_correction_on(cfg):
        return
    what = f"{ROLLOUT_CORRECTION}.{'bypass_mode=true' if rc.bypass_mode else 'rollout_is / rollout_rs'}"
    if arr.rollout.calculate_log_probs is False:
        raise UserError(f"{what} needs the rollout's log-probs, but actor_rollout_ref.rollout.calculate_log_probs="
                        "false; set it to true (or leave it null)")
    if not arr.rollout.do_sample:
        raise UserError(f"{what} needs the rollout's log-probs of sampled tokens, but actor_rollout_ref.rollout."
                        "do_sample=false (greedy rollouts return none); set actor_rollout_ref.rollout.do_sample=true")
    if not arr.actor.recompute_old_log_prob:
        fix = ("bypass mode skips the old-log-prob pass already" if rc.bypass_mode
               else "the correction compares old_log_prob with the rollout's before the advantages")
        raise UserError(f"{what} with actor_rollout_ref.actor.recompute_old_log_prob=false: {fix}; set "
                        "actor_rollout_ref.actor.recompute_old_log_prob=true")


def check_estimator_inputs(cfg: DictConfig) -> None:
    """gdpo's reward keys and the optimal token baselines' old-log-prob pass."""
    algo, actor = cfg.algorithm, cfg.actor_rollout_ref.actor
    if algo.adv_estimator == "gdpo":
        keys, weights = algo.gdpo_reward_keys, algo.gdpo_reward_weights
        if not keys or isinstance(keys, str):
            raise UserError(f"algorithm.adv_estimator=gdpo needs algorithm.gdpo_reward_keys, a list of the reward "
                            f"components your reward function returns in its dict (got {keys!r}); e.g. "
                            "algorithm.gdpo_reward_keys=[format_reward,accuracy_reward]")
        if weights is not None and len(weights) != len(keys):
            raise UserError(f"algorithm.gdpo_reward_weights has {len(weights)} values for {len(keys)} "
                            "algorithm.gdpo_reward_keys; give one weight per key (or null for all 1.0)")
    if algo.adv_estimator in TOKEN_BASELINE_ESTIMATORS:
        if algo.rollout_correction.bypass_mode:
            raise UserError(f"algorithm.adv_estimator={algo.adv_estimator} needs the old-log-prob pass (its "
                            f"sum_pi_squared), which {ROLLOUT_CORRECTION}.bypass_mode=true skips; set bypass_mode=false")
        if not actor.recompute_old_log_prob:
            raise UserError(f"algorithm.adv_estimator={algo.adv_estimator} needs old_log_prob and sum_pi_squared before "
                            "the advantages; set actor_rollout_ref.actor.recompute_old_log_prob=true")


def check_optim(cfg: DictConfig) -> None:
    """Learning rates, the LR schedule (resolved here once by the workers' own rl_trainer.workers.lr_schedule.
    lr_schedule_settings, so a bad schedule fails before Ray starts), and total_training_steps, which (as in verl)
    the trainer fills in: a value set by hand would be overwritten there silently, so here it is refused."""
    from rl_trainer.workers.lr_schedule import lr_schedule_settings

    for section in OPTIM_SECTIONS:
        optim = OmegaConf.select(cfg, section)
        lr_schedule_settings(optim, 1, section)
        if isinstance(optim.lr, bool) or not isinstance(optim.lr, (int, float)) or not optim.lr > 0:
            raise UserError(f"{section}.lr={optim.lr} must be a number > 0 (e.g. 1e-6 for the actor, 1e-5 for the critic)")
        if optim.total_training_steps != -1:
            raise UserError(f"{section}.total_training_steps={optim.total_training_steps} is filled in by the trainer "
                            "(the run's step count, as in verl); remove it and set trainer.total_training_steps or "
                            "trainer.total_epochs instead")


LORA_SECTIONS = ("actor_rollout_ref.model", "critic.model")


def check_lora(cfg: DictConfig) -> None:
    """The LoRA keys of the actor's and the critic's model (rl_trainer.workers.lora; docs/lora.md): lora_rank an
    integer >= 0, lora_alpha > 0, target_modules a name, regex or list (that lora_adapter_path is an adapter folder:
    `check_lora_adapters`). Whether target_modules names modules of the model, and whether the adapter fits the
    base model, needs the model: the worker checks that when it builds it."""
    for section in LORA_SECTIONS:
        _check_lora_section(OmegaConf.select(cfg, section), section)


def _check_lora_section(model_cfg, section: str) -> None:
    rank = model_cfg.lora_rank
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise UserError(f"{section}.lora_rank={rank} must be an integer >= 0 (0 = full fine-tuning, e.g. 8-64 = LoRA)")
    alpha = model_cfg.lora_alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise UserError(f"{section}.lora_alpha={alpha} must be a number > 0 (the adapter scale is alpha / rank)")
    targets = model_cfg.target_modules
    if not (isinstance(targets, str) or (OmegaConf.is_list(targets) and targets
                                         and all(isinstance(t, str) for t in targets))):
        raise UserError(f"{section}.target_modules={targets} must be all-linear, a module-name regex or a non-empty "
                        f"list of module names (e.g. [q_proj,v_proj])")


def check_lora_adapters(cfg: DictConfig) -> None:
    """Each lora_adapter_path is a PEFT adapter folder (checked when the run resolves its inputs, as the model and
    data paths are, at start-up, before any worker loads a model; whether it fits the base model is checked when the worker loads it)."""
    for section in LORA_SECTIONS:
        path = OmegaConf.select(cfg, section).get("lora_adapter_path")
        if path is not None and not os.path.isfile(os.path.join(os.path.expanduser(path), "adapter_config.json")):
            raise UserError(f"{section}.lora_adapter_path={path}: no adapter_config.json there; pass a folder written "
                            f"by PEFT's save_pretrained (e.g. <checkpoint>/actor/huggingface/lora_adapter)")


def fill_total_training_steps(cfg: DictConfig, steps_per_epoch: int) -> int:
    """verl's RayPPOTrainer._create_dataloader: the optimizers' total_training_steps (which the LR schedule's warm-up
    ratio and cosine decay read) is trainer.total_training_steps when set, else steps per epoch * total_epochs.
    Returns the steps the run trains: the smaller of that and what the epochs hold (verl's loop also stops when
    its epochs run out, with the schedule still sized by trainer.total_training_steps)."""
    epochs_steps = steps_per_epoch * cfg.trainer.total_epochs
    total = cfg.trainer.total_training_steps or epochs_steps
    with open_dict(cfg):
        for section in OPTIM_SECTIONS:
            OmegaConf.select(cfg, section).total_training_steps = total
    return min(total, epochs_steps)


def check_rollout(cfg: DictConfig) -> None:
    """The engine, its mode, and the length budget rollout.prompt_length / response_length against data.*."""
    rollout, data = cfg.actor_rollout_ref.rollout, cfg.data
    if rollout.mode == "sync":
        raise UserError("actor_rollout_ref.rollout.mode=sync was removed in verl 0.9.1 (its only mode is async); "
                        "set actor_rollout_ref.rollout.mode=async or leave the key out")
    _choice(rollout.mode, ROLLOUT_MODES, "actor_rollout_ref.rollout.mode")
    if rollout.native_decode not in (None, True, False):
        raise UserError(f"actor_rollout_ref.rollout.native_decode={rollout.native_decode!r} is not valid; choose "
                        "null (where the model has it), true or false")
    _positive_int(data.max_prompt_length, "data.max_prompt_length", " (tokens)")
    _positive_int(rollout.prompt_length, "actor_rollout_ref.rollout.prompt_length", " (tokens)")
    _positive_int(rollout.response_length, "actor_rollout_ref.rollout.response_length", " (tokens)")
    if rollout.prompt_length < data.max_prompt_length:
        raise UserError(
            f"actor_rollout_ref.rollout.prompt_length={rollout.prompt_length} < data.max_prompt_length="
            f"{data.max_prompt_length}: verl cuts longer prompts from the left (they lose their start); set "
            f"rollout.prompt_length >= {data.max_prompt_length}, or leave it at its default ${{data.max_prompt_length}}")
    if rollout.name != "vllm":
        return
    if importlib.util.find_spec("vllm") is None:
        raise UserError("actor_rollout_ref.rollout.name=vllm but vllm is not installed; pip install 'rl_trainer[vllm]' "
                        "on a GPU machine (README: vLLM), or use actor_rollout_ref.rollout.name=hf")
    if rollout.tensor_model_parallel_size != 1:
        raise UserError(f"actor_rollout_ref.rollout.tensor_model_parallel_size={rollout.tensor_model_parallel_size}: "
                        "the vLLM rollout runs one engine per worker in this version; set it to 1")


def check_checkpoint(cfg: DictConfig) -> None:
    """save_contents / load_contents hold verl's items; the model is in both (a checkpoint without it cannot resume)."""
    for section in ("actor_rollout_ref.actor.checkpoint", "critic.checkpoint"):
        for field in ("save_contents", "load_contents"):
            key, contents = f"{section}.{field}", OmegaConf.select(cfg, f"{section}.{field}")
            contents = [contents] if isinstance(contents, str) else list(contents)
            for item in contents:
                _choice(item, CHECKPOINT_CONTENTS, key)
            if "model" not in contents:
                raise UserError(f"{key}={contents} lacks 'model': rl_trainer does not implement checkpoints without "
                                f"the model (resuming needs it); add 'model' to {key}")


def check_trainer(cfg: DictConfig) -> None:
    """Placement, warm-up and dump directories."""
    trainer = cfg.trainer
    for key in ("nnodes", "n_gpus_per_node"):
        _positive_int(trainer[key], f"trainer.{key}")
    if not trainer.cpus_per_worker > 0:
        raise UserError(f"trainer.cpus_per_worker={trainer.cpus_per_worker} must be > 0")
    if isinstance(trainer.critic_warmup, bool) or not isinstance(trainer.critic_warmup, int) or trainer.critic_warmup < 0:
        raise UserError(f"trainer.critic_warmup={trainer.critic_warmup} must be an integer >= 0 (the actor is updated "
                        "from the step numbered critic_warmup on, counting from 1)")
    for key in DUMP_KEYS:
        check_dump_dir(OmegaConf.select(cfg, key), key)


def warn_ineffective(cfg: DictConfig, overrides: list[str] | None) -> None:
    """One-line notices for keys that are accepted but change nothing."""
    if cfg.data.gen_batch_size is not None and not cfg.algorithm.filter_groups.enable:
        log.warning("data.gen_batch_size=%s is read only by dynamic sampling; it has no effect with "
                    "algorithm.filter_groups.enable=false (each step draws data.train_batch_size prompts)",
                    cfg.data.gen_batch_size)
    for key in ("actor_rollout_ref.model.use_remove_padding", "critic.model.use_remove_padding"):
        if key.startswith("critic.") and not cfg.critic.enable:
            continue
        if OmegaConf.select(cfg, key):
            log.warning("%s=true: padding-free packing is not implemented; running the padded path (same numbers)",
                        key)
    if cfg.critic.enable or not overrides:
        return
    touched = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    critic_keys = [k for k in touched if k.startswith("critic.") and k != "critic.enable"]
    if critic_keys:
        log.warning("critic is disabled (algorithm.adv_estimator=%s), so %s has no effect; set critic.enable=true to "
                    "train one", cfg.algorithm.adv_estimator, ", ".join(critic_keys))


def validate_config(cfg: DictConfig, overrides: list[str] | None = None) -> BatchPlan:
    """Check `cfg` and fill in derived values in place. `overrides` are the command-line overrides (for warnings)."""
    compat.apply(cfg, overrides)  # verl keys rl_trainer does not implement, `+key`s, verl's older spellings
    normalise(cfg)
    check_choices(cfg)
    check_unsupported(cfg)
    check_algorithm(cfg)
    check_rewards(cfg)
    check_policy_loss(cfg)
    check_rollout_correction(cfg)
    check_estimator_inputs(cfg)
    check_optim(cfg)
    check_lora(cfg)
    check_rollout(cfg)
    check_dynamic_bsz(cfg)
    check_reward_model(cfg)
    check_checkpoint(cfg)
    check_trainer(cfg)
    warn_ineffective(cfg, overrides)
    world_size = cfg.trainer.nnodes * cfg.trainer.n_gpus_per_node
    return check_batch_arithmetic(cfg, world_size, cfg.critic.enable)


def prompts_per_generation_batch(cfg: DictConfig) -> int:
    """The training loader's batch size: data.gen_batch_size (or train_batch_size) under dynamic sampling, else
    data.train_batch_size (verl's DAPO trainer reads gen_batch_size; verl's RayPPOTrainer does not)."""
    data = cfg.data
    return (data.gen_batch_size or data.train_batch_size) if cfg.algorithm.filter_groups.enable else data.train_batch_size


def needs_reference(cfg: DictConfig) -> bool:
    """The frozen reference model is loaded when a KL term uses it."""
    return bool(cfg.actor_rollout_ref.actor.use_kl_loss or cfg.algorithm.use_kl_in_reward)
