# One-command entry points (see README). `make test` is what CI runs.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test test-fast test-two-party lint demo bench flwr-local

setup: $(VENV)/.installed

TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

# libsodium (PSI), SoftHSM2 (a PKCS#11 token for the keyring tests) and Chromium (the console's browser tests,
# driven by Playwright without a browser download) come from the system: installed with apt-get when missing and
# we are root.
# torch is installed first, CPU build: from local wheels if any (torch alone, no network; its own
# dependencies then come from the configured indexes), else from
# PyTorch's CPU index (the public index's Linux wheel is the CUDA build, with ~3 GB of CUDA
# packages). The project install then finds torch satisfied and leaves it.
$(VENV)/.installed: pyproject.toml
	@$(PY) -c "import ctypes.util, sys; sys.exit(0 if ctypes.util.find_library('sodium') else 1)" || \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "libsodium missing: installing libsodium23 with apt-get"; \
			apt-get update -qq && apt-get install -y -qq libsodium23 >/dev/null || exit 1; \
		else \
			echo "libsodium (>= 1.0.18) is missing: install it with your package manager" \
			     "(Debian/Ubuntu: sudo apt-get install libsodium23; macOS: brew install libsodium), then rerun make setup"; \
			exit 1; \
		fi
	@{ [ -f /usr/lib/softhsm/libsofthsm2.so ] || [ -f /usr/lib/$$(uname -m)-linux-gnu/softhsm/libsofthsm2.so ] || \
	   [ -f /usr/local/lib/softhsm/libsofthsm2.so ] || [ -f /opt/homebrew/lib/softhsm/libsofthsm2.so ]; } && \
		command -v softhsm2-util >/dev/null || \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "SoftHSM2 missing: installing softhsm2 with apt-get"; \
			apt-get update -qq && apt-get install -y -qq softhsm2 >/dev/null || exit 1; \
		else \
			echo "SoftHSM2 (the PKCS#11 token the keyring tests use) is missing: install it with your package manager" \
			     "(Debian/Ubuntu: sudo apt-get install softhsm2; macOS: brew install softhsm), then rerun make setup"; \
			exit 1; \
		fi
	@{ command -v chromium >/dev/null || [ -x /usr/bin/chromium ]; } || \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "Chromium missing (the console's browser tests drive it): installing chromium with apt-get"; \
			apt-get update -qq && apt-get install -y -qq chromium >/dev/null || exit 1; \
		else \
			echo "Chromium (the console's browser tests drive it) is missing: install it with your package manager" \
			     "(Debian: sudo apt-get install chromium); until then those tests are skipped"; \
		fi
	$(PY) -m venv $(VENV)
	{ $(BIN)/pip install -q --no-index --no-deps torch==$(TORCH_VERSION) 2>/dev/null && \
	  $(BIN)/pip install -q torch==$(TORCH_VERSION); } || \
		$(BIN)/pip install -q --retries 2 --timeout 30 --index-url $(TORCH_CPU_INDEX) torch==$(TORCH_VERSION)
	@$(BIN)/python -c "import sys, torch; cuda = torch.version.cuda; \
		print('torch', torch.__version__, 'CPU build' if cuda is None else f'WARNING: CUDA {cuda} build installed (large, not needed): ' \
		      'reinstall with: $(BIN)/pip install --force-reinstall --index-url $(TORCH_CPU_INDEX) torch==$(TORCH_VERSION)', file=sys.stderr)"
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# The README's test command (CI runs it): architecture and style checks, then the whole suite.
# Test files run in parallel, one worker per core; a file's tests stay on one worker, so a
# module's shared federation or browser is started once (see pyproject's pytest-xdist note).
test: lint
	$(BIN)/python -m pytest -n auto --dist loadfile --durations=20

# Layers and cycles (import-linter), lint and format (ruff), types (mypy; privacy/ strict).
lint: setup
	$(BIN)/lint-imports
	$(BIN)/ruff check fedcustomer tests benchmarks
	$(BIN)/ruff format --check fedcustomer tests benchmarks
	$(BIN)/mypy

# The deployed two-organisation vertical jobs (coordinator restart, a killed party, the joint model above the
# bank's own at 20,000 customers, the TWO-PARTY.md walkthrough verbatim): real SuperLink/SuperNodes on 127.0.0.1, tens of minutes, so outside the default suite.
test-two-party: setup
	$(BIN)/python -m pytest -m two_party_long tests/deploy

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

demo: setup
	$(BIN)/fedcustomer demo

bench: setup
	$(BIN)/python benchmarks/run_all.py

# The Flower app in local simulation, in this environment (no dependency download), stopping the
# local SuperLink afterwards. Extra options: make flwr-local FLWR_ARGS='--run-config "epsilon=1.0"'
FLWR_ARGS ?=
flwr-local: setup
	$(BIN)/python -m fedcustomer.deploy.flwr_local --federation-config "num-supernodes=3" --stream $(FLWR_ARGS)
