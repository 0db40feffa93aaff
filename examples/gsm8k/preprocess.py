"""Write GSM8K as train.parquet / test.parquet in verl's schema (same flags as verl's data_preprocess/gsm8k.py).

    python examples/gsm8k/preprocess.py --local_save_dir ~/data/gsm8k                 # bundled copy, offline
    python examples/gsm8k/preprocess.py --local_save_dir DIR --local_dataset_path SRC  # a local download
    python examples/gsm8k/preprocess.py --local_save_dir DIR --source hub              # openai/gsm8k from the Hub

The conversion itself lives in rl_trainer/data/gsm8k.py.
"""

import argparse
import sys

import pyarrow.parquet as pq

from rl_trainer.data.gsm8k import write_gsm8k_parquet
from rl_trainer.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--local_save_dir", default="~/data/gsm8k", help="where train/test.parquet go (default ~/data/gsm8k)"
    )
    parser.add_argument("--local_dir", default=None, help="deprecated alias of --local_save_dir (verl's old name)")
    parser.add_argument(
        "--local_dataset_path",
        default=None,
        help="read GSM8K from this directory (train.jsonl + test.jsonl, or a download of openai/gsm8k)",
    )
    parser.add_argument(
        "--source",
        choices=["bundled", "hub"],
        default="bundled",
        help="bundled: the copy shipped with rl_trainer (default, offline); hub: openai/gsm8k via datasets",
    )
    args = parser.parse_args(argv)

    save_dir = args.local_save_dir
    if args.local_dir is not None:
        print("preprocess: --local_dir is deprecated, use --local_save_dir", file=sys.stderr)
        save_dir = args.local_dir
    source = args.local_dataset_path if args.local_dataset_path is not None else args.source

    try:
        paths = write_gsm8k_parquet(save_dir, source=source)
    except UserError as e:
        print(f"preprocess: error: {e}", file=sys.stderr)
        return 2
    for split, path in paths.items():
        print(f"{split}: {path} ({pq.read_metadata(path).num_rows} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
