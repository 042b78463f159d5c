#!/usr/bin/env bash
# On a machine with one CUDA GPU: run the GPU tests, then time the seed, fast and strong configs on the GPU.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (needs .venv from `make setup` and the dataset from `make data`)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
PY=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
$PY -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.txt"
for config in seed fast strong; do
  for extra in "" "--trainer.precision bf16-mixed" "--trainer.precision bf16-mixed --model.compile true"; do
    echo "== $config $extra" | tee -a "$out/timings.txt"
    # shellcheck disable=SC2086
    { time $PY -m fashion_cnn.fit --config "$config" --trainer.accelerator gpu --trainer.devices 1 \
        --trainer.max_epochs 3 --trainer.enable_progress_bar false --trainer.logger.init_args.save_dir "$out/logs" \
        $extra 2>&1 | grep -aE "^\[[0-9]+\] " ; } 2>&1 | tee -a "$out/timings.txt"
  done
done
echo "results in $out/"
