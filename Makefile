# RealTalk training platform. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help
.PHONY: help install test test-full lint demo bench face-model figures clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with every dependency and dev tool

test: install ## fast CPU test suite (offline; a few minutes)
	$(PY) -m pytest -m "not slow and not gpu"

test-full: install ## every test, slow ones included
	$(PY) -m pytest

lint: install ## ruff over the code and tests
	$(VENV)/bin/ruff check preprocess datamodules lightning_modules metrics tests

demo: install ## preprocess the bundled GRID samples into sharded_data/demo, print the summary, draw a preview
	$(PY) -m preprocess shard --config configs/preprocess/demo.yaml --overwrite true
	$(PY) -m preprocess preview --shards sharded_data/demo --out sharded_data/demo/preview.png

bench: install ## per-stage preprocessing throughput on the samples, one CPU core (and CUDA when present)
	$(PY) -m preprocess.bench

face-model: install ## rebuild the shipped face model from the five GRID clips not bundled (needs ../shared/data/grid)
	$(PY) -m preprocess build-face-model --root ../shared/data/grid --exclude '[bbaf2n,brbk7n,lbax4n]'

figures: demo ## redraw docs/*.png (face-model index sets, mouth-opening fit)
	$(PY) -m preprocess.figures --out docs

clean: ## remove generated shards (keeps the samples) and caches
	rm -rf sharded_data/demo .pytest_cache
