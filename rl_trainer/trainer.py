"""The single controller: the PPO/GRPO loop, read top to bottom.

    generate -> score -> old log-probs -> reference log-probs -> values -> KL in reward -> advantages
             -> update critic -> update actor -> validate / checkpoint -> log

The driver owns the data, the rewards and the cheap math (KL penalty, advantages, metrics); worker groups
own the models. It never touches a model: it moves `Batch`es between worker groups.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig, OmegaConf

from rl_trainer import checkpoint as ckpt_io
from rl_trainer.algos import (TOKEN_BASELINE_ESTIMATORS, apply_kl_penalty, compute_advantage,
                              compute_rollout_correction_and_rejection_mask, get_kl_controller, masked_mean)
from rl_trainer.batch import Batch
from rl_trainer.checkpoint import CheckpointManager
from rl_trainer.dumps import generation_records, write_step_jsonl
from rl_trainer.errors import UserError
from rl_trainer.faults import fault_point
from rl_trainer.metrics import (compute_data_metrics, compute_throughput_metrics, compute_timing_metrics, peak_rss_bytes,
                                probs_diff_metrics, probs_diff_sums, seqlen_balance_metrics, timed)
from rl_trainer.filter_groups import equal_group_ratio, metric_values, varying_group_rows
from rl_trainer.rewards.manager import RewardOutput, compute_token_level_scores, overlong_buffer, reward_manager_name
from rl_trainer.tracking import ProgressBar, Tracking
from rl_trainer.workers.micro_batching import balanced_rank_order

if TYPE_CHECKING:  # the loop runs on Ray's WorkerGroup or the in-process LocalWorkerGroup; neither Ray nor datasets
    # is imported here, so the torchrun driver runs this loop where they are not installed
    from rl_trainer.data.rl_dataset import PromptLoader
    from rl_trainer.distributed import LocalWorkerGroup, WorkerGroup

log = logging.getLogger(__name__)

GENERATION_INPUTS = ("prompts", "attention_mask", "position_ids")
# What the reward model reads of a generated row (rl_trainer.workers.reward_model): its ids, and its chat messages
# to re-render them in the reward model's chat template.
REWARD_MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "responses")


class PPOTrainer:
    def __init__(self, cfg: DictConfig, *, tokenizer, train_loader: PromptLoader | None,
                 val_loader: PromptLoader | None, actor: WorkerGroup | LocalWorkerGroup,
                 critic: WorkerGroup | LocalWorkerGroup | None, use_ref: bool, reward_fn, tracker: Tracking | None,
                 checkpoints: CheckpointManager | None, total_steps: int, resume_path: Path | None,
                 reward_model: WorkerGroup | LocalWorkerGroup | None = None):
        """train_loader, tracker and checkpoints serve fit() and save_checkpoint(); a caller that drives
        train_step itself (the torchrun driver) may pass None for them and must keep trainer.save_freq off.
        val_loader: any re-iterable of prompt Batches (validate() only iterates it). reward_model: the group of
        rl_trainer.workers.reward_model.RewardModelWorker (reward_model.enable), or None."""
        self.cfg, self.tokenizer = cfg, tokenizer
        self.train_loader, self.val_loader = train_loader, val_loader
        self.actor, self.critic, self.use_ref = actor, critic, use_ref
        self.reward_model = reward_model
        self.reward_fn, self.tracker, self.checkpoints = reward_fn, tracker, checkpoints
        self.total_steps, self.resume_path = total_steps, resume_path
        self.kl_ctrl = get_kl_controller(**OmegaConf.to_container(cfg.algorithm.kl_ctrl))
        self.global_step = 0
        self._no_signal_reported = False

    # ------------------------------------------------------------------------------------------ the loop
    def fit(self) -> None:
        trainer_cfg = self.cfg.trainer
        if self.resume_path is not None:
            self._resume(self.resume_path)
        if self.val_loader is not None and (trainer_cfg.val_before_train or trainer_cfg.val_only):
            self.tracker.log(self.validate(), step=self.global_step)
            if trainer_cfg.val_only:
                return
        batches = self._prompt_batches()
        with ProgressBar(self.total_steps, initial=self.global_step) as progress:
            while self.global_step < self.total_steps:
                epoch = self.train_loader.epoch
                prompts = next(batches, None)
                if prompts is None:
                    break
                self.global_step += 1
                try:
                    metrics = self.train_step(prompts, epoch, more_prompts=functools.partial(next, batches, None))
                except _DataExhausted as exc:
                    self.global_step -= 1
                    print(exc, flush=True)
                    break
                self.tracker.log(metrics, step=self.global_step)
                progress.update()

    def _prompt_batches(self) -> Iterator[Batch]:
        """The training loader's batches, epoch after epoch, for trainer.total_epochs epochs. One per step, except
        under dynamic sampling (algorithm.filter_groups), where a step may draw several: the loader's position then
        counts every batch drawn, so a checkpoint resumes with the next unseen one."""
        while self.train_loader.epoch < self.cfg.trainer.total_epochs:
            yield from self.train_loader
            fault_point("epoch_end", self.global_step)

    def train_step(self, prompts: Batch, epoch: int, more_prompts: Callable[[], Batch | None] | None = None
                   ) -> dict[str, float]:
        """One step on `prompts`; `more_prompts` gives the next generation batch (None when the data is spent), for
        dynamic sampling only."""
        cfg, step = self.cfg, self.global_step
        is_last = step >= self.total_steps
        timing: dict[str, float] = {}
        metrics: dict[str, float] = {}
        phase = functools.partial(_phase, step=step, timing=timing)
        with timed("step", timing):
            batch = self._rollout(prompts, more_prompts, phase, metrics)
            if cfg.trainer.balance_batch:  # similar token counts per worker; every column (uid too) moves with its row
                batch = _balance_batch(batch, self.actor.world_size, metrics,
                                       keep_groups=cfg.actor_rollout_ref.model.share_prompt_prefix)
            reward_extra_info = _reward_extra(batch)
            metrics.update(_extra_reward_metrics(reward_extra_info))
            self._old_log_probs(batch, metrics, phase)
            if self.use_ref:
                with phase("ref"):
                    batch.update(self.actor.dispatch("compute_ref_log_prob", batch))
            if self.critic is not None:
                with phase("values"):
                    batch.update(self.critic.dispatch("compute_values", batch))
            with phase("adv"):
                self._compute_advantages(batch, metrics, reward_extra_info)
            self._report_no_signal(batch, metrics)
            if cfg.trainer.rollout_data_dir:
                with phase("dump_rollout_generations"):
                    records = generation_records(batch, self.tokenizer, step, reward_extra_info)
                    write_step_jsonl(cfg.trainer.rollout_data_dir, step, records, key="trainer.rollout_data_dir")
            if self.critic is not None:
                with phase("update_critic"):
                    metrics.update(self.critic.dispatch_metrics("update_critic", batch))
            if cfg.trainer.critic_warmup <= step:  # verl: steps count from 1; update the actor from step critic_warmup
                with phase("update_actor"):
                    metrics.update(self.actor.dispatch_metrics("update_actor", batch))
                self._check_probs_diff(metrics)
            if self.val_loader is not None and cfg.trainer.test_freq > 0 and (is_last or step % cfg.trainer.test_freq == 0):
                with phase("testing"):
                    metrics.update(self.validate())
            if cfg.trainer.save_freq > 0 and (is_last or step % cfg.trainer.save_freq == 0):
                with phase("save_checkpoint"):
                    self.save_checkpoint()
        metrics.update(compute_data_metrics(batch, use_critic=self.critic is not None))
        metrics.update(compute_timing_metrics(timing, batch))
        metrics.update(compute_throughput_metrics(batch, timing, self.actor.world_size))
        metrics.update(self._memory_metrics())
        metrics["training/global_step"] = step
        metrics["training/epoch"] = epoch
        return metrics

    def _old_log_probs(self, batch: Batch, metrics: dict[str, float], phase) -> None:
        """old_log_probs before the reference, values and advantages: the rollout's log-probs in verl's bypass mode
        (algorithm.rollout_correction.bypass_mode, no pass), else the actor's pass (with actor/entropy and the
        weight-sync check), unless the on-policy update reuses its own forward (recompute_old_log_prob=false)."""
        if self.cfg.algorithm.rollout_correction.bypass_mode:
            batch["old_log_probs"] = _rollout_log_probs(batch, "algorithm.rollout_correction.bypass_mode=true")
        elif self.cfg.actor_rollout_ref.actor.recompute_old_log_prob:
            with phase("old_log_prob"):
                batch.update(self.actor.dispatch("compute_log_prob", batch))
                metrics["actor/entropy"] = masked_mean(batch["entropys"], batch["response_mask"]).item()
            if "rollout_log_probs" in batch:  # weight-sync check; the update measures it when it reuses its forward
                metrics.update(probs_diff_metrics(probs_diff_sums(
                    batch["old_log_probs"], batch["rollout_log_probs"], batch["response_mask"])))
                self._check_probs_diff(metrics)

    def _check_probs_diff(self, metrics: dict[str, float]) -> None:
        """actor_rollout_ref.rollout.max_probs_diff_mean: stop when the engine's log-probs drift from the actor's."""
        limit = self.cfg.actor_rollout_ref.rollout.max_probs_diff_mean
        gap = metrics.get("training/rollout_probs_diff_mean")
        if limit is not None and gap is not None and gap > limit:
            raise UserError(
                f"step {self.global_step}: training/rollout_probs_diff_mean = {gap:.4g} exceeds "
                f"actor_rollout_ref.rollout.max_probs_diff_mean={limit}: the rollout engine is not sampling from the "
                f"actor's weights (weight sync) or computes them differently (rollout.dtype); raise the limit or set "
                f"it to null to only log the gap")

    def _memory_metrics(self) -> dict[str, float]:
        """Peak resident memory so far, GiB: the driver's, and the sum over each worker group's processes; and the
        size of each group's optimizer state (summed over its ranks' shards; with LoRA, of the adapters only)."""
        out = {"perf/peak_rss_gb/driver": peak_rss_bytes() / 2**30}
        for name, group in (("actor_rollout_ref", self.actor), ("critic", self.critic),
                            ("reward_model", self.reward_model)):
            if group is not None:
                out[f"perf/peak_rss_gb/{name}"] = sum(group.call("peak_rss_bytes")) / 2**30
                if name != "reward_model":  # the reward model is not trained: it has no optimizer
                    out[f"perf/optimizer_state_gb/{name}"] = sum(group.call("optimizer_state_bytes")) / 2**30
        return out

    def _score_training(self, batch: Batch) -> RewardOutput:
        """The training reward. With reward_model.enable, the reward model's rm_scores (kept in the batch), as verl's
        naive reward manager returns them when present: the rule / custom function does not run on training rows
        and there is no reward_extra_info. Otherwise `_score`."""
        if self.reward_model is None:
            return self._score(batch)
        inputs = Batch({k: batch.tensors[k] for k in REWARD_MODEL_INPUTS}, {"raw_prompt": batch["raw_prompt"]})
        batch["rm_scores"] = self.reward_model.dispatch("compute_rm_score", inputs)["rm_scores"]
        return RewardOutput(batch["rm_scores"])

    def _score(self, batch: Batch) -> RewardOutput:
        """Decode each response and score it (custom function, or the rule scorer of its data_source), with the
        configured reward manager (naive, or dapo with its overlong buffer); validation always scores this way, with
        or without a reward model (as verl's FSDP RewardModelWorker setup)."""
        return compute_token_level_scores(
            batch["responses"], batch["response_mask"], batch["data_source"], batch["ground_truth"], self.tokenizer,
            extra_infos=batch["extra_info"], compute_score=self.reward_fn, manager=reward_manager_name(self.cfg),
            overlong=overlong_buffer(self.cfg),
        )

    # --------------------------------------------------------------------------- rollout: gen, ReMax, DAPO
    def _rollout(self, prompts: Batch, more_prompts: Callable[[], Batch | None] | None, phase,
                 metrics: dict[str, float]) -> Batch:
        """The step's scored rollouts: one generation batch, or under dynamic sampling as many as it takes to keep
        data.train_batch_size groups whose metric varies (rl_trainer.filter_groups). Logs verl-style
        critic/score/all_equal_group_ratio over every group generated in the step."""
        batch = self._generate_and_score(prompts, phase)
        groups = self.cfg.algorithm.filter_groups
        generated = [batch]
        if groups.enable:
            batch = self._filter_groups(batch, more_prompts, phase, metrics, generated)
        uids = np.concatenate([b["uid"] for b in generated])
        scores = np.concatenate([b["token_level_scores"].sum(-1).numpy() for b in generated])
        metrics["critic/score/all_equal_group_ratio"] = equal_group_ratio(uids, scores)
        return batch

    def _generate_and_score(self, prompts: Batch, phase) -> Batch:
        """Sample rollout.n responses per prompt (one uid per prompt, shared by its responses: the group id of
        GRPO/RLOO/...), score them, and for ReMax add each prompt's greedy baseline reward (`reward_baselines`)."""
        prompts["uid"] = [str(uuid.uuid4()) for _ in range(len(prompts))]
        n = self.cfg.actor_rollout_ref.rollout.n
        with phase("gen"):
            batch = self.actor.dispatch("generate_sequences", _generation_inputs(prompts.repeat(n, interleave=True)))
        baselines = None
        if self.cfg.algorithm.adv_estimator == "remax":
            with phase("gen_max"):
                greedy = self._generate(prompts, greedy=True)
        with phase("reward"):
            scored = self._score_training(batch)
            batch["token_level_scores"] = scored.token_level_scores
            _store_reward_extra(batch, scored.reward_extra_info)
            if self.cfg.algorithm.adv_estimator == "remax":  # verl: the reward model's score when there is one
                baselines = self._score_training(greedy).token_level_scores.sum(-1)
                batch["reward_baselines"] = baselines.repeat_interleave(n)
        return batch

    def _generate(self, prompts: Batch, **kwargs) -> Batch:
        """One response per prompt row, any number of rows (padded to the workers, the padding dropped)."""
        padded, pad = _pad_to_multiple(prompts, self.actor.world_size)
        out = self.actor.dispatch("generate_sequences", _generation_inputs(padded), **kwargs)
        return out.index(slice(0, len(out) - pad))

    def _filter_groups(self, batch: Batch, more_prompts: Callable[[], Batch | None] | None, phase,
                       metrics: dict[str, float], generated: list[Batch]) -> Batch:
        """DAPO's dynamic sampling (rl_trainer.filter_groups): keep the groups whose metric varies, drawing more
        generation batches until data.train_batch_size are kept; `generated` receives every batch generated."""
        cfg = self.cfg
        groups, want, n = cfg.algorithm.filter_groups, cfg.data.train_batch_size, cfg.actor_rollout_ref.rollout.n
        kept, num_kept, dropped = [], 0, 0
        while True:
            values = metric_values(groups.metric, batch["token_level_scores"].sum(-1).numpy(), _reward_extra(batch))
            rows, kept_groups, all_groups = varying_group_rows(batch["uid"], values)
            kept.append(batch.index(rows))
            num_kept, dropped = num_kept + kept_groups, dropped + all_groups - kept_groups
            if num_kept >= want:
                break
            if 0 < groups.max_num_gen_batches <= len(generated):
                raise UserError(
                    f"step {self.global_step}: {len(generated)} generation batches (algorithm.filter_groups."
                    f"max_num_gen_batches={groups.max_num_gen_batches}) kept {num_kept} of the data.train_batch_size="
                    f"{want} groups whose {groups.metric} varies; the prompts are too hard or too easy for the model: "
                    f"raise max_num_gen_batches (0 = no limit), use easier data, or raise rollout.n")
            prompts = more_prompts() if more_prompts is not None else None
            if prompts is None:
                raise _DataExhausted(
                    f"step {self.global_step}: the training data ran out (trainer.total_epochs="
                    f"{cfg.trainer.total_epochs}) with {num_kept} of {want} groups kept by algorithm.filter_groups; "
                    f"the run ends here, as verl's DAPO trainer (raise trainer.total_epochs to train longer)")
            batch = self._generate_and_score(prompts, phase)
            generated.append(batch)
        metrics["train/num_gen_batches"] = len(generated)
        metrics["training/filter_groups/evicted_samples"] = dropped
        metrics["training/filter_groups/discarded_surplus_samples"] = num_kept - want
        return Batch.concat(kept).index(slice(0, want * n))

    def _report_no_signal(self, batch: Batch, metrics: dict[str, float]) -> None:
        """Once per run: say so when a step has no learning signal at all (every advantage is 0), why, and the
        ways out. A random model on GSM8K scores 0 everywhere, and nothing else would tell."""
        if self._no_signal_reported or bool((batch["advantages"] * batch["response_mask"]).abs().max() > 0):
            return
        self._no_signal_reported = True
        scores = batch["token_level_scores"].sum(-1)
        log.warning(
            "step %d: no learning signal: every advantage is 0 (critic/score/all_equal_group_ratio=%.2f, scores "
            "%g..%g), so the policy-gradient update changes nothing. If every score is 0, use a model or task that "
            "scores above 0 at least sometimes (a pretrained instruct model, or the learnable demo: python -m "
            "rl_trainer.main --config-name digit_shift); either way, algorithm.filter_groups.enable=true generates "
            "more groups until their rewards differ", self.global_step, metrics.get("critic/score/all_equal_group_ratio", float("nan")),
            scores.min().item(), scores.max().item())

    def _compute_advantages(self, batch: Batch, metrics: dict[str, float], reward_extra_info: dict[str, list]) -> None:
        algo = self.cfg.algorithm
        if algo.use_kl_in_reward:
            rewards, kl_metrics = apply_kl_penalty(
                batch["token_level_scores"], batch["old_log_probs"], batch["ref_log_prob"], batch["response_mask"],
                self.kl_ctrl, kl_penalty=algo.kl_penalty,
            )
            batch["token_level_rewards"] = rewards
            metrics.update(kl_metrics)
        else:
            batch["token_level_rewards"] = batch["token_level_scores"]
        self._rollout_correction(batch, metrics)
        advantages, returns = compute_advantage(
            algo.adv_estimator,
            token_level_rewards=batch["token_level_rewards"], response_mask=batch["response_mask"],
            index=batch["uid"], values=batch.tensors.get("values"), gamma=algo.gamma, lam=algo.lam,
            reward_baselines=batch.tensors.get("reward_baselines"),
            **_verl_estimator_inputs(algo, batch, reward_extra_info, metrics),
        )
        batch["advantages"], batch["returns"] = advantages, returns

    def _rollout_correction(self, batch: Batch, metrics: dict[str, float]) -> None:
        """algorithm.rollout_correction in verl's decoupled mode: once per batch, before the advantages, whenever the
        batch has the rollout's log-probs (and old_log_probs; not in bypass mode, whose loss does this itself):
        rejected tokens leave response_mask, the IS weights (rollout_is) become rollout_is_weights for the policy
        loss (and the optimal token baselines), and the rollout_corr/* metrics are logged."""
        rc = self.cfg.algorithm.rollout_correction
        if rc.bypass_mode or "rollout_log_probs" not in batch or "old_log_probs" not in batch:
            return
        weights, mask, corr_metrics = compute_rollout_correction_and_rejection_mask(
            batch["old_log_probs"], batch["rollout_log_probs"], batch["response_mask"], rollout_is=rc.rollout_is,
            rollout_is_threshold=rc.rollout_is_threshold, rollout_is_batch_normalize=rc.rollout_is_batch_normalize,
            rollout_rs=rc.rollout_rs, rollout_rs_threshold=rc.rollout_rs_threshold)
        batch["response_mask"] = mask
        if weights is not None:
            batch["rollout_is_weights"] = weights
        metrics.update(corr_metrics)

    # ------------------------------------------------------------------------------------------ validation
    def validate(self) -> dict[str, float]:
        """Generate with rollout.val_kwargs on the validation set; mean score per data_source."""
        val_kwargs = self.cfg.actor_rollout_ref.rollout.val_kwargs
        scores: dict[str, list[float]] = defaultdict(list)
        lengths: list[float] = []
        samples: list[tuple[str, str, float]] = []
        dump_dir, dump = self.cfg.trainer.validation_data_dir, []
        for prompts in self.val_loader:
            prompts["uid"] = [str(uuid.uuid4()) for _ in range(len(prompts))]
            batch = prompts.repeat(val_kwargs.n, interleave=True)
            out = self._generate(batch, validate=True)
            scored = self._score(out)
            out["token_level_scores"] = scored.token_level_scores
            if dump_dir:
                dump += generation_records(out, self.tokenizer, self.global_step, scored.reward_extra_info)
            sequence_scores = scored.token_level_scores.sum(-1).tolist()
            for source, score in zip(out["data_source"], sequence_scores):
                scores[source].append(score)
            lengths.extend(out["response_mask"].sum(-1).tolist())
            for row in range(min(len(out), self.cfg.trainer.log_val_generations - len(samples))):
                prompt = self.tokenizer.decode(out["prompts"][row], skip_special_tokens=True)
                response = self.tokenizer.decode(out["responses"][row][out["response_mask"][row].bool()],
                                                 skip_special_tokens=True)
                samples.append((prompt, response, sequence_scores[row]))
        for prompt, response, score in samples:
            print(f"[validation] score={score:g}\n[prompt] {prompt}\n[response] {response}")
        if dump_dir:
            write_step_jsonl(dump_dir, self.global_step, dump, key="trainer.validation_data_dir")
        metrics = {f"val-core/{source}/reward/mean@{val_kwargs.n}": float(np.mean(v)) for source, v in scores.items()}
        metrics["val-aux/response_length/mean"] = float(np.mean(lengths))
        return metrics

    # ----------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        """Everything needed to continue exactly: worker shards + optimizer + scheduler + RNG, data position, KL."""
        step = self.global_step
        tmp = self.checkpoints.begin(step)
        self.actor.call("save_checkpoint", str(tmp / "actor"), str(tmp / "actor" / "huggingface"))
        if self.critic is not None:
            self.critic.call("save_checkpoint", str(tmp / "critic"))
        ckpt_io.save_torch(tmp / "data.pt", self.train_loader.state_dict())
        ckpt_io.save_json(tmp / "trainer_state.json", {"global_step": step, "kl_coef": float(self.kl_ctrl.value)})
        fault_point("save", step)
        return self.checkpoints.commit(step, tmp)

    def _resume(self, path: Path) -> None:
        print(f"resuming from {path}")
        self.actor.call("load_checkpoint", str(path / "actor"))
        if self.critic is not None:
            self.critic.call("load_checkpoint", str(path / "critic"))
        self.train_loader.load_state_dict(ckpt_io.load_torch(path / "data.pt"))
        state = ckpt_io.load_json(path / "trainer_state.json")
        self.global_step = int(state["global_step"])
        self.kl_ctrl.value = state["kl_coef"]
        self.tracker.truncate_after(self.global_step)


@contextlib.contextmanager
def _phase(name: str, *, step: int, timing: dict[str, float]):
    """One phase of a step: its fault-injection point (`RL_TRAINER_FAULT=<name>@<step>` kills the driver just
    before it), then the phase timed into timing_s/<name>."""
    fault_point(name, step)
    with timed(name, timing):
        yield


def _balance_batch(batch: Batch, world_size: int, metrics: dict[str, float], keep_groups: bool) -> Batch:
    """trainer.balance_batch (verl's `_balance_batch`): the rows reordered so that the `world_size` equal chunks
    dispatch hands the workers have similar workloads (rl_trainer.workers.micro_batching.balanced_rank_order), and
    verl's global_seqlen/* metrics. `keep_groups` (actor_rollout_ref.model.share_prompt_prefix, this project's
    counterpart of verl's prefix grouper) balances whole uid groups, so each prompt's rollout.n rows stay side by
    side on one rank and share one prompt forward; when the prompts do not divide over the ranks, rows are balanced
    one by one (their prompts are then computed once per rank and micro-batch that holds them: same numbers).
    Every column moves with its row (uid, data_source, rollout log-probs, ...), so the advantages, computed on the
    whole batch by uid, are unchanged; scoring and dumps come later, in this order."""
    lengths = batch["attention_mask"].sum(-1).tolist()
    uid = list(batch["uid"])
    groups = uid if keep_groups and len(set(uid)) % world_size == 0 else None
    order, parts = balanced_rank_order(lengths, world_size, groups)
    metrics.update(seqlen_balance_metrics(lengths, parts))
    return batch.index(order)


def _rollout_log_probs(batch: Batch, needed_by: str):
    """The rollout engine's log-probs of the sampled tokens, which `needed_by` reads (the config check turns them on
    for it; an engine that returns none for this batch is stopped here in one line)."""
    if "rollout_log_probs" not in batch:
        raise UserError(f"{needed_by} needs the rollout's log-probs (rollout_log_probs), which this batch lacks; set "
                        "actor_rollout_ref.rollout.calculate_log_probs=true and sample (rollout.do_sample=true)")
    return batch["rollout_log_probs"]


# Estimators to which verl 0.9.1's compute_advantage (ray_trainer.py) passes the flag: GRPO as a keyword, grpo_passk
# through its config. grpo_vectorized and gdpo get neither, so they keep their default (std normalisation) there.
_NORM_BY_STD_ESTIMATORS = ("grpo", "grpo_passk")


def _verl_estimator_inputs(algo: DictConfig, batch: Batch, reward_extra_info: dict[str, list],
                           metrics: dict[str, float]) -> dict:
    """What verl's compute_advantage passes to `algo.adv_estimator` besides the rewards, mask, uid, values, gamma and
    lam: norm_adv_by_std_in_grpo (see _NORM_BY_STD_ESTIMATORS), the algorithm config, gdpo's per-key rewards (the
    reward function's extra outputs, verl's reward_extra_info, with the gdpo/<key>/{mean,std,max,min} metrics) and
    the optimal token baselines' inputs."""
    inputs: dict = {"config": algo}
    if algo.adv_estimator in _NORM_BY_STD_ESTIMATORS:
        inputs["norm_adv_by_std_in_grpo"] = algo.norm_adv_by_std_in_grpo
    if algo.adv_estimator == "gdpo":
        extra = {key: np.asarray(values) for key, values in reward_extra_info.items()}
        inputs.update(non_tensor_batch={**batch.non_tensors, **extra}, batch=batch.tensors)
        for key in algo.gdpo_reward_keys:
            if key not in extra:
                raise UserError(f"algorithm.gdpo_reward_keys names {key!r}, which the reward function does not return "
                                f"(its keys besides score: {sorted(extra) or 'none'}); return a dict with {key!r} or "
                                "fix algorithm.gdpo_reward_keys")
            values = extra[key].astype(np.float32)
            metrics.update({f"gdpo/{key}/{name}": float(fn(values)) for name, fn in
                            (("mean", np.mean), ("std", np.std), ("max", np.max), ("min", np.min))})
    if algo.adv_estimator in TOKEN_BASELINE_ESTIMATORS:
        inputs.update(old_log_probs=batch["old_log_probs"], sum_pi_squared=batch["sum_pi_squared"],
                      rollout_is_weights=batch.tensors.get("rollout_is_weights"))
    return inputs


def _generation_inputs(batch: Batch) -> Batch:
    return Batch({k: batch.tensors[k] for k in GENERATION_INPUTS}, dict(batch.non_tensors), dict(batch.meta))


def _pad_to_multiple(batch: Batch, multiple: int) -> tuple[Batch, int]:
    """Batches of any size (validation, ReMax's greedy baselines): repeat the first rows so every worker gets the
    same number of rows."""
    pad = (-len(batch)) % multiple
    if pad == 0:
        return batch, 0
    return Batch.concat([batch, batch.index(list(range(pad)))]), pad


class _DataExhausted(Exception):
    """Dynamic sampling needed another generation batch after the last epoch's last one: the run ends there."""


# The reward function's extra keys travel with their rows as batch columns "reward_extra_info.<key>", so that
# filtering, balancing and dumps keep them aligned.
_EXTRA = "reward_extra_info."


def _store_reward_extra(batch: Batch, extra: dict[str, list]) -> None:
    for key, values in extra.items():
        batch[_EXTRA + key] = values


def _reward_extra(batch: Batch) -> dict[str, list]:
    return {k[len(_EXTRA):]: list(v) for k, v in batch.non_tensors.items() if k.startswith(_EXTRA)}


def _extra_reward_metrics(extra: dict[str, list]) -> dict[str, float]:
    out = {}
    for key, values in extra.items():
        numbers = [float(v) for v in values if isinstance(v, (int, float, bool, np.number))]
        if len(numbers) == len(values) and numbers:
            out[f"reward_extra/{key}/mean"] = float(np.mean(numbers))
    return out

