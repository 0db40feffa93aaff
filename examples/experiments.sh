#!/usr/bin/env bash
# The classic comparisons as Hydra multirun sweeps, each ending in one plot of the runs side by side.
#
#   bash examples/experiments.sh CONFIG EXPERIMENT [OVERRIDES...]
#
#   CONFIG      ppo_trainer (GSM8K, the default config) | digit_shift (the learnable task)
#   EXPERIMENT  grpo_vs_ppo   algorithm.adv_estimator=grpo,gae
#               rollout_n     actor_rollout_ref.rollout.n=2,4,8
#               kl            +variant=kl_loss,kl_in_reward   (configs/variant/: KL as loss vs KL in the reward)
#               dr_grpo       +variant=grpo,dr_grpo          (configs/variant/dr_grpo.yaml)
#               losses        actor_rollout_ref.actor.policy_loss.loss_mode=<the policy losses, LOSSES to choose>
#               estimators    algorithm.adv_estimator=<the estimators, ESTIMATORS to choose>
#               dapo          algorithm.filter_groups.enable=false,true (DAPO's dynamic sampling; data.gen_batch_size=32)
#
# Runs go to experiments/CONFIG/EXPERIMENT/<job>/ (metrics.jsonl, .hydra/), checkpoints to
# checkpoints/rl_trainer/CONFIG-EXPERIMENT/<job>/, the plot to experiments/CONFIG/EXPERIMENT/plot.png.
# Rerunning an experiment resumes its jobs (finished ones are skipped). A failed job does not stop the others;
# the plot still shows those that ran, and the script then exits non-zero.
# Wrappers: examples/gsm8k/experiments.sh, examples/digit_shift/experiments.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then sed -n '2,20p' "$0"; exit 2; fi
config=$1 experiment=$2
shift 2
case $experiment in
    grpo_vs_ppo) sweep=(algorithm.adv_estimator=grpo,gae) ;;
    # Micro-batches of 8 sequences divide every worker's share for n = 2, 4 and 8.
    rollout_n) sweep=(actor_rollout_ref.rollout.n=2,4,8 actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8
                      actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8
                      actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8) ;;
    kl) sweep=(+variant=kl_loss,kl_in_reward) ;;
    dr_grpo) sweep=(+variant=grpo,dr_grpo) ;;
    losses) sweep=(actor_rollout_ref.actor.policy_loss.loss_mode=${LOSSES:-vanilla,dppo_tv,dppo_kl,gspo,sapo,gpg,clip_cov,kl_cov,geo_mean,cispo}) ;;
    estimators) sweep=(algorithm.adv_estimator=${ESTIMATORS:-grpo,grpo_vectorized,rloo,rloo_vectorized,grpo_passk,opo,reinforce_plus_plus,reinforce_plus_plus_baseline,remax,gpg,gae}) ;;
    # gen_batch_size: each generation batch draws 32 prompts, of which 16 varying groups train.
    dapo) sweep=(algorithm.filter_groups.enable=false,true data.gen_batch_size=32 reward_model.reward_manager=dapo
                 algorithm.filter_groups.metric=acc) ;;
    *) echo "experiments.sh: unknown experiment '$experiment' (grpo_vs_ppo, rollout_n, kl, dr_grpo, losses, estimators, dapo)" >&2; exit 2 ;;
esac
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
out=experiments/$config/$experiment
"$PYTHON" -m rl_trainer.main -m --config-name "$config" "${sweep[@]}" hydra.sweep.dir="$out" \
    trainer.experiment_name="$config-$experiment" "$@"
status=$?
"$PYTHON" -m rl_trainer.tools.plot "$out" --out "$out/plot.png" || status=1
exit $status
