"""Hydra multirun (`python -m rl_trainer.main -m key=a,b ...`): one name per job, for its run and checkpoint dirs.

A job is named by the overrides the command line sweeps, with this job's values:

    python -m rl_trainer.main -m algorithm.adv_estimator=grpo,gae trainer.total_training_steps=20
    -> multirun/<date>/<time>/0-algorithm.adv_estimator=grpo/     run dir (metrics.jsonl, .hydra/)
       checkpoints/rl_trainer/gsm8k_grpo/algorithm.adv_estimator=grpo/   its checkpoints

Only the swept keys enter the name (Hydra's own `override_dirname` holds every override and soon passes the
255-character limit of a file name), `/` becomes `_`, and a name over `MAX_TAG_LENGTH` is cut and ends in a
hash of the whole. The checkpoint directory carries the name without the job number, so rerunning the same
sweep resumes each job from its own checkpoints (`trainer.resume_mode=auto`) and never from a sibling's.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence

from omegaconf import OmegaConf

MAX_TAG_LENGTH = 120
RESOLVER = "rl_trainer_job_tag"


def swept_keys(argv: Sequence[str]) -> set[str]:
    """Keys the command line sweeps (`k=a,b`, `k=range(..)`, `k=choice(..)`); hydra.* keys excluded."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    candidates = [arg for arg in argv if "=" in arg and not arg.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except Exception:  # not Hydra's syntax after all: Hydra itself reports it
        return set()
    return {o.key_or_group for o in overrides if o.is_sweep_override() and not o.key_or_group.startswith("hydra.")}


def job_tag(task_overrides: Sequence[str], argv: Sequence[str] | None = None) -> str:
    """`algorithm.adv_estimator=gae,actor_rollout_ref.rollout.n=4`: this job's values of the swept keys.

    task_overrides: the job's overrides (`hydra.overrides.task`); argv: the sweep's command line (default
    sys.argv[1:]). Without swept keys (`-m` over single values), every override names the job.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    swept = swept_keys(sys.argv[1:] if argv is None else argv)
    parsed = OverridesParser.create().parse_overrides(list(task_overrides))
    items = [f"{o.key_or_group}={o.get_value_element_as_str()}" for o in parsed if o.key_or_group in swept]
    tag = ",".join(items or list(task_overrides)).replace("/", "_") or "defaults"
    if len(tag) > MAX_TAG_LENGTH:
        digest = hashlib.sha1(tag.encode()).hexdigest()[:8]
        tag = f"{tag[: MAX_TAG_LENGTH - len(digest) - 1]}-{digest}"
    return tag


def register_resolver() -> None:
    """`${rl_trainer_job_tag:${hydra.overrides.task}}` in configs/ppo_trainer.yaml's hydra.sweep.subdir."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, lambda overrides: job_tag(list(overrides)))
