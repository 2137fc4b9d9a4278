#!/usr/bin/env bash
# Creates the project's virtual environment (if absent), installs torch and the build/test/bench
# tools into it, and builds arkernels into it (editable, against that torch). Idempotent.
#   PYTHON=python3  TORCH_VERSION=2.14.1  ARKERNELS_VENV=.venv  (overridable)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${ARKERNELS_VENV:-.venv}
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
py="$venv/bin/python"
"$py" -m pip install -q "torch==${TORCH_VERSION:-2.14.1}" numpy pytest "scikit-build-core>=0.10" cmake ninja matplotlib
"$py" -m pip install -q --no-build-isolation --no-deps -e .
"$py" -c "import arkernels; print('arkernels built: native', arkernels.native_available(), '| CUDA kernels', arkernels.cuda_kernels_available())"
