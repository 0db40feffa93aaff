"""`python -m rl_trainer.tools.plot`: PNG output, labels from the differing config keys, sweep expansion, panel choice,
and one-line errors, on run directories written the way the trainer and Hydra write them."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rl_trainer.errors import UserError
from rl_trainer.tools.plot import expand_run_dirs, load_series, plot_runs, run_labels, select_metrics, short_keys
from rl_trainer.tracking import Tracking

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def matplotlib_config(tmp_path_factory):
    """matplotlib's font cache goes under the test session's temp dir, never to ~."""
    old = os.environ.get("MPLCONFIGDIR")
    os.environ["MPLCONFIGDIR"] = str(tmp_path_factory.mktemp("mplconfig"))
    yield
    if old is None:
        os.environ.pop("MPLCONFIGDIR")
    else:
        os.environ["MPLCONFIGDIR"] = old


def base_config(**changes) -> dict:
    """A cut-down composed config, as Hydra's .hydra/config.yaml holds it (interpolations unresolved)."""
    config = {
        "algorithm": {"adv_estimator": "grpo", "use_kl_in_reward": False},
        "actor_rollout_ref": {
            "actor": {"use_kl_loss": True, "kl_loss_coef": 0.001, "optim": {"lr": 1e-6}},
            "rollout": {"n": 4, "val_kwargs": {"n": 1}},
        },
        "critic": {"optim": {"lr": 1e-5}},
        "trainer": {"experiment_name": "gsm8k_grpo", "logger": ["console"], "test_freq": 2,
                    "default_local_dir": "checkpoints/${trainer.project_name}/${trainer.experiment_name}"},
    }
    config = OmegaConf.create(config)
    for key, value in changes.items():
        OmegaConf.update(config, key, value)
    return OmegaConf.to_container(config)


def make_run(run_dir: Path, overrides: list[str] | None = None, config: dict | None = None, steps: int = 4,
             kl: str = "actor/kl_loss", val_n: int = 1) -> Path:
    """A run directory: metrics.jsonl as the trainer logs it (validation at step 0 and every 2 steps) + .hydra/."""
    with Tracking("p", "e", [], run_dir) as tracking:
        tracking.log({f"val-core/openai/gsm8k/reward/mean@{val_n}": 0.1, "val-aux/response_length/mean": 50.0}, 0)
        for step in range(1, steps + 1):
            metrics = {"critic/score/mean": 0.1 * step, "critic/rewards/mean": 0.1 * step - 0.01, kl: 0.01 * step,
                       "response_length/mean": 40.0 + step, "actor/entropy": 1.0 / step, "timing_s/step": 2.0,
                       "actor/ppo_kl": float("nan") if step == 2 else 0.0}
            if step % 2 == 0:
                metrics[f"val-core/openai/gsm8k/reward/mean@{val_n}"] = 0.1 + 0.05 * step
            tracking.log(metrics, step)
    if overrides is not None:
        (run_dir / ".hydra").mkdir(exist_ok=True)
        OmegaConf.save(OmegaConf.create(overrides), run_dir / ".hydra" / "overrides.yaml")
    if config is not None:
        (run_dir / ".hydra").mkdir(exist_ok=True)
        OmegaConf.save(OmegaConf.create(config), run_dir / ".hydra" / "config.yaml")
    return run_dir


def plot_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rl_trainer.tools.plot", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def assert_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


@pytest.fixture
def two_runs(tmp_path):
    grpo = make_run(tmp_path / "outputs" / "10-00-00-grpo", ["algorithm.adv_estimator=grpo"],
                    base_config(**{"trainer.default_local_dir": "/ckpt/a"}))
    gae = make_run(tmp_path / "outputs" / "10-05-00-gae", ["algorithm.adv_estimator=gae"],
                   base_config(**{"algorithm.adv_estimator": "gae", "trainer.experiment_name": "gsm8k_gae",
                                  "trainer.default_local_dir": "/ckpt/b"}), kl="actor/reward_kl_penalty")
    return grpo, gae


def test_cli_draws_two_runs_into_a_png_in_the_current_directory(tmp_path, two_runs):
    proc = plot_cli(*map(str, two_runs), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "runs_comparison.png"
    assert proc.stdout == f"wrote {out.resolve()}\n"
    assert_png(out)


def test_one_run_defaults_to_its_own_plot_png_and_metrics_take_patterns(tmp_path, two_runs, capsys):
    run = two_runs[0]
    assert plot_runs(run) == run / "plot.png"
    assert_png(run / "plot.png")
    assert capsys.readouterr().err == ""  # every default panel had data
    out = plot_runs([run], metrics=["critic/*/mean", "actor/entropy"], out=tmp_path / "sub" / "x.png")
    assert_png(out)


def test_labels_are_the_differing_keys_shortened(tmp_path, two_runs):
    # experiment_name and default_local_dir differ too, but adv_estimator alone tells the runs apart.
    assert run_labels(list(two_runs)) == ["adv_estimator=grpo", "adv_estimator=gae"]
    # lr is ambiguous (critic.optim.lr), n too (val_kwargs.n): the fewest last components that are not.
    lr = make_run(tmp_path / "lr", config=base_config(**{"actor_rollout_ref.actor.optim.lr": 3e-6,
                                                         "actor_rollout_ref.rollout.n": 8}))
    assert run_labels([two_runs[0], lr]) == ["actor.optim.lr=1e-06, rollout.n=4", "actor.optim.lr=3e-06, rollout.n=8"]
    assert short_keys(["a.b.lr", "b.lr"], ["a.b.lr", "b.lr", "c.lr"]) == {"a.b.lr": "a.b.lr", "b.lr": "b.lr"}


def test_labels_fall_back_to_overrides_names_and_directory_names(tmp_path):
    default = make_run(tmp_path / "default", overrides=[])
    gae = make_run(tmp_path / "gae", overrides=["algorithm.adv_estimator=gae", "trainer.logger=[console,wandb]"])
    named = make_run(tmp_path / "named", overrides=["trainer.experiment_name=mine"])
    bare = make_run(tmp_path / "bare")
    assert run_labels([default, gae]) == ["adv_estimator=(default)", "adv_estimator=gae"]  # no config.yaml
    assert run_labels([default, named]) == ["experiment_name=(default)", "experiment_name=mine"]
    assert run_labels([default, bare]) == ["default", "bare"]  # one run has no .hydra/
    assert run_labels([gae]) == ["gae"]
    twin = make_run(tmp_path / "twin", overrides=["algorithm.adv_estimator=gae"])
    assert run_labels([default, twin, gae]) == [  # gae and twin differ only in an ignored key
        "adv_estimator=(default) (default)", "adv_estimator=gae (twin)", "adv_estimator=gae (gae)"]
    same = [make_run(tmp_path / name, config=base_config()) for name in ("seed-a", "seed-b")]
    assert run_labels(same) == ["seed-a", "seed-b"]


def test_a_sweep_directory_stands_for_its_runs_in_natural_order(tmp_path):
    sweep = tmp_path / "multirun" / "2026-11-24" / "10-00-00"
    for num, estimator in ((0, "grpo"), (1, "gae"), (10, "rloo")):
        make_run(sweep / f"{num}-algorithm.adv_estimator={estimator}", [f"algorithm.adv_estimator={estimator}"],
                 base_config(**{"algorithm.adv_estimator": estimator}), steps=2)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    (sweep / "not-a-run").mkdir()
    runs = expand_run_dirs([sweep])
    assert [run.name.split("-")[0] for run in runs] == ["0", "1", "10"]
    assert expand_run_dirs([runs[1] / "metrics.jsonl", runs[1], sweep]) == [runs[1], runs[0], runs[2]]

    assert plot_runs([sweep], metrics=["critic/score/mean"]) == sweep / "plot.png"  # one argument: its plot.png
    assert_png(sweep / "plot.png")


def test_default_panels_take_the_first_candidate_any_run_logged(tmp_path, two_runs):
    series = [load_series(run) for run in two_runs]
    available = {key for run in series for key in run}
    chosen, notes = select_metrics(available)
    assert chosen == ["critic/score/mean", "val-core/openai/gsm8k/reward/mean@1", "response_length/mean",
                      "actor/kl_loss", "actor/reward_kl_penalty", "actor/entropy", "timing_s/step"]
    assert notes == []
    # Each default panel falls back through its candidates; validation: one panel per matching metric.
    chosen, notes = select_metrics({"critic/rewards/mean", "actor/ppo_kl", "actor/reward_kl_penalty",
                                    "val-core/a/reward/mean@1", "val-core/b/reward/mean@4", "perf/time_per_step"})
    assert chosen == ["critic/rewards/mean", "val-core/a/reward/mean@1", "val-core/b/reward/mean@4",
                      "actor/reward_kl_penalty", "perf/time_per_step"]
    assert [note.split(":")[0] for note in notes] == ["no response length panel", "no entropy panel"]
    # KL as a loss in one run and in the reward in another: both are drawn, and the PPO KL is not.
    chosen, _ = select_metrics({"actor/kl_loss", "actor/reward_kl_penalty", "actor/ppo_kl"})
    assert chosen == ["actor/kl_loss", "actor/reward_kl_penalty"]
    # Explicit names and patterns, in the order given, each metric once.
    assert select_metrics(available, ["actor/entropy", "critic/*/mean", "critic/score/mean"])[0] == [
        "actor/entropy", "critic/rewards/mean", "critic/score/mean"]
    with pytest.raises(UserError, match=r"no run logged any metric of the default panels.*--metrics.*custom/x"):
        select_metrics({"custom/x"})


def test_series_keep_only_the_steps_that_logged_each_metric(two_runs):
    series = load_series(two_runs[0])
    steps, values = series["val-core/openai/gsm8k/reward/mean@1"]
    assert steps == [0, 2, 4] and values == pytest.approx([0.1, 0.2, 0.3])
    assert series["critic/score/mean"][0] == [1, 2, 3, 4]
    assert math.isnan(series["actor/ppo_kl"][1][1])


@pytest.mark.parametrize("case", ["no_metrics_file", "empty_metrics_file", "unknown_metric", "not_png"])
def test_bad_input_is_one_line_naming_the_path_exit_2(tmp_path, two_runs, case):
    run = two_runs[0]
    if case == "no_metrics_file":
        (tmp_path / "typo").mkdir()
        args, expected = [str(tmp_path / "typo")], [f"{tmp_path / 'typo' / 'metrics.jsonl'} not found", "sweep"]
    elif case == "empty_metrics_file":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "metrics.jsonl").write_text("")
        args, expected = [str(run), str(tmp_path / "empty")], [f"{tmp_path / 'empty' / 'metrics.jsonl'} holds no"]
    elif case == "unknown_metric":
        args = [str(run), "--metrics", "actor/entropy", "actor/nope*"]
        expected = ["--metrics 'actor/nope*': no run logged such a metric", "available: actor/entropy"]
    else:
        args, expected = [str(run), "--out", str(tmp_path / "plot.pdf")], [f"--out {tmp_path / 'plot.pdf'}", ".png"]
    proc = plot_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    for text in expected:
        assert text in proc.stderr
    assert proc.stdout == "" and not list(tmp_path.rglob("*.png"))
