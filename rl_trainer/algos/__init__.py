"""The RL math, pure torch (and numpy): advantage estimators, PPO losses, KL penalties and controllers.

Names, signatures and numbers follow verl 0.9.1's `verl/trainer/ppo/core_algos.py` and
`rollout_corr_helper.py`, so what you learn there applies here. One concern per module: advantages.py (the
loop estimators), group_advantages.py (scatter-based GRPO/RLOO, GDPO), token_baselines.py (optimal token
baseline), losses.py (aggregation, PPO clip, value, entropy), policy_losses.py (the registered policy losses),
loss_config.py (the config they read), rollout_correction.py (IS weights, rejection), reward_shaping.py (DAPO's
overlong penalty), kl.py, masked.py, actor_loss.py, registry.py. Nothing in this package imports Ray,
transformers or the trainer.
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
from rl_trainer.algos.group_advantages import (
    compute_gdpo_outcome_advantage,
    compute_grpo_vectorized_outcome_advantage,
    compute_rloo_vectorized_outcome_advantage,
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
from rl_trainer.algos.loss_config import ActorLossConfig, PolicyLossConfig, RolloutCorrectionConfig
from rl_trainer.algos.losses import LOSS_AGG_MODES, agg_loss, compute_entropy_loss, compute_policy_loss, compute_value_loss
from rl_trainer.algos.masked import (
    clip_by_value,
    entropy_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    sum_pi_squared_from_logits,
)
from rl_trainer.algos.policy_losses import (
    compute_policy_loss_bypass_mode,
    compute_policy_loss_cispo,
    compute_policy_loss_clip_cov,
    compute_policy_loss_dppo_kl,
    compute_policy_loss_dppo_tv,
    compute_policy_loss_dro,
    compute_policy_loss_geo_mean,
    compute_policy_loss_gpg,
    compute_policy_loss_gspo,
    compute_policy_loss_kl_cov,
    compute_policy_loss_sapo,
    compute_policy_loss_vanilla,
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
from rl_trainer.algos.reward_shaping import compute_overlong_penalty
from rl_trainer.algos.rollout_correction import (
    ROLLOUT_RS_OPTIONS,
    compute_offpolicy_metrics,
    compute_rollout_correction_and_rejection_mask,
    compute_rollout_correction_weights,
    compute_rollout_rejection_mask,
)
from rl_trainer.algos.token_baselines import (
    TOKEN_BASELINE_ESTIMATORS,
    compute_multi_turn_optimal_token_baseline_advantage,
    compute_optimal_token_baseline_advantage,
)

__all__ = [
    "TOKEN_BASELINE_ESTIMATORS",
    "ADV_ESTIMATOR_REGISTRY",
    "ActorLossConfig",
    "AdaptiveKLController",
    "FixedKLController",
    "KL_PENALTY_CHOICES",
    "LOSS_AGG_MODES",
    "POLICY_LOSS_REGISTRY",
    "PolicyLossConfig",
    "ROLLOUT_RS_OPTIONS",
    "RolloutCorrectionConfig",
    "agg_loss",
    "apply_kl_penalty",
    "clip_by_value",
    "compute_actor_loss",
    "compute_advantage",
    "compute_entropy_loss",
    "compute_gae_advantage_return",
    "compute_gdpo_outcome_advantage",
    "compute_gpg_outcome_advantage",
    "compute_grpo_outcome_advantage",
    "compute_grpo_passk_outcome_advantage",
    "compute_grpo_vectorized_outcome_advantage",
    "compute_multi_turn_optimal_token_baseline_advantage",
    "compute_offpolicy_metrics",
    "compute_opo_outcome_advantage",
    "compute_optimal_token_baseline_advantage",
    "compute_overlong_penalty",
    "compute_policy_loss",
    "compute_policy_loss_bypass_mode",
    "compute_policy_loss_cispo",
    "compute_policy_loss_clip_cov",
    "compute_policy_loss_dppo_kl",
    "compute_policy_loss_dppo_tv",
    "compute_policy_loss_dro",
    "compute_policy_loss_geo_mean",
    "compute_policy_loss_gpg",
    "compute_policy_loss_gspo",
    "compute_policy_loss_kl_cov",
    "compute_policy_loss_sapo",
    "compute_policy_loss_vanilla",
    "compute_reinforce_plus_plus_baseline_outcome_advantage",
    "compute_reinforce_plus_plus_outcome_advantage",
    "compute_remax_outcome_advantage",
    "compute_rewards",
    "compute_rloo_outcome_advantage",
    "compute_rloo_vectorized_outcome_advantage",
    "compute_rollout_correction_and_rejection_mask",
    "compute_rollout_correction_weights",
    "compute_rollout_rejection_mask",
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
    "sum_pi_squared_from_logits",
    "register_adv_est",
    "register_policy_loss",
]
