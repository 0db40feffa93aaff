"""Experiment tracking: one `log(metrics, step)` call fans out to a JSONL file, the console, wandb, tensorboard.

`trainer.logger` picks the backends (verl's key; a list, or one string such as "console"):

    console      one line per step, `step:N - key:value - ...` (verl's format; keys sorted, 4 significant digits)
    wandb        `wandb.init(project=trainer.project_name, name=trainer.experiment_name, dir=run_dir)`;
                 `WANDB_MODE=offline` works with no network
    tensorboard  `run_dir/tensorboard/` (needs `pip install 'rl_trainer[tensorboard]'`)

Whatever the backends, every call appends one line to `run_dir/metrics.jsonl`: `{"step": N, ...metrics}`, flushed
at once so a killed run loses nothing (it reaches the OS, not necessarily the disk: a power cut may lose the
last lines). Non-finite values are written as JSON's common extension `NaN` / `Infinity` / `-Infinity`, which
Python's `json` (and `read_metrics`) read back; strict JSON parsers reject them. A resumed run appends to the same
file after `truncate_after(resumed_step)` dropped the steps it will redo.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from tqdm import tqdm

from rl_trainer.atomic import atomic_write
from rl_trainer.errors import UserError

logger = logging.getLogger(__name__)

BACKENDS = ("console", "wandb", "tensorboard")
METRICS_FILE = "metrics.jsonl"


def _normalise_backends(backends: str | Iterable[str] | None) -> list[str]:
    if backends is None:
        return []
    names = [backends] if isinstance(backends, str) else [str(b) for b in backends]
    unknown = [name for name in names if name not in BACKENDS]
    if unknown:
        raise UserError(f"trainer.logger: unknown backend(s) {unknown}; choose from {list(BACKENDS)}")
    return list(dict.fromkeys(names))  # drop duplicates, keep order


def _scalar(key: str, value: Any) -> int | float:
    """A plain Python number from a float/int/bool, numpy scalar or one-element tensor."""
    if hasattr(value, "item"):  # numpy scalar, 0-d array, one-element tensor
        value = value.item()
    if isinstance(value, numbers.Integral):  # bools too: True -> 1
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"metric {key!r} is a {type(value).__name__}, not a number")


def _format(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))  # 256.0 -> 256 (lengths, token counts)
    return f"{value:.4g}"


def format_console_line(metrics: Mapping[str, int | float], step: int) -> str:
    """verl's console line, keys sorted: `step:3 - actor/pg_loss:-0.0123 - critic/score/mean:0.5`."""
    return " - ".join([f"step:{step}", *(f"{key}:{_format(metrics[key])}" for key in sorted(metrics))])


def _config_to_dict(config: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(config, resolve=True) if OmegaConf.is_config(config) else config


class Tracking:
    """Logs each step's metrics to `run_dir/metrics.jsonl` and to the `backends` chosen by `trainer.logger`."""

    def __init__(
        self,
        project_name: str,
        experiment_name: str,
        backends: str | Iterable[str] | None,
        run_dir: str | os.PathLike,
        config: Any = None,
    ) -> None:
        self.backends = _normalise_backends(backends)
        # Import the backends before creating anything, so a missing package fails with nothing left open.
        if "wandb" in self.backends:
            try:
                import wandb
            except ImportError as e:
                raise UserError(
                    f"trainer.logger includes 'wandb' but it does not import ({e}); pip install wandb"
                ) from e
        if "tensorboard" in self.backends:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise UserError(
                    "trainer.logger includes 'tensorboard' but the tensorboard package is missing; "
                    "pip install 'rl_trainer[tensorboard]' (or drop it from trainer.logger)"
                ) from e

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS_FILE
        self._jsonl = _open_for_append(self.metrics_path)
        self._finished = False
        self._wandb_run = None
        if "wandb" in self.backends:
            self._wandb_run = wandb.init(
                project=project_name, name=experiment_name, config=_config_to_dict(config), dir=str(self.run_dir)
            )
        self._tensorboard = None
        if "tensorboard" in self.backends:
            self._tensorboard = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record `metrics` (name -> number) for training step `step` in every backend."""
        if self._finished:
            raise RuntimeError("Tracking.log called after finish()")
        values = {key: _scalar(key, value) for key, value in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), **values}, allow_nan=True) + "\n")
        self._jsonl.flush()
        if "console" in self.backends:
            # tqdm.write clears and redraws a ProgressBar, so the bar never cuts a line in half.
            tqdm.write(format_console_line(values, step), file=sys.stdout)
            sys.stdout.flush()
        if self._tensorboard is not None:
            for key, value in values.items():
                self._tensorboard.add_scalar(key, value, global_step=step)
            self._tensorboard.flush()
        if self._wandb_run is not None:
            self._wandb_run.log(values, step=step)

    def truncate_after(self, step: int) -> None:
        """Drop the JSONL lines of steps after `step` (a resumed run redoes them); also drops a torn last line."""
        if self._finished:
            raise RuntimeError("Tracking.truncate_after called after finish()")
        self._jsonl.close()
        kept = [line for line, record in _read_lines(self.metrics_path) if record["step"] <= step]
        atomic_write(self.metrics_path, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept),
                                                                   encoding="utf-8"))
        self._jsonl = _open_for_append(self.metrics_path)

    def finish(self) -> None:
        """Flush and close every backend; safe to call twice."""
        if self._finished:
            return
        self._finished = True
        self._jsonl.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()

    def __enter__(self) -> Tracking:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finish()


def _open_for_append(path: Path):
    """Line-buffered append (a resumed run continues the file), starting on a fresh line if the last one is torn."""
    f = open(path, "a", buffering=1, encoding="utf-8")
    if f.tell() > 0:
        with open(path, "rb") as last:
            last.seek(-1, os.SEEK_END)
            if last.read(1) != b"\n":
                f.write("\n")
    return f


def _read_lines(path: Path) -> list[tuple[str, dict]]:
    """(line, record) pairs of a metrics JSONL; a line that does not parse (a run killed mid-write) is skipped."""
    if not path.exists():
        return []
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s:%d is not valid JSON (a run killed mid-write?); skipping it", path, number)
                continue
            pairs.append((line, record))
    return pairs


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The records of `run_dir/metrics.jsonl`, in order: `[{"step": 1, "critic/score/mean": 0.5, ...}, ...]`."""
    return [record for _, record in _read_lines(Path(run_dir) / METRICS_FILE)]


class ProgressBar:
    """A training-steps bar with ETA (tqdm) on stdout, off when stdout is not a terminal unless `enabled=True`.

    `initial` is the step a resumed run starts from, so the ETA counts only the steps still to do.
    """

    def __init__(self, total_steps: int, initial: int = 0, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = sys.stdout.isatty()
        self._bar = tqdm(
            total=total_steps,
            initial=initial,
            desc="Training Progress",
            file=sys.stdout,
            disable=not enabled,
            dynamic_ncols=True,
        )

    def update(self, steps: int = 1) -> None:
        self._bar.update(steps)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
