"""The training loop without Ray or Hydra: `torchrun --nproc-per-node N -m rl_trainer.tools.torchrun ...`.

For machines that have torch and transformers but not the rest of the stack (a GPU box without Ray): every
process runs the CLI's driver loop, `PPOTrainer.train_step`, on an in-process worker group
(rl_trainer.distributed.LocalWorkerGroup) around its own rank of the same `ActorRolloutRefWorker` (and, with
critic.enable, `CriticWorker`) the Ray worker groups start. Their torch.distributed group spans the torchrun ranks
(NCCL on CUDA, gloo on CPU, from torchrun's environment), so FSDP shards the models and reduces the gradients over
all ranks, while each rank's driver holds its share of the batch (SPMD): it draws its own prompts, generates
rollout.n responses per prompt (so every GRPO group lives on one rank and its advantages are exact), and runs the
whole step as `python -m rl_trainer.main` does: scores, old log-probs (or the update's forward, with
actor.recompute_old_log_prob=false), reference log-probs, values, KL in the reward, advantages, the critic and
actor updates (after trainer.critic_warmup steps), and validation every trainer.test_freq steps. Rank 0 prints each
step's phases, tokens/s and the update's model-FLOPs utilisation.

    torchrun --nproc-per-node 8 -m rl_trainer.tools.torchrun --model DIR --steps 5 [config overrides]
    torchrun --nproc-per-node 1 -m rl_trainer.tools.torchrun --shape qwen2.5-0.5b --peak-tflops 790

Needs torch, transformers and omegaconf (pure Python); no Ray, Hydra, datasets or vLLM. The prompts are random
token ids of `--prompt-length` (validation: a fixed set drawn once per rank), and the reward, unless
custom_reward_function.path names one, a rule on the first response token (1 when its id is even): the point is
the machinery and its speed, not learning. Config overrides are verl's keys, as on the CLI
(`actor_rollout_ref.rollout.n=8`); the defaults come from configs/ppo_trainer.yaml, except that this driver
neither validates (trainer.test_freq=-1, trainer.val_before_train=false) nor saves checkpoints unless told to
validate, and refuses trainer.save_freq > 0 and trainer.resume_mode=resume_path (every rank's driver would write
the same checkpoint files). It does not read data.train_files / val_files or log to trainer.logger: it prints.

Differences from the Ray run, all from every driver holding only its rank's share: the data metrics (scores,
lengths) are per rank, rank 0 prints the sums and means over ranks it all-reduces, and an adaptive KL controller
(algorithm.kl_ctrl.type=adaptive) follows each rank's own KL. Actor and critic share one process: the critic's model
is built first, so the actor's sampling stream (trainer.seed + rank) is the one its Ray worker has.

Model FLOPs of the update: 6 x parameters x tokens it trains on (prompt + response; forward and backward, the
usual estimate without attention), against `--peak-tflops` (per device; on CUDA measured with a bf16 matmul when
not given).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from rl_trainer.batch import Batch
from rl_trainer.errors import UserError
from rl_trainer.rewards.manager import RewardOutput
from rl_trainer.trainer import PPOTrainer

SHAPES = {  # random-init model shapes (Qwen2 architecture) for --shape; qwen2-tiny is gpu_check.sh's CPU dry run
    "qwen2-tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=4096, max_position_embeddings=1024, tie_word_embeddings=True),
    # 25M parameters: a CPU-sized shape where full fine-tuning's optimizer state outweighs the model (bench --shape).
    "qwen2-25m": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=4096, max_position_embeddings=1024, tie_word_embeddings=True),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                         tie_word_embeddings=True, rope_theta=1000000.0),
}


def load_config(overrides: list[str]) -> dict:
    """configs/ppo_trainer.yaml with `key=value` overrides, checked and completed as the CLI does (validate_config),
    resolved, without Hydra (its own section dropped)."""
    from rl_trainer.compat import default_config
    from rl_trainer.config import validate_config

    cfg = default_config()  # ppo_trainer.yaml with its defaults list (verl_keys, model_engine=dp) composed
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]))
    validate_config(cfg, overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def random_model(shape: str, tokenizer_dir: str, out_dir: Path, seed: int) -> str:
    """A random-init Qwen2 of `shape`, saved with the tokenizer of `tokenizer_dir` (ids beyond it never appear in
    prompts, the parity reward reads ids, and decoding skips them)."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(**SHAPES[shape], eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None)
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def measure_peak_tflops(device: torch.device) -> float:
    """Dense bf16 matmul throughput of this device, TFLOP/s (8192^3, after a warm-up)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start, iters = time.perf_counter(), 20
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize(device)
    return 2 * 8192**3 * iters / (time.perf_counter() - start) / 1e12


def random_prompts(rows: int, length: int, vocab: int, pad_id: int, generator: torch.Generator) -> Batch:
    """Left-padded random prompts of 1/2 .. full `length` tokens (never special ids 0-2), with the columns the
    reward stage reads (data_source "torchrun/random", no ground truth)."""
    lengths = torch.randint(length // 2, length + 1, (rows,), generator=generator)
    mask = (torch.arange(length) >= length - lengths[:, None]).long()
    ids = torch.randint(3, vocab, (rows, length), generator=generator) * mask + pad_id * (1 - mask)
    return Batch({"prompts": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)},
                 {"data_source": ["torchrun/random"] * rows, "ground_truth": [None] * rows, "extra_info": [None] * rows})


def parity_scores(batch: Batch) -> torch.Tensor:
    """token_level_scores: 1 on the last token of responses whose first token id is even, else 0 (a rule a random
    model scores about half the time, so GRPO groups have advantages to learn from)."""
    mask = batch["response_mask"]
    lengths = mask.sum(-1)
    scores = torch.zeros(mask.shape, dtype=torch.float32)
    rows = torch.arange(len(mask))[lengths > 0]
    scores[rows, lengths[rows] - 1] = (batch["responses"][rows, 0] % 2 == 0).float()
    return scores


class RandomPromptTrainer(PPOTrainer):
    """The CLI's trainer; only its reward stage differs when no custom_reward_function is set: the parity rule on
    token ids (random prompts have no answers, and a random model's ids need not decode)."""

    def _score(self, batch: Batch) -> RewardOutput:
        if self.reward_fn is not None:
            return super()._score(batch)
        return RewardOutput(parity_scores(batch))


def check_tool_config(config: dict) -> None:
    """The keys this driver cannot honour: one line each."""
    trainer = config["trainer"]
    if config["algorithm"]["filter_groups"]["enable"]:
        raise UserError("algorithm.filter_groups.enable=true: the torchrun driver draws one batch of random prompts per "
                        "step, so dynamic sampling has no data to draw more from; run it with python -m rl_trainer.main")
    if trainer["save_freq"] > 0:
        raise UserError(f"trainer.save_freq={trainer['save_freq']}: the torchrun driver does not save checkpoints "
                        f"(every rank's driver would write the same files); leave trainer.save_freq=-1, or "
                        f"checkpoint with python -m rl_trainer.main")
    if trainer["resume_mode"] == "resume_path":
        raise UserError("trainer.resume_mode=resume_path: the torchrun driver does not resume from checkpoints; "
                        "drop the key, or resume with python -m rl_trainer.main")
    if config["reward_model"]["enable"]:
        raise UserError("reward_model.enable=true: the torchrun driver scores its random prompts with a parity rule "
                        "(they have no chat to show a reward model); score with a reward model in python -m "
                        "rl_trainer.main")


def model_paths(args: argparse.Namespace, config: dict, tmp: str) -> tuple[str, str | None]:
    """(actor, critic) model directories, resolved by rank 0 (which builds a built-in or --shape model once) and
    broadcast: --model, else actor_rollout_ref.model.path; the critic's is critic.model.path when set apart from
    the actor's, else the actor's (None without critic.enable)."""
    from rl_trainer.models.builtin import resolve_model_path

    paths: list[str | None] = [None, None]
    if dist.get_rank() == 0:
        seed = config["trainer"]["seed"]
        configured = config["actor_rollout_ref"]["model"]["path"]
        paths[0] = resolve_model_path(args.model or configured, seed=seed)
        if args.shape:
            paths[0] = random_model(args.shape, paths[0], Path(tmp) / args.shape, seed)
        critic = config["critic"]["model"]["path"]
        if config["critic"]["enable"]:
            paths[1] = paths[0] if critic == configured else resolve_model_path(critic, seed=seed)
    dist.broadcast_object_list(paths, src=0)
    return paths[0], paths[1]


def critic_token_ids(config: dict, model_path: str, critic_path: str) -> dict:
    """critic.model.tokenizer_path's bos/eos/pad ids for the value model's config, as the CLI's input stage reads
    them (the actor's model path, the default, names the actor's folder, also the one --shape builds)."""
    from rl_trainer.models.builtin import critic_tokenizer_dir
    from rl_trainer.workers.loading import load_tokenizer, special_token_ids

    model = config["critic"]["model"]
    path = critic_tokenizer_dir(model["tokenizer_path"], critic_path, config["actor_rollout_ref"]["model"]["path"],
                                model_path, config["trainer"]["seed"])
    tokenizer = load_tokenizer(path, "critic.model.tokenizer_path", trust_remote_code=model["trust_remote_code"])
    return special_token_ids(tokenizer)


def build_groups(args: argparse.Namespace, config: dict, device: str, threads: int):
    """The actor (and critic) in-process groups of this rank, models loaded; returns (actor, critic, use_ref,
    model_path). The actor's group forms the torch.distributed group from torchrun's environment."""
    from rl_trainer.config import needs_reference
    from rl_trainer.distributed.local_group import LocalWorkerGroup
    from rl_trainer.workers.actor import ActorRolloutRefWorker
    from rl_trainer.workers.critic import CriticWorker

    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    where = dict(rank=rank, ranks=world, device=device, threads=threads, device_index=local_rank)
    actor = LocalWorkerGroup("actor_rollout_ref", ActorRolloutRefWorker, config, **where)
    critic = LocalWorkerGroup("critic", CriticWorker, config, **where) if config["critic"]["enable"] else None
    use_ref = needs_reference(OmegaConf.create(config))
    with tempfile.TemporaryDirectory() as tmp:
        model_path, critic_path = model_paths(args, config, tmp)
        if critic is not None:  # first: its start-up seeds trainer.seed, the actor's then sets seed + rank
            critic.call("init_model", critic_path, args.steps, critic_token_ids(config, model_path, critic_path))
        actor.call("init_model", model_path, args.steps, use_ref)
        dist.barrier()  # every rank has loaded the model before rank 0 removes a --shape model's directory
    return actor, critic, use_ref, model_path


def step_line(step: int, metrics: dict[str, float], rows: int, params: int, world: int, peak: float | None,
              device: torch.device) -> str:
    """Rank 0's line for one step, from train_step's metrics (its timings and token counts) of this rank's `rows`
    sequences; the per-rank data metrics are summed / averaged over the ranks here (a collective: every rank calls
    it)."""
    val = [v for k, v in metrics.items() if k.startswith("val-core/")]
    local = torch.tensor([metrics["perf/total_num_tokens"], metrics["response_length/mean"] * rows,
                          metrics["critic/score/mean"], sum(val) / len(val) if val else 0.0],
                         dtype=torch.float64, device=device)
    dist.all_reduce(local)
    tokens, response_tokens, score, val_score = local.tolist()
    total = metrics["timing_s/step"]
    phases = "  ".join(f"{k.split('/', 1)[1]} {v:.2f}s" for k, v in metrics.items()
                       if k.startswith("timing_s/") and k != "timing_s/step")
    line = (f"step {step}: {total:.2f}s  {phases}  tokens {tokens:.0f} ({response_tokens:.0f} response)  "
            f"{tokens / total:.0f} tokens/s")
    if "timing_s/update_actor" in metrics:
        mfu = 6 * params * tokens / metrics["timing_s/update_actor"] / 1e12 / world
        line += f"  update {mfu:.2f} TFLOP/s per device" + (f"  update MFU {100 * mfu / peak:.1f}%" if peak else "")
    line += f"  reward {score / world:.3f}"
    if val:
        line += f"  val reward {val_score / world:.3f}"
    for key, label in (("actor/reward_kl_penalty", "kl_in_reward"), ("critic/vf_loss", "vf_loss"),
                       ("critic/grad_norm", "critic_grad_norm"), ("actor/pg_loss", "pg_loss"),
                       ("actor/grad_norm", "grad_norm")):
        if key in metrics:  # the actor's last: the grad_norm of this step's policy update ends the line
            line += f"  {label} {metrics[key]:.4f}"
    if "actor/pg_loss" not in metrics:
        line += "  update_actor skipped (trainer.critic_warmup)"
    return line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Hugging Face directory (default: actor_rollout_ref.model.path, "
                                                      "builtin:tiny-qwen2 unless overridden)")
    parser.add_argument("--shape", choices=sorted(SHAPES),
                        help="a random-init model of this shape instead of --model (one machine: it is built in "
                             "rank 0's temporary directory)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts-per-rank", type=int, default=None,
                        help="sets data.train_batch_size and actor.ppo_mini_batch_size to this x ranks (one optimizer "
                             "step per training step); default: data.train_batch_size / ranks")
    parser.add_argument("--prompt-length", type=int, default=None, help="default: data.max_prompt_length")
    parser.add_argument("--peak-tflops", type=float, default=None, help="per device, for the MFU line")
    parser.add_argument("--check", action="store_true",
                        help="scripts/gpu_check.sh's assertions after the steps (finite losses, the rollout/actor "
                             "log-prob gap within rollout.max_probs_diff_mean, a checkpoint save/load round trip); "
                             "exit 1 when one fails")
    args, overrides = parser.parse_known_args(argv)

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = max(1, (os.cpu_count() or 1) // per_node)
    base = [f"trainer.n_gpus_per_node={per_node}", f"trainer.nnodes={world // per_node}", f"trainer.device={device}",
            "trainer.save_freq=-1", "trainer.test_freq=-1", "trainer.val_before_train=false"]
    if args.prompts_per_rank:
        batch_size = args.prompts_per_rank * world
        base += [f"data.train_batch_size={batch_size}", f"actor_rollout_ref.actor.ppo_mini_batch_size={batch_size}"]
    cfg = OmegaConf.create(load_config([*base, *overrides]))
    config = OmegaConf.to_container(cfg)
    check_tool_config(config)
    actor, critic, use_ref, model_path = build_groups(args, config, device, threads)
    worker = actor.worker
    try:
        params = sum(p.numel() for p in worker.actor.model.parameters())
        peak = args.peak_tflops or (measure_peak_tflops(worker.device) if device == "cuda" else None)
        prompts_per_rank = cfg.data.train_batch_size // world
        prompt_length = args.prompt_length or cfg.data.max_prompt_length
        generator = torch.Generator().manual_seed(cfg.trainer.seed * 1000 + rank)
        draw = lambda: random_prompts(prompts_per_rank, prompt_length, len(worker.tokenizer),  # noqa: E731
                                      worker.tokenizer.pad_token_id, generator)
        val_loader = [draw()]  # drawn once: every validation scores the same prompts
        trainer = RandomPromptTrainer(
            cfg, tokenizer=worker.tokenizer, train_loader=None, val_loader=val_loader, actor=actor, critic=critic,
            use_ref=use_ref, reward_fn=_custom_reward_fn(cfg), tracker=None, checkpoints=None,
            total_steps=args.steps, resume_path=None)
        if rank == 0:
            print(f"torchrun: {world} rank(s) x {device}, model {model_path} ({params / 1e6:.1f}M parameters), "
                  f"{prompts_per_rank} prompts x n={cfg.actor_rollout_ref.rollout.n} per rank"
                  f"{', critic' if critic else ''}, peak {peak or float('nan'):.0f} TFLOP/s per device", flush=True)
        if cfg.trainer.val_before_train or cfg.trainer.val_only:
            _print_validation(trainer.validate(), world, worker.device, rank)
            if cfg.trainer.val_only:
                return
        history = []
        for step in range(1, args.steps + 1):
            trainer.global_step = step
            history.append(trainer.train_step(draw(), epoch=0))
            line = step_line(step, history[-1], prompts_per_rank * cfg.actor_rollout_ref.rollout.n, params, world,
                             peak, worker.device)
            if rank == 0:
                print(line, flush=True)
        if args.check and not run_checks(trainer, draw, history, cfg.actor_rollout_ref.rollout.max_probs_diff_mean):
            sys.exit(1)
    finally:
        for group in (critic, actor):  # the actor's group formed the process group: it goes last
            if group is not None:
                group.shutdown()


def run_checks(trainer: RandomPromptTrainer, draw, history: list[dict[str, float]], max_gap: float | None) -> bool:
    """--check: every step's actor (and critic) losses and grad norms finite on every rank; the rollout/actor
    log-prob gap (training/rollout_probs_diff_mean, needs rollout.calculate_log_probs=true) measured and within
    `max_gap`; and a checkpoint round trip: save the actor, train one more step (the log-probs of a fixed batch
    move), load, and the log-probs equal the saved ones bit for bit. Rank 0 prints one line per check; True when
    all pass on all ranks."""
    actor, device, rank = trainer.actor, trainer.actor.worker.device, dist.get_rank()
    losses = [v for m in history for k, v in m.items()
              if k in ("actor/pg_loss", "actor/grad_norm", "critic/vf_loss", "critic/grad_norm")]
    gaps = [m["training/rollout_probs_diff_mean"] for m in history if "training/rollout_probs_diff_mean" in m]
    gap = max(gaps) if gaps else float("nan")
    batch = actor.dispatch("generate_sequences", draw())
    saved = actor.dispatch("compute_log_prob", batch)["old_log_probs"]
    path = [tempfile.mkdtemp(prefix="gpu_check_ckpt_") if rank == 0 else None]
    dist.broadcast_object_list(path, src=0)
    actor.call("save_checkpoint", path[0], None)
    trainer.global_step += 1
    trainer.train_step(draw(), epoch=0)
    moved = (actor.dispatch("compute_log_prob", batch)["old_log_probs"] - saved).abs().max().item()
    actor.call("load_checkpoint", path[0])
    restored = actor.dispatch("compute_log_prob", batch)["old_log_probs"]
    results = {
        f"finite losses and grad norms ({len(losses)} values)": bool(losses) and all(math.isfinite(v) for v in losses),
        f"rollout/actor gap: training/rollout_probs_diff_mean max {gap:.3g} (limit {max_gap})":
            bool(gaps) and (max_gap is None or gap <= max_gap),
        f"checkpoint round trip: one more step moved the log-probs by {moved:.3g}, loading restored them exactly":
            moved > 0 and torch.equal(restored, saved),
    }
    passed = torch.tensor([float(ok) for ok in results.values()], device=device)
    dist.all_reduce(passed, op=dist.ReduceOp.MIN)
    dist.barrier()
    if rank == 0:
        shutil.rmtree(path[0], ignore_errors=True)
        for (name, _), ok in zip(results.items(), passed.tolist()):
            print(f"check {'ok  ' if ok else 'FAIL'} {name}", flush=True)
    return bool(passed.min().item())


def _custom_reward_fn(cfg):
    from rl_trainer.rewards.custom import get_custom_reward_fn

    return get_custom_reward_fn(cfg)


def _print_validation(metrics: dict[str, float], world: int, device: torch.device, rank: int) -> None:
    """Rank 0 prints the validation reward, averaged over the ranks (each scores its own prompts)."""
    val = [v for k, v in metrics.items() if k.startswith("val-core/")]
    score = torch.tensor([sum(val) / len(val)], dtype=torch.float64, device=device)
    dist.all_reduce(score)
    if rank == 0:
        print(f"validation: val reward {score.item() / world:.3f}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:  # a bad command line: one line (from rank 0), as the CLI does
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
