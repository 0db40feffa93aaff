"""Supervised examples from parquet: SFT demonstrations and preference pairs, tokenized once, up front.

SFT rows come in the two spellings verl users have:

    multi-turn (verl 0.9.1 sft_trainer_engine, `data.messages_key`): a column of chat messages; every assistant
        turn is trained, everything else (system/user turns, the generation prompt) is context. The conversation
        goes through the chat template one turn at a time: turn i's text is template(messages[:i+1]) minus
        template(messages[:i]) (an assistant turn: minus template(messages[:i], add_generation_prompt=True), whose
        extra text is the untrained generation prompt), each piece tokenized on its own and concatenated, as verl's
        MultiTurnSFTDataset tokenizes turn by turn. A template that is not prefix-consistent is refused.
    single-turn (the older fsdp_sft_trainer, `data.prompt_key` + `data.response_key`, optionally
        `+data.prompt_dict_keys=[...]` / `+data.response_dict_keys=[...]` to reach into dict columns such as
        verl's `extra_info`): the prompt (a string, or a list of messages) through the chat template with the
        generation prompt, then the response + the tokenizer's EOS token, which is what is trained (verl's
        SFTDataset).

An `SFTExample` is (input_ids, target_mask): target_mask[t] = 1 when token t is trained, i.e. predicted from
tokens < t (verl's loss_mask before its shift by one). Sequences longer than `data.max_length` are refused or
cut (`data.truncation`: error, left keeps the end, right keeps the start).

Preference rows (`data.prompt_key`, `data.chosen_key`, `data.rejected_key`, optional `data.margin_key`), in the
shapes of verl's RMDataset, TRL's and OpenRLHF's preference sets: prompt a string or messages; chosen/rejected
strings (appended to the templated prompt, + EOS, as verl's RMDataset with add_eos) or messages (the assistant
turn(s) after the prompt; with no prompt column, whole conversations).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow.parquet as pq

from rl_trainer.errors import UserError

log = logging.getLogger(__name__)
TRUNCATIONS = ("error", "left", "right")


@dataclass
class SFTExample:
    input_ids: list[int]
    target_mask: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class PreferencePair:
    chosen: list[int]
    rejected: list[int]
    margin: float = 0.0

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)


def read_columns(files: Sequence[str], columns: Sequence[str], key: str, optional: Sequence[str] = ()) -> dict:
    """{column: values} of the parquet `files`, concatenated; a missing file, column or an empty set is one line
    naming the file, the column and `key` (the files' config key)."""
    out: dict[str, list] = {c: [] for c in [*columns, *optional]}
    for path in files:
        path = os.path.expanduser(str(path))
        if not os.path.isfile(path):
            raise UserError(f"{key}: data file {path} does not exist; fix the path")
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a file that is not parquet
            raise UserError(f"{key}: cannot read {path} as parquet ({type(exc).__name__}); pass a parquet file") from exc
        present = table.column_names
        for column in columns:
            if column not in present:
                raise UserError(f"{path} has no column {column!r} (columns: {', '.join(present)}); set the data.*_key "
                                f"that names it, or fix the file")
        for column in [*columns, *optional]:
            out[column] += table.column(column).to_pylist() if column in present else [None] * table.num_rows
    if not out[columns[0]]:
        raise UserError(f"{key}: {', '.join(map(str, files))} has no rows; pass a non-empty parquet file")
    return out


def first_rows(count: int, max_samples: int) -> range:
    """verl's *_max_samples: the first `max_samples` rows (-1 or more than there are: all)."""
    return range(count if max_samples is None or max_samples < 0 else min(count, max_samples))


def dig(value: Any, keys: Sequence[str], where: str) -> Any:
    """value[k1][k2]... (`data.prompt_dict_keys` / `response_dict_keys`), with a one-line error naming the key."""
    for k in keys:
        if not isinstance(value, dict) or k not in value:
            have = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise UserError(f"{where}: no key {k!r} in {have}; fix the *_dict_keys or the data")
        value = value[k]
    return value


def as_messages(value: Any, where: str) -> list[dict]:
    """A prompt cell as chat messages: a string is one user turn."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) and "role" in m and "content" in m
                                                          for m in value):
        return [dict(m) for m in value]
    raise UserError(f"{where} is {str(value)[:80]!r}, not a string or a list of {{'role', 'content'}} messages")


def template(tokenizer: Any, messages: list[dict], generation: bool, kwargs: dict) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False, **kwargs)


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def conversation_example(tokenizer: Any, messages: list[dict], kwargs: dict, where: str) -> SFTExample:
    """Every assistant turn trained, turn by turn through the chat template (see the module docstring)."""
    ids: list[int] = []
    mask: list[int] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            with_prompt = template(tokenizer, messages[:i], True, kwargs)
            piece = _suffix(with_prompt, done, where)
            ids += encode(tokenizer, piece)
            mask += [0] * (len(ids) - len(mask))
            done = with_prompt
        full = template(tokenizer, messages[: i + 1], False, kwargs)
        piece_ids = encode(tokenizer, _suffix(full, done, where))
        ids += piece_ids
        mask += [int(message["role"] == "assistant")] * len(piece_ids)
        done = full
    if not any(mask):
        raise UserError(f"{where}: no assistant turn to train on; every conversation needs one")
    return SFTExample(ids, mask)


def _suffix(text: str, prefix: str, where: str) -> str:
    if not text.startswith(prefix):
        raise UserError(f"{where}: the chat template is not prefix-consistent (the text of the first turns changes "
                        f"when a turn is added), so turns cannot be masked; set model.custom_chat_template")
    return text[len(prefix):]


def prompt_response_example(tokenizer: Any, prompt: Any, response: Any, kwargs: dict, where: str) -> SFTExample:
    """The older single-turn spelling: templated prompt (context) + response + EOS (trained)."""
    if not isinstance(response, str):
        raise UserError(f"{where}: the response is {str(response)[:80]!r}, not a string; fix data.response_key / "
                        f"data.response_dict_keys")
    prompt_ids = encode(tokenizer, template(tokenizer, as_messages(prompt, where), True, kwargs))
    response_ids = encode(tokenizer, response + tokenizer.eos_token)
    return SFTExample(prompt_ids + response_ids, [0] * len(prompt_ids) + [1] * len(response_ids))


def fit_length(example, max_length: int, truncation: str, where: str):
    """verl's max_length/truncation on one sequence (a list of ids and optionally its mask)."""
    ids = example.input_ids if isinstance(example, SFTExample) else example
    if len(ids) <= max_length:
        return example
    if truncation == "error":
        raise UserError(f"{where}: {len(ids)} tokens is more than data.max_length={max_length}; raise "
                        f"data.max_length, or set data.truncation=left|right")
    cut = slice(-max_length, None) if truncation == "left" else slice(None, max_length)
    if isinstance(example, SFTExample):
        return SFTExample(example.input_ids[cut], example.target_mask[cut])
    return ids[cut]


def load_sft_examples(files: Sequence[str], data: Any, tokenizer: Any, max_samples: int, key: str) -> list[SFTExample]:
    """The SFT examples of `files` by the `data` section (see the module docstring for the two spellings)."""
    check_truncation(data.truncation)
    kwargs = dict(data.get("apply_chat_template_kwargs") or {})
    single = data.get("prompt_key") is not None or data.get("response_key") is not None
    if single and (data.get("prompt_key") is None or data.get("response_key") is None):
        raise UserError("data.prompt_key and data.response_key go together (the older single-turn spelling); set "
                        "both, or neither to read data.messages_key")
    columns = list(dict.fromkeys([data.prompt_key, data.response_key])) if single else [data.messages_key]
    table = read_columns(files, columns, key)
    out = []
    for row in first_rows(len(table[columns[0]]), max_samples):
        where = f"{files[0] if len(files) == 1 else key} row {row}"
        if single:
            prompt = dig(table[data.prompt_key][row], data.get("prompt_dict_keys") or [], f"{where} data.prompt_key")
            response = dig(table[data.response_key][row], data.get("response_dict_keys") or [],
                           f"{where} data.response_key")
            example = prompt_response_example(tokenizer, prompt, response, kwargs, where)
        else:
            example = conversation_example(tokenizer, as_messages(table[data.messages_key][row], where), kwargs, where)
        example = fit_length(example, data.max_length, data.truncation, where)
        if len(example) < 2 or not any(example.target_mask[1:]):
            raise UserError(f"{where}: nothing left to train on after data.truncation={data.truncation}; raise "
                            f"data.max_length")
        out.append(example)
    return out


def check_truncation(truncation: str) -> None:
    if truncation not in TRUNCATIONS:
        raise UserError(f"data.truncation={truncation!r} is not one of {', '.join(TRUNCATIONS)}")


def preference_sequence(tokenizer: Any, prompt: list[dict] | None, response: Any, kwargs: dict, where: str) -> list[int]:
    """The token ids of one side of a pair (see the module docstring)."""
    if isinstance(response, str):
        if prompt is None:
            raise UserError(f"{where}: a plain-string response needs a prompt column; set data.prompt_key")
        return encode(tokenizer, template(tokenizer, prompt, True, kwargs)) + encode(tokenizer, response
                                                                                     + tokenizer.eos_token)
    turns = as_messages(response, where) if isinstance(response, (list, tuple)) else None
    if turns is None:
        raise UserError(f"{where} is {str(response)[:80]!r}, not a string or a list of messages")
    return encode(tokenizer, template(tokenizer, (prompt or []) + turns, False, kwargs))


def load_preference_pairs(files: Sequence[str], data: Any, tokenizer: Any, max_samples: int,
                          key: str) -> list[PreferencePair]:
    """The preference pairs of `files`; pairs whose two sides are the same text are dropped (with a warning; all of
    them: an error), as they carry no preference."""
    check_truncation(data.truncation)
    kwargs = dict(data.get("apply_chat_template_kwargs") or {})
    optional = [c for c in (data.prompt_key, data.margin_key) if c]
    table = read_columns(files, [data.chosen_key, data.rejected_key], key, optional)
    if data.prompt_key and all(p is None for p in table[data.prompt_key]):
        raise UserError(f"{', '.join(map(str, files))} has no column {data.prompt_key!r}; set data.prompt_key to the "
                        f"prompt column, or data.prompt_key=null when chosen/rejected hold whole conversations")
    if data.margin_key and all(m is None for m in table[data.margin_key]):
        raise UserError(f"{', '.join(map(str, files))} has no column {data.margin_key!r}; set data.margin_key to the "
                        f"margin column, or data.margin_key=null")
    pairs, same = [], 0
    for row in first_rows(len(table[data.chosen_key]), max_samples):
        where = f"{files[0] if len(files) == 1 else key} row {row}"
        chosen, rejected = table[data.chosen_key][row], table[data.rejected_key][row]
        if chosen == rejected:
            same += 1
            continue
        prompt = as_messages(table[data.prompt_key][row], where) if data.prompt_key else None
        sides = [fit_length(preference_sequence(tokenizer, prompt, side, kwargs, where), data.max_length,
                            data.truncation, where) for side in (chosen, rejected)]
        margin = float(table[data.margin_key][row]) if data.margin_key else 0.0
        pairs.append(PreferencePair(sides[0], sides[1], margin))
    if not pairs:
        raise UserError(f"{key}: chosen and rejected are identical in every row of {', '.join(map(str, files))}; "
                        f"a preference pair needs two different responses")
    if same:
        log.warning("%s: dropped %d pair(s) whose chosen and rejected are identical", key, same)
    return pairs


def epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch `epoch` visits `count` rows: a permutation drawn from (seed, epoch) alone, so a
    resumed run knows it without replaying earlier epochs."""
    return np.random.default_rng([seed, epoch]).permutation(count)
