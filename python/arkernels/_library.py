"""Loads the compiled torch bindings (arkernels._C) and reports what this build contains."""
from __future__ import annotations

import torch

try:
    from arkernels import _C  # noqa: F401  (importing registers the arkernels::* torch ops)

    _load_error: Exception | None = None
except ImportError as err:  # a source checkout that was never built, or a torch ABI mismatch
    _load_error = err


def native_available() -> bool:
    return _load_error is None


def require_native(what: str) -> None:
    if _load_error is not None:
        raise RuntimeError(
            f"{what} needs the compiled arkernels._C extension, which failed to load: {_load_error}. "
            "Build it with `pip install --no-build-isolation -e .` against the torch you run with."
        )


def has_kernel(op: str, dispatch_key: str) -> bool:
    """True when torch op `arkernels::<op>` has a kernel for `dispatch_key` ("CPU", "CUDA")."""
    if _load_error is not None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"arkernels::{op}", dispatch_key)


def set_native_poison(enabled: bool) -> None:
    if _load_error is None:
        torch.ops.arkernels._set_poison_outputs(enabled)
