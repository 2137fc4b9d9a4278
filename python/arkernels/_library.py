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


_has_kernel: dict[tuple[str, str], bool] = {}


def has_kernel(op: str, dispatch_key: str) -> bool:
    """True when torch op `arkernels::<op>` has a kernel for `dispatch_key` ("CPU", "CUDA").
    Cached: the dispatcher query costs ~15 us, on every call of every op otherwise."""
    if _load_error is not None:
        return False
    key = (op, dispatch_key)
    if key not in _has_kernel:
        try:
            _has_kernel[key] = torch._C._dispatch_has_kernel_for_dispatch_key(f"arkernels::{op}", dispatch_key)
        except RuntimeError:  # the op is not in this build of arkernels._C (e.g. a stale build)
            _has_kernel[key] = False
    return _has_kernel[key]


def set_native_poison(enabled: bool) -> None:
    if _load_error is None:
        torch.ops.arkernels._set_poison_outputs(enabled)
