"""The built-in tiny Qwen2: exact shape, a tokenizer that survives reload, generation, and a race-safe cache."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2ForCausalLM

from rl_trainer.cache import cache_root
from rl_trainer.data.gsm8k import BUNDLED_DIR
from rl_trainer.errors import UserError
from rl_trainer.models import builtin
from rl_trainer.models.builtin import BUILTIN_PREFIX, critic_tokenizer_dir, ensure_builtin_model, resolve_model_path

MESSAGES = [{"role": "user", "content": "What is 12+30?"}]


@pytest.fixture(scope="module")
def tokenizer(builtin_model_dir):
    return AutoTokenizer.from_pretrained(builtin_model_dir)


@pytest.fixture(scope="module")
def model(builtin_model_dir):
    return AutoModelForCausalLM.from_pretrained(builtin_model_dir)


def test_config_is_the_benchmark_shape(model):
    config = model.config
    assert config.model_type == "qwen2"
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (256, 688, 4)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert (config.vocab_size, config.max_position_embeddings, config.tie_word_embeddings) == (4096, 1024, True)
    assert (config.eos_token_id, config.pad_token_id) == (0, 0)
    assert model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    # 4096*256 embeddings + 4 layers * (q,o 256*256 + k,v 256*128 + biases 256+2*128 + mlp 3*256*688 + 2 norms 256) + norm
    layer = 2 * 256 * 256 + 2 * 256 * 128 + (256 + 128 + 128) + 3 * 256 * 688 + 2 * 256
    assert sum(p.numel() for p in model.parameters()) == 4096 * 256 + 4 * layer + 256


def test_weights_are_the_seeded_init(builtin_model_dir, model):
    torch.manual_seed(0)
    fresh = Qwen2ForCausalLM(builtin.tiny_qwen2_config())
    loaded = model.state_dict()
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, loaded[name]), name
    assert builtin_model_dir.name == "tiny-qwen2-seed0-v1"


def test_tokenizer_reload_keeps_the_trained_ids(tokenizer):
    # The cached tokenizer came from another training run: equal ids also prove training is deterministic.
    trained = builtin.train_gsm8k_tokenizer()
    # Real GSM8K text the tokenizer was not trained on (the test split; encoding all 17k texts takes ~7 s).
    with open(BUNDLED_DIR / "test.jsonl", encoding="utf-8") as f:
        texts = [text for line in f for text in json.loads(line).values()]
    texts += ["Ünïcödé ﬁ café 1,234.5 $3\n\n  tabs\tand  spaces", "<|im_start|>user\nhi<|im_end|>"]
    expected = [enc.ids for enc in trained.encode_batch(texts, add_special_tokens=False)]
    assert tokenizer(texts, add_special_tokens=False)["input_ids"] == expected
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    assert len(tokenizer) == trained.get_vocab_size() == 4096


def test_tokenizer_special_tokens_and_chat_template(tokenizer):
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|endoftext|>", "<|endoftext|>")
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 0)
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nWhat is 12+30?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=False)
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == 1 and ids.count(2) == 1  # special tokens are single ids, never split
    assert "1 2 + 3 0" in " ".join(tokenizer.convert_ids_to_tokens(ids))  # Qwen splits numbers into digits
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nWhat is 12+30?\nassistant\n"


def test_model_generates(model, tokenizer):
    assert (model.generation_config.eos_token_id, model.generation_config.pad_token_id) == (0, 0)
    inputs = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[0] == 1 and inputs["input_ids"].shape[1] < out.shape[1] <= inputs["input_ids"].shape[1] + 8
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


def test_resolve_model_path(builtin_cache, builtin_model_dir, monkeypatch, capsys):
    assert resolve_model_path("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert resolve_model_path("~/models/mine") == "~/models/mine"
    monkeypatch.setenv("RL_TRAINER_CACHE", str(builtin_cache))
    assert resolve_model_path(BUILTIN_PREFIX + "tiny-qwen2") == str(builtin_model_dir)
    assert "building" not in capsys.readouterr().out  # cached: not built again


def test_critic_tokenizer_dir_follows_verl_and_the_actor_default(builtin_cache, builtin_model_dir, monkeypatch):
    monkeypatch.setenv("RL_TRAINER_CACHE", str(builtin_cache))
    actor = (BUILTIN_PREFIX + "tiny-qwen2", "/built/actor")  # (actor_rollout_ref.model.path, the folder it resolved to)
    assert critic_tokenizer_dir(None, "/critic", *actor) == "/critic"  # null: the critic's own folder (verl 0.9.1)
    assert critic_tokenizer_dir(actor[0], "/critic", *actor) == "/built/actor"  # the default: the actor's folder
    assert critic_tokenizer_dir("~/tok", "/critic", *actor) == "~/tok"  # a path of its own, loaded as given
    assert critic_tokenizer_dir(actor[0], "/critic", "other/model", "/other") == str(builtin_model_dir)  # resolved


def test_default_cache_root(monkeypatch, tmp_path):
    monkeypatch.delenv("RL_TRAINER_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root() == tmp_path / ".cache" / "rl_trainer"


def test_unknown_builtin_lists_the_known_ones():
    with pytest.raises(UserError, match=r"unknown built-in model builtin:tiny-llama; known: builtin:tiny-qwen2"):
        resolve_model_path("builtin:tiny-llama")


def _copy_model(source):
    """A builder that copies an already built model instead of building one (keeps race tests fast)."""

    def build(out_dir, seed):
        for item in source.iterdir():
            if item.name != builtin.COMPLETE_MARKER:
                shutil.copy(item, out_dir / item.name)

    return build


def test_lost_race_keeps_the_winner(builtin_model_dir, tmp_path, monkeypatch):
    target = tmp_path / "models" / "tiny-qwen2-seed0-v1"

    def build_while_another_process_wins(out_dir, seed):
        _copy_model(builtin_model_dir)(out_dir, seed)
        shutil.copytree(builtin_model_dir, target)  # the other builder renames its copy into place first

    monkeypatch.setitem(builtin._BUILDERS, "tiny-qwen2", build_while_another_process_wins)
    winner_inode = None
    original_rename = os.rename

    def rename(src, dst):
        nonlocal winner_inode
        winner_inode = (target / "model.safetensors").stat().st_ino
        return original_rename(src, dst)

    monkeypatch.setattr(builtin.os, "rename", rename)
    assert ensure_builtin_model(cache_dir=tmp_path) == target
    assert (target / "model.safetensors").stat().st_ino == winner_inode  # theirs was kept
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # ours was deleted


def test_failed_build_leaves_nothing_that_looks_built(builtin_model_dir, tmp_path, monkeypatch):
    def crash(out_dir, seed):
        _copy_model(builtin_model_dir)(out_dir, seed)
        raise RuntimeError("killed mid-build")

    monkeypatch.setitem(builtin._BUILDERS, "tiny-qwen2", crash)
    with pytest.raises(RuntimeError):
        ensure_builtin_model(cache_dir=tmp_path)
    assert list((tmp_path / "models").iterdir()) == []

    # A temp dir of a build killed long ago is neither used nor kept; a recent one (a live build) is left alone.
    stale = tmp_path / "models" / ".tiny-qwen2-seed0-v1.tmp-123-old"
    live = tmp_path / "models" / ".tiny-qwen2-seed0-v1.tmp-456-new"
    for leftover in (stale, live):
        leftover.mkdir()
        _copy_model(builtin_model_dir)(leftover, 0)
    os.utime(stale, (time.time() - 2 * builtin.STALE_BUILD_SECONDS,) * 2)
    monkeypatch.setitem(builtin._BUILDERS, "tiny-qwen2", _copy_model(builtin_model_dir))
    target = ensure_builtin_model(cache_dir=tmp_path)
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, live.name])
    assert (target / builtin.COMPLETE_MARKER).is_file()


def test_incomplete_target_is_a_user_error(tmp_path):
    target = tmp_path / "models" / "tiny-qwen2-seed0-v1"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"tiny-qwen2-seed0-v1 exists but is not a complete built-in model .* delete it"):
        ensure_builtin_model(cache_dir=tmp_path)


def test_two_processes_build_concurrently(tmp_path, tokenizer):
    # A child process and this one build into the same empty cache at the same moment: the child imports
    # first, says so, then waits for a starting-gun line on its stdin. (Building here saves a second child's ~5 s of
    # imports.)
    cache = tmp_path / "cache"
    script = (
        "import sys\n"
        "from rl_trainer.models import builtin\n"
        "import transformers.models.qwen2.modeling_qwen2, tokenizers\n"
        "print('READY', flush=True)\n"
        "sys.stdin.readline()\n"
        "print('RESULT', builtin.resolve_model_path('builtin:tiny-qwen2'))\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        env={**os.environ, "RL_TRAINER_CACHE": str(cache)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout.readline() == "READY\n", child.communicate(timeout=60)[1]  # "" if the child died
    child.stdin.write("go\n")
    child.stdin.flush()
    ours = ensure_builtin_model(cache_dir=cache)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    target = cache / "models" / "tiny-qwen2-seed0-v1"
    assert ours == target and out.splitlines()[-1] == f"RESULT {target}"
    # Usually both build and one loses the rename; that path is also tested deterministically above.
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # the loser's copy is gone
    text = "Natalia sold 48/2 = <<48/2=24>>24 clips in May."
    assert AutoTokenizer.from_pretrained(target)(text)["input_ids"] == tokenizer(text)["input_ids"]
    AutoModelForCausalLM.from_pretrained(target)
