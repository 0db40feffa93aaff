"""`python -m rl_trainer.tools.bench [--steps 7] [--model DIR | --shape NAME] [--baseline] [overrides...]`: the
standard workload.

The standard workload (docs/performance.md; keep it exact, numbers elsewhere are measured against it):

    model    builtin:tiny-qwen2 = Qwen2ForCausalLM(Qwen2Config(hidden_size=256, intermediate_size=688,
             num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, vocab_size=4096,
             max_position_embeddings=1024, tie_word_embeddings=True)), random init (seed 0), float32, with a
             4,096-token byte-level BPE tokenizer trained on GSM8K train (Qwen2's pre-tokenizer; <|endoftext|>
             EOS/pad; ChatML template). --model DIR takes any Hugging Face directory of this kind.
    data     GSM8K train in verl's schema, chat template applied, no shuffling, prompts over 256 tokens
             filtered out; step k uses rows 8(k-1) .. 8k-1.
    rollout  8 prompts x rollout.n=4 = 32 sequences, up to 128 new tokens, temperature 1.0, top_p 1.0, no top_k,
             stop only at EOS.
    update   GRPO advantages; ppo_epochs=1 and one mini-batch of 32 (one optimizer step per training step);
             micro-batches of 8; AdamW lr 1e-6, weight decay 0, grad clip 1.0; clip ratio 0.2; token-mean loss;
             KL as a loss (low_var_kl, coef 0.001: the reference forward runs every step); no entropy bonus.
    machine  fp32, 2 CPU threads in total: one worker with 2 threads (faster here than 2 workers x 1 thread,
             whose FSDP all-gathers cost more than they share; docs/performance.md has both); 7 steps; the
             median of steps 2-7 is reported.

It runs `python -m rl_trainer.main` with these overrides in a subprocess (driver, Ray, FSDP workers: the real
path), waits for it, and prints step times, tokens per step and per second, the per-phase breakdown, peak
resident memory, the optimizer state's size, the time from launch to the end of the first step and the CPU seconds
all the run's processes had spent by then. `--shape NAME`
swaps the model for a random-init Qwen2 of one of rl_trainer.tools.torchrun's SHAPES (e.g. qwen2-25m, 25M
parameters) with the standard tokenizer, built into the run directory: the same workload on a larger model. `--baseline` turns rl_trainer's
optimisations off (shared prompt prefixes, reuse of the update's forward for old_log_prob, the native decode step)
to measure them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rl_trainer.tracking import METRICS_FILE, read_metrics

STANDARD_WORKLOAD = (
    "actor_rollout_ref.model.path=builtin:tiny-qwen2",
    "data.train_files=builtin:gsm8k/train",
    "data.shuffle=false",
    "data.max_prompt_length=256",
    "data.filter_overlong_prompts=true",
    "data.max_response_length=128",
    "data.train_batch_size=8",
    "actor_rollout_ref.rollout.n=4",
    "actor_rollout_ref.rollout.temperature=1.0",
    "actor_rollout_ref.rollout.top_p=1.0",
    "actor_rollout_ref.rollout.top_k=-1",
    "algorithm.adv_estimator=grpo",
    "actor_rollout_ref.actor.ppo_epochs=1",
    "actor_rollout_ref.actor.ppo_mini_batch_size=8",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.actor.optim.lr=1e-6",
    "actor_rollout_ref.actor.optim.weight_decay=0",
    "actor_rollout_ref.actor.grad_clip=1.0",
    "actor_rollout_ref.actor.clip_ratio=0.2",
    "actor_rollout_ref.actor.loss_agg_mode=token-mean",
    "actor_rollout_ref.actor.use_kl_loss=true",
    "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
    "actor_rollout_ref.actor.kl_loss_coef=0.001",
    "actor_rollout_ref.actor.entropy_coeff=0",
    "algorithm.use_kl_in_reward=false",
    "trainer.device=cpu",
    "trainer.nnodes=1",
    "trainer.n_gpus_per_node=1",
    "trainer.cpus_per_worker=2",
    "trainer.seed=0",
    "trainer.val_before_train=false",
    "trainer.test_freq=-1",
    "trainer.save_freq=-1",
    "trainer.resume_mode=disable",
    "trainer.logger=[console]",
)
# rl_trainer's optimisations that can be switched off, as (on, off) (the rest, e.g. response-only logits and
# skipping padding columns, are always on).
OPTIMISATIONS = {
    "actor_rollout_ref.model.share_prompt_prefix": ("true", "false"),
    "actor_rollout_ref.actor.recompute_old_log_prob": ("null", "true"),  # null: the default, false when on-policy
    "actor_rollout_ref.rollout.native_decode": ("null", "false"),
}
PHASES = ("gen", "reward", "old_log_prob", "ref", "adv", "update_actor")


def command(steps: int, run_dir: Path, model: str | None, baseline: bool, overrides: list[str]) -> list[str]:
    args = list(STANDARD_WORKLOAD)
    args += [f"{key}={values[1 if baseline else 0]}" for key, values in OPTIMISATIONS.items()]
    if model:
        args.append(f"actor_rollout_ref.model.path={model}")
    args += [f"trainer.total_training_steps={steps}", f"hydra.run.dir={run_dir}",
             f"trainer.default_local_dir={run_dir / 'checkpoints'}", *overrides]
    return [sys.executable, "-m", "rl_trainer.main", *args]


def run(cmd: list[str], run_dir: Path) -> tuple[int, float | None, float, dict | None]:
    """Run the trainer; returns (exit code, seconds from launch to the first step's metrics, total seconds, the CPU
    seconds spent by then (`launch_cpu_seconds`))."""
    metrics = run_dir / METRICS_FILE
    start = time.perf_counter()
    first_step = cpu = None
    with open(run_dir / "bench.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            if first_step is None and metrics.exists() and metrics.stat().st_size > 0:
                first_step = time.perf_counter() - start
                cpu = launch_cpu_seconds(proc.pid)
            time.sleep(0.05)
    if first_step is None and metrics.exists() and metrics.stat().st_size > 0:
        first_step = time.perf_counter() - start
    return proc.returncode, first_step, time.perf_counter() - start, cpu


def launch_cpu_seconds(root: int) -> dict | None:
    """CPU seconds (user + system, with those of reaped children) of process `root` and of every process below it:
    the driver, Ray's processes (started by the driver's ray.init) and the workers (started by Ray's raylet).
    {"total": ..., "driver": ...}; None without Linux's /proc. On a machine with C cores, total / C bounds the
    wall time of the same work from below however well it overlaps (docs/performance.md, Start-up)."""
    proc = Path("/proc")
    if not (proc / str(root) / "stat").exists():
        return None
    tick = os.sysconf("SC_CLK_TCK")
    parent, seconds = {}, {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        parent[int(entry.name)] = int(fields[1])
        seconds[int(entry.name)] = sum(int(f) for f in fields[11:15]) / tick  # utime stime cutime cstime
    tree, frontier = {root}, [root]
    while frontier:
        children = [pid for pid, ppid in parent.items() if ppid in frontier and pid not in tree]
        tree.update(children)
        frontier = children
    return {"total": sum(seconds.get(pid, 0.0) for pid in tree), "driver": seconds.get(root, 0.0)}


def summarize(rows: list[dict]) -> dict:
    """Figures over the measured steps: all but the first (warm-up) when there are at least two."""
    measured = rows[1:] if len(rows) > 1 else rows
    times = [r["timing_s/step"] for r in measured]
    tokens = [r["perf/total_num_tokens"] for r in measured]
    out = {
        "steps": [r["step"] for r in measured],
        "step_s": {"median": statistics.median(times), "min": min(times), "max": max(times)},
        "tokens_per_step": statistics.mean(tokens),
        "tokens_per_s": statistics.median(t / s for t, s in zip(tokens, times)),
        "response_length_mean": statistics.mean(r["response_length/mean"] for r in measured),
        "phases_s": {p: statistics.median(r.get(f"timing_s/{p}", 0.0) for r in measured)
                     for p in PHASES if any(f"timing_s/{p}" in r for r in measured)},
        "peak_rss_gb": {k.rsplit("/", 1)[-1]: max(r[k] for r in rows) for k in rows[-1] if k.startswith("perf/peak_rss_gb/")},
        "optimizer_state_gb": {k.rsplit("/", 1)[-1]: rows[-1][k] for k in rows[-1]
                               if k.startswith("perf/optimizer_state_gb/")},
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rl_trainer.tools.bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=7, help="training steps (default 7; the first is warm-up)")
    parser.add_argument("--model", help="a Hugging Face model directory of the standard workload's kind")
    parser.add_argument("--shape", help="a random-init Qwen2 of this shape instead (rl_trainer.tools.torchrun.SHAPES)")
    parser.add_argument("--baseline", action="store_true", help="turn rl_trainer's opt-in optimisations off")
    parser.add_argument("--run-dir", type=Path, help="where the run writes (default: a new temporary directory)")
    parser.add_argument("--json", type=Path, help="also write the summary here as JSON")
    parser.add_argument("overrides", nargs="*", help="more config overrides, e.g. actor_rollout_ref.rollout.n=8")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="rl_trainer_bench_"))
    run_dir.mkdir(parents=True, exist_ok=True)
    model = args.model
    if args.shape:
        model = shape_model(args.shape, run_dir / f"model-{args.shape}")
    cmd = command(args.steps, run_dir, model, args.baseline, args.overrides)
    print("command:", shlex.join(["python", *cmd[1:]]), flush=True)
    code, first_step_s, total_s, launch_cpu = run(cmd, run_dir)
    rows = [r for r in read_metrics(run_dir) if "timing_s/step" in r]
    if code != 0 or not rows:
        print(f"error: the benchmark run failed (exit code {code}); see {run_dir / 'bench.log'}", file=sys.stderr)
        return code or 1
    summary = summarize(rows)
    summary.update(launch_to_first_step_s=first_step_s, launch_cpu_s=launch_cpu, total_s=total_s, run_dir=str(run_dir),
                   optimisations="off" if args.baseline else "on", threads=_threads(cmd))
    _print(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def shape_model(shape: str, out_dir: Path) -> str:
    """A random-init Qwen2 of `shape` (seed 0) with builtin:tiny-qwen2's tokenizer, saved to `out_dir`."""
    from rl_trainer.errors import UserError
    from rl_trainer.models.builtin import ensure_builtin_model
    from rl_trainer.tools.torchrun import SHAPES, random_model

    if shape not in SHAPES:
        raise UserError(f"--shape {shape}: not a known shape; use one of {sorted(SHAPES)}")
    return random_model(shape, str(ensure_builtin_model("tiny-qwen2", seed=0)), out_dir, seed=0)


def _threads(cmd: list[str]) -> str:
    values = dict(a.split("=", 1) for a in cmd if "=" in a)
    workers = int(values["trainer.nnodes"]) * int(values["trainer.n_gpus_per_node"])
    return f"{workers} workers x {values['trainer.cpus_per_worker']} thread(s)"


def _print(s: dict) -> None:
    t = s["step_s"]
    steps = s["steps"]
    print(f"\nstandard workload, optimisations {s['optimisations']}, {s['threads']}, "
          f"steps {steps[0]}-{steps[-1]} measured" if len(steps) > 1 else f"step {steps[0]} measured")
    print(f"  step time        median {t['median']:.3f} s   min {t['min']:.3f} s   max {t['max']:.3f} s")
    print(f"  tokens per step  {s['tokens_per_step']:.0f} (prompt + response, unpadded; "
          f"mean response length {s['response_length_mean']:.1f})")
    print(f"  throughput       {s['tokens_per_s']:.0f} tokens/s (median over steps)")
    print("  phases (median)  " + "  ".join(f"{p} {v:.3f}" for p, v in s["phases_s"].items()))
    print("  peak RSS         " + "  ".join(f"{k} {v:.2f} GiB" for k, v in s["peak_rss_gb"].items())
          + f"  (total {sum(s['peak_rss_gb'].values()):.2f} GiB)")
    print("  optimizer state  " + "  ".join(f"{k} {v * 1024:.1f} MiB" for k, v in s["optimizer_state_gb"].items()))
    first = s["launch_to_first_step_s"]
    print(f"  launch -> end of step 1  {first:.1f} s" if first is not None else "  launch -> step 1: not seen")
    cpu = s["launch_cpu_s"]
    if cpu is not None:
        cores = len(os.sched_getaffinity(0))
        print(f"  CPU by then      {cpu['total']:.1f} s in all processes (driver {cpu['driver']:.1f} s, the rest Ray's "
              f"and the workers'): at least {cpu['total'] / cores:.1f} s of wall time on {cores} cores")
    print(f"  run dir          {s['run_dir']}")


if __name__ == "__main__":
    sys.exit(main())
