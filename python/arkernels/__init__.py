"""arkernels: kernels for autoregressive sequence models beyond softmax attention.

Every op is a torch custom op with a pure-PyTorch reference (``arkernels.reference``) and a
``backend=`` argument ("auto", "cuda", "triton", "cpu", "reference").
"""
from __future__ import annotations

import os as _os

import torch  # noqa: F401  (loads libtorch before the bindings)

from arkernels import _library
from arkernels.ops import causal_conv1d, causal_conv1d_update, linear_scan, selective_scan, selective_state_update, selective_state_update_tokens
from arkernels.ops import ssd_chunk_scan
from arkernels import masks
from arkernels.ops import block_sparse_attention, decode_attention

__version__ = "0.1.0"

_package_dir = _os.path.dirname(_os.path.abspath(__file__))


def native_available() -> bool:
    """True when the compiled bindings (arkernels._C) loaded."""
    return _library.native_available()


def cuda_kernels_available() -> bool:
    """True when this build has CUDA kernels registered with torch."""
    return _library.has_kernel("linear_scan", "CUDA")


def cmake_prefix_path() -> str:
    """Directory to add to CMAKE_PREFIX_PATH so that find_package(arkernels) finds the installed C API."""
    import arkernels._C as _c  # compiled files live next to the extension (also in editable installs)

    return _os.path.join(_os.path.dirname(_os.path.abspath(_c.__file__)), "lib", "cmake")


__all__ = ["linear_scan", "selective_scan", "native_available", "cuda_kernels_available", "cmake_prefix_path", "ssd_chunk_scan", "causal_conv1d", "causal_conv1d_update", "selective_state_update", "selective_state_update_tokens", "masks", "block_sparse_attention", "decode_attention"]
