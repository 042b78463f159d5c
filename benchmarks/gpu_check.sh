#!/usr/bin/env bash
# On a machine with one CUDA GPU: run the GPU tests, time 3 epochs of the seed, fast and strong configs on the GPU
# (fp32, bf16, bf16 + compile), then the whole gpu preset (its accuracy and wall time, the figure it was designed for:
# >= 95.5% in <= 60 s). Each epoch is reported as a BENCH line by benchmarks.callback.BenchWorker.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (needs .venv from `make setup` and the dataset from `make data`)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
PY=.venv/bin/python
fit=($PY -m fashion_cnn.fit --trainer.accelerator gpu --trainer.devices 1 --trainer.enable_progress_bar false
     --trainer.logger.init_args.save_dir "$out/logs" --trainer.callbacks+=benchmarks.callback.BenchWorker)
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
$PY -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.txt"
for config in seed fast strong; do
  for extra in "" "--trainer.precision bf16-mixed" "--trainer.precision bf16-mixed --model.compile true"; do
    echo "== $config 3 epochs $extra" | tee -a "$out/timings.txt"
    # shellcheck disable=SC2086
    { time "${fit[@]}" --config "$config" --trainer.max_epochs 3 $extra 2>&1 | grep -a "^BENCH " ; } 2>&1 \
      | tee -a "$out/timings.txt"
  done
done
for seed in 0 1 2; do
  echo "== gpu preset, seed $seed (whole command)" | tee -a "$out/timings.txt"
  { time "${fit[@]}" --config gpu --seed_everything "$seed" --data.seed "$seed" 2>&1 | grep -a "^BENCH \|final/test_acc" ; } 2>&1 \
    | tee -a "$out/timings.txt"
done
echo "results in $out/"
