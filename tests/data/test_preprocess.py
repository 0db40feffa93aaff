"""examples/gsm8k/preprocess.py run as a user runs it: a real subprocess, offline, on the bundled copy."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rl_trainer.rewards.gsm8k import compute_score

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "examples" / "gsm8k" / "preprocess.py"

# verl's schema, column and field order included.
EXPECTED_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        (
            "extra_info",
            pa.struct(
                [("split", pa.string()), ("index", pa.int64()), ("answer", pa.string()), ("question", pa.string())]
            ),
        ),
    ]
)
FIRST_TRAIN_QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
INSTRUCTION = ' Let\'s think step by step and output the final answer after "####".'
FIRST_TRAIN_ANSWER = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)


def _run(tmp_path, *args):
    # Offline and with a private cache: proves the default path needs neither network nor ~/.cache.
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("preprocess")
    result = _run(tmp_path, "--local_save_dir", "out")
    assert result.returncode == 0, result.stderr
    return tmp_path / "out", result.stdout


def test_row_counts_and_report(preprocessed):
    out, stdout = preprocessed
    assert pq.read_metadata(out / "train.parquet").num_rows == 7473
    assert pq.read_metadata(out / "test.parquet").num_rows == 1319
    assert stdout.splitlines() == [
        f"train: {out / 'train.parquet'} (7473 rows)",
        f"test: {out / 'test.parquet'} (1319 rows)",
    ]


def test_schema_and_first_row(preprocessed):
    out, _ = preprocessed
    for split in ("train", "test"):
        schema = pq.read_schema(out / f"{split}.parquet")
        assert schema.remove_metadata() == EXPECTED_SCHEMA, split
    first = pq.read_table(out / "train.parquet").slice(0, 1).to_pylist()[0]
    assert first == {
        "data_source": "openai/gsm8k",
        "prompt": [
            {
                "role": "user",
                "content": FIRST_TRAIN_QUESTION + INSTRUCTION,
            }
        ],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": "72"},
        "extra_info": {"split": "train", "index": 0, "answer": FIRST_TRAIN_ANSWER, "question": FIRST_TRAIN_QUESTION},
    }


def test_every_ground_truth_is_reachable_by_the_scorer(preprocessed):
    out, _ = preprocessed
    for split, rows in (("train", 7473), ("test", 1319)):
        table = pq.read_table(out / f"{split}.parquet", columns=["reward_model", "extra_info"]).to_pylist()
        truths = [row["reward_model"]["ground_truth"] for row in table]
        # A perfect answer written in the requested format must earn the full score on every row.
        assert all(compute_score(f"#### {gt}", gt) == 1.0 for gt in truths), split
        assert [row["extra_info"]["index"] for row in table] == list(range(rows))
        assert {row["extra_info"]["split"] for row in table} == {split}


def test_deprecated_local_dir_and_local_dataset_path(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for split in ("train", "test"):
        (source / f"{split}.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    result = _run(tmp_path, "--local_dir", "old_style", "--local_dataset_path", str(source))
    assert result.returncode == 0, result.stderr
    assert "--local_dir is deprecated" in result.stderr
    rows = pq.read_table(tmp_path / "old_style" / "test.parquet").to_pylist()
    assert [row["reward_model"]["ground_truth"] for row in rows] == ["2"]


def test_bad_local_dataset_path_is_one_line(tmp_path):
    result = _run(tmp_path, "--local_save_dir", "out", "--local_dataset_path", "does/not/exist")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "does/not/exist" in result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
