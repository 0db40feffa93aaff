"""Tracking: the metrics JSONL (append, resume, NaN), console lines, wandb offline, tensorboard, the progress bar."""

import json
import math
import sys
import types

import numpy as np
import pytest
import torch

from rl_trainer.errors import UserError
from rl_trainer.tracking import ProgressBar, Tracking, format_console_line, read_metrics


def test_backends_accept_a_string_a_list_or_none(tmp_path):
    for backends, expected in (("console", ["console"]), (["console", "console"], ["console"]), (None, [])):
        with Tracking("p", "e", backends, tmp_path) as tracking:
            assert tracking.backends == expected
    with pytest.raises(UserError, match=r"trainer.logger.*'mlflow'.*console.*wandb.*tensorboard"):
        Tracking("p", "e", ["console", "mlflow"], tmp_path)


def test_jsonl_has_one_record_per_call_flushed_at_once(tmp_path):
    tracking = Tracking("p", "e", [], tmp_path / "run")
    tracking.log({"loss": np.float32(0.5), "tokens": torch.tensor(12), "nan": float("nan"), "ok": True}, step=1)
    # Readable before finish(): every line is flushed when written.
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert lines == ['{"step": 1, "loss": 0.5, "tokens": 12, "nan": NaN, "ok": 1}']
    tracking.finish()
    tracking.finish()  # twice is fine
    [record] = read_metrics(tmp_path / "run")
    assert math.isnan(record.pop("nan")) and record == {"step": 1, "loss": 0.5, "tokens": 12, "ok": 1}
    with Tracking("p", "e", [], tmp_path / "other") as other, pytest.raises(TypeError, match="'text'"):
        other.log({"text": "hello"}, step=1)


def test_resumed_run_appends_after_truncating_the_redone_steps(tmp_path):
    with Tracking("p", "e", [], tmp_path) as first:
        for step in (1, 2, 3, 4):
            first.log({"x": float(step)}, step=step)
    torn = '{"step": 5, "x": 5.'  # the last line of a run killed mid-write
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(torn)
    with Tracking("p", "e", [], tmp_path) as resumed:  # resumes from the checkpoint of step 2
        resumed.truncate_after(2)
        resumed.log({"x": 30.0}, step=3)
    assert [(r["step"], r["x"]) for r in read_metrics(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 30.0)]

    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(torn)
    with Tracking("p", "e", [], tmp_path) as appended:  # no truncate_after: the next record still gets its own line
        appended.log({"x": 4.0}, step=4)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]


def test_console_line_is_verls_format_with_sorted_keys(tmp_path, capsys):
    assert format_console_line({"b": 0.123456, "a": 256.0, "c": 3, "d": float("nan"), "e": 1e-7}, step=7) == (
        "step:7 - a:256 - b:0.1235 - c:3 - d:nan - e:1e-07"
    )
    with Tracking("p", "e", "console", tmp_path) as tracking:
        tracking.log({"z": 1.5, "critic/score/mean": 0.25}, step=2)
    assert capsys.readouterr().out == "step:2 - critic/score/mean:0.25 - z:1.5\n"


def test_console_lines_do_not_cut_through_the_progress_bar(tmp_path, capsys):
    with ProgressBar(10, initial=3, enabled=True) as bar, Tracking("p", "e", "console", tmp_path) as tracking:
        bar.update()
        tracking.log({"loss": 0.5}, step=4)
        bar.update()
    out = capsys.readouterr().out
    # tqdm.write clears the bar back to the line start ("\r"), writes the line, then redraws the bar after it.
    assert "\rstep:4 - loss:0.5\n" in out
    assert "5/10" in out  # resumed at 3, two steps done


def test_progress_bar_is_silent_when_stdout_is_not_a_terminal(capsys):
    assert not sys.stdout.isatty()  # pytest captures stdout
    with ProgressBar(total_steps=5) as bar:
        bar.update()
    assert capsys.readouterr() == ("", "")


def test_missing_tensorboard_is_a_user_error_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(UserError, match=r"pip install 'rl_trainer\[tensorboard\]'"):
        Tracking("p", "e", ["console", "tensorboard"], tmp_path)


def test_tensorboard_gets_every_scalar(tmp_path, monkeypatch):
    calls = []

    class FakeWriter:
        def __init__(self, log_dir):
            calls.append(("init", log_dir))

        def add_scalar(self, key, value, global_step):
            calls.append((key, value, global_step))

        def flush(self):
            calls.append("flush")

        def close(self):
            calls.append("close")

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    with Tracking("p", "e", "tensorboard", tmp_path) as tracking:
        tracking.log({"a": 1.0, "b": 2}, step=3)
    assert calls == [("init", str(tmp_path / "tensorboard")), ("a", 1.0, 3), ("b", 2, 3), "flush", "close"]


def test_wandb_offline_run_is_written_under_the_run_dir(tmp_path, monkeypatch):
    for var, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": tmp_path / "wandb_dir",
        "WANDB_CACHE_DIR": tmp_path / "cache",
        "WANDB_CONFIG_DIR": tmp_path / "config",
        "WANDB_DATA_DIR": tmp_path / "data",
    }.items():
        monkeypatch.setenv(var, str(value))
    from omegaconf import OmegaConf

    config = OmegaConf.create({"trainer": {"total_epochs": 1, "project_name": "p"}, "lr": "${trainer.total_epochs}"})
    run_dir = tmp_path / "run"
    with Tracking("p", "e", ["wandb"], run_dir, config=config) as tracking:
        assert dict(tracking._wandb_run.config)["lr"] == 1  # resolved, plain dict
        tracking.log({"critic/score/mean": 0.5}, step=1)
        tracking.log({"critic/score/mean": 0.75}, step=2)
    [offline_run] = (run_dir / "wandb").glob("offline-run-*")
    assert list(offline_run.glob("*.wandb"))
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
