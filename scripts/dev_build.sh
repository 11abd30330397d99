#!/usr/bin/env bash
# Developer build: compiles the native module into build/dev and copies it next to the Python
# sources, so `PYTHONPATH=python python -m pytest tests` runs against the working tree.
# Usage: scripts/dev_build.sh [extra cmake -D options]   (LENET5_CUDA defaults to OFF here)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
cmake -S . -B build/dev -G Ninja -DCMAKE_BUILD_TYPE=Release -DLENET5_CUDA=${LENET5_CUDA:-OFF} \
  -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v $PY)" "$@" > /dev/null
cmake --build build/dev
cp build/dev/_C*.so python/lenet5_fast/
