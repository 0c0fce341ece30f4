#!/usr/bin/env bash
# Wheels the GPU machine's image may lack for this project's tests and frontend (cp312), beside
# the shared bundle (../shared/gpu/build_bundle.sh). Usage: build_extra_wheels.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-.gpu-bundle/p3}
mkdir -p "$OUT"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$OUT" \
  pytest pluggy iniconfig pytest-timeout prometheus_client httpx httpcore h11 anyio safetensors psutil packaging \
  jmespath  # vLLM 0.24 OpenAI server (the benchmark anchor) imports it
