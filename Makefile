# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# torch first and pinned: pip then takes the local CPU wheel instead of resolving a CUDA build.
TORCH   ?= torch==2.13.0

.PHONY: demo test lint install clean-runs

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## demo: train the shipped tiny model with GRPO on the built-in task (about 10 minutes on 2 cores)
demo: $(STAMP)
	$(BIN)/grpo train

## test: the whole suite (unit tests, then end-to-end runs of the trainer), and ruff
test: $(STAMP)
	$(BIN)/ruff check src tests scripts
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

clean-runs:
	rm -rf runs
