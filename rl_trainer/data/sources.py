"""`data.train_files` / `data.val_files` values: parquet paths, or `builtin:gsm8k/{train,test}` (the bundled copy)."""

from __future__ import annotations

from omegaconf import ListConfig

from rl_trainer.data.gsm8k import SPLITS, write_gsm8k_parquet
from rl_trainer.errors import UserError

BUILTIN_DATA = {f"builtin:gsm8k/{split}": split for split in SPLITS}


def resolve_data_files(files, key: str) -> list[str]:
    """A list of parquet paths; builtin names are converted once into the rl_trainer cache and reused."""
    if files is None:
        raise UserError(f"{key} is not set; pass a parquet file (or list of files) in verl's schema")
    items = list(files) if isinstance(files, (list, tuple, ListConfig)) else [files]
    resolved = []
    for item in items:
        item = str(item)
        if item.startswith("builtin:"):
            if item not in BUILTIN_DATA:
                raise UserError(f"{key}={item} is not a built-in dataset; choose one of {', '.join(BUILTIN_DATA)}")
            from rl_trainer.models.builtin import cache_root

            paths = write_gsm8k_parquet(cache_root() / "data" / "gsm8k", overwrite=False)
            resolved.append(str(paths[BUILTIN_DATA[item]]))
        else:
            resolved.append(item)
    return resolved
