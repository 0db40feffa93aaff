"""The worker classes without Ray or Hydra: `torchrun --nproc-per-node N -m rl_trainer.tools.torchrun ...`.

For machines that have torch and transformers but not the rest of the stack (a GPU box without Ray): every
process is one rank of the same `ActorRolloutRefWorker` the Ray worker group starts, in its own torch.distributed
group (NCCL on CUDA, gloo on CPU, from torchrun's environment), driving itself in SPMD style: each rank draws its
own prompts, generates rollout.n responses per prompt (so every GRPO group lives on one rank and its advantages
are exact), scores them, computes old and reference log-probs, and runs the PPO update, in which FSDP reduces the
gradients over all ranks. Rank 0 prints each step's phases, tokens/s and the update's model-FLOPs utilisation.

    torchrun --nproc-per-node 8 -m rl_trainer.tools.torchrun --model DIR --steps 5 [config overrides]
    torchrun --nproc-per-node 1 -m rl_trainer.tools.torchrun --shape qwen2.5-0.5b --peak-tflops 790

Needs torch, transformers and omegaconf (pure Python); no Ray, Hydra, datasets or vLLM. The prompts are random
token ids of `--prompt-length` and the reward a rule on the first response token (1 when its id is even): the
point is the machinery and its speed, not learning. Config overrides are verl's keys, as on
the CLI (`actor_rollout_ref.rollout.n=8`); the defaults come from configs/ppo_trainer.yaml.

Model FLOPs of the update: 6 x parameters x tokens it trains on (prompt + response; forward and backward, the
usual estimate without attention), against `--peak-tflops` (per device; on CUDA measured with a bf16 matmul when
not given).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from rl_trainer.algos import compute_advantage
from rl_trainer.batch import Batch
from rl_trainer.errors import UserError
from rl_trainer.metrics import timed

SHAPES = {  # random-init model shapes (Qwen2 architecture) for --shape
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
    prompts, and nothing is decoded)."""
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
    """Left-padded random prompts of 1/2 .. full `length` tokens (never special ids 0-2)."""
    lengths = torch.randint(length // 2, length + 1, (rows,), generator=generator)
    mask = (torch.arange(length) >= length - lengths[:, None]).long()
    ids = torch.randint(3, vocab, (rows, length), generator=generator) * mask + pad_id * (1 - mask)
    return Batch({"prompts": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)})


def parity_scores(batch: Batch) -> torch.Tensor:
    """token_level_scores: 1 on the last token of responses whose first token id is even, else 0 (a rule a random
    model scores about half the time, so GRPO groups have advantages to learn from)."""
    mask = batch["response_mask"]
    lengths = mask.sum(-1)
    scores = torch.zeros(mask.shape, dtype=torch.float32)
    rows = torch.arange(len(mask))[lengths > 0]
    scores[rows, lengths[rows] - 1] = (batch["responses"][rows, 0] % 2 == 0).float()
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Hugging Face directory (default: builtin:tiny-qwen2)")
    parser.add_argument("--shape", choices=sorted(SHAPES),
                        help="a random-init model of this shape instead of --model (one machine: it is built in "
                             "rank 0's temporary directory)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts-per-rank", type=int, default=None,
                        help="sets data.train_batch_size and actor.ppo_mini_batch_size to this x ranks (one optimizer "
                             "step per training step); default: data.train_batch_size / ranks")
    parser.add_argument("--prompt-length", type=int, default=None, help="default: data.max_prompt_length")
    parser.add_argument("--peak-tflops", type=float, default=None, help="per device, for the MFU line")
    args, overrides = parser.parse_known_args(argv)

    from rl_trainer.workers.actor import ActorRolloutRefWorker

    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = max(1, (os.cpu_count() or 1) // per_node)
    base = [f"trainer.n_gpus_per_node={per_node}", f"trainer.nnodes={world // per_node}", f"trainer.device={device}"]
    if args.prompts_per_rank:
        batch_size = args.prompts_per_rank * world
        base += [f"data.train_batch_size={batch_size}", f"actor_rollout_ref.actor.ppo_mini_batch_size={batch_size}"]
    config = load_config([*base, *overrides])
    arr, data = config["actor_rollout_ref"], config["data"]
    worker = ActorRolloutRefWorker(config, rank, world, device, threads)
    worker.join_group(None, None, device_index=local_rank)

    with tempfile.TemporaryDirectory() as tmp:
        model_path = [args.model]
        if rank == 0 and (args.model is None or args.shape):  # built once, by rank 0, before anyone loads it
            from rl_trainer.models.builtin import ensure_builtin_model

            model_path = [str(ensure_builtin_model("tiny-qwen2", seed=config["trainer"]["seed"]))]
            if args.shape:
                model_path = [random_model(args.shape, model_path[0], Path(tmp) / args.shape,
                                           config["trainer"]["seed"])]
        dist.broadcast_object_list(model_path, src=0)
        model_path = model_path[0]
        use_ref = arr["actor"]["use_kl_loss"]
        worker.init_model(model_path, total_steps=args.steps, with_ref=use_ref)
        dist.barrier()  # every rank has loaded the model before rank 0 removes a --shape model's directory
    params = sum(p.numel() for p in worker.actor.model.parameters())
    peak = args.peak_tflops or (measure_peak_tflops(worker.device) if device == "cuda" else None)
    prompts_per_rank = data["train_batch_size"] // world
    prompt_length = args.prompt_length or data["max_prompt_length"]
    n = arr["rollout"]["n"]
    generator = torch.Generator().manual_seed(config["trainer"]["seed"] * 1000 + rank)
    if rank == 0:
        print(f"torchrun: {world} rank(s) x {device}, model {model_path} ({params / 1e6:.1f}M parameters), "
              f"{prompts_per_rank} prompts x n={n} per rank, peak {peak or float('nan'):.0f} TFLOP/s per device",
              flush=True)

    for step in range(1, args.steps + 1):
        timing: dict[str, float] = {}

        prompts = random_prompts(prompts_per_rank, prompt_length, len(worker.tokenizer), worker.tokenizer.pad_token_id,
                                 generator)
        prompts["uid"] = [str(uuid.uuid4()) for _ in range(prompts_per_rank)]
        # Each phase ends on the host (its results come back as CPU tensors or floats), so on CUDA its time
        # includes the device's work.
        with timed("gen", timing):
            batch = worker.generate_sequences(prompts.repeat(n, interleave=True))
        batch["token_level_scores"] = batch["token_level_rewards"] = parity_scores(batch)
        with timed("old_log_prob", timing):
            batch.update(worker.compute_log_prob(batch))
        if use_ref:
            with timed("ref", timing):
                batch.update(worker.compute_ref_log_prob(batch))
        algo = config["algorithm"]
        batch["advantages"], batch["returns"] = compute_advantage(
            algo["adv_estimator"], token_level_rewards=batch["token_level_rewards"],
            response_mask=batch["response_mask"], index=batch["uid"], gamma=algo["gamma"], lam=algo["lam"],
            norm_adv_by_std_in_grpo=algo["norm_adv_by_std_in_grpo"])
        with timed("update_actor", timing):
            metrics = worker.update_actor(batch)

        local = torch.tensor([batch["attention_mask"].sum().item(), batch["response_mask"].sum().item(),
                              batch["token_level_scores"].sum().item()], dtype=torch.float64, device=worker.device)
        dist.all_reduce(local)
        tokens, response_tokens, reward = local.tolist()
        total = sum(timing.values())
        if rank == 0:
            phases = "  ".join(f"{k} {v:.2f}s" for k, v in timing.items())
            mfu = 6 * params * tokens / timing["update_actor"] / 1e12 / world
            mfu_text = f"  update MFU {100 * mfu / peak:.1f}%" if peak else ""
            print(f"step {step}: {total:.2f}s  {phases}  tokens {tokens:.0f} ({response_tokens:.0f} response)  "
                  f"{tokens / total:.0f} tokens/s  update {mfu:.2f} TFLOP/s per device{mfu_text}  "
                  f"reward {reward / (prompts_per_rank * n * world):.3f}  pg_loss {metrics['actor/pg_loss']:.4f}  "
                  f"grad_norm {metrics['actor/grad_norm']:.4f}", flush=True)
    worker.shutdown()


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:  # a bad command line: one line (from rank 0), as the CLI does
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
