#!/usr/bin/env bash
# GRPO vs PPO, rollout.n, KL as loss vs in reward, Dr.GRPO vs GRPO on GSM8K with the default small model (CPU).
#   bash examples/gsm8k/experiments.sh grpo_vs_ppo|rollout_n|kl|dr_grpo [OVERRIDES...]   (see examples/experiments.sh)
exec bash "$(dirname "$0")/../experiments.sh" ppo_trainer "$@"
