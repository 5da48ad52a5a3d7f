#!/usr/bin/env bash
# On a lent GPU machine (no network): build with CUDA, run the GPU tests and the GPU
# benchmarks, print a short table last. Meant to finish in well under 10 minutes:
#   bash bench/device_check.sh
# Only the MLP ranking part (tests/test_gpu_mlp.py, bench/bench_gpu_mlp.py):
#   GPU_TESTS=tests/test_gpu_mlp.py GPU_BENCHES=bench/bench_gpu_mlp.py bash bench/device_check.sh
# GPU_BENCHES=none runs no benchmark; PROFILE=1 ends with bench/profile_gpu.py (each kernel's
# device time of a GPU MLP rank and top-k call).
# Optional: wheels in .whl/ (e.g. implicit with its GPU dependencies, for the side-by-side
# benchmark) are installed into /tmp/site first; logs go to $OUT when it is set.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/cuda/bin:${PATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
LOG="${OUT:-/tmp}"
export RECFUSE_CUDA=ON
# One architecture is enough here and halves the build; CI builds 80 and 90.
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.')
export RECFUSE_CUDA_ARCHITECTURES="${cap:-90}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  # The CUDA libraries of the image's pip packages (cuBLAS, cuRAND) for carried extensions.
  nvlib=$("$PY" -c "import nvidia, os; print(':'.join(sorted({os.path.dirname(os.path.join(r, f)) for p in nvidia.__path__ for r, _, fs in os.walk(p) for f in fs if '.so' in f})))" 2>/dev/null)
  export LD_LIBRARY_PATH="${nvlib}:${LD_LIBRARY_PATH:-}"
fi
start=$(date +%s)
"$PY" -m pip install --no-build-isolation --no-deps -e . > "$LOG/build.log" 2>&1 \
  || { tail -50 "$LOG/build.log"; echo "BUILD FAILED"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
"$PY" -m recfuse.cli info
status=0
# Each step is bounded (a failing hypothesis test shrinks for a long time): TEST_TIMEOUT_S per
# test file, BENCH_BUDGET_S per benchmark. GPU_TESTS and GPU_BENCHES choose files and order.
# The test files run at once (one GPU and many cores: they share the card, and the lease is
# short); the benchmarks run one after another, alone, after them.
pids=()
names=()
for tests in ${GPU_TESTS:-tests/test_gpu_*.py}; do
  name=$(basename "$tests" .py)
  timeout "${TEST_TIMEOUT_S:-150}" "$PY" -m pytest -v -rfE -m gpu -p no:cacheprovider "$tests" \
    > "$LOG/$name.log" 2>&1 &
  pids+=($!); names+=("$name")
done
# The cuda and cupy parameters of the tests that run every backend (marked gpu there too).
timeout "${TEST_TIMEOUT_S:-150}" "$PY" -m pytest -v -rfE -m gpu -p no:cacheprovider \
  tests/test_als_backends.py tests/test_explicit_als.py tests/test_mlp.py \
  tests/test_sgd_backends.py tests/test_topk.py \
  > "$LOG/backend_tests.log" 2>&1 &
pids+=($!); names+=(backend_tests)
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"; rc=$?
  [ "$rc" -eq 0 ] || status=1
  # The logs name every test (-v); here only the failures and the count.
  echo "== ${names[$i]} (exit ${rc})"; grep -E "^(FAILED|ERROR)" "$LOG/${names[$i]}.log" | head -15
  tail -1 "$LOG/${names[$i]}.log"
done
echo "tests: $(( $(date +%s) - start )) s"
mkdir -p bench/results
benches="${GPU_BENCHES:-bench/bench_gpu_*.py}"
[ "$benches" = none ] && benches=""
for script in $benches; do
  name=$(basename "$script" .py)
  timeout $(( ${BENCH_BUDGET_S:-90} + 60 )) "$PY" "$script" --budget-s "${BENCH_BUDGET_S:-90}" \
    > "$LOG/$name.log" 2>&1 || status=1
  # Only the tables and skip notes here (the per-case JSON lines are in the log).
  echo "== $name"; grep -vE '^\{' "$LOG/$name.log" | tail -40
done
if [ "${PROFILE:-0}" = 1 ]; then
  echo "== profile_gpu"
  timeout 120 "$PY" bench/profile_gpu.py > "$LOG/profile_gpu.log" 2>&1 || status=1
  grep -vE "UserWarning|_warn_once" "$LOG/profile_gpu.log" | tail -40
fi
cp bench/results/*gpu*.json "$LOG/" 2>/dev/null || true
echo "== device check: total $(( $(date +%s) - start )) s, status ${status} =="
exit ${status}
