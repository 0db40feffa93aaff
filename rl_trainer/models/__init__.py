"""Models rl_trainer builds itself (no pretrained weights needed): see `builtin.py`."""

from rl_trainer.models.builtin import BUILTIN_PREFIX, ensure_builtin_model, resolve_model_path

__all__ = ["BUILTIN_PREFIX", "ensure_builtin_model", "resolve_model_path"]
