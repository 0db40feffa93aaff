"""The SFT and reward-model CLIs end to end on built-in models: loss falls, both SFT spellings, 2 ranks (torchrun) equal
1 rank, resume is exact, the exported reward model loads with from_pretrained and scores as in training, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO
from rl_trainer.tracking import read_metrics

pytestmark = pytest.mark.slow


def run(module: str, overrides: list[str], cwd: Path, torchrun: int = 0) -> subprocess.CompletedProcess:
    from rl_trainer.workers.fsdp import free_port

    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun}",
                f"--master_port={free_port()[1]}", "-m"] if torchrun else [sys.executable, "-m"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, module, *overrides], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=env)


@pytest.fixture(scope="module")
def sort_data(tmp_path_factory):
    from rl_trainer.data.digit_sort import write_pipeline_data

    return write_pipeline_data(tmp_path_factory.mktemp("digit_sort"), sft_examples=64)


def sft_args(sort_data, out: Path, steps: int, *extra: str) -> list[str]:
    return [f"data.train_files={sort_data['sft_train']}", f"data.val_files={sort_data['sft_val']}",
            "data.val_max_samples=32", "model.path=builtin:tiny-sort", "data.train_batch_size=16",
            "data.micro_batch_size_per_gpu=4", "data.max_length=16", "optim.lr=3e-3", "trainer.logger=[]",
            f"trainer.total_training_steps={steps}", f"trainer.default_local_dir={out}", *extra]


def hf_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "hf_model" / "model.safetensors")


@pytest.fixture(scope="module")
def sft_run(sort_data, tmp_path_factory):
    """8 steps, one process, a checkpoint every 4 (the reference for the resume and 2-rank tests)."""
    out = tmp_path_factory.mktemp("sft_full")
    proc = run("rl_trainer.sft", sft_args(sort_data, out, 8, "trainer.save_freq=4"), out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_sft_loss_falls(sft_run):
    losses = [r["train/loss"] for r in read_metrics(sft_run)]
    assert len(losses) == 8 and max(losses[-2:]) < 0.8 * losses[0], losses
    val = [r["val/loss"] for r in read_metrics(sft_run) if "val/loss" in r]
    assert len(val) == 1 and val[0] < losses[0]  # at the last step only (trainer.test_freq=-1)


def test_sft_resume_is_exact(sort_data, sft_run, tmp_path):
    # a run stopped after step 4 (its checkpoint), then resumed (resume_mode=auto) to step 8: the same metrics, weights
    shutil.copytree(sft_run / "global_step_4", tmp_path / "global_step_4")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("4")
    proc = run("rl_trainer.sft", sft_args(sort_data, tmp_path, 8, "trainer.save_freq=4"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout
    resumed = {r["step"]: r["train/loss"] for r in read_metrics(tmp_path)}
    full = {r["step"]: r["train/loss"] for r in read_metrics(sft_run)}
    assert sorted(resumed) == [5, 6, 7, 8] and all(resumed[s] == full[s] for s in resumed)
    for name, tensor in hf_weights(tmp_path / "global_step_8").items():
        assert torch.equal(tensor, hf_weights(sft_run / "global_step_8")[name]), name


def test_sft_two_ranks_equal_one(sort_data, sft_run, tmp_path):
    proc = run("rl_trainer.sft", sft_args(sort_data, tmp_path, 8, "trainer.save_freq=4"), tmp_path, torchrun=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = read_metrics(tmp_path)
    one = read_metrics(sft_run)
    for a, b in zip(two, one):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)
        assert a["train/global_tokens"] == b["train/global_tokens"]
    for name, tensor in hf_weights(tmp_path / "global_step_8").items():
        # 8 Adam steps: the gradients agree to float rounding (losses to 1e-5), and Adam's division by sqrt(v) turns
        # rounding in near-zero gradients into weight differences of about 1e-5 (measured 1.3e-5 at most)
        torch.testing.assert_close(tensor, hf_weights(sft_run / "global_step_8")[name], rtol=1e-3, atol=5e-5)


def test_sft_older_spelling_on_gsm8k(gsm8k_dir, tiny_models, tmp_path):
    # The fsdp_sft_trainer command line of the GSM8K guides (with the `+` keys), on a tiny Qwen2 with GSM8K's tokenizer
    proc = run("rl_trainer.sft", [
        f"data.train_files={gsm8k_dir}/train.parquet", f"data.val_files={gsm8k_dir}/test.parquet",
        "data.prompt_key=extra_info", "data.response_key=extra_info", "+data.prompt_dict_keys=['question']",
        "+data.response_dict_keys=['answer']", "data.micro_batch_size_per_gpu=4", "data.train_batch_size=16",
        "data.train_max_samples=16", "data.val_max_samples=8", "data.max_length=512",
        f"model.partial_pretrain={tiny_models['qwen2']}", f"trainer.default_local_dir={tmp_path}/ckpt",
        "trainer.total_epochs=1", "trainer.total_training_steps=2", "trainer.logger=console"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step:2 - " in proc.stdout and "val/loss" in proc.stdout
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt" / "global_step_2" / "hf_model")


@pytest.fixture(scope="module")
def rm_pairs(tmp_path_factory) -> Path:
    """32 training and 16 validation pairs (string responses): the sorted digits over the prompt as written."""
    import datasets

    from rl_trainer.data.digit_sort import prompt_splits

    out = tmp_path_factory.mktemp("rm_pairs")
    prompts = prompt_splits()["train"][:48]
    rows = [{"prompt": p, "chosen": "".join(sorted(p)), "rejected": p if p != "".join(sorted(p)) else p + p[0]}
            for p in prompts]
    datasets.Dataset.from_list(rows[:32]).to_parquet(out / "pairs.parquet")
    datasets.Dataset.from_list(rows[32:]).to_parquet(out / "val.parquet")
    return out


def rm_args(rm_pairs: Path, sft_run: Path, out: Path) -> list[str]:
    return [f"data.train_files={rm_pairs}/pairs.parquet", f"data.val_files={rm_pairs}/val.parquet",
            f"model.path={sft_run}/global_step_8/hf_model", "data.train_batch_size=16", "data.micro_batch_size_per_gpu=4",
            "data.max_length=16", "trainer.total_epochs=2", "trainer.logger=[]", f"trainer.default_local_dir={out}"]


@pytest.fixture(scope="module")
def rm_run(rm_pairs, sft_run, tmp_path_factory) -> Path:
    """4 steps (32 pairs / 16 per step x 2 epochs), one process, from the SFT run's export."""
    out = tmp_path_factory.mktemp("rm_one_rank")
    proc = run("rl_trainer.rm", rm_args(rm_pairs, sft_run, out), out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_reward_model_export_scores_as_in_training(rm_pairs, rm_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rl_trainer.supervised import data as sdata
    from rl_trainer.supervised.tasks import RewardModelTask

    last = read_metrics(rm_run)[-1]
    export = rm_run / "global_step_4" / "hf_model"
    model = AutoModelForSequenceClassification.from_pretrained(export).eval()
    tokenizer = AutoTokenizer.from_pretrained(export)
    pairs = sdata.load_preference_pairs([str(rm_pairs / "val.parquet")], json_section(), tokenizer, -1, "val")
    with torch.no_grad():
        chosen = RewardModelTask.scores(model, [p.chosen for p in pairs], tokenizer.pad_token_id, torch.device("cpu"))
        rejected = RewardModelTask.scores(model, [p.rejected for p in pairs], tokenizer.pad_token_id,
                                          torch.device("cpu"))
    # the run's val metrics were computed by the sharded model at its last step, on the same 16 pairs
    assert last["val/chosen_reward"] == pytest.approx(chosen.mean().item(), abs=1e-5)
    assert last["val/reward_gap"] == pytest.approx((chosen - rejected).mean().item(), abs=1e-5)
    assert last["val/accuracy"] == pytest.approx((chosen > rejected).float().mean().item())


def test_reward_model_two_ranks_equal_one(rm_pairs, sft_run, rm_run, tmp_path):
    # torchrun x 2: each rank takes 8 of the 16 pairs of a step in 2 micro-batches of 4; the Bradley-Terry loss is
    # normalised by the global 16 pairs, so the summed gradients, the metrics and the weights are the one-rank run's
    proc = run("rl_trainer.rm", rm_args(rm_pairs, sft_run, tmp_path), tmp_path, torchrun=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two, one = read_metrics(tmp_path), read_metrics(rm_run)
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3, 4]
    for a, b in zip(two, one):
        for key in ("train/loss", "train/reward_gap"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
        assert a["train/accuracy"] == b["train/accuracy"]
    for key in ("val/loss", "val/accuracy", "val/reward_gap", "val/chosen_reward"):
        assert two[-1][key] == pytest.approx(one[-1][key], rel=1e-5, abs=1e-6), key
    for name, tensor in hf_weights(tmp_path / "global_step_4").items():
        # 4 Adam steps: as in the SFT test, float rounding in near-zero gradients gives weight differences ~1e-5
        torch.testing.assert_close(tensor, hf_weights(rm_run / "global_step_4")[name], rtol=1e-3, atol=5e-5)


def json_section():
    from omegaconf import OmegaConf

    return OmegaConf.create(dict(prompt_key="prompt", chosen_key="chosen", rejected_key="rejected", margin_key=None,
                                 max_length=16, truncation="error", apply_chat_template_kwargs={}))


@pytest.mark.parametrize("module, args, message", [
    ("rl_trainer.sft", ["data.messages_key=conversation"], "has no column 'conversation'"),
    ("rl_trainer.sft", ["+data.prompt_dict_key=['q']"], "data.prompt_dict_key: not a key of rl_trainer's sft_trainer"),
    ("rl_trainer.rm", ["data.chosen_key=better"], "has no column 'better'"),
])
def test_bad_input_one_line_exit_2_nothing_written(sort_data, tmp_path, module, args, message):
    files = [f"data.train_files={sort_data['sft_train' if module.endswith('sft') else 'rl_train']}"]
    proc = run(module, [*files, "model.path=builtin:tiny-sort", f"trainer.default_local_dir={tmp_path}/out", *args],
               tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and message in error_lines[0], proc.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == []
