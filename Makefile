# taskq developer commands. `make run` and `make test` work from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LINT_PATHS := $(wildcard app tests bench)
# Extra prerequisites of `make test` contributed by mk/*.mk (e.g. schema downloads).
TEST_TOOLS :=
.DEFAULT_GOAL := help

-include mk/*.mk

.PHONY: run test lint typecheck pytest deps clean help

help:
	@echo "make run    - API + worker on 127.0.0.1:8080 (embedded PostgreSQL unless DATABASE_URL is set)"
	@echo "make test   - ruff, mypy and pytest against a real PostgreSQL"
	@echo "make bench  - benchmarks against the peers (bench/)"

RUN_STAMP := $(VENV)/.installed-run

# The full development set: linters, type checker, test and GitOps tools (`make test`).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

deps: $(STAMP)

# What `make run` needs: taskq and the embedded PostgreSQL, nothing else (a venv that
# already has the full set is used as it is).
$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then :; \
	else $(BIN)/python -m pip install --quiet -e '.[embedded]'; fi
	touch $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/taskq dev

lint: deps
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: deps
	$(BIN)/mypy

pytest: deps $(TEST_TOOLS)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

