#!/usr/bin/env bash
# Runs ON the lent GPU machine, from the repository root, after the shared bundle's parts were
# copied into /tmp/stage and this project's extra wheels into /tmp/extra (see docs/gpu.md).
#   device_run.sh setup   -> /tmp/venv (shared device_setup.sh) + extra wheels + the test models
#   device_run.sh tests   -> pytest -m gpu on the tiny model and a Llama-3.2-1B-shaped model
#   device_run.sh bench   -> benchmarks/bench_serving.py for the 1B and 8B shapes (dummy weights)
# Logs and results go to $OUT (default results/gpu-run).
set -uo pipefail
OUT=${OUT:-results/gpu-run}
mkdir -p "$OUT"
SYSTEM_PYTHON=$(command -v python3)  # the image's Python, with pip (the venv has none)
export PATH=/tmp/venv/bin:$PATH VLLM_USE_FLASHINFER_SAMPLER=0 LANG=C.UTF-8 \
       LD_LIBRARY_PATH=/tmp/tri/tritonserver/lib TRITONSERVER_HOME=/tmp/tri/tritonserver
PY=/tmp/venv/bin/python3
M1B_WEIGHTS=/tmp/models/llama-3.2-1b-random
M1B=/tmp/models/llama-3.2-1b
M8B=/tmp/models/llama-3.1-8b

setup() {
  # device_setup.sh makes /tmp/venv with the image's python3: run it with the original PATH.
  PATH=$(dirname "$SYSTEM_PYTHON"):/usr/bin:/bin bash .gpu-bundle/device_setup.sh || return 1
  # Extra wheels only where the image and bundle lack the module (never replace theirs).
  for pair in pytest:pytest pluggy:pluggy iniconfig:iniconfig pytest_timeout:pytest_timeout \
              prometheus_client:prometheus_client httpx:httpx httpcore:httpcore h11:h11 anyio:anyio \
              safetensors:safetensors psutil:psutil packaging:packaging jmespath:jmespath; do
    module=${pair%%:*}; wheel=${pair##*:}
    $PY -c "import $module" 2>/dev/null || "$SYSTEM_PYTHON" -m pip install -q --no-index --no-deps \
      --target /tmp/venv/lib/python3.12/site-packages /tmp/extra/${wheel}-*.whl
  done
  $PY -m scripts.make_tiny_model build/tiny-model
  $PY -m scripts.make_shape_model "$M1B_WEIGHTS" --shape llama-3.2-1b --weights
  $PY -m scripts.make_shape_model "$M1B" --shape llama-3.2-1b
  $PY -m scripts.make_shape_model "$M8B" --shape llama-3.1-8b
  nvidia-smi > "$OUT/nvidia-smi.txt"
  $PY -c "import vllm, torch, transformers, numpy; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'numpy', numpy.__version__)" > "$OUT/versions.txt"
}

tests() {
  GPU_TEST_MODELS="tiny=build/tiny-model:float32,llama-3.2-1b=$M1B_WEIGHTS:bfloat16" \
    timeout "${TESTS_TIMEOUT:-420}" $PY -m pytest -m gpu tests/gpu -v -p no:cacheprovider \
    --junitxml="$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.log"
}

bench() {
  local name=$1 model=$2 hidden=$3
  timeout "${BENCH_TIMEOUT:-280}" $PY -m benchmarks.bench_serving --name "$name" --out-dir "$OUT/bench" \
    --model "$model" --hidden-size "$hidden" --python "$PY" \
    --engine-args '{"load_format": "dummy", "dtype": "bfloat16", "gpu_memory_utilization": 0.4, "enforce_eager": true, "max_model_len": 8192}' \
    --prompt-lens ${BENCH_LENS:-128,1024,4096} --concurrency ${BENCH_CONCURRENCY:-1,16} --output-tokens 128 --repeats 1 \
    --workdir "$OUT/bench-logs-$name" 2>&1 | tee "$OUT/bench-$name.log"
}

case "${1:-}" in
  setup) setup 2>&1 | tee "$OUT/setup.log" ;;
  tests) tests ;;
  bench) bench "${2:-gpu-llama-3.2-1b}" "${3:-$M1B}" "${4:-2048}" ;;
  *) echo "usage: $0 setup|tests|bench [name model hidden]" >&2; exit 2 ;;
esac
