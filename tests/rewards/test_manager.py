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
