"""Crash-safe writes: a reader (or a resumed run) sees the old content or the new one, never a torn file.

Every file the package writes for later reading (checkpoint pieces and the tracker file, metrics.jsonl after a
resume, generation dumps, converted parquet files) goes through `atomic_write`; a directory built in one go (the
built-in model) through `publish_dir`. Temporary names are `.<name>.tmp-<32 hex>` siblings of the target, the
pattern `CheckpointManager.cleanup_stale_tmp` removes after a kill.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable


def temp_sibling(path: str | os.PathLike) -> Path:
    """A fresh temporary name next to `path` (same directory, so a rename onto `path` is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a directory (a directory's fsync makes a rename inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file, then every directory (deepest first), so the data is on disk before a rename."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            if not os.path.islink(os.path.join(dirpath, name)):
                fsync_path(Path(dirpath, name))
        fsync_path(Path(dirpath))


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """`write(tmp_path)` into a temporary sibling, fsync it, then rename it over `path` (readers see old or new).

    If `write` raises (or the process dies) the old file is untouched; the temporary file is removed on an
    exception and left for `cleanup_stale_tmp` after a kill.
    """
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def publish_dir(tmp_dir: str | os.PathLike, target: str | os.PathLike) -> None:
    """Make the fully written directory `tmp_dir` appear as `target` in one rename, after fsyncing its tree.

    Raises OSError (FileExistsError or ENOTEMPTY) if a non-empty `target` exists: the caller decides whether
    that is another writer's equal result or an error; an empty `target` directory is replaced.
    """
    fsync_tree(tmp_dir)
    os.rename(tmp_dir, target)
    fsync_path(Path(target).parent)
