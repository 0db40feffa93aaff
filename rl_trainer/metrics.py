"""Per-step metrics under verl's names (`verl/trainer/ppo/metric_utils.py`, 0.9.1), computed from a `Batch`.

Groups by prefix: `critic/...` (scores, rewards, advantages, returns, values), `response_length/...`,
`prompt_length/...`, `timing_s/...`, `timing_per_token_ms/...`, `perf/...`. Lengths are counted from
`attention_mask` (prompt part = the first P columns, response part = the last R), as verl does.
"""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch

from rl_trainer.batch import Batch

NAN = float("nan")


def _stats(name: str, values: torch.Tensor) -> dict[str, float]:
    """`name/mean`, `name/max`, `name/min` of a 1-D tensor; NaN when it is empty (verl logs NaN too)."""
    if values.numel() == 0:
        return {f"{name}/mean": NAN, f"{name}/max": NAN, f"{name}/min": NAN}
    values = values.detach().float()
    return {
        f"{name}/mean": values.mean().item(),
        f"{name}/max": values.max().item(),
        f"{name}/min": values.min().item(),
    }


def _prompt_and_response_lengths(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row prompt and response token counts, (bs,) floats, from `attention_mask` split at `-R`."""
    response_width = batch["responses"].shape[-1]
    attention_mask = batch["attention_mask"]
    return attention_mask[:, :-response_width].sum(-1).float(), attention_mask[:, -response_width:].sum(-1).float()


def compute_data_metrics(batch: Batch, use_critic: bool) -> dict[str, float]:
    """verl's data metrics of one training batch.

    Needs `token_level_scores`, `token_level_rewards`, `advantages`, `returns`, `response_mask` (bs, R),
    `prompts` (bs, P), `responses` (bs, R), `attention_mask` (bs, P + R); `values` (bs, R) when `use_critic`.

    - `critic/score/*`, `critic/rewards/*`: over sequences, of the per-sequence sums of the token-level
      scores / rewards, leaving out aborted rows (response length 0);
    - `critic/advantages/*`, `critic/returns/*`, `critic/values/*`: over the valid response tokens;
    - `critic/vf_explained_var` = 1 - Var(returns - values) / (Var(returns) + 1e-5), unbiased variances over the
      valid tokens;
    - `response_length/*`: over all rows; `clip_ratio` is the fraction of rows whose response fills all R
      columns (it hit `data.max_response_length`); `response_length_non_aborted/*` the same without aborted rows,
      `response/aborted_ratio` their fraction;
    - `prompt_length/*`: same for prompts, `clip_ratio` = fraction with P real tokens (possibly truncated).
    """
    max_prompt_length = batch["prompts"].shape[-1]
    max_response_length = batch["responses"].shape[-1]
    response_mask = batch["response_mask"].bool()
    prompt_length, response_length = _prompt_and_response_lengths(batch)
    non_aborted = response_length > 0

    valid_returns = torch.masked_select(batch["returns"], response_mask)
    metrics = {
        **_stats("critic/score", batch["token_level_scores"].sum(-1)[non_aborted]),
        **_stats("critic/rewards", batch["token_level_rewards"].sum(-1)[non_aborted]),
        **_stats("critic/advantages", torch.masked_select(batch["advantages"], response_mask)),
        **_stats("critic/returns", valid_returns),
    }
    if use_critic:
        valid_values = torch.masked_select(batch["values"], response_mask)
        metrics.update(_stats("critic/values", valid_values))
        if valid_returns.numel() > 0:
            explained = 1.0 - torch.var(valid_returns - valid_values) / (torch.var(valid_returns) + 1e-5)
            metrics["critic/vf_explained_var"] = explained.item()
        else:
            metrics["critic/vf_explained_var"] = NAN

    metrics.update(_stats("response_length", response_length))
    metrics["response_length/clip_ratio"] = (response_length == max_response_length).float().mean().item()
    metrics.update(_stats("response_length_non_aborted", response_length[non_aborted]))
    metrics["response_length_non_aborted/clip_ratio"] = (
        (response_length[non_aborted] == max_response_length).float().mean().item() if non_aborted.any() else NAN
    )
    metrics["response/aborted_ratio"] = (~non_aborted).float().mean().item()
    metrics.update(_stats("prompt_length", prompt_length))
    metrics["prompt_length/clip_ratio"] = (prompt_length == max_prompt_length).float().mean().item()
    return metrics


# Which token count each timed stage is divided by for `timing_per_token_ms/<stage>` (verl's table): generation
# produces only response tokens; the other stages run over prompt + response.
_PER_TOKEN_STAGES = {
    "gen": "response",
    **{stage: "all" for stage in ("ref", "values", "adv", "update_critic", "update_actor")},
}


def compute_timing_metrics(timing_s: Mapping[str, float], batch: Batch | None = None) -> dict[str, float]:
    """`timing_s/<stage>` for every timed stage; with `batch`, also verl's `timing_per_token_ms/<stage>` for the
    stages `gen` (per response token) and `ref`, `values`, `adv`, `update_critic`, `update_actor` (per prompt +
    response token). Time the driver's stages under these names to get them."""
    metrics = {f"timing_s/{name}": float(seconds) for name, seconds in timing_s.items()}
    if batch is not None:
        prompt_length, response_length = _prompt_and_response_lengths(batch)
        num_response_tokens = response_length.sum().item()
        tokens = {"response": num_response_tokens, "all": prompt_length.sum().item() + num_response_tokens}
        for name, counted in _PER_TOKEN_STAGES.items():
            if name in timing_s:
                n = tokens[counted]
                metrics[f"timing_per_token_ms/{name}"] = timing_s[name] * 1000 / n if n > 0 else 0.0
    return metrics


def compute_throughput_metrics(batch: Batch, timing_s: Mapping[str, float], n_workers: int) -> dict[str, float]:
    """`perf/total_num_tokens` (real prompt + response tokens: the sum of `attention_mask`), `perf/time_per_step`
    (`timing_s["step"]`), `perf/throughput` = tokens / step time / `n_workers` (tokens per second per GPU in verl;
    per worker process here). verl spells the function `compute_throughout_metrics`."""
    total_num_tokens = int(batch["attention_mask"].sum().item())
    step_time = float(timing_s["step"])
    return {
        "perf/total_num_tokens": total_num_tokens,
        "perf/time_per_step": step_time,
        "perf/throughput": total_num_tokens / (step_time * n_workers) if step_time > 0 else NAN,
    }


def seqlen_balance_metrics(lengths: Sequence[int], parts: Sequence[Sequence[int]],
                           prefix: str = "global_seqlen") -> dict[str, float]:
    """verl's `log_seqlen_unbalance`: tokens (prompt + response) per data-parallel rank, with k = len(parts) ranks.

    `<prefix>/min`, `/max`, `/minmax_diff`: over the k consecutive equal chunks of `lengths` in their given order
    (what each rank would get unbalanced); `/balanced_min`, `/balanced_max`: over `parts` (row indices per rank);
    `/mean`: total tokens / k. E.g. lengths [5, 1, 4, 2], parts [[0, 1], [2, 3]] (any 2 parts):
    chunks 6, 6 -> min 6, max 6, diff 0; parts 6, 6; mean 12 / 2 = 6."""
    lengths = [int(v) for v in lengths]
    size = len(lengths) // len(parts)
    chunks = [sum(lengths[i:i + size]) for i in range(0, len(lengths), size)]
    balanced = [sum(lengths[i] for i in part) for part in parts]
    return {f"{prefix}/min": min(chunks), f"{prefix}/max": max(chunks), f"{prefix}/minmax_diff": max(chunks) - min(chunks),
            f"{prefix}/balanced_min": min(balanced), f"{prefix}/balanced_max": max(balanced),
            f"{prefix}/mean": sum(chunks) / len(parts)}


def probs_diff_sums(actor_log_probs: torch.Tensor, rollout_log_probs: torch.Tensor,
                    response_mask: torch.Tensor) -> torch.Tensor:
    """Sufficient statistics of d = |exp(actor_log_probs) - exp(rollout_log_probs)| over the valid response tokens:
    float64 [count, sum d, sum d^2, max d] (max is -inf when there are none). Sums of several parts combine by
    adding the first three and taking the max of the last (so ranks can all-reduce them)."""
    diff = (actor_log_probs.double().exp() - rollout_log_probs.double().exp()).abs()
    diff = torch.masked_select(diff, response_mask.bool())
    top = diff.max() if diff.numel() else torch.tensor(float("-inf"), dtype=torch.float64)
    return torch.stack([torch.tensor(float(diff.numel()), dtype=torch.float64), diff.sum(), (diff * diff).sum(), top])


def probs_diff_metrics(sums: torch.Tensor) -> dict[str, float]:
    """verl's rollout-vs-actor check (`training/rollout_probs_diff_{max,mean,std}`) from `probs_diff_sums`:
    the max, the mean and the unbiased (Bessel) standard deviation of the per-token probability gap, as verl's
    torch.max / torch.mean / torch.std over the masked-select of the gaps. NaN where undefined (too few tokens)."""
    count, total, squares, top = (float(v) for v in sums)
    mean = total / count if count else NAN
    var = (squares - total * total / count) / (count - 1) if count > 1 else NAN
    return {"training/rollout_probs_diff_max": top if count else NAN, "training/rollout_probs_diff_mean": mean,
            "training/rollout_probs_diff_std": max(var, 0.0) ** 0.5 if count > 1 else NAN}


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB, macOS in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def reduce_metrics(metrics: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """One number per metric from the values collected over micro-batches, workers or epochs: the mean, except
    names whose last part is `max` or `min` (`.../max`, `..._max`), which take the max / min. (verl picks max/min
    when "max"/"min" appears anywhere in the name; the last part is the same for its names and safer.)"""
    reduced = {}
    for name, values in metrics.items():
        values = [v.item() if hasattr(v, "item") else v for v in values]
        last = name.rsplit("/", 1)[-1]
        if not values:
            reduced[name] = NAN
        elif last == "max" or last.endswith("_max"):
            reduced[name] = float(np.max(values))
        elif last == "min" or last.endswith("_min"):
            reduced[name] = float(np.min(values))
        else:
            reduced[name] = float(np.mean(values))
    return reduced


@contextmanager
def timed(name: str, timing_s: dict[str, float]) -> Iterator[None]:
    """Add the seconds the block takes to `timing_s[name]` (accumulates, as verl's `marked_timer` does)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timing_s[name] = timing_s.get(name, 0.0) + (time.perf_counter() - start)
