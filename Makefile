# adapt: `make run` sets up and runs the pipeline on the bundled demo corpus; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out/demo
CONFIG ?= cluster/configs/demo.yaml

.PHONY: help setup run test test-all bench lint fmt clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP) ## create the virtualenv from the lock file (once; again only when it changes)

run: $(STAMP) ## run the pipeline on the bundled demo corpus, local Ray, local storage
	HF_HUB_OFFLINE=1 $(VENV)/bin/adapt run --config $(CONFIG) --set output=$(OUT)

test: $(STAMP) ## run the test suite (local Ray, moto S3, tiny models)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

test-all: $(STAMP) ## tests including the slow ones
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not network"

bench: $(STAMP) ## benchmarks (reports, not tests)
	HF_HUB_OFFLINE=1 $(PY) -m adapt.bench.extract

lint: $(STAMP) ## ruff check
	$(VENV)/bin/ruff check adapt jobs tests

fmt: $(STAMP) ## ruff format
	$(VENV)/bin/ruff format adapt jobs tests

clean: ## remove the virtualenv and outputs
	rm -rf $(VENV) out
