"""The classic RLHF pipeline on the digit-sort task, every stage through the project's own CLIs, and its table.

    python examples/rlhf/pipeline.py OUT_DIR [--sft-steps 25] [--pair-prompts 8000] [--rm-model builtin:tiny-sort-rm]
                                         [--rm-epochs 2] [--rm-lr 5e-4] [--rl-steps 20]

1. data   rl_trainer.data.digit_sort: SFT demonstrations, RL prompts (train) and 200 held-out test prompts
2. SFT    python -m rl_trainer.sft on builtin:tiny-sort (random init), deliberately short (25 steps) so that RL has
          room to climb -> greedy accuracy on the test prompts
3. pairs  8 samples (temperature 1) per prompt of --pair-prompts train prompts from the SFT model, labelled by the
          rule checker (synthetic human feedback): (correct, wrong) pairs; the last 20 % of the prompts give the
          held-out pairs
4. RM     python -m rl_trainer.rm on builtin:tiny-sort-rm (random init, 4x the policy's parameters; --rm-model sft
          starts from the SFT model instead: as accurate on the held-out pairs, but RL games it, docs/rlhf.md)
          -> pairwise accuracy on the held-out pairs (val/accuracy)
5. RL     python -m rl_trainer.main, GRPO with reward_model.enable=true (the RM is the only training reward; the
          rule checker only scores validation) -> greedy accuracy on the test prompts before and after
Prints the table and writes OUT_DIR/table.json. The rule checker never rewards training.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import datasets

from rl_trainer.data import digit_sort
from rl_trainer.tracking import read_metrics


def sh(module: str, args: list[str], log: Path) -> None:
    command = [sys.executable, "-m", module, *args]
    print("$", " ".join(command), flush=True)
    with open(log, "w") as f:
        proc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"pipeline: {module} failed (exit {proc.returncode}); see {log}")


def greedy_accuracy(model_dir: Path, prompts: list[str]) -> float:
    responses = digit_sort.sample_responses(model_dir, prompts, 1, 0.0)
    return digit_sort.accuracy(prompts, [r[0] for r in responses])


def sft(out: Path, data: dict, steps: int) -> Path:
    sh("rl_trainer.sft", [f"data.train_files={data['sft_train']}", f"data.val_files={data['sft_val']}",
                          "model.path=builtin:tiny-sort", "data.train_batch_size=32", "data.micro_batch_size_per_gpu=32",
                          "data.max_length=16", "optim.lr=3e-3", f"trainer.total_training_steps={steps}",
                          "trainer.total_epochs=100", "trainer.logger=[]", "trainer.resume_mode=disable",
                          f"trainer.default_local_dir={out}/sft"], out / "sft.log")
    return out / "sft" / f"global_step_{steps}" / "hf_model"


def pairs(out: Path, sft_model: Path, prompt_count: int) -> dict[str, Path]:
    prompts = digit_sort.prompt_splits(train=prompt_count)["train"]
    samples = digit_sort.sample_responses(sft_model, prompts, 8, 1.0, batch=1024)
    cut = int(0.8 * len(prompts))
    paths = {}
    for split, rows in (("train", digit_sort.preference_pairs(prompts[:cut], samples[:cut], 6)),
                        ("val", digit_sort.preference_pairs(prompts[cut:], samples[cut:], 2, seed=1))):
        paths[split] = out / f"pairs_{split}.parquet"
        datasets.Dataset.from_list(rows).to_parquet(paths[split])
        print(f"{split} pairs: {len(rows)}", flush=True)
    return paths


def reward_model(out: Path, base: str, pair_files: dict, epochs: int, lr: float) -> tuple[Path, float]:
    sh("rl_trainer.rm", [f"data.train_files={pair_files['train']}", f"data.val_files={pair_files['val']}",
                         f"model.path={base}", "data.train_batch_size=64", "data.micro_batch_size_per_gpu=64",
                         "data.max_length=16", f"optim.lr={lr}", f"trainer.total_epochs={epochs}", "trainer.logger=[]",
                         "trainer.resume_mode=disable", f"trainer.default_local_dir={out}/rm"], out / "rm.log")
    last = read_metrics(out / "rm")[-1]
    return out / "rm" / f"global_step_{last['step']}" / "hf_model", last["val/accuracy"]


def rl(out: Path, data: dict, sft_model: Path, rm_model: Path, steps: int) -> Path:
    sh("rl_trainer.main", [
        f"actor_rollout_ref.model.path={sft_model}", f"data.train_files={data['rl_train']}",
        f"data.val_files={data['rl_test']}", "data.val_max_samples=-1", "data.max_prompt_length=8",
        "data.max_response_length=8", "data.train_batch_size=64", "actor_rollout_ref.rollout.n=8",
        "actor_rollout_ref.actor.ppo_mini_batch_size=16", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=64",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=64",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=64", "actor_rollout_ref.actor.optim.lr=5e-4",
        "reward_model.enable=true", f"reward_model.model.path={rm_model}", "reward_model.micro_batch_size_per_gpu=64",
        f"trainer.total_training_steps={steps}", "trainer.total_epochs=100", "trainer.test_freq=5",
        f"trainer.save_freq={steps}", "trainer.val_before_train=true", "trainer.logger=[console]",
        "trainer.resume_mode=disable", f"trainer.default_local_dir={out}/rl", f"hydra.run.dir={out}/rl_run"],
        out / "rl.log")
    return out / "rl" / f"global_step_{steps}" / "actor" / "huggingface"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--sft-steps", type=int, default=25)
    parser.add_argument("--pair-prompts", type=int, default=8000)
    parser.add_argument("--rm-model", default="builtin:tiny-sort-rm",
                        help="the RM's starting point: a model path, builtin:<name>, or sft (the SFT model)")
    parser.add_argument("--rm-epochs", type=int, default=2)
    parser.add_argument("--rm-lr", type=float, default=5e-4)
    parser.add_argument("--rl-steps", type=int, default=20)
    args = parser.parse_args()
    out = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    test = digit_sort.prompt_splits()["test"]
    table, clock = {}, time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        table[f"seconds/{name}"] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    data = digit_sort.write_pipeline_data(out / "data")
    sft_model = sft(out, data, args.sft_steps)
    table["sft/test_accuracy"] = greedy_accuracy(sft_model, test)
    stage("sft")
    pair_files = pairs(out, sft_model, args.pair_prompts)
    stage("pairs")
    rm_base = str(sft_model) if args.rm_model == "sft" else args.rm_model
    rm_model, table["rm/heldout_pairwise_accuracy"] = reward_model(out, rm_base, pair_files, args.rm_epochs, args.rm_lr)
    stage("rm")
    rl_model = rl(out, data, sft_model, rm_model, args.rl_steps)
    table["rl/test_accuracy_before"] = table["sft/test_accuracy"]
    table["rl/test_accuracy_after"] = greedy_accuracy(rl_model, test)
    stage("rl")
    (out / "table.json").write_text(json.dumps(table, indent=2))
    print("\nRLHF pipeline on digit-sort (200 held-out prompts, greedy)")
    for key, value in table.items():
        print(f"  {key:34s} {value}")


if __name__ == "__main__":
    main()
