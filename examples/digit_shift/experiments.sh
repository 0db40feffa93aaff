#!/usr/bin/env bash
# The same comparisons on the learnable digit-shift task, where the curves climb from chance within a minute.
#   bash examples/digit_shift/experiments.sh grpo_vs_ppo|rollout_n|kl|dr_grpo [OVERRIDES...]   (see examples/experiments.sh)
exec bash "$(dirname "$0")/../experiments.sh" digit_shift "$@"
