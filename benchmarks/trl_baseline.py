"""The same-machine baseline for docs/performance.md: TRL's GRPOTrainer on rl_trainer's standard workload.

Not part of rl_trainer (TRL is not a dependency): run it in its own virtual environment.

    python3.11 -m venv /tmp/trl_venv
    /tmp/trl_venv/bin/pip install torch==2.13.0                      # the CPU wheel first
    /tmp/trl_venv/bin/pip install trl==1.16.0 transformers==5.23.0 accelerate datasets pandas pyarrow
    .venv/bin/python -m rl_trainer.tools.bench --steps 1                 # builds the model and the data in the cache
    OMP_NUM_THREADS=2 /tmp/trl_venv/bin/python benchmarks/trl_baseline.py --steps 7

Workload (rl_trainer/tools/bench.py has the full definition): builtin:tiny-qwen2 from rl_trainer's cache, GSM8K train
(chat template, prompts over 256 tokens dropped, no shuffling), 8 prompts x 4 generations = 32 sequences of up
to 128 new tokens at temperature 1, top_p 1, no top_k; GRPO with loss_type="dapo" (the token mean over all 32
sequences), beta=0.001 (k3 KL to a reference model), AdamW lr 1e-6, weight decay 0, max_grad_norm 1.0,
epsilon 0.2; micro-batches of 8 with 4 accumulation steps (one optimizer step per 32 sequences),
num_iterations=1; fp32 on 2 CPU threads; gradient checkpointing off (as rl_trainer's default). The reward is
1 when the ground-truth number appears in the completion (always 0 for a random model: every phase still runs).

It prints each step's time and TRL's phases (generation, reference log-probs, policy forward + loss, the rest
= backward), and the median of steps 2..N, tokens per step, and peak RSS; and flags a run as CONTENDED when other
processes used more than 0.1 core meanwhile.
"""

import argparse
import os
import resource
import statistics
import sys
import time
from collections import defaultdict

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MKL_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(2)

import accelerate  # noqa: E402
import datasets  # noqa: E402
import pandas as pd  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402
from trl.extras import profiling as trl_profiling  # noqa: E402

CACHE = os.path.expanduser(os.environ.get("RL_TRAINER_CACHE", "~/.cache/rl_trainer"))
MODEL_PATH = os.path.join(CACHE, "models", "tiny-qwen2-seed0-v1")
DATA_PATH = os.path.join(CACHE, "data", "gsm8k", "train.parquet")

# --------------------------------------------------------------------------------------------
# Per-phase timing: TRL's ProfilingContext only reports to wandb/mlflow/trackio, so hook it.
# --------------------------------------------------------------------------------------------
CUR_STEP = [0]
PHASES = defaultdict(lambda: defaultdict(float))  # step -> phase -> seconds
_STACK = []
_orig_enter = trl_profiling.ProfilingContext.__enter__
_orig_exit = trl_profiling.ProfilingContext.__exit__


def _enter(self):
    _STACK.append(self.name)
    return _orig_enter(self)


def _exit(self, exc_type, exc_val, exc_tb):
    dur = time.perf_counter() - self._start_time
    _STACK.pop()
    name = self.name.split(".", 1)[-1]
    if name == "_get_per_token_logps_and_entropies":
        name = "ref_logps" if any(n.endswith("_prepare_inputs") for n in _STACK) else "policy_logps"
    PHASES[CUR_STEP[0]][name] += dur
    self._start_time = None  # skip the (no-op) backend logging
    return False


trl_profiling.ProfilingContext.__enter__ = _enter
trl_profiling.ProfilingContext.__exit__ = _exit

# --------------------------------------------------------------------------------------------
# Reward: 1.0 if the ground-truth number appears in the completion text.
# --------------------------------------------------------------------------------------------
REWARD_CALLS = []


def contains_answer_reward(prompts, completions, ground_truth, **kwargs):
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    REWARD_CALLS.append({"n": len(texts), "first_prompt": prompts[0], "prompts": prompts})
    return [1.0 if str(gt).strip() in t else 0.0 for t, gt in zip(texts, ground_truth)]


def _sys_busy_s():
    """System-wide busy CPU seconds (all cores) from /proc/stat, to detect other load on the machine."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class StepTimer(TrainerCallback):
    def __init__(self):
        self.cpu0 = {}
        self.own_cpu = {}
        self.other_cpu = {}
        self.t_begin = {}
        self.t_end = {}
        self.logs = {}
        self.rss_after = {}

    def on_step_begin(self, args, state, control, **kw):
        CUR_STEP[0] = state.global_step + 1
        self.cpu0[state.global_step + 1] = (_sys_busy_s(), _own_cpu_s())
        self.t_begin[state.global_step + 1] = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.t_end[state.global_step] = time.perf_counter()
        sb, oc = _sys_busy_s(), _own_cpu_s()
        self.own_cpu[state.global_step] = oc - self.cpu0[state.global_step][1]
        self.other_cpu[state.global_step] = (sb - self.cpu0[state.global_step][0]) - self.own_cpu[state.global_step]
        self.rss_after[state.global_step] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def on_log(self, args, state, control, logs=None, **kw):
        if logs is not None and "loss" in logs:
            self.logs[state.global_step] = dict(logs)


def build_dataset(tok, path, max_prompt_tokens=256):
    df = pd.read_parquet(path)
    rows = []
    n_filtered = 0
    for i in range(len(df)):
        msgs = [dict(m) for m in df.iloc[i]["prompt"]]
        ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        if len(ids) > max_prompt_tokens:
            n_filtered += 1
            continue
        rows.append({"prompt": msgs, "ground_truth": str(df.iloc[i]["reward_model"]["ground_truth"]),
                     "orig_row": i, "prompt_tokens": len(ids)})
    return datasets.Dataset.from_list(rows), len(df), n_filtered


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--out", default="/tmp/trl_baseline_out")
    ap.add_argument("--model", default=MODEL_PATH, help="model directory (default: rl_trainer's builtin:tiny-qwen2)")
    ap.add_argument("--data", default=DATA_PATH, help="GSM8K train parquet in verl's schema")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grad-ckpt", action="store_true",
                    help="enable gradient checkpointing (TRL's GRPOConfig default is True; the workload uses False)")
    a = ap.parse_args()

    print(f"versions: trl={trl.__version__} transformers={transformers.__version__} torch={torch.__version__} "
          f"accelerate={accelerate.__version__} datasets={datasets.__version__} python={sys.version.split()[0]}")
    print(f"torch threads: {torch.get_num_threads()} (interop {torch.get_num_interop_threads()})")

    tok = AutoTokenizer.from_pretrained(a.model)
    t0 = time.perf_counter()
    ds, n_total, n_filtered = build_dataset(tok, a.data)
    print(f"dataset: {n_total} rows, filtered {n_filtered} prompts >256 tokens, {len(ds)} kept "
          f"({time.perf_counter() - t0:.1f}s to tokenize)")

    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)

    cfg = GRPOConfig(
        output_dir=a.out,
        max_steps=a.steps,
        per_device_train_batch_size=8,      # micro-batch of 8 sequences
        gradient_accumulation_steps=4,      # 4 x 8 = 32 sequences -> one optimizer step
        num_generations=4,                  # generation_batch_size = 32 = 8 prompts x 4
        num_iterations=1,
        max_completion_length=128,
        temperature=1.0, top_p=1.0, top_k=0, min_p=None, repetition_penalty=1.0,
        learning_rate=1e-6, weight_decay=0.0, max_grad_norm=1.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch",
        lr_scheduler_type="constant", warmup_steps=0,
        epsilon=0.2, loss_type="dapo", beta=0.001, entropy_coef=0.0,
        scale_rewards="group",
        shuffle_dataset=False,
        bf16=False, fp16=False, use_cpu=True,
        logging_steps=1, report_to="none", save_strategy="no",
        log_completions=False, dataloader_num_workers=0,
        seed=a.seed, data_seed=a.seed,
        disable_tqdm=True,
        gradient_checkpointing=a.grad_ckpt,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(model=model, reward_funcs=contains_answer_reward, args=cfg,
                          train_dataset=ds, processing_class=tok, callbacks=[timer])
    print(f"sampler: {type(trainer._get_train_sampler()).__name__}(shuffle={trainer.shuffle_dataset}); "
          f"generation_batch_size={cfg.generation_batch_size} steps_per_generation={cfg.steps_per_generation} "
          f"loss_type={cfg.loss_type} beta={cfg.beta} ref_model={'yes' if trainer.ref_model is not None else 'no'} "
          f"model dtype={trainer.model.dtype} device={trainer.model.device} grad_ckpt={cfg.gradient_checkpointing}")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    t_train = time.perf_counter()
    trainer.train()
    t_train = time.perf_counter() - t_train

    # ---------------------------------- report ----------------------------------
    print("\n=== data order check (first prompt of each step; expected dataset rows 8(k-1)..8k-1) ===")
    for k, rc in enumerate(REWARD_CALLS, 1):
        fp = rc["first_prompt"]
        text = fp[-1]["content"] if isinstance(fp, list) else fp
        uniq = []
        for p in rc["prompts"]:
            t = p[-1]["content"] if isinstance(p, list) else p
            if t not in uniq:
                uniq.append(t)
        exp = [r["content"] for r in [ds[j]["prompt"][-1] for j in range(8 * (k - 1), 8 * k)]]
        print(f"step {k}: n_seq={rc['n']} unique_prompts={len(uniq)} matches_rows_{8*(k-1)}..{8*k-1}="
              f"{uniq == exp} first={text[:70]!r}")

    steps = sorted(timer.t_end)
    wall = {k: timer.t_end[k] - timer.t_begin[k] for k in steps}
    e2e = {k: timer.t_end[k] - timer.t_end[k - 1] for k in steps if k - 1 in timer.t_end}
    prev_tok = 0
    print("\n=== per-step ===")
    print("step  wall_s  end2end_s  trl_step_time  gen_s  ref_s  polfwd+loss_s  bwd_s  opt+misc_s  "
          "mean_clen  tokens  reward  rss_MB  own_cpu_s  other_procs_cpu_s")
    rows = []
    for k in steps:
        lg = timer.logs.get(k, {})
        ntok = lg.get("num_tokens", float("nan"))
        tok_step = ntok - prev_tok
        prev_tok = ntok
        ph = PHASES[k]
        st = lg.get("step_time", float("nan"))
        gen = ph.get("transformers.generate", 0.0)
        ref = ph.get("ref_logps", 0.0)
        prep = ph.get("_prepare_inputs", 0.0)
        cl = ph.get("compute_loss", 0.0)
        bwd = st - prep - cl
        opt = wall[k] - st
        mcl = lg.get("completions/mean_length", float("nan"))
        rows.append((k, wall[k], tok_step, mcl))
        print(f"{k:4d}  {wall[k]:6.2f}  {e2e.get(k, float('nan')):9.2f}  {st:13.2f}  {gen:5.2f}  {ref:5.2f}  "
              f"{cl:13.2f}  {bwd:5.2f}  {opt:10.2f}  {mcl:9.1f}  {tok_step:6.0f}  "
              f"{lg.get('reward', float('nan')):6.3f}  {timer.rss_after[k] / 1024:6.0f}  "
              f"{timer.own_cpu[k]:9.2f}  {timer.other_cpu[k]:17.2f}")
        print(f"      (prepare_inputs other than gen/ref: {prep - gen - ref:.2f}s; "
              f"rewards {ph.get('contains_answer_reward', 0.0):.3f}s)")

    meas = [r for r in rows if r[0] >= 2]
    w = [r[1] for r in meas]
    print("\n=== summary (steps 2..%d) ===" % steps[-1])
    print(f"step wall times (s): {[round(r[1], 3) for r in rows]}")
    print(f"median step time (steps 2-{steps[-1]}): {statistics.median(w):.3f} s   min {min(w):.3f}  max {max(w):.3f}  "
          f"mean {statistics.mean(w):.3f}")
    print(f"mean completion length: {statistics.mean(r[3] for r in meas):.1f} tokens "
          f"(all steps {statistics.mean(r[3] for r in rows):.1f})")
    print(f"tokens/step (prompt+completion, unpadded, 32 seqs): mean {statistics.mean(r[2] for r in meas):.0f} "
          f"(all steps {statistics.mean(r[2] for r in rows):.0f})")
    print(f"tokens/s at median: {statistics.mean(r[2] for r in meas) / statistics.median(w):.0f}")
    print(f"peak RSS (ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB "
          f"(before train {rss_before / 1024:.0f} MB)")
    print(f"total train() wall: {t_train:.1f} s")
    oth = sum(timer.other_cpu[k] for k in steps if k >= 2)
    print(f"CPU used by OTHER processes during steps 2-{steps[-1]}: {oth:.1f} s "
          f"({oth / sum(w):.2f} cores avg) -> {'CONTENDED' if oth / sum(w) > 0.1 else 'clean'}")


if __name__ == "__main__":
    main()
