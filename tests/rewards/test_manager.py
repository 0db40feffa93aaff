"""compute_token_level_scores with a real (tiny, word-level) tokenizer."""

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast

from rl_trainer.errors import UserError
from rl_trainer.rewards.custom import load_custom_reward_fn
from rl_trainer.rewards.manager import compute_token_level_scores

WORDS = ["<pad>", "<eos>", "<unk>", "####", "the", "answer", "is", "71", "72", "1,234"]
RESPONSE_LENGTH = 6


@pytest.fixture(scope="module")
def tokenizer():
    model = WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="<unk>")
    backend = Tokenizer(model)
    backend.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def _batch(tokenizer, texts):
    """Right-padded (bs, RESPONSE_LENGTH) ids and mask, every response ending in EOS like a finished rollout."""
    rows = [tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id] for text in texts]
    responses = torch.full((len(rows), RESPONSE_LENGTH), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), RESPONSE_LENGTH), dtype=torch.long)
    for i, ids in enumerate(rows):
        responses[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
    return responses, mask


def test_gsm8k_scores_land_on_the_last_valid_token(tokenizer):
    responses, mask = _batch(tokenizer, ["the answer is #### 72", "#### 1,234", "the answer is 72"])
    # Row 0: 5 words + EOS = 6 valid tokens -> last valid index 5; "#### 72" == "72" -> 1.0.
    # Row 1: 2 words + EOS = 3 valid -> index 2; "1,234" loses its comma -> "1234" == gt -> 1.0.
    # Row 2: 4 words + EOS = 5 valid -> index 4; no "####" -> 0.0, so the row stays all zeros.
    out = compute_token_level_scores(
        responses, mask, ["openai/gsm8k"] * 3, ["72", "1234", "72"], tokenizer, extra_infos=[None, {}, {"index": 2}]
    )
    expected = torch.zeros(3, RESPONSE_LENGTH)
    expected[0, 5] = 1.0
    expected[1, 2] = 1.0
    assert out.token_level_scores.dtype == torch.float32
    torch.testing.assert_close(out.token_level_scores, expected)
    assert out.reward_extra_info == {}


def test_decoded_text_skips_special_tokens_and_extra_keys_come_back(tokenizer):
    responses, mask = _batch(tokenizer, ["the answer is #### 71", "#### 72"])
    calls = []

    def score_fn(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
        calls.append((data_source, solution_str, ground_truth, extra_info))
        return {"score": 0.25 * len(solution_str.split()), "words": len(solution_str.split())}

    extra_infos = [{"index": 0}, {"index": 1}]
    out = compute_token_level_scores(
        responses, mask, ["a", "b"], ["71", "72"], tokenizer, extra_infos=extra_infos, compute_score=score_fn
    )
    # Neither the EOS nor the padding reaches the scorer.
    assert calls == [
        ("a", "the answer is #### 71", "71", {"index": 0}),
        ("b", "#### 72", "72", {"index": 1}),
    ]
    # Row 0: 5 words -> 1.25 at index 5 (5 words + EOS). Row 1: 2 words -> 0.5 at index 2.
    assert out.token_level_scores[0].tolist() == [0, 0, 0, 0, 0, 1.25]
    assert out.token_level_scores[1].tolist() == [0, 0, 0.5, 0, 0, 0]
    # "score" itself is the tensor; only the other keys are returned, one value per row.
    assert out.reward_extra_info == {"words": [5, 2]}


def test_custom_reward_file_through_the_manager(tmp_path, tokenizer):
    path = tmp_path / "reward.py"
    path.write_text(
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None, bonus=0.0, **kwargs):\n"
        "    return float(solution_str.endswith(ground_truth)) + bonus\n"
    )
    fn = load_custom_reward_fn(str(path), reward_kwargs={"bonus": 0.5})
    responses, mask = _batch(tokenizer, ["#### 72", "#### 71"])
    out = compute_token_level_scores(responses, mask, ["x", "x"], ["72", "72"], tokenizer, compute_score=fn)
    # Row 0 ends with "72": 1 + 0.5 at index 2; row 1 does not: 0 + 0.5 at index 2.
    assert out.token_level_scores[:, 2].tolist() == [1.5, 0.5]
    assert out.token_level_scores.sum().item() == 2.0


def test_row_without_valid_tokens_matches_verl(tokenizer):
    # verl writes reward_tensor[i, valid_length - 1]; with valid_length 0 that is column -1 (padding),
    # after scoring the empty string.
    responses = torch.full((1, RESPONSE_LENGTH), tokenizer.pad_token_id)
    mask = torch.zeros((1, RESPONSE_LENGTH), dtype=torch.long)
    seen = []

    def score_fn(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
        seen.append(solution_str)
        return 0.75

    out = compute_token_level_scores(responses, mask, ["x"], ["1"], tokenizer, compute_score=score_fn)
    assert seen == [""]
    assert out.token_level_scores.tolist() == [[0, 0, 0, 0, 0, 0.75]]


def test_inconsistent_extra_keys_are_a_user_error(tokenizer):
    responses, mask = _batch(tokenizer, ["#### 72", "#### 71"])

    def score_fn(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
        return {"score": 1.0, "acc": 1.0} if "72" in solution_str else 0.0

    with pytest.raises(UserError, match="'acc' for 1 of 2"):
        compute_token_level_scores(responses, mask, ["x", "x"], ["72", "72"], tokenizer, compute_score=score_fn)


def test_length_mismatch(tokenizer):
    responses, mask = _batch(tokenizer, ["#### 72", "#### 71"])
    with pytest.raises(ValueError, match="ground_truths has 1 entries for a batch of 2"):
        compute_token_level_scores(responses, mask, ["x", "x"], ["72"], tokenizer)


def test_dapo_manager_reports_acc_and_adds_the_overlong_penalty(tokenizer):
    """verl's DAPORewardManager: a number is also reported as "acc"; the overlong penalty is added to every score.
    max_resp_len=6, len=4: no penalty up to 6 - 4 = 2 tokens, then -(L - 2) / 4 * 0.5 per token over."""
    from rl_trainer.rewards.manager import OverlongBuffer

    responses, mask = _batch(tokenizer, ["71", "the answer is 71"])  # 2 and 5 tokens with EOS
    out = compute_token_level_scores(responses, mask, ["openai/gsm8k"] * 2, ["71", "71"], tokenizer,
                                     compute_score=lambda **kw: 1.0, manager="dapo",
                                     overlong=OverlongBuffer(len=4, penalty_factor=0.5, log=True, max_resp_len=6))
    # row 0: L=2 -> penalty 0, score 1 at column 1; row 1: L=5 -> -(5 - 2) / 4 * 0.5 = -0.375, 1 - 0.375 at column 4
    assert out.token_level_scores[0].tolist() == [0, 1.0, 0, 0, 0, 0]
    assert out.token_level_scores[1].tolist() == [0, 0, 0, 0, 0.625, 0]
    assert out.reward_extra_info == {"acc": [1.0, 1.0], "overlong_reward": [0.0, -0.375], "overlong": [False, True]}
    naive = compute_token_level_scores(responses, mask, ["openai/gsm8k"] * 2, ["71", "71"], tokenizer,
                                       compute_score=lambda **kw: {"score": 1.0, "x": 2})
    assert naive.reward_extra_info == {"x": [2, 2]}  # naive: no acc, "score" not repeated


def test_reward_manager_and_overlong_keys_are_checked():
    from omegaconf import OmegaConf

    from rl_trainer.rewards.manager import OverlongBuffer, overlong_buffer, reward_manager_name

    def cfg(manager=None, name="naive", recipe=None, kwargs=None):
        buffer = {"enable": False, "len": 0, "penalty_factor": 0.0, "log": False, **(recipe or {})}
        return OmegaConf.create({"data": {"max_response_length": 16}, "reward": {"reward_manager": {"name": name}},
                                 "reward_model": {"reward_manager": manager, "overlong_buffer": buffer,
                                                  **({"reward_kwargs": kwargs} if kwargs else {})}})

    assert reward_manager_name(cfg(name="dapo")) == "dapo" and reward_manager_name(cfg("dapo")) == "dapo"
    with pytest.raises(UserError, match=r"^reward_model.reward_manager=prime: rl_trainer does not implement it"):
        reward_manager_name(cfg("prime"))
    with pytest.raises(UserError, match=r"^reward.reward_manager.name='nope' is not valid; choose one of: naive, dapo"):
        reward_manager_name(cfg(name="nope"))
    assert overlong_buffer(cfg("dapo")) is None
    # verl 0.9.1's spelling, max_resp_len defaulting to data.max_response_length
    verl = {"overlong_buffer_cfg": {"enable": True, "len": 4, "penalty_factor": 1.0, "log": False}}
    assert overlong_buffer(cfg("dapo", kwargs=verl)) == OverlongBuffer(4, 1.0, False, 16)
    assert overlong_buffer(cfg("dapo", recipe={"enable": True, "len": 8})).len == 8
    for bad, match in [
        (cfg(recipe={"enable": True, "len": 4}), "read only by the dapo reward manager"),
        (cfg("dapo", recipe={"enable": True, "len": 0}), r"overlong_buffer.len=0 must be an integer > 0"),
        (cfg("dapo", recipe={"enable": True, "len": 17}), r"<= max_resp_len=16"),
        (cfg("dapo", kwargs={"foo": 1}), r"reward_kwargs.foo: nothing in rl_trainer reads"),
        (cfg("dapo", recipe={"len": 2}, kwargs={"overlong_buffer_cfg": {"len": 3}}), "disagree"),
    ]:
        with pytest.raises(UserError, match=match):
            overlong_buffer(bad)
