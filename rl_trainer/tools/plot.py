"""`python -m rl_trainer.tools.plot RUN_DIR... [--metrics M ...] [--out FILE.png]`: runs' training curves side by side.

One subplot per metric, one line per run (the same colour in every subplot), x = training step. A metric is drawn
only at the steps that logged it (validation: step 0 and every `trainer.test_freq` steps); NaN and infinite values
are gaps.

    python -m rl_trainer.tools.plot outputs/2026-11-24/10-00-00-gsm8k_grpo             # -> that run's plot.png
    python -m rl_trainer.tools.plot multirun/2026-11-24/10-00-00                         # a sweep: every run in it
    python -m rl_trainer.tools.plot RUN_A RUN_B --metrics 'critic/score/*' actor/entropy --out cmp.png

RUN_DIR is a directory `python -m rl_trainer.main` wrote (it holds `metrics.jsonl`), or a Hydra multirun sweep
directory, which stands for its subdirectories that hold one (in natural order: 0, 1, ..., 10).

Panels: `--metrics` takes metric names and fnmatch patterns (`'val-core/*'`), each of which must match a metric of
some run. Without it, the default panels (`DEFAULT_PANELS`) are reward mean, validation score, response length, KL,
entropy and step time; each takes the first of its candidate metrics that any run logged (KL: the actor's KL loss
and the KL penalty in the reward, whichever runs logged, else the PPO KL between old and new policy) and is skipped, with a note on
stderr, when no run logged any of them.

Legend labels: the config keys whose values differ between the runs (`adv_estimator=gae, kl_loss_coef=0.01`),
from `RUN_DIR/.hydra/config.yaml` when every run has one, else from `.hydra/overrides.yaml` (a key a run did not
override reads `(default)`), each key shortened to its fewest last components that end no other key (`lr` is
`actor.optim.lr` next to `critic.optim.lr`). Left out: where a run writes, logs and resumes from (`hydra.*`,
`trainer.default_local_dir`, `trainer.logger`, `trainer.log_val_generations`, `trainer.resume_*`); the experiment
and project names count only when the other keys leave two runs with one label (they usually restate those keys),
and runs still alike get their directory names appended. One run, no config, nothing that differs: the directory
name.

`--out` defaults to `ARG/plot.png` for a single argument (one run or one sweep), else `./runs_comparison.png`.
`plot_runs(run_dirs, metrics=None, out=None)` does the same from Python and returns the path written.
"""

from __future__ import annotations

import argparse
import fnmatch
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

from rl_trainer.errors import UserError
from rl_trainer.tracking import METRICS_FILE, read_metrics

# (title, candidate metrics or fnmatch patterns): the first candidate that any run logged fills the panel; a pattern
# fills one panel per metric it matches (validation: one per data source), and so does "a|b" (KL as a loss in
# one run, KL in the reward in another: both are drawn).
DEFAULT_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reward mean", ("critic/score/mean", "critic/rewards/mean")),
    ("validation score", ("val-core/*/reward/mean@*",)),
    ("response length", ("response_length/mean",)),
    ("KL", ("actor/kl_loss|actor/reward_kl_penalty", "actor/ppo_kl")),
    ("entropy", ("actor/entropy",)),
    ("step time", ("timing_s/step", "perf/time_per_step")),
)

# Keys that never tell runs apart in a legend: where a run writes (not what it does), logging, resuming.
LABEL_IGNORED_KEYS = ("hydra.*", "trainer.default_local_dir", "trainer.resume_mode", "trainer.resume_from_path",
                      "trainer.logger", "trainer.log_val_generations", "trainer.rollout_data_dir",
                      "trainer.validation_data_dir")
# Names that usually restate the keys that differ: used only when those alone leave two runs with the same label.
LABEL_NAME_KEYS = ("trainer.experiment_name", "trainer.project_name")

DEFAULT_OUT_NAME = "plot.png"
COMPARISON_OUT = "runs_comparison.png"

Series = dict[str, tuple[list[int], list[float]]]  # metric -> (steps, values), steps ascending


# ------------------------------------------------------------------------------------------------ run directories
def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def expand_run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories (those holding metrics.jsonl) of `paths`; a sweep directory stands for its runs."""
    runs: list[Path] = []
    for path in map(Path, paths):
        if path.name == METRICS_FILE and path.is_file():
            path = path.parent
        if (path / METRICS_FILE).is_file():
            found = [path]
        elif path.is_dir():
            found = sorted((child for child in path.iterdir() if (child / METRICS_FILE).is_file()), key=_natural_key)
        else:
            raise UserError(f"{path}: no such directory; pass a run directory of `python -m rl_trainer.main` "
                            f"(it holds {METRICS_FILE}) or a multirun sweep directory")
        if not found:
            raise UserError(f"{path / METRICS_FILE} not found (nor in any subdirectory): pass a run directory of "
                            f"`python -m rl_trainer.main` (outputs/DATE/TIME-NAME) or a multirun sweep directory")
        runs.extend(found)
    return list(dict.fromkeys(runs))  # a run named twice is drawn once


def load_series(run_dir: Path) -> Series:
    """Per metric, the steps that logged it and their values; a step logged twice keeps its last value."""
    by_metric: dict[str, dict[int, float]] = {}
    for record in read_metrics(run_dir):
        step = record.get("step") if isinstance(record, dict) else None
        if not isinstance(step, int):
            continue
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                by_metric.setdefault(key, {})[step] = float(value) if math.isfinite(value) else math.nan
    if not by_metric:
        raise UserError(f"{run_dir / METRICS_FILE} holds no metrics (empty, or no line parses): the run has "
                        f"not logged a step yet; plot it later or leave it out")
    return {key: (sorted(values), [values[s] for s in sorted(values)]) for key, values in by_metric.items()}


# ------------------------------------------------------------------------------------------------ panels
def _matching(pattern: str, available: Sequence[str]) -> list[str]:
    """The metric named `pattern`, else those it matches as an fnmatch pattern."""
    return [pattern] if pattern in available else fnmatch.filter(available, pattern)


def _first_present(candidates: Sequence[str], available: Sequence[str]) -> list[str]:
    for candidate in candidates:
        matches = [m for alternative in candidate.split("|") for m in _matching(alternative, available)]
        if matches:
            return matches
    return []


def select_metrics(available: Iterable[str], patterns: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """(metrics to draw, one panel each; notes on default panels skipped for want of data).

    `patterns`: names or fnmatch patterns, each of which must match an `available` metric; None: `DEFAULT_PANELS`.
    """
    available = sorted(set(available))
    if patterns:
        chosen = []
        for pattern in patterns:
            matches = _matching(pattern, available)
            if not matches:
                raise UserError(f"--metrics {pattern!r}: no run logged such a metric; available: "
                                f"{_some(available)}")
            chosen.extend(matches)
        return list(dict.fromkeys(chosen)), []
    chosen, notes = [], []
    for title, candidates in DEFAULT_PANELS:
        matches = _first_present(candidates, available)
        if matches:
            chosen.extend(matches)
        else:
            notes.append(f"no {title} panel: no run logged {' or '.join(candidates)}")
    if not chosen:
        raise UserError(f"no run logged any metric of the default panels; pick some with --metrics, e.g. "
                        f"{_some(available)}")
    return chosen, notes


def _some(names: Sequence[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# ------------------------------------------------------------------------------------------------ labels
class _Absent:
    """A key one run's config lacks (printed as `word`)."""

    def __init__(self, word: str) -> None:
        self.word = word

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Absent)

    def __hash__(self) -> int:
        return 0


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def _read_yaml(path: Path) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)  # `${...}` stay as written
    except Exception as exc:  # a label is not worth failing the plot for
        print(f"note: {path} does not parse ({type(exc).__name__}); labels ignore it", file=sys.stderr)
        return None


def _config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / ".hydra" / "config.yaml"
    tree = _read_yaml(path) if path.is_file() else None
    return _flatten(tree) if isinstance(tree, dict) else None


def _overrides(run_dir: Path) -> dict[str, str] | None:
    """`key=value` overrides as {key: value}; `~key` (delete) as {key: "~"}; `+`/`++` prefixes dropped."""
    path = run_dir / ".hydra" / "overrides.yaml"
    items = _read_yaml(path) if path.is_file() else None
    if not isinstance(items, list):
        return None
    out = {}
    for item in map(str, items):
        key, sep, value = item.partition("=")
        out[key.lstrip("+~")] = value if sep else "~"
    return out


def _format_value(value: Any) -> str:
    if isinstance(value, _Absent):
        return value.word
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + ",".join(map(_format_value, value)) + "]"
    return str(value)


def short_keys(keys: Iterable[str], known: Iterable[str]) -> dict[str, str]:
    """Each of `keys` as its fewest last dotted components that end no other `known` key."""
    known = set(known) | set(keys)
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(other != key and (other == suffix or other.endswith("." + suffix)) for other in known):
                break
        out[key] = suffix
    return out


def diff_labels(configs: Sequence[dict[str, Any]], names: Sequence[str], absent: str = "(unset)") -> list[str]:
    """One label per run: the flat `configs`' keys whose values differ, or `names` when nothing tells runs apart."""
    keys = sorted({key for config in configs for key in config})
    missing = _Absent(absent)
    values = {key: [config.get(key, missing) for config in configs] for key in keys}

    def differing(selected: Iterable[str]) -> list[str]:
        return [k for k in selected if any(v != values[k][0] for v in values[k][1:])]

    ignored = LABEL_IGNORED_KEYS + LABEL_NAME_KEYS
    primary = differing(k for k in keys if not any(fnmatch.fnmatchcase(k, p) for p in ignored))
    names_differing = differing(k for k in keys if k in LABEL_NAME_KEYS)

    def labels(selected: list[str]) -> list[str]:
        short = short_keys(selected, keys)
        return [", ".join(f"{short[k]}={_format_value(values[k][i])}" for k in selected) for i in range(len(configs))]

    for selected in (primary, primary + names_differing):
        if selected and len(set(labels(selected))) == len(configs):
            return labels(selected)
    if not primary and not names_differing:
        return list(names)
    # Runs that differ only in ignored keys (or not at all, e.g. repeats): the directory names tell them apart.
    return [f"{label} ({name})" for label, name in zip(labels(primary + names_differing), names)]


def _dir_names(run_dirs: Sequence[Path]) -> list[str]:
    run_dirs = [Path(run).resolve() for run in run_dirs]  # `.` has a name too
    names = [run.name for run in run_dirs]
    if len(set(names)) < len(names):  # e.g. the `0-...` runs of two sweeps
        names = [f"{run.parent.name}/{run.name}" for run in run_dirs]
    return names


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Legend labels of `run_dirs` (see the module docstring)."""
    names = _dir_names(run_dirs)
    if len(run_dirs) < 2:
        return names
    configs = [_config(run) for run in run_dirs]
    if all(c is not None for c in configs):
        return diff_labels(configs, names, absent="(unset)")
    overrides = [_overrides(run) for run in run_dirs]
    if all(o is not None for o in overrides):
        return diff_labels(overrides, names, absent="(default)")
    return names


# ------------------------------------------------------------------------------------------------ drawing
def default_out(args: Sequence[str | os.PathLike]) -> Path:
    """`ARG/plot.png` for one argument (a run or a sweep directory), else `./runs_comparison.png`."""
    if len(args) == 1:
        arg = Path(args[0])
        return (arg.parent if arg.name == METRICS_FILE else arg) / DEFAULT_OUT_NAME
    return Path(COMPARISON_OUT)


def _draw(series: Sequence[Series], labels: Sequence[str], metrics: Sequence[str], out: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no display, no global figure state
    from matplotlib.lines import Line2D

    cols = min(len(metrics), 3)
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(5 * cols, 3.4 * rows + 0.3 * len(labels)), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    styles = [dict(color=f"C{i % 10}", linestyle=("-", "--", ":", "-.")[i // 10 % 4]) for i in range(len(labels))]
    for ax, metric in zip(axes, metrics):
        for run, style in zip(series, styles):
            if metric in run:
                steps, values = run[metric]
                ax.plot(steps, values, marker="o" if len(steps) <= 30 else None, markersize=3, **style)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    handles = [Line2D([], [], **style) for style in styles]
    fig.legend(handles, labels, loc="outside lower center", ncols=1 if len(labels) > 4 else len(labels), fontsize=9)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png", dpi=100)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}; pick another --out") from exc


def plot_runs(run_dirs: Sequence[str | os.PathLike] | str | os.PathLike, metrics: Sequence[str] | None = None,
              out: str | os.PathLike | None = None) -> Path:
    """Draw the runs (or sweeps) `run_dirs` into the PNG `out` (default: see `default_out`); return its path."""
    args = [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)
    if not args:
        raise UserError("no run directory given; pass one or more run (or multirun sweep) directories")
    out = Path(out) if out is not None else default_out(args)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: the plot is a PNG; give a file name ending in .png")
    runs = expand_run_dirs(args)
    series = [load_series(run) for run in runs]
    chosen, notes = select_metrics({key for run in series for key in run}, metrics)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    _draw(series, run_labels(runs), chosen, out)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rl_trainer.tools.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="a run directory (holds metrics.jsonl) or a Hydra multirun sweep directory")
    parser.add_argument("--metrics", nargs="+", metavar="M",
                        help="metric names or fnmatch patterns, one panel each (default: the default panels); "
                             "put the RUN_DIRs before it")
    parser.add_argument("--out", metavar="FILE.png",
                        help=f"the PNG to write (default: RUN_DIR/{DEFAULT_OUT_NAME} for one argument, "
                             f"else ./{COMPARISON_OUT})")
    args = parser.parse_args(argv)
    try:
        out = plot_runs(args.run_dirs, args.metrics, args.out)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {out.resolve()}")


if __name__ == "__main__":
    main()
