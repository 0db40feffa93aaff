"""rl_trainer.config: the checks run once, up front, and the keys verl users set either do what verl does or are
refused in one line. Config-stage cases run in-process (Hydra compose + validate_config); the micro-batching,
length and checkpoint cases drive a real worker (tiny Qwen2, gloo world size 1, in this process, no Ray); one CLI
run checks what only a run shows (the small run, critic_warmup, rollout.response_length, save_contents)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from helpers import REPO, read_steps, run_cli, small_run_overrides, worker_config
from rl_trainer.batch import Batch
from rl_trainer.config import fill_total_training_steps, validate_config
from rl_trainer.errors import UserError
from rl_trainer.rewards.custom import get_custom_reward_fn
from rl_trainer.workers.rollout.base import assemble

SMALL_RUN = ["data.train_batch_size=4", "actor_rollout_ref.rollout.n=2", "actor_rollout_ref.actor.ppo_mini_batch_size=4"]


def composed(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        return compose("ppo_trainer", overrides=overrides)


def validated(overrides: list[str]):
    cfg = composed(overrides)
    return validate_config(cfg, overrides), cfg


def refusal(overrides: list[str]) -> str:
    with pytest.raises(UserError) as info:
        validated(overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------ batch arithmetic
def test_default_batch_plan():
    # 8 prompts x n=4 = 32 sequences on the one default worker; the actor mini-batch is all 8 prompts.
    plan, _ = validated([])
    assert (plan.world_size, plan.n, plan.train_sequences, plan.actor_mini_sequences_per_worker) == (1, 4, 32, 32)
    # Over 2 workers: 16 per worker.
    plan, _ = validated(["trainer.n_gpus_per_node=2"])
    assert (plan.world_size, plan.n, plan.train_sequences, plan.actor_mini_sequences_per_worker) == (2, 4, 32, 16)


@pytest.mark.parametrize("overrides, cpus, expected", [
    ([], 2, 2),                                     # one worker takes this machine's 2 CPUs
    (["trainer.n_gpus_per_node=2"], 2, 1),          # 2 workers share them: one CPU each
    (["trainer.n_gpus_per_node=4"], 10, 2),         # 10 // 4
    (["trainer.n_gpus_per_node=2", "ray_kwargs.ray_init.num_cpus=6"], 2, 3),  # Ray's CPUs, not os.cpu_count()
    (["trainer.cpus_per_worker=1"], 2, 1),          # given: kept
    (["ray_kwargs.ray_init.address=10.0.0.1:6379"], 2, 1),  # a cluster: 1 per worker, as verl reserves
])
def test_cpus_per_worker_default_shares_the_machine(monkeypatch, overrides, cpus, expected):
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    _, cfg = validated(overrides)
    assert cfg.trainer.cpus_per_worker == expected


@pytest.mark.parametrize("overrides, expected", [
    ([], False),                                                      # one epoch, one mini-batch: on-policy
    (["actor_rollout_ref.actor.ppo_epochs=2"], True),
    (["actor_rollout_ref.actor.ppo_mini_batch_size=4"], True),         # 2 mini-batches of 4 of the 8 prompts
    (["algorithm.use_kl_in_reward=true", "actor_rollout_ref.actor.use_kl_loss=false"], True),
    (["algorithm.rollout_correction.rollout_is=token"], True),         # compares old_log_prob with the rollout's
    (["algorithm.adv_estimator=optimal_token_baseline"], True),        # reads sum_pi_squared before the update
    (["algorithm.adv_estimator=gae", "trainer.critic_warmup=2"], True),  # step 1 updates only the critic
    (["actor_rollout_ref.actor.recompute_old_log_prob=true"], True),   # given: kept
])
def test_recompute_old_log_prob_default_skips_the_pass_when_on_policy(overrides, expected):
    _, cfg = validated(overrides)
    assert cfg.actor_rollout_ref.actor.recompute_old_log_prob is expected


@pytest.mark.parametrize("overrides, expected", [
    (["data.train_batch_size=6"],  # 6 % 8 != 0
     "data.train_batch_size=6 is not divisible by actor_rollout_ref.actor.ppo_mini_batch_size=8; use a mini-batch "
     "size that divides 6"),
    (["data.train_batch_size=3", "actor_rollout_ref.rollout.n=1", "actor_rollout_ref.actor.ppo_mini_batch_size=3",
      "trainer.n_gpus_per_node=2"],
     "data.train_batch_size * rollout.n = 3 * 1 = 3 sequences cannot be split over 2 workers"),
    (["actor_rollout_ref.rollout.n=1", "actor_rollout_ref.actor.ppo_mini_batch_size=1", "trainer.n_gpus_per_node=2"],
     # 1 prompt x 1 over 2
     "actor_rollout_ref.actor.ppo_mini_batch_size * rollout.n = 1 * 1 = 1 sequences cannot be split over 2 workers"),
    (["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=3", "trainer.n_gpus_per_node=2"],
     # 8 * 4 / 2 = 16 per worker, 16 % 3 != 0
     "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=3 does not divide the 16 sequences per worker of an actor "
     "mini-batch (ppo_mini_batch_size * n / workers = 8 * 4 / 2); use a divisor of 16"),
    (["algorithm.adv_estimator=gae", "critic.ppo_micro_batch_size_per_gpu=5", "trainer.n_gpus_per_node=2"],
     "critic.ppo_micro_batch_size_per_gpu=5 does not divide the 16 sequences per worker of a critic mini-batch "
     "(8 * 4 / 2)"),
    (["actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=0"],
     "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=0 must be a positive integer or null"),
    (["data.train_batch_size=0"], "data.train_batch_size=0 must be a positive integer"),
], ids=["mini-not-dividing", "train-over-workers", "mini-over-workers", "actor-micro", "critic-micro",
        "log-prob-micro-zero", "train-zero"])
def test_batch_arithmetic_errors_show_the_numbers(overrides, expected):
    assert expected in refusal(overrides)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_small_run_validates_with_the_default_micro_batch_keys(workers):
    # 4 prompts x n=2 = 8 sequences: 8 / workers per worker. The default log-prob micro-batches (16) exceed that,
    # and at 2 workers the default update micro-batch (8) exceeds the 4-sequence mini-batch: one chunk each.
    plan, cfg = validated(SMALL_RUN + [f"trainer.n_gpus_per_node={workers}"])
    assert plan.train_sequences == 8 and plan.actor_mini_sequences_per_worker == 8 // workers
    assert cfg.actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu == 16
    assert cfg.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu == 8


def test_forward_micro_batches_need_not_divide_the_batch():
    # 16 sequences per worker; 3, 5 and 7 divide none of the forward-only batches.
    validated(["actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=3",
               "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=5", "algorithm.adv_estimator=gae",
               "critic.forward_micro_batch_size_per_gpu=7"])


# ------------------------------------------------------------------------- keys that work or are refused
def test_rollout_mode():
    _, cfg = validated([])
    assert cfg.actor_rollout_ref.rollout.mode == "async"  # verl 0.9.1's default and only mode
    assert "removed in verl 0.9.1" in refusal(["actor_rollout_ref.rollout.mode=sync"])
    assert "actor_rollout_ref.rollout.mode='spmd' is not valid; choose one of: async" in refusal(
        ["actor_rollout_ref.rollout.mode=spmd"])


def test_rollout_lengths_follow_data_and_are_checked():
    _, cfg = validated(["data.max_prompt_length=100", "data.max_response_length=7"])
    assert (cfg.actor_rollout_ref.rollout.prompt_length, cfg.actor_rollout_ref.rollout.response_length) == (100, 7)
    _, cfg = validated(["actor_rollout_ref.rollout.response_length=1024", "actor_rollout_ref.rollout.prompt_length=300"])
    assert (cfg.actor_rollout_ref.rollout.prompt_length, cfg.actor_rollout_ref.rollout.response_length) == (300, 1024)
    assert ("actor_rollout_ref.rollout.prompt_length=100 < data.max_prompt_length=256" in
            refusal(["actor_rollout_ref.rollout.prompt_length=100"]))
    assert "actor_rollout_ref.rollout.response_length=0 must be a positive integer" in refusal(
        ["actor_rollout_ref.rollout.response_length=0"])


@pytest.mark.parametrize("section", ["actor_rollout_ref.actor.optim", "critic.optim"])
def test_total_training_steps_is_filled_in_not_set(section):
    assert f"{section}.total_training_steps=10 is filled in by the trainer" in refusal(
        [f"{section}.total_training_steps=10"])


@pytest.mark.parametrize("trainer_steps, epochs, expected_schedule, expected_run", [
    ("null", 2, 50, 50),   # verl: len(dataloader) * total_epochs = 25 * 2
    (4, 1, 4, 4),          # verl: trainer.total_training_steps wins
    (100, 1, 100, 25),     # verl sizes the schedule by it; its loop ends when the epoch does, after 25
])
def test_fill_total_training_steps_is_verls_value(trainer_steps, epochs, expected_schedule, expected_run):
    _, cfg = validated([f"trainer.total_training_steps={trainer_steps}", f"trainer.total_epochs={epochs}"])
    assert fill_total_training_steps(cfg, steps_per_epoch=25) == expected_run
    assert cfg.actor_rollout_ref.actor.optim.total_training_steps == expected_schedule
    assert cfg.critic.optim.total_training_steps == expected_schedule


def test_checkpoint_contents():
    _, cfg = validated([])
    assert list(cfg.actor_rollout_ref.actor.checkpoint.save_contents) == ["model", "optimizer", "extra", "hf_model"]
    assert list(cfg.critic.checkpoint.load_contents) == ["model", "optimizer", "extra"]  # verl: ${.save_contents}
    assert "lacks 'model'" in refusal(["actor_rollout_ref.actor.checkpoint.save_contents=[optimizer,extra]"])
    assert "critic.checkpoint.load_contents='weights' is not valid; choose one of: model, optimizer, extra, hf_model" \
        in refusal(["critic.checkpoint.load_contents=[model,weights]"])


def test_critic_keys_are_checked_like_the_actors(caplog):
    assert "critic.fsdp.fsdp_size=2 is not supported by rl_trainer yet" in refusal(
        ["algorithm.adv_estimator=gae", "critic.model.fsdp_config.fsdp_size=2"])
    with caplog.at_level("WARNING"):
        validated(["algorithm.adv_estimator=gae", "critic.model.use_remove_padding=true"])
    assert [r.getMessage() for r in caplog.records if "use_remove_padding" in r.getMessage()] == [
        "critic.model.use_remove_padding=true: padding-free packing is not implemented; running the padded path "
        "(same numbers)"]


def test_critic_warmup_must_be_a_step_count():
    assert "trainer.critic_warmup=-1 must be an integer >= 0" in refusal(["trainer.critic_warmup=-1"])


# ------------------------------------------------------------------------------------ custom reward function
def test_the_newer_custom_reward_spelling_is_reconciled_into_both(tmp_path):
    reward = tmp_path / "r.py"
    reward.write_text("def half(data_source, solution_str, ground_truth, extra_info=None, scale=1.0):\n"
                      "    return scale * 0.5\n")
    _, cfg = validated([f"reward.custom_reward_function.path={reward}", "reward.custom_reward_function.name=half",
                        "+reward.custom_reward_function.reward_kwargs.scale=4.0"])
    for section in (cfg.custom_reward_function, cfg.reward.custom_reward_function):
        assert OmegaConf.to_container(section) == {"path": str(reward), "name": "half", "reward_kwargs": {"scale": 4.0}}
    assert get_custom_reward_fn(cfg)("any", "x", "y") == 2.0  # 4.0 * 0.5
    # The same path under both spellings is one function; different paths are refused.
    validated([f"custom_reward_function.path={reward}", f"reward.custom_reward_function.path={reward}"])
    assert "disagree; set only one of them" in refusal(
        ["custom_reward_function.path=a.py", "reward.custom_reward_function.path=b.py"])


# ------------------------------------------------------------------------------------------ a real worker
def generated_batch(vocab: int, rows: int = 8, p: int = 8, r: int = 6) -> Batch:
    """`rows` left-padded prompts and ragged right-padded responses, as a rollout returns them."""
    g = torch.Generator().manual_seed(0)
    prompt_mask = (torch.arange(p) >= p - torch.randint(2, p + 1, (rows, 1), generator=g)).long()
    response_mask = (torch.arange(r) < torch.randint(1, r + 1, (rows, 1), generator=g)).long()
    prompts = torch.randint(3, vocab, (rows, p), generator=g) * prompt_mask
    responses = torch.randint(3, vocab, (rows, r), generator=g) * response_mask
    return Batch(assemble(prompts, prompt_mask, (prompt_mask.cumsum(-1) - 1).clamp(min=0), responses, response_mask))


@pytest.fixture(scope="module")
def worker(tiny_models):
    """One ActorRolloutRefWorker in this process: 8 sequences per step, rollout lengths set apart from data.*."""
    from rl_trainer.workers.actor import ActorRolloutRefWorker
    from rl_trainer.workers.fsdp import free_port

    config = worker_config(str(tiny_models["qwen2"]), workers=1, micro=4, extra=(
        "actor_rollout_ref.actor.use_kl_loss=false", "actor_rollout_ref.rollout.response_length=5",
        "actor_rollout_ref.rollout.prompt_length=264"))
    assert config["data"]["max_response_length"] == 6 and config["data"]["max_prompt_length"] == 256
    w = ActorRolloutRefWorker(config, rank=0, world_size=1, device="cpu", threads=1)
    w.join_group(*free_port())
    w.init_model(str(tiny_models["qwen2"]), 10, with_ref=False)
    yield w
    w.shutdown()


def test_log_prob_micro_batches_larger_than_or_not_dividing_the_batch(worker):
    batch = generated_batch(vocab=worker.actor.model.config.vocab_size)
    rollout_cfg = worker.config.actor_rollout_ref.rollout
    results = {}
    for micro in (None, 3, 16):  # the whole batch; chunks of 3, 3, 2; one chunk of 8 (16 > 8)
        rollout_cfg.log_prob_micro_batch_size_per_gpu = micro
        results[micro] = worker.compute_log_prob(batch)
    mask = batch["response_mask"]  # a chunk computes no column past its own longest response: those are 0
    for micro in (3, 16):
        for key in ("old_log_probs", "entropys"):
            assert results[micro][key].shape == (8, 6)
            torch.testing.assert_close(results[micro][key] * mask, results[None][key] * mask, atol=1e-5, rtol=1e-5)


def test_generation_reads_the_rollout_lengths(worker):
    batch = generated_batch(vocab=worker.actor.model.config.vocab_size, rows=4)
    prompts = Batch({"prompts": batch["prompts"], "attention_mask": batch["attention_mask"][:, :8],
                     "position_ids": batch["position_ids"][:, :8]})
    out = worker.generate_sequences(prompts, validate=True)
    # rollout.response_length=5 (data.max_response_length=6); prompts left-padded to rollout.prompt_length=264.
    assert out["responses"].shape == (4, 5) and out["prompts"].shape == (4, 264)
    assert torch.equal(out["prompts"][:, -8:], prompts["prompts"])
    assert not out["attention_mask"][:, :256].any()


def test_prompt_padding_changes_no_generation(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl_trainer.workers.rollout import HFRollout, SamplingParams

    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["qwen2"])
    batch = generated_batch(vocab=model.config.vocab_size, rows=4)
    prompts = Batch({"prompts": batch["prompts"], "attention_mask": batch["attention_mask"][:, :8],
                     "position_ids": batch["position_ids"][:, :8]})
    narrow = HFRollout(model, tokenizer, 5).generate(prompts, SamplingParams(do_sample=False))
    wide = HFRollout(model, tokenizer, 5, prompt_length=13).generate(prompts, SamplingParams(do_sample=False))
    assert wide["prompts"].shape == (4, 13) and torch.equal(wide["prompts"][:, 5:], narrow["prompts"])
    for key in ("responses", "response_mask"):
        assert torch.equal(wide[key], narrow[key]), key


@pytest.mark.parametrize("contents", [["model", "optimizer", "extra"], ["model", "optimizer", "extra", "hf_model"]],
                         ids=["without-hf_model", "with-hf_model"])
def test_save_contents_gates_the_hf_weights(worker, contents, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    worker.config.actor_rollout_ref.actor.checkpoint.save_contents = contents
    worker.save_checkpoint(str(tmp_path / "actor"), str(tmp_path / "actor" / "huggingface"))
    hf_dir = tmp_path / "actor" / "huggingface"
    # As verl: the config and tokenizer always; the weights only with hf_model.
    assert AutoConfig.from_pretrained(hf_dir).num_hidden_layers == 2 and (hf_dir / "tokenizer_config.json").exists()
    weights = list(hf_dir.glob("*.safetensors")) + list(hf_dir.glob("*.bin"))
    assert bool(weights) == ("hf_model" in contents)
    if "hf_model" in contents:
        loaded = AutoModelForCausalLM.from_pretrained(hf_dir)
        trained = worker.full_params()
        for name, param in loaded.named_parameters():
            assert torch.equal(param, trained[name]), name
    assert (tmp_path / "actor" / "extra_rank0.pt").exists()


# --------------------------------------------------------------------------------------------- one real run
@pytest.mark.slow
def test_small_ppo_run_with_critic_warmup_response_length_and_no_hf_weights(tiny_models, gsm8k_dir, length_reward,
                                                                            tmp_path, shared_ray):
    """PPO (GAE, a critic), 4 prompts x n=2 on 2 workers with the default micro-batch keys (8 for the updates, 16
    for log-probs and values: all above the 4 sequences per worker). verl's critic_warmup=2: steps count from 1
    and the actor is updated when critic_warmup <= step, so step 1 trains only the critic and step 2 both (the
    old `step > critic_warmup` had no actor update at step 2). rollout.response_length=5 caps generation below
    data.max_response_length=16. Without hf_model the checkpoint's HF folders hold the config and no weights.
    critic.model.tokenizer_path names a copy of the tokenizer whose pad token is id 5: the value model's config takes
    its bos/eos/pad ids, as verl's HFModelConfig does; the actor's keeps the model's (the tokenizer's EOS)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["qwen2"])
    eos = tokenizer.eos_token_id
    assert eos != 5
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(5)
    tokenizer.save_pretrained(tmp_path / "critic_tokenizer")
    overrides = [o for o in small_run_overrides(tiny_models["qwen2"], gsm8k_dir, tmp_path, length_reward)
                 if "micro_batch_size_per_gpu" not in o and not o.startswith("actor_rollout_ref.rollout.n=")]
    overrides += ["algorithm.adv_estimator=gae", "actor_rollout_ref.rollout.n=2", "trainer.critic_warmup=2", "actor_rollout_ref.rollout.response_length=5",
                  "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra]", "trainer.save_freq=2",
                  f"critic.model.tokenizer_path={tmp_path / 'critic_tokenizer'}"]
    proc = run_cli(overrides, cwd=tmp_path, env=shared_ray)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    steps = read_steps(tmp_path / "run")
    assert "actor/pg_loss" not in steps[1] and "actor/lr" not in steps[1] and "critic/vf_loss" in steps[1]
    assert "actor/pg_loss" in steps[2] and "critic/vf_loss" in steps[2]
    assert steps[1]["response_length/max"] <= 5 and steps[2]["response_length/max"] <= 5
    for role in ("actor", "critic"):
        hf_dir = tmp_path / "ckpt" / "global_step_2" / role / "huggingface"
        assert (hf_dir / "config.json").exists() and not list(hf_dir.glob("*.safetensors")), role
        config = json.loads((hf_dir / "config.json").read_text())
        assert (config["pad_token_id"], config["eos_token_id"]) == ((5 if role == "critic" else eos), eos), role


def test_the_config_stage_leaves_the_data_and_model_libraries_to_the_input_stage():
    """The config stage runs alone before Ray starts, so every import it makes is launch time (docs/performance.md,
    Start-up): datasets and transformers belong to the input stage, which runs beside Ray's start."""
    import subprocess
    import sys

    code = ("import sys; from helpers import cli_config; cli_config([]); "
            "print(sorted(m for m in ('datasets', 'transformers', 'ray') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO / "tests", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
