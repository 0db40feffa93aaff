#!/usr/bin/env bash
# Set up rl_trainer in a virtual environment: bash scripts/setup.sh [EXTRAS]   (e.g. "test" or "test,vllm")
#
# - Creates $RL_TRAINER_VENV (default: .venv in the repo) unless it exists.
# - torch first: if the machine's Python already has torch (a GPU box with its CUDA build), the venv
#   sees it (--system-site-packages) and it is never replaced. Otherwise torch==2.13.0 is installed
#   on its own, before anything that depends on it, so pip takes the local CPU wheel instead of
#   resolving a CUDA build with GBs of nvidia packages.
# - Then the package, editable, with the pins of requirements/constraints.txt plus the installed torch, by uv
#   (pinned in the constraints, installed into the venv by pip): on a 2-core machine it resolves and installs the
#   ~90 packages in about 30 s, pip in about 90 s (37 s of it resolving). uv does not see the packages of a
#   --system-site-packages venv, so a venv that reuses the machine's torch installs with pip, which keeps that
#   torch in view.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${RL_TRAINER_VENV:-.venv}
EXTRAS=${1:-}
TORCH_CPU_VERSION=2.13.0

if [ ! -x "$VENV/bin/python" ]; then
    if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
        echo "setup: reusing the torch of $PYTHON ($("$PYTHON" -c 'import torch; print(torch.__version__)'))"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    else
        "$PYTHON" -m venv "$VENV"
    fi
fi
PY="$VENV/bin/python"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "setup: installing torch==$TORCH_CPU_VERSION"
    "$PY" -m pip install -q "torch==$TORCH_CPU_VERSION"
fi
torch_pin=$(mktemp)
trap 'rm -f "$torch_pin"' EXIT
"$PY" -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" >"$torch_pin"
spec="."
[ -n "$EXTRAS" ] && spec=".[$EXTRAS]"
echo "setup: installing rl_trainer$([ -n "$EXTRAS" ] && echo "[$EXTRAS]") into $VENV ($(cat "$torch_pin"))"
if grep -qs "include-system-site-packages *= *true" "$VENV/pyvenv.cfg"; then
    "$PY" -m pip install -q -c requirements/constraints.txt -c "$torch_pin" -e "$spec"
else
    "$PY" -m pip install -q -c requirements/constraints.txt uv
    # --compile-bytecode: as pip does; without .pyc files every test process would compile what it imports.
    "$PY" -m uv pip install -q --python "$PY" --compile-bytecode -c requirements/constraints.txt -c "$torch_pin" \
        -e "$spec"
fi
