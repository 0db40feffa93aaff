import pytest

from rl_trainer.errors import UserError
from rl_trainer.rewards import registry
from rl_trainer.rewards.registry import default_compute_score, register_reward_fn


def test_gsm8k_dispatch_returns_float():
    # "openai/gsm8k" -> rewards.gsm8k.compute_score; its int 0 for "no answer" becomes 0.0.
    assert default_compute_score("openai/gsm8k", "#### 1,234", "1234") == 1.0
    result = default_compute_score("openai/gsm8k", "no answer", "1234", extra_info={"index": 3})
    assert result == 0.0 and type(result) is float


def test_register_and_dispatch(monkeypatch):
    monkeypatch.setattr(registry, "_REWARD_FNS", dict(registry._REWARD_FNS))

    @register_reward_fn("toy/exact", "toy/exact-v2")
    def exact(solution_str, ground_truth):
        return {"score": float(solution_str == ground_truth), "length": len(solution_str)}

    assert default_compute_score("toy/exact", "abc", "abc") == {"score": 1.0, "length": 3}
    assert default_compute_score("toy/exact-v2", "ab", "abc") == {"score": 0.0, "length": 2}
    assert "toy/exact" in registry.registered_data_sources()

    # A second, different function for the same name is a programming error.
    with pytest.raises(ValueError, match="toy/exact"):
        register_reward_fn("toy/exact")(lambda s, g: 0.0)


def test_unknown_data_source_is_a_one_line_user_error():
    with pytest.raises(UserError) as info:
        default_compute_score("my/dataset", "#### 1", "1")
    message = str(info.value)
    assert "\n" not in message
    assert "'my/dataset'" in message
    assert "openai/gsm8k" in message  # lists what is registered
    assert "custom_reward_function.path" in message and "custom_reward_function.name" in message
