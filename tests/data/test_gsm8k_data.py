"""GSM8K conversion as library code: row mapping, sources, atomic writes (small local copies, in-process)."""

import json
import textwrap

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rl_trainer.data import gsm8k
from rl_trainer.data.gsm8k import extract_ground_truth, load_gsm8k, to_verl_row, write_gsm8k_parquet
from rl_trainer.errors import UserError

TRAIN = [
    {"question": "What is 2+2?", "answer": "2+2=<<2+2=4>>4\n#### 4"},
    {"question": "How many cents?", "answer": "Lots.\n#### 1,080"},
]
TEST = [{"question": "Below zero?", "answer": "It drops.\n#### -10"}]


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    # Keep datasets' cache for these tiny files out of the user's home.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


@pytest.fixture
def jsonl_dir(tmp_path):
    directory = tmp_path / "gsm8k_jsonl"
    directory.mkdir()
    for split, rows in (("train", TRAIN), ("test", TEST)):
        (directory / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return directory


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("48+24 = <<48+24=72>>72\n#### 72", "72"),
        ("#### 1,080", "1080"),  # thousands commas are removed
        ("#### -10", "-10"),
        ("#### 0.5", "0.5"),
    ],
)
def test_extract_ground_truth(answer, expected):
    assert extract_ground_truth(answer) == expected


def test_extract_ground_truth_without_marker():
    with pytest.raises(UserError, match="GSM8K train row 3 has no '#### <number>' line"):
        to_verl_row({"question": "q", "answer": "the answer is 5"}, 3, "train")


def test_to_verl_row():
    row = to_verl_row(TRAIN[1], 1, "train")
    assert row == {
        "data_source": "openai/gsm8k",
        "prompt": [
            {
                "role": "user",
                "content": 'How many cents? Let\'s think step by step and output the final answer after "####".',
            }
        ],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": "1080"},
        "extra_info": {"split": "train", "index": 1, "answer": "Lots.\n#### 1,080", "question": "How many cents?"},
    }


def test_write_from_local_jsonl_dir(tmp_path, jsonl_dir):
    paths = write_gsm8k_parquet(tmp_path / "out", source=jsonl_dir)
    assert paths == {"train": tmp_path / "out" / "train.parquet", "test": tmp_path / "out" / "test.parquet"}
    test_rows = pq.read_table(paths["test"]).to_pylist()
    assert test_rows == [to_verl_row(TEST[0], 0, "test")]
    assert [r["reward_model"]["ground_truth"] for r in pq.read_table(paths["train"]).to_pylist()] == ["4", "1080"]
    # Only the final files are left behind.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test.parquet", "train.parquet"]


def test_load_a_local_download_of_the_hub_repo(tmp_path):
    # The layout of a snapshot of openai/gsm8k: a README declaring the "main" config and parquet shards.
    repo = tmp_path / "gsm8k_hub"
    (repo / "main").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(TRAIN), repo / "main" / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(TEST), repo / "main" / "test-00000-of-00001.parquet")
    (repo / "README.md").write_text(
        textwrap.dedent(
            """\
            ---
            configs:
            - config_name: main
              data_files:
              - split: train
                path: main/train-*
              - split: test
                path: main/test-*
            ---
            """
        )
    )
    loaded = load_gsm8k(repo)
    assert loaded["train"].to_list() == TRAIN and loaded["test"].to_list() == TEST


def test_hub_source_calls_datasets_and_wraps_failures(monkeypatch):
    calls = []

    def offline_load_dataset(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub\n(more detail)")

    monkeypatch.setattr(gsm8k.datasets, "load_dataset", offline_load_dataset)
    with pytest.raises(UserError) as info:
        load_gsm8k("hub")
    assert calls == [("openai/gsm8k", "main")]
    assert "\n" not in str(info.value) and "ConnectionError" in str(info.value) and "bundled" in str(info.value)


def test_bad_sources(tmp_path, jsonl_dir):
    with pytest.raises(UserError, match="not 'bundled', 'hub' or an existing directory"):
        load_gsm8k(tmp_path / "missing")
    (jsonl_dir / "test.jsonl").unlink()
    (jsonl_dir / "train.jsonl").rename(jsonl_dir / "other.jsonl")
    with pytest.raises(UserError, match="could not load the 'main' config"):
        load_gsm8k(jsonl_dir)


def test_interrupted_write_leaves_no_parquet(tmp_path, jsonl_dir, monkeypatch):
    out = tmp_path / "out"

    def write_half_then_die(self, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PAR1 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets.Dataset, "to_parquet", write_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        write_gsm8k_parquet(out, source=jsonl_dir)
    assert list(out.iterdir()) == []  # neither train.parquet nor the temporary file


def test_overwrite_false_keeps_existing_files(tmp_path, jsonl_dir, monkeypatch):
    out = tmp_path / "out"
    write_gsm8k_parquet(out, source=jsonl_dir)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    def fail(*args, **kwargs):
        raise AssertionError("should not reload the dataset")

    monkeypatch.setattr(gsm8k, "load_gsm8k", fail)
    assert write_gsm8k_parquet(out, source=jsonl_dir, overwrite=False)["train"] == out / "train.parquet"
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
