"""Where rl_trainer keeps what it builds once and reuses: the built-in models and the built-in datasets."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CACHE = Path("~/.cache/rl_trainer")


def cache_root() -> Path:
    """`$RL_TRAINER_CACHE`, else ~/.cache/rl_trainer (expanded, absolute)."""
    return Path(os.environ.get("RL_TRAINER_CACHE") or DEFAULT_CACHE).expanduser().absolute()
