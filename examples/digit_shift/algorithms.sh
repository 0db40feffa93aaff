#!/usr/bin/env bash
# The algorithm sweep of docs/algorithms.md on the digit-shift task: every policy loss (GRPO advantages), every
# estimator (vanilla loss), and DAPO's dynamic sampling, then the table and the plots.
#
#   bash examples/digit_shift/algorithms.sh [losses] [estimators] [dapo]    (default: all three)
#
# 60 steps each, validation every 10, no checkpoints, and 4 mini-batches per step (ppo_mini_batch_size=4 of 16
# prompts), so the updates after the first are off-policy and the clipped losses differ from vanilla. About 25 s
# a run on a 2-core CPU; LOSSES=... / ESTIMATORS=... (comma lists) choose a subset. Plots land in docs/img/.
set -uo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
COMMON=(trainer.total_training_steps=60 trainer.test_freq=10 trainer.save_freq=-1
        actor_rollout_ref.actor.ppo_mini_batch_size=4)
status=0
for experiment in "${@:-losses estimators dapo}"; do
    for one in $experiment; do
        bash examples/experiments.sh digit_shift "$one" "${COMMON[@]}" || status=1
        panels=('val-core/*' critic/score/mean actor/pg_clipfrac timing_s/step)
        [ "$one" = dapo ] && panels=('val-core/*' critic/score/mean critic/score/all_equal_group_ratio
                                     train/num_gen_batches training/filter_groups/evicted_samples timing_s/step)
        "$PYTHON" -m rl_trainer.tools.plot "experiments/digit_shift/$one" --out "docs/img/digit_shift_$one.png" \
            --metrics "${panels[@]}" || status=1
    done
done
for one in ${@:-losses estimators dapo}; do
    "$PYTHON" examples/digit_shift/table.py "experiments/digit_shift/$one" || status=1
done
exit $status
