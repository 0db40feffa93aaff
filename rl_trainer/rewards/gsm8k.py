"""Rule-based GSM8K scorer, bit-for-bit the behaviour of verl 0.9.1 (`verl.utils.reward_score.gsm8k`).

The model is asked to end its solution with `#### <number>` (see `rl_trainer.data.gsm8k`). The ground
truth stored in the parquet is that number with its thousands commas removed, e.g. "1080".

Parity matters more than elegance here: a run scored differently from verl would not be comparable, so
the quirks listed in each docstring are kept on purpose and pinned by tests/rewards/test_gsm8k.py.
Idea from ReFT (Trung et al., ACL 2024, https://arxiv.org/abs/2401.08967).
"""

import re

# Only the tail of a response is searched: the answer comes last, and a regex over a long degenerate
# rollout can be slow. 300 characters is a rough stand-in for "the last ~300 tokens".
SOLUTION_TAIL_CHARS = 300

# `#### ` then an optional minus and a run of digits, dots and commas. No `$`, no spaces, no exponent.
_STRICT_ANSWER = re.compile(r"#### (\-?[0-9\.\,]+)")
# Any run of digits, dots and commas (with an optional minus), anywhere in the tail.
_ANY_NUMBER = re.compile(r"(\-?[0-9\.\,]+)")


def extract_solution(solution_str: str, method: str = "strict") -> str | None:
    """Return the model's final answer as a string, or None when there is none.

    Only the last `SOLUTION_TAIL_CHARS` characters of `solution_str` are looked at, so an answer that
    appears earlier than that is invisible.

    method="strict": the last `#### <number>` in the tail, with every "," removed
        ("#### 1,234" -> "1234"). The number may not start with "$": "#### $5" is no answer at all.
        A degenerate match survives: "#### ," gives "" (a string, not None).
    method="flexible": the last run of `-`/digits/`.`/`,` in the tail, skipping a lone ".", with the
        commas KEPT ("1,234" stays "1,234"). Quirks: a lone "," counts as a number; and when every
        candidate is ".", the loop runs out and the first candidate "." is returned, not None.
    """
    if method not in ("strict", "flexible"):
        raise ValueError(f"extract_solution: method must be 'strict' or 'flexible', got {method!r}")
    tail = solution_str[-SOLUTION_TAIL_CHARS:]

    if method == "strict":
        answers = _STRICT_ANSWER.findall(tail)
        # verl also strips "$" here, which can never match; it is a no-op either way.
        return answers[-1].replace(",", "") if answers else None

    candidates = _ANY_NUMBER.findall(tail)
    if not candidates:
        return None
    for candidate in reversed(candidates):
        if candidate not in ("", "."):
            return candidate
    # Every candidate was "."; verl's loop variable is left on the first one.
    return candidates[0]


def compute_score(
    solution_str: str,
    ground_truth: str,
    method: str = "strict",
    format_score: float = 0.0,
    score: float = 1.0,
) -> float:
    """Score one response: 0 with no extractable answer, `score` when it equals `ground_truth`, else `format_score`.

    The comparison is plain string equality after `extract_solution`: "72.0" does not equal "72", and
    with method="flexible" "1,234" does not equal "1234". Note the no-answer case returns the int 0 (as
    verl does), which callers turn into 0.0.
    """
    answer = extract_solution(solution_str, method=method)
    if answer is None:
        return 0
    return score if answer == ground_truth else format_score
