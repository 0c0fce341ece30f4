#!/usr/bin/env bash
# Triton's perf_analyzer against a running vllm_model: decoupled, gRPC streaming, with the inputs
# vllm_backend's clients send (text_input, stream, sampling_parameters), then with a prompt_embeds
# tensor instead of text. Checks README's claim that vllm_backend's tools work unchanged.
#   perf_analyzer.sh [GRPC_URL] [HIDDEN_SIZE]      (default localhost:8001, 2048 = Llama-3.2-1B)
# Env: OUT (results dir, default results/perf-analyzer), PA_CONCURRENCY (default 1:4:*2 ... see below),
#      PA_WHEEL (a tritonclient-2.51.0 wheel), TRITON_LIBS (a dir with libb64 and libcudart 12).
#
# Where perf_analyzer comes from: the tritonclient 2.51.0 wheel on PyPI carries the binary
# (tritonclient-2.51.0.data/data/bin/perf_analyzer). 2.52.0-2.60.0 carry one built for glibc 2.38;
# 2.61.0 and later none (they point at a `perf-analyzer` package whose only PyPI release, 0.1.0, is an
# empty placeholder). The 2.51 binary needs glibc >= 2.34 (the CPU box has 2.36: it runs there) plus libb64.so.0d and
# libcudart.so.12, both shipped with tritonserver's libraries (nvidia-pytriton's nvidia_pytriton.libs,
# /tmp/tri/tritonserver/lib on the GPU machine) under hashed names: linked here under their sonames.
set -euo pipefail
URL=${1:-localhost:8001}
HIDDEN=${2:-2048}
OUT=${OUT:-results/perf-analyzer}
WORK=${PA_WORK:-build/perf_analyzer}
PY=${PY:-$(command -v python3)}
mkdir -p "$OUT" "$WORK/lib"

wheel=${PA_WHEEL:-$(ls /tmp/extra/tritonclient-2.51.0-*.whl "$WORK"/tritonclient-2.51.0-*.whl 2>/dev/null | head -1 || true)}
if [[ -z "$wheel" ]]; then
  "$PY" -m pip download -q --no-deps -d "$WORK" tritonclient==2.51.0
  wheel=$(ls "$WORK"/tritonclient-2.51.0-*.whl | head -1)
fi
PA="$WORK/bin/perf_analyzer"
if [[ ! -x "$PA" ]]; then
  "$PY" - "$wheel" "$PA" <<'X'
import os, shutil, sys, zipfile
wheel, target = sys.argv[1], sys.argv[2]
os.makedirs(os.path.dirname(target), exist_ok=True)
with zipfile.ZipFile(wheel) as z, z.open("tritonclient-2.51.0.data/data/bin/perf_analyzer") as src, open(target, "wb") as dst:
    shutil.copyfileobj(src, dst)
os.chmod(target, 0o755)
X
fi
libs=${TRITON_LIBS:-}
[[ -z "$libs" && -d /tmp/tri/tritonserver/lib ]] && libs=/tmp/tri/tritonserver/lib
[[ -z "$libs" ]] && libs=$("$PY" -c "import pathlib, pytriton; print(pathlib.Path(pytriton.__file__).parents[1] / 'nvidia_pytriton.libs')")
ln -sf "$(ls "$libs"/libb64*.so* | head -1)" "$WORK/lib/libb64.so.0d"
ln -sf "$(ls "$libs"/libcudart*.so.12* | head -1)" "$WORK/lib/libcudart.so.12"
export LD_LIBRARY_PATH="$PWD/$WORK/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$PA" --version 2>&1 | tee "$OUT/perf-analyzer-version.txt"

# Inputs as vllm_backend's own examples send them; 64 new tokens each, greedy, EOS ignored.
SAMPLING='{\"max_tokens\": 64, \"ignore_eos\": true, \"temperature\": 0}'
cat > "$OUT/input-text.json" <<EOF
{"data": [{"text_input": ["What is the capital of France? Answer in one sentence."],
           "stream": [true], "sampling_parameters": ["$SAMPLING"]}]}
EOF
"$PY" - "$OUT/input-embeds.json" "$HIDDEN" "$SAMPLING" <<'X'
import json, random, sys
path, hidden, sampling = sys.argv[1], int(sys.argv[2]), sys.argv[3].replace('\\"', '"')
rows = 32
random.seed(0)
content = [round(random.uniform(-0.02, 0.02), 5) for _ in range(rows * hidden)]
data = {"prompt_embeds": {"content": content, "shape": [rows, hidden]}, "stream": [True], "sampling_parameters": [sampling]}
json.dump({"data": [data]}, open(path, "w"))
X

# Decoupled model: gRPC streaming is the only mode perf_analyzer supports for it.
for input in text embeds; do
  echo "== perf_analyzer, $input input" | tee -a "$OUT/perf-analyzer.log"
  "$PA" -m vllm_model -u "$URL" -i grpc --streaming --input-data "$OUT/input-$input.json" \
    --concurrency-range "${PA_CONCURRENCY:-1:4:2}" --measurement-interval "${PA_INTERVAL_MS:-10000}" \
    --stability-percentage 50 --max-trials 4 -f "$OUT/perf-analyzer-$input.csv" 2>&1 | tee -a "$OUT/perf-analyzer.log"
done
