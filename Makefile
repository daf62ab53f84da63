# One-command entry points (see README). `make test` is what CI runs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test test-fast demo bench

setup: $(VENV)/.installed

# torch is pinned first so pip takes the CPU wheel instead of pulling CUDA packages.
$(VENV)/.installed: pyproject.toml
	@$(PY) -c "import ctypes.util, sys; sys.exit(0 if ctypes.util.find_library('sodium') else 1)" || \
		{ echo "libsodium (>= 1.0.18) is missing: install it, e.g. 'apt-get install libsodium23'"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

demo: setup
	$(BIN)/fedcustomer demo

bench: setup
	$(BIN)/python benchmarks/run_all.py
