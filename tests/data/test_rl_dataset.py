"""RLHFDataset over real GSM8K parquet with the built-in tokenizer, its one-line errors, and the loader's exact resume."""

import time

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

from rl_trainer.batch import Batch
from rl_trainer.data.gsm8k import write_gsm8k_parquet
from rl_trainer.data.rl_dataset import PromptLoader, RLHFDataset, collate
from rl_trainer.errors import UserError
from rl_trainer.models.builtin import ensure_builtin_model


@pytest.fixture(scope="session", autouse=True)
def hf_cache(tmp_path_factory):
    # Keep datasets' arrow caches out of the user's home.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_cache"))
        yield


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    # Same cache path as tests/models/conftest.py, so the built-in model is built once per session.
    return AutoTokenizer.from_pretrained(ensure_builtin_model(cache_dir=tmp_path_factory.getbasetemp() / "rl_trainer_cache"))


@pytest.fixture(scope="session")
def gsm8k(tmp_path_factory):
    return write_gsm8k_parquet(tmp_path_factory.mktemp("gsm8k"))


@pytest.fixture(scope="session")
def test_split(gsm8k, tokenizer):
    return RLHFDataset(str(gsm8k["test"]), tokenizer, max_prompt_length=256)


def prompt_ids(tokenizer, messages):
    """The un-padded prompt, computed independently of the dataset (chat template, tokenized in one call)."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)


def write_rows(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def row(content="What is 2+2?", **overrides):
    base = {
        "data_source": "openai/gsm8k",
        "prompt": [{"role": "user", "content": content}],
        "reward_model": {"style": "rule", "ground_truth": "4"},
        "extra_info": {"index": 7},
    }
    return {**base, **overrides}


# ---- the real GSM8K data ---------------------------------------------------------------------------------------


def test_gsm8k_train_loads_all_rows_quickly(gsm8k, tokenizer):
    start = time.perf_counter()
    train = RLHFDataset(f"{gsm8k['train']}", tokenizer, max_prompt_length=512)
    seconds = time.perf_counter() - start
    print(f"RLHFDataset over GSM8K train ({len(train)} prompts): {seconds:.2f} s")
    assert len(train) == 7473 and train.num_filtered == 0
    assert seconds < 30  # a few seconds on 2 cores; generous for a loaded machine


def test_item_is_left_padded(test_split, tokenizer):
    assert len(test_split) == 1319
    item = test_split[3]
    expected = prompt_ids(tokenizer, item["raw_prompt"])
    pad = 256 - len(expected)
    assert item["input_ids"].shape == item["attention_mask"].shape == item["position_ids"].shape == (256,)
    assert item["input_ids"].dtype == torch.long
    assert item["input_ids"].tolist() == [tokenizer.pad_token_id] * pad + expected
    assert item["attention_mask"].tolist() == [0] * pad + [1] * len(expected)
    assert item["position_ids"].tolist() == [0] * pad + list(range(len(expected)))
    assert tokenizer.decode(item["input_ids"][pad:]).endswith("####\".<|im_end|>\n<|im_start|>assistant\n")
    assert item["data_source"] == "openai/gsm8k"
    assert item["index"] == item["extra_info"]["index"] == 3
    assert item["ground_truth"] == item["extra_info"]["answer"].split("#### ")[-1].replace(",", "")
    assert item["raw_prompt"][0]["role"] == "user" and item["raw_prompt"][0]["content"].startswith(item["extra_info"]["question"])


def test_filter_overlong_prompts(gsm8k, tokenizer, test_split):
    lengths = np.array([int(mask.sum()) for mask in (test_split[i]["attention_mask"] for i in range(len(test_split)))])
    limit = int(np.median(lengths))
    kept = RLHFDataset(str(gsm8k["test"]), tokenizer, max_prompt_length=limit)
    assert len(kept) == int((lengths <= limit).sum()) and kept.num_filtered == int((lengths > limit).sum()) > 0
    assert [kept[i]["index"] for i in range(len(kept))] == np.flatnonzero(lengths <= limit).tolist()


@pytest.mark.parametrize("truncation", ["left", "right", "middle"])
def test_truncation_modes(gsm8k, tokenizer, truncation):
    dataset = RLHFDataset(
        str(gsm8k["test"]), tokenizer, max_prompt_length=15, filter_overlong_prompts=False, truncation=truncation, max_samples=4
    )
    assert len(dataset) == 4
    for i in range(4):
        full = prompt_ids(tokenizer, dataset[i]["raw_prompt"])
        expected = {"left": full[-15:], "right": full[:15], "middle": full[:7] + full[-8:]}[truncation]
        assert dataset[i]["input_ids"].tolist() == expected
        assert dataset[i]["attention_mask"].tolist() == [1] * 15


def test_max_samples_first_rows_or_seeded_subset_as_verl(gsm8k, tokenizer):
    first = RLHFDataset(str(gsm8k["test"]), tokenizer, max_samples=5)
    assert [first[i]["index"] for i in range(5)] == [0, 1, 2, 3, 4]
    # verl 0.9.1 with data.shuffle=True: np.random.default_rng(seed).choice(total, size=max_samples, replace=False)
    subset = RLHFDataset(str(gsm8k["test"]), tokenizer, max_samples=5, shuffle=True, seed=3)
    expected = np.random.default_rng(3).choice(1319, size=5, replace=False).tolist()
    assert [subset[i]["index"] for i in range(5)] == expected
    assert len(RLHFDataset(str(gsm8k["test"]), tokenizer, max_samples=-1)) == 1319


def test_several_files_and_row_number_index(gsm8k, tokenizer, tmp_path):
    plain = write_rows(tmp_path / "plain.parquet", [row(extra_info=None), row("What is 3+3?", extra_info=None)])
    dataset = RLHFDataset([plain, str(gsm8k["test"])], tokenizer)
    assert len(dataset) == 2 + 1319
    assert [dataset[i]["index"] for i in range(3)] == [0, 1, 0]  # row number without extra_info.index
    assert dataset[0]["extra_info"] == {}


def test_home_is_expanded(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_rows(tmp_path / "small.parquet", [row()])
    assert len(RLHFDataset("~/small.parquet", tokenizer)) == 1


def test_collate(test_split):
    batch = collate([test_split[i] for i in range(4)])
    assert isinstance(batch, Batch) and len(batch) == 4
    assert sorted(batch.tensors) == ["attention_mask", "position_ids", "prompts"]
    assert batch["prompts"].shape == (4, 256)
    assert sorted(batch.non_tensors) == ["data_source", "extra_info", "ground_truth", "index", "raw_prompt"]
    for column in batch.non_tensors.values():
        assert column.dtype == object and column.shape == (4,)
    assert batch["raw_prompt"][2] == test_split[2]["raw_prompt"]


# ---- one-line user errors -------------------------------------------------------------------------------------


def one_line_error(match, *args, **kwargs):
    with pytest.raises(UserError, match=match) as error:
        RLHFDataset(*args, **kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_missing_and_unreadable_files(tmp_path, tokenizer):
    one_line_error(r"data file .*nope\.parquet does not exist", str(tmp_path / "nope.parquet"), tokenizer)
    (tmp_path / "junk.parquet").write_bytes(b"not a parquet file")
    one_line_error(r"cannot read .*junk\.parquet as parquet", str(tmp_path / "junk.parquet"), tokenizer)


def test_missing_columns(tmp_path, tokenizer):
    path = write_rows(tmp_path / "q.parquet", [row()])
    message = one_line_error(r"q\.parquet has no prompt column 'question' \(columns: data_source, prompt, ", path, tokenizer, prompt_key="question")
    assert "data.prompt_key" in message
    for column in ("reward_model", "data_source"):
        rows = [{k: v for k, v in row().items() if k != column}]
        one_line_error(rf"has no '{column}' column", write_rows(tmp_path / f"no_{column}.parquet", rows), tokenizer)


@pytest.mark.parametrize(
    "rows, culprit",
    [
        # arrow gives every row of a column one type, so a dict lacking ground_truth reads back as ground_truth=None
        ([row(), row(reward_model={"style": "rule"})], r"row 1: reward_model is \{'style': 'rule', 'ground_truth': None\}"),
        ([row(reward_model="4")], r"row 0: reward_model is '4'; it must be a dict with a 'ground_truth'"),
        ([row(prompt="What is 2+2?")], r"row 0: column 'prompt' holds 'What is 2\+2\?', not a list of"),
    ],
)
def test_malformed_rows(tmp_path, tokenizer, rows, culprit):
    one_line_error(rf"bad\.parquet {culprit}", write_rows(tmp_path / "bad.parquet", rows), tokenizer)


def test_empty_dataset(tmp_path, tokenizer):
    schema = pa.Table.from_pylist([row()]).schema
    pq.write_table(schema.empty_table(), tmp_path / "empty.parquet")
    one_line_error(r"empty\.parquet has no rows", str(tmp_path / "empty.parquet"), tokenizer)


def test_tokenizer_without_chat_template(tmp_path, tokenizer):
    plain = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = None
    path = write_rows(tmp_path / "ok.parquet", [row()])
    one_line_error(r"no chat template; use a chat/instruct model or set tokenizer.chat_template", path, plain)


def test_every_prompt_filtered(tmp_path, tokenizer):
    path = write_rows(tmp_path / "long.parquet", [row("short"), row("a bit longer than that")])
    longest = len(prompt_ids(tokenizer, row("a bit longer than that")["prompt"]))
    one_line_error(rf"all 2 prompts of .*long\.parquet .* longest {longest}\); raise data\.max_prompt_length", path, tokenizer, max_prompt_length=4)


def test_overlong_prompt_with_truncation_error(tmp_path, tokenizer):
    path = write_rows(tmp_path / "long.parquet", [row("hi"), row("a much longer question " * 5)])
    length = len(prompt_ids(tokenizer, row("a much longer question " * 5)["prompt"]))
    message = one_line_error(
        rf"long\.parquet row 1: prompt is {length} tokens > data\.max_prompt_length=20", path, tokenizer,
        max_prompt_length=20, filter_overlong_prompts=False,
    )
    assert "data.filter_overlong_prompts" in message and "data.truncation" in message


def test_bad_truncation_value(tmp_path, tokenizer):
    one_line_error(r"data\.truncation='both' is not one of error, left, right, middle", "unused.parquet", tokenizer, truncation="both")


# ---- the loader -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(gsm8k, tokenizer):
    return RLHFDataset(str(gsm8k["test"]), tokenizer, max_prompt_length=256, max_samples=50)


def rows_of(batches):
    return [batch["index"].tolist() for batch in batches]


def test_loader_lengths_and_epochs(small):
    train = PromptLoader(small, batch_size=8, seed=1)
    assert len(train) == 6  # 50 // 8, the last 2 rows dropped as verl's train loader does
    epoch0, epoch1 = list(train), list(train)
    assert [len(b) for b in epoch0] == [8] * 6 and train.state_dict() == {"epoch": 2, "batches_done_in_epoch": 0, "seed": 1}
    assert rows_of(epoch0) != rows_of(epoch1)
    order = np.random.default_rng([1, 1]).permutation(50)[:48].tolist()  # epoch 1's documented order
    assert sum(rows_of(epoch1), []) == order
    assert torch.equal(epoch0[0]["prompts"][0], small[int(epoch0[0]["index"][0])]["input_ids"])

    val = PromptLoader(small, batch_size=8, shuffle=False, drop_last=False)
    assert len(val) == 7
    assert sum(rows_of(val), []) == list(range(50))


@pytest.mark.parametrize("stop_after", [4, 6, 9])  # mid-epoch, exactly at the epoch boundary, in the next epoch
def test_loader_resumes_exactly(small, stop_after):
    def take(loader, n):
        out = []
        while len(out) < n:
            for batch in loader:
                out.append(batch)
                if len(out) == n:
                    break
        return out

    uninterrupted = take(PromptLoader(small, batch_size=8, seed=5), 20)

    first = PromptLoader(small, batch_size=8, seed=5)
    before = take(first, stop_after)
    state = first.state_dict()
    resumed = PromptLoader(small, batch_size=8, seed=123)  # the saved seed wins
    resumed.load_state_dict(state)
    after = take(resumed, 20 - stop_after)

    assert rows_of(before + after) == rows_of(uninterrupted)
    for a, b in zip(before + after, uninterrupted):
        assert torch.equal(a["prompts"], b["prompts"])


def test_loader_errors(small):
    with pytest.raises(UserError, match=r"batch size 64 exceeds the 50 prompts .* lower data.train_batch_size"):
        PromptLoader(small, batch_size=64)
    loader = PromptLoader(small, batch_size=8)
    with pytest.raises(UserError, match=r"stopped at batch 9 of epoch 2, but an epoch now has 6 batches"):
        loader.load_state_dict({"epoch": 2, "batches_done_in_epoch": 9, "seed": 0})
