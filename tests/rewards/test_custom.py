"""Custom reward functions: real files in tmp_path, loaded the way the trainer loads them."""

import textwrap

import pytest
from omegaconf import OmegaConf

from rl_trainer.errors import UserError
from rl_trainer.rewards.custom import custom_reward_config, get_custom_reward_fn, load_custom_reward_fn

REWARD_FILE = """
import math

def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return 1.0 if solution_str.strip() == ground_truth else 0.0

def with_metrics(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return {"score": 0.5, "length": len(solution_str), "index": extra_info["index"]}

def scaled(data_source, solution_str, ground_truth, extra_info=None, scale=1.0, bonus=0.0, **kwargs):
    return scale * float(solution_str == ground_truth) + bonus

def explode(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return {}["missing"]

def returns_text(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return "1.0"

def returns_nan(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return math.nan

def no_score_key(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return {"acc": 1.0}

def inf_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return {"score": float("inf")}

async def async_fn(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return 1.0

NOT_A_FUNCTION = 3
"""


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(REWARD_FILE)
    return str(path)


def _one_line_error(callable_, *args, **kwargs) -> UserError:
    with pytest.raises(UserError) as info:
        callable_(*args, **kwargs)
    assert "\n" not in str(info.value), str(info.value)
    return info.value


def test_float_return(reward_file):
    fn = load_custom_reward_fn(reward_file)  # name defaults to compute_score
    assert fn(data_source="any", solution_str=" 42 ", ground_truth="42") == 1.0
    assert fn("any", "41", "42", extra_info={}) == 0.0


def test_dict_return_keeps_extra_keys(reward_file):
    fn = load_custom_reward_fn(reward_file, "with_metrics")
    assert fn("any", "abc", "x", extra_info={"index": 7}) == {"score": 0.5, "length": 3, "index": 7}


@pytest.mark.parametrize("wrap", [dict, OmegaConf.create], ids=["dict", "DictConfig"])
@pytest.mark.parametrize("nested", [False, True], ids=["custom_reward_function", "reward.custom_reward_function"])
def test_config_lookup_and_reward_kwargs(reward_file, wrap, nested):
    section = {"path": reward_file, "name": "scaled", "reward_kwargs": {"scale": 3.0, "bonus": 0.5}}
    config = wrap({"reward": {"custom_reward_function": section}} if nested else {"custom_reward_function": section})
    fn = get_custom_reward_fn(config)
    # Correct: 3.0 * 1 + 0.5 = 3.5; wrong: 3.0 * 0 + 0.5 = 0.5.
    assert fn("any", "7", "7") == 3.5
    assert fn("any", "8", "7") == 0.5
    # As in verl, configured reward_kwargs win over the same kwarg given at call time.
    assert fn("any", "7", "7", scale=100.0) == 3.5
    assert type(fn.reward_kwargs) is dict


def test_config_defaults():
    assert get_custom_reward_fn({}) is None
    assert get_custom_reward_fn(OmegaConf.create({"custom_reward_function": {"path": None, "name": None}})) is None
    # verl's legacy section has name null; the name then defaults to compute_score.
    legacy = {"custom_reward_function": {"path": "r.py", "name": None}}
    assert custom_reward_config(legacy) == ("r.py", "compute_score", {})
    struct = OmegaConf.create({"reward": {"custom_reward_function": {"path": "r.py"}}})
    OmegaConf.set_struct(struct, True)  # missing keys must not raise in struct mode
    assert custom_reward_config(struct) == ("r.py", "compute_score", {})


def test_conflicting_paths():
    config = {"custom_reward_function": {"path": "a.py"}, "reward": {"custom_reward_function": {"path": "b.py"}}}
    error = _one_line_error(custom_reward_config, config)
    assert "'a.py'" in str(error) and "'b.py'" in str(error)


def test_pkg_path_loads_a_module_function():
    fn = load_custom_reward_fn("pkg://rl_trainer.rewards.registry", "default_compute_score")
    assert fn("openai/gsm8k", "#### 5", "5") == 1.0


def test_missing_file(tmp_path):
    missing = str(tmp_path / "nope.py")
    error = _one_line_error(load_custom_reward_fn, missing)
    assert missing in str(error) and "no such file" in str(error)


@pytest.mark.parametrize(
    "source, culprit",
    [
        ("import not_a_real_module_xyz\n", "ModuleNotFoundError"),
        ("def compute_score(:\n", "SyntaxError"),
        ("x = 1\nraise RuntimeError('bad\\nsetup')\n", "RuntimeError"),
    ],
)
def test_import_error(tmp_path, source, culprit):
    path = tmp_path / "broken.py"
    path.write_text(source)
    error = _one_line_error(load_custom_reward_fn, str(path))
    assert str(path) in str(error) and culprit in str(error)
    assert error.__cause__ is not None and type(error.__cause__).__name__ == culprit


def test_missing_function_lists_what_the_file_defines(reward_file):
    error = _one_line_error(load_custom_reward_fn, reward_file, "compute_reward")
    message = str(error)
    assert "'compute_reward'" in message and reward_file in message
    # Functions defined in the file are listed; the imported `math` module and the constant are not.
    assert "compute_score, explode," in message and "with_metrics" in message
    assert "math" not in message.split("defines:")[1] and "NOT_A_FUNCTION" not in message
    # A name that exists but is not callable is "missing" too.
    _one_line_error(load_custom_reward_fn, reward_file, "NOT_A_FUNCTION")


def test_async_function_is_rejected(reward_file):
    error = _one_line_error(load_custom_reward_fn, reward_file, "async_fn")
    assert "async_fn" in str(error)


def test_raising_function(reward_file):
    fn = load_custom_reward_fn(reward_file, "explode")
    error = _one_line_error(fn, "openai/gsm8k", "#### 1", "1")
    message = str(error)
    assert f"{reward_file}:explode" in message
    assert "KeyError" in message and "'openai/gsm8k'" in message
    assert "my_reward.py:14" in message  # the line of `return {}["missing"]` in REWARD_FILE
    assert isinstance(error.__cause__, KeyError)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("returns_text", "str '1.0'"),
        ("returns_nan", "nan"),
        ("no_score_key", "without a 'score' key"),
        ("inf_score", "inf"),
    ],
)
def test_bad_return_values(reward_file, name, expected):
    fn = load_custom_reward_fn(reward_file, name)
    error = _one_line_error(fn, "my/data", "x", "y")
    message = str(error)
    assert f"{reward_file}:{name}" in message and "'my/data'" in message and expected in message


def test_file_with_a_dataclass_and_helpers(tmp_path):
    # A realistic reward file: helpers and a dataclass under postponed annotations (which looks the
    # class's module up in sys.modules while the file is being imported).
    path = tmp_path / "rich.py"
    path.write_text(
        textwrap.dedent(
            """
            from __future__ import annotations

            from dataclasses import dataclass

            @dataclass
            class Weights:
                correct: float = 1.0

            def _normalise(text):
                return text.strip().lower()

            def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
                return Weights().correct * (_normalise(solution_str) == _normalise(ground_truth))
            """
        )
    )
    fn = load_custom_reward_fn(str(path))
    assert fn("qa", " Paris", "paris") == 1.0
    assert fn("qa", "Rome", "paris") == 0.0
