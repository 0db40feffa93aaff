"""Writing a dataset's splits as `<split>.parquet` files, crash-safe (shared by every dataset writer)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import datasets

from rl_trainer.atomic import atomic_write
from rl_trainer.errors import UserError


def write_parquet_splits(
    out_dir: str | os.PathLike,
    splits: Sequence[str],
    build: Callable[[], dict[str, datasets.Dataset]],
    overwrite: bool = True,
) -> dict[str, Path]:
    """Write `build()[split]` to `out_dir/<split>.parquet` for every split; return {split: path}.

    Each file is written under a temporary name and renamed into place, so an interrupted run never leaves a
    truncated parquet behind. With overwrite=False, existing files are kept and `build` is not called (the
    built-in datasets are converted once, on first use).
    """
    out_dir = Path(out_dir).expanduser().absolute()
    paths = {split: out_dir / f"{split}.parquet" for split in splits}
    if not overwrite and all(path.is_file() for path in paths.values()):
        return paths
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output directory {out_dir} ({e.strerror}); choose a writable path") from e
    tables = build()
    for split, path in paths.items():
        atomic_write(path, lambda tmp, table=tables[split]: table.to_parquet(str(tmp)))
    return paths
