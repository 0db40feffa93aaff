"""digit-shift: a small task a random-init model learns with RL alone, in verl's parquet schema.

GSM8K cannot show learning without pretrained weights (a random model scores 0 and stays there), so the
project ships a task that does. Each prompt is a row of `SLOTS` characters holding two digits among dots; the
answer is the first digit plus `SHIFT`, modulo 10. The second digit is a distractor:

    prompt "3..7"   ->  chat template "3..7="   ->  answer "6"          (3 + 3)
    prompt ".81."   ->  ".81.="                 ->  answer "1"          (8 + 3 = 11 -> 1)

To solve it a policy must find the first digit wherever it sits, ignore the second, and learn the
digit -> digit map; it starts from a model that has never seen the task (chance: 1 in 13 tokens).
There are 10 x 10 digit pairs x 6 layouts (which two of the 4 slots hold the digits) = 600 prompts. The
test split holds each digit pair exactly once, in a layout picked by a fixed rule; the train split holds
the other 500 prompts, so validation asks for layouts of each pair that training never showed. By
construction no trivial policy passes 10 % on the test split (`tests/data/test_digit_shift.py` checks it):

    - every answer 0..9 is the answer of exactly 10 of the 100 pairs   -> any constant answer scores 10 %;
    - copying the first digit is never right; copying the second is right when b = a + 3 (mod 10): 10 %;
    - copying the token at a fixed position is right at most as often (`trivial_policy_accuracies`).

Why not the sum of both digits: (a + b) mod 10 is a 100-entry interaction to discover from a 0/1 reward;
with this model, greedy validation accuracy went from 10 % to only 13 % in 600 GRPO steps (3 minutes).

Rows:

    data_source   "rl_trainer/digit_shift"   (its exact-match scorer: rl_trainer.rewards.digit_shift)
    prompt        [{"role": "user", "content": "3..7"}]
    ability       "arithmetic"
    reward_model  {"style": "rule", "ground_truth": "6"}
    extra_info    {"split", "index", "a", "b", "layout"}

The matching model and tokenizer (one token per character, `=` as the generation prompt) are the built-in
`builtin:tiny-digits` (rl_trainer/models/builtin.py); `builtin:digit_shift/{train,test}` name these files.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import datasets

from rl_trainer.data.parquet import write_parquet_splits

DATA_SOURCE = "rl_trainer/digit_shift"
SPLITS = ("train", "test")
SLOTS = 4
FILLER = "."
LAYOUTS = tuple(itertools.combinations(range(SLOTS), 2))  # which two slots hold the digits: 6 layouts
PAIRS = tuple(itertools.product(range(10), repeat=2))


SHIFT = 3


def answer(a: int, b: int) -> int:
    return (a + SHIFT) % 10


def render(a: int, b: int, layout: tuple[int, int]) -> str:
    """"3..7" for a=3, b=7, layout (0, 3): `a` in the first digit slot, `b` in the second."""
    chars = [FILLER] * SLOTS
    chars[layout[0]], chars[layout[1]] = str(a), str(b)
    return "".join(chars)


def held_out_layout(a: int, b: int) -> tuple[int, int]:
    """The one layout in which pair (a, b) appears in the test split (cycles through all 6 layouts)."""
    return LAYOUTS[(3 * a + b) % len(LAYOUTS)]


def make_rows(split: str) -> list[dict[str, Any]]:
    """All rows of `split` ("train": 500, "test": 100), in a fixed order (the trainer shuffles)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    rows = []
    for a, b in PAIRS:
        for layout in LAYOUTS:
            if (layout == held_out_layout(a, b)) != (split == "test"):
                continue
            rows.append({
                "data_source": DATA_SOURCE,
                "prompt": [{"role": "user", "content": render(a, b, layout)}],
                "ability": "arithmetic",
                "reward_model": {"style": "rule", "ground_truth": str(answer(a, b))},
                "extra_info": {"split": split, "index": len(rows), "a": a, "b": b, "layout": list(layout)},
            })
    return rows


def trivial_policy_accuracies(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Accuracy of every constant answer and every copy-a-prompt-token policy on `rows` (the baselines)."""
    prompts = [row["prompt"][0]["content"] for row in rows]
    truths = [row["reward_model"]["ground_truth"] for row in rows]

    def accuracy(guesses: list[str]) -> float:
        return sum(g == t for g, t in zip(guesses, truths)) / len(rows)

    out = {f"constant {d}": accuracy([str(d)] * len(rows)) for d in range(10)}
    for position in range(SLOTS):
        out[f"copy position {position}"] = accuracy([p[position] for p in prompts])
    digits = [[c for c in p if c != FILLER] for p in prompts]
    out["copy first digit"] = accuracy([d[0] for d in digits])
    out["copy second digit"] = accuracy([d[1] for d in digits])
    return out


def write_digit_shift_parquet(out_dir: str | os.PathLike, overwrite: bool = True) -> dict[str, Path]:
    """Write `train.parquet` (500 rows) and `test.parquet` (100 rows) into `out_dir`; return {split: path}.

    Crash-safe, and with overwrite=False existing files are kept (rl_trainer.data.parquet.write_parquet_splits).
    """
    return write_parquet_splits(
        out_dir, SPLITS, lambda: {split: datasets.Dataset.from_list(make_rows(split)) for split in SPLITS}, overwrite
    )
