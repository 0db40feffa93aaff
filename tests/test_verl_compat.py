"""verl 0.9.1's key tree here: every key composes, each status class behaves as documented (implemented, hint,
refused), verl's config flags, `+key` overrides, older spellings and the deprecated global micro-batch sizes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rl_trainer import compat
from rl_trainer.config import validate_config
from rl_trainer.errors import UserError
from rl_trainer.main import CONFIG_DIR, config_flags
from rl_trainer.tools import compat as tool

FIXTURE = json.loads((Path(__file__).parent / "data" / "verl_0.9.1_keys.json").read_text())


def composed(overrides=(), name="ppo_trainer"):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(name, overrides=list(overrides))


def checked(overrides=(), name="ppo_trainer"):
    cfg = composed(overrides, name)
    validate_config(cfg, list(overrides))
    return cfg


def test_generated_files_are_what_the_generator_writes():
    for path, text in tool.expected_files().items():
        assert path.read_text() == text, f"{path} is stale: run python -m rl_trainer.tools.compat --write"


@pytest.mark.parametrize("name", ["ppo_trainer", "ppo_megatron_trainer"])
def test_every_verl_key_composes(name):
    """One compose holds every key of verl's YAML (an empty dict may hold an older verl's keys below it)."""
    keys = set(compat.flatten(OmegaConf.to_container(composed(name=name), resolve=False)))
    missing = [k for k in FIXTURE[name] if k not in keys and not any(h.startswith(k + ".") for h in keys)]
    assert not missing, missing[:20]
    assert len(FIXTURE[name]) > 800  # the whole tree, not a sample


def test_declared_defaults_are_verls():
    """configs/verl_keys.yaml holds verl 0.9.1's default of each key it declares, interpolations as written."""
    declared = compat.flatten(OmegaConf.to_container(OmegaConf.load(CONFIG_DIR + "/verl_keys.yaml"), resolve=False))
    ppo = FIXTURE["ppo_trainer"]
    for key, value in declared.items():
        if key in ppo:
            assert value == ppo[key], key
    # every 0.9.1 key not implemented is declared there (or extended by an older verl's keys below it)
    for key in ppo:
        if key not in compat.implemented_keys():
            assert key in declared or any(d.startswith(key + ".") for d in declared), key


def test_counts_cover_every_key():
    for name, tally in tool.counts(FIXTURE).items():
        assert sum(tally.values()) == len(FIXTURE[name])
        assert min(tally.values()) > 100


def test_every_rule_decides_some_key():
    """A rule that is the first match for no key (for any value) is dead text that may misdescribe a feature, as the
    'dynamic batch sizes (in progress)' rules did once that feature was implemented. Candidates: every key declared
    here or in verl 0.9.1's trees (megatron and older spellings included), and the `+key` verl reads from a
    free-form section (mixed_precision). Exempt: the registry guards, whose refused values (verl's estimators or
    losses rl_trainer lacks) are empty while rl_trainer has them all."""
    declared = compat.flatten(OmegaConf.to_container(compat._baseline(), resolve=False))
    added = ["actor_rollout_ref.actor.fsdp_config.mixed_precision.buffer_dtype"]
    keys = set(declared) | set().union(*(FIXTURE[n] for n in ("ppo_trainer", "ppo_megatron_trainer", "older")))
    implemented = compat.implemented_keys()
    values = {v for rule in compat.RULES for v in (rule.values or ())} | {"a value no rule names"}
    decided = {id(compat.rule_for(key, value, key in implemented)) for key in [*keys, *added] for value in values}
    dead = [rule for rule in compat.RULES if id(rule) not in decided and rule.values != ()]
    assert not dead, dead
    assert sum(rule.values == () for rule in compat.RULES) == 2  # the estimator and policy-loss guards


def test_implemented_key_changes_what_the_worker_reads():
    # verl 0.9.1's optim.clip_grad is the actor's max gradient norm, which the worker reads as grad_clip.
    cfg = checked(["actor_rollout_ref.actor.optim.clip_grad=0.5"])
    assert cfg.actor_rollout_ref.actor.grad_clip == 0.5
    # critic.fsdp.* (0.9.1) reaches the critic worker, which reads the older critic.model.fsdp_config.*.
    cfg = checked(["critic.fsdp.param_offload=true"])
    assert cfg.critic.model.fsdp_config.param_offload is True and cfg.critic.fsdp.param_offload is True


def test_hint_key_prints_one_notice_and_runs(caplog):
    with caplog.at_level(logging.WARNING, logger="rl_trainer.compat"):
        checked(["actor_rollout_ref.actor.strategy=fsdp2", "actor_rollout_ref.model.use_shm=true"])
    notices = [r.getMessage() for r in caplog.records if r.name == "rl_trainer.compat"]
    assert len(notices) == 2
    assert any(n.startswith("notice: actor_rollout_ref.actor.strategy=fsdp2 is accepted") for n in notices)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rl_trainer.compat"):
        checked()  # defaults: no notice
    assert not [r for r in caplog.records if r.name == "rl_trainer.compat"]


@pytest.mark.parametrize("override, feature", [
    ("actor_rollout_ref.model.lora.rank=8", "Megatron's LoRA"),
    ("actor_rollout_ref.rollout.multi_turn.enable=true", "multi-turn"),
    ("actor_rollout_ref.actor.strategy=megatron", "Megatron"),
    ("model_engine=megatron", "Megatron"),
    ("algorithm.use_pf_ppo=true", "PF-PPO"),
])
def test_refused_key_ends_in_one_line(override, feature):
    with pytest.raises(UserError) as err:
        checked([override])
    message = str(err.value)
    assert "\n" not in message and message.startswith(override.split("=")[0])
    assert f"rl_trainer does not implement {feature}" in message or feature in message.split(";")[0]
    assert "; use " in message or "; " in message  # names what to use instead


def test_refusal_comes_before_ray_in_the_cli_and_diagnose(tmp_path, capsys):
    from rl_trainer.tools import diagnose
    from tests.helpers import run_cli

    result = run_cli(["--config-path=config", "--config-name=ppo_megatron_trainer"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: model_engine=megatron: rl_trainer does not implement Megatron; use --config-name "
                      "ppo_trainer (FSDP2)"]
    assert "notice: --config-path=config is not a directory here" in result.stderr
    assert "Traceback" not in result.stderr and "placement" not in result.stdout
    assert diagnose.main(["--config-name=ppo_megatron_trainer"]) == 1
    assert "INVALID: model_engine=megatron: rl_trainer does not implement Megatron" in capsys.readouterr().out


def test_config_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv, config_dir, name = config_flags(["--config-path=config", "--config-name=ppo_megatron_trainer", "a.b=1"])
    assert (config_dir, name) == (CONFIG_DIR, "ppo_megatron_trainer")
    assert argv == [f"--config-path={CONFIG_DIR}", "--config-name=ppo_megatron_trainer", "a.b=1"]
    assert "notice: --config-path=config" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "exp.yaml").write_text("defaults: [ppo_trainer]\n")
    argv, config_dir, name = config_flags(["-cp", "mine", "-cn", "exp"])
    assert (config_dir, name) == (str(tmp_path / "mine"), "exp")
    with pytest.raises(UserError, match="--config-name=generation: no generation.yaml"):
        config_flags(["--config-name=generation"])
    with pytest.raises(UserError, match="--config-name=sft_trainer is the config of python -m rl_trainer.sft"):
        config_flags(["--config-name=sft_trainer"])
    # +key adds or overrides (++); a config group keeps its +
    assert config_flags(["+trainer.seed=3", "+variant=grpo"])[0] == ["++trainer.seed=3", "+variant=grpo"]


def test_plus_key_nothing_reads_is_refused_and_a_read_one_honoured():
    with pytest.raises(UserError, match=r"^\+foo\.bar=1: nothing in rl_trainer reads this key"):
        checked(["+foo.bar=1"])
    # verl 0.9.1's DAPO examples: read by the dapo reward manager (rl_trainer.rewards.manager), refused elsewhere
    checked(["reward_model.reward_manager=dapo", "+reward_model.reward_kwargs.overlong_buffer_cfg.enable=true",
             "+reward_model.reward_kwargs.overlong_buffer_cfg.len=4"])
    with pytest.raises(UserError, match="read only by the dapo reward manager"):
        checked(["+reward_model.reward_kwargs.overlong_buffer_cfg.enable=true"])
    cfg = checked(["+actor_rollout_ref.model.override_config.attn_implementation=eager"])
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "eager"
    # a key that exists, added with + as verl scripts for older verls do: overridden (config_flags makes it ++)
    cfg = checked(config_flags(["+actor_rollout_ref.actor.fsdp_config.forward_prefetch=true"])[0])
    assert cfg.actor_rollout_ref.actor.fsdp_config.forward_prefetch is True


def test_older_spellings():
    cfg = checked(["actor_rollout_ref.rollout.update_weights_bucket_megabytes=256"])
    assert cfg.actor_rollout_ref.rollout.checkpoint_engine.update_weights_bucket_megabytes == 256
    cfg = checked(["critic.model.fsdp_config.reshard_after_forward=false"])
    assert cfg.critic.fsdp.reshard_after_forward is False
    with pytest.raises(UserError, match="disagree .* set only critic.fsdp.param_offload"):
        checked(["critic.model.fsdp_config.param_offload=true", "critic.fsdp.param_offload=false"])
    checked(["critic.model.fsdp_config.param_offload=true", "critic.fsdp.param_offload=true"])  # agree: fine


def test_deprecated_global_micro_batch_sizes():
    # 2 workers (trainer.n_gpus_per_node=2): a global 16 is 8 per worker, as verl's FSDP workers divided it.
    cfg = checked(["actor_rollout_ref.actor.ppo_micro_batch_size=16", "actor_rollout_ref.rollout.log_prob_micro_batch_size=8",
                   "actor_rollout_ref.ref.log_prob_micro_batch_size=4", "trainer.n_gpus_per_node=2"])
    arr = cfg.actor_rollout_ref
    assert (arr.actor.ppo_micro_batch_size_per_gpu, arr.rollout.log_prob_micro_batch_size_per_gpu,
            arr.ref.log_prob_micro_batch_size_per_gpu) == (8, 4, 2)
    cfg = checked(["algorithm.adv_estimator=gae", "critic.ppo_micro_batch_size=8", "trainer.n_gpus_per_node=2"])
    # critic.forward_micro_batch_size follows critic.ppo_micro_batch_size (verl's default), so both are 4 per worker
    assert (cfg.critic.ppo_micro_batch_size_per_gpu, cfg.critic.forward_micro_batch_size_per_gpu) == (4, 4)
    with pytest.raises(UserError, match="are both set; remove actor_rollout_ref.actor.ppo_micro_batch_size"):
        checked(["actor_rollout_ref.actor.ppo_micro_batch_size=16", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4"])
    checked(["actor_rollout_ref.actor.ppo_micro_batch_size=16", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=null"])
    with pytest.raises(UserError, match="must be an integer >= 2"):
        checked(["actor_rollout_ref.actor.ppo_micro_batch_size=1", "trainer.n_gpus_per_node=2"])


def test_megatron_keys_compose_under_the_megatron_config():
    cfg = composed(["actor_rollout_ref.actor.megatron.tensor_model_parallel_size=2"], name="ppo_megatron_trainer")
    assert cfg.actor_rollout_ref.actor.megatron.tensor_model_parallel_size == 2
    assert cfg.actor_rollout_ref.actor.strategy == "megatron"
    with pytest.raises(UserError, match="^model_engine=megatron: rl_trainer does not implement Megatron"):
        validate_config(cfg, [])
