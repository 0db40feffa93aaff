"""The RL math, pure torch (and numpy): advantage estimators, PPO losses, KL penalties and controllers.

Names, signatures and numbers follow verl 0.9.1's `verl/trainer/ppo/core_algos.py`, so what you learn
there applies here. Nothing in this package imports Ray, transformers or the trainer.
"""

from rl_trainer.algos.actor_loss import compute_actor_loss
from rl_trainer.algos.advantages import (
    compute_gae_advantage_return,
    compute_gpg_outcome_advantage,
    compute_grpo_outcome_advantage,
    compute_grpo_passk_outcome_advantage,
    compute_opo_outcome_advantage,
    compute_reinforce_plus_plus_baseline_outcome_advantage,
    compute_reinforce_plus_plus_outcome_advantage,
    compute_remax_outcome_advantage,
    compute_rloo_outcome_advantage,
)
from rl_trainer.algos.kl import (
    KL_PENALTY_CHOICES,
    AdaptiveKLController,
    FixedKLController,
    apply_kl_penalty,
    compute_rewards,
    get_kl_controller,
    kl_penalty,
    kl_penalty_forward,
)
from rl_trainer.algos.losses import LOSS_AGG_MODES, agg_loss, compute_entropy_loss, compute_policy_loss, compute_value_loss
from rl_trainer.algos.masked import (
    clip_by_value,
    entropy_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from rl_trainer.algos.registry import (
    ADV_ESTIMATOR_REGISTRY,
    POLICY_LOSS_REGISTRY,
    compute_advantage,
    get_adv_estimator_fn,
    get_policy_loss_fn,
    register_adv_est,
    register_policy_loss,
)

__all__ = [
    "ADV_ESTIMATOR_REGISTRY",
    "AdaptiveKLController",
    "FixedKLController",
    "KL_PENALTY_CHOICES",
    "LOSS_AGG_MODES",
    "POLICY_LOSS_REGISTRY",
    "agg_loss",
    "apply_kl_penalty",
    "clip_by_value",
    "compute_actor_loss",
    "compute_advantage",
    "compute_entropy_loss",
    "compute_gae_advantage_return",
    "compute_gpg_outcome_advantage",
    "compute_grpo_outcome_advantage",
    "compute_grpo_passk_outcome_advantage",
    "compute_opo_outcome_advantage",
    "compute_policy_loss",
    "compute_reinforce_plus_plus_baseline_outcome_advantage",
    "compute_reinforce_plus_plus_outcome_advantage",
    "compute_remax_outcome_advantage",
    "compute_rewards",
    "compute_rloo_outcome_advantage",
    "compute_value_loss",
    "entropy_from_logits",
    "get_adv_estimator_fn",
    "get_kl_controller",
    "get_policy_loss_fn",
    "kl_penalty",
    "kl_penalty_forward",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "register_adv_est",
    "register_policy_loss",
]
