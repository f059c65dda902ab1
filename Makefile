# cutmix-runner: every reproducible step is a target here.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_ROOT ?= ../shared/data/cifar10
ARGS ?=

.PHONY: setup test test-all lint train sweep presets smoke bench clean

setup: $(BIN)/cutmix-train

# torch/torchvision are pinned to the releases that pip takes from this machine's disk;
# pyproject.toml itself only declares ranges.
$(BIN)/cutmix-train: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

# The fast suite (slow tests deselected). Exit code 5 (no tests collected) fails too.
test: setup
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

test-all: setup
	$(BIN)/python -m pytest -q $(ARGS)

lint: setup
	$(BIN)/ruff check .

# The main job: the default staged schedule on CIFAR-10 (about 25 minutes on 2 CPU cores).
train: setup
	$(BIN)/cutmix-train data.root=$(DATA_ROOT) $(ARGS)

# Two-point sweep over Stage-2's CutMix probability; each run gets its own directory.
sweep: setup
	$(BIN)/cutmix-train -m data.root=$(DATA_ROOT) schedule.stages.adapt.regularizer.prob=0,0.3 $(ARGS)

# One short run per regularizer preset on a 5,000-image stratified subset (README table).
PRESETS ?= baseline,cutmix_staged,cutmix_from_start,mixup_staged,random_erasing_staged,cutmix_strong_late
presets: setup
	$(BIN)/cutmix-train -m data.root=$(DATA_ROOT) experiment=$(PRESETS) data.train_subset=5000 \
		trainer.progress=false $(ARGS)

# Seconds-long end-to-end run on synthetic data.
smoke: setup
	$(BIN)/cutmix-train experiment=smoke $(ARGS)

bench: setup
	$(BIN)/python scripts/bench_throughput.py --out docs/benchmarks.md

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
