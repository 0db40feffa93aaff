"""Exact-match checker of the digit-sort task (`data_source="rl_trainer/digit_sort"`, rl_trainer/data/digit_sort.py).

1.0 when the response, with surrounding whitespace removed, is exactly the sorted digits; 0.0 otherwise. In the
RLHF pipeline (examples/rlhf/pipeline.py) it only evaluates and labels preference pairs; training is rewarded by the
reward model alone.
"""


def compute_score(solution_str: str, ground_truth: str) -> float:
    return 1.0 if solution_str.strip() == str(ground_truth).strip() else 0.0
