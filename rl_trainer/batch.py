"""The one container that crosses process boundaries: named tensors + per-row non-tensor columns + meta.

Every arrow of the single-controller data flow (driver <-> worker groups) carries a `Batch`. All tensors
and columns share the first dimension (rows = sequences). Keys used by the trainer:

    tensors                                                     shape
      prompts            left-padded prompt token ids            (bs, max_prompt_length)
      responses          right-padded response token ids         (bs, max_response_length)
      input_ids          prompts ++ responses                    (bs, P + R)
      attention_mask     1 on real tokens of input_ids           (bs, P + R)
      position_ids       cumsum(attention_mask) - 1, clipped at 0 (bs, P + R)
      response_mask      1 on generated tokens (up to EOS)       (bs, R)
      rollout_log_probs  log-probs from the rollout engine       (bs, R)   (vLLM when sampling; HF with
                                                                           rollout.calculate_log_probs)
      old_log_probs      actor log-probs before the update       (bs, R)
      entropys           per-token entropy of the actor's policy (bs, R)   (with old_log_probs)
      ref_log_prob       reference-model log-probs               (bs, R)
      values             critic values                           (bs, R)
      rm_scores          reward-model score (last token)         (bs, R)   (reward_model.enable)
      token_level_scores reward-function scores (last token)     (bs, R)   (rm_scores with reward_model.enable)
      token_level_rewards scores minus KL penalty, if any        (bs, R)
      advantages, returns                                        (bs, R)
    non_tensors (numpy object arrays of length bs)
      uid            one id per prompt, shared by its rollout.n responses (the group of GRPO/RLOO/...)
      data_source, ground_truth, extra_info, index   from the parquet row (verl's schema)
      raw_prompt     the row's chat messages, as in the parquet
      finish_reason  "stop" (EOS) or "length" (rollout.response_length), per response (vLLM rollout)
    meta: dict of plain values (e.g. {"temperature": 1.0, "validate": False})

A tensor-dict library (tensordict) would do this too; this stays a ~100-line class because every Ray
worker and the driver import it, and tensordict's import costs ~5 s per process on our machines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch


def _object_column(values: Sequence[Any]) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    column[:] = list(values)
    return column


@dataclass
class Batch:
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    non_tensors: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.non_tensors = {k: v if isinstance(v, np.ndarray) else _object_column(v) for k, v in self.non_tensors.items()}
        sizes = {k: len(v) for k, v in (*self.tensors.items(), *self.non_tensors.items())}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"Batch columns disagree on the number of rows: {sizes}")

    def __len__(self) -> int:
        for column in (*self.tensors.values(), *self.non_tensors.values()):
            return len(column)
        return 0

    def __contains__(self, key: str) -> bool:
        return key in self.tensors or key in self.non_tensors

    def __getitem__(self, key: str) -> torch.Tensor | np.ndarray:
        if key in self.tensors:
            return self.tensors[key]
        if key in self.non_tensors:
            return self.non_tensors[key]
        raise KeyError(f"{key!r} is not in the batch (has {sorted(self.tensors) + sorted(self.non_tensors)})")

    def __setitem__(self, key: str, value: torch.Tensor | np.ndarray | Sequence[Any]) -> None:
        if len(self) and len(value) != len(self):
            raise ValueError(f"column {key!r} has {len(value)} rows, the batch has {len(self)}")
        if isinstance(value, torch.Tensor):
            self.tensors[key] = value
        else:
            self.non_tensors[key] = value if isinstance(value, np.ndarray) else _object_column(value)

    def select(self, *keys: str) -> Batch:
        """A batch with only `keys` (tensors or non-tensors), sharing storage; meta is kept."""
        missing = [k for k in keys if k not in self]
        if missing:
            raise KeyError(f"{missing} not in the batch")
        return Batch(
            {k: v for k, v in self.tensors.items() if k in keys},
            {k: v for k, v in self.non_tensors.items() if k in keys},
            dict(self.meta),
        )

    def index(self, rows: torch.Tensor | np.ndarray | Sequence[int] | slice) -> Batch:
        """The rows `rows` (a slice, or integer indices) of every column."""
        if isinstance(rows, slice):
            return Batch(
                {k: v[rows] for k, v in self.tensors.items()}, {k: v[rows] for k, v in self.non_tensors.items()}, dict(self.meta)
            )
        rows_np = np.asarray(rows.cpu() if isinstance(rows, torch.Tensor) else rows, dtype=np.int64)
        rows_t = torch.from_numpy(rows_np)
        return Batch(
            {k: v[rows_t.to(v.device)] for k, v in self.tensors.items()},
            {k: v[rows_np] for k, v in self.non_tensors.items()},
            dict(self.meta),
        )

    def chunk(self, n: int) -> list[Batch]:
        """Split into `n` equal consecutive parts (one per data-parallel rank)."""
        if len(self) % n:
            raise ValueError(f"cannot split a batch of {len(self)} rows into {n} equal parts")
        size = len(self) // n
        return [self.index(slice(i * size, (i + 1) * size)) for i in range(n)]

    def split(self, size: int) -> list[Batch]:
        """Consecutive parts of `size` rows (the last may be shorter)."""
        return [self.index(slice(i, i + size)) for i in range(0, len(self), size)]

    @staticmethod
    def concat(batches: Iterable[Batch]) -> Batch:
        """Rows of `batches` one after the other; meta from the first."""
        batches = list(batches)
        if not batches:
            raise ValueError("Batch.concat needs at least one batch")
        first = batches[0]
        return Batch(
            {k: torch.cat([b.tensors[k] for b in batches]) for k in first.tensors},
            {k: np.concatenate([b.non_tensors[k] for b in batches]) for k in first.non_tensors},
            dict(first.meta),
        )

    def repeat(self, n: int, interleave: bool = True) -> Batch:
        """Each row `n` times: [a, a, b, b] with interleave (rollout.n samples per prompt), else [a, b, a, b]."""
        if interleave:
            return Batch(
                {k: v.repeat_interleave(n, dim=0) for k, v in self.tensors.items()},
                {k: np.repeat(v, n, axis=0) for k, v in self.non_tensors.items()},
                dict(self.meta),
            )
        return Batch(
            {k: v.repeat(n, *([1] * (v.dim() - 1))) for k, v in self.tensors.items()},
            {k: np.tile(v, n) for k, v in self.non_tensors.items()},
            dict(self.meta),
        )

    def update(self, other: Batch) -> Batch:
        """Add (or overwrite) `other`'s columns and meta in place; returns self."""
        if len(self) and len(other) and len(other) != len(self):
            raise ValueError(f"cannot merge a batch of {len(other)} rows into one of {len(self)}")
        self.tensors.update(other.tensors)
        self.non_tensors.update(other.non_tensors)
        self.meta.update(other.meta)
        return self

    def to(self, device: torch.device | str) -> Batch:
        return Batch({k: v.to(device) for k, v in self.tensors.items()}, dict(self.non_tensors), dict(self.meta))
