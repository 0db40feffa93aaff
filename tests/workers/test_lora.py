"""LoRA (actor_rollout_ref.model.lora_rank, critic.model.lora_rank; rl_trainer.workers.lora) on real workers.

Most tests run one worker in this process (world size 1, its own gloo group, no Ray: the class the Ray worker group
starts); the 2-rank comparison runs on the session's Ray head. The tiny Qwen2 (tied embeddings) is tests/conftest.py's.
"""

from __future__ import annotations

import pytest
import torch

from helpers import worker_config
from rl_trainer.errors import UserError
from tests.workers.test_fsdp_update import fixed_batch, train_once

LORA = ("actor_rollout_ref.model.lora_rank=4", "actor_rollout_ref.model.lora_alpha=8",
        "actor_rollout_ref.actor.optim.lr=1e-2")
CRITIC_LORA = ("algorithm.adv_estimator=gae", "critic.model.lora_rank=4", "critic.model.lora_alpha=8",
               "critic.optim.lr=1e-2")


def _worker(cls, model_dir, extra=(), micro="null", **init):
    from rl_trainer.workers.fsdp import free_port

    worker = cls(worker_config(model_dir, 1, micro, extra), rank=0, world_size=1, device="cpu", threads=1)
    worker.join_group(*free_port())
    worker.init_model(str(model_dir), 10, **init)
    return worker


def _actor(model_dir, extra=LORA):
    from rl_trainer.workers.actor import ActorRolloutRefWorker

    return _worker(ActorRolloutRefWorker, model_dir, extra, with_ref=True)


def _changed(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {name for name in before if not torch.equal(before[name], after[name])}


def test_only_the_adapters_train_and_sit_in_the_optimizer(tiny_models):
    actor = _actor(tiny_models["qwen2"])
    try:
        assert actor.ref is None  # ref-in-actor: no second model
        trainable = {n for n, p in actor.actor.model.named_parameters() if p.requires_grad}
        in_optimizer = {id(p) for group in actor.actor.optimizer.param_groups for p in group["params"]}
        assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
        assert in_optimizer == {id(p) for n, p in actor.actor.model.named_parameters() if n in trainable}
        # all-linear on 2 layers: q, k, v, o, gate, up, down each get A and B; lm_head (tied to the embedding) none.
        assert len(trainable) == 2 * 7 * 2
        before = actor.full_params()
        metrics = actor.update_actor(fixed_batch(vocab=4096))
        after = actor.full_params()
    finally:
        actor.shutdown()
    assert metrics["actor/grad_norm"] > 0 and metrics["actor/skipped_steps"] == 0
    # Every adapter matrix moves (B by its gradient; A, whose first gradient is 0 because B starts at 0, by AdamW's
    # weight decay of 0.01), no other parameter does.
    assert _changed(before, after) == trainable
    assert all(torch.equal(before[n], after[n]) for n in before if n not in trainable)  # base bit-equal


def test_critic_adapters_and_value_head_train_and_the_backbone_does_not(tiny_models):
    from rl_trainer.workers.critic import CriticWorker

    critic = _worker(CriticWorker, tiny_models["qwen2"], CRITIC_LORA)
    try:
        trainable = {n for n, p in critic.critic.model.named_parameters() if p.requires_grad}
        before = critic.full_params()
        critic.update_critic(fixed_batch(vocab=4096))
        after = critic.full_params()
    finally:
        critic.shutdown()
    assert any("score.modules_to_save" in n for n in trainable)
    changed = _changed(before, after)
    assert changed <= trainable and any("score.modules_to_save" in n for n in changed)
    assert any(".lora_B." in n for n in changed)


def test_reference_is_the_base_model_and_the_export_is_base_plus_adapter(tiny_models, tmp_path):
    """After an update (B != 0): ref log-probs (adapters disabled) equal the plain base model's; the merged HF export
    loads with transformers alone and gives the adapted model's logits, as PEFT's own base + adapter does; the HF
    rollout holds the merged weights after its sync, and its sampled log-probs match the actor's (synced level); a
    worker started from the exported adapter (lora_adapter_path) has the same policy and reference."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rl_trainer.metrics import probs_diff_metrics, probs_diff_sums
    from rl_trainer.workers.actor import response_log_probs

    model_dir = tiny_models["qwen2"]
    batch = fixed_batch(vocab=4096)
    actor = _actor(model_dir, (*LORA, "actor_rollout_ref.rollout.calculate_log_probs=true"))
    try:
        actor.update_actor(batch)
        ref = actor.compute_ref_log_prob(batch)["ref_log_prob"]
        current = actor.compute_log_prob(batch)["old_log_probs"]
        with torch.no_grad():
            adapted_logits = actor.actor.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                               position_ids=batch["position_ids"]).logits
        actor.save_checkpoint(str(tmp_path / "ckpt"), str(tmp_path / "hf"))
        prompts = _prompts(batch)
        sampled = actor.generate_sequences(prompts)  # syncs merged weights into the HF engine first
        rollout_params = {n: p.detach().clone() for n, p in actor.rollout.model.named_parameters()}
        sampled.update(actor.compute_log_prob(sampled))
    finally:
        actor.shutdown()
    # lora_adapter_path alone turns LoRA on, from the exported adapter: the same policy, the same reference.
    resumed = _actor(model_dir, (f"actor_rollout_ref.model.lora_adapter_path={tmp_path / 'hf' / 'lora_adapter'}",))
    try:
        assert all(p.requires_grad == (".lora_" in n) for n, p in resumed.actor.model.named_parameters())
        from_adapter = resumed.compute_log_prob(batch)["old_log_probs"]
        ref_from_adapter = resumed.compute_ref_log_prob(batch)["ref_log_prob"]
    finally:
        resumed.shutdown()
    torch.testing.assert_close(from_adapter, current, rtol=0, atol=1e-6)
    torch.testing.assert_close(ref_from_adapter, ref, rtol=0, atol=0)

    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        base_ref, _ = response_log_probs(base, batch, torch.device("cpu"), 1.0, False, True)
    torch.testing.assert_close(ref, base_ref, rtol=0, atol=1e-6)
    assert (current - ref).abs().max() > 1e-3  # the adapter changed the policy, the reference did not follow

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert not hasattr(merged, "peft_config")
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), tmp_path / "hf" / "lora_adapter")
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  position_ids=batch["position_ids"])
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, adapted_logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(peft.eval()(**inputs).logits, adapted_logits, rtol=1e-5, atol=1e-5)
    for name, param in merged.named_parameters():
        torch.testing.assert_close(rollout_params[name], param.detach(), rtol=0, atol=0, msg=name)
    gap = probs_diff_metrics(probs_diff_sums(sampled["old_log_probs"], sampled["rollout_log_probs"],
                                             sampled["response_mask"]))
    assert gap["training/rollout_probs_diff_max"] < 1e-4, gap


def _prompts(batch):
    from rl_trainer.batch import Batch

    mask = batch["attention_mask"][:, :8]
    return Batch({"prompts": batch["input_ids"][:, :8], "attention_mask": mask,
                  "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)})


@pytest.mark.parametrize("extra", [LORA, ()], ids=["lora", "full"])
def test_resume_from_a_checkpoint_is_exact(extra, tiny_models, tmp_path):
    """Update, save (trained parameters + optimizer + scheduler + RNG), update again; a fresh worker that loads the
    checkpoint and makes the same second update ends bit-equal. With LoRA the checkpoint holds the adapters, not the
    frozen base; full fine-tuning (the same code path, every parameter trained) holds everything."""
    from torch.distributed.checkpoint import FileSystemReader

    model_dir, batch = tiny_models["qwen2"], fixed_batch(vocab=4096)
    first = _actor(model_dir, extra)
    try:
        first.update_actor(batch)
        first.save_checkpoint(str(tmp_path / "ckpt"), None)
        first.update_actor(batch)
        expected = first.full_params()
    finally:
        first.shutdown()
    saved = FileSystemReader(str(tmp_path / "ckpt" / "sharded")).read_metadata().state_dict_metadata
    model_keys = [k for k in saved if k.startswith("model.")]
    if extra:
        # No frozen base weight but one: torch's state dict keeps the second name of a tied parameter (the embedding
        # as lm_head) when it drops frozen parameters by their first name.
        assert len(model_keys) == 2 * 7 * 2 + 1
        assert [k for k in model_keys if ".lora_" not in k] == ["model.base_model.model.lm_head.weight"]
    else:
        assert {f"model.{name}" for name in expected} <= set(model_keys)
    second = _actor(model_dir, extra)
    try:
        second.load_checkpoint(str(tmp_path / "ckpt"))
        second.update_actor(batch)
        resumed = second.full_params()
    finally:
        second.shutdown()
    assert not _changed(expected, resumed)


@pytest.mark.slow
def test_two_ranks_with_micro_batches_equal_one_rank_full_batch_with_lora(ray_cluster, tiny_models):
    from helpers import worker_config as make_config
    from rl_trainer.workers.actor import ActorRolloutRefWorker

    model_dir = str(tiny_models["qwen2"])
    batch = fixed_batch(vocab=4096)
    init = (model_dir, 10, True)
    sharded, fractions, metrics2 = train_once(ActorRolloutRefWorker, init, "update_actor",
                                              make_config(model_dir, 2, 2, LORA), 2, batch)
    single, _, metrics1 = train_once(ActorRolloutRefWorker, init, "update_actor",
                                     make_config(model_dir, 1, "null", LORA), 1, batch)
    assert all(0.45 < f < 0.55 for f in fractions), fractions  # base and adapters both sharded
    assert sharded.keys() == single.keys()
    for name in single:
        torch.testing.assert_close(sharded[name], single[name], rtol=1e-5, atol=1e-7, msg=name)
    assert metrics2["actor/pg_loss"] == pytest.approx(metrics1["actor/pg_loss"], rel=1e-5)


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("override, message", [
    ("actor_rollout_ref.model.lora_rank=-1", "actor_rollout_ref.model.lora_rank=-1 must be an integer >= 0"),
    ("actor_rollout_ref.model.lora_rank=1.5", "actor_rollout_ref.model.lora_rank=1.5 must be an integer >= 0"),
    ("critic.model.lora_rank=abc", "critic.model.lora_rank=abc must be an integer >= 0"),
    ("actor_rollout_ref.model.lora_alpha=0", "actor_rollout_ref.model.lora_alpha=0 must be a number > 0"),
    ("actor_rollout_ref.model.lora.rank=8", "rl_trainer does not implement Megatron's LoRA section"),
])
def test_bad_lora_keys_are_refused_before_ray_in_one_line(override, message, tiny_models):
    with pytest.raises(UserError) as err:
        worker_config(tiny_models["qwen2"], 1, "null", (override,))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_adapter_folder_is_refused_before_ray(tmp_path):
    from helpers import config_stage_error

    err = config_stage_error(["actor_rollout_ref.model.lora_rank=8",
                              f"actor_rollout_ref.model.lora_adapter_path={tmp_path / 'nope'}"], tmp_path / "run")
    assert isinstance(err, UserError), err
    assert str(err).startswith(f"actor_rollout_ref.model.lora_adapter_path={tmp_path / 'nope'}: no adapter_config.json")


def _settings(**kw):
    from rl_trainer.workers.lora import LoraSettings

    return LoraSettings(**{**dict(section="actor_rollout_ref.model", rank=4, alpha=8, target_modules="all-linear",
                                  exclude_modules=None, adapter_path=None), **kw})


def test_target_modules_that_name_no_module_say_which_exist(tiny_models):
    from transformers import AutoModelForCausalLM

    from rl_trainer.workers import lora

    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"])
    with pytest.raises(UserError) as err:
        lora.wrap(model, _settings(target_modules=["q_proj", "query_key_value"]))
    assert str(err.value) == ("actor_rollout_ref.model.target_modules names no module of the model: "
                              "['query_key_value']; its linear modules are ['down_proj', 'gate_proj', 'k_proj', "
                              "'lm_head', 'o_proj', 'q_proj', 'up_proj', 'v_proj'] (or use all-linear)")
    with pytest.raises(UserError, match="PEFT cannot add LoRA adapters to Qwen2ForCausalLM"):
        lora.wrap(model, _settings(target_modules=["input_layernorm"]))  # an RMSNorm: no LoRA layer for it
    with pytest.raises(UserError, match=r"target_modules puts LoRA on model.embed_tokens \(Embedding\); rl_trainer "
                                        "merges LoRA into nn.Linear layers only"):
        lora.wrap(AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"]), _settings(target_modules=["embed_tokens"]))
    with pytest.raises(UserError, match="puts LoRA on lm_head, the output head tied to the input embedding"):
        lora.wrap(AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"]), _settings(target_modules=["lm_head"]))


def test_an_adapter_of_another_base_model_is_refused(tiny_models, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from rl_trainer.workers import lora

    base = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"])
    other = Qwen2ForCausalLM(Qwen2Config(**{**base.config.to_dict(), "hidden_size": 32, "intermediate_size": 64}))
    get_peft_model(other, LoraConfig(r=4, target_modules="all-linear")).save_pretrained(tmp_path / "other")
    with pytest.raises(UserError) as err:
        lora.wrap(base, _settings(adapter_path=str(tmp_path / "other")))
    assert str(err.value).startswith(f"actor_rollout_ref.model.lora_adapter_path={tmp_path / 'other'} does not fit "
                                     "actor_rollout_ref.model.path's model (RuntimeError: ")
    assert str(err.value).endswith("pass an adapter trained on this base model") and "\n" not in str(err.value)
