#!/usr/bin/env bash
# Wheels the GPU machine's image may lack for this project's tests and frontend (cp312), beside
# the shared bundle (../shared/gpu/build_bundle.sh). Usage: build_extra_wheels.sh [OUT_DIR] [RAY_DIR]
#   OUT_DIR (default .gpu-bundle/p3): the extra wheels, tritonclient 2.51.0 (only for its perf_analyzer
#     binary: scripts/gpu/perf_analyzer.sh; never installed) and the first half of the Ray wheel;
#   RAY_DIR (default .gpu-bundle/p4): the second half. Ray (the `ray-multinode` layout, vLLM's Ray
#     executor) is one 74 MB wheel, over the 62 MB a device call carries: split in two, joined by
#     `device_run.sh setup-ray`. Each directory stays under 62 MB.
set -euo pipefail
OUT=${1:-.gpu-bundle/p3}
RAY_DIR=${2:-.gpu-bundle/p4}
RAY_VERSION=${RAY_VERSION:-2.55.1}  # vLLM 0.24 needs ray >= 2.48 (Compiled Graph, ray.dag)
mkdir -p "$OUT" "$RAY_DIR"
DL=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
"${DL[@]}" -d "$OUT" \
  pytest pluggy iniconfig pytest-timeout prometheus_client httpx httpcore h11 anyio safetensors psutil packaging \
  jmespath `# vLLM 0.24 OpenAI server (the benchmark anchor) imports it` \
  msgpack click `# Ray's own dependencies the image may lack` \
  orjson==3.13.0 ml_dtypes==0.5.4 `# the frontend: SSE encoding, bf16 payloads to Triton` \
  uvloop==0.23.0 httptools==0.9.0 `# uvicorn[standard], as pip install vllm brings: both HTTP servers parse with them` \
  py-spy==0.4.3 `# benchmarks/profile_stub.py (device_run.sh profile)`
# The last tritonclient wheel with perf_analyzer inside (manylinux1 tag; the binary needs glibc 2.34).
python3 -m pip download -q --no-deps -d "$OUT" tritonclient==2.51.0
W=$(mktemp -d)
"${DL[@]}" -d "$W" "ray==$RAY_VERSION"
wheel=$(basename "$(ls "$W"/ray-*.whl)")
half=$(( ($(stat -c %s "$W/$wheel") + 1) / 2 ))
(cd "$W" && split -b "$half" -d -a 2 "$wheel" "$wheel.part")
mv "$W/$wheel.part00" "$OUT/"
mv "$W/$wheel.part01" "$RAY_DIR/"
rm -rf "$W"
du -sh "$OUT" "$RAY_DIR"
