"""GSM8K -> verl's RL parquet schema (what `examples/gsm8k/preprocess.py` and the default run produce).

One output row per problem, identical to verl's `examples/data_preprocess/gsm8k.py`:

    data_source   "openai/gsm8k"                 (selects the rule scorer, rl_trainer.rewards.gsm8k)
    prompt        [{"role": "user", "content": question + INSTRUCTION}]
    ability       "math"
    reward_model  {"style": "rule", "ground_truth": "<final number, commas removed>"}
    extra_info    {"split": "train"|"test", "index": row number, "answer": raw answer, "question": raw question}

The default source is the copy bundled in `rl_trainer/data/bundled/gsm8k/` (MIT, see its README), so this
works offline; "hub" downloads `openai/gsm8k` ("main" config) through `datasets`.
"""

import os
import re
from pathlib import Path
from typing import Any

import datasets

from rl_trainer.data.parquet import write_parquet_splits
from rl_trainer.errors import UserError

DATA_SOURCE = "openai/gsm8k"
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled" / "gsm8k"
SPLITS = ("train", "test")
INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'

# The dataset's answers end with "#### <number>"; same pattern as verl's preprocess (first match).
_FINAL_ANSWER = re.compile(r"#### (\-?[0-9\.\,]+)")


def load_gsm8k(source: str | os.PathLike = "bundled") -> datasets.DatasetDict:
    """GSM8K as a DatasetDict with "train" and "test" splits of {"question", "answer"}.

    source: "bundled" (the copy shipped with rl_trainer), "hub" (`openai/gsm8k`, needs network), or a
    local directory holding either train.jsonl + test.jsonl, or a download of the hub dataset repo.
    """
    if str(source) == "bundled":
        return _load_jsonl_dir(BUNDLED_DIR)
    if str(source) == "hub":
        try:
            return datasets.load_dataset(DATA_SOURCE, "main")
        except Exception as e:
            raise UserError(
                f"loading {DATA_SOURCE} from the Hugging Face Hub failed ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no message'}); drop --source hub to use "
                f"the bundled copy, or pass --local_dataset_path"
            ) from e

    local = Path(source).expanduser()
    if not local.is_dir():
        raise UserError(
            f"GSM8K source {str(source)!r} is not 'bundled', 'hub' or an existing directory; "
            f"pass a directory with train.jsonl and test.jsonl (or a download of {DATA_SOURCE})"
        )
    if all((local / f"{split}.jsonl").is_file() for split in SPLITS):
        return _load_jsonl_dir(local)
    # A local download of the hub repo: its README declares the "main" and "socratic" configs.
    try:
        loaded = datasets.load_dataset(str(local), "main")
    except Exception as e:
        raise UserError(
            f"--local_dataset_path {local}: datasets could not load the 'main' config "
            f"({type(e).__name__}); point it at a download of {DATA_SOURCE} or a directory with "
            f"train.jsonl and test.jsonl"
        ) from e
    _check_splits(loaded, local)
    return loaded


def extract_ground_truth(answer: str, where: str = "GSM8K answer") -> str:
    """The final number of a GSM8K answer ("...\\n#### 1,080" -> "1080"), as verl's preprocess computes it."""
    match = _FINAL_ANSWER.search(answer)
    if match is None:
        raise UserError(f"{where} has no '#### <number>' line (ends {answer[-60:]!r}); fix or drop that row")
    return match.group(1).replace(",", "")


def to_verl_row(example: dict[str, Any], index: int, split: str) -> dict[str, Any]:
    """One GSM8K example {"question", "answer"} -> one row of the verl schema (see the module docstring)."""
    question, answer = example["question"], example["answer"]
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": question + " " + INSTRUCTION}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": extract_ground_truth(answer, f"GSM8K {split} row {index}")},
        "extra_info": {"split": split, "index": index, "answer": answer, "question": question},
    }


def convert_gsm8k(raw: datasets.DatasetDict) -> datasets.DatasetDict:
    """Map every split of `raw` to the verl schema, keeping only the five verl columns."""
    return datasets.DatasetDict(
        {
            split: raw[split].map(
                to_verl_row,
                with_indices=True,
                fn_kwargs={"split": split},
                remove_columns=raw[split].column_names,
                desc=f"gsm8k {split}",
            )
            for split in SPLITS
        }
    )


def write_gsm8k_parquet(
    out_dir: str | os.PathLike,
    source: str | os.PathLike = "bundled",
    overwrite: bool = True,
) -> dict[str, Path]:
    """Write `train.parquet` and `test.parquet` (verl schema) into `out_dir`; return {split: path}.

    Crash-safe, and with overwrite=False existing files are kept (rl_trainer.data.parquet.write_parquet_splits).
    """
    return write_parquet_splits(out_dir, SPLITS, lambda: convert_gsm8k(load_gsm8k(source)), overwrite=overwrite)


def _load_jsonl_dir(directory: Path) -> datasets.DatasetDict:
    data_files = {split: str(directory / f"{split}.jsonl") for split in SPLITS}
    missing = [path for path in data_files.values() if not os.path.isfile(path)]
    if missing:
        raise UserError(f"GSM8K file {missing[0]} is missing; restore it or pass another source")
    loaded = datasets.load_dataset("json", data_files=data_files)
    _check_splits(loaded, directory)
    return loaded


def _check_splits(loaded: datasets.DatasetDict, where: Path) -> None:
    for split in SPLITS:
        if split not in loaded:
            raise UserError(f"GSM8K at {where} has no {split!r} split (found {list(loaded)}); provide train and test")
        missing = {"question", "answer"} - set(loaded[split].column_names)
        if missing:
            raise UserError(
                f"GSM8K {split} split at {where} lacks column(s) {sorted(missing)}; "
                f"each row needs 'question' and 'answer'"
            )
