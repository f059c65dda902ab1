# cutmix-runner: every reproducible step is a target here.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_ROOT ?= ../shared/data/cifar10
ARGS ?=

.PHONY: setup test test-all lint train sweep presets reproduce reproduce-full smoke bench golden clean

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
PRESETS_DIR := multirun/presets-$(shell date +%Y%m%d-%H%M%S)
presets: setup
	$(BIN)/cutmix-train -m data.root=$(DATA_ROOT) experiment=$(PRESETS) $(REPRO_DATA) \
		trainer.progress=false hydra.sweep.dir=$(PRESETS_DIR) $(ARGS)
	$(BIN)/cutmix-report $(PRESETS_DIR) --out $(PRESETS_DIR)/report

# The claims study: five presets x three seeds on a 5,000-image subset (overfitting matters),
# then the report into docs/results/. About 65-90 minutes on 2 CPU cores.
REPRO_ARMS ?= baseline,cutmix_from_start,cutmix_staged,mixup_staged,random_erasing_staged
REPRO_SEEDS ?= 0,1,2
REPRO_DIR := multirun/reproduce-$(shell date +%Y%m%d-%H%M%S)
REPRO_DATA ?= data.train_subset=5000 data.val_size=2000 trainer.clean_train_size=1000 \
	trainer.flip_subset=500
reproduce: setup
	$(BIN)/cutmix-train -m data.root=$(DATA_ROOT) trainer.seed=$(REPRO_SEEDS) \
		experiment=$(REPRO_ARMS) $(REPRO_DATA) trainer.progress=false hydra.sweep.dir=$(REPRO_DIR) $(ARGS)
	$(BIN)/cutmix-report $(REPRO_DIR) --out docs/results

# The same study on the full training set (hours on CPU, minutes on a GPU).
reproduce-full: setup
	$(BIN)/cutmix-train -m data.root=$(DATA_ROOT) trainer.seed=$(REPRO_SEEDS) \
		experiment=$(REPRO_ARMS) trainer.progress=false hydra.sweep.dir=$(REPRO_DIR)-full $(ARGS)
	$(BIN)/cutmix-report $(REPRO_DIR)-full --out docs/results-full

# Seconds-long end-to-end run on synthetic data.
smoke: setup
	$(BIN)/cutmix-train experiment=smoke $(ARGS)

bench: setup
	$(BIN)/python scripts/bench_throughput.py --out docs/benchmarks.md

# Re-record the smoke run's golden output (tests/golden/smoke). Only for an intended change of
# results; say why in the commit. tests/test_golden.py compares every run of the suite with it.
golden: setup
	$(BIN)/python -m tests.golden --write

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
