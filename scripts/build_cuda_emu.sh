#!/usr/bin/env bash
# Builds only the emulated CUDA device's test module, lenet5_fast._C_cuda_emu (csrc/cuda_emu: the
# CUDA kernels compiled for the CPU), in $BUILD_DIR (default build/cuda-emu), and prints its
# path. The CUDA tests run on it where there is no GPU:
#   LENET5_CUDA_EMU_MODULE=$(scripts/build_cuda_emu.sh) python -m pytest tests/test_cuda.py tests/test_cuda_emu.py
# Extra arguments go to CMake (-DLENET5_CUDA_EMU_TSAN=ON: under ThreadSanitizer). Needs cmake,
# ninja and pybind11 in the Python environment ($PYTHON, default python); no nvcc.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
dir=${BUILD_DIR:-build/cuda-emu}
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLENET5_CUDA=OFF -DLENET5_CUDA_EMU=ON \
  -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v $PY)" "$@" > /dev/null
cmake --build "$dir" --target _C_cuda_emu >&2
ls "$PWD/$dir"/_C_cuda_emu*.so
