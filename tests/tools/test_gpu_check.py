"""scripts/gpu_check.sh: its CPU dry run, on a Python where Ray, Hydra and omegaconf cannot be imported (the GPU
box has only torch and transformers; omegaconf comes along from --pack)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import REPO


def gpu_check(tmp_path, *args: str, block=("ray", "hydra", "omegaconf")) -> subprocess.CompletedProcess:
    blocked = tmp_path / "blocked"
    for module in block:
        (blocked / module).mkdir(parents=True, exist_ok=True)
        (blocked / module / "__init__.py").write_text(f"raise ImportError('{module} is not installed here')\n")
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(blocked), "GPU_CHECK_DEPS": str(tmp_path / "deps")}
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_without_omegaconf_or_a_pack_it_says_how_to_bring_it(tmp_path):
    proc = gpu_check(tmp_path, "--dry-run")
    assert proc.returncode == 2
    assert "cannot import omegaconf" in proc.stderr and "--pack" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_the_dry_run_passes_its_checks_with_omegaconf_packed_along(tmp_path):
    pack = gpu_check(tmp_path, "--pack", block=())
    assert pack.returncode == 0, pack.stderr
    assert (tmp_path / "deps" / "omegaconf" / "__init__.py").exists()
    proc = gpu_check(tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    checks = [line for line in proc.stdout.splitlines() if line.startswith("check ")]
    assert len(checks) == 3 and all(line.startswith("check ok") for line in checks), proc.stdout
    assert "step 2:" in proc.stdout and "tokens/s" in proc.stdout
