"""verl's own example command lines (tests/data/verl_examples.json, built by tests/data/verl_examples_extract.py from
the `python3 -m verl.trainer.main_ppo` calls of verl's examples/**/*.sh, tiny model, data and sizes substituted):
each composes and either validates or is refused in one line naming the feature rl_trainer lacks; none fails on a
key. A few diverse ones train one step (slow): two through the real CLI, three in this process.

    python tests/test_verl_examples.py        # the counts: validate / refused, top refused features
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = json.loads((ROOT / "tests" / "data" / "verl_examples.json").read_text())
LINES = CORPUS["lines"]
# rl_trainer.compat's refusals, and rl_trainer.config's older one-line refusals (naming the key or what is missing).
FEATURE = re.compile(r"rl_trainer does not implement (.+?); |^(\S+)=\S+ is not supported by rl_trainer yet; "
                     r"|^\S+ needs (.+?), which rl_trainer does not ")
VERL_KEYS = json.loads((ROOT / "tests" / "data" / "verl_0.9.1_keys.json").read_text())
KNOWN_KEYS = {k for name in ("ppo_trainer", "ppo_megatron_trainer") for section in (VERL_KEYS, VERL_KEYS["older"])
              for k in section[name]}
UNKNOWN_KEY = re.compile(r"Could not override '([^']+)'")
# Diverse lines that validate, trained one step: GRPO and PPO with a critic through the real CLI on 2 CPU workers;
# REINFORCE++ with a KL in the reward, RLOO, and one with a hint key (use_prefix_grouper) in this process.
END_TO_END = ("examples/grpo_trainer/run_qwen2-7b.sh", "examples/ppo_trainer/run_gemma.sh")
IN_PROCESS = ("examples/reinforce_plus_plus_trainer/run_qwen2-7b_math_rf.sh", "examples/rloo_trainer/run_qwen2-7b.sh",
              "examples/prefix_grouper/run_qwen3_prefix_grouper.sh")


@functools.lru_cache(maxsize=None)
def _composed(config_dir: str, name: str, groups: tuple[str, ...]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(name, overrides=list(groups))


def compose_line(config_dir: str, name: str, overrides: list[str]):
    """What hydra.compose(name, overrides) returns, faster: a compose costs ~0.4 s (mostly parsing
    configs/verl_keys.yaml), so the config is composed once per config name and choice of config groups
    (model_engine=..., and hydra.* lines) with Hydra's compose, and each line's value overrides are then applied
    to a copy by the function compose itself applies them with (ConfigLoaderImpl._apply_overrides_to_config,
    after Hydra's own override parser). test_compose_line_is_hydra_compose checks the two agree."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    composed_by_hydra = [o for o in parsed if o.key_or_group.startswith("hydra.")
                         or (Path(config_dir) / o.key_or_group).is_dir()]
    cfg = copy.deepcopy(_composed(config_dir, name, tuple(o.input_line for o in composed_by_hydra)))
    ConfigLoaderImpl._apply_overrides_to_config([o for o in parsed if o not in composed_by_hydra], cfg)
    return cfg


def classify(overrides: list[str], fast: bool = True) -> tuple[str, str]:
    """("valid", "") | ("refused", feature) | ("error", message) for one command line, composed and checked as
    `python -m rl_trainer.main` would (config flags, Hydra compose, validate_config), without starting anything."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from rl_trainer.config import validate_config
    from rl_trainer.errors import UserError
    from rl_trainer.main import config_flags

    try:
        argv, config_dir, name = config_flags(overrides)
        plain = [a for a in argv if not a.startswith("--config-")]
        if fast:
            cfg = compose_line(config_dir, name, plain)
        else:
            with initialize_config_dir(config_dir=config_dir, version_base=None):
                cfg = compose(name, overrides=plain)
        validate_config(cfg, plain)
    except UserError as exc:
        match = FEATURE.search(str(exc))
        return ("refused", next(g for g in match.groups() if g)) if match and "\n" not in str(exc) else ("error", str(exc))
    except (HydraException, OmegaConfBaseException) as exc:
        return "error", f"{type(exc).__name__}: {exc}"
    return "valid", ""


def test_compose_line_is_hydra_compose():
    """The shortcut of compose_line gives Hydra's results: same config, same refusal, same Hydra error."""
    picked = [LINES[0], next(l for l in LINES if any(o.startswith("--config-name=ppo_megatron") for o in l["overrides"])),
              next(l for l in LINES if any(o.startswith("+") for o in l["overrides"]))]
    for line in picked:
        assert classify(line["overrides"], fast=True) == classify(line["overrides"], fast=False), line["script"]
    bad = LINES[0]["overrides"] + ["actor_rollout_ref.actor.no_such_key=1"]
    assert classify(bad, fast=True) == classify(bad, fast=False)
    assert classify(bad)[0] == "error"


def fails_in_verl_too(message: str) -> bool:
    """An error verl itself gives for that line: a key neither verl 0.9.1 nor the corpus' verl has (a stale
    example), or an override Hydra cannot parse (a typo in the script)."""
    match = UNKNOWN_KEY.search(message)
    return bool(match and match.group(1) not in KNOWN_KEYS) or message.startswith("OverrideParseException")


def test_every_example_line_validates_or_is_refused_by_feature():
    results = [(line["script"], *classify(line["overrides"])) for line in LINES]
    errors = [f"{script}: {message}" for script, kind, message in results
              if kind == "error" and not fails_in_verl_too(message)]
    assert not errors, "\n".join(errors)
    assert sum(kind == "error" for _, kind, _ in results) <= 3  # the stale examples (printed by summary)
    assert len(LINES) >= 100  # the whole examples/ tree, not a sample
    assert sum(kind == "valid" for _, kind, _ in results) >= len(END_TO_END) + len(IN_PROCESS)


@pytest.mark.slow
@pytest.mark.parametrize("script", END_TO_END)
def test_example_trains_one_step(script, tmp_path, shared_ray):
    """The real CLI, one training step on 2 CPU workers, from a verl example's own overrides (on the session's
    shared Ray head: a local Ray's start is shown by the default run)."""
    from tests.helpers import run_cli

    line = next(line for line in LINES if line["script"] == script)
    assert classify(line["overrides"])[0] == "valid"
    result = run_cli(line["overrides"] + [f"trainer.default_local_dir={tmp_path}/ckpt"], cwd=tmp_path, env=shared_ray)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step:1" in result.stdout.replace(" ", ""), result.stdout[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("script", IN_PROCESS)
def test_example_trains_one_step_in_process(script, tmp_path):
    """A verl example's own overrides, one training step through the CLI's config and input stages and the real
    trainer and worker on one gloo rank, without Ray (helpers.local_trainer; trainer.n_gpus_per_node=1 is the one
    override added)."""
    from rl_trainer.main import CONFIG_DIR, config_flags
    from tests.helpers import cli_config, local_trainer, read_steps

    line = next(line for line in LINES if line["script"] == script)
    argv, config_dir, name = config_flags(line["overrides"])
    assert config_dir == CONFIG_DIR, config_dir
    cfg = cli_config([*argv, "trainer.n_gpus_per_node=1", f"trainer.default_local_dir={tmp_path}/ckpt"], name)
    with local_trainer(cfg, tmp_path / "run") as trainer:
        trainer.fit()
    steps = read_steps(tmp_path / "run")
    assert sorted(steps) == [1] and math.isfinite(steps[1]["actor/pg_loss"]), steps


def summary() -> str:
    results = [(line["script"], *classify(line["overrides"])) for line in LINES]
    kinds = Counter(kind for _, kind, _ in results)
    features = Counter(message for _, kind, message in results if kind == "refused")
    out = [f"verl examples at {CORPUS['commit'][:10]}: {len(results)} main_ppo command lines; "
           + ", ".join(f"{n} {k}" for k, n in kinds.most_common()), "refused, by feature (lines blocked):"]
    out += [f"  {n:3d}  {feature}" for feature, n in features.most_common()]
    out += [f"{'fails in verl too' if fails_in_verl_too(message) else 'ERROR'}: {script}: {message.splitlines()[0]}"
            for script, kind, message in results if kind == "error"]
    return "\n".join(out)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(summary())
