"""Train on the digit-shift task from a random init and print the learning curve.

    python examples/digit_shift/learn.py grpo                      # GRPO (default)
    python examples/digit_shift/learn.py ppo                       # PPO: GAE + critic
    python examples/digit_shift/learn.py grpo trainer.total_training_steps=300 actor_rollout_ref.rollout.n=4

Runs the real trainer (`python -m rl_trainer.main --config-name digit_shift ...`: Ray workers, FSDP, the same
CLI), timestamps every step as its console line appears, then prints one row per validation (greedy accuracy
on the 100 held-out prompts), when accuracy first reached 90 %, and writes RUN_DIR/plot.png. Extra arguments
are Hydra overrides. Exits with the trainer's exit code if it failed, else 1 if 90 % was never reached.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from rl_trainer.tools.plot import plot_runs
from rl_trainer.tracking import read_metrics

ESTIMATORS = {"grpo": "grpo", "ppo": "gae"}
TARGET = 0.9
RUN_DIR_LINE = re.compile(r"^run directory: (\S+)")
STEP_LINE = re.compile(r"^step:(\d+) ")


def main(argv: list[str]) -> int:
    algo = argv[0] if argv and argv[0] in ESTIMATORS else "grpo"
    overrides = argv[1:] if argv and argv[0] in ESTIMATORS else argv
    command = [sys.executable, "-m", "rl_trainer.main", "--config-name", "digit_shift",
               f"algorithm.adv_estimator={ESTIMATORS[algo]}", "trainer.logger=[console]", *overrides]
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    run_dir, step_seconds = None, {}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            if match := RUN_DIR_LINE.match(line):
                run_dir = Path(match.group(1))
            if match := STEP_LINE.match(line):
                step_seconds[int(match.group(1))] = time.perf_counter() - start
                continue  # the table below replaces the per-step lines
            print(line, end="", flush=True)
    total = time.perf_counter() - start
    if proc.returncode != 0 or run_dir is None:
        print(f"learn.py: the trainer exited with code {proc.returncode}", file=sys.stderr)
        return proc.returncode or 1

    records = read_metrics(run_dir)
    print(f"\n{algo.upper()} on digit-shift: greedy validation accuracy (100 held-out prompts)")
    print(f"{'step':>6} {'seconds':>8} {'train reward':>13} {'val accuracy':>13}")
    reached = None
    for record in records:
        val = next((v for k, v in record.items() if k.startswith("val-core/")), None)
        if val is None:
            continue
        step = record["step"]
        seconds = step_seconds.get(step, 0.0)  # step 0: validation before training
        reward = record.get("critic/score/mean")
        print(f"{step:>6} {seconds:>8.1f} {'' if reward is None else f'{reward:.3f}':>13} {val:>13.3f}")
        if reached is None and val >= TARGET:
            reached = (step, seconds)
    if reached:
        print(f"reached {TARGET:.0%} at step {reached[0]}, {reached[1]:.0f} s after launch (run: {total:.0f} s)")
    else:
        print(f"did not reach {TARGET:.0%} (run: {total:.0f} s)")
    print(f"curves: {plot_runs([run_dir])}")
    return 0 if reached else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
