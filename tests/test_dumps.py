"""Rollout / validation dumps (trainer.rollout_data_dir, trainer.validation_data_dir): records, files, errors."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from helpers import REPO
from rl_trainer.algos import compute_advantage
from rl_trainer.batch import Batch
from rl_trainer.config import validate_config
from rl_trainer.dumps import check_dump_dir, generation_records, write_step_jsonl
from rl_trainer.errors import UserError
from rl_trainer.models.builtin import build_digits_tokenizer

P, R = 6, 4  # prompt and response widths
# (uid, prompt, response characters) -- groups a (3 responses), b (2, one empty), c (a group of one).
ROWS = [("a", "3..7=", "6"), ("a", "3..7=", "61"), ("a", "3..7=", "9.2"),
        ("b", ".81.=", "1"), ("b", ".81.=", ""),
        ("c", "0.5.=", "3=")]
SCORES = [1.0, 0.0, 0.5, 1.0, 0.25, 2.0]


@pytest.fixture(scope="module")
def tokenizer():
    return build_digits_tokenizer()


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(list(text))


def rollout_batch(tokenizer, kl_in_reward: bool) -> Batch:
    """What the trainer has after its advantage stage: left-padded prompts, right-padded responses (+ EOS when
    shorter than R), the score on the last valid token, optionally a per-token KL penalty, GRPO advantages."""
    pad = tokenizer.pad_token_id
    prompts, responses, prompt_mask, response_mask = [], [], [], []
    for _, prompt, response in ROWS:
        p = ids(tokenizer, prompt)
        r = ids(tokenizer, response) + [tokenizer.eos_token_id]  # EOS is generated, so it is a valid token
        r = r[:R] if response else []  # the empty row: no valid token at all
        prompts.append([pad] * (P - len(p)) + p)
        prompt_mask.append([0] * (P - len(p)) + [1] * len(p))
        responses.append(r + [pad] * (R - len(r)))
        response_mask.append([1] * len(r) + [0] * (R - len(r)))
    response_mask = torch.tensor(response_mask)
    scores = torch.zeros(len(ROWS), R)
    for row, score in enumerate(SCORES):
        scores[row, int(response_mask[row].sum()) - 1] = score  # -1 for the empty row: the last column, as verl
    batch = Batch(
        {"prompts": torch.tensor(prompts), "responses": torch.tensor(responses),
         "attention_mask": torch.cat([torch.tensor(prompt_mask), response_mask], dim=1),
         "response_mask": response_mask, "token_level_scores": scores},
        {"uid": [u for u, _, _ in ROWS], "index": list(range(10, 10 + len(ROWS))),
         "data_source": ["rl_trainer/digit_shift"] * len(ROWS), "ground_truth": ["6", "6", "6", "1", "1", "3"]},
    )
    rewards = scores - 0.01 * response_mask if kl_in_reward else scores
    batch["token_level_rewards"] = rewards
    batch["advantages"], batch["returns"] = compute_advantage(
        "grpo", token_level_rewards=rewards, response_mask=response_mask, index=batch["uid"],
        norm_adv_by_std_in_grpo=True)
    return batch


@pytest.mark.parametrize("kl_in_reward", [False, True])
def test_grpo_records_match_a_hand_computation(tokenizer, kl_in_reward):
    batch = rollout_batch(tokenizer, kl_in_reward)
    extra = {"acc": [True, False, False, True, False, False], "step": list("uvwxyz")}
    records = generation_records(batch, tokenizer, step=7, reward_extra_info=extra)
    assert len(records) == len(ROWS)

    lengths = [len(r) + 1 if r else 0 for _, _, r in ROWS]
    kl = [0.01 * n if kl_in_reward else 0.0 for n in lengths]
    rewards = [s - k for s, k in zip(SCORES, kl)]
    groups = {u: [rewards[i] for i, row in enumerate(ROWS) if row[0] == u] for u in "abc"}
    for row, record in enumerate(records):
        uid, prompt, response = ROWS[row]
        assert record["step"] == 7 and record["uid"] == uid and record["index"] == 10 + row
        assert record["prompt"] == prompt  # pad tokens gone
        assert record["response"] == response  # EOS skipped, as the scorer saw it
        assert record["response_length"] == lengths[row]
        assert record["data_source"] == "rl_trainer/digit_shift"
        assert record["score"] == pytest.approx(SCORES[row])
        assert record["reward"] == pytest.approx(rewards[row])
        group = groups[uid]
        assert record["group_mean"] == pytest.approx(statistics.mean(group))
        if len(group) > 1:
            std = statistics.stdev(group)  # Bessel-corrected, as torch.std / GRPO
            assert record["group_std"] == pytest.approx(std)
            expected_adv = (rewards[row] - statistics.mean(group)) / (std + 1e-6)
        else:
            assert record["group_std"] is None  # undefined for one response; GRPO uses mean 0, std 1
            expected_adv = rewards[row] / (1 + 1e-6)
        if lengths[row] == 0:
            assert record["advantage"] is None  # no valid token to carry an advantage
        else:
            assert record["advantage"] == pytest.approx(expected_adv, abs=1e-5)
            assert record["advantage"] == pytest.approx(batch["advantages"][row, 0].item())
        # Extra reward infos, flat as in verl; a name clashing with a field gets a prefix.
        assert record["acc"] == extra["acc"][row] and record["extra_step"] == extra["step"][row]


def test_validation_records_have_no_reward_or_advantage(tokenizer):
    full = rollout_batch(tokenizer, kl_in_reward=False)
    batch = full.select("prompts", "responses", "attention_mask", "response_mask", "token_level_scores",
                        "uid", "index", "data_source", "ground_truth")
    records = generation_records(batch, tokenizer, step=0)
    assert all("reward" not in r and "advantage" not in r for r in records)
    assert records[0]["group_mean"] == pytest.approx(statistics.mean(SCORES[:3]))
    assert records[0]["group_std"] == pytest.approx(statistics.stdev(SCORES[:3]))
    assert records[0]["step"] == 0


def test_write_names_files_by_step_overwrites_and_leaves_no_temporaries(tokenizer, tmp_path):
    records = generation_records(rollout_batch(tokenizer, False), tokenizer, step=3)
    directory = tmp_path / "not" / "yet" / "there"
    path = write_step_jsonl(directory, 3, records, key="trainer.rollout_data_dir")
    assert path == directory / "3.jsonl"
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert lines == json.loads(json.dumps(records))  # one object per response, in batch order

    # A resumed run redoing step 3 replaces the file whole.
    write_step_jsonl(directory, 3, records[:2], key="trainer.rollout_data_dir")
    assert len(path.read_text().splitlines()) == 2
    assert sorted(p.name for p in directory.iterdir()) == ["3.jsonl"]

    # A write that fails keeps the previous file intact and leaves nothing behind.
    class Unprintable:
        def __str__(self):
            raise RuntimeError("cannot serialise")

    with pytest.raises(RuntimeError):
        write_step_jsonl(directory, 3, [*records, {"x": Unprintable()}], key="trainer.rollout_data_dir")
    assert len(path.read_text().splitlines()) == 2
    assert sorted(p.name for p in directory.iterdir()) == ["3.jsonl"]

    # numpy / torch values and NaN scores are written, not refused.
    write_step_jsonl(directory, 4, [{"gt": np.array([1, 2]), "t": torch.tensor(0.5), "score": math.nan}],
                     key="trainer.rollout_data_dir")
    written = json.loads((directory / "4.jsonl").read_text())
    assert written["gt"] == [1, 2] and written["t"] == 0.5 and math.isnan(written["score"])


def test_a_directory_that_cannot_be_created_is_a_user_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    check_dump_dir(None, "trainer.rollout_data_dir")
    check_dump_dir(str(tmp_path / "new" / "dir"), "trainer.rollout_data_dir")
    assert not (tmp_path / "new").exists()  # checking creates nothing
    with pytest.raises(UserError, match=r"rollout_data_dir=.*is not a directory.*rollout_data_dir=null"):
        check_dump_dir(str(blocker / "dumps"), "trainer.rollout_data_dir")
    with pytest.raises(UserError, match=r"trainer\.validation_data_dir=.*cannot write"):
        write_step_jsonl(blocker / "dumps", 0, [], key="trainer.validation_data_dir")

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose("ppo_trainer", overrides=[f"trainer.validation_data_dir={blocker}/val", "trainer.device=cpu"])
    with pytest.raises(UserError, match=r"trainer\.validation_data_dir="):
        validate_config(cfg)

# The end-to-end check (real CLI, per-job dump dirs in a multirun) is in tests/test_learning.py.
