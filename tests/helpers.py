"""Plain helpers for the CLI tests (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def small_run_overrides(model_dir, data_dir, tmp_path, reward=None) -> list[str]:
    """A two-worker run small enough for CI: 4 prompts x n=4, 16-token responses, two steps."""
    overrides = [
        f"actor_rollout_ref.model.path={model_dir}",
        f"data.train_files={data_dir}/train.parquet",
        f"data.val_files={data_dir}/test.parquet",
        "data.train_batch_size=4",
        "data.max_prompt_length=192",
        "data.max_response_length=16",
        "data.val_max_samples=8",
        "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        "trainer.n_gpus_per_node=2",
        "trainer.total_training_steps=2",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        f"trainer.default_local_dir={tmp_path}/ckpt",
        f"hydra.run.dir={tmp_path}/run",
    ]
    if reward is not None:
        overrides.append(f"custom_reward_function.path={reward}")
    return overrides


# A reward model's own chat format, unlike the tiny models' ChatML: re-templated text is recognisable by hand.
RM_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def save_reward_model(path, policy_dir, chat_template: str | None = RM_TEMPLATE) -> str:
    """A random one-label Qwen2ForSequenceClassification (the reward model of reward_model.enable) saved to `path`
    with save_pretrained, with the policy's tokenizer and `chat_template`."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    torch.manual_seed(1)
    config = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    Qwen2ForSequenceClassification(config).save_pretrained(path)
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(path)
    return str(path)


def run_cli(overrides: list[str], cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m rl_trainer.main OVERRIDES` as a user runs it, in its own session.

    After it exits, `proc.leftover` lists the processes it left in its session (Ray daemons that outlive a killed
    driver); they are then killed, as a job scheduler would, so one test's debris never reaches the next.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "rl_trainer.main", *overrides], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True, env={**os.environ, **(env or {})},
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    result.leftover = session_processes(proc.pid)
    if result.leftover:
        os.killpg(proc.pid, signal.SIGKILL)
    return result


def session_processes(sid: int) -> list[str]:
    """Live processes (not zombies) of session `sid`."""
    out = subprocess.run(["ps", "-eo", "sid=,stat=,args="], capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines()
            if line.split(None, 1)[0] == str(sid) and not line.split()[1].startswith("Z")]


def session_pids(sid: int) -> list[int]:
    """Pids of the live processes (not zombies) of session `sid`."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True).stdout
    return [int(pid) for pid, s, stat in (line.split() for line in out.splitlines())
            if s == str(sid) and not stat.startswith("Z")]


def wait_gone(pids: list[int], timeout: float) -> None:
    """Block until every process in `pids` has exited, or `timeout` seconds have passed (the caller then asserts).

    Waits on a pidfd per process (Linux >= 5.3), which becomes readable when the process exits: no polling interval.
    """
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            pass  # already gone
    try:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        pending, deadline = len(fds), time.monotonic() + timeout
        while pending and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                poller.unregister(fd)
                pending -= 1
    finally:
        for fd in fds:
            os.close(fd)


def ray_daemons() -> list[str]:
    """The live Ray daemons (raylet, GCS) of this test process: those under its RAY_TMPDIR (conftest.isolated_env),
    which every Ray it or its CLI runs start uses, whichever session they are in. There should be none between tests.
    The daemons of the other test process (pytest-xdist) are not counted."""
    out = subprocess.run(["ps", "-eo", "stat=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()
            if not line.split()[0].startswith("Z") and ("raylet" in line or "gcs_server" in line)
            and f"{os.environ['RAY_TMPDIR']}/" in line]


_SHARED_RAY: dict = {}


def shared_ray_env() -> dict:
    """`env` for run_cli that makes the CLI join this session's one Ray head (2 CPUs, started at first use) instead of
    starting and stopping a local Ray of its own (~6 s a run). The CLI's own local start is shown by the runs that do
    not pass it (the default run, the bad-input corpus, the killed worker, bench)."""
    if "cluster" not in _SHARED_RAY:
        from ray.cluster_utils import Cluster

        _SHARED_RAY["cluster"] = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False},
                                         shutdown_at_exit=False)
    return {"RAY_ADDRESS": _SHARED_RAY["cluster"].address}


def stop_shared_ray() -> None:
    """Stop the shared Ray head, if running: for tests that need their own cluster or that no Ray runs at all (the
    next shared_ray_env() starts a new head)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    cluster = _SHARED_RAY.pop("cluster", None)
    if cluster is not None:
        cluster.shutdown()


def read_steps(run_dir: Path) -> dict[int, dict]:
    """Per-step metrics of a run's metrics.jsonl, merged by step."""
    steps: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        steps.setdefault(record["step"], {}).update(record)
    return steps


def worker_config(model_dir, workers: int, micro, extra=()) -> dict:
    """A resolved config for worker tests: 2 prompts x n=4, 6-token responses, KL loss, `workers` ranks."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from rl_trainer.config import validate_config

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose("ppo_trainer", overrides=[
            f"actor_rollout_ref.model.path={model_dir}", "data.train_batch_size=2", "actor_rollout_ref.rollout.n=4",
            "actor_rollout_ref.actor.ppo_mini_batch_size=2", f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}",
            f"critic.ppo_micro_batch_size_per_gpu={micro}", "actor_rollout_ref.actor.use_kl_loss=true",
            "actor_rollout_ref.actor.optim.lr=1e-4", "critic.optim.lr=1e-4", f"trainer.n_gpus_per_node={workers}",
            "data.max_response_length=6", "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
            "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
            # The worker tests hand update_actor batches with their own old_log_probs (the on-policy default would
            # take the update's forward instead).
            "actor_rollout_ref.actor.recompute_old_log_prob=true", *extra,
        ])
    validate_config(cfg)
    return OmegaConf.to_container(cfg, resolve=True)


def loop_config(model_dir, data_dir, tmp_path, extra=(), reward=None):
    """A checked config (DictConfig) for the Ray-free loop tests: one worker, 2 GSM8K prompts x n=2 per step,
    6-token responses, 4 training / 2 validation prompts, no checkpoints; `reward`: a custom reward file."""
    overrides = [
        f"actor_rollout_ref.model.path={model_dir}", f"data.train_files={data_dir}/train.parquet",
        f"data.val_files={data_dir}/test.parquet", "data.train_max_samples=4", "data.val_max_samples=2",
        "data.train_batch_size=2", "data.max_prompt_length=192", "data.max_response_length=6",
        "actor_rollout_ref.rollout.n=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4", "trainer.n_gpus_per_node=1",
        "trainer.val_before_train=false", "trainer.test_freq=-1", "trainer.save_freq=-1",
        f"trainer.default_local_dir={tmp_path}/ckpt", *extra,
    ]
    if reward is not None:
        overrides.append(f"custom_reward_function.path={reward}")
    return cli_config(overrides)


class RecordingGroup:
    """A real worker group (Ray's or the in-process one) that also appends (group name, verb, method) to `calls`
    for every verb it receives, so a test can read the order of the loop's phases."""

    def __init__(self, group, calls: list):
        self.group, self.calls, self.name, self.world_size = group, calls, group.name, group.world_size

    def call(self, method: str, *args, **kwargs):
        self.calls.append((self.name, "call", method))
        return self.group.call(method, *args, **kwargs)

    def dispatch(self, method: str, batch, **kwargs):
        self.calls.append((self.name, "dispatch", method))
        return self.group.dispatch(method, batch, **kwargs)

    def dispatch_metrics(self, method: str, batch):
        self.calls.append((self.name, "dispatch_metrics", method))
        return self.group.dispatch_metrics(method, batch)

    def shutdown(self) -> None:
        self.group.shutdown()


@contextlib.contextmanager
def local_trainer(cfg, run_dir: Path, calls: list | None = None):
    """A `PPOTrainer` for the checked config `cfg` (loop_config, cli_config) over in-process worker groups
    (rl_trainer.distributed.LocalWorkerGroup) around real workers: one gloo rank in this process, no Ray. The rest is
    the CLI's own code: its input stage (rl_trainer.main.load_inputs: models, tokenizer, reward function, loaders),
    the LR schedules' length (fill_total_training_steps) and the model loads (init_models). With `calls`, the groups
    are RecordingGroups writing to it. The process group and the workers end on exit; the torchrun variables it sets
    are restored."""
    import socket

    from omegaconf import OmegaConf

    from rl_trainer.checkpoint import CheckpointManager
    from rl_trainer.config import fill_total_training_steps
    from rl_trainer.distributed import LocalWorkerGroup
    from rl_trainer.main import init_models, load_inputs, worker_classes
    from rl_trainer.tracking import Tracking
    from rl_trainer.trainer import PPOTrainer

    trainer_cfg = cfg.trainer
    data = load_inputs(cfg)
    total_steps = fill_total_training_steps(cfg, len(data.train_loader))
    config = OmegaConf.to_container(cfg, resolve=True)
    actor_cls, critic_cls, _ = worker_classes()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    groups, tracker = [], None
    try:
        where = dict(rank=0, ranks=1, device="cpu", threads=1)
        actor = LocalWorkerGroup("actor_rollout_ref", actor_cls, config, **where)
        groups.append(actor)
        critic = LocalWorkerGroup("critic", critic_cls, config, **where) if cfg.critic.enable else None
        if critic is not None:
            groups.insert(0, critic)  # shut down before the actor's group, which formed the process group
        use_ref = init_models(cfg, data, actor, critic, None)
        if calls is not None:
            actor = RecordingGroup(actor, calls)
            critic = RecordingGroup(critic, calls) if critic is not None else None
        tracker = Tracking(trainer_cfg.project_name, trainer_cfg.experiment_name, [], run_dir, config)
        yield PPOTrainer(cfg, tokenizer=data.tokenizer, train_loader=data.train_loader, val_loader=data.val_loader,
                         actor=actor, critic=critic, use_ref=use_ref, reward_fn=data.reward_fn, tracker=tracker,
                         checkpoints=CheckpointManager(trainer_cfg.default_local_dir, None), total_steps=total_steps,
                         resume_path=None)
    finally:
        if tracker is not None:
            tracker.finish()
        for group in groups:
            group.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def in_process_run(overrides: list[str], run_dir) -> dict[int, dict]:
    """The steps' metrics of `python -m rl_trainer.main OVERRIDES` trained through the CLI's config and input stages
    and the real trainer and workers on one gloo rank in this process (helpers.local_trainer): for
    runs whose point is the configuration, not the start-up (trainer.n_gpus_per_node becomes 1)."""
    overrides = [o for o in overrides if not o.startswith(("hydra.", "trainer.n_gpus_per_node="))]
    with local_trainer(cli_config([*overrides, "trainer.n_gpus_per_node=1"]), run_dir) as trainer:
        trainer.fit()
    return read_steps(run_dir)


def compose_cli_config(task: list[str], config_name: str = "ppo_trainer"):
    """configs/<config_name>.yaml composed by Hydra with the task overrides `task` (no `hydra.*` ones), as the CLI
    composes it."""
    from hydra import compose, initialize_config_dir

    from rl_trainer import main as cli

    with initialize_config_dir(config_dir=cli.CONFIG_DIR, version_base=None):
        return compose(config_name, overrides=task)


def cli_config(task: list[str], config_name: str = "ppo_trainer"):
    """What `python -m rl_trainer.main --config-name CONFIG_NAME TASK` trains with: composed (compose_cli_config) and
    checked by the CLI's config stage (rl_trainer.main.check_config, which raises its one-line errors)."""
    from rl_trainer.main import check_config

    cfg = compose_cli_config(task, config_name)
    check_config(cfg, task)
    return cfg


def config_stage_error(overrides: list[str], run_dir: Path) -> Exception:
    """What `python -m rl_trainer.main OVERRIDES` stops with at start-up, before any worker loads a model, run in
    this process.

    The same code path as the CLI: Hydra composes configs/ppo_trainer.yaml with the overrides (`hydra.*` ones only
    place the run directory; `run_dir` is unused), then rl_trainer.main's config stage (check_config: the config,
    resources, checkpoints) and input stage (load_inputs: model, tokenizer, reward function, datasets; the CLI runs
    it beside Ray's start). A case that gets through both is a failure (it would train); main.main prints the
    exception as the one stderr line `error: <message>` and exits 2 for a UserError (shown by the true CLI runs in
    tests/test_bad_input.py). Saves an interpreter start, Ray and its imports (~10 s).
    """
    from rl_trainer import main as cli

    task = [o for o in overrides if not o.startswith("hydra.")]
    cfg = compose_cli_config(task)  # outside the try: a Hydra error is raised, not returned
    try:
        cli.check_config(cfg, task)
        cli.load_inputs(cfg)
    except Exception as exc:  # noqa: BLE001 - the caller asserts the type (a bug is not a UserError)
        return exc
    raise AssertionError("the config and input stages let this command line through: main would train")
