"""Rewards: rule scorers by data_source, user reward functions, and responses -> token-level scores.

    registry.py  default_compute_score(data_source, ...) and @register_reward_fn
    gsm8k.py     the GSM8K rule scorer (verl 0.9.1 behaviour)
    custom.py    custom_reward_function.{path,name,reward_kwargs} loader
    manager.py   compute_token_level_scores: decode, score, put the score on the last valid token
"""

from rl_trainer.rewards.custom import get_custom_reward_fn, load_custom_reward_fn
from rl_trainer.rewards.manager import RewardOutput, compute_token_level_scores
from rl_trainer.rewards.registry import default_compute_score, register_reward_fn

__all__ = [
    "RewardOutput",
    "compute_token_level_scores",
    "default_compute_score",
    "get_custom_reward_fn",
    "load_custom_reward_fn",
    "register_reward_fn",
]
