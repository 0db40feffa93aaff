"""`data.train_files` / `data.val_files` values: parquet paths, or built-in datasets written on first use.

    builtin:gsm8k/{train,test}         the GSM8K copy bundled with rl_trainer (rl_trainer.data.gsm8k)
    builtin:digit_shift/{train,test}   the learnable digit-shift task (rl_trainer.data.digit_shift)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from omegaconf import ListConfig

from rl_trainer.cache import cache_root
from rl_trainer.errors import UserError


@functools.cache
def builtin_data() -> dict[str, tuple[str, str, Callable]]:
    """{"builtin:<name>/<split>": (name, split, the dataset's writer (out_dir, overwrite=...) -> {split: path})}.

    Imported on first use: the builders import `datasets` (0.6-1 s), which the config stage, whose
    check_data_files_exist only looks at local paths, does not need (docs/performance.md, Start-up)."""
    from rl_trainer.data import digit_shift, gsm8k

    writers = {"gsm8k": (gsm8k.SPLITS, gsm8k.write_gsm8k_parquet),
               "digit_shift": (digit_shift.SPLITS, digit_shift.write_digit_shift_parquet)}
    return {f"builtin:{name}/{split}": (name, split, write)
            for name, (splits, write) in writers.items() for split in splits}


def resolve_data_files(files, key: str) -> list[str]:
    """A list of parquet paths; builtin names are converted once into the rl_trainer cache and reused."""
    if files is None:
        raise UserError(f"{key} is not set; pass a parquet file (or list of files) in verl's schema")
    resolved = []
    for item in _items(files):
        if item.startswith("builtin:"):
            builtins = builtin_data()
            if item not in builtins:
                raise UserError(f"{key}={item} is not a built-in dataset; choose one of {', '.join(builtins)}")
            name, split, write = builtins[item]
            paths = write(cache_root() / "data" / name, overwrite=False)
            resolved.append(str(paths[split]))
        else:
            resolved.append(item)
    return resolved


def check_data_files_exist(files, key: str) -> None:
    """The config stage's check of `key`'s local files: a missing one fails before Ray starts, in the input stage's
    words (reading them, and building the built-in datasets, is the input stage's work)."""
    if files is None:
        return  # the input stage says the key is not set
    for item in _items(files):
        if not item.startswith("builtin:") and not os.path.isfile(item):
            raise UserError(f"data file {item} does not exist; check {key}")


def _items(files) -> list[str]:
    """A data.*_files value (one path or a list) as a list of strings."""
    return [str(f) for f in (files if isinstance(files, (list, tuple, ListConfig)) else [files])]
