"""Checkpoint directories: commit/latest, half-written ones are never picked, pruning, resume modes, SIGKILL."""

import logging
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from rl_trainer import checkpoint as checkpoint_module
from rl_trainer.checkpoint import (
    COMPLETE_MARKER,
    TRACKER_FILE,
    CheckpointManager,
    load_json,
    load_torch,
    save_json,
    save_torch,
    step_of,
)
from rl_trainer.errors import UserError


def _save(manager: CheckpointManager, step: int, payload: str = "weights"):
    tmp = manager.begin(step)
    (tmp / "actor").mkdir()
    (tmp / "actor" / "model.bin").write_text(f"{payload} {step}")
    return manager.commit(step, tmp)


def _entries(root):
    return sorted(p.name for p in root.iterdir())


def test_commit_then_latest_round_trip(tmp_path):
    manager = CheckpointManager(tmp_path / "ckpt")
    assert manager.latest() is None  # the root does not even exist yet
    tmp = manager.begin(10)
    assert tmp.parent == manager.root and tmp.name.startswith(".global_step_10.tmp-") and not list(tmp.iterdir())
    (tmp / "data.pt").write_bytes(b"x")
    path = manager.commit(10, tmp)
    assert path == tmp_path / "ckpt" / "global_step_10" and (path / "data.pt").read_bytes() == b"x"
    assert (path / COMPLETE_MARKER).is_file()
    assert (tmp_path / "ckpt" / TRACKER_FILE).read_text() == "10"  # verl's format: the bare number
    assert _entries(manager.root) == ["global_step_10", TRACKER_FILE]  # no temp left
    assert manager.latest() == (10, path)
    assert step_of(path) == 10 and step_of(f"{path}/") == 10
    with pytest.raises(ValueError):
        step_of(tmp)


def test_half_written_checkpoints_are_never_picked(tmp_path, caplog):
    manager = CheckpointManager(tmp_path)
    _save(manager, 20)
    tmp = manager.begin(30)  # killed while writing, marker and all: still a temp dir
    (tmp / COMPLETE_MARKER).write_text("30")
    (tmp_path / "global_step_40" / "actor").mkdir(parents=True)  # a global_step dir without the marker
    assert manager.latest() == (20, tmp_path / "global_step_20")
    assert not caplog.records  # the tracker was valid: nothing to warn about

    (tmp_path / TRACKER_FILE).write_text("50")  # points at a directory that does not exist
    with caplog.at_level(logging.WARNING):
        assert manager.latest() == (20, tmp_path / "global_step_20")
    assert "global_step_50, which is missing or incomplete" in caplog.text and "global_step_20" in caplog.text

    for tracker in ("40", "garbage", None):  # incomplete dir, unreadable, missing
        caplog.clear()
        if tracker is None:
            (tmp_path / TRACKER_FILE).unlink()
        else:
            (tmp_path / TRACKER_FILE).write_text(tracker)
        with caplog.at_level(logging.WARNING):
            assert manager.latest() == (20, tmp_path / "global_step_20")
        assert "using the newest complete checkpoint" in caplog.text


def test_tracker_without_any_complete_checkpoint_warns_and_returns_none(tmp_path, caplog):
    (tmp_path / TRACKER_FILE).write_text("5")
    with caplog.at_level(logging.WARNING):
        assert CheckpointManager(tmp_path).latest() is None
    assert "no complete checkpoint" in caplog.text


def test_pruning_keeps_the_newest(tmp_path):
    manager = CheckpointManager(tmp_path, max_to_keep=2)
    for step in (1, 2, 3, 4):
        _save(manager, step)
    assert _entries(tmp_path) == ["global_step_3", "global_step_4", TRACKER_FILE]
    for keep_all in (None, -1, 0):
        manager = CheckpointManager(tmp_path / str(keep_all), max_to_keep=keep_all)
        for step in (1, 2, 3):
            _save(manager, step)
        assert len(list(manager.root.glob("global_step_*"))) == 3


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path):
    # An abandoned timeline left step 30; a run resumed from step 10 now saves step 20.
    manager = CheckpointManager(tmp_path)
    for step in (10, 30):
        _save(manager, step)
    manager.max_to_keep = 1
    _save(manager, 20)
    assert _entries(tmp_path) == ["global_step_20", TRACKER_FILE]
    assert manager.latest()[0] == 20


def test_a_failed_commit_prunes_nothing_and_keeps_the_previous_latest(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, max_to_keep=1)
    _save(manager, 1)
    real_replace = os.replace

    def replace_fails_for_the_checkpoint_rename(src, dst):
        if str(dst).endswith("global_step_2"):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", replace_fails_for_the_checkpoint_rename)
    with pytest.raises(OSError, match="disk full"):
        _save(manager, 2)
    assert manager.latest() == (1, tmp_path / "global_step_1")
    assert (tmp_path / "global_step_1" / "actor" / "model.bin").exists()


def test_crash_before_the_tracker_update_keeps_the_previous_latest(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path)
    _save(manager, 1)
    real_write = checkpoint_module.atomic_write

    def tracker_write_fails(path, write):
        if path.name == TRACKER_FILE:
            raise KeyboardInterrupt  # killed right after the rename
        real_write(path, write)

    monkeypatch.setattr(checkpoint_module, "atomic_write", tracker_write_fails)
    with pytest.raises(KeyboardInterrupt):
        _save(manager, 2)
    assert manager.latest() == (1, tmp_path / "global_step_1")  # the tracker is the commit point


def test_saving_a_step_again_replaces_it(tmp_path):
    manager = CheckpointManager(tmp_path)
    _save(manager, 5, payload="old")
    path = _save(manager, 5, payload="new")
    assert (path / "actor" / "model.bin").read_text() == "new 5"
    assert _entries(tmp_path) == ["global_step_5", TRACKER_FILE]


def test_cleanup_removes_leftovers_and_restores_a_checkpoint_moved_aside(tmp_path):
    manager = CheckpointManager(tmp_path)
    _save(manager, 5)
    # Killed between moving global_step_5 aside and renaming its replacement in:
    os.replace(tmp_path / "global_step_5", tmp_path / f".global_step_5.old-{'a' * 32}")
    leftovers = [
        manager.begin(6),
        tmp_path / f".{TRACKER_FILE}.tmp-{'b' * 32}",
        tmp_path / f".global_step_4.del-{'c' * 32}",
    ]
    leftovers[1].write_text("6")
    (leftovers[2] / "actor").mkdir(parents=True)  # pruning killed halfway
    (tmp_path / "notes.txt").write_text("user file")
    assert sorted(manager.cleanup_stale_tmp()) == sorted(leftovers)
    assert _entries(tmp_path) == ["global_step_5", TRACKER_FILE, "notes.txt"]
    assert manager.latest() == (5, tmp_path / "global_step_5")


def test_resume_modes(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path / "ckpt")
    assert manager.resolve_resume("auto", None) is None  # fresh start
    _save(manager, 3)
    _save(manager, 6)
    assert manager.resolve_resume("disable", None) is None
    assert manager.resolve_resume("auto", None) == tmp_path / "ckpt" / "global_step_6"
    step_3 = tmp_path / "ckpt" / "global_step_3"
    assert manager.resolve_resume("resume_path", step_3) == step_3
    monkeypatch.chdir(tmp_path)  # a relative path is taken from the working directory, as in verl
    assert manager.resolve_resume("resume_path", "ckpt/global_step_3") == step_3


@pytest.mark.parametrize(
    "path, message",
    [
        (None, r"trainer.resume_from_path=<dir>/global_step_<N>"),
        ("ckpt/global_step_9", r"trainer.resume_from_path=ckpt/global_step_9 does not exist"),
        ("ckpt/global_step_4", r"trainer.resume_from_path=ckpt/global_step_4 is an incomplete checkpoint"),
        ("ckpt", r"trainer.resume_from_path=ckpt must be a global_step_<N> directory"),
    ],
)
def test_resume_path_errors_name_the_key_and_the_path(tmp_path, monkeypatch, path, message):
    monkeypatch.chdir(tmp_path)
    manager = CheckpointManager("ckpt")
    _save(manager, 3)
    (tmp_path / "ckpt" / "global_step_4").mkdir()  # no marker
    with pytest.raises(UserError, match=message):
        manager.resolve_resume("resume_path", path)


def test_unknown_resume_mode_lists_the_valid_ones(tmp_path):
    with pytest.raises(UserError, match=r"trainer.resume_mode='latest' is not one of auto, disable, resume_path"):
        CheckpointManager(tmp_path).resolve_resume("latest", None)


def test_driver_state_round_trips_atomically(tmp_path):
    save_json(tmp_path / "trainer_state.json", {"global_step": 7, "kl_coef": 0.001})
    assert load_json(tmp_path / "trainer_state.json") == {"global_step": 7, "kl_coef": 0.001}
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "dataloader": {"epoch": 1, "index": 8}}
    save_torch(tmp_path / "rng.pt", state)
    loaded = load_torch(tmp_path / "rng.pt")
    assert torch.equal(loaded["torch"], state["torch"]) and loaded["dataloader"] == state["dataloader"]
    assert np.array_equal(loaded["numpy"][1], state["numpy"][1])
    assert _entries(tmp_path) == ["rng.pt", "trainer_state.json"]  # no temp files left


def test_a_checkpoint_killed_mid_write_leaves_the_previous_one_latest(tmp_path):
    manager = CheckpointManager(tmp_path)
    _save(manager, 1)
    # A trainer process that starts checkpoint 2 and is SIGKILLed while writing a large file into it.
    writer = textwrap.dedent(
        f"""
        import sys
        from rl_trainer.checkpoint import CheckpointManager
        manager = CheckpointManager({str(tmp_path)!r})
        tmp = manager.begin(2)
        with open(tmp / "model.bin", "wb") as f:
            for i in range(256):  # 256 MiB in all; killed after the fifth
                f.write(b"\\0" * 2**20)
                f.flush()
                if i == 4:
                    print("writing", flush=True)
                    sys.stdin.readline()  # mid-write until the test kills it (its stdin stays open until then)
        manager.commit(2, tmp)
        """
    )
    with subprocess.Popen([sys.executable, "-c", writer], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as proc:
        try:
            assert proc.stdout.readline() == "writing\n"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    [partial] = tmp_path.glob(".global_step_2.tmp-*")
    assert (partial / "model.bin").stat().st_size > 0

    manager = CheckpointManager(tmp_path)  # the restarted run
    assert manager.latest() == (1, tmp_path / "global_step_1")
    assert manager.cleanup_stale_tmp() == [partial]
    assert _entries(tmp_path) == ["global_step_1", TRACKER_FILE]
