"""Checkpoints on disk, crash-safe: a checkpoint either exists complete or not at all.

Layout under `trainer.default_local_dir` (verl's names, so verl users find their way around):

    global_step_20/                      one complete checkpoint (actor/, critic/, data.pt, ... as the trainer writes)
      COMPLETE                           completion marker, written last inside the directory (holds the step)
    global_step_40/
    latest_checkpointed_iteration.txt    the step of the newest checkpoint, e.g. "40" (verl's tracker file)
    .global_step_60.tmp-<uuid>/          a checkpoint being written (or left by a killed run; never read)

Saving is `tmp = manager.begin(step)`, every worker and the driver write into `tmp`, then
`manager.commit(step, tmp)`: marker, fsync, one `rename` to `global_step_N`, tracker update, pruning -- in that
order, so a crash anywhere before the tracker update leaves the previous checkpoint as the latest one. One run per directory: a second
run's `cleanup_stale_tmp()` would delete the first one's checkpoint in progress.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from rl_trainer.atomic import atomic_write, fsync_path, fsync_tree
from rl_trainer.errors import UserError

logger = logging.getLogger(__name__)

TRACKER_FILE = "latest_checkpointed_iteration.txt"
COMPLETE_MARKER = "COMPLETE"
RESUME_MODES = ("auto", "disable", "resume_path")
_STEP_DIR = re.compile(r"global_step_(\d+)")


def step_of(path: str | os.PathLike) -> int:
    """20 for `.../global_step_20` (trailing slash allowed); ValueError for any other name."""
    match = _STEP_DIR.fullmatch(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a global_step_<N> directory")
    return int(match.group(1))


def is_complete(path: str | os.PathLike) -> bool:
    """Whether `path` is a checkpoint directory whose writing finished (it holds the completion marker)."""
    return (Path(path) / COMPLETE_MARKER).is_file()


def save_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as JSON, atomically."""
    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(obj, indent=2), encoding="utf-8"))


def load_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """`torch.save(obj)`, atomically (RNG states, dataloader state, ...)."""
    import torch

    atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def load_torch(path: str | os.PathLike, weights_only: bool = False) -> Any:
    """`torch.load` on CPU. `weights_only=False` because driver state holds numpy RNG arrays: load only
    checkpoints you (or your runs) wrote -- unpickling an untrusted file can run code."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=weights_only)


class CheckpointManager:
    """The `global_step_N` directories and tracker file under `root_dir` (`trainer.default_local_dir`).

    `max_to_keep`: how many complete checkpoints to keep after each commit; None, 0 or negative keeps all
    (verl: `trainer.max_actor_ckpt_to_keep`, where None/0 keeps all too).
    """

    def __init__(self, root_dir: str | os.PathLike, max_to_keep: int | None = None) -> None:
        self.root = Path(root_dir).absolute()
        self.max_to_keep = max_to_keep

    @property
    def tracker_path(self) -> Path:
        return self.root / TRACKER_FILE

    def step_dir(self, step: int) -> Path:
        return self.root / f"global_step_{step}"

    def begin(self, step: int) -> Path:
        """A fresh, empty directory under the root to write checkpoint `step` into (same filesystem as the
        final directory, so `commit` is one rename)."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".global_step_{step}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        return tmp

    def commit(self, step: int, tmp_dir: str | os.PathLike) -> Path:
        """Turn `tmp_dir` (from `begin(step)`) into the complete checkpoint `global_step_<step>` and make it the
        latest; then prune old ones. Returns the checkpoint's path."""
        tmp_dir = Path(tmp_dir).absolute()
        if tmp_dir.parent != self.root or not tmp_dir.is_dir():
            raise ValueError(f"{tmp_dir} is not a directory from begin() under {self.root}")
        atomic_write(tmp_dir / COMPLETE_MARKER, lambda tmp: tmp.write_text(f"{step}\n"))
        fsync_tree(tmp_dir)

        final = self.step_dir(step)
        stale = None
        if final.exists():  # e.g. a resumed run saving a step that a killed run had saved too
            stale = self.root / f".global_step_{step}.old-{uuid.uuid4().hex}"
            os.replace(final, stale)
        os.replace(tmp_dir, final)
        fsync_path(self.root)
        # The tracker goes last: until it is rewritten, the previous checkpoint stays the latest.
        atomic_write(self.tracker_path, lambda tmp: tmp.write_text(str(step)))
        if stale is not None:
            shutil.rmtree(stale)
        self._prune(keep=final)
        return final

    def _complete_checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every complete `global_step_*` directory, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            match = _STEP_DIR.fullmatch(path.name)
            if match and path.is_dir() and is_complete(path):
                found.append((int(match.group(1)), path))
        return sorted(found)

    def _prune(self, keep: Path) -> None:
        """Delete all but the newest `max_to_keep` complete checkpoints, never `keep` (the one just committed,
        even if an abandoned run left checkpoints with higher steps)."""
        if self.max_to_keep is None or self.max_to_keep <= 0:
            return
        others = [path for _, path in self._complete_checkpoints() if path != keep]
        for path in others[: max(len(others) - (self.max_to_keep - 1), 0)]:
            logger.info("Removing old checkpoint %s (keeping the newest %d)", path, self.max_to_keep)
            # Renamed first, so a kill halfway through the deletion leaves no half-deleted global_step_N.
            doomed = self.root / f".{path.name}.del-{uuid.uuid4().hex}"
            os.replace(path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def latest(self) -> tuple[int, Path] | None:
        """(step, path) of the checkpoint named by the tracker file; if the tracker is missing, unreadable or names
        an incomplete or missing directory, the newest complete `global_step_*` instead (with a warning). None
        when there is no complete checkpoint."""
        try:
            step = int(self.tracker_path.read_text().strip())
            if is_complete(self.step_dir(step)):
                return step, self.step_dir(step)
            problem = f"names global_step_{step}, which is missing or incomplete"
        except FileNotFoundError:
            problem = "does not exist"
        except (ValueError, OSError) as e:
            problem = f"is unreadable ({e})"

        complete = self._complete_checkpoints()
        if complete:
            step, path = complete[-1]
            logger.warning(
                "Checkpoint tracker %s %s; using the newest complete checkpoint %s", self.tracker_path, problem, path
            )
            return step, path
        if self.tracker_path.exists():
            logger.warning("Checkpoint tracker %s %s, and no complete checkpoint exists", self.tracker_path, problem)
        return None

    def resolve_resume(self, resume_mode: str, resume_from_path: str | os.PathLike | None = None) -> Path | None:
        """The checkpoint to resume from, by verl's `trainer.resume_mode`: `disable` -> None (fresh start),
        `auto` -> the latest complete checkpoint or None, `resume_path` -> `trainer.resume_from_path`, which must be
        a complete `global_step_<N>` directory (a relative path is taken from the working directory)."""
        if resume_mode == "disable":
            return None
        if resume_mode == "auto":
            found = self.latest()
            return None if found is None else found[1]
        if resume_mode == "resume_path":
            if not resume_from_path:
                raise UserError(
                    "trainer.resume_mode=resume_path needs trainer.resume_from_path=<dir>/global_step_<N>; set it, "
                    "or use trainer.resume_mode=auto"
                )
            path = Path(resume_from_path).absolute()
            if _STEP_DIR.fullmatch(path.name) is None:
                raise UserError(f"trainer.resume_from_path={resume_from_path} must be a global_step_<N> directory")
            if not path.is_dir():
                raise UserError(f"trainer.resume_from_path={resume_from_path} does not exist ({path}); fix the path")
            if not is_complete(path):
                raise UserError(
                    f"trainer.resume_from_path={resume_from_path} is an incomplete checkpoint (no {COMPLETE_MARKER} "
                    "marker: its writing was interrupted); pick an earlier global_step_<N>"
                )
            return path
        raise UserError(f"trainer.resume_mode={resume_mode!r} is not one of {', '.join(RESUME_MODES)}")

    def cleanup_stale_tmp(self) -> list[Path]:
        """Delete what killed runs left behind (unfinished `begin()` directories, checkpoints being pruned,
        temporary files) and put back a checkpoint that a commit of the same step had moved aside. Call once at
        start-up, before any `begin()`. Returns what was removed."""
        if not self.root.is_dir():
            return []
        removed = []
        for path in self.root.iterdir():
            old = re.fullmatch(r"\.(global_step_\d+)\.old-[0-9a-f]{32}", path.name)
            if old and is_complete(path) and not (self.root / old.group(1)).exists():
                # Killed between moving a same-step checkpoint aside and renaming its replacement in: put it back.
                os.replace(path, self.root / old.group(1))
                logger.warning("Restored checkpoint %s from an interrupted commit", self.root / old.group(1))
                continue
            if re.fullmatch(r"\.global_step_\d+\.(tmp|old|del)-[0-9a-f]{32}|\..+\.tmp-[0-9a-f]{32}", path.name):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
        if removed:
            logger.warning("Removed %d leftover(s) of interrupted checkpoint writes in %s", len(removed), self.root)
        return removed
