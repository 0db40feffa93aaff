"""rl_trainer.atomic: a write that fails or is killed halfway leaves the old file, and the leftovers are recognisable."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from rl_trainer.atomic import atomic_write, publish_dir, temp_sibling
from rl_trainer.checkpoint import CheckpointManager


def test_atomic_write_replaces_the_file(tmp_path):
    target = tmp_path / "state.txt"
    target.write_text("old")
    atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["state.txt"]  # no temporary left


def test_a_write_that_raises_leaves_the_old_file(tmp_path):
    target = tmp_path / "state.txt"
    target.write_text("old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("ne")  # part of the new content is on disk
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.txt"]


def test_a_process_killed_mid_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "latest_checkpointed_iteration.txt"
    target.write_text("20")
    # A real crash: the writing process dies (os._exit, no cleanup) after writing half of the new content.
    crash = (
        "import os, sys\n"
        "from rl_trainer.atomic import atomic_write\n"
        "def write(tmp):\n"
        "    tmp.write_text('4')\n"
        "    os._exit(9)\n"
        "atomic_write(sys.argv[1], write)\n"
    )
    proc = subprocess.run([sys.executable, "-c", crash, str(target)], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    assert target.read_text() == "20"
    [leftover] = [p for p in tmp_path.iterdir() if p != target]
    assert re.fullmatch(rf"\.{re.escape(target.name)}\.tmp-[0-9a-f]{{32}}", leftover.name)
    # ... which the start-up cleanup of a run removes, keeping the real file.
    assert CheckpointManager(tmp_path).cleanup_stale_tmp() == [leftover]
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_publish_dir_renames_a_whole_directory(tmp_path):
    target = tmp_path / "model"
    tmp = temp_sibling(target)
    tmp.mkdir()
    (tmp / "config.json").write_text("{}")
    publish_dir(tmp, target)
    assert (target / "config.json").read_text() == "{}" and not tmp.exists()


def test_publish_dir_never_overwrites_a_non_empty_directory(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("theirs")
    tmp = temp_sibling(target)
    tmp.mkdir()
    (tmp / "config.json").write_text("ours")
    with pytest.raises(OSError):
        publish_dir(tmp, target)
    assert (target / "config.json").read_text() == "theirs" and (tmp / "config.json").read_text() == "ours"
