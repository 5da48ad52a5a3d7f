#!/usr/bin/env bash
# On a lent GPU machine (no network): build with CUDA, run the GPU tests and the GPU
# benchmarks, print a short table last. Meant to finish in well under 10 minutes:
#   bash bench/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/cuda/bin:${PATH}"
export RECFUSE_CUDA=ON
# One architecture is enough here and halves the build; CI builds 80 and 90.
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '.')
export RECFUSE_CUDA_ARCHITECTURES="${cap:-90}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
start=$(date +%s)
pip install --no-build-isolation --no-deps -e . > /tmp/recfuse_build.log 2>&1 \
  || { tail -50 /tmp/recfuse_build.log; echo "BUILD FAILED"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
python -m recfuse.cli info
status=0
python -m pytest -q -m gpu -p no:cacheprovider tests/ 2>&1 | tail -30 || status=1
python -m pytest -q -p no:cacheprovider tests/test_als_backends.py -k "cuda or cupy" 2>&1 | tail -5 || status=1
mkdir -p bench/results
python bench/bench_gpu_als.py 2>&1 | tail -40 || status=1
echo "== device check: total $(( $(date +%s) - start )) s, status ${status} =="
exit ${status}
