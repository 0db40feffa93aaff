"""RL prompts from verl-schema parquet files, and a loader whose position survives a checkpoint.

`RLHFDataset` follows verl's RLHFDataset (same `data.*` keys, same semantics): each row's `prompt`
(a list of chat messages) goes through the tokenizer's chat template with the generation prompt, is
tokenized without special tokens, and is left-padded to `max_prompt_length`. Prompts longer than that
are dropped (`data.filter_overlong_prompts`) or cut (`data.truncation`: left keeps the end, right keeps
the start, middle keeps both ends, error refuses). Everything is tokenized once, up front, in batches.

`PromptLoader` yields `Batch`es of prompts. Epoch e visits the rows in a permutation drawn from
`np.random.default_rng([seed, e])`, so any epoch's order is known without replaying the ones before
it; that is what makes `state_dict()` / `load_state_dict()` resume exactly.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow.parquet as pq
import torch

from rl_trainer.batch import Batch
from rl_trainer.data import TRUNCATION_MODES
from rl_trainer.errors import UserError

NON_TENSOR_KEYS = ("data_source", "ground_truth", "extra_info", "index", "raw_prompt")


class RLHFDataset:
    """Tokenized RL prompts; item i is a dict of (max_prompt_length,) tensors plus the row's non-tensors.

    files: one parquet path or a list (concatenated in order; `~` expanded).
    prompt_key: the column holding the chat messages (`data.prompt_key`).
    max_prompt_length: the padded prompt length (`data.max_prompt_length`).
    filter_overlong_prompts: drop rows whose templated prompt is longer than max_prompt_length
        (`data.filter_overlong_prompts`).
    truncation: what to do with a kept overlong prompt: "error", "left", "right", "middle" (`data.truncation`).
    max_samples: keep only this many rows (before filtering), -1 for all
        (`data.train_max_samples` / `data.val_max_samples`).
    shuffle, seed: as verl, max_samples takes the first rows, or with shuffle=True a random subset drawn with
        `np.random.default_rng(seed)` (`data.shuffle`, `data.seed`; seed None draws an unseeded subset).

    Items: input_ids, attention_mask, position_ids (left-padded, int64); data_source; ground_truth
    (reward_model["ground_truth"]); extra_info (dict, {} when absent); index (extra_info["index"] if
    present, else the row's position in the concatenated files); raw_prompt (the messages).
    """

    def __init__(
        self,
        files: str | os.PathLike | Sequence[str | os.PathLike],
        tokenizer: Any,
        prompt_key: str = "prompt",
        max_prompt_length: int = 512,
        filter_overlong_prompts: bool = True,
        truncation: str = "error",
        max_samples: int = -1,
        shuffle: bool = False,
        seed: int | None = 0,
    ):
        if truncation not in TRUNCATION_MODES:
            raise UserError(f"data.truncation={truncation!r} is not one of {', '.join(TRUNCATION_MODES)}")
        if max_prompt_length < 1:
            raise UserError(f"data.max_prompt_length={max_prompt_length} must be a positive number of tokens")
        self.pad_token_id = _pad_token_id(tokenizer)
        self.tokenizer = tokenizer
        self.prompt_key = prompt_key
        self.max_prompt_length = max_prompt_length
        self.truncation = truncation

        files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
        if not files:
            raise UserError("no data files given; set data.train_files / data.val_files to parquet files")
        paths = [os.path.expanduser(os.fspath(f)) for f in files]
        table, origins = _load_and_validate(paths, prompt_key)
        where = paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} more)"

        num_rows = len(origins)
        rows = _sample_rows(num_rows, max_samples, shuffle, seed)
        messages = table[prompt_key]
        messages = [messages[i] for i in rows] if len(rows) < num_rows else messages

        texts = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        token_ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        lengths = np.array([len(ids) for ids in token_ids])

        keep = _kept_prompts(lengths, max_prompt_length, filter_overlong_prompts, truncation, where,
                             lambda i: origins[rows[i]])
        self.rows = rows[keep]  # positions in the concatenated files
        self.prompt_ids = [_truncate(token_ids[i], max_prompt_length, truncation) for i in keep]
        self.raw_prompts = [messages[i] for i in keep]
        self.data_sources = [table["data_source"][r] for r in self.rows]
        self.ground_truths = [table["reward_model"][r]["ground_truth"] for r in self.rows]
        infos = table.get("extra_info", [None] * len(table["data_source"]))
        self.extra_infos = [{} if infos[r] is None else infos[r] for r in self.rows]
        self.indices = [_row_index(info, int(r)) for info, r in zip(self.extra_infos, self.rows)]
        self.num_filtered = len(lengths) - len(keep)

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids = self.prompt_ids[i]
        pad = self.max_prompt_length - len(ids)
        input_ids = torch.tensor([self.pad_token_id] * pad + ids, dtype=torch.long)
        attention_mask = torch.cat([torch.zeros(pad, dtype=torch.long), torch.ones(len(ids), dtype=torch.long)])
        position_ids = (attention_mask.cumsum(0) - 1).clamp(min=0)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "data_source": self.data_sources[i],
            "ground_truth": self.ground_truths[i],
            # copies: a consumer that edits a batch's dicts must not change the dataset for later epochs
            "extra_info": copy.deepcopy(self.extra_infos[i]),
            "index": self.indices[i],
            "raw_prompt": copy.deepcopy(self.raw_prompts[i]),
        }


def collate(items: Sequence[dict[str, Any]]) -> Batch:
    """Dataset items -> a Batch with tensors prompts/attention_mask/position_ids (bs, P) and the non-tensors."""
    tensors = {
        "prompts": torch.stack([item["input_ids"] for item in items]),
        "attention_mask": torch.stack([item["attention_mask"] for item in items]),
        "position_ids": torch.stack([item["position_ids"] for item in items]),
    }
    non_tensors = {}
    for key in NON_TENSOR_KEYS:
        column = np.empty(len(items), dtype=object)
        for row, item in enumerate(items):  # element-wise: numpy would turn equal-length lists into a 2-D array
            column[row] = item[key]
        non_tensors[key] = column
    return Batch(tensors, non_tensors)


class PromptLoader:
    """Batches of `batch_size` prompts, epoch after epoch, resumable mid-epoch.

    `for batch in loader` yields the rest of the current epoch (all of it on a fresh loader) and then
    stops, so `for epoch in ...: for batch in loader:` reads like a DataLoader loop. The position moves
    as batches are handed out: `state_dict()` taken after the k-th batch of an epoch resumes at batch
    k + 1; after an epoch's last batch it already points at the next epoch. Epoch e's order is
    `np.random.default_rng([seed, e]).permutation(len(dataset))` (or 0..n-1 without shuffle).
    drop_last=True (training, as verl) drops the incomplete last batch; validation uses drop_last=False.
    """

    def __init__(
        self, dataset: RLHFDataset, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = True
    ):
        if batch_size < 1:
            raise UserError(f"batch size {batch_size} must be at least 1 (data.train_batch_size / data.val_batch_size)")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise UserError(f"data.seed={seed!r} must be a non-negative integer (it fixes the order of the prompts)")
        if drop_last and len(dataset) < batch_size:
            raise UserError(
                f"the batch size {batch_size} exceeds the {len(dataset)} prompts of the dataset (after filtering), "
                f"so an epoch has no full batch; lower data.train_batch_size or use more data"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0
        self.batches_done_in_epoch = 0

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Row order of `epoch`, independent of every other epoch."""
        if not self.shuffle:
            return np.arange(len(self.dataset))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))

    def __iter__(self) -> Iterator[Batch]:
        order = self.epoch_order(self.epoch)
        while self.batches_done_in_epoch < len(self):
            start = self.batches_done_in_epoch * self.batch_size
            batch = collate([self.dataset[int(i)] for i in order[start : start + self.batch_size]])
            self.batches_done_in_epoch += 1
            if self.batches_done_in_epoch == len(self):
                self.epoch, self.batches_done_in_epoch = self.epoch + 1, 0
                yield batch
                return
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done_in_epoch": self.batches_done_in_epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue where `state` left off; its seed replaces this loader's so the order is the saved run's."""
        if not 0 <= state["batches_done_in_epoch"] < len(self):
            raise UserError(
                f"the checkpoint's data loader stopped at batch {state['batches_done_in_epoch']} of epoch "
                f"{state['epoch']}, but an epoch now has {len(self)} batches; the data files, filtering or batch "
                f"size changed since the checkpoint: restore them or start a new run"
            )
        self.epoch = int(state["epoch"])
        self.batches_done_in_epoch = int(state["batches_done_in_epoch"])
        self.seed = int(state["seed"])


def _load_and_validate(paths: list[str], prompt_key: str) -> tuple[dict[str, list], list[tuple[str, int]]]:
    """Read every file, check the columns and rows once, return {column: values} and each row's (file, row)."""
    columns: dict[str, list] = {}
    origins: list[tuple[str, int]] = []
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f"data file {path} does not exist; check data.train_files / data.val_files")
        try:
            num_rows = pq.read_metadata(path).num_rows  # cheap, and datasets cannot load a 0-row parquet at all
            part = datasets.load_dataset("parquet", data_files=path, split="train") if num_rows else None
        except Exception as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(
                f"cannot read {path} as parquet ({reason[:200]}); point data.*_files at a verl-schema parquet file"
            ) from e
        if part is None:
            raise UserError(f"{path} has no rows; point data.*_files at a non-empty parquet file")
        present = part.column_names
        if prompt_key not in present:
            raise UserError(
                f"{path} has no prompt column {prompt_key!r} (columns: {', '.join(present)}); "
                f"set data.prompt_key to the column with the chat messages"
            )
        for column in ("reward_model", "data_source"):
            if column not in present:
                raise UserError(
                    f"{path} has no {column!r} column (columns: {', '.join(present)}); write it in verl's schema "
                    f"(see rl_trainer/data/gsm8k.py)"
                )
        wanted = [c for c in (prompt_key, "reward_model", "data_source", "extra_info") if c in present]
        data = part.select_columns(wanted).to_dict()
        for row, (messages, reward) in enumerate(zip(data[prompt_key], data["reward_model"])):
            if not _is_chat(messages):
                raise UserError(
                    f"{path} row {row}: column {prompt_key!r} holds {_short(messages)}, not a list of "
                    f"{{'role', 'content'}} messages; fix the data or data.prompt_key"
                )
            if not (isinstance(reward, dict) and reward.get("ground_truth") is not None):
                raise UserError(
                    f"{path} row {row}: reward_model is {_short(reward)}; it must be a dict with a 'ground_truth' "
                    f"(e.g. {{'style': 'rule', 'ground_truth': '42'}})"
                )
        if columns and set(columns) != set(wanted):
            raise UserError(
                f"{path} has columns {wanted}, the files before it {list(columns)}; "
                f"give every data file the same columns"
            )
        for column in wanted:
            columns.setdefault(column, []).extend(data[column])
        origins.extend((path, row) for row in range(len(part)))
    return columns, origins


def _is_chat(messages: Any) -> bool:
    return (
        isinstance(messages, list)
        and len(messages) > 0
        and all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)
    )


def _row_index(extra_info: Any, row: int) -> Any:
    index = extra_info.get("index") if isinstance(extra_info, dict) else None
    return row if index is None else index



def _pad_token_id(tokenizer: Any) -> int:
    """The id prompts are left-padded with (pad, else EOS); the tokenizer must have a chat template."""
    if getattr(tokenizer, "chat_template", None) is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise UserError(
            f"tokenizer {name} has no chat template; use a chat/instruct model or set tokenizer.chat_template"
        )
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_token_id is None:
        raise UserError(
            f"tokenizer {tokenizer.name_or_path} has neither a pad nor an EOS token; set tokenizer.pad_token"
        )
    return pad_token_id


def _sample_rows(num_rows: int, max_samples: int, shuffle: bool, seed: int | None) -> np.ndarray:
    """The rows kept by max_samples: all, the first ones, or (shuffle) a subset drawn with default_rng(seed)."""
    rows = np.arange(num_rows)
    if 0 < max_samples < num_rows:
        if shuffle:
            return np.random.default_rng(seed).choice(num_rows, size=max_samples, replace=False)
        return rows[:max_samples]
    return rows


def _kept_prompts(lengths: np.ndarray, max_prompt_length: int, filter_overlong: bool, truncation: str, where: str,
                  origin) -> np.ndarray:
    """Positions of the prompts kept: those within max_prompt_length (filter_overlong), else all; an overlong
    prompt with truncation=error is a UserError naming its file and row (`origin(i)` -> (file, row))."""
    if filter_overlong:
        keep = np.flatnonzero(lengths <= max_prompt_length)
        if len(keep) == 0:
            raise UserError(
                f"all {len(lengths)} prompts of {where} are longer than data.max_prompt_length={max_prompt_length} "
                f"tokens (shortest {lengths.min()}, longest {lengths.max()}); raise data.max_prompt_length"
            )
        return keep
    overlong = np.flatnonzero(lengths > max_prompt_length)
    if truncation == "error" and len(overlong):
        first = overlong[0]
        file, row = origin(first)
        raise UserError(
            f"{file} row {row}: prompt is {lengths[first]} tokens > data.max_prompt_length={max_prompt_length} "
            f"with data.truncation=error; raise data.max_prompt_length, set data.filter_overlong_prompts=True, "
            f"or set data.truncation to left/right/middle"
        )
    return np.arange(len(lengths))

def _truncate(ids: list[int], max_length: int, truncation: str) -> list[int]:
    if len(ids) <= max_length:
        return ids
    if truncation == "left":  # keep the end
        return ids[-max_length:]
    if truncation == "right":  # keep the start
        return ids[:max_length]
    left = max_length // 2  # middle: keep both ends, as verl
    return ids[:left] + ids[len(ids) - (max_length - left) :]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
