"""Exact-match scorer of the digit-shift task (`data_source="rl_trainer/digit_shift"`, rl_trainer/data/digit_shift.py).

1.0 when the response, with surrounding whitespace removed, is exactly the answer digit; 0.0 otherwise (a
right digit followed by anything else scores 0). EOS/pad never reach a scorer (rl_trainer.rewards.manager).
"""


def compute_score(solution_str: str, ground_truth: str) -> float:
    return 1.0 if solution_str.strip() == str(ground_truth).strip() else 0.0
