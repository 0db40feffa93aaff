"""`data.train_files` / `data.val_files` values: parquet paths, or built-in datasets written on first use.

    builtin:gsm8k/{train,test}         the GSM8K copy bundled with rl_trainer (rl_trainer.data.gsm8k)
    builtin:digit_shift/{train,test}   the learnable digit-shift task (rl_trainer.data.digit_shift)
"""

from __future__ import annotations

import os

from omegaconf import ListConfig

from rl_trainer.cache import cache_root
from rl_trainer.data import digit_shift, gsm8k
from rl_trainer.errors import UserError

# Each built-in dataset: its splits, and its writer (out_dir, overwrite=...) -> {split: path}.
_BUILTINS = {
    "gsm8k": (gsm8k.SPLITS, gsm8k.write_gsm8k_parquet),
    "digit_shift": (digit_shift.SPLITS, digit_shift.write_digit_shift_parquet),
}
BUILTIN_DATA = {f"builtin:{name}/{split}": (name, split) for name, (splits, _) in _BUILTINS.items() for split in splits}


def resolve_data_files(files, key: str) -> list[str]:
    """A list of parquet paths; builtin names are converted once into the rl_trainer cache and reused."""
    if files is None:
        raise UserError(f"{key} is not set; pass a parquet file (or list of files) in verl's schema")
    resolved = []
    for item in _items(files):
        if item.startswith("builtin:"):
            if item not in BUILTIN_DATA:
                raise UserError(f"{key}={item} is not a built-in dataset; choose one of {', '.join(BUILTIN_DATA)}")
            name, split = BUILTIN_DATA[item]
            paths = _BUILTINS[name][1](cache_root() / "data" / name, overwrite=False)
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
