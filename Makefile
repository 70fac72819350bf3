# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install test-deps migrate clean bench fuzz

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

## make run: install, migrate, seed the demo tenant, start web + worker + beat (Ctrl-C stops all)
run: $(STAMP)
	@scripts/run

## make test: ruff, the import layers (lint-imports: the contracts in pyproject.toml) and the
## whole suite on TEST_WORKERS processes (installs the IdP, Chromium and nginx the end-to-end
## tests use); tests/xdist_env.py gives each worker its own Redis database
TEST_WORKERS ?= 2
test: $(STAMP) test-deps
	$(BIN)/ruff check .
	PYTHONPATH=$(CURDIR) $(BIN)/lint-imports
	PYTHONPATH=$(CURDIR) $(BIN)/pytest -p tests.xdist_env -n $(TEST_WORKERS)

test-deps:
	@scripts/test-deps

## make fuzz: the property tests and the API fuzzing with many more examples than `make test`
fuzz: $(STAMP) test-deps
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest -q -p no:cacheprovider tests/contract/test_properties.py
	FUZZ_EXAMPLES=200 $(BIN)/pytest -q -p no:cacheprovider tests/contract/test_api_fuzz.py

## make bench: figures measured on this machine (gateway poll throughput, 10k long polls,
## compile + sign, registry write → new ETag, decision-log ingestion); BENCH_QUICK=1 for a smoke run. Installs wrk and
## nginx if missing; starts and stops its own servers; writes var/bench/results.json.
bench: $(STAMP)
	@scripts/bench-deps
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check .
	PYTHONPATH=$(CURDIR) $(BIN)/lint-imports

clean:
	rm -rf var .pytest_cache .ruff_cache .import_linter_cache .grimp_cache test-artifacts
