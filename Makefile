# pomlia-hpc — the two commands a newcomer needs: `make demo` and `make test`.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
POMLIA_PG_PORT ?= 5432
export POMLIA_PG_PORT
export POMLIA_TEST_PG_URL ?= postgresql+psycopg://pomlia:pomlia@127.0.0.1:$(POMLIA_PG_PORT)/pomlia_test
# Python caches compiled modules (__pycache__) for the processes these targets start: with
# PYTHONDONTWRITEBYTECODE=1 in the environment (some sandboxes and CI images set it) every job,
# command and test process compiled pomlia's ~340 modules from source again, and every pytest
# process re-rewrote the asserts of ~280 test modules (a collection of the suite: 42 -> 15 s of
# CPU). The venv's packages are compiled at install either way (scripts/setup-venv.sh).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: help venv demo test test-fast services services-stop lint bench clean

help:  ## Show the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

venv:  ## Create .venv and install the pinned stack (no-op when up to date)
	@bash scripts/setup-venv.sh

demo: venv  ## Create .venv if missing, install, run the main job end to end (local executor, SQLite, generated data)
	$(PY) -m pomlia_hpc.demo

services:  ## Start the test services: single-node Slurm and PostgreSQL on 127.0.0.1, Chromium
	@bash scripts/slurm-local.sh start
	@bash scripts/pg-local.sh start
	@bash scripts/browser-local.sh install

services-stop:  ## Stop the test services this project started
	-@bash scripts/slurm-local.sh stop
	-@bash scripts/pg-local.sh stop

# Two pytest workers, one test file each at a time (module fixtures stay per file), and beside
# them one process for the tests marked slurm, which mostly wait on Slurm
# (scripts/test-lanes.sh). TEST_WORKERS=0 runs the whole suite in one process.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: venv services  ## Install, start the test services, run the whole suite
ifeq ($(TEST_WORKERS),0)
	$(VENV)/bin/pytest -p no:cacheprovider --durations=25 $(PYTEST_ARGS)
else
	PYTEST=$(VENV)/bin/pytest WORKERS=$(TEST_WORKERS) bash scripts/test-lanes.sh $(PYTEST_ARGS)
endif

test-fast: venv  ## The suite without Slurm and PostgreSQL
	$(VENV)/bin/pytest -m "not slurm and not postgres" $(XDIST) $(PYTEST_ARGS)

lint: venv  ## ruff + mypy + the layer contract (import-linter)
	$(VENV)/bin/ruff check pomlia_hpc tests scripts
	$(VENV)/bin/ruff format --check pomlia_hpc tests scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

bench: venv  ## Run the benchmarks (JSON + tables under bench-results/)
	@mkdir -p bench-results
	@for b in scripts/bench/*.py; do echo "== $$b"; $(PY) $$b --out bench-results || exit 1; done

clean:  ## Remove the demo workspace and caches (keeps .venv)
	rm -rf pomlia-home .pytest_cache .mypy_cache .ruff_cache bench-results
