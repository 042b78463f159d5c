#!/usr/bin/env bash
# On a machine with one CUDA GPU: the gpu preset's whole command (its accuracy and wall time, the figure it was
# designed for: >= 95.5% in <= 60 s) with torch.compile and without, then seeds 1 and 2 with whichever whole command
# was faster, the GPU tests, and 3 epochs of the seed, fast and strong configs (fp32, bf16, bf16 + compile), each
# epoch a BENCH line from benchmarks.callback. The most telling checks come first: a time budget (GPU_CHECK_BUDGET
# seconds) that runs out stops the command then running and skips the rest.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]
#   needs the packages of `make setup` (PY=python to use another interpreter than .venv's) and the dataset
#   (`make data`, or FASHION_MNIST_DIR); runs and their TensorBoard logs go to OUT_DIR/logs (LOG_DIR to change it).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/gpu}
logs=${LOG_DIR:-$out/logs}
PY=${PY:-.venv/bin/python}
deadline=$((SECONDS + ${GPU_CHECK_BUDGET:-100000}))
mkdir -p "$out" "$logs"
: >"$out/timings.txt"  # this run's, not appended to an earlier one's
declare -A wall  # each check's wall time in seconds, for comparisons: 99999 for one that failed or was skipped
gpu=(--trainer.accelerator gpu --trainer.devices 1 --trainer.enable_progress_bar false
     --trainer.logger.init_args.save_dir "$logs" --trainer.callbacks+=benchmarks.callback.BenchWorker)

# check NAME LIMIT_S CMD...: runs CMD (its whole output in $logs/NAME.log) for at most LIMIT_S seconds and what is
# left of the budget (then it is stopped: status 124), appends its BENCH/final lines and its wall time to
# timings.txt, and returns CMD's status; with under 30 s of the budget left it skips CMD and returns 0.
check() {
  local name=$1 limit=$2 left=$((deadline - SECONDS)) start status seconds
  shift 2
  wall[$name]=99999
  if ((left < 30)); then echo "== $name: skipped, the budget is spent" | tee -a "$out/timings.txt"; return 0; fi
  ((limit > left)) && limit=$left
  echo "== $name: $*" | tee -a "$out/timings.txt"
  start=$(date +%s.%N)
  timeout -k 30 "$limit" "$@" >"$logs/$name.log" 2>&1
  status=$?
  seconds=$(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $start }")
  ((status == 0)) && wall[$name]=$seconds
  grep -a "^BENCH \|final/test_acc\|final/test_loss\|passed\|failed\|Error\|error:" "$logs/$name.log" | tail -40 \
    | tee -a "$out/timings.txt"
  echo "-- $name: exit $status, wall $seconds s" | tee -a "$out/timings.txt"
  return "$status"
}

# fit NAME LIMIT_S CONFIG ARGS...: a check of `fashion_cnn.fit --config CONFIG` on the GPU; the options come after
# --config, which would otherwise replace them (its callbacks list too)
fit() {
  check "$1" "$2" "$PY" -m fashion_cnn.fit --config "$3" "${gpu[@]}" "${@:4}"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import sys, torch, lightning, torchmetrics, jsonargparse
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'lightning', lightning.__version__, 'torchmetrics', torchmetrics.__version__,
      'jsonargparse', jsonargparse.__version__)"; } 2>&1 | tee "$out/gpu.txt"

# The first run fails fast unless it ran out of time: if the preset cannot train, nothing after it can either.
# It is the uncompiled one (the preset's setting); the compiled one runs second, after the machine's first start.
fit gpu_seed0_compile_false 300 gpu --seed_everything 0 --data.seed 0 --model.compile false
status=$?
((status == 0 || status == 124)) || exit 1
fit gpu_seed0_compile_true 300 gpu --seed_everything 0 --data.seed 0 --model.compile true
faster=false  # the preset's own setting, unless compiling made the whole command faster
awk "BEGIN { exit !(${wall[gpu_seed0_compile_true]} < ${wall[gpu_seed0_compile_false]}) }" && faster=true
echo "== seeds 1 and 2 with model.compile $faster (whole commands of seed 0: compiled" \
  "${wall[gpu_seed0_compile_true]} s, not ${wall[gpu_seed0_compile_false]} s; 99999: failed or skipped)" \
  | tee -a "$out/timings.txt"
for seed in 1 2; do
  fit "gpu_seed${seed}_compile_$faster" 200 gpu --seed_everything "$seed" --data.seed "$seed" --model.compile "$faster"
done
check gpu_tests 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
for config in strong fast seed; do
  fit "${config}_3ep_fp32" 90 "$config" --trainer.max_epochs 3 --trainer.precision 32-true
  fit "${config}_3ep_bf16" 90 "$config" --trainer.max_epochs 3 --trainer.precision bf16-mixed
  fit "${config}_3ep_bf16_compile" 150 "$config" --trainer.max_epochs 3 \
    --trainer.precision bf16-mixed --model.compile true
done
echo "results in $out/ (runs in $logs/)"
