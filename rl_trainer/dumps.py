"""Generation dumps for debugging: every response of a step, with its score, reward and advantage, as JSONL.

    trainer.rollout_data_dir=DIR       DIR/<global step>.jsonl for each training step (1, 2, ...)
    trainer.validation_data_dir=DIR    DIR/<global step>.jsonl for each validation (0 = before training)

verl's keys and file names. Directories are created on first write. Each file is written atomically (temporary
sibling, then a rename), so a killed run never leaves a half-written one; a resumed run overwrites the files of the
steps it redoes. One JSON object per line, one line per response, in batch order (the n responses of a prompt are
consecutive):

    step             the global step
    uid              group id: the n responses of one prompt share it (the group of GRPO, RLOO, ...)
    index            the prompt's row in its dataset (extra_info.index when the data has it)
    data_source      picks the rule scorer
    ground_truth     reward_model.ground_truth
    prompt           the prompt's tokens, decoded without special tokens (so the chat template's markers vanish)
    response         the response's valid tokens, decoded without special tokens: the text the scorer saw
    response_length  number of valid response tokens (EOS counts when it was generated)
    score            what the reward function gave: token_level_scores summed over the response
    reward           token_level_rewards summed: the score minus the KL penalty when algorithm.use_kl_in_reward,
                     else equal to score                                                          (training only)
    advantage        the mean of the response's advantages over its valid tokens                 (training only)
                     Outcome estimators (grpo, rloo, ...) give every token of a response the same advantage, so
                     this is that advantage. With gae it varies by token and this is its mean over the response.
                     null for a response with no valid tokens.
    group_mean       mean of `reward` (`score` in validation) over the responses sharing the uid -- the numbers
    group_std        the group estimators compare, so for GRPO advantage = (reward - group_mean) / (group_std + 1e-6).
                     std is Bessel-corrected (torch.std, as GRPO). A group of one response: group_mean is its own
                     value and group_std is null (undefined); GRPO then uses mean 0 and std 1 instead.
    <key>            every extra key a dict-returning reward function gave (written as extra_<key> when <key> is
                     one of the names above)

verl writes `input`/`output`/`gts` for prompt/response/ground_truth and none of uid, advantage, group statistics.
Numbers that are not finite are written as `NaN` / `Infinity`, as in metrics.jsonl.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rl_trainer.algos.grouping import group_rows
from rl_trainer.atomic import atomic_write
from rl_trainer.batch import Batch
from rl_trainer.errors import UserError

DUMP_KEYS = ("trainer.rollout_data_dir", "trainer.validation_data_dir")


def _dir(value: Any) -> Path:
    return Path(str(value)).expanduser()


def check_dump_dir(value: Any, key: str) -> None:
    """UserError unless the dump directory `value` (None or "" = off) exists or can be created; creates nothing."""
    if value is None or value == "":
        return
    path = _dir(value).absolute()
    existing = path
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{key}={value} cannot be created: {existing} is not a directory; choose another directory "
                        f"or set {key}=null")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{key}={value} cannot be created: {existing} is not writable; choose a writable directory "
                        f"or set {key}=null")


def generation_records(batch: Batch, tokenizer: Any, step: int,
                       reward_extra_info: Mapping[str, Sequence[Any]] | None = None) -> list[dict[str, Any]]:
    """One record per row of `batch` (see the module docstring). `batch` needs prompts, responses, attention_mask,
    response_mask, token_level_scores, and the columns uid, index, data_source, ground_truth; reward and advantage
    are added when it has token_level_rewards and advantages."""
    response_mask = batch["response_mask"]
    prompt_mask = batch["attention_mask"][:, : batch["prompts"].shape[1]].bool()
    lengths = response_mask.sum(-1)
    length_list = [int(n) for n in lengths.tolist()]
    prompts = tokenizer.batch_decode([ids[m].tolist() for ids, m in zip(batch["prompts"], prompt_mask)],
                                     skip_special_tokens=True)
    responses = tokenizer.batch_decode([ids[:n].tolist() for ids, n in zip(batch["responses"], length_list)],
                                       skip_special_tokens=True)
    # Plain sums, as the trainer's score metrics: a row with no valid token keeps its score on the last column.
    columns: dict[str, list] = {"score": batch["token_level_scores"].sum(-1).tolist()}
    if "token_level_rewards" in batch:
        columns["reward"] = batch["token_level_rewards"].sum(-1).tolist()
    if "advantages" in batch:
        advantage = (batch["advantages"] * response_mask).sum(-1) / lengths.clamp(min=1)
        columns["advantage"] = [a if n > 0 else None for a, n in zip(advantage.tolist(), length_list)]
    group_mean, group_std = _group_stats(columns.get("reward", columns["score"]), batch["uid"])

    records = []
    for row in range(len(batch)):
        record = {
            "step": step, "uid": batch["uid"][row], "index": batch["index"][row],
            "data_source": batch["data_source"][row], "ground_truth": batch["ground_truth"][row],
            "prompt": prompts[row], "response": responses[row], "response_length": length_list[row],
            **{name: values[row] for name, values in columns.items()},
            "group_mean": group_mean[row], "group_std": group_std[row],
        }
        for key, values in (reward_extra_info or {}).items():
            record[f"extra_{key}" if key in record else key] = values[row]
        records.append(record)
    return records


def _group_stats(values: list[float], uids: Sequence[Any]) -> tuple[list[float], list[float | None]]:
    """Per row: mean and Bessel-corrected std of `values` over the rows with the same uid (std None for one row)."""
    mean: list[float] = [0.0] * len(values)
    std: list[float | None] = [None] * len(values)
    for rows in group_rows(uids).values():
        group = torch.tensor([values[r] for r in rows], dtype=torch.float64)
        group_mean, group_std = group.mean().item(), group.std().item() if len(rows) > 1 else None
        for r in rows:
            mean[r], std[r] = group_mean, group_std
    return mean, std


def write_step_jsonl(directory: Any, step: int, records: Sequence[Mapping[str, Any]], *, key: str) -> Path:
    """Write `records` to `directory/<step>.jsonl` atomically, creating the directory; `key` names the setting in
    errors. Returns the file's path."""
    path = _dir(directory) / f"{step}.jsonl"
    text = "".join(json.dumps(record, ensure_ascii=False, default=_to_json) + "\n" for record in records)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"{key}={directory}: cannot write {path} ({exc.strerror or exc}); choose a writable "
                        f"directory with free space, or set {key}=null") from exc
    return path


def _to_json(value: Any) -> Any:
    """numpy and torch values (ground truths, extra reward infos) as plain JSON; anything else as its str()."""
    if isinstance(value, (np.ndarray, np.generic, torch.Tensor)):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)
