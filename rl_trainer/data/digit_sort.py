"""digit-sort: the task that shows the whole RLHF pipeline (SFT -> reward model -> RL) on a CPU.

Each prompt is a row of 2 to 6 distinct digits; the answer is the same digits in ascending order, so responses are
several tokens long and their length varies with the prompt (sequence-level effects, such as stopping at the right
place, matter):

    prompt "3142"  ->  chat template "3142="  ->  answer "1234" + EOS
    prompt "907"   ->  "907="                 ->  answer "079" + EOS

The rule checker (rl_trainer.rewards.digit_sort) is exact match; in the pipeline it only evaluates and labels the
preference pairs (synthetic human feedback), it never rewards training. Prompts are drawn once from a fixed seed:
the test split holds `TEST_PROMPTS` prompts that no other split contains; train holds the rest.

Files it writes (`write_pipeline_data`):

    sft_train.parquet / sft_val.parquet    demonstrations, `messages` = [user prompt, assistant answer]
    rl_train.parquet / rl_test.parquet     RL prompts in verl's schema (data_source, prompt, ability,
                                           reward_model.ground_truth, extra_info)

and `preference_pairs` turns a model's own samples into (prompt, chosen, rejected) rows labelled by the checker.
The matching model and tokenizer are the built-in `builtin:tiny-sort` (rl_trainer/models/builtin.py: one token per
character, `=` closes the prompt, a pad token apart from EOS so a reward model scores the EOS position).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import datasets
import numpy as np

from rl_trainer.data.parquet import write_parquet_splits
from rl_trainer.rewards.digit_sort import compute_score

DATA_SOURCE = "rl_trainer/digit_sort"
MIN_DIGITS, MAX_DIGITS = 2, 6
TEST_PROMPTS = 200
SPLITS = ("sft_train", "sft_val", "rl_train", "rl_test")


def answer(prompt: str) -> str:
    return "".join(sorted(prompt))


def draw_prompts(count: int, seed: int) -> list[str]:
    """`count` distinct prompts of MIN_DIGITS..MAX_DIGITS distinct digits (lengths uniform), in a fixed order for
    `seed`. Distinct digits: with repeats allowed, most wrong answers drop or repeat a duplicate, which the pipeline's
    models learn slowly (docs/rlhf.md: the reward model stayed under 85 % pairwise accuracy and RL had no room)."""
    rng = np.random.default_rng(seed)
    seen: dict[str, None] = {}
    while len(seen) < count:
        length = int(rng.integers(MIN_DIGITS, MAX_DIGITS + 1))
        seen.setdefault("".join(str(d) for d in rng.choice(10, length, replace=False)), None)
    return list(seen)


def prompt_splits(train: int = 2000, seed: int = 0) -> dict[str, list[str]]:
    """{"train": ..., "test": ...}: disjoint prompt sets (test first, so it does not depend on `train`)."""
    prompts = draw_prompts(TEST_PROMPTS + train, seed)
    return {"test": prompts[:TEST_PROMPTS], "train": prompts[TEST_PROMPTS:]}


def rl_row(prompt: str, split: str, index: int) -> dict[str, Any]:
    return {"data_source": DATA_SOURCE, "prompt": [{"role": "user", "content": prompt}], "ability": "sorting",
            "reward_model": {"style": "rule", "ground_truth": answer(prompt)},
            "extra_info": {"split": split, "index": index}}


def sft_row(prompt: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer(prompt)}]}


def pipeline_tables(sft_examples: int, sft_val: int = 100, seed: int = 0) -> dict[str, datasets.Dataset]:
    """The four splits: SFT demonstrations on the first `sft_examples` train prompts (+ `sft_val` more for the
    validation loss), RL prompts on every train prompt, and the held-out test prompts."""
    prompts = prompt_splits(seed=seed)
    train, test = prompts["train"], prompts["test"]
    if sft_examples + sft_val > len(train):
        raise ValueError(f"{sft_examples} + {sft_val} SFT examples, but only {len(train)} train prompts")
    rows = {
        "sft_train": [sft_row(p) for p in train[:sft_examples]],
        "sft_val": [sft_row(p) for p in train[sft_examples:sft_examples + sft_val]],
        "rl_train": [rl_row(p, "train", i) for i, p in enumerate(train)],
        "rl_test": [rl_row(p, "test", i) for i, p in enumerate(test)],
    }
    return {split: datasets.Dataset.from_list(r) for split, r in rows.items()}


def write_pipeline_data(out_dir: str | os.PathLike, sft_examples: int = 400, seed: int = 0) -> dict[str, Path]:
    """Write the four parquet files into `out_dir` (crash-safe); returns {split: path}."""
    return write_parquet_splits(out_dir, SPLITS, lambda: pipeline_tables(sft_examples, seed=seed))


def preference_pairs(prompts: Sequence[str], samples: Sequence[Sequence[str]], max_pairs_per_prompt: int = 2,
                     seed: int = 0) -> list[dict[str, Any]]:
    """Preference rows from a model's own samples, labelled by the rule checker: for each prompt, pairs of one
    correct sample (chosen) and one wrong sample (rejected), distinct texts, at most `max_pairs_per_prompt`; prompts
    whose samples are all right or all wrong give none (there is nothing to prefer).

    Rows: {"prompt": [{"role": "user", "content": p}], "chosen": str, "rejected": str} (rl_trainer.rm's
    data.prompt_key / chosen_key / rejected_key defaults)."""
    rng = np.random.default_rng(seed)
    rows = []
    for prompt, texts in zip(prompts, samples):
        truth = answer(prompt)
        right = sorted({t for t in texts if compute_score(t, truth) == 1.0})
        wrong = sorted({t for t in texts if compute_score(t, truth) == 0.0})
        if not right or not wrong:
            continue
        for _ in range(min(max_pairs_per_prompt, len(right) * len(wrong))):
            rows.append({"prompt": [{"role": "user", "content": prompt}], "chosen": right[rng.integers(len(right))],
                         "rejected": wrong[rng.integers(len(wrong))]})
    return rows


def accuracy(prompts: Sequence[str], responses: Sequence[str]) -> float:
    """Share of `responses` the rule checker accepts."""
    return sum(compute_score(r, answer(p)) for p, r in zip(prompts, responses)) / max(len(prompts), 1)


def sample_responses(model_dir: str | os.PathLike, prompts: Sequence[str], n: int, temperature: float,
                     seed: int = 0, batch: int = 256,
                     progress: Callable[[int], None] | None = None) -> list[list[str]]:
    """`n` responses per prompt from the Hugging Face model in `model_dir` (greedy when temperature is 0), decoded
    without special tokens; responses stop at EOS or after MAX_DIGITS + 2 tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    texts = tokenizer.apply_chat_template([[{"role": "user", "content": p}] for p in prompts],
                                          add_generation_prompt=True, tokenize=False)
    out: list[list[str]] = [[] for _ in prompts]
    torch.manual_seed(seed)
    rows = [i for i in range(len(prompts)) for _ in range(n)]
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        enc = tokenizer([texts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=MAX_DIGITS + 2, do_sample=temperature > 0,
                                 temperature=temperature if temperature > 0 else None, top_k=0 if temperature > 0
                                 else None, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        for i, row in zip(chunk, ids[:, enc["input_ids"].shape[1]:]):
            out[i].append(tokenizer.decode(row, skip_special_tokens=True))
        if progress is not None:
            progress(len(chunk))
    return out
