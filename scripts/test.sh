#!/usr/bin/env bash
# Set up (see setup.sh) and run the test suite: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# Two test processes (pytest-xdist), each taking the next test when it is free: a CLI test spends most of its start-up
# (Ray, the workers' imports, the model load) on one core, so two tests side by side use both cores of a 2-core CI
# machine. RL_TRAINER_TEST_WORKERS=0: one process, in file order.
exec "${RL_TRAINER_VENV:-.venv}/bin/python" -m pytest -n "${RL_TRAINER_TEST_WORKERS:-2}" --dist worksteal "$@"
