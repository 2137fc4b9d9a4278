#!/usr/bin/env bash
# Builds the torch-free "device kit" here (CUDA kernels for sm_90a with the tuning variants, the C API
# tests, the native variant benchmark) and stages it in .kit/ (git-ignored), so that a GPU machine
# runs it without compiling anything: carry .kit and run `bash .kit/run.sh` there (writes under $OUT).
# Building here costs no device time; the kit's binaries need glibc >= this machine's (2.36) there.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PY:-.venv/bin/python}
export PATH="$(dirname "$py"):$PATH"
cmake -S . -B build/kit -G Ninja -DARKERNELS_BUILD_TORCH=OFF -DARKERNELS_CUDA_ARCHS="${ARKERNELS_CUDA_ARCHS:-90a}" \
  -DARKERNELS_TUNING_VARIANTS=ON >/dev/null
cmake --build build/kit
rm -rf .kit && mkdir -p .kit
cp build/kit/libarkernels.so* .kit/
cp build/kit/tests/capi/test_*_capi build/kit/tests/capi/test_sm90_primitives \
   build/kit/tests/capi/test_block_sparse_attention_dkdv_sm90 build/kit/bench/native/native_bench .kit/
# Runtime libraries the GPU machine's image may lack (found next to the binaries via LD_LIBRARY_PATH).
for lib in libgomp.so.1 libcudart.so.13; do
  path=$(ldd .kit/test_selective_scan_capi | awk -v l="$lib" '$1 == l {print $3}')
  [ -n "$path" ] && cp -L "$path" .kit/
done
cp scripts/device_kit_run.sh .kit/run.sh
git rev-parse --short HEAD >.kit/commit
git diff --quiet HEAD -- csrc bench/native tests/capi || echo "+uncommitted changes" >>.kit/commit
du -sh .kit
