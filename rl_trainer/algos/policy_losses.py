"""The policy losses verl 0.9.1 registers (`actor_rollout_ref.actor.policy_loss.loss_mode`), with verl's signature:

    fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
       rollout_is_weights=None) -> (pg_loss, metrics)

Args shared by all: old_log_prob (l0), log_prob (l, carries the gradient), advantages (A), response_mask (M; float,
int or bool, may have holes), rollout_is_weights (w, optional, no gradient): (bs, response_length). config: the
actor config read by attribute (rl_trainer.algos.loss_config.ActorLossConfig, an OmegaConf node, ...).
pg_loss is a 0-dim tensor to minimise; metrics are python floats under verl's `actor/...` names.

Notation in the docstrings: d = l - l0 (log-ratio), d20 = clamp(d, -20, 20), mmean = masked_mean over M,
agg = agg_loss(., M, loss_agg_mode, **config.global_batch_info), lo/hi = clip_ratio_low/high (None -> clip_ratio).
Unless a loss says otherwise the per-token loss matrix is multiplied by w before agg.
"""

from __future__ import annotations

from typing import Any

import torch

from rl_trainer.algos.losses import agg_loss, ppo_clip_token_losses
from rl_trainer.algos.masked import masked_mean
from rl_trainer.algos.registry import register_policy_loss
from rl_trainer.algos.rollout_correction import compute_rollout_correction_and_rejection_mask

PolicyLossOutput = tuple[torch.Tensor, dict[str, float]]


# ------------------------------------------------------------------------------------------------ helpers
def _require_config(config: Any, loss: str) -> Any:
    if config is None:
        raise ValueError(f"policy loss {loss!r} needs the actor config (config=...)")
    return config


def _clip_bounds(config: Any) -> tuple[float, float]:
    """(lo, hi): clip_ratio_low/high, each falling back to clip_ratio when None (verl's rule)."""
    low, high = getattr(config, "clip_ratio_low", None), getattr(config, "clip_ratio_high", None)
    return (config.clip_ratio if low is None else low), (config.clip_ratio if high is None else high)


def _or_default(value: Any, default: float) -> Any:
    return default if value is None else value


def _aggregate(pg_losses: torch.Tensor, response_mask: torch.Tensor, loss_agg_mode: str, config: Any,
               rollout_is_weights: torch.Tensor | None) -> torch.Tensor:
    """agg_loss(pg_losses * w, M, loss_agg_mode, **config.global_batch_info)."""
    if rollout_is_weights is not None:
        pg_losses = pg_losses * rollout_is_weights
    return agg_loss(pg_losses, response_mask, loss_agg_mode, **dict(getattr(config, "global_batch_info", None) or {}))


def _floats(**metrics: torch.Tensor | float) -> dict[str, float]:
    return {f"actor/{k}": float(v.detach().item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}


# ------------------------------------------------------------------------------------------------- losses
@register_policy_loss("vanilla")
def compute_policy_loss_vanilla(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                                response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config: Any = None,
                                rollout_is_weights: torch.Tensor | None = None) -> PolicyLossOutput:
    """PPO's clipped surrogate with dual clip (https://arxiv.org/abs/1707.06347, https://arxiv.org/abs/1912.09729):
    `compute_policy_loss` with lo/hi and clip_ratio_c (default 3.0, must be > 1) read from config.

        rho = exp(d20);  L = max(-A rho, -A clip(rho, 1 - lo, 1 + hi));  for A < 0: L = min(L, -A clip_ratio_c)
        pg_loss = agg(L * w)
    Metrics: pg_clipfrac = mmean(L2 > L1), ppo_kl = mmean(-d20), pg_clipfrac_lower (dual clip taken, A < 0).
    """
    config = _require_config(config, "vanilla")
    low, high = _clip_bounds(config)
    pg_losses, clipfrac, ppo_kl, clipfrac_lower = ppo_clip_token_losses(
        old_log_prob, log_prob, advantages, response_mask, low, high, getattr(config, "clip_ratio_c", 3.0))
    pg_loss = _aggregate(pg_losses, response_mask, loss_agg_mode, config, rollout_is_weights)
    return pg_loss, _floats(pg_clipfrac=clipfrac, ppo_kl=ppo_kl, pg_clipfrac_lower=clipfrac_lower)


def _dppo(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, rollout_is_weights,
          binary_kl: bool) -> PolicyLossOutput:
    """DPPO (https://arxiv.org/abs/2602.04879): a policy gradient -A sg(min(rho, c)) l on the tokens whose
    probability moved less than a divergence threshold (no gradient through the validity test).

        rho = exp(d20), c = clip_ratio_c (20.0 when the config has none), p = exp(l), p0 = exp(l0)
        TV: valid = (p - p0 <= hi) if A > 0 else (p - p0 >= -lo)
        KL: b = p0 (l0 - l) + (1 - p0) log((1 - p0 + 1e-8) / (1 - p + 1e-8));
            valid = (b <= hi or p <= p0) if A > 0 else (b <= lo or p >= p0)
        pg_loss = agg(-A sg(min(rho, c)) l valid * w)
    Metrics: pg_clipfrac = mmean(1 - valid), pg_clipfrac_lower = mmean((rho > c) valid), ppo_kl = mmean(-d20).
    Here clip_ratio_low/high are thresholds on the probability change, not ratio clip ranges.
    """
    low, high = _clip_bounds(config)
    negative_approx_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    truncation = getattr(config, "clip_ratio_c", 20.0)
    truncated_ratio = torch.clamp(ratio, max=truncation).detach()
    with torch.no_grad():
        prob, old_prob = torch.exp(log_prob), torch.exp(old_log_prob)
        if binary_kl:
            kl = old_prob * (old_log_prob - log_prob) + (1 - old_prob) * torch.log(
                (1.0 - old_prob + 1e-8) / (1.0 - prob + 1e-8))
            valid_pos, valid_neg = (kl <= high) | (prob <= old_prob), (kl <= low) | (prob >= old_prob)
        else:
            valid_pos, valid_neg = (prob - old_prob) <= high, (prob - old_prob) >= -low
        valid = torch.where(advantages > 0, valid_pos, valid_neg).float()
    pg_losses = -advantages * truncated_ratio * log_prob * valid
    pg_loss = _aggregate(pg_losses, response_mask, loss_agg_mode, config, rollout_is_weights)
    return pg_loss, _floats(pg_clipfrac=masked_mean(1.0 - valid, response_mask),
                            ppo_kl=masked_mean(-negative_approx_kl, response_mask),
                            pg_clipfrac_lower=masked_mean((ratio > truncation).float() * valid, response_mask))


@register_policy_loss("dppo_tv")
def compute_policy_loss_dppo_tv(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                                response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config: Any = None,
                                rollout_is_weights: torch.Tensor | None = None) -> PolicyLossOutput:
    """DPPO-Binary-TV (https://arxiv.org/abs/2602.04879): valid = p - p0 <= hi (A > 0), >= -lo (A <= 0); see _dppo."""
    return _dppo(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode,
                 _require_config(config, "dppo_tv"), rollout_is_weights, binary_kl=False)


@register_policy_loss("dppo_kl")
def compute_policy_loss_dppo_kl(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                                response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config: Any = None,
                                rollout_is_weights: torch.Tensor | None = None) -> PolicyLossOutput:
    """DPPO-Binary-KL (https://arxiv.org/abs/2602.04879): validity by the binary KL of the token; see _dppo."""
    return _dppo(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode,
                 _require_config(config, "dppo_kl"), rollout_is_weights, binary_kl=True)


@register_policy_loss("gspo")
def compute_policy_loss_gspo(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                             response_mask: torch.Tensor, loss_agg_mode: str = "seq-mean-token-mean",
                             config: Any = None, rollout_is_weights: torch.Tensor | None = None) -> PolicyLossOutput:
    """GSPO (https://arxiv.org/abs/2507.18071): PPO clipping of a sequence-level ratio.

        s_i = sum_t d M / max(sum_t M, 1)                    (mean log-ratio of row i, unclamped)
        r   = exp(min(l - sg(l) + sg(s_i), 10))              (value exp(s_i) on each token, d r / d l = r)
        pg_loss = agg(max(-A r, -A clip(r, 1 - lo, 1 + hi)) * w)    (no dual clip)
    verl's signature defaults loss_agg_mode to "seq-mean-token-mean" (the paper's); it is called with the actor's
    loss_agg_mode either way. Metrics: pg_clipfrac, ppo_kl = mmean(-d) (unclamped), pg_clipfrac_lower = 0.
    """
    config = _require_config(config, "gspo")
    low, high = _clip_bounds(config)
    negative_approx_kl = log_prob - old_log_prob
    seq_lengths = torch.sum(response_mask, dim=-1).clamp(min=1)
    seq_log_ratio = torch.sum(negative_approx_kl * response_mask, dim=-1) / seq_lengths
    log_seq_ratio = log_prob - log_prob.detach() + seq_log_ratio.detach().unsqueeze(-1)
    seq_ratio = torch.exp(torch.clamp(log_seq_ratio, max=10.0))
    pg_losses1 = -advantages * seq_ratio
    pg_losses2 = -advantages * torch.clamp(seq_ratio, 1 - low, 1 + high)
    pg_losses = torch.maximum(pg_losses1, pg_losses2)
    pg_loss = _aggregate(pg_losses, response_mask, loss_agg_mode, config, rollout_is_weights)
    return pg_loss, _floats(pg_clipfrac=masked_mean(torch.gt(pg_losses2, pg_losses1).float(), response_mask),
                            ppo_kl=masked_mean(-negative_approx_kl, response_mask), pg_clipfrac_lower=0.0)


@register_policy_loss("sapo")
def compute_policy_loss_sapo(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                             response_mask: torch.Tensor, loss_agg_mode: str = "seq-mean-token-mean",
                             config: Any = None, rollout_is_weights: torch.Tensor | None = None) -> PolicyLossOutput:
    """SAPO (https://arxiv.org/abs/2511.20347): a smooth sigmoid gate instead of a hard clip.

        rho = exp(d20), tau = tau_pos if A > 0 else tau_neg, g = sigmoid(tau (rho - 1)) * 4 / tau
        pg_loss = agg_loss(-g A * w, M, "seq-mean-token-mean", **global_batch_info)
    As in verl the aggregation is always seq-mean-token-mean: the loss_agg_mode argument is ignored.
    Metrics: pg_clipfrac = pg_clipfrac_lower = 0, ppo_kl = mmean(-d20).
    """
    config = _require_config(config, "sapo")
    tau_pos = torch.as_tensor(config.tau_pos, dtype=advantages.dtype, device=advantages.device)
    tau_neg = torch.as_tensor(config.tau_neg, dtype=advantages.dtype, device=advantages.device)
    negative_approx_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    taus = torch.where(advantages > 0, tau_pos, tau_neg)
    gates = torch.sigmoid(taus * (ratio - 1.0)) * (4.0 / taus)
    pg_loss = _aggregate(-gates * advantages, response_mask, "seq-mean-token-mean", config, rollout_is_weights)
    return pg_loss, _floats(pg_clipfrac=0.0, ppo_kl=masked_mean(-negative_approx_kl, response_mask),
                            pg_clipfrac_lower=0.0)


@register_policy_loss("gpg")
def compute_policy_loss_gpg(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                            response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config: Any = None,
                            rollout_is_weights: torch.Tensor | None = None) -> PolicyLossOutput:
    """GPG (https://arxiv.org/abs/2504.02546): plain policy gradient, pg_loss = agg(-l A * w). No metrics.

    old_log_prob is unused (no ratio, no clipping).
    """
    config = _require_config(config, "gpg")
    return _aggregate(-log_prob * advantages, response_mask, loss_agg_mode, config, rollout_is_weights), {}


@register_policy_loss("clip_cov")
def compute_policy_loss_clip_cov(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                                 response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config: Any = None,
                                 rollout_is_weights: torch.Tensor | None = None) -> PolicyLossOutput:
    """Clip-Cov (Cui et al. 2025, https://arxiv.org/abs/2505.22617): PPO without the +-20 clamp or dual clip, plus
    the gradient cut on a few random tokens whose advantage-logp covariance is high.

        rho = exp(d), L1 = -A rho, L2 = -A clip(rho, 1 - lo, 1 + hi)
        cov = (A - mmean(A)) (l - mmean(sg(l)))
        candidates: valid, not PPO-clipped (L2 <= L1), clip_cov_lb < cov < clip_cov_ub   (row-major order)
        k = max(floor(clip_cov_ratio * #valid), 1); pick candidates[torch.randperm(n)[:k]] (one CPU randperm call,
            made whenever there is a candidate, so seeding torch reproduces verl's choice)
        pg_loss = agg(max(L1, L2) * (0 on picked tokens) * w)
    policy_loss.clip_cov_ratio / clip_cov_lb / clip_cov_ub (None -> 0.0002 / 1.0 / 5.0); ValueError if the ratio
    is <= 0. Metrics: pg_clipfrac = share of valid tokens picked (not PPO's clip fraction), ppo_kl = mmean(-d).
    """
    config = _require_config(config, "clip_cov")
    low, high = _clip_bounds(config)
    policy_loss = config.policy_loss
    clip_cov_ratio = _or_default(getattr(policy_loss, "clip_cov_ratio", None), 0.0002)
    clip_cov_lb = _or_default(getattr(policy_loss, "clip_cov_lb", None), 1.0)
    clip_cov_ub = _or_default(getattr(policy_loss, "clip_cov_ub", None), 5.0)
    if not clip_cov_ratio > 0:
        raise ValueError(f"policy_loss.clip_cov_ratio must be > 0 for clip_cov, got {clip_cov_ratio}")
    negative_approx_kl = log_prob - old_log_prob
    ratio = torch.exp(negative_approx_kl)
    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * torch.clamp(ratio, 1 - low, 1 + high)
    valid = response_mask.bool()
    with torch.no_grad():
        cov = (advantages - masked_mean(advantages, response_mask)) * (
            log_prob.detach() - masked_mean(log_prob.detach(), response_mask))
        candidates = valid & ~(pg_losses2 > pg_losses1) & (cov > clip_cov_lb) & (cov < clip_cov_ub)
        candidate_idx = torch.nonzero(candidates)
        keep = torch.ones_like(advantages)
        if len(candidate_idx) > 0:
            slots = max(int(clip_cov_ratio * valid.sum().item()), 1)
            picked = candidate_idx[torch.randperm(len(candidate_idx))[:slots].to(candidate_idx.device)]
            keep[picked[:, 0], picked[:, 1]] = 0
    pg_losses = torch.maximum(pg_losses1, pg_losses2) * keep
    pg_loss = _aggregate(pg_losses, response_mask, loss_agg_mode, config, rollout_is_weights)
    return pg_loss, _floats(pg_clipfrac=masked_mean((keep == 0).float(), response_mask),
                            ppo_kl=masked_mean(-negative_approx_kl, response_mask))


@register_policy_loss("kl_cov")
def compute_policy_loss_kl_cov(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                               response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config: Any = None,
                               rollout_is_weights: torch.Tensor | None = None) -> PolicyLossOutput:
    """KL-Cov (Cui et al. 2025, https://arxiv.org/abs/2505.22617): an unclipped surrogate with a |log-ratio|
    penalty on the tokens of largest advantage-logp covariance.

        rho = exp(d), base loss -A rho
        over the n valid tokens (row-major): cov = (a - mean a)(l - mean l), a = sg(A), l = sg(log_prob)
        the k = max(1, floor(n * kl_cov_ratio)) tokens of largest cov (torch.topk): -A rho + ppo_kl_coef |d|
        pg_loss = agg(. * w)
    policy_loss.kl_cov_ratio (None -> 0.0002; ValueError if <= 0), policy_loss.ppo_kl_coef (None -> 1.0, as in
    verl; the YAML default is 0.1). Only metric: ppo_kl = mmean(|d|) (the absolute value).
    """
    config = _require_config(config, "kl_cov")
    kl_cov_ratio = _or_default(getattr(config.policy_loss, "kl_cov_ratio", None), 0.0002)
    ppo_kl_coef = _or_default(getattr(config.policy_loss, "ppo_kl_coef", None), 1.0)
    if not kl_cov_ratio > 0:
        raise ValueError(f"policy_loss.kl_cov_ratio must be > 0 for kl_cov, got {kl_cov_ratio}")
    negative_approx_kl = log_prob - old_log_prob
    abs_kl = negative_approx_kl.abs()
    pg_losses = -advantages * torch.exp(negative_approx_kl)
    valid = response_mask.bool()
    with torch.no_grad():
        valid_adv = advantages[valid].detach().reshape(-1).cpu()
        valid_logp = log_prob[valid].detach().reshape(-1).cpu()
        penalised = torch.zeros(valid.numel(), dtype=torch.bool)
        if len(valid_adv) > 0:
            cov = (valid_adv - valid_adv.mean()) * (valid_logp - valid_logp.mean())
            top = torch.topk(cov, max(1, int(len(cov) * kl_cov_ratio)), largest=True).indices
            penalised[torch.nonzero(valid.reshape(-1).cpu(), as_tuple=True)[0][top]] = True
        penalised = penalised.reshape(valid.shape).to(valid.device)
    pg_losses = torch.where(penalised, pg_losses + ppo_kl_coef * abs_kl, pg_losses)
    pg_loss = _aggregate(pg_losses, response_mask, loss_agg_mode, config, rollout_is_weights)
    return pg_loss, _floats(ppo_kl=masked_mean(abs_kl, response_mask))


@register_policy_loss("geo_mean")
def compute_policy_loss_geo_mean(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                                 response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config: Any = None,
                                 rollout_is_weights: torch.Tensor | None = None) -> PolicyLossOutput:
    """GMPO (Zhao et al. 2025, https://arxiv.org/abs/2507.20673): the geometric mean of token ratios per sequence,
    clipped in log space.

        dc = clamp(d, -lo, hi);  m = sign(A) min(sign(A) d, sign(A) dc)   (min(d, dc) for A > 0, max for A < 0,
                                                                           0 for A = 0)
        per row, L = sum_t M: ratio = exp(sum_t m M / (L + 1e-8)), adv = sum_t A M / (L + 1e-8)
        loss_row = -adv * ratio  [* exp(sum_t log(w + 1e-10) M / (L + 1e-8)), the weights' geometric mean]
        pg_loss = mean of loss_row over all rows
    As in verl, loss_agg_mode and global_batch_info are not used, and d is not clamped at +-20. With
    clipped = (d != dc): pg_clipfrac = mmean(clipped [A > 0]), pg_clipfrac_lower = mmean(clipped [A < 0]),
    ppo_kl = mmean(-d).
    """
    config = _require_config(config, "geo_mean")
    low, high = _clip_bounds(config)
    negative_approx_kl = log_prob - old_log_prob
    sign = torch.sign(advantages)
    clamped = torch.clamp(negative_approx_kl, -low, high)
    pessimistic = sign * torch.min(sign * negative_approx_kl, sign * clamped)
    lengths = response_mask.sum(dim=-1)
    ratio = torch.exp((pessimistic * response_mask).sum(dim=-1) / (lengths + 1e-8))
    seq_advantage = (advantages * response_mask).sum(dim=-1) / (lengths + 1e-8)
    pg_losses = -seq_advantage * ratio
    if rollout_is_weights is not None:
        pg_losses = pg_losses * torch.exp(
            (torch.log(rollout_is_weights + 1e-10) * response_mask).sum(dim=-1) / (lengths + 1e-8))
    clipped = torch.ne(negative_approx_kl, clamped)
    return torch.mean(pg_losses), _floats(
        pg_clipfrac=masked_mean((clipped * (advantages > 0)).float(), response_mask),
        ppo_kl=masked_mean(-negative_approx_kl, response_mask),
        pg_clipfrac_lower=masked_mean((clipped * (advantages < 0)).float(), response_mask))


@register_policy_loss("dro")
def compute_policy_loss_dro(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                            response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config: Any = None,
                            rollout_is_weights: torch.Tensor | None = None) -> PolicyLossOutput:
    """Direct Reward Optimization (Richemond et al. 2024, https://arxiv.org/abs/2405.19107): policy gradient with
    a quadratic log-ratio penalty.

        pg_loss = agg(-(l A - beta / 2 * d^2) * w),   beta = policy_loss.dro_beta (ValueError if None or <= 0)
    Only metric: ppo_kl = mmean(-d).
    """
    config = _require_config(config, "dro")
    beta = getattr(config.policy_loss, "dro_beta", None)
    if beta is None or not beta > 0:
        raise ValueError(f"policy_loss.dro_beta must be a positive number for the dro loss, got {beta}")
    log_ratio = log_prob - old_log_prob
    pg_losses = -(log_prob * advantages - 0.5 * beta * log_ratio.square())
    pg_loss = _aggregate(pg_losses, response_mask, loss_agg_mode, config, rollout_is_weights)
    return pg_loss, _floats(ppo_kl=masked_mean(-log_ratio, response_mask))


@register_policy_loss("cispo")
def compute_policy_loss_cispo(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                              response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config: Any = None,
                              rollout_is_weights: torch.Tensor | None = None) -> PolicyLossOutput:
    """CISPO (MiniMax-M1, https://arxiv.org/abs/2506.13585): clip the IS weight, never drop a token's gradient.

        rho = exp(d20), rho_c = clip(rho, 1 - lo, 1 + hi)
        pg_loss = agg(-sg(rho_c) A l * w)            (d pg / d l = -rho_c A on every token, up to agg)
    Metrics: pg_clipfrac = mmean(rho != rho_c), ppo_kl = mmean(-d20), pg_clipfrac_lower = 0.
    """
    config = _require_config(config, "cispo")
    low, high = _clip_bounds(config)
    negative_approx_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    clipped_ratio = torch.clamp(ratio, 1 - low, 1 + high)
    pg_losses = -clipped_ratio.detach() * advantages * log_prob
    pg_loss = _aggregate(pg_losses, response_mask, loss_agg_mode, config, rollout_is_weights)
    return pg_loss, _floats(pg_clipfrac=masked_mean((ratio != clipped_ratio).float(), response_mask),
                            ppo_kl=masked_mean(-negative_approx_kl, response_mask), pg_clipfrac_lower=0.0)


@register_policy_loss("bypass_mode")
def compute_policy_loss_bypass_mode(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                                    response_mask: torch.Tensor, loss_agg_mode: str = "token-mean",
                                    config: Any = None,
                                    rollout_is_weights: torch.Tensor | None = None) -> PolicyLossOutput:
    """Rollout correction in the loss, when old_log_prob holds the rollout engine's log-probs (verl's bypass mode:
    no separate old-log-prob pass; https://richardli.xyz/rl-collapse).

    With rc = config.policy_loss.rollout_correction (ValueError if absent), without gradient:
        W, M2, m = compute_rollout_correction_and_rejection_mask(old_log_prob=sg(l), rollout_log_prob=l0, M,
                       rc.rollout_is, rc.rollout_is_threshold, rc.rollout_is_batch_normalize, rc.rollout_rs,
                       rc.rollout_rs_threshold)          (the current policy plays the "training" role)
        rc.loss_type == "reinforce": pg_loss = agg_loss(-A l W, M2, ...) (W = 1 when IS is off); ppo_kl = mmean(-d, M2)
        rc.loss_type == "ppo_clip":  the vanilla loss with mask M2 and no IS weights (its ratio l - l0 already is
                                     current / rollout; W is only reported)
        anything else: ValueError.
    The rollout_is_weights argument is ignored. Metrics: the loss's actor/* metrics and all of m (rollout_corr/*).
    """
    config = _require_config(config, "bypass_mode")
    rc = getattr(getattr(config, "policy_loss", None), "rollout_correction", None)
    if rc is None:
        raise ValueError("policy loss 'bypass_mode' needs config.policy_loss.rollout_correction "
                         "(algorithm.rollout_correction with bypass_mode=true)")
    loss_type = getattr(rc, "loss_type", "ppo_clip")
    if loss_type not in ("reinforce", "ppo_clip"):
        raise ValueError(f"rollout_correction.loss_type must be 'reinforce' or 'ppo_clip', got {loss_type!r}")
    with torch.no_grad():
        weights, mask, rollout_metrics = compute_rollout_correction_and_rejection_mask(
            old_log_prob=log_prob.detach(), rollout_log_prob=old_log_prob, response_mask=response_mask,
            rollout_is=getattr(rc, "rollout_is", None), rollout_is_threshold=getattr(rc, "rollout_is_threshold", 2.0),
            rollout_is_batch_normalize=getattr(rc, "rollout_is_batch_normalize", False),
            rollout_rs=getattr(rc, "rollout_rs", None), rollout_rs_threshold=getattr(rc, "rollout_rs_threshold", None))
    if loss_type == "reinforce":
        pg_losses = -advantages * log_prob if weights is None else -advantages * log_prob * weights
        pg_loss = _aggregate(pg_losses, mask, loss_agg_mode, config, None)
        metrics = _floats(ppo_kl=masked_mean(-(log_prob - old_log_prob), mask))
    else:
        pg_loss, metrics = compute_policy_loss_vanilla(old_log_prob, log_prob, advantages, mask, loss_agg_mode,
                                                       config, None)
    metrics.update(rollout_metrics)
    return pg_loss, metrics
