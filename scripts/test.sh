#!/usr/bin/env bash
# Set up (see setup.sh) and run the test suite: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec "${RL_TRAINER_VENV:-.venv}/bin/python" -m pytest "$@"
