"""rl_trainer.workers.reward_model: rm_scores equal a direct AutoModelForSequenceClassification forward of the same
texts, on the last valid response token; the re-templated and the policy-id paths; micro-batching; bad input.

One gloo rank in this process (LocalWorkerGroup), the tiny Qwen2's tokenizer, a tiny random Qwen2 reward model saved
with save_pretrained; no Ray.
"""

from __future__ import annotations

import socket

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from helpers import config_stage_error, save_reward_model, worker_config
from rl_trainer.batch import Batch
from rl_trainer.distributed import LocalWorkerGroup
from rl_trainer.errors import UserError
from rl_trainer.workers.reward_model import RewardModelWorker

QUESTIONS = ["What is 2 + 3?", "Tom has 4 apples and eats one. How many are left?", "Name a prime.", "7 * 6 = ?"]


@pytest.fixture(scope="module")
def reward_model_dir(tiny_models, tmp_path_factory) -> str:
    return save_reward_model(tmp_path_factory.mktemp("rm"), tiny_models["qwen2"])


def policy_batch(tokenizer) -> Batch:
    """4 generated rows as the rollout lays them out: left-padded ChatML prompts (8 + 12 columns), right-padded
    responses of 5, 1, 8 and 3 tokens (the first and third end in EOS, the policy's pad id)."""
    P, R = 24, 8
    lengths = [5, 1, 8, 3]
    g = torch.Generator().manual_seed(0)
    prompts = torch.full((4, P), tokenizer.pad_token_id)
    responses = torch.full((4, R), tokenizer.pad_token_id)
    mask = torch.zeros((4, P + R), dtype=torch.long)
    for i, (question, n) in enumerate(zip(QUESTIONS, lengths)):
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                             tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][-P:]
        prompts[i, P - len(ids):] = torch.tensor(ids)
        responses[i, :n] = torch.randint(3, len(tokenizer), (n,), generator=g)
        if i in (0, 2):
            responses[i, n - 1] = tokenizer.eos_token_id
        mask[i, P - len(ids): P + n] = 1
    return Batch({"input_ids": torch.cat([prompts, responses], 1), "attention_mask": mask,
                  "position_ids": (mask.cumsum(-1) - 1).clamp(min=0), "responses": responses},
                 {"raw_prompt": [[{"role": "user", "content": q}] for q in QUESTIONS]})


def direct_scores(model_dir: str, rows: list[list[int]]) -> torch.Tensor:
    """AutoModelForSequenceClassification.from_pretrained, one unpadded row at a time (no pad token: the score is
    the one at the row's last token)."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    model.config.pad_token_id = None
    with torch.no_grad():
        return torch.stack([model(input_ids=torch.tensor([ids])).logits[0, 0] for ids in rows])


@pytest.fixture
def worker_factory(tiny_models, reward_model_dir):
    groups = []

    def make(extra=(), input_tokenizer: str | None = str(tiny_models["qwen2"])) -> RewardModelWorker:
        config = worker_config(tiny_models["qwen2"], 1, 2, ["reward_model.enable=true",
                                                             f"reward_model.model.path={reward_model_dir}", *extra])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        group = LocalWorkerGroup("reward_model", RewardModelWorker, config, rank=0, ranks=1, device="cpu", threads=1,
                                 master=("127.0.0.1", port))
        groups.append(group)
        group.call("init_model", reward_model_dir, input_tokenizer)
        return group.worker

    yield make
    for group in groups:
        group.shutdown()


def test_rm_scores_equal_a_direct_forward_of_the_re_templated_texts(worker_factory, tiny_models, reward_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["qwen2"])
    batch = policy_batch(tokenizer)
    worker = worker_factory()
    rm_scores = worker.compute_rm_score(batch)["rm_scores"]
    # By hand: the RM's template renders "user: <question>\nassistant: <response>\n", the response decoded with the
    # policy's tokenizer and its EOS string dropped; tokenized without added special tokens.
    lengths = [5, 1, 8, 3]
    texts = []
    for i, n in enumerate(lengths):
        response = tokenizer.decode(batch["responses"][i, :n].tolist()).replace(tokenizer.eos_token, "")
        texts.append(f"user: {QUESTIONS[i]}\nassistant: {response}\n")
    expected = direct_scores(reward_model_dir, [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts])
    assert rm_scores.shape == (4, 8)
    for i, n in enumerate(lengths):
        torch.testing.assert_close(rm_scores[i, n - 1], expected[i], rtol=1e-5, atol=1e-6)
        assert rm_scores[i].count_nonzero() == 1  # only on the last valid response token

    # Micro-batches of 3 rows, and token budgets of one row each, give the same scores in the rows' order.
    worker.config.reward_model.micro_batch_size_per_gpu = 3
    torch.testing.assert_close(worker.compute_rm_score(batch)["rm_scores"], rm_scores, rtol=1e-5, atol=1e-6)
    worker.config.reward_model.use_dynamic_bsz = True
    worker.config.reward_model.forward_max_token_len_per_gpu = 32
    torch.testing.assert_close(worker.compute_rm_score(batch)["rm_scores"], rm_scores, rtol=1e-5, atol=1e-6)

    # reward_model.max_length=6: the re-templated input is cut on the right, the score read at its 6th token.
    worker.config.reward_model.max_length = 6
    cut = worker.compute_rm_score(batch)["rm_scores"]
    first6 = [tokenizer(t, add_special_tokens=False)["input_ids"][:6] for t in texts]
    for i, n in enumerate(lengths):
        torch.testing.assert_close(cut[i, n - 1], direct_scores(reward_model_dir, [first6[i]])[0], rtol=1e-5, atol=1e-6)


def test_input_tokenizer_null_scores_the_policy_ids(worker_factory, tiny_models, reward_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["qwen2"])
    batch = policy_batch(tokenizer)
    worker = worker_factory(["reward_model.model.input_tokenizer=null"], input_tokenizer=None)
    rm_scores = worker.compute_rm_score(batch)["rm_scores"]
    mask = batch["attention_mask"].bool()
    rows = [batch["input_ids"][i][mask[i]].tolist() for i in range(4)]  # prompt ++ response, EOS included
    expected = direct_scores(reward_model_dir, rows)
    for i, n in enumerate([5, 1, 8, 3]):
        torch.testing.assert_close(rm_scores[i, n - 1], expected[i], rtol=1e-5, atol=1e-6)


def run_dir_error(tiny_models, gsm8k_dir, tmp_path, extra) -> Exception:
    overrides = [f"actor_rollout_ref.model.path={tiny_models['qwen2']}", f"data.train_files={gsm8k_dir}/train.parquet",
                 "data.val_files=null", "data.train_batch_size=2", "actor_rollout_ref.rollout.n=2",
                 "actor_rollout_ref.actor.ppo_mini_batch_size=2", "trainer.n_gpus_per_node=1",
                 f"trainer.default_local_dir={tmp_path}/ckpt", "reward_model.enable=true", *extra]
    return config_stage_error(overrides, tmp_path / "run")


def test_bad_reward_models_are_one_line_before_ray(tiny_models, gsm8k_dir, reward_model_dir, tmp_path):
    def message(extra) -> str:
        exc = run_dir_error(tiny_models, gsm8k_dir, tmp_path, extra)
        assert isinstance(exc, UserError), repr(exc)
        assert "\n" not in str(exc)
        return str(exc)

    assert "needs reward_model.model.path" in message([])
    # A causal LM: no score head; the message says how to train one.
    text = message([f"reward_model.model.path={tiny_models['qwen2']}"])
    assert "is a causal LM (Qwen2ForCausalLM) without a score head" in text and "python -m rl_trainer.rm" in text
    # A reward model whose tokenizer has no chat template cannot re-render the policy's chats.
    no_template = save_reward_model(tmp_path / "rm-no-template", tiny_models["qwen2"], chat_template=None)
    text = message([f"reward_model.model.path={no_template}"])
    assert f"reward_model.model.path={no_template}: its tokenizer cannot render" in text
    assert "reward_model.model.input_tokenizer=null" in text
    # Scoring the policy's ids needs the policy's vocabulary.
    other_vocab = tmp_path / "rm-other-vocab"
    save_reward_model(other_vocab, tiny_models["qwen2"])
    tokenizer = AutoTokenizer.from_pretrained(other_vocab)
    tokenizer.add_tokens(["<extra_token>"])
    tokenizer.save_pretrained(other_vocab)
    text = message([f"reward_model.model.path={other_vocab}", "reward_model.model.input_tokenizer=null"])
    assert "has another vocabulary" in text
    assert "reward_model.micro_batch_size_per_gpu=0 must be a positive integer" in message(
        [f"reward_model.model.path={reward_model_dir}", "reward_model.micro_batch_size_per_gpu=0"])
