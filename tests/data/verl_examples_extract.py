"""Rebuild tests/data/verl_examples.json: the `python3 -m verl.trainer.main_ppo` command lines of verl's examples/.

    python tests/data/verl_examples_extract.py GIT_DIR [REV]     # e.g. a clone of github.com/volcengine/verl, main

Each examples/**/*.sh that calls main_ppo is run by bash in a scratch directory with `python`/`python3` replaced
by a stub that records its arguments (and conda, srun, nvidia-smi, rm, mkdir, pip, git, ... by no-ops; `set -e/-u`
turned off), so shell variables, arrays and defaults resolve exactly as the script resolves them. Each recorded
command line is then normalised for a 2-worker CPU run of the tiny model (`normalise`): model, data and sizes are
substituted, settings that only point at files in verl's repository are dropped. The fixture stores facts (the
override lists and what was dropped), not verl's code.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

OUT = Path(__file__).with_name("verl_examples.json")
STUB_PYTHON = """#!{python}
import json, os, sys
args = sys.argv[1:]
if "verl.trainer.main_ppo" in args:
    with open(os.environ["CAPTURE"], "a") as f:
        f.write(json.dumps(args[args.index("verl.trainer.main_ppo") + 1:]) + "\\n")
"""
NO_OPS = ("nvidia-smi", "npu-smi", "ray", "pip", "pip3", "rm", "mkdir", "wget", "curl", "git", "hf", "huggingface-cli",
          "sleep", "modelscope", "conda", "ulimit", "torchrun")
SRUN = '#!/bin/bash\nwhile [ $# -gt 0 ] && [[ "$1" != python* && "$1" != bash ]]; do shift; done\nexec "$@"\n'

# key -> value for the tiny CPU run (None: drop the override).
SUBSTITUTE = {
    "data.train_files": "builtin:gsm8k/train", "data.val_files": "builtin:gsm8k/test",
    "actor_rollout_ref.model.path": "builtin:tiny-qwen2", "critic.model.path": "builtin:tiny-qwen2",
    "critic.model.tokenizer_path": "builtin:tiny-qwen2", "data.tokenizer": None,
    "data.train_batch_size": "4", "data.val_batch_size": None, "data.gen_batch_size": None,
    "data.max_prompt_length": "256", "data.max_response_length": "16",
    "data.train_max_samples": None, "data.val_max_samples": None,
    "actor_rollout_ref.actor.ppo_mini_batch_size": "4", "critic.ppo_mini_batch_size": "4",
    "actor_rollout_ref.rollout.prompt_length": None, "actor_rollout_ref.rollout.response_length": None,
    "actor_rollout_ref.rollout.max_model_len": None, "actor_rollout_ref.rollout.max_num_batched_tokens": None,
    "trainer.n_gpus_per_node": "2", "trainer.nnodes": "1", "trainer.total_epochs": "1",
    "trainer.total_training_steps": "1", "trainer.save_freq": "-1", "trainer.test_freq": "-1",
    "trainer.val_before_train": "false", "trainer.logger": "console", "trainer.default_local_dir": None,
    "trainer.resume_mode": None, "trainer.resume_from_path": None,
    "trainer.rollout_data_dir": None, "trainer.validation_data_dir": None,
    "custom_reward_function.path": None, "custom_reward_function.name": None,
    "reward.custom_reward_function.path": None, "reward.custom_reward_function.name": None,
    "ray_kwargs.ray_init.num_cpus": None,
}
APPEND = ("trainer.total_training_steps=1", "trainer.val_before_train=false", "trainer.test_freq=-1",
          "trainer.save_freq=-1", "trainer.logger=console", "trainer.n_gpus_per_node=2", "trainer.nnodes=1",
          "data.train_batch_size=4", "data.max_prompt_length=256", "data.max_response_length=16",
          "data.train_files=builtin:gsm8k/train", "data.val_files=builtin:gsm8k/test",
          "actor_rollout_ref.model.path=builtin:tiny-qwen2", "actor_rollout_ref.actor.ppo_mini_batch_size=4")
MICRO = re.compile(r"micro_batch_size(_per_gpu)?$")
# Per-worker micro-batches for lines that set neither spelling (rl_trainer's defaults are sized for its own run).
MICRO_DEFAULTS = {"actor_rollout_ref.actor.ppo_micro_batch_size": "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
                  "actor_rollout_ref.rollout.log_prob_micro_batch_size":
                      "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",
                  "actor_rollout_ref.ref.log_prob_micro_batch_size":
                      "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu"}


def _override_value(key: str, value) -> str:
    """`key=value` as a Hydra override; a string Hydra cannot parse is quoted, and one it still cannot parse (a
    long chat template) is shortened to `custom` (the value only has to differ from the default)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if isinstance(value, bool):
        text = str(value).lower()
    elif value is None:
        text = "null"
    elif isinstance(value, (list, dict)):
        text = json.dumps(value)
    else:
        text = str(value)
    for candidate in (text, "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'", "custom"):
        try:
            OverridesParser.create().parse_override(f"{key}={candidate}")
            return f"{key}={candidate}"
        except Exception:  # noqa: BLE001 - Hydra's parse errors have several types
            continue
    raise AssertionError(key)


def inline_config(argv: list[str], read) -> list[str]:
    """A script's own --config-path/--config-name (a yaml in verl's examples/ that composes verl's ppo_trainer or
    ppo_megatron_trainer) becomes that yaml's keys as overrides, after the verl config name it composes."""
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config-path=")), None)
    name = next((a.split("=", 1)[1] for a in argv if a.startswith("--config-name=")), None)
    if not path or not name or "examples/" not in path:
        return argv
    text = read(f"examples/{path.split('examples/', 1)[1].strip('/')}/{name.removesuffix('.yaml')}.yaml")
    if text is None:
        return argv
    import yaml

    data = yaml.safe_load(text)
    base = next((d for d in data.pop("defaults", []) if isinstance(d, str) and d.startswith("ppo_")), "ppo_trainer")
    data.pop("hydra", None)

    def flat(node, prefix=""):  # ++: the yaml may add keys, as a config file can
        for k, v in node.items():
            if isinstance(v, dict) and v:
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield _override_value(f"++{prefix}{k}", v)

    rest = [a for a in argv if not a.startswith(("--config-path=", "--config-name="))]
    return ["--config-path=config", f"--config-name={base}", *flat(data), *rest]


def capture(git_dir: Path, rev: str) -> list[dict]:
    """Run each main_ppo example of `rev` with the stubs; one record per recorded call."""
    names = subprocess.run(["git", "-C", str(git_dir), "ls-tree", "-r", "--name-only", rev, "examples"],
                           capture_output=True, text=True, check=True).stdout.split()
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        stubs, home = Path(tmp, "stub"), Path(tmp, "home")
        stubs.mkdir(), home.mkdir()
        for name in ("python", "python3"):
            (stubs / name).write_text(STUB_PYTHON.format(python=sys.executable))
        for name in NO_OPS:
            (stubs / name).write_text("#!/bin/sh\nexit 0\n")
        (stubs / "srun").write_text(SRUN)
        for stub in stubs.iterdir():
            stub.chmod(0o755)
        for name in sorted(n for n in names if n.endswith(".sh")):
            text = subprocess.run(["git", "-C", str(git_dir), "show", f"{rev}:{name}"], capture_output=True,
                                  text=True, check=True).stdout
            if "verl.trainer.main_ppo" not in text:
                continue
            work = Path(tempfile.mkdtemp(dir=tmp))
            (work / "run.sh").write_text(re.sub(r"(?m)^(\s*)set -[a-z]+( -o pipefail)?", r"\1true", text))
            log = work / "calls.jsonl"
            env = {"HOME": str(home), "PATH": f"{stubs}:/usr/bin:/bin", "CAPTURE": str(log)}
            subprocess.run(["timeout", "10", "bash", "run.sh"], cwd=work, env=env, stdin=subprocess.DEVNULL,
                           capture_output=True)
            calls = log.read_text().splitlines() if log.exists() else []
            records += [{"script": name, "call": i, "argv": json.loads(c)} for i, c in enumerate(calls)]
    return records


def normalise(argv: list[str], read=lambda path: None) -> tuple[list[str], list[str]]:
    """(overrides for the tiny CPU run, the overrides dropped). Flags (--config-path/--config-name) are kept, except
    a config of verl's examples/, which is inlined (`inline_config`; `read` gives a file of verl's tree)."""
    out, dropped, seen, args = [], [], set(), []
    for arg in argv:
        if args and args[-1] in ("--config-path", "--config-name", "-cp", "-cn"):
            flag = {"-cp": "--config-path", "-cn": "--config-name"}.get(args[-1], args[-1])
            args[-1] = f"{flag}={arg}"
        else:
            args.append(arg)
    args = inline_config(args, read)
    while args:
        arg = args.pop(0)
        if arg.startswith("-"):
            out.append(arg)
            continue
        if "=" not in arg:
            dropped.append(arg)  # a stray word ($@ leftovers, shell redirections)
            continue
        key, value = arg.split("=", 1)
        bare = key.lstrip("+~")
        if bare in SUBSTITUTE:
            value = SUBSTITUTE[bare]
        elif MICRO.search(bare):
            value = "2" if bare.endswith("_per_gpu") else "4"  # per worker / over the 2 workers
        elif bare == "actor_rollout_ref.rollout.n":
            value = str(min(int(value), 4)) if value.isdigit() else None
        elif bare == "actor_rollout_ref.rollout.name" and value == "vllm":
            value = "hf"  # the CPU engine; vllm needs a GPU build
        elif "$" in value:
            value = None  # a variable the script left unresolved
        if value is None:
            dropped.append(arg)
            continue
        seen.add(bare)
        out = [o for o in out if o.split("=", 1)[0].lstrip("+~") != bare]  # a later value wins, as in Hydra
        out.append(f"{key}={value}")
    out += [a for a in APPEND if a.split("=", 1)[0] not in seen]
    out += [f"{per_gpu}=2" for glob, per_gpu in MICRO_DEFAULTS.items() if glob not in seen and per_gpu not in seen]
    return out, dropped


def main() -> None:
    git_dir, rev = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "HEAD"
    commit = subprocess.run(["git", "-C", str(git_dir), "rev-parse", rev], capture_output=True, text=True,
                            check=True).stdout.strip()
    def read(path: str) -> str | None:
        done = subprocess.run(["git", "-C", str(git_dir), "show", f"{rev}:{path}"], capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else None

    lines = []
    for record in capture(git_dir, rev):
        overrides, dropped = normalise(record["argv"], read)
        lines.append({"script": record["script"], "call": record["call"], "overrides": overrides, "dropped": dropped})
    OUT.write_text(json.dumps({"_about": f"main_ppo command lines of verl's examples/ at {commit} "
                                         f"(github.com/volcengine/verl), normalised by {Path(__file__).name}",
                               "commit": commit, "lines": lines}, indent=1) + "\n")
    print(f"{len(lines)} command lines -> {OUT}", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("LC_ALL", "C")
    main()
