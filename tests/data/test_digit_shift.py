"""The learnable digit-shift task: balanced answers, no trivial policy above 10 %, held-out layouts, real files."""

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rl_trainer.data import digit_shift
from rl_trainer.data.digit_shift import make_rows, trivial_policy_accuracies, write_digit_shift_parquet
from rl_trainer.data.rl_dataset import RLHFDataset
from rl_trainer.data.sources import resolve_data_files
from rl_trainer.models.builtin import DIGITS_VOCAB, ensure_builtin_model
from rl_trainer.rewards.registry import default_compute_score


@pytest.fixture(scope="module")
def digits_model_dir(tmp_path_factory):
    return ensure_builtin_model("tiny-digits", seed=0, cache_dir=tmp_path_factory.mktemp("cache"))


def test_no_trivial_policy_passes_ten_percent_on_validation():
    test_rows = make_rows("test")
    accuracies = trivial_policy_accuracies(test_rows)
    assert len([k for k in accuracies if k.startswith("constant")]) == 10
    assert max(accuracies.values()) <= 0.10, accuracies
    answers = [row["reward_model"]["ground_truth"] for row in test_rows]
    assert sorted(set(answers)) == [str(d) for d in range(10)]
    assert all(answers.count(str(d)) == 10 for d in range(10))  # ten equally likely answers


def test_splits_partition_the_prompts_and_validation_holds_each_pair_once():
    train, test = make_rows("train"), make_rows("test")
    assert (len(train), len(test)) == (500, 100)
    train_prompts = {row["prompt"][0]["content"] for row in train}
    test_prompts = {row["prompt"][0]["content"] for row in test}
    assert len(train_prompts) == 500 and not train_prompts & test_prompts  # validation layouts are unseen
    assert sorted((r["extra_info"]["a"], r["extra_info"]["b"]) for r in test) == list(digit_shift.PAIRS)
    for row in test:  # the rendered prompt and the stored answer agree
        digits = [c for c in row["prompt"][0]["content"] if c != "."]
        assert row["reward_model"]["ground_truth"] == str((int(digits[0]) + 3) % 10)


def test_exact_match_reward_is_registered_for_the_data_source():
    score = lambda text, truth: default_compute_score(digit_shift.DATA_SOURCE, text, truth)  # noqa: E731
    assert score("6", "6") == 1.0 and score(" 6\n", "6") == 1.0
    assert score("66", "6") == 0.0 and score("", "6") == 0.0 and score("5", "6") == 0.0


def test_parquet_in_verl_schema_and_builtin_names(tmp_path, monkeypatch):
    paths = write_digit_shift_parquet(tmp_path)
    table = pq.read_table(paths["test"])
    assert table.num_rows == 100
    assert set(table.column_names) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    monkeypatch.setenv("RL_TRAINER_CACHE", str(tmp_path / "cache"))
    (resolved,) = resolve_data_files("builtin:digit_shift/train", "data.train_files")
    assert pq.read_table(resolved).num_rows == 500


def test_tiny_digits_model_tokenizes_one_id_per_character_after_reload(digits_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(digits_model_dir)
    model = AutoModelForCausalLM.from_pretrained(digits_model_dir)
    assert model.config.vocab_size == len(DIGITS_VOCAB) == len(tokenizer)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "3..7"}], add_generation_prompt=True,
                                         tokenize=False)
    assert text == "3..7="
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids == [DIGITS_VOCAB.index(c) for c in "3..7="]
    assert tokenizer.decode([DIGITS_VOCAB.index("6"), tokenizer.eos_token_id], skip_special_tokens=True) == "6"
    # The trainer's dataset path: prompts come out as those ids, left-padded.
    dataset = RLHFDataset(resolve_data_files(str(write_digit_shift_parquet(tmp_path)["test"]), "data.val_files"),
                          tokenizer, prompt_key="prompt", max_prompt_length=8)
    assert len(dataset) == 100
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, 5, len(DIGITS_VOCAB)) and torch.isfinite(logits).all()
