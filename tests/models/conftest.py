import pytest

from rl_trainer.models.builtin import ensure_builtin_model


@pytest.fixture(scope="session")
def builtin_cache(tmp_path_factory):
    # One cache per test session, shared with tests/data/test_rl_dataset.py (same path), so the model is built once.
    return tmp_path_factory.getbasetemp() / "rl_trainer_cache"


@pytest.fixture(scope="session")
def builtin_model_dir(builtin_cache):
    return ensure_builtin_model("tiny-qwen2", seed=0, cache_dir=builtin_cache)
