"""Balanced partitions of rows by sequence length: token-budget micro-batches (verl's `use_dynamic_bsz`) and the
driver's data-parallel balancing (`trainer.balance_batch`), both by the Karmarkar-Karp largest differencing method
as verl 0.9.1 does them (`verl/utils/seqlen_balancing.py`).

A row's length is its prompt + response valid tokens (the sum of its `attention_mask`, verl's count). The
partitions balance each row's *workload*, verl's estimate of a dense transformer's cost,
24576 * length + length ** 2, and a token budget bounds each micro-batch's summed *length*.

Pure Python/numpy: the one collective a data-parallel worker needs (every rank must run the same number of
micro-batches, or FSDP's all-gathers would wait forever) comes in as a function, `agree_max`.
"""

from __future__ import annotations

import heapq
import math
from typing import Callable, Sequence

import numpy as np

from rl_trainer.errors import UserError


def workload(lengths: np.ndarray | Sequence[int]) -> np.ndarray:
    """verl's `calculate_workload`: FLOPs of a 7B dense block (hidden 4096) up to a constant factor,
    12 h^2 s + 2 h s^2 proportional to 24576 s + s^2, for each sequence length s (int64)."""
    s = np.asarray(lengths, dtype=np.int64)
    return 24576 * s + s * s


def karmarkar_karp(values: Sequence[int], k: int, equal_size: bool) -> list[list[int]]:
    """Indices of `values` in `k` parts of similar sums (the largest differencing method,
    https://en.wikipedia.org/wiki/Largest_differencing_method), each part's indices sorted.

    Every state is k parts, largest sum first; the two states with the largest spread (max - min part sum) are
    merged, the largest part of one with the smallest of the other, until one state is left. `equal_size` starts
    from states of k values each (consecutive in sorted order), so every part gets len(values) / k of them;
    otherwise from one value per state. Ties break as in verl 0.9.1 (parts by (sum, size, items), states by
    spread then largest part), so the parts are the same as verl's for the same values.
    """
    n = len(values)
    if k < 1 or n < k:
        raise ValueError(f"cannot split {n} items into {k} non-empty parts")
    if equal_size and n % k:
        raise ValueError(f"cannot split {n} items into {k} parts of equal size")
    ordered = sorted((int(v), i) for i, v in enumerate(values))
    width = k if equal_size else 1
    heap = []
    for start in range(0, n, width):
        parts = [(v, 1, [(i, v)]) for v, i in ordered[start:start + width]] + [(0, 0, [])] * (k - width)
        heap.append(_state(parts))
    heapq.heapify(heap)
    while len(heap) > 1:
        first, second = heapq.heappop(heap)[-1], heapq.heappop(heap)[-1]
        merged = [(a[0] + b[0], a[1] + b[1], a[2] + b[2]) for a, b in zip(first, reversed(second))]
        heapq.heappush(heap, _state(merged))
    parts = [sorted(i for i, _ in items) for _, _, items in heap[0][-1]]
    if any(not p for p in parts):
        raise RuntimeError(f"Karmarkar-Karp left a part empty ({n} items, {k} parts)")
    return parts


def _state(parts: list[tuple[int, int, list]]) -> tuple:
    """A heap entry for a state: parts sorted by (sum, size, items) descending; popped first is the largest spread,
    then the largest top part (verl's State.__lt__). Parts compare by value, so the key is (-spread, -top part)."""
    parts = sorted(parts, key=lambda p: (p[0], p[1], p[2]), reverse=True)
    top = parts[0]
    return (-(top[0] - parts[-1][0]), -top[0], -top[1], _Reversed(top[2]), parts)


class _Reversed:
    """Orders a list of (index, value) items in reverse, for the last tie-break of the heap key."""

    __slots__ = ("items",)

    def __init__(self, items: list) -> None:
        self.items = items

    def __lt__(self, other: _Reversed) -> bool:
        return self.items > other.items

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.items == other.items


def token_budget_micro_batches(lengths: Sequence[int], max_token_len: int, key: str,
                               agree_max: Callable[[int], int] = lambda value: value) -> list[list[int]]:
    """Micro-batches of row indices whose summed `lengths` stay within `max_token_len` (verl's
    `rearrange_micro_batches` with use_dynamic_bsz_balance, same_micro_num_in_dp).

    Their number starts at ceil(sum / budget) (never more than the rows) and grows by one until the
    workload-balanced partition (karmarkar_karp) keeps every part within the budget. `agree_max` returns the maximum of
    an int over the data-parallel ranks (identity on one rank): all ranks then
    use the same number, the largest any of them needs. The micro-batches are ordered as verl orders them, the
    heaviest in the middle and the lightest at both ends. `key` names the budget's config key for the error a row
    longer than the budget raises. Concatenating the micro-batches' rows gives a permutation of the rows;
    `inverse_permutation` of it restores their order.
    """
    lengths = [int(v) for v in lengths]
    longest = agree_max(max(lengths))
    if longest > max_token_len:
        raise UserError(f"{key}={max_token_len} is smaller than a sequence of {longest} tokens (prompt + response); "
                        f"raise {key} to at least {longest}")
    loads = workload(lengths).tolist()
    count = min(len(lengths), math.ceil(sum(lengths) / max_token_len))
    while True:
        count = agree_max(count)
        parts = karmarkar_karp(loads, count, equal_size=False)
        over = int(any(sum(lengths[i] for i in p) > max_token_len for p in parts))
        if not agree_max(over):
            break
        count += 1
    parts.sort(key=lambda p: (sum(loads[i] for i in p), p[0]), reverse=True)
    return parts[::2][::-1] + parts[1::2]


def inverse_permutation(order: Sequence[int]) -> np.ndarray:
    """`inverse[order[j]] = j`: rows taken in `order` and indexed by `inverse` come back in their original order."""
    order = np.asarray(order, dtype=np.int64)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return inverse


def balanced_rank_order(lengths: Sequence[int], world_size: int,
                        groups: Sequence | None = None) -> tuple[np.ndarray, list[list[int]]]:
    """verl's `_balance_batch`: a row order whose `world_size` consecutive equal chunks (one per data-parallel
    rank) have similar workloads, and the chunks (the parts, as lists of original row indices).

    Rows: equal-size Karmarkar-Karp parts of the rows' workloads; inside each part the rows are sorted by workload
    and laid out lightest at both ends (rows 0, 2, 4, ... then ..., 5, 3, 1 of the sorted part), as verl does.
    With `groups` (a group id per row, e.g. uid): verl's prefix-grouper balancing (`get_group_balanced_partitions`),
    equal-size parts of whole groups by their summed workloads, each part's rows in their original order, so
    the rows that share a prompt stay together on one rank and side by side. The number of groups must be a
    multiple of `world_size` and the groups of equal size (ValueError otherwise).
    """
    loads = workload(lengths).tolist()
    if groups is None:
        parts = karmarkar_karp(loads, world_size, equal_size=True)
        parts = [sorted(p, key=lambda i: (loads[i], i)) for p in parts]
        parts = [p[::2] + p[1::2][::-1] for p in parts]
    else:
        members: dict = {}
        for row, group in enumerate(groups):
            members.setdefault(group, []).append(row)
        rows = list(members.values())
        if len(rows) % world_size or len({len(r) for r in rows}) > 1:
            raise ValueError(f"{len(rows)} groups of sizes {sorted({len(r) for r in rows})} cannot be split into "
                             f"{world_size} parts of equal size")
        group_parts = karmarkar_karp([sum(loads[i] for i in r) for r in rows], world_size, equal_size=True)
        parts = [sorted(i for g in part for i in rows[g]) for part in group_parts]
    return np.asarray([i for p in parts for i in p], dtype=np.int64), parts
