#!/usr/bin/env bash
# The one GPU check (README "GPU"): a person with a CUDA GPU runs it once; it should finish in
# about 8 minutes on an H100-class card and append a dated table, with the card's name, to
# docs/benchmarks.md. Steps:
#   1. the CUDA tests (tests/test_gpu.py, marked `cuda`);
#   2. bench_throughput.py on CUDA: ours vs the standard pipeline vs the model-only bound,
#      at 64 and 224 px, batch 128 and 512;
#   3. each GPU preset on synthetic data for throughput (first vs later epochs of each stage,
#      first-step time: where a first-epoch-of-stage slowdown would show);
#   4. with CIFAR-10 present (DATA_ROOT), the fastest preset for accuracy.
#
#   scripts/gpu_check.sh          # on the GPU machine
#   scripts/gpu_check.sh --dry    # on CPU, every step at toy size into a temp file (CI runs it)
#
# Needs python with torch, timm and torchmetrics. hydra-core, omegaconf, antlr4-python3-runtime,
# pytest and the weight packages are pure Python: `make gpu-bundle` copies them from .venv into
# gpu_bundle/, which this script puts on PYTHONPATH (no network needed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD:$PWD/gpu_bundle${PYTHONPATH:+:$PYTHONPATH}"
DRY=0
[[ "${1:-}" == "--dry" ]] && DRY=1
WORK=$(mktemp -d)
DATA_ROOT=${DATA_ROOT:-../shared/data/cifar10}

if [[ $DRY == 1 ]]; then
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # toy sizes: more threads only synchronise
  OUT=$WORK/benchmarks.md
  TEST_ARGS=(-m cuda -q -p no:cacheprovider --co)      # collect only: no GPU to run them on
  BENCH_ARGS=(--device cpu --model test_efficientnet --sizes 32 --batches 8 --repeats 1)
  RUN_ARGS=(model=tiny model.image_size=32 trainer.device=cpu data.synthetic_train_size=64
            data.val_size=16 data.synthetic_test_size=16 trainer.batch_size=16
            trainer.eval_batch_size=16 trainer.clean_train_size=16 trainer.flip_subset=8)
  ACCURACY=0
else
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run with --dry on CPU')"
  OUT=docs/benchmarks.md
  TEST_ARGS=(-m cuda -q -p no:cacheprovider)
  BENCH_ARGS=(--device cuda --sizes 64 224 --batches 128 512 --repeats 10)
  RUN_ARGS=(trainer.device=cuda data.synthetic_train_size=20000 data.val_size=2000
            data.synthetic_test_size=2000)
  ACCURACY=$([[ -d $DATA_ROOT ]] && echo 1 || echo 0)
fi
SECONDS=0
echo "== 1/4 CUDA tests"
"$PY" -m pytest tests/test_gpu.py "${TEST_ARGS[@]}" | tail -3
echo "== 2/4 throughput: ours vs standard pipeline vs model-only ($((SECONDS))s)"
"$PY" scripts/bench_throughput.py "${BENCH_ARGS[@]}" --append --out "$OUT"
echo "== 3/4 GPU presets on synthetic data ($((SECONDS))s)"
RUNS=()
for preset in gpu_lite0_224 gpu_lite2_260; do
  dir=$WORK/$preset-synthetic
  "$PY" -m cutmix_runner "experiment=$preset" data=synthetic trainer.progress=false \
    schedule.stages.head.epochs=1 schedule.stages.adapt.epochs=2 schedule.stages.late.epochs=2 \
    "${RUN_ARGS[@]}" "hydra.run.dir=$dir" > "$dir.log" 2>&1 || { tail -5 "$dir.log"; exit 1; }
  RUNS+=("$dir")
done
if [[ $ACCURACY == 1 ]]; then
  echo "== 4/4 gpu_lite0_224 on CIFAR-10 for accuracy ($((SECONDS))s)"
  dir=$WORK/gpu_lite0_224-cifar10
  "$PY" -m cutmix_runner experiment=gpu_lite0_224 "data.root=$DATA_ROOT" trainer.device=cuda \
    trainer.progress=false "hydra.run.dir=$dir" > "$dir.log" 2>&1 || { tail -5 "$dir.log"; exit 1; }
  RUNS+=("$dir")
else
  echo "== 4/4 skipped: no CIFAR-10 at $DATA_ROOT (set DATA_ROOT)"
fi
"$PY" scripts/gpu_summary.py --out "$OUT" --command "scripts/gpu_check.sh${1:+ $1}" \
  --seconds "$SECONDS" "${RUNS[@]}"
echo "== done in ${SECONDS}s; tables appended to $OUT"
