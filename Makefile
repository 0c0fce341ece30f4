# Two commands: `make serve` (Triton + the OpenAI-style frontend on the tiny model) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
TINY_MODEL := build/tiny-model

.PHONY: install model serve test test-unit test-gpu bench loadtest clean

install: $(VENV)/.installed
$(VENV)/.installed: requirements.txt scripts/install.sh
	bash scripts/install.sh $(VENV)

model: $(TINY_MODEL)/config.json
$(TINY_MODEL)/config.json: scripts/make_tiny_model.py | install
	$(PY) scripts/make_tiny_model.py $(TINY_MODEL)

# Binds 127.0.0.1; e.g. SERVE_ARGS="--host 0.0.0.0" opens the frontend (docs/security.md).
SERVE_ARGS ?=
serve: install model
	$(PY) -m scripts.serve $(SERVE_ARGS)

test: install model
	$(PY) -m pytest -m "not gpu" tests

test-unit: install
	$(PY) -m pytest tests/unit

# On a GPU machine prepared by scripts/gpu/device_run.sh setup (see docs/gpu.md).
test-gpu:
	bash scripts/gpu/device_run.sh tests

clean:
	rm -rf build

# Headless Locust run (servers started on free ports); results/loadtest/<timestamp>/. Knobs: see docs/loadtest.md.
LOADTEST_ARGS ?= --users 8 --spawn-rate 2 --run-time 60s --user-class TritonGrpcUser
loadtest: install model
	$(PY) -m loadtest.run $(LOADTEST_ARGS)

# vLLM's own server vs Triton gRPC vs the frontend; results/bench/$(BENCH_NAME).{json,md}. See docs/benchmark.md.
BENCH_NAME ?= local
BENCH_ARGS ?=
bench: install model
	$(PY) -m benchmarks.bench_serving --name $(BENCH_NAME) $(BENCH_ARGS)
