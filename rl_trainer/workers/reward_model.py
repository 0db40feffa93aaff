"""The reward-model worker: an FSDP2 sequence classifier that scores every generated response (verl's FSDP
RewardModelWorker, `reward_model.*`), colocated with the actor on every device like the critic.

Inputs. With `reward_model.model.input_tokenizer` (default: the policy's tokenizer) each row's chat is rebuilt and
re-rendered in the reward model's own format (verl's `_switch_chat_template`): the response is decoded with the
input tokenizer (special tokens kept, its EOS string removed), appended to the row's prompt messages (`raw_prompt`)
as the assistant turn, rendered by the reward model's chat template without a generation prompt, tokenized without
added special tokens, cut on the right to `reward_model.max_length` tokens (null: the policy's prompt + response
width) and right-padded. As in verl this happens whenever input_tokenizer is set, even when both tokenizers are the
same one. With input_tokenizer=null the policy's own token ids are scored (both models must share a tokenizer).

Output. The model's score at each input's last attended token (verl: argmax of position_ids * attention_mask), put
on the last valid token of the policy's row, in the response columns: `rm_scores`, (bs, response_length), zero
elsewhere. A response with no valid token scores nothing (its last valid token is in the prompt), as in verl.

The model is frozen: it is loaded from reward_model.model.path at every start (also on resume) and holds no
training state, so checkpoints do not include it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from jinja2 import TemplateError

from rl_trainer.batch import Batch
from rl_trainer.errors import UserError
from rl_trainer.workers import fsdp
from rl_trainer.workers.common import WorkerBase, freeze_startup_objects, in_row_order
from rl_trainer.workers.loading import load_reward_model, load_tokenizer

def rm_chat_text(messages: Sequence[dict], response_ids: Sequence[int], src_tokenizer: Any, rm_tokenizer: Any) -> str:
    """One row in the reward model's chat format: the response decoded with the policy's tokenizer (special tokens
    kept, its EOS string removed, as verl), appended to the prompt messages as the assistant's turn, and rendered by
    the reward model's chat template without a generation prompt."""
    response = src_tokenizer.decode(list(response_ids))
    if src_tokenizer.eos_token:
        response = response.replace(src_tokenizer.eos_token, "")
    chat = [dict(m) for m in messages] + [{"role": "assistant", "content": response}]
    return rm_tokenizer.apply_chat_template(chat, add_generation_prompt=False, tokenize=False)


def retemplated_inputs(batch: Batch, src_tokenizer: Any, rm_tokenizer: Any, max_length: int | None) -> Batch:
    """input_ids / attention_mask / position_ids of every row re-rendered for the reward model (`rm_chat_text`),
    tokenized without added special tokens, cut on the right to `max_length` (None: the batch's prompt + response
    width) and right-padded with the reward model's pad token, as verl's tokenize_and_postprocess_data."""
    width = max_length or batch.tensors["attention_mask"].shape[1]
    response_len = batch.tensors["responses"].shape[1]
    valid = batch.tensors["attention_mask"][:, -response_len:].sum(-1).tolist()
    rows = []
    for i, messages in enumerate(batch["raw_prompt"]):
        text = rm_chat_text(messages, batch.tensors["responses"][i, : int(valid[i])].tolist(), src_tokenizer,
                            rm_tokenizer)
        rows.append(rm_tokenizer(text, add_special_tokens=False)["input_ids"][:width])
    input_ids = torch.full((len(rows), width), rm_tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, : len(ids)] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return Batch({"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids})


def last_token_index(attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Each row's last attended column (verl's `argmax(position_ids * attention_mask)`), (bs,)."""
    return torch.argmax(position_ids * attention_mask, dim=-1)


def sequence_scores(model: torch.nn.Module, inputs: Batch, device: torch.device) -> torch.Tensor:
    """The score at each row's last attended token, (bs,) float32. Only the columns some row attends to run through
    the model: a masked column changes no other position's output (padding of either side)."""
    t = inputs.tensors
    attended = t["attention_mask"].bool().any(dim=0).nonzero()
    start, end = (int(attended[0]), int(attended[-1]) + 1) if len(attended) else (0, 1)
    ids, mask, pos = (t[k][:, start:end].to(device) for k in ("input_ids", "attention_mask", "position_ids"))
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits.squeeze(-1).float()
    return logits[torch.arange(len(ids), device=device), last_token_index(mask, pos)].cpu()


def token_level_rm_scores(batch: Batch, scores: torch.Tensor) -> torch.Tensor:
    """`scores` (bs,) on the policy rows' last valid token, response columns only: rm_scores (bs, response_length)
    (verl's _expand_to_token_level)."""
    attention_mask = batch.tensors["attention_mask"]
    out = torch.zeros(attention_mask.shape, dtype=torch.float32)
    out[torch.arange(len(scores)), last_token_index(attention_mask, batch.tensors["position_ids"])] = scores
    return out[:, -batch.tensors["responses"].shape[1]:]


class RewardModelWorker(WorkerBase):
    def init_model(self, model_path: str, input_tokenizer_path: str | None) -> None:
        """Load the reward model (FSDP2-sharded, frozen, eval mode), its tokenizer and, to decode responses for its
        chat template, the policy's (`input_tokenizer_path`; None: score the policy's token ids as they are)."""
        cfg = self.config.reward_model
        trust = cfg.model.trust_remote_code
        self.rm_tokenizer = load_tokenizer(model_path, "reward_model.model.path", trust_remote_code=trust)
        self.src_tokenizer = None if input_tokenizer_path is None else load_tokenizer(
            input_tokenizer_path, "reward_model.model.input_tokenizer", trust_remote_code=trust)
        model = load_reward_model(model_path, trust_remote_code=trust, override_config=dict(cfg.model.override_config))
        model.requires_grad_(False)
        mp = self.config.actor_rollout_ref.actor.fsdp_config.mixed_precision
        self.model = fsdp.shard_model(model.eval(), self.device, param_offload=cfg.model.fsdp_config.param_offload,
                                      reshard_after_forward=cfg.model.fsdp_config.reshard_after_forward,
                                      param_dtype=mp.param_dtype, reduce_dtype=mp.reduce_dtype)
        freeze_startup_objects()

    @torch.no_grad()
    def compute_rm_score(self, batch: Batch) -> Batch:
        """rm_scores (bs, response_length) of this rank's rows: the inputs (re-templated with input_tokenizer, or
        the policy's ids) in micro-batches of reward_model.micro_batch_size_per_gpu rows, or with use_dynamic_bsz
        of forward_max_token_len_per_gpu tokens; in the rows' order."""
        cfg = self.config.reward_model
        if self.src_tokenizer is not None:
            inputs = retemplated_inputs(batch, self.src_tokenizer, self.rm_tokenizer, cfg.max_length)
        else:
            inputs = Batch({k: batch.tensors[k] for k in ("input_ids", "attention_mask", "position_ids")})
        micros, inverse = self.split_micro_batches(inputs, cfg.micro_batch_size_per_gpu, cfg.use_dynamic_bsz,
                                                   cfg.forward_max_token_len_per_gpu,
                                                   "reward_model.forward_max_token_len_per_gpu")
        scores = in_row_order([sequence_scores(self.model, mb, self.device) for mb in micros], inverse)
        return Batch({"rm_scores": token_level_rm_scores(batch, scores)})


def check_reward_model_tokenizers(rm_tokenizer: Any, src_tokenizer: Any | None, policy_tokenizer: Any,
                                  model_path: str) -> None:
    """At start-up (the driver's input stage, before any worker loads a model): the reward model's tokenizer can take this run's rows. With an input tokenizer, its chat
    template renders a prompt + response (the same call scoring makes); without one, it is the policy's vocabulary
    (the policy's ids are fed to the reward model as they are)."""
    if src_tokenizer is None:
        if rm_tokenizer.get_vocab() != policy_tokenizer.get_vocab():
            raise UserError(f"reward_model.model.input_tokenizer=null scores the policy's token ids, but the reward "
                            f"model's tokenizer ({model_path}) has another vocabulary; set "
                            f"reward_model.model.input_tokenizer to the policy's tokenizer (its default) so responses "
                            f"are re-tokenized for the reward model")
        return
    sample = [{"role": "user", "content": "1 + 1 ="}]
    try:
        rm_chat_text(sample, src_tokenizer("2", add_special_tokens=False)["input_ids"], src_tokenizer, rm_tokenizer)
    except (ValueError, TypeError, KeyError, TemplateError) as exc:  # no chat_template, or one that fails on a chat
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"reward_model.model.path={model_path}: its tokenizer cannot render a prompt + response with "
                        f"its chat template ({first}); save a tokenizer with a chat_template in the reward model's "
                        f"folder, or set reward_model.model.input_tokenizer=null to score the policy's token ids "
                        f"(only when both models share a tokenizer)") from None
