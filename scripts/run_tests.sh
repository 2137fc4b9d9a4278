#!/usr/bin/env bash
# The whole test suite: Python tests (CPU kernels, reference, GPU tests where a GPU is present),
# the Triton kernels through the Triton interpreter (CPU only), the torch-free C API via ctest, and
# a separate CMake project that links the installed C API through find_package(arkernels).
#   PY=.venv/bin/python (the environment that has arkernels installed)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PY:-.venv/bin/python}
status=0
"$py" -m pytest tests -q -ra "$@" || status=$?
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  # Without a GPU the Triton kernels run through the interpreter; the variable must be set before
  # triton is imported, hence a separate run.
  TRITON_INTERPRET=1 "$py" -m pytest tests/ops/test_linear_scan_triton_interpreter.py -q -ra || status=$?
  TRITON_INTERPRET=1 "$py" -m pytest tests/ops/test_ssd_chunk_scan_triton_interpreter.py -q -ra || status=$?
  TRITON_INTERPRET=1 "$py" -m pytest tests/ops/test_block_sparse_attention_triton_interpreter.py -q -ra || status=$?
  TRITON_INTERPRET=1 "$py" -m pytest tests/ops/test_decode_attention_triton_interpreter.py -q -ra || status=$?
fi
# C API: build libarkernels alone (no torch) and run its ctest.
# The environment's own cmake/ninja (pip packages) come first on PATH.
export PATH="$(dirname "$py"):$PATH"
mkdir -p build
cmake -S . -B build/capi -G Ninja -DARKERNELS_BUILD_TORCH=OFF -DARKERNELS_CUDA_ARCHS="${ARKERNELS_CUDA_ARCHS:-80;90a}" \
  >build/capi.log 2>&1 || { cat build/capi.log; exit 1; }
cmake --build build/capi >>build/capi.log 2>&1 || { cat build/capi.log; exit 1; }
(cd build/capi && ctest --output-on-failure) || status=$?
# A separate project links the installed C API through find_package(arkernels), as a user would.
prefix=$("$py" -c "import arkernels; print(arkernels.cmake_prefix_path())")
{ cmake -S tests/consumer -B build/consumer -G Ninja -DCMAKE_PREFIX_PATH="$prefix" && cmake --build build/consumer; } \
  >build/consumer.log 2>&1 || { cat build/consumer.log; exit 1; }
build/consumer/consumer || status=$?
exit $status
