# Two commands do all the set-up on a fresh machine:
#   make demo   -- creates .venv, installs, runs the demo on the embedded default
#   make test   -- creates .venv, installs, runs the test suite (what CI runs)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-0.3
# the CPU wheel of torch; a bare "torch" requirement would pull a multi-GB CUDA build
TORCH ?= torch==2.13.0

.PHONY: demo test test-all bench proto clean

$(STAMP): pyproject.toml setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev,gpu]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/watchdog-d demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" --durations=30 tests integration

test-all: $(STAMP)
	$(BIN)/python -m pytest -q tests integration

bench: $(STAMP)
	$(BIN)/python integration/bench_beacon.py
	$(BIN)/python integration/bench_detect.py
	$(BIN)/python integration/bench_restart.py
	$(BIN)/python integration/bench_stall.py

proto: $(STAMP)
	$(BIN)/python -m watchdog_d.proto.gen

clean:
	rm -rf $(VENV) .pytest_cache
