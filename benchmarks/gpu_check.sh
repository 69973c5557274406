#!/usr/bin/env bash
# One prepared run on a lent GPU machine (no network; torch, nvcc, pybind11,
# cmake and ninja are in its image): build the extension with its CUDA
# sources, run the GPU tests and the benchmarks, leave JSON under $OUT.
# Wheels the image lacks (xxhash, safetensors, pytest) travel in .gpu-wheels/
# (benchmarks/fetch_gpu_wheels.sh fills it; pass it in the run's carry).
set -uo pipefail
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  $PY -c "import torch; print('torch', torch.__version__, torch.version.cuda)"
} > "$OUT/env.txt" 2>&1

if [ -d .gpu-wheels ]; then
  $PY -m pip install --quiet --no-index --find-links .gpu-wheels xxhash safetensors pytest >> "$OUT/build.log" 2>&1
fi
PYKVSTORE_CUDA=ON timeout 120 $PY -m pip install --quiet --no-build-isolation --no-deps -e . >> "$OUT/build.log" 2>&1
echo "build rc=$?" >> "$OUT/build.log"

timeout 120 $PY -m pytest -q tests/test_gpu.py tests/test_kernels.py tests/test_native.py tests/test_layout.py tests/test_transfer.py -k 'not ten_thousand' \
  --junitxml="$OUT/gpu-tests.xml" > "$OUT/gpu-tests.txt" 2>&1
echo "tests rc=$?" >> "$OUT/gpu-tests.txt"

# Kernel GB/s beside copy_, the torch loop and one row per program; registers as launched vs predicted ahead of time.
timeout 80 $PY benchmarks/bench_kernels.py > "$OUT/bench_kernels.json" 2> "$OUT/bench_kernels.err"
timeout 70 $PY benchmarks/bench_transfer.py --gpu-only --repeat 5 > "$OUT/bench_transfer.json" 2> "$OUT/bench_transfer.err"
# The CPU figures on a machine with more than two cores (the mapped load vs memcpy target).
timeout 40 $PY benchmarks/bench_transfer.py --cpu-only --repeat 3 --cold-rounds 2 > "$OUT/bench_transfer_cpu.json" 2> "$OUT/bench_transfer_cpu.err"
timeout 40 $PY benchmarks/bench_store.py --chunks 16 --repeat 3 > "$OUT/bench_store.json" 2> "$OUT/bench_store.err"
echo "done" >> "$OUT/env.txt"
tail -n 3 "$OUT/gpu-tests.txt"
