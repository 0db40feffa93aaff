"""verl's data, timing and throughput metrics on a hand-built 3-row batch, and their reduction."""

import math
from types import SimpleNamespace

import pytest
import torch

from rl_trainer import metrics as metrics_module
from rl_trainer.batch import Batch
from rl_trainer.metrics import (
    compute_data_metrics,
    compute_throughput_metrics,
    compute_timing_metrics,
    reduce_metrics,
    timed,
)

X = 99.0  # padding: must never show up in a metric


def _batch() -> Batch:
    """P = 3 prompt columns (left-padded), R = 4 response columns (right-padded), 3 rows:

    row 0: prompt 2 tokens, response 4 tokens (fills R: clipped)
    row 1: prompt 3 tokens (fills P: clipped), response 2 tokens
    row 2: prompt 1 token,  response 0 tokens (aborted)
    """
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 0, 1]])
    response_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
    advantages = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, X, X], [X, X, X, X]])
    returns = advantages + 10.0  # valid returns 11..16
    # values = returns - d with d = +1, -1, +1, -1, +1, -1 on the six valid tokens.
    values = returns - torch.tensor([[1.0, -1.0, 1.0, -1.0], [1.0, -1.0, X, X], [X, X, X, X]])
    return Batch(
        {
            "prompts": torch.tensor([[0, 5, 6], [7, 8, 9], [0, 0, 5]]),
            "responses": torch.tensor([[1, 2, 3, 4], [1, 2, 0, 0], [0, 0, 0, 0]]),
            "attention_mask": torch.cat([prompt_mask, response_mask], dim=1),
            "response_mask": response_mask,
            # The aborted row's score (7.0) must be left out of critic/score and critic/rewards.
            "token_level_scores": torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.5, 0.0, 0.0], [7.0, 0.0, 0.0, 0.0]]),
            "token_level_rewards": torch.tensor([[-0.1, -0.1, -0.1, 0.9], [-0.1, 0.4, 0, 0], [7.0, 0, 0, 0]]),
            "advantages": advantages,
            "returns": returns,
            "values": values,
        }
    )


def test_data_metrics_match_hand_computation():
    m = compute_data_metrics(_batch(), use_critic=True)
    expected = {
        # Sequence scores of the non-aborted rows: 1.0 and 0.5.
        "critic/score/mean": 0.75, "critic/score/max": 1.0, "critic/score/min": 0.5,
        # Sequence rewards: -0.3 + 0.9 = 0.6 and -0.1 + 0.4 = 0.3.
        "critic/rewards/mean": 0.45, "critic/rewards/max": 0.6, "critic/rewards/min": 0.3,
        # Valid advantages 1..6, returns 11..16, values 10, 13, 12, 15, 14, 17.
        "critic/advantages/mean": 3.5, "critic/advantages/max": 6.0, "critic/advantages/min": 1.0,
        "critic/returns/mean": 13.5, "critic/returns/max": 16.0, "critic/returns/min": 11.0,
        "critic/values/mean": 13.5, "critic/values/max": 17.0, "critic/values/min": 10.0,
        # Var(returns - values) = Var(d) = 6 / 5 = 1.2 (unbiased); Var(returns) = 17.5 / 5 = 3.5.
        "critic/vf_explained_var": 1.0 - 1.2 / (3.5 + 1e-5),
        # Response lengths 4, 2, 0; only row 0 fills R = 4; row 2 is aborted.
        "response_length/mean": 2.0, "response_length/max": 4.0, "response_length/min": 0.0,
        "response_length/clip_ratio": 1 / 3,
        "response_length_non_aborted/mean": 3.0, "response_length_non_aborted/max": 4.0,
        "response_length_non_aborted/min": 2.0, "response_length_non_aborted/clip_ratio": 0.5,
        "response/aborted_ratio": 1 / 3,
        # Prompt lengths 2, 3, 1; only row 1 fills P = 3.
        "prompt_length/mean": 2.0, "prompt_length/max": 3.0, "prompt_length/min": 1.0,
        "prompt_length/clip_ratio": 1 / 3,
    }  # fmt: skip
    assert m.keys() == expected.keys()
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, rel=1e-6), key
        assert isinstance(m[key], float), key


def test_without_critic_there_are_no_value_metrics():
    batch = _batch()
    del batch.tensors["values"]
    m = compute_data_metrics(batch, use_critic=False)
    assert not [key for key in m if key.startswith("critic/values") or key == "critic/vf_explained_var"]


def test_all_aborted_batch_gives_nan_not_an_error():
    batch = _batch().index([2])
    m = compute_data_metrics(batch, use_critic=True)
    for key in ("critic/score/mean", "critic/advantages/max", "critic/values/min", "critic/vf_explained_var"):
        assert math.isnan(m[key]), key
    assert m["response/aborted_ratio"] == 1.0
    assert m["response_length/mean"] == 0.0


def test_timing_metrics_per_stage_and_per_token():
    timing_s = {"gen": 0.6, "ref": 1.2, "step": 3.0}
    assert compute_timing_metrics(timing_s) == {"timing_s/gen": 0.6, "timing_s/ref": 1.2, "timing_s/step": 3.0}
    m = compute_timing_metrics(timing_s, _batch())
    # 6 response tokens, 6 prompt tokens: gen 600 ms / 6 = 100 ms; ref 1200 ms / 12 = 100 ms; no per-token "step".
    assert m["timing_per_token_ms/gen"] == pytest.approx(100.0)
    assert m["timing_per_token_ms/ref"] == pytest.approx(100.0)
    assert "timing_per_token_ms/step" not in m


def test_throughput_is_tokens_per_second_per_worker():
    m = compute_throughput_metrics(_batch(), {"step": 3.0, "gen": 1.0}, n_workers=2)
    # attention_mask holds 6 + 6 = 12 real tokens; 12 / 3 s / 2 workers = 2 tokens/s/worker.
    assert m == {"perf/total_num_tokens": 12, "perf/time_per_step": 3.0, "perf/throughput": 2.0}


def test_reduce_metrics_mean_except_max_and_min():
    reduced = reduce_metrics(
        {
            "actor/pg_loss": [1.0, 2.0, 6.0],
            "response_length/max": [4.0, 9.0],
            "actor/grad_norm_min": [3.0, 1.0],
            "actor/maxed_out": [1.0, 0.0],  # "max" inside a word: still a mean
            "actor/entropy": [torch.tensor(0.5), torch.tensor(1.5)],
            "empty": [],
        }
    )
    assert reduced["actor/pg_loss"] == 3.0
    assert reduced["response_length/max"] == 9.0
    assert reduced["actor/grad_norm_min"] == 1.0
    assert reduced["actor/maxed_out"] == 0.5
    assert reduced["actor/entropy"] == 1.0
    assert math.isnan(reduced["empty"])


def test_timed_accumulates_and_records_on_error(monkeypatch):
    clock = iter([0.0, 1.5, 10.0, 10.25, 20.0, 21.0])
    monkeypatch.setattr(metrics_module, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    timing_s = {}
    with timed("gen", timing_s):
        pass
    with timed("gen", timing_s):
        pass
    assert timing_s == {"gen": 1.75}
    with pytest.raises(RuntimeError):
        with timed("update_actor", timing_s):
            raise RuntimeError("boom")
    assert timing_s["update_actor"] == 1.0


def test_rollout_probs_diff_is_verls_max_mean_std_and_combines_over_parts():
    from rl_trainer.metrics import probs_diff_metrics, probs_diff_sums

    g = torch.Generator().manual_seed(0)
    actor, rollout = -torch.rand(6, 5, generator=g) * 3, -torch.rand(6, 5, generator=g) * 3
    mask = (torch.arange(5) < torch.tensor([5, 3, 1, 0, 4, 2])[:, None]).long()
    # verl (ray_trainer.py): masked_select of |exp(rollout) - exp(actor)|, then torch.max / mean / std (Bessel).
    diff = torch.masked_select((rollout.exp() - actor.exp()).abs(), mask.bool()).double()
    expected = {"training/rollout_probs_diff_max": diff.max().item(),
                "training/rollout_probs_diff_mean": diff.mean().item(),
                "training/rollout_probs_diff_std": diff.std().item()}
    whole = probs_diff_metrics(probs_diff_sums(actor, rollout, mask))
    assert whole == pytest.approx(expected, rel=1e-6)  # ours in float64, verl's in the inputs' float32
    # Parts (micro-batches, ranks) combine: sums add, maxima take the max.
    parts = torch.stack([probs_diff_sums(actor[i:i + 2], rollout[i:i + 2], mask[i:i + 2]) for i in (0, 2, 4)])
    combined = torch.cat([parts[:, :-1].sum(0), parts[:, -1].max().reshape(1)])
    assert probs_diff_metrics(combined) == pytest.approx(expected, rel=1e-6)
    # A part with no valid token (row 3 alone) contributes nothing, and on its own is NaN, not an error.
    empty = probs_diff_metrics(probs_diff_sums(actor[3:4], rollout[3:4], mask[3:4]))
    assert all(v != v for v in empty.values())
