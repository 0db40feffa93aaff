"""Rollout engines: `name` -> class. Chosen by actor_rollout_ref.rollout.name, never by fallback."""

from rl_trainer.workers.rollout.base import Rollout, SamplingParams
from rl_trainer.workers.rollout.hf import HFRollout

ROLLOUT_ENGINES = {"hf": HFRollout}

__all__ = ["ROLLOUT_ENGINES", "HFRollout", "Rollout", "SamplingParams"]
