"""The GSM8K scorer must match verl 0.9.1 exactly, quirks included; each expectation is derived by hand."""

import pytest

from rl_trainer.rewards.gsm8k import SOLUTION_TAIL_CHARS, compute_score, extract_solution


@pytest.mark.parametrize(
    "solution, ground_truth, expected",
    [
        # The plain case: "#### 72" -> "72" == "72" -> score 1.0.
        ("She sold 48 + 24 = 72 clips.\n#### 72", "72", 1.0),
        # Commas are stripped from the strict match: "1,234" -> "1234".
        ("#### 1,234", "1234", 1.0),
        ("#### 1,234.5", "1234.5", 1.0),
        # The character class is [-0-9.,] right after "#### ", so "$5" never matches: no answer -> 0.
        ("#### $5", "5", 0),
        # An optional leading minus is part of the match.
        ("#### -3", "-3", 1.0),
        # Several "####": the LAST one is the answer, so "2" is right and "1" earns only format_score 0.0.
        ("#### 1\nno wait\n#### 2", "2", 1.0),
        ("#### 1\nno wait\n#### 2", "1", 0.0),
        # String equality, not numeric: "72.0" != "72" and a sentence-ending "72." != "72" -> format_score 0.0.
        ("#### 72.0", "72", 0.0),
        ("#### 72.", "72", 0.0),
        # No "#### " at all (or no space after it) -> no answer -> 0.
        ("The answer is 72", "72", 0),
        ("####72", "72", 0),
    ],
)
def test_strict_score(solution, ground_truth, expected):
    assert compute_score(solution, ground_truth) == expected


def test_no_answer_is_int_zero_like_verl():
    # verl returns the int 0 (not 0.0) when nothing is extracted; default_compute_score makes it a float.
    result = compute_score("no number here", "72")
    assert result == 0 and type(result) is int


def test_only_last_300_chars_are_searched():
    assert SOLUTION_TAIL_CHARS == 300
    # "#### 72" is 7 chars; + 293 filler = 300 chars, so the tail is the whole string -> found.
    assert compute_score("#### 72" + "x" * 293, "72") == 1.0
    # + 294 filler = 301 chars: the tail drops the first "#", leaving "### 72..." -> no match -> 0.
    assert compute_score("#### 72" + "x" * 294, "72") == 0
    # The answer far before the tail is invisible, even though the string contains it.
    assert extract_solution("#### 72\n" + "blah " * 100) is None


def test_format_score_and_score():
    # Wrong but well-formed answer -> format_score; right -> score; no answer -> 0 regardless of format_score.
    assert compute_score("#### 71", "72", format_score=0.1, score=2.0) == 0.1
    assert compute_score("#### 72", "72", format_score=0.1, score=2.0) == 2.0
    assert compute_score("I don't know", "72", format_score=0.1, score=2.0) == 0


def test_strict_degenerate_comma_match():
    # "#### ," matches the class; stripping commas leaves "" -- a string, not None -- so it is "formatted".
    assert extract_solution("#### ,") == ""
    assert compute_score("#### ,", "72", format_score=0.1) == 0.1


@pytest.mark.parametrize(
    "solution, expected",
    [
        # Last number wins.
        ("first 5 then 72", "72"),
        ("-5 apples", "-5"),
        # Commas are NOT stripped in flexible mode.
        ("1,234 apples", "1,234"),
        # A trailing period is part of the run of [-0-9.,].
        ("so the total is 72.", "72."),
        # "$" is not in the class, so "$5" yields "5".
        ("#### $5", "5"),
        # "..." is not in the invalid set {"", "."} so it beats the earlier "42".
        ("Ends with 42 ...", "..."),
        # A lone "," counts as a number.
        ("Hello, world", ","),
        # A lone "." is skipped when something else exists ...
        ("72 .", "72"),
        # ... but when every candidate is ".", verl's loop ends on the first one and returns ".".
        ("Only a dot . and . again", "."),
        # No candidate at all -> None.
        ("no digits", None),
    ],
)
def test_flexible_extraction(solution, expected):
    assert extract_solution(solution, method="flexible") == expected


def test_flexible_score():
    # "72" is the last number -> equal -> 1.0; "1,234" keeps its comma -> != "1234" -> format_score 0.0.
    assert compute_score("I think 5, no: 72", "72", method="flexible") == 1.0
    assert compute_score("1,234", "1234", method="flexible") == 0.0


def test_unknown_method():
    with pytest.raises(ValueError, match="strict.*flexible"):
        extract_solution("#### 1", method="loose")
