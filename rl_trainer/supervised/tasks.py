"""The two supervised tasks the shared loop (rl_trainer.supervised.loop) trains: SFT and reward modelling.

A task says what its examples are, which model it trains, and one micro-batch's loss. Its loss is already the
micro-batch's share of the step's loss: summed over the micro-batch and divided by the step's global `weight`
(target tokens for SFT, pairs for the reward model, over every rank), times the world size because FSDP averages
gradients over ranks (verl 0.9.1's sft_loss normalises the same way: `/ batch_num_tokens * dp_size`). So the
micro-batch split and the number of ranks change the gradient only by float rounding.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rl_trainer.supervised import data as sdata
from rl_trainer.workers import loading


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), (rows, longest), padded on the right with `pad_id`."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def model_kwargs(cfg: Any) -> dict:
    model = cfg.model
    return dict(trust_remote_code=model.trust_remote_code, override_config=dict(model.override_config or {}),
                gradient_checkpointing=model.enable_gradient_checkpointing)


class SFTTask:
    """Next-token cross-entropy on the trained tokens of each example (response / assistant turns)."""

    name = "sft"
    auto_class = AutoModelForCausalLM
    loss_name = "data.train_batch_size target tokens"

    def load_examples(self, files: list[str], cfg: Any, tokenizer: Any, max_samples: int, key: str) -> list:
        return sdata.load_sft_examples(files, cfg.data, tokenizer, max_samples, key)

    def load_model(self, path: str, cfg: Any, tokenizer: Any) -> Any:
        return loading.load_causal_lm(path, key=cfg.model_key, **model_kwargs(cfg))

    @staticmethod
    def weight(examples: Sequence[sdata.SFTExample]) -> int:
        """Target tokens: those predicted from a previous token (position 0 never is)."""
        return sum(sum(e.target_mask[1:]) for e in examples)

    @staticmethod
    def micro_loss(model: Any, examples: Sequence[sdata.SFTExample], weight: float, world: int, pad_id: int,
                   device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ids, mask = pad_right([e.input_ids for e in examples], pad_id)
        targets, _ = pad_right([e.target_mask for e in examples], 0)
        ids, mask, targets = ids.to(device), mask.to(device), targets.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
        nll_sum = (nll * targets[:, 1:].reshape(-1)).sum()
        return nll_sum / weight * world, {"nll": nll_sum.detach(), "tokens": targets[:, 1:].sum().float()}

    @staticmethod
    def metrics(sums: dict[str, float], prefix: str) -> dict[str, float]:
        """loss: the mean negative log-likelihood per target token."""
        return {f"{prefix}/loss": sums["nll"] / max(sums["tokens"], 1.0)}


class RewardModelTask:
    """Bradley-Terry on preference pairs: loss -log sigmoid(r_chosen - r_rejected - margin)."""

    name = "rm"
    auto_class = AutoModelForSequenceClassification

    def load_examples(self, files: list[str], cfg: Any, tokenizer: Any, max_samples: int, key: str) -> list:
        return sdata.load_preference_pairs(files, cfg.data, tokenizer, max_samples, key)

    def load_model(self, path: str, cfg: Any, tokenizer: Any) -> Any:
        return loading.init_reward_model(path, key=cfg.model_key, pad_token_id=tokenizer.pad_token_id,
                                         **model_kwargs(cfg))

    @staticmethod
    def weight(pairs: Sequence[sdata.PreferencePair]) -> int:
        return len(pairs)

    @staticmethod
    def scores(model: Any, sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> torch.Tensor:
        """(rows,) rewards: the head's output at each sequence's last non-pad token (transformers' pooling)."""
        ids, mask = pad_right(sequences, pad_id)
        return model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, 0].float()

    @classmethod
    def micro_loss(cls, model: Any, pairs: Sequence[sdata.PreferencePair], weight: float, world: int, pad_id: int,
                   device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = len(pairs)
        scores = cls.scores(model, [p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, device)
        chosen, rejected = scores[:n], scores[n:]
        margin = torch.tensor([p.margin for p in pairs], dtype=torch.float32, device=device)
        per_pair = bradley_terry_loss(chosen, rejected, margin)
        gap = (chosen - rejected).detach()
        sums = {"loss": per_pair.sum().detach(), "correct": (gap > 0).sum().float(), "gap": gap.sum(),
                "chosen": chosen.detach().sum(), "rejected": rejected.detach().sum(),
                "pairs": torch.tensor(float(n), device=device)}
        return per_pair.sum() / weight * world, sums

    @staticmethod
    def metrics(sums: dict[str, float], prefix: str) -> dict[str, float]:
        """loss: mean BT loss; accuracy: share of pairs with r_chosen > r_rejected (a tie counts as wrong);
        reward_gap: mean r_chosen - r_rejected; chosen_reward / rejected_reward: their means."""
        n = max(sums["pairs"], 1.0)
        return {f"{prefix}/loss": sums["loss"] / n, f"{prefix}/accuracy": sums["correct"] / n,
                f"{prefix}/reward_gap": sums["gap"] / n, f"{prefix}/chosen_reward": sums["chosen"] / n,
                f"{prefix}/rejected_reward": sums["rejected"] / n}


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Per pair -log sigmoid(r_chosen - r_rejected - margin) (Bradley-Terry; the margin as in Llama 2's reward model,
    https://arxiv.org/abs/2307.09288 eq. 2), computed stably as softplus(-(gap - margin))."""
    return F.softplus(-(chosen - rejected - margin))
