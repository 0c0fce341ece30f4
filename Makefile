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

serve: install model
	$(PY) -m scripts.serve

test: install model
	$(PY) -m pytest tests

test-unit: install
	$(PY) -m pytest tests/unit

clean:
	rm -rf build
