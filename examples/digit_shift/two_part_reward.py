"""A two-part reward for the digit-shift task, for gdpo (algorithm.adv_estimator=gdpo normalises each part within
its group before weighting them, algorithm.gdpo_reward_keys / gdpo_reward_weights):

    python -m rl_trainer.main --config-name digit_shift algorithm.adv_estimator=gdpo \
        custom_reward_function.path=examples/digit_shift/two_part_reward.py \
        algorithm.gdpo_reward_keys=[correct,digit] algorithm.gdpo_reward_weights=[1.0,0.5]

`correct` is the task's exact match (also the score), `digit` whether the response is a digit at all (a format
reward), the split GDPO's paper makes between a correctness and a format signal.
"""


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    correct = float(solution_str.strip() == str(ground_truth).strip())
    digit = float(solution_str.strip().isdigit())
    return {"score": correct, "correct": correct, "digit": digit}
