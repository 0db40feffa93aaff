"""Shared fixtures: an isolated environment, small local models, GSM8K parquet, and a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two test processes share two cores (scripts/test.sh), so a test's OpenMP threads often wait for a core the other
    # test holds. OpenMP's default is to spin while it waits, which turns the wait into a contest for the same cores;
    # PASSIVE threads sleep instead. Set before anything here loads torch's OpenMP, which reads it once; the Ray
    # heads, CLI runs and workers a test starts inherit it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory):
    """Caches, Ray and wandb write under the test session's temp dir, never to ~."""
    base = tmp_path_factory.getbasetemp()
    ray_tmp = Path("/tmp") / f"rlt-ray-{os.getpid()}"  # Ray's socket paths must stay short
    ray_tmp.mkdir(exist_ok=True)
    env = {
        "RL_TRAINER_CACHE": str(base / "rl_trainer_cache"),
        "HF_HOME": str(base / "hf_home"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "RAY_TMPDIR": str(ray_tmp),
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(base / "wandb"),
        "WANDB_CACHE_DIR": str(base / "wandb_cache"),
        "WANDB_CONFIG_DIR": str(base / "wandb_config"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    from helpers import stop_shared_ray

    stop_shared_ray()
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Local HF directories of a tiny Qwen2 and a tiny Llama sharing the built-in GSM8K tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from rl_trainer.models.builtin import ensure_builtin_model

    tokenizer = AutoTokenizer.from_pretrained(ensure_builtin_model("tiny-qwen2", seed=0))
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    out = {}
    for arch, config_cls, model_cls, extra in (
        ("qwen2", Qwen2Config, Qwen2ForCausalLM, dict(tie_word_embeddings=True)),
        ("llama", LlamaConfig, LlamaForCausalLM, dict(tie_word_embeddings=False)),
    ):
        import torch

        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(f"tiny-{arch}")
        model_cls(config_cls(**common, **extra)).save_pretrained(path)
        tokenizer.save_pretrained(path)
        out[arch] = path
    return out


@pytest.fixture(scope="session")
def gsm8k_dir(tmp_path_factory):
    from rl_trainer.data.gsm8k import write_gsm8k_parquet

    path = tmp_path_factory.mktemp("gsm8k")
    write_gsm8k_parquet(path)
    return path


@pytest.fixture(scope="session")
def length_reward(tmp_path_factory):
    """A custom reward with signal for a random model: 1 for responses of at most 8 tokens' worth of text."""
    path = tmp_path_factory.mktemp("reward") / "length_reward.py"
    path.write_text(
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):\n"
        "    return {'score': float(len(solution_str) % 3 == 0), 'length': len(solution_str)}\n"
    )
    return path


@pytest.fixture
def shared_ray() -> dict:
    """run_cli's `env` to join the session's shared Ray head (helpers.shared_ray_env)."""
    from helpers import shared_ray_env

    return shared_ray_env()


@pytest.fixture
def own_ray() -> None:
    """For a test that starts its own Ray, or asserts that no Ray runs: the shared head is stopped first."""
    from helpers import stop_shared_ray

    stop_shared_ray()
