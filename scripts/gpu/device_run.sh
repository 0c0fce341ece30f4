#!/usr/bin/env bash
# Runs ON the lent GPU machine, from the repository root, after the shared bundle's parts were
# copied into /tmp/stage and this project's extra wheels into /tmp/extra (see docs/gpu.md).
#   device_run.sh setup   -> /tmp/venv (shared device_setup.sh) + extra wheels + the test models
#   device_run.sh tests   -> pytest -m gpu on the tiny model and a Llama-3.2-1B-shaped model
#   device_run.sh bench   -> benchmarks/bench_serving.py for the 1B and 8B shapes (dummy weights)
#   device_run.sh layouts NAME...  -> per GPU layout of deploy/layouts (gpu-1 tp-2 replica-per-gpu dp-2
#                            ray-multinode): the GPU tests on the 1B shape with CUDA graphs on, then a bench
#                            cell set; each layout's files land in $OUT/layouts/NAME/ as they finish
#   device_run.sh setup-ray -> joins and installs the Ray wheel (build_extra_wheels.sh's two parts in /tmp/extra)
#   device_run.sh perf    -> tritonserver on the 1B shape (gpu-1 layout), then perf_analyzer (gRPC streaming) on it
#   device_run.sh profile -> benchmarks/profile_stub.py on the 1B shape (py-spy on the stub: all threads, then the GIL holder)
#   device_run.sh ab NAME JSON -> the Triton path alone with config.pbtxt overrides JSON (e.g. a GIL switch interval)
# Logs and results go to $OUT (default results/gpu-run).
set -uo pipefail
OUT=${OUT:-results/gpu-run}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # absolute: the layout runs work in a copy of the checkout
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
              safetensors:safetensors psutil:psutil packaging:packaging jmespath:jmespath \
              orjson:orjson ml_dtypes:ml_dtypes uvloop:uvloop httptools:httptools; do
    module=${pair%%:*}; wheel=${pair##*:}
    $PY -c "import $module" 2>/dev/null || "$SYSTEM_PYTHON" -m pip install -q --no-index --no-deps \
      --target /tmp/venv/lib/python3.12/site-packages /tmp/extra/${wheel}-*.whl
  done
  # py-spy (benchmarks/profile_stub.py): a static binary in a wheel; its own prefix, linked onto PATH.
  if ls /tmp/extra/py_spy-*.whl > /dev/null 2>&1; then
    "$SYSTEM_PYTHON" -m pip install -q --no-index --no-deps --target /tmp/pyspy /tmp/extra/py_spy-*.whl \
      && ln -sf /tmp/pyspy/bin/py-spy /tmp/venv/bin/py-spy
  fi
  $PY -m scripts.make_shape_model "$M1B" --shape llama-3.2-1b
  if [[ ${SETUP_LEAN:-0} != 1 ]]; then  # SETUP_LEAN=1: only the dummy-weight 1B shape (bench, perf)
    $PY -m scripts.make_tiny_model build/tiny-model
    $PY -m scripts.make_shape_model "$M1B_WEIGHTS" --shape llama-3.2-1b --weights
    $PY -m scripts.make_shape_model "$M8B" --shape llama-3.1-8b
  fi
  nvidia-smi > "$OUT/nvidia-smi.txt"
  $PY -c "import vllm, torch, transformers, numpy; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'numpy', numpy.__version__)" > "$OUT/versions.txt"
}

tests() {
  GPU_TEST_MODELS="tiny=build/tiny-model:float32,llama-3.2-1b=$M1B_WEIGHTS:bfloat16" \
    timeout -s INT -k 30 "${TESTS_TIMEOUT:-420}" $PY -m pytest -m gpu tests/gpu -v -p no:cacheprovider \
    --junitxml="$OUT/gpu-tests.xml" 2>&1 | tee "$OUT/gpu-tests.log"
}

# Engine arguments of the single-GPU bench, profile and ab runs (dummy weights, CUDA graphs on; the model is given apart).
BENCH_ENGINE_ARGS='{"load_format": "dummy", "dtype": "bfloat16", "gpu_memory_utilization": 0.4, "enforce_eager": false, "max_model_len": 8192}'

profile() {
  local dir=$OUT/profile conc=${PROFILE_CONCURRENCY:-64}
  mkdir -p "$dir"
  timeout -s INT -k 30 "${PROFILE_TIMEOUT:-300}" $PY -m benchmarks.profile_stub --name "gpu-1b-128rows-c$conc" \
    --model "$M1B" --engine-args "$BENCH_ENGINE_ARGS" --prompt-len 128 --concurrency "$conc" --output-tokens 128 \
    --requests "${PROFILE_REQUESTS:-3000}" --duration "${PROFILE_SECONDS:-15}" --gil-too --out-dir "$dir" 2>&1 | tee "$dir/profile.log"
}

ab() {
  local name=$1 parameters=$2
  timeout -s INT -k 30 "${AB_TIMEOUT:-240}" $PY -m benchmarks.bench_serving --name "ab-$name" --out-dir "$OUT/ab" \
    --model "$M1B" --hidden-size 2048 --python "$PY" --engine-args "$BENCH_ENGINE_ARGS" --paths triton \
    --triton-parameters "$parameters" --prompt-lens "${AB_LENS:-128}" --concurrency "${AB_CONCURRENCY:-32,64}" \
    --output-tokens 128 --repeats "${AB_REPEATS:-2}" --workdir "$OUT/ab-logs-$name" 2>&1 | tee "$OUT/ab-$name.log"
}

bench() {
  local name=$1 model=$2 hidden=$3
  timeout -s INT -k 30 "${BENCH_TIMEOUT:-280}" $PY -m benchmarks.bench_serving --name "$name" --out-dir "$OUT/bench" \
    --model "$model" --hidden-size "$hidden" --python "$PY" \
    --engine-args "$BENCH_ENGINE_ARGS" \
    --prompt-lens ${BENCH_LENS:-128,1024,4096} --concurrency ${BENCH_CONCURRENCY:-1,16} --output-tokens 128 --repeats ${BENCH_REPEATS:-3} \
    --workdir "$OUT/bench-logs-$name" 2>&1 | tee "$OUT/bench-$name.log"
}

setup_ray() {
  local part wheel
  for part in /tmp/extra/ray-*.whl.part00; do
    wheel=${part%.part00}
    cat "$wheel".part* > "$wheel"
  done
  "$SYSTEM_PYTHON" -m pip install -q --no-index --no-deps --target /tmp/venv/lib/python3.12/site-packages /tmp/extra/ray-*.whl
  for module in msgpack click; do
    $PY -c "import $module" 2>/dev/null || "$SYSTEM_PYTHON" -m pip install -q --no-index --no-deps \
      --target /tmp/venv/lib/python3.12/site-packages /tmp/extra/${module}-*.whl
  done
  $PY -c "import ray, ray.dag, ray.experimental.compiled_dag_ref; print('ray', ray.__version__)"
}

# Engine-argument overrides of a layout on the lent 2-GPU machine.
layout_overrides() {
  case $1 in
    ray-multinode) echo '{"tensor_parallel_size": 2, "pipeline_parallel_size": 1}' ;;  # a one-node Ray cluster
    *) echo '{}' ;;
  esac
}

ray_cli() { $PY -c "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()" "$@"; }

ray_up() {
  ray_cli start --head --port=6379 --num-gpus="$(nvidia-smi -L | wc -l)" --disable-usage-stats \
    --include-dashboard=false > "$1/ray-start.log" 2>&1 || return 1
  export RAY_ADDRESS=127.0.0.1:6379  # vLLM's ray.init() joins this cluster instead of starting its own
  ray_cli status > "$1/ray-status.txt" 2>&1
}

ray_down() {
  ray_cli stop --force > /dev/null 2>&1
  unset RAY_ADDRESS
}

# One layout: a copy of the checkout whose model_repository/ is the layout's (scripts/gpu/make_layout.py),
# so tests/gpu and benchmarks/bench_serving.py run on it unchanged.
layout() {
  local name=$1 dir=$OUT/layouts/$1 tree=/tmp/layout-$1 paths=vllm,triton,frontend extra=()
  mkdir -p "$dir"
  rm -rf "$tree"
  $PY -m scripts.gpu.make_layout "$name" --checkout "$tree" --engine-args "$(layout_overrides "$name")" \
    > "$dir/make-layout.log" 2>&1 || { echo "layout $name: make_layout failed (see $dir)"; return 1; }
  cp "$tree/model_repository/vllm_model/config.pbtxt" "$tree/model_repository/vllm_model/1/model.json" "$dir/"
  case $name in
    # vLLM's own server has no one-engine-per-GPU-process form; its data-parallel run is dp-2's vllm path.
    replica-per-gpu) paths=triton,frontend ;;
    # The one Ray cluster holds every GPU for one engine: one server at a time.
    ray-multinode) extra=(--sequential); ray_up "$dir" || { echo "layout $name: ray start failed"; return 1; } ;;
  esac
  (
    cd "$tree"
    # Equality oracle and the rest of tests/gpu, with CUDA graphs on (the fixture's default is eager).
    # They need real (random) weights: the 1B shape only; LAYOUT_TESTS=0 skips them (e.g. for 8B cells).
    if [[ ${LAYOUT_TESTS:-1} == 1 ]]; then
      GPU_TEST_MODELS="llama-3.2-1b=$M1B_WEIGHTS:bfloat16" GPU_ENGINE_ARGS='{"enforce_eager": false}' \
        timeout -s INT -k 30 "${LAYOUT_TESTS_TIMEOUT:-220}" $PY -m pytest -m gpu tests/gpu -v -p no:cacheprovider \
        -k "${LAYOUT_TESTS_K:-}" --junitxml="$dir/gpu-tests.xml" 2>&1 | tee "$dir/gpu-tests.log"
    fi
    # LAYOUT_MODEL/LAYOUT_HIDDEN: e.g. /tmp/models/llama-3.1-8b and 4096 for the 8B shape (dummy weights).
    timeout -s INT -k 30 "${LAYOUT_BENCH_TIMEOUT:-330}" $PY -m benchmarks.bench_serving --name "layout-$name" --out-dir "$dir" \
      --model "${LAYOUT_MODEL:-$M1B}" --hidden-size "${LAYOUT_HIDDEN:-2048}" --python "$PY" \
      --engine-args '{"load_format": "dummy", "gpu_memory_utilization": 0.4, "max_model_len": 8192}' \
      --paths "${LAYOUT_PATHS:-$paths}" --prompt-lens "${LAYOUT_LENS:-128,2048}" \
      --concurrency "${LAYOUT_CONCURRENCY:-1,64}" --output-tokens 128 --repeats "${LAYOUT_REPEATS:-3}" \
      "${extra[@]}" --workdir "$dir/bench-logs" 2>&1 | tee "$dir/bench.log"
  )
  [[ $name == ray-multinode ]] && ray_down
  return 0
}

# perf_analyzer (gRPC streaming) against our model on the 1B shape, one GPU, CUDA graphs on.
perf() {
  local dir=$OUT/perf-analyzer repo=/tmp/perf-repo pid ready=0
  mkdir -p "$dir"
  rm -rf "$repo"
  $PY -m scripts.gpu.make_layout gpu-1 --repository "$repo" --engine-args \
    "{\"model\": \"$M1B\", \"load_format\": \"dummy\", \"gpu_memory_utilization\": 0.4, \"max_model_len\": 8192}" \
    > "$dir/make-layout.log" 2>&1 || return 1
  "$TRITONSERVER_HOME/bin/tritonserver" --model-repository="$repo" --backend-directory="$TRITONSERVER_HOME/backends" \
    --http-port=18000 --grpc-port=18001 --metrics-port=18002 > "$dir/tritonserver.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    $PY -c "import urllib.request; urllib.request.urlopen('http://localhost:18000/v2/models/vllm_model/ready', timeout=2)" \
      2>/dev/null && { ready=1; break; }
    sleep 3
  done
  if [[ $ready == 1 ]]; then
    OUT=$dir PY=$PY PA_CONCURRENCY=${PA_CONCURRENCY:-1:64:63} timeout "${PERF_TIMEOUT:-240}" \
      bash scripts/gpu/perf_analyzer.sh localhost:18001 2048
  else
    echo "tritonserver not ready in 300 s (see $dir/tritonserver.log)"
  fi
  kill -INT "$pid"; sleep 10; kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}

layouts() {
  local name
  [[ $# -gt 0 ]] || set -- gpu-1 tp-2 replica-per-gpu dp-2
  for name in "$@"; do
    echo "== layout $name ($(date -u +%H:%M:%S))"
    layout "$name"
  done
}

case "${1:-}" in
  setup) setup 2>&1 | tee "$OUT/setup.log" ;;
  tests) tests ;;
  bench) bench "${2:-gpu-llama-3.2-1b}" "${3:-$M1B}" "${4:-2048}" ;;
  layouts) shift; layouts "$@" ;;
  setup-ray) setup_ray 2>&1 | tee "$OUT/setup-ray.log" ;;
  perf) perf ;;
  profile) profile ;;
  ab) ab "$2" "$3" ;;
  *) echo "usage: $0 setup|tests|bench [name model hidden]|layouts [NAME...]|setup-ray|perf|profile|ab NAME JSON" >&2; exit 2 ;;
esac
