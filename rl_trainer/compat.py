"""verl 0.9.1's config keys that rl_trainer declares but does not implement, and verl's other spellings.

Every key of verl 0.9.1's `ppo_trainer` (and, under `--config-name ppo_megatron_trainer` / `model_engine=megatron`,
`ppo_megatron_trainer`) config is a key here, so no verl command line fails on Hydra's unknown-key error. A key is
- implemented: declared in configs/ppo_trainer.yaml, with verl's meaning;
- a hint (`Hint`): it changes only speed or memory on hardware this run does not use, never results; a non-default
  value prints one notice line;
- refused (`Refused`): a non-default value ends the run before Ray starts, in one line that names the key, the
  feature that is not implemented and the nearest thing that is.
The non-implemented keys are declared in configs/verl_keys.yaml and configs/model_engine/megatron.yaml, both written
by `python -m rl_trainer.tools.compat --write` from tests/data/verl_0.9.1_keys.json and the rules below.

`apply` is the one call `rl_trainer.config.validate_config` makes: it checks every key whose value differs from the
configs' default, refuses a `+key=value` that nothing reads, and then normalises verl's older spellings
(`RENAMES`) and the deprecated global micro-batch sizes (`GLOBAL_MICRO_BATCH_KEYS`).
"""

from __future__ import annotations

import fnmatch
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from rl_trainer.algos import ADV_ESTIMATOR_REGISTRY, POLICY_LOSS_REGISTRY
from rl_trainer.errors import UserError

log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass(frozen=True)
class Hint:
    """Keys matching `pattern` (fnmatch over the dotted key) change speed or memory only; `note` says why the
    results are the same here. `values`: only these values are hints (None: any non-default value).
    `implemented`: the rule also applies to a key rl_trainer implements (a value it lacks)."""

    pattern: str
    note: str
    values: tuple | None = None
    implemented: bool = False


@dataclass(frozen=True)
class Refused:
    """Keys matching `pattern` select `feature`, which rl_trainer does not implement; `instead` names the nearest
    thing it does. `values`: only these values are refused (None: any non-default value). `implemented`: the rule
    also applies to a key rl_trainer implements (a value it lacks)."""

    pattern: str
    feature: str
    instead: str
    values: tuple | None = None
    implemented: bool = False


# verl 0.9.1's registered policy losses and advantage estimators (verl/trainer/ppo/core_algos.py).
VERL_POLICY_LOSSES = ("bypass_mode", "cispo", "clip_cov", "dppo_kl", "dppo_tv", "dro", "geo_mean", "gpg", "gspo",
                      "kl_cov", "sapo", "vanilla")
VERL_ADV_ESTIMATORS = ("gae", "gdpo", "gpg", "grpo", "grpo_passk", "grpo_vectorized", "opo", "optimal_token_baseline",
                       "reinforce_plus_plus", "reinforce_plus_plus_baseline", "remax", "rloo", "rloo_vectorized",
                       "tir_optimal_token_baseline")
_MEGATRON = Refused("*megatron*", "Megatron", "use --config-name ppo_trainer (FSDP2)")
_LORA = "read only by Megatron's LoRA (model.lora.rank > 0), which is refused; use model.lora_rank"
_RM = ("use reward_model.enable=true with reward_model.model.path (the FSDP reward-model worker), or a rule reward "
       "(custom_reward_function.path)")

# Rules, first match wins; on a key that rl_trainer implements, only rules marked `implemented` apply.
RULES: tuple[Hint | Refused, ...] = (
    # Engines: the model engine group, verl's strategy names and the Megatron-only sections.
    Refused("model_engine", "Megatron", "use --config-name ppo_trainer (FSDP2)", ("megatron",)),
    Refused("model_engine", "the TorchTitan / VeOmni engines", "use model_engine=dp (FSDP2)"),
    Hint("*strategy", "rl_trainer's FSDP engine is FSDP2 (torch fully_shard) already", ("fsdp2",), True),
    Refused("*strategy", "Megatron", "use --config-name ppo_trainer (FSDP2)", ("megatron",), True),
    Refused("*strategy", "this training engine", "use strategy=fsdp2 (FSDP2)", None, True),
    _MEGATRON,
    Refused("*.optim.*muon*", "Megatron's optimizers", "use --config-name ppo_trainer (FSDP2, AdamW)"),
    Refused("*.optim.lr_*decay*", "Megatron's LR schedule", "use optim.lr_scheduler_type (constant | cosine)"),
    Refused("*.optim.lr_warmup_init", "Megatron's LR schedule", "use optim.lr_warmup_steps / lr_warmup_steps_ratio"),
    Refused("*.optim.min_lr", "Megatron's LR schedule", "use optim.min_lr_ratio"),
    Refused("*.optim.weight_decay_incr_style", "Megatron's weight-decay schedule", "use optim.weight_decay"),
    Refused("*.optim.use_checkpoint_opt_param_scheduler", "Megatron's scheduler checkpoints", "leave it false"),
    Refused("*.optim.*_dtype", "Megatron's optimizer dtypes", "use --config-name ppo_trainer (fp32 AdamW state)"),
    Refused("*.optim.use_*", "Megatron's optimizer variants", "use --config-name ppo_trainer (AdamW)"),
    Refused("*.checkpoint.mbridge_config", "Megatron's mbridge checkpoints", "use checkpoint.save_contents"),
    # Parallelism this version does not have.
    Refused("*ulysses_sequence_parallel_size", "sequence parallelism (Ulysses)",
            "use 1 (shorter sequences or more workers instead)"),
    Refused("*fsdp_size", "hybrid sharding (fsdp_size)", "use fsdp_size=-1 (shard over all workers)"),
    Refused("*.turbo_config.*", "the FSDP turbo parallel plan", "use the FSDP2 engine's defaults"),
    Refused("*.qat.*", "quantization-aware training", "train in full precision"),
    Refused("actor_rollout_ref.rollout.qat", "quantization-aware training", "train in full precision"),
    # Speed and memory switches of hardware paths this run does not use.
    Hint("*use_torch_compile", "eager PyTorch here (torch.compile only changes speed)"),
    Hint("*use_fused_kernels", "the plain PyTorch log-prob/entropy path is used (same numbers)"),
    Hint("*.fused_kernel_options.*", "read only with use_fused_kernels"),
    Hint("*use_liger", "Liger kernels are not used (same numbers)"),
    Hint("*use_shm", "models and data load from disk (same files)"),
    Hint("*forward_prefetch", "FSDP2 prefetch order only changes speed"),
    Hint("*layered_summon", "weights reach the rollout in buckets (rollout.checkpoint_engine.*)"),
    Hint("*multi_stage_wake_up", "the vLLM engine wakes in one stage (memory only)"),
    Hint("*nccl_timeout", "collectives use torch.distributed's default timeout"),
    Hint("*profiler*", "profiling is not wired here (use rl_trainer.tools.bench)"),
    Hint("*.mixed_precision.buffer_dtype", "FSDP2 keeps buffers in the model's dtype (no buffer cast)"),
    Hint("*.wrap_policy.*", "FSDP2 shards every decoder layer (memory only)"),
    Hint("*offload_policy", "use fsdp_config.param_offload (CPUOffloadPolicy)"),
    Hint("*use_orig_params", "FSDP1 only; FSDP2 keeps the original parameters"),
    Hint("*entropy_from_logits_with_chunking", "entropy is computed in one pass (memory only)"),
    Hint("*entropy_from_logits_chunk_size", "entropy is computed in one pass (memory only)"),
    Hint("*sum_pi_squared_checkpointing", "not recomputed in the backward pass (memory only)"),
    Hint("*entropy_checkpointing", "entropy is not recomputed in the backward pass (memory only)"),
    Hint("*use_no_sync_for_gradient_accumulation", "FSDP2 reduces gradients once per mini-batch (speed only)"),
    Hint("*pad_to_length*", "rows keep their own padding (speed only)"),
    Hint("*enable_activation_offload", "activations stay on the device (memory only)"),
    Hint("*.tiled_mlp.*", "the MLP runs untiled (memory only)"),
    Hint("*.fsdp_config.forward_only", "set by the worker role here"),
    Hint("*.fsdp.forward_only", "set by the worker role here"),
    Hint("*.fsdp_config.seed", "weights come from the checkpoint; trainer.seed seeds the rest"),
    Hint("*.fsdp.seed", "weights come from the checkpoint; trainer.seed seeds the rest"),
    Hint("*full_determinism", "CPU runs are deterministic; GPU kernels keep their defaults"),
    Hint("*optimizer_offload", "the reference model has no optimizer"),
    Refused("*.checkpoint.strict", "non-strict checkpoint loading", "checkpoints load strictly (resume needs it)"),
    Hint("*.checkpoint.async_save", "checkpoints are written synchronously (same files)"),
    Hint("*.rollout.cudagraph_capture_sizes", "vLLM picks its CUDA-graph sizes (speed only)"),
    Hint("*.rollout.scheduling_policy", "vLLM schedules first come, first served (speed only)"),
    Hint("*.rollout.skip_tokenizer_init", "the engine's tokenizer setup only changes start-up time"),
    Hint("actor_rollout_ref.rollout.prometheus.*", "engine metrics are not exported"),
    Hint("actor_rollout_ref.rollout.trace.*", "rollout tracing is not wired here (use trainer.rollout_data_dir)"),
    Hint("actor_rollout_ref.rollout.checkpoint_engine.*", "weights are synced in-process (bucket size is honoured)"),
    Hint("actor_rollout_ref.rollout.agent.num_workers", "generation runs in the workers (speed only)"),
    Hint("actor_rollout_ref.rollout.moe_load_balance_metrics_interval", "MoE load metrics are not logged"),
    Hint("actor_rollout_ref.rollout.engine_kwargs.*", "read only by a rollout engine rl_trainer does not have"),
    Hint("*num_workers", "reward functions run in the driver (speed only)"),
    Hint("data.filter_overlong_prompts_workers", "filtering runs in one process (speed only)"),
    Hint("data.return_raw_input_ids", "the batch always carries input_ids"),
    Hint("data.return_full_prompt", "the batch carries raw_prompt (the chat)"),
    Hint("data.validation_shuffle", "validation is scored as a whole; its order does not change the metrics"),
    Hint("trainer.esi_redundant_time", "no elastic-instance checkpointing here"),
    Hint("trainer.ray_wait_register_center_timeout", "workers start without verl's register center"),
    Hint("trainer.use_v1", "rl_trainer has one trainer loop"),
    Hint("ray_kwargs.timeline_json_file", "no Ray timeline is dumped (use rl_trainer.tools.bench)"),
    # Features: multi-turn, tools, agents.
    Refused("actor_rollout_ref.rollout.multi_turn.*", "multi-turn rollout / tool calling", "use single-turn prompts"),
    Refused("data.tool_config_path", "tool calling", "use single-turn prompts"),
    Refused("data.function_tool_path", "tool calling", "use single-turn prompts"),
    Refused("actor_rollout_ref.rollout.agent.*", "agent loops", "use the single-turn rollout (the default)"),
    Refused("actor_rollout_ref.rollout.disaggregation.*", "prefill/decode disaggregation", "use one engine per worker"),
    Refused("actor_rollout_ref.rollout.*_parallel_size", "vLLM data/expert/pipeline parallelism",
            "use one engine per worker (tensor_model_parallel_size=1)"),
    Refused("actor_rollout_ref.rollout.nnodes", "a standalone rollout pool", "rollout shares the actor's workers"),
    Refused("actor_rollout_ref.rollout.n_gpus_per_node", "a standalone rollout pool",
            "rollout shares the actor's workers (trainer.n_gpus_per_node)"),
    Refused("algorithm.adv_estimator", "this advantage estimator (verl registers it, rl_trainer does not)",
            f"use one of {', '.join(sorted(ADV_ESTIMATOR_REGISTRY))}",
            tuple(sorted(set(VERL_ADV_ESTIMATORS) - set(ADV_ESTIMATOR_REGISTRY))), True),
    Refused("actor_rollout_ref.actor.policy_loss.loss_mode", "this policy loss (verl registers it, rl_trainer does not)",
            f"use one of {', '.join(sorted(POLICY_LOSS_REGISTRY))}",
            tuple(sorted(set(VERL_POLICY_LOSSES) - set(POLICY_LOSS_REGISTRY))), True),
    Refused("trainer.device", "Ascend NPUs", "use trainer.device=cuda or cpu", ("npu",), True),
    Refused("actor_rollout_ref.rollout.name", "the SGLang / TensorRT-LLM rollout",
            "use actor_rollout_ref.rollout.name=vllm (GPU) or hf", ("sglang", "trtllm"), True),
    Refused("*.quantization*", "quantized rollout", "roll out in the actor's dtype"),
    Refused("*mtp*", "multi-token prediction / speculative decoding", "leave mtp disabled"),
    Refused("actor_rollout_ref.rollout.logprobs_mode", "other rollout log-prob modes",
            "the engine returns processed log-probs (logits / temperature)"),
    Refused("actor_rollout_ref.rollout.ignore_eos", "generation past EOS", "responses stop at EOS"),
    Refused("actor_rollout_ref.rollout.seed", "a separate rollout seed", "use trainer.seed (workers draw seed + rank)"),
    Refused("actor_rollout_ref.rollout.over_sample_rate", "over-sampled rollout", "use rollout.n"),
    Refused("actor_rollout_ref.rollout.router_config_path", "a rollout router", "use one engine per worker"),
    Refused("actor_rollout_ref.rollout.enable_rollout_routing_replay", "MoE routing replay", "leave it false"),
    # Models.
    # LoRA: the FSDP keys (model.lora_rank, lora_alpha, target_modules, exclude_modules, lora_adapter_path) are
    # implemented; verl's model.lora.* section configures Megatron-Bridge's LoRA (its own module names and alpha).
    Refused("*.lora.rank", "Megatron's LoRA section (model.lora.*)", "set model.lora_rank (PEFT LoRA on FSDP2)"),
    Refused("*.lora.adapter_path", "Megatron's LoRA section (model.lora.*)", "set model.lora_adapter_path"),
    Hint("*.lora.merge", "the vLLM rollout always receives the merged weights (base + adapter) each step"),
    Hint("*.lora.*", _LORA),
    Refused("*.model.custom_chat_template", "a custom chat template", "use the tokenizer's own chat template"),
    Refused("*.model.hf_config_path", "a separate model config path", "put the config in model.path"),
    Refused("actor_rollout_ref.model.tokenizer_path", "model.tokenizer_path", "use data.tokenizer"),
    Refused("*.model.external_lib", "importing an external model library", "use a model transformers loads"),
    Refused("*freeze_vision_tower", "vision-language models", "use a text model"),
    Refused("*.fsdp_config.model_dtype", "other master-weight dtypes", "weights are kept in fp32"),
    Refused("*.fsdp.model_dtype", "other master-weight dtypes", "weights are kept in fp32"),
    Refused("*.fsdp_config.dtype", "the FSDP engine's dtype key", "use actor_rollout_ref.actor.fsdp_config."
            "mixed_precision.param_dtype"),
    Refused("*.fsdp.dtype", "the FSDP engine's dtype key", "use actor_rollout_ref.actor.fsdp_config."
            "mixed_precision.param_dtype"),
    # Optimizer and losses.
    Refused("*.optim.optimizer", "other optimizers", "AdamW (torch.optim) is used", None),
    Refused("*.optim.optimizer_impl", "other optimizer implementations", "torch.optim.AdamW is used"),
    Refused("*.optim.override_optimizer_config", "optimizer overrides", "use optim.lr / weight_decay / betas"),
    Refused("*.optim.zero_indexed_step", "one-indexed LR schedules", "the schedule counts steps from 0, as verl"),
    Hint("actor_rollout_ref.actor.calculate_entropy", "actor/entropy is always computed and logged"),
    Hint("actor_rollout_ref.actor.use_prefix_grouper",
         "actor_rollout_ref.model.share_prompt_prefix shares each prompt's prefix (on by default)"),
    Refused("*data_loader_seed", "a separate mini-batch shuffle seed", "use trainer.seed"),
    Refused("*rollout_n", "a per-role rollout.n", "set actor_rollout_ref.rollout.n"),
    Refused("critic.loss_scale_factor", "critic.loss_scale_factor", "use critic.loss_agg_mode"),
    Hint("actor_rollout_ref.actor.use_remove_padding", "padding-free packing is not implemented; the padded path "
         "gives the same numbers (actor_rollout_ref.model.use_remove_padding)"),
    # Rewards.
    Refused("*reward_manager*", "reward manager classes loaded from a module (reward_manager.source=importlib)",
            "use reward.reward_manager.name=naive or dapo with custom_reward_function.path"),
    Hint("reward_model.use_reward_loop", "rewards are computed in the driver (speed only)"),
    Hint("reward_model.model.use_remove_padding", "padding-free packing is not implemented; the padded path gives the "
         "same numbers"),
    Hint("reward_model.launch_reward_fn_async", "the reward step runs before the log-prob passes (speed only)"),
    Refused("*sandbox_fusion.*", "sandboxed code execution rewards", "score in custom_reward_function.path"),
    Refused("reward.reward_model.*", "verl 0.9.1's served reward model (reward.reward_model.*: a rollout engine)", _RM),
    Refused("reward_model.rollout.*", "a reward model served by a rollout engine", _RM),
    Refused("reward_model.*", "this reward-model setting (the reward model is colocated with the actor)", _RM),
    # Algorithm extensions.
    Refused("algorithm.filter_groups.max_inflight_gen_batches", "concurrent DAPO generation batches (verl's v1 "
            "trainer)", "leave it at 1: one generation batch runs at a time, as in verl's DAPO trainer"),
    Refused("algorithm.use_pf_ppo", "PF-PPO reweighting", "use algorithm.adv_estimator alone"),
    Hint("algorithm.pf_ppo.*", "read only with algorithm.use_pf_ppo=true, which is refused"),
    Refused("distillation.*", "distillation", "use an RL objective (algorithm.adv_estimator)"),
    # Data.
    Refused("data.*image*", "multimodal (vision) data", "use text prompts"),
    Refused("data.*video*", "multimodal (video) data", "use text prompts"),
    Refused("data.*audio*", "multimodal (audio) data", "use text prompts"),
    Refused("data.*multi_modal*", "multimodal data", "use text prompts"),
    Refused("data.mm_processor_kwargs", "multimodal processors", "use text prompts"),
    Refused("data.custom_cls.*", "a custom dataset class", "use parquet files in verl's schema (data.train_files)"),
    Refused("data.apply_chat_template_kwargs", "chat-template arguments", "the tokenizer's template runs as is"),
    Refused("data.trust_remote_code", "data.trust_remote_code", "use actor_rollout_ref.model.trust_remote_code"),
    # Trainer and Ray.
    Refused("trainer.checkpoint_callback_class", "checkpoint callbacks", "read trainer.default_local_dir"),
    Refused("trainer.default_hdfs_dir", "HDFS checkpoint upload", "use trainer.default_local_dir"),
    Refused("trainer.del_local_ckpt_after_load", "deleting checkpoints after loading", "use max_actor_ckpt_to_keep"),
    Refused("trainer.v1.*", "verl's v1 trainer options", "rl_trainer has one trainer loop"),
    Hint("trainer.use_legacy_worker_impl", "rl_trainer has one worker implementation"),
    Refused("*router_replay.*", "MoE routing replay", "leave router_replay unset"),
    Refused("data.datagen.*", "generated datasets", "use parquet files in verl's schema (data.train_files)"),
    Refused("data.sampler.*", "a custom data sampler", "use data.shuffle / data.seed"),
    Refused("actor_rollout_ref.rollout.skip_*", "skipping rollouts from a dump", "generate every step"),
    Refused("*load_weight", "Megatron weight loading", "use --config-name ppo_trainer (FSDP2)"),
    Hint("actor_rollout_ref.rollout.layer_name_map.*", "Megatron's layer names; not used by the FSDP2 engine"),
    Refused("transfer_queue.*", "the TransferQueue data plane", "batches move through Ray"),
    Refused("skip.*", "skipping rollouts from a dump", "generate every step"),
    Refused("ray_kwargs.ray_init.runtime_env.*", "a Ray runtime_env", "workers run this Python environment"),
)

# `+key=value` below these keys is read (free-form keyword arguments), so it is honoured.
OPEN_DICTS = (
    "actor_rollout_ref.model.override_config", "critic.model.override_config",
    "actor_rollout_ref.rollout.engine_kwargs.vllm",
    "custom_reward_function.reward_kwargs", "reward.custom_reward_function.reward_kwargs",
    # verl 0.9.1's examples pass DAPO's overlong_buffer_cfg / max_resp_len here; rl_trainer.rewards.manager reads them
    # and refuses any other key in one line.
    "reward_model.reward_kwargs", "reward.reward_kwargs",
)
# `+key` features verl's examples pass that are named in the refusal.
PLUS_FEATURES: tuple[Refused, ...] = ()
# (verl 0.9.1's key, its older spelling): either may be set, not both differently (`normalise_spellings`).
RENAMES = (
    *((f"critic.fsdp.{k}", f"critic.model.fsdp_config.{k}")
      for k in ("param_offload", "optimizer_offload", "reshard_after_forward", "fsdp_size")),
    ("actor_rollout_ref.rollout.checkpoint_engine.update_weights_bucket_megabytes",
     "actor_rollout_ref.rollout.update_weights_bucket_megabytes"),
    ("actor_rollout_ref.actor.optim.clip_grad", "actor_rollout_ref.actor.grad_clip"),
    ("critic.optim.clip_grad", "critic.grad_clip"),
)
# (verl's deprecated global micro-batch key, its per-GPU key): `normalise_global_micro`.
GLOBAL_MICRO_BATCH_KEYS = (
    ("actor_rollout_ref.actor.ppo_micro_batch_size", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"),
    ("actor_rollout_ref.rollout.log_prob_micro_batch_size", "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu"),
    ("actor_rollout_ref.ref.log_prob_micro_batch_size", "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu"),
    ("critic.ppo_micro_batch_size", "critic.ppo_micro_batch_size_per_gpu"),
    ("critic.forward_micro_batch_size", "critic.forward_micro_batch_size_per_gpu"),
    ("reward_model.micro_batch_size", "reward_model.micro_batch_size_per_gpu"),
)
_ANY = object()


def rule_for(key: str, value=_ANY, implemented: bool = False) -> Hint | Refused | None:
    """The first rule for `key` (and `value`, unless _ANY). On implemented keys only value rules apply."""
    for rule in RULES:
        if implemented and not rule.implemented:
            continue
        if fnmatch.fnmatchcase(key, rule.pattern) and (value is _ANY or rule.values is None or value in rule.values):
            return rule
    return None


def flatten(node, prefix: str = "") -> dict:
    """Dotted key -> leaf value of a nested container (an empty dict is a leaf)."""
    out = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _load(name: str) -> DictConfig:
    cfg = OmegaConf.load(CONFIG_DIR / name)
    with open_dict(cfg):
        cfg.pop("defaults", None)
        cfg.pop("hydra", None)
    return cfg


def default_config() -> DictConfig:
    """configs/ppo_trainer.yaml composed as Hydra composes it with no overrides (verl_keys, ppo_trainer,
    model_engine=dp), without its hydra section: for tools that build a config without Hydra."""
    return OmegaConf.merge(_load("verl_keys.yaml"), _load("ppo_trainer.yaml"), _load("model_engine/dp.yaml"))


@functools.lru_cache(maxsize=1)
def _baseline() -> DictConfig:
    """`default_config()` plus the Megatron-only keys at their defaults; Megatron's values of shared keys are not
    defaults here (they are refused)."""
    return OmegaConf.merge(_load("model_engine/megatron.yaml"), default_config())


@functools.lru_cache(maxsize=1)
def implemented_keys() -> frozenset[str]:
    """The leaves of configs/ppo_trainer.yaml: what rl_trainer implements."""
    return frozenset(flatten(OmegaConf.to_container(_load("ppo_trainer.yaml"), resolve=False)))


def _raw(cfg: DictConfig) -> dict:
    return flatten(OmegaConf.to_container(cfg, resolve=False))


def _raw_value(cfg: DictConfig, key: str):
    """The value of `key` as written (an interpolation stays a string)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return OmegaConf.to_container(node, resolve=False).get(leaf) if isinstance(node, DictConfig) else None


def changed_keys(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """(keys whose value differs from the default, keys the defaults do not have). A key left at an interpolation
    of another key (verl's `${oc.select:...}` defaults) is unchanged: the key it follows is checked instead."""
    base, base_raw = _baseline(), _raw(_baseline())
    changed, unknown = [], []
    for key, raw in _raw(cfg).items():
        if key not in base_raw:
            unknown.append(key)
        elif raw != base_raw[key] and OmegaConf.select(cfg, key) != OmegaConf.select(base, key):
            changed.append(key)
    return changed, unknown


def is_set(cfg: DictConfig, key: str, overrides: list[str] | None) -> bool:
    """Whether the user chose `key`: named in an override, or changed from the default (not by following the key
    its default interpolates)."""
    if any(o.split("=", 1)[0].lstrip("+~") == key for o in overrides or ()):
        return True
    base = _baseline()
    return (_raw_value(cfg, key) != _raw_value(base, key)
            and OmegaConf.select(cfg, key) != OmegaConf.select(base, key))


def refusal(key: str, value, rule: Refused) -> str:
    return f"{key}={value}: rl_trainer does not implement {rule.feature}; {rule.instead}"


def check(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """Refuse the first non-default value of a refused key (in RULES order) and any `+key` that nothing reads;
    print one notice line per non-default hint key."""
    changed, unknown = changed_keys(cfg)
    implemented = implemented_keys()
    refused, hints = [], []
    for key in changed:
        value = OmegaConf.select(cfg, key)
        rule = rule_for(key, value, implemented=key in implemented)
        if isinstance(rule, Refused):
            refused.append((RULES.index(rule), key, value, rule))
        elif isinstance(rule, Hint):
            hints.append(f"notice: {key}={value} is accepted; {rule.note}")
    if refused:
        _, key, value, rule = min(refused, key=lambda r: r[0])
        raise UserError(refusal(key, value, rule))
    for key in unknown:
        _check_added(key, OmegaConf.select(cfg, key), hints)
    for line in hints:
        log.warning(line)


def _check_added(key: str, value, hints: list[str]) -> None:
    """A key the configs do not declare (a `+key=value` override): honoured below a free-form kwargs dict, else
    refused (naming the feature where one is known), or a hint where a hint rule covers it."""
    for rule in PLUS_FEATURES:
        if fnmatch.fnmatchcase(key, rule.pattern):
            raise UserError(f"+{refusal(key, value, rule)}")
    if any(key.startswith(p + ".") for p in OPEN_DICTS):
        return
    rule = rule_for(key, value)
    if isinstance(rule, Hint):
        hints.append(f"notice: +{key}={value} is accepted; {rule.note}")
        return
    if isinstance(rule, Refused):
        raise UserError(f"+{refusal(key, value, rule)}")
    raise UserError(f"+{key}={value}: nothing in rl_trainer reads this key (verl 0.9.1 has no such key either), "
                    "so it would be ignored; remove it")


def normalise_spellings(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """verl 0.9.1's key and its older spelling (`RENAMES`): the older one is copied to the new one when only it
    was set; both set differently is an error. Both then hold the value, so a reader of either sees it."""
    for new, old in RENAMES:
        new_value, old_value = OmegaConf.select(cfg, new), OmegaConf.select(cfg, old)
        old_set = old_value is not None and is_set(cfg, old, overrides)
        if old_set and is_set(cfg, new, overrides) and new_value != old_value:
            raise UserError(f"{old}={old_value} and {new}={new_value} disagree ({old} is the older spelling of {new}); "
                            f"set only {new}")
        value = old_value if old_set else new_value
        OmegaConf.update(cfg, new, value, force_add=True)
        OmegaConf.update(cfg, old, value, force_add=True)


def normalise_global_micro(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """verl's deprecated global micro-batch sizes (`GLOBAL_MICRO_BATCH_KEYS`), counted over all workers: verl's
    FSDP workers divided them by the data-parallel size (world size / Ulysses size, which is 1 here) into the
    per-GPU key, and refused a config that sets both spellings (its ActorConfig / CriticConfig / check_mutually_
    exclusive). As there, the global value must be at least the world size. Here the per-GPU keys have defaults,
    so "set" means not null and named on the command line or changed from configs/ppo_trainer.yaml."""
    world = cfg.trainer.nnodes * cfg.trainer.n_gpus_per_node
    for global_key, per_gpu_key in GLOBAL_MICRO_BATCH_KEYS:
        value = OmegaConf.select(cfg, global_key)
        if value is None:
            continue
        if OmegaConf.select(cfg, per_gpu_key) is not None and is_set(cfg, per_gpu_key, overrides):
            raise UserError(f"{global_key}={value} and {per_gpu_key}={OmegaConf.select(cfg, per_gpu_key)} are both "
                            f"set; remove {global_key} (deprecated in verl: only {per_gpu_key} is supported)")
        if isinstance(value, bool) or not isinstance(value, int) or value < world:
            raise UserError(f"{global_key}={value} counts sequences over all {world} workers, so it must be an integer "
                            f">= {world}; or set {per_gpu_key} instead")
        OmegaConf.update(cfg, per_gpu_key, value // world)


def apply(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """The one call validate_config makes, before anything reads the config: `check`, then the normalisations."""
    check(cfg, overrides)
    with open_dict(cfg):
        normalise_spellings(cfg, overrides)
        normalise_global_micro(cfg, overrides)
