"""rl_trainer.workers.loading: a path from_pretrained cannot read is one line naming the key; real errors propagate."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from rl_trainer.errors import UserError
from rl_trainer.workers.loading import load_causal_lm, load_tokenizer, load_value_model

_REMOTE_CONFIG = '''from transformers import PretrainedConfig


class FailingConfig(PretrainedConfig):
    model_type = "failing-test-model"
'''
_REMOTE_MODEL = '''import torch
from transformers import PreTrainedModel

from .configuration_failing import FailingConfig


class FailingModel(PreTrainedModel):
    config_class = FailingConfig

    def __init__(self, config):
        super().__init__(config)
        raise {error}
'''


def _one_line_error(call, *needles: str) -> str:
    with pytest.raises(UserError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message
    return message


def test_a_directory_that_is_not_a_model_is_one_line_naming_the_key(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    _one_line_error(lambda: load_causal_lm(str(tmp_path)), f"actor_rollout_ref.model.path={tmp_path}",
                    "cannot load it as a Hugging Face local directory")
    _one_line_error(lambda: load_tokenizer(str(tmp_path)), f"actor_rollout_ref.model.path={tmp_path}")
    _one_line_error(lambda: load_value_model(str(tmp_path)), f"critic.model.path={tmp_path}")


def test_a_missing_path_is_one_line(tmp_path):
    missing = tmp_path / "nowhere"
    _one_line_error(lambda: load_causal_lm(str(missing)), f"actor_rollout_ref.model.path={missing}",
                    "hub id or local directory")


def test_a_corrupt_weights_file_is_one_line(tmp_path, tiny_models):
    shutil.copy(tiny_models["llama"] / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 16)
    _one_line_error(lambda: load_causal_lm(str(tmp_path)), "SafetensorError")


def test_a_model_type_without_a_value_head_is_one_line(tmp_path):
    from transformers import OPTConfig  # OPT has no AutoModelForTokenClassification

    OPTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32).save_pretrained(tmp_path)
    _one_line_error(lambda: load_value_model(str(tmp_path)), f"critic.model.path={tmp_path}",
                    "'opt' has no AutoModelForTokenClassification")


@pytest.mark.parametrize("error, raised", [
    ('torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")', torch.OutOfMemoryError),
    ('ValueError("a bug in the model code")', ValueError),
    ('AttributeError("a bug in the model code")', AttributeError),
])
def test_an_error_while_building_the_model_propagates(tmp_path, error, raised):
    # A real model directory (remote code, loaded with trust_remote_code) whose model fails while it is built:
    # from_pretrained did read the directory, so this is not "cannot load it as a Hugging Face directory".
    config = {"model_type": "failing-test-model", "architectures": ["FailingModel"],
              "auto_map": {"AutoConfig": "configuration_failing.FailingConfig",
                           "AutoModelForCausalLM": "modeling_failing.FailingModel"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "configuration_failing.py").write_text(_REMOTE_CONFIG)
    (tmp_path / "modeling_failing.py").write_text(_REMOTE_MODEL.format(error=error))
    save_file({"unused": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(raised, match="out of memory|a bug in the model code") as err:
        load_causal_lm(str(tmp_path), trust_remote_code=True)
    assert not isinstance(err.value, UserError)


def test_the_tiny_models_still_load(tiny_models):
    model = load_causal_lm(str(tiny_models["qwen2"]))
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert load_value_model(str(tiny_models["llama"])).config.num_labels == 1


def test_gradient_checkpointing_is_on_only_when_asked(tiny_models):
    """model.enable_gradient_checkpointing: the decoder layers recompute their activations in the backward pass
    (transformers marks each such layer `gradient_checkpointing = True`)."""
    def checkpointed(model) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in model.modules())

    assert not checkpointed(load_causal_lm(str(tiny_models["qwen2"])))
    assert checkpointed(load_causal_lm(str(tiny_models["qwen2"]), gradient_checkpointing=True))
    assert checkpointed(load_value_model(str(tiny_models["llama"]), gradient_checkpointing=True))
