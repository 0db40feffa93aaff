"""Fault injection for the crash tests: `RL_TRAINER_FAULT=<phase>@<step>` SIGKILLs the driver at that point.

It kills the process the way an out-of-memory killer or a cluster scheduler would (no cleanup, no finally
blocks), so tests can check that whatever a kill interrupts, a resume continues exactly. Phases: every phase
of a training step, by its timing name (gen, gen_max, reward, old_log_prob, ref, values, adv, update_critic, update_actor,
testing, save_checkpoint: just before that phase runs), save (worker shards written, checkpoint not yet
committed) and epoch_end (after the last step of an epoch, before the next one).
"""

from __future__ import annotations

import os
import signal

ENV = "RL_TRAINER_FAULT"
PHASES = ("gen", "gen_max", "reward", "old_log_prob", "ref", "values", "adv", "dump_rollout_generations", "update_critic",
          "update_actor", "testing", "save_checkpoint", "save", "epoch_end")


def fault_point(phase: str, step: int) -> None:
    if os.environ.get(ENV) == f"{phase}@{step}":
        print(f"[fault injection] SIGKILL at {phase} of step {step}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
