"""rl_trainer: an end-to-end RLHF trainer in the style of verl."""

__version__ = "0.1.0"
