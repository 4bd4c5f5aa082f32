# gridctl — build, run and test from a fresh machine (only Python 3.11 and Rust needed).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
CONFIG ?= config/demo.toml
export VIRTUAL_ENV := $(CURDIR)/$(VENV)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test test-all lint build bench clean
.DEFAULT_GOAL := run

$(VENV)/.deps: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt maturin \
		asyncua pymodbus textual pydantic pyserial pyserial-asyncio-fast uvloop msgpack prometheus-client \
		pytest pytest-asyncio hypothesis ruff mypy import-linter dlt645
	touch $@

# The extension is rebuilt whenever any Rust source changes.
$(VENV)/.built: $(VENV)/.deps Cargo.toml core_rs/Cargo.toml $(shell find core_rs/src -name '*.rs')
	$(VENV)/bin/maturin develop --release --quiet
	touch $@

build: $(VENV)/.built

run: build
	$(VENV)/bin/gridctl run --config $(CONFIG)

lint: build
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy controller drivers opcua_server hmi
	cargo fmt --all -- --check
	cargo clippy --quiet --all-targets -- -D warnings
	$(PY) -m mypy.stubtest controller._core_rs --ignore-disjoint-bases --allowlist .stubtest-allowlist

# Fast tier: what CI runs on every change (`slow` and `bench` markers off).
test: build lint
	cargo test --quiet
	$(PY) -m pytest -q -m 'not slow and not bench'

# Everything but benchmarks: adds the `slow` tier (SIGKILL loops, soak-style faults).
test-all: build lint
	cargo test --quiet
	$(PY) -m pytest -q -m 'not bench'

# Runs every bench/*.py one after another and writes BENCHMARKS.md (machine, command,
# output with its same-run baseline). Never a gate: a missed target is reported, not fatal.
# GRIDCTL_BENCH_QUICK=1 make bench: small sizes, to try it in a few minutes.
bench: build
	$(PY) bench/report.py

clean:
	rm -rf $(VENV) target var
