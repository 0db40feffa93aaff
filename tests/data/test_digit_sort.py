"""digit-sort: disjoint splits, the answers, and preference pairs labelled by the rule checker, by hand."""

from rl_trainer.data import digit_sort


def test_splits_are_disjoint_and_answers_sorted():
    splits = digit_sort.prompt_splits()
    assert len(splits["test"]) == digit_sort.TEST_PROMPTS and not set(splits["test"]) & set(splits["train"])
    assert {len(p) for p in splits["train"]} == set(range(digit_sort.MIN_DIGITS, digit_sort.MAX_DIGITS + 1))
    assert digit_sort.answer("3142") == "1234" and digit_sort.answer("907") == "079"


def test_preference_pairs_by_hand():
    # "31": "13" is right, "31" and "113" wrong -> pairs (13, wrong); "22": every sample right -> no pair;
    # "90": every sample wrong -> no pair
    rows = digit_sort.preference_pairs(["31", "22", "90"], [["13", "31", "113", "13"], ["22", "22"], ["9", "90"]],
                                       max_pairs_per_prompt=2)
    assert len(rows) == 2
    assert all(r["prompt"] == [{"role": "user", "content": "31"}] and r["chosen"] == "13" for r in rows)
    assert {r["rejected"] for r in rows} <= {"31", "113"}
    assert digit_sort.accuracy(["31", "22"], ["13", "2"]) == 0.5
