"""The config object a registered policy loss reads: verl 0.9.1's actor-config keys under verl's names.

Every registered policy loss is called as `fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode,
config, rollout_is_weights)` and reads its hyper-parameters from `config` by attribute (`config.clip_ratio`,
`config.policy_loss.dro_beta`, `config.global_batch_info`), as verl's losses read its `ActorConfig`. Any object
with those attributes works (an OmegaConf node of `actor_rollout_ref.actor`, a `types.SimpleNamespace`); these
dataclasses are the plain one `compute_actor_loss` builds. The defaults are verl's (`actor.yaml`,
`PolicyLossConfig`, `RolloutCorrectionConfig` as the rollout-correction contract states them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class _MappingAccess:
    """`cfg.get(name, default)`, `cfg[name]` and `name in cfg` on a dataclass, as verl's BaseConfig allows."""

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)

    def __getitem__(self, name: str) -> Any:
        if name not in self:
            raise KeyError(name)
        return getattr(self, name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in {f.name for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class RolloutCorrectionConfig(_MappingAccess):
    """`algorithm.rollout_correction.*`: importance sampling (IS) and rejection sampling (RS) of rollout tokens.

    rollout_is: None | "token" | "sequence"; rollout_is_threshold: `u` (truncation) or "l_u" (IcePop);
    rollout_rs: comma-separated rejection options (token_k1, seq_mean_k3, ...) with rollout_rs_threshold;
    bypass_mode: old_log_prob = the rollout's log-probs; loss_type: "ppo_clip" | "reinforce" (bypass_mode loss).
    """

    rollout_is: str | None = None
    rollout_is_threshold: str | float | None = 2.0
    rollout_is_batch_normalize: bool = False
    rollout_rs: str | None = None
    rollout_rs_threshold: str | float | None = None
    bypass_mode: bool = False
    loss_type: str = "ppo_clip"


@dataclass(frozen=True)
class PolicyLossConfig(_MappingAccess):
    """`actor_rollout_ref.actor.policy_loss.*`: the loss name and the knobs of the losses that have them.

    clip_cov_*: clip_cov (https://arxiv.org/abs/2505.22617); kl_cov_ratio, ppo_kl_coef: kl_cov (same paper);
    dro_beta: dro (required, > 0); rollout_correction: bypass_mode's settings (None: bypass_mode raises).
    """

    loss_mode: str = "vanilla"
    clip_cov_ratio: float | None = 0.0002
    clip_cov_lb: float | None = 1.0
    clip_cov_ub: float | None = 5.0
    kl_cov_ratio: float | None = 0.0002
    ppo_kl_coef: float | None = 0.1
    dro_beta: float | None = None
    rollout_correction: Any = None


@dataclass(frozen=True)
class ActorLossConfig(_MappingAccess):
    """The actor keys a policy loss reads (`actor_rollout_ref.actor.*`).

    clip_ratio_low/high: None falls back to clip_ratio (for dppo_* they are probability-difference thresholds);
    clip_ratio_c: the dual-clip bound of vanilla (> 1), the truncation of dppo_*; tau_pos/tau_neg: SAPO's gate
    temperatures; global_batch_info: agg_loss's dp_size / batch_num_tokens / global_batch_size /
    loss_scale_factor. loss_agg_mode and loss_scale_factor are carried as in verl, but the losses use the
    `loss_agg_mode` argument and the factor inside global_batch_info.
    """

    clip_ratio: float = 0.2
    clip_ratio_low: float | None = 0.2
    clip_ratio_high: float | None = 0.2
    clip_ratio_c: float = 3.0
    tau_pos: float = 1.0
    tau_neg: float = 1.05
    loss_agg_mode: str = "token-mean"
    loss_scale_factor: float | None = None
    policy_loss: Any = field(default_factory=PolicyLossConfig)
    global_batch_info: dict = field(default_factory=dict)
