"""The Bradley-Terry loss and the pairwise metrics by hand."""

from __future__ import annotations

import math

import torch

from rl_trainer.supervised.tasks import RewardModelTask, SFTTask, bradley_terry_loss


def test_bradley_terry_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    # gaps +1 and -1: -log sigmoid(1) = log(1 + e^-1) = 0.313262, -log sigmoid(-1) = log(1 + e) = 1.313262
    loss = bradley_terry_loss(chosen, rejected)
    assert torch.allclose(loss, torch.tensor([math.log1p(math.exp(-1)), math.log1p(math.e)]))
    # margin 1 on the first pair: gap - margin = 0 -> log 2
    assert math.isclose(bradley_terry_loss(chosen, rejected, torch.tensor([1.0, 0.0]))[0].item(), math.log(2),
                        rel_tol=1e-6)


def test_pairwise_metrics_by_hand():
    # 4 pairs with gaps 1, -1, 0 (a tie counts as wrong), 2: accuracy 2/4, mean gap 0.5
    sums = {"loss": 4.0, "correct": 2.0, "gap": 2.0, "chosen": 6.0, "rejected": 4.0, "pairs": 4.0}
    assert RewardModelTask.metrics(sums, "val") == {"val/loss": 1.0, "val/accuracy": 0.5, "val/reward_gap": 0.5,
                                                    "val/chosen_reward": 1.5, "val/rejected_reward": 1.0}


def test_sft_loss_is_the_token_mean_over_the_global_batch():
    class Uniform(torch.nn.Module):  # logits that give every token of a 4-token vocabulary probability 1/4
        def forward(self, input_ids, attention_mask):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 4, requires_grad=True)})()

    from rl_trainer.supervised.data import SFTExample

    examples = [SFTExample([1, 2, 3], [0, 1, 1]), SFTExample([1, 2], [0, 1])]
    weight = SFTTask.weight(examples)  # 3 target tokens
    loss, sums = SFTTask.micro_loss(Uniform(), examples, weight, 2, 0, torch.device("cpu"))
    # each target costs log 4; summed 3 log 4, / 3 tokens, x world size 2 (FSDP averages gradients over ranks)
    assert math.isclose(loss.item(), 2 * math.log(4), rel_tol=1e-6)
    assert math.isclose(SFTTask.metrics({k: float(v) for k, v in sums.items()}, "train")["train/loss"], math.log(4),
                        rel_tol=1e-6)
