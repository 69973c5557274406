#!/usr/bin/env bash
# Fills .gpu-wheels/ (git-ignored) with the few wheels the GPU image lacks,
# for CPython 3.12 on x86_64, so gpu_check.sh can install them offline.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --quiet --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .gpu-wheels xxhash safetensors pytest
ls .gpu-wheels
