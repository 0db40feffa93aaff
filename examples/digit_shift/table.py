"""The table of a digit-shift sweep: per run, the first validation step at >= 90 % greedy accuracy (else the best
accuracy reached and its step), the median seconds per training step, and the DAPO counters when logged.

    python examples/digit_shift/table.py experiments/digit_shift/losses experiments/digit_shift/estimators

Arguments are run or sweep directories (as for rl_trainer.tools.plot); prints Markdown rows.
"""

from __future__ import annotations

import statistics
import sys

from rl_trainer.tools.plot import expand_run_dirs, run_labels
from rl_trainer.tracking import read_metrics

TARGET = 0.9


def summary(run_dir) -> tuple[str, str, str]:
    """(reached, best, median step time) of one run, as table cells."""
    records = read_metrics(run_dir)
    accuracy = [(r["step"], v) for r in records for k, v in r.items() if k.startswith("val-core/")]
    step_times = [r["timing_s/step"] for r in records if "timing_s/step" in r]
    reached = next((step for step, v in accuracy if v >= TARGET), None)
    best_step, best = max(accuracy, key=lambda sv: (sv[1], -sv[0])) if accuracy else (None, float("nan"))
    gen_batches = [r["train/num_gen_batches"] for r in records if "train/num_gen_batches" in r]
    extra = f" ({statistics.mean(gen_batches):.2f} gen batches/step)" if gen_batches else ""
    time = f"{statistics.median(step_times):.2f} s{extra}" if step_times else "-"
    return (f"step {reached}" if reached is not None else "never"), f"{best:.2f} (step {best_step})", time


def main(argv: list[str]) -> int:
    runs = expand_run_dirs(argv)
    print("| run | >= 90 % at | best accuracy | time per step |")
    print("|---|---|---|---|")
    for label, run in zip(run_labels(runs), runs):
        print("| " + " | ".join((label, *summary(run))) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
