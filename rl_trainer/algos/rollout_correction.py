"""Rollout correction: importance-sampling (IS) weights and rejection sampling (RS) for the mismatch between the
policy that generated the tokens (the rollout engine, e.g. vLLM in bf16) and the policy being trained, with verl
0.9.1's names, options and metrics (verl/trainer/ppo/rollout_corr_helper.py).

Background: Liu, Li, Fu et al. 2025, "When Speed Kills Stability: Demystifying RL Collapse from the
Training-Inference Mismatch", https://richardli.xyz/rl-collapse ; IcePop (masked IS) and TIS (truncated IS),
https://fengyao.notion.site/off-policy-rl .

Inputs are log-probs of the same sampled tokens, (bs, response_length); `log_ratio = old_log_prob -
rollout_log_prob` = log(pi_train / pi_rollout). Log-ratios are clamped to +-20 (SAFETY_BOUND) before any exp.
`response_mask` (M) may be float, int or bool. Metrics are python floats.
"""

from __future__ import annotations

import math

import torch

from rl_trainer.algos.masked import masked_mean, masked_sum

SAFETY_BOUND = 20.0
ROLLOUT_RS_OPTIONS = ("token_k1", "token_k2", "token_k3", "seq_sum_k1", "seq_sum_k2", "seq_sum_k3", "seq_mean_k1",
                      "seq_mean_k2", "seq_mean_k3", "seq_max_k2", "seq_max_k3")
IS_THRESHOLD_GRAMMAR = "a positive number u (truncate at u) or a string 'u' or 'l_u' with 0 < l <= u (IcePop)"


# ------------------------------------------------------------------------------------------------- parsing
def parse_rollout_is_threshold(spec: str | float) -> tuple[float, float | None]:
    """rollout_is_threshold -> (upper, lower or None): `u` or "u" is TIS (truncate at u), "l_u" is IcePop (zero the
    weights outside [l, u]; split at the first "_"). ValueError for a bool, an empty or unparsable string, another
    type, u <= 0, l <= 0 or l > u."""
    if isinstance(spec, bool) or not isinstance(spec, (int, float, str)):
        raise ValueError(f"rollout_is_threshold={spec!r} is not valid; use {IS_THRESHOLD_GRAMMAR}")
    lower: float | None = None
    try:
        if isinstance(spec, str):
            text = spec.strip()
            if "_" in text:
                lower_text, upper_text = text.split("_", 1)
                lower, upper = float(lower_text), float(upper_text)
            else:
                upper = float(text)
        else:
            upper = float(spec)
    except ValueError:
        raise ValueError(f"rollout_is_threshold={spec!r} is not valid; use {IS_THRESHOLD_GRAMMAR}") from None
    if not upper > 0 or (lower is not None and not 0 < lower <= upper):
        raise ValueError(f"rollout_is_threshold={spec!r} is not valid; use {IS_THRESHOLD_GRAMMAR}")
    return upper, lower


def parse_rollout_rs(rollout_rs: str) -> list[str]:
    """"token_k1, seq_max_k3" -> ["token_k1", "seq_max_k3"] (whitespace stripped, duplicates dropped keeping the
    first). ValueError for a non-string, an empty list or an unknown option."""
    if not isinstance(rollout_rs, str):
        raise ValueError(f"rollout_rs={rollout_rs!r} must be a comma-separated string of "
                         f"{', '.join(ROLLOUT_RS_OPTIONS)}")
    options: list[str] = []
    for option in (part.strip() for part in rollout_rs.split(",")):
        if option and option not in ROLLOUT_RS_OPTIONS:
            raise ValueError(f"rollout_rs option {option!r} (in {rollout_rs!r}) is unknown; valid options: "
                             f"{', '.join(ROLLOUT_RS_OPTIONS)}")
        if option and option not in options:
            options.append(option)
    if not options:
        raise ValueError(f"rollout_rs={rollout_rs!r} names no option; valid options: {', '.join(ROLLOUT_RS_OPTIONS)}")
    return options


def parse_rollout_rs_thresholds(options: list[str], spec: str | float | None) -> dict[str, tuple[float | None, float]]:
    """rollout_rs_threshold -> {option: (lower, upper)}: one spec shared by every option or exactly one per option
    (comma-separated). k1 options take "l_u" or a single u (then l = 1/u); k2/k3 options one upper bound (lower
    None; a "_" is an error). ValueError for None, a wrong count, unparsable or non-positive bounds, or l > u."""
    if spec is None or isinstance(spec, bool) or not isinstance(spec, (int, float, str)):
        raise ValueError(f"rollout_rs_threshold={spec!r} is not valid: give a number or a comma-separated string with "
                         f"one bound per rollout_rs option ('l_u' or 'u' for *_k1, 'u' for *_k2/*_k3)")
    specs = [str(spec)] if not isinstance(spec, str) else [p.strip() for p in spec.split(",") if p.strip()]
    if len(specs) not in (1, len(options)):
        raise ValueError(f"rollout_rs_threshold={spec!r} has {len(specs)} values for {len(options)} rollout_rs options "
                         f"({', '.join(options)}); give one shared value or one per option")
    specs = specs * len(options) if len(specs) == 1 else specs
    thresholds: dict[str, tuple[float | None, float]] = {}
    for option, text in zip(options, specs):
        try:
            if option.endswith("k1"):
                lower_text, upper_text = text.split("_", 1) if "_" in text else (None, text)
                upper = float(upper_text)
                lower = float(lower_text) if lower_text is not None else float(str(1.0 / upper))
                ok = lower > 0 and upper > 0 and lower <= upper
            else:
                lower, upper = None, float(text)
                ok = "_" not in text and upper > 0
        except (ValueError, ZeroDivisionError):
            ok = False
        if not ok:
            raise ValueError(f"rollout_rs_threshold {text!r} for option {option!r} is not valid; *_k1 options take "
                             f"'l_u' (0 < l <= u) or 'u', *_k2/*_k3 options a single positive upper bound")
        thresholds[option] = (lower, upper)
    return thresholds


# ----------------------------------------------------------------------------------------------- IS weights
def compute_rollout_correction_weights(
    log_ratio: torch.Tensor,
    response_mask: torch.Tensor,
    rollout_is: str = "token",
    rollout_is_threshold: str | float = 2.0,
    rollout_is_batch_normalize: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """IS weights pi_train / pi_rollout, truncated (TIS) or masked (IcePop), without gradient.

        token:    raw = exp(clamp(log_ratio, +-20)) * M
        sequence: S_i = sum_t log_ratio M (unclamped), raw = exp(clamp(S_i, +-20)) on every position of row i, * M
        TIS (threshold u):      weights = min(raw, u)
        IcePop ("l_u"):         weights = raw inside [l, u], else 0   (+ metric rollout_is_oob_ratio)
        rollout_is_batch_normalize: weights /= mu (token: mmean(weights); sequence: mean over non-empty rows of
            each row's mmean) when mu > 1e-8, reported as rollout_is_batch_norm_factor (else 1.0).
    Metrics (rollout_is_*; see _is_metrics) are measured before the normalisation. ValueError for rollout_is not
    "token"/"sequence", a malformed threshold, or a mask without valid tokens.

    verl averages mu over all ranks when torch.distributed is initialised; here mu is over the tensors given (the
    driver computes it over the whole batch, where the two agree).
    """
    if rollout_is not in ("token", "sequence"):
        raise ValueError(f"rollout_is={rollout_is!r} is not valid; choose 'token' or 'sequence' (or null for no IS)")
    upper, lower = parse_rollout_is_threshold(rollout_is_threshold)
    with torch.no_grad():
        if rollout_is == "token":
            log_ratio_for_metrics = log_ratio
            raw = torch.exp(torch.clamp(log_ratio, -SAFETY_BOUND, SAFETY_BOUND))
        else:
            log_ratio_for_metrics = masked_sum(log_ratio, response_mask, axis=-1).unsqueeze(-1)
            raw = torch.exp(torch.clamp(log_ratio_for_metrics, -SAFETY_BOUND, SAFETY_BOUND)).expand_as(log_ratio)
        raw = raw * response_mask
        if lower is None:
            weights = raw.clamp(max=upper)
        else:
            weights = torch.where((raw >= lower) & (raw <= upper), raw, torch.zeros_like(raw))
        metrics = _is_metrics(weights, raw, log_ratio_for_metrics, response_mask, rollout_is, upper, lower)
        if lower is not None:
            metrics["rollout_is_oob_ratio"] = masked_mean(((raw < lower) | (raw > upper)).float(), response_mask).item()
        if rollout_is_batch_normalize:
            if rollout_is == "token":
                mean = masked_mean(weights, response_mask)
            else:
                seq_mask = (response_mask.sum(dim=-1) > 0).to(weights.dtype)
                mean = (masked_mean(weights, response_mask, axis=-1) * seq_mask).sum() / seq_mask.sum().clamp_min(1e-8)
            weights = weights / mean if mean > 1e-8 else weights
            metrics["rollout_is_batch_norm_factor"] = mean.item() if mean > 1e-8 else 1.0
    return weights.detach(), metrics


def _is_metrics(weights: torch.Tensor, raw: torch.Tensor, log_ratio_for_metrics: torch.Tensor,
                response_mask: torch.Tensor, rollout_is: str, upper: float, lower: float | None) -> dict[str, float]:
    """rollout_is_* metrics. lo = lower, or 1/upper for TIS.

    mean = mmean(weights). token: max/min over valid tokens of weights, ratio_fraction_high/low = mmean(raw > u) /
    mmean(raw < lo). sequence: max = exp(min(max_i S_i, 20)), min = exp(min_i S_i), fraction_high/low = share of
    all rows with S > log u / S < log lo. With c = clamp(weights, 0, u): std = sqrt(max(mmean(c^2) - mmean(c)^2, 0))
    (0 with < 2 valid tokens), eff_sample_size = 1 / mmean((c / (mmean(c) + 1e-8))^2). Over all rows of q_i =
    mmean(weights, M, -1): seq_mean/std (unbiased, 0 for one row)/max/min, seq_max_deviation = max |q - 1|; and of
    q_raw = mmean(raw, M, -1): seq_fraction_high/low = share of rows with q_raw > u / q_raw < lo.
    """
    if not response_mask.any():
        raise ValueError("rollout correction: response_mask has no valid token")
    lo = 1.0 / upper if lower is None else lower
    valid = response_mask.bool()
    m: dict[str, float] = {"rollout_is_mean": masked_mean(weights, response_mask).item()}
    if rollout_is == "sequence":
        m["rollout_is_max"] = torch.exp(torch.clamp(log_ratio_for_metrics.max(), max=SAFETY_BOUND)).item()
        m["rollout_is_min"] = torch.exp(log_ratio_for_metrics.min()).item()
        log_upper, log_lo = torch.log(torch.tensor(upper)), torch.log(torch.tensor(lo))  # float32, as verl compares
        m["rollout_is_ratio_fraction_high"] = (log_ratio_for_metrics > log_upper).float().mean().item()
        m["rollout_is_ratio_fraction_low"] = (log_ratio_for_metrics < log_lo).float().mean().item()
    else:
        m["rollout_is_max"] = weights.masked_fill(~valid, float("-inf")).max().item()
        m["rollout_is_min"] = weights.masked_fill(~valid, float("inf")).min().item()
        m["rollout_is_ratio_fraction_high"] = masked_mean((raw > upper).float(), response_mask).item()
        m["rollout_is_ratio_fraction_low"] = masked_mean((raw < lo).float(), response_mask).item()
    clamped = weights.clamp(min=0.0, max=upper)
    m["rollout_is_std"] = _clamped_std(clamped, response_mask)
    normalised = clamped / (masked_mean(clamped, response_mask) + 1e-8)
    m["rollout_is_eff_sample_size"] = 1.0 / masked_mean(normalised.square(), response_mask).item()
    seq_weights = masked_mean(weights, response_mask, axis=-1)
    m.update(_row_stats("rollout_is_seq", seq_weights, centre=1.0))
    raw_seq_weights = masked_mean(raw, response_mask, axis=-1)
    m["rollout_is_seq_fraction_high"] = (raw_seq_weights > upper).float().mean().item()
    m["rollout_is_seq_fraction_low"] = (raw_seq_weights < lo).float().mean().item()
    return m


def _clamped_std(clamped: torch.Tensor, response_mask: torch.Tensor) -> float:
    """sqrt(max(mmean(c^2) - mmean(c)^2, 0)) over the valid tokens; 0.0 with fewer than 2 of them."""
    if response_mask.sum() <= 1:
        return 0.0
    variance = masked_mean(clamped.square(), response_mask) - masked_mean(clamped, response_mask).square()
    return torch.sqrt(torch.clamp(variance, min=0.0)).item()


def _row_stats(prefix: str, values: torch.Tensor, centre: float) -> dict[str, float]:
    """{prefix}_mean/_std (unbiased, 0 for one row)/_max/_min/_max_deviation (= max |value - centre|) of (rows,)."""
    return {f"{prefix}_mean": values.mean().item(),
            f"{prefix}_std": values.std().item() if values.numel() > 1 else 0.0,
            f"{prefix}_max": values.max().item(), f"{prefix}_min": values.min().item(),
            f"{prefix}_max_deviation": (values - centre).abs().max().item()}


# --------------------------------------------------------------------------------------- rejection sampling
def compute_rollout_rejection_mask(
    log_ratio: torch.Tensor,
    response_mask: torch.Tensor,
    rollout_rs: str = "token_k1",
    rollout_rs_threshold: str | float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """A hard trust region: mask the tokens (token_*) or whole rows (seq_*) whose divergence estimate between the
    training and rollout policies is out of bounds. Every option listed in `rollout_rs` must keep a token.

    With x = clamp(log_ratio, +-20): k1 = -x, k2 = x^2 / 2, k3 = exp(x) - 1 - x per token. token_kN tests each
    token, seq_sum_kN / seq_mean_kN / seq_max_kN the row's sum / mmean / max (0 for an empty row) over valid
    tokens. k1 options keep values in [log l, log u] (k1 = -log(pi_train / pi_rollout), so "0.8_1.5" keeps
    pi_train / pi_rollout in [1/1.5, 1/0.8]); k2/k3 options keep values <= u.

    Returns (M * keep in M's dtype, metrics): per option o rollout_rs_{o}_masked_fraction (share of valid tokens o
    rejects), rollout_rs_{o}_seq_masked_fraction (share of non-empty rows with a token rejected by o) and the
    diagnostics of _rs_option_metrics; overall rollout_rs_masked_fraction (valid tokens rejected) and
    rollout_rs_seq_masked_fraction (share of all rows with a rejected token). A batch of 0 rows returns (M, {}).
    ValueError for a malformed rollout_rs / rollout_rs_threshold (see parse_*) or a mask with no valid token.
    """
    if not isinstance(rollout_rs, str):
        raise ValueError(f"rollout_rs={rollout_rs!r} must be a comma-separated string of "
                         f"{', '.join(ROLLOUT_RS_OPTIONS)}")
    if rollout_rs_threshold is None:
        raise ValueError("rollout_rs_threshold must be set when rollout_rs is (one bound per option)")
    if log_ratio.shape[0] == 0:
        return response_mask, {}
    options = parse_rollout_rs(rollout_rs)
    thresholds = parse_rollout_rs_thresholds(options, rollout_rs_threshold)
    x = torch.clamp(log_ratio, -SAFETY_BOUND, SAFETY_BOUND)
    estimators = {"k1": -x, "k2": 0.5 * x ** 2, "k3": torch.exp(x) - 1.0 - x}
    valid = response_mask.bool()
    non_empty = valid.any(dim=-1)
    combined = torch.ones_like(log_ratio)
    metrics: dict[str, float] = {}
    for option in options:
        lower, upper = thresholds[option]
        statistic, row_values, keep = _rs_statistic(option, estimators[option[-2:]], response_mask, lower, upper)
        keep_float = keep.to(log_ratio.dtype)
        combined = combined * keep_float
        metrics.update(_rs_option_metrics(option, statistic, row_values, response_mask, lower, upper))
        rejected_rows = (~keep & valid).any(dim=-1)
        metrics[f"rollout_rs_{option}_masked_fraction"] = masked_mean(1 - keep_float, response_mask).item()
        metrics[f"rollout_rs_{option}_seq_masked_fraction"] = (
            (rejected_rows & non_empty).float().sum() / non_empty.float().sum()).item() if non_empty.any() else 0.0
    metrics["rollout_rs_masked_fraction"] = masked_mean(1 - combined, response_mask).item()
    metrics["rollout_rs_seq_masked_fraction"] = (~(combined > 0.5) & valid).any(dim=-1).float().mean().item()
    return (response_mask * combined).to(response_mask.dtype), metrics


def _rs_statistic(option: str, per_token: torch.Tensor, response_mask: torch.Tensor, lower: float | None,
                  upper: float) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(statistic per position, per-row values for sequence options else None, keep (bool, per position))."""
    if option.startswith("token"):
        statistic, row_values = per_token, None
    else:
        if option.startswith("seq_sum"):
            row_values = masked_sum(per_token, response_mask, axis=-1)
        elif option.startswith("seq_mean"):
            row_values = masked_mean(per_token, response_mask, axis=-1)
        else:  # seq_max: the largest valid token value, 0 for an empty row
            row_max = per_token.masked_fill(~response_mask.bool(), float("-inf")).max(dim=-1).values
            row_values = torch.where(row_max == float("-inf"), torch.zeros_like(row_max), row_max)
        statistic = row_values.unsqueeze(-1).expand_as(per_token)
    if lower is not None:  # k1: bounds on the log scale
        keep = (statistic >= math.log(lower)) & (statistic <= math.log(upper))
    else:
        keep = statistic <= upper
    return statistic, row_values, keep


def _rs_option_metrics(option: str, statistic: torch.Tensor, row_values: torch.Tensor | None,
                       response_mask: torch.Tensor, lower: float | None, upper: float) -> dict[str, float]:
    """rollout_rs_{option}_* diagnostics of the statistic s, with U = log u (k1) or u, Lo = log l (k1) or 0, and sv
    the values of the non-empty rows (row_values, or each row's mmean of s for token options):
    _mean = mmean(s); _max/_min and _fraction_high (> U) / _fraction_low (< Lo, k1 only, else 0) over sv for
    sequence options, over the valid tokens of s for token options; _std as for IS with c = clamp(s, Lo, U);
    _seq_mean/_seq_std (unbiased)/_seq_max/_seq_min/_seq_max_deviation (max |sv|)/_seq_fraction_high and, for k1,
    _seq_fraction_low over sv."""
    if not response_mask.any():
        raise ValueError("rollout correction: response_mask has no valid token")
    prefix, is_k1, valid = f"rollout_rs_{option}", lower is not None, response_mask.bool()
    high, low = (math.log(upper), math.log(lower)) if is_k1 else (upper, 0.0)
    sequence_level = row_values is not None
    rows = row_values if sequence_level else masked_mean(statistic, response_mask, axis=-1)
    rows = rows[valid.any(dim=-1)]
    m = {f"{prefix}_mean": masked_mean(statistic, response_mask).item()}
    if sequence_level:
        m[f"{prefix}_max"], m[f"{prefix}_min"] = rows.max().item(), rows.min().item()
        m[f"{prefix}_fraction_high"] = (rows > high).float().mean().item()
        m[f"{prefix}_fraction_low"] = (rows < low).float().mean().item() if is_k1 else 0.0
    else:
        m[f"{prefix}_max"] = statistic.masked_fill(~valid, float("-inf")).max().item()
        m[f"{prefix}_min"] = statistic.masked_fill(~valid, float("inf")).min().item()
        m[f"{prefix}_fraction_high"] = masked_mean((statistic > high).float(), response_mask).item()
        m[f"{prefix}_fraction_low"] = masked_mean((statistic < low).float(), response_mask).item() if is_k1 else 0.0
    m[f"{prefix}_std"] = _clamped_std(statistic.clamp(min=low, max=high), response_mask)
    m.update(_row_stats(f"{prefix}_seq", rows, centre=0.0))
    m[f"{prefix}_seq_fraction_high"] = (rows > high).float().mean().item()
    if is_k1:
        m[f"{prefix}_seq_fraction_low"] = (rows < low).float().mean().item()
    return m


# -------------------------------------------------------------------------------------- off-policy metrics
def compute_offpolicy_metrics(old_log_prob: torch.Tensor, rollout_log_prob: torch.Tensor | None,
                              response_mask: torch.Tensor) -> dict[str, float]:
    """How far the rollout policy is from the training policy (verl's off-policy diagnostics).

    With mt_i = mmean(old, M, -1), mr_i = mmean(rollout, M, -1), delta = mr - mt, x = old - rollout, and means over
    all rows: training_ppl = mean exp(-mt), training_log_ppl = mean(-mt); and when rollout_log_prob is given:
    kl = mmean(rollout - old), k3_kl = mmean(exp(x) - x - 1) (unclamped), rollout_ppl = mean exp(-mr),
    rollout_log_ppl = mean(-mr), log_ppl_diff = mean delta, log_ppl_abs_diff = mean |delta|, log_ppl_diff_max/min,
    ppl_ratio = mean exp(delta), chi2_token = mmean(exp(clamp(x, +-20))^2) - 1,
    chi2_seq = mean_i exp(2 clamp(sum_t x M, +-20)) - 1. ValueError if M has no valid token.
    """
    if not response_mask.any():
        raise ValueError("rollout correction: response_mask has no valid token")
    with torch.no_grad():
        mean_train = masked_mean(old_log_prob, response_mask, axis=-1)
        m = {"training_ppl": torch.exp(-mean_train).mean().item(), "training_log_ppl": (-mean_train).mean().item()}
        if rollout_log_prob is None:
            return m
        log_ratio = old_log_prob - rollout_log_prob
        mean_rollout = masked_mean(rollout_log_prob, response_mask, axis=-1)
        log_ppl_diff = mean_rollout - mean_train
        safe = torch.clamp(log_ratio, -SAFETY_BOUND, SAFETY_BOUND)
        seq_sum = torch.clamp(masked_sum(log_ratio, response_mask, axis=-1), -SAFETY_BOUND, SAFETY_BOUND)
        m.update({
            "kl": masked_mean(rollout_log_prob - old_log_prob, response_mask).item(),
            "k3_kl": masked_mean(torch.exp(log_ratio) - log_ratio - 1, response_mask).item(),
            "rollout_ppl": torch.exp(-mean_rollout).mean().item(),
            "rollout_log_ppl": (-mean_rollout).mean().item(),
            "log_ppl_diff": log_ppl_diff.mean().item(),
            "log_ppl_abs_diff": log_ppl_diff.abs().mean().item(),
            "log_ppl_diff_max": log_ppl_diff.max().item(),
            "log_ppl_diff_min": log_ppl_diff.min().item(),
            "ppl_ratio": torch.exp(log_ppl_diff).mean().item(),
            "chi2_token": (masked_mean(torch.exp(safe).square(), response_mask) - 1.0).item(),
            "chi2_seq": (torch.exp(2.0 * seq_sum).mean() - 1.0).item(),
        })
    return m


def compute_rollout_correction_and_rejection_mask(
    old_log_prob: torch.Tensor,
    rollout_log_prob: torch.Tensor,
    response_mask: torch.Tensor,
    rollout_is: str | None = None,
    rollout_is_threshold: str | float | None = 2.0,
    rollout_is_batch_normalize: bool = False,
    rollout_rs: str | None = None,
    rollout_rs_threshold: str | float | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor, dict[str, float]]:
    """IS weights, rejection mask and off-policy metrics in one call (what the driver does once per batch, before
    the advantages: the batch's response_mask becomes the returned mask, the weights become rollout_is_weights).

        log_ratio = old_log_prob - rollout_log_prob
        weights = compute_rollout_correction_weights(...)   if rollout_is and rollout_is_threshold are set, else None
        mask    = compute_rollout_rejection_mask(...)       if rollout_rs is set, else a copy of response_mask
        metrics = those of both + compute_offpolicy_metrics on the original mask, every key prefixed "rollout_corr/"
    ValueError if M has no valid token, the three shapes differ, or rollout_rs is set without its threshold.
    verl wraps the weights in a DataProto; here they are a plain (bs, response_length) tensor.
    """
    if not response_mask.any():
        raise ValueError("rollout correction: response_mask has no valid token")
    if not old_log_prob.shape == rollout_log_prob.shape == response_mask.shape:
        raise ValueError(f"rollout correction: old_log_prob {tuple(old_log_prob.shape)}, rollout_log_prob "
                         f"{tuple(rollout_log_prob.shape)} and response_mask {tuple(response_mask.shape)} differ "
                         "in shape")
    log_ratio = old_log_prob - rollout_log_prob
    metrics: dict[str, float] = {}
    weights = None
    if rollout_is is not None and rollout_is_threshold is not None:
        weights, is_metrics = compute_rollout_correction_weights(
            log_ratio, response_mask, rollout_is, rollout_is_threshold, rollout_is_batch_normalize)
        metrics.update(is_metrics)
    mask = response_mask.clone()
    if rollout_rs is not None:
        if rollout_rs_threshold is None:
            raise ValueError("rollout_rs_threshold must be set when rollout_rs is (one bound per option)")
        mask, rs_metrics = compute_rollout_rejection_mask(log_ratio, response_mask, rollout_rs, rollout_rs_threshold)
        metrics.update(rs_metrics)
    metrics.update(compute_offpolicy_metrics(old_log_prob, rollout_log_prob, response_mask))
    return weights, mask, {f"rollout_corr/{k}": float(v) for k, v in metrics.items()}
