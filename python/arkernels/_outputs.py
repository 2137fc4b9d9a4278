"""Output allocation shared by every kernel launcher, with a test switch that NaN-fills new outputs
so that an element a kernel forgets to write fails the comparison (ARCHITECTURE.md, numerics)."""
from __future__ import annotations

import contextlib

import torch

_poison = False


def new_output(shape, *, dtype: torch.dtype, device) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    if _poison and out.is_floating_point():
        out.fill_(float("nan"))
    return out


@contextlib.contextmanager
def poisoned_outputs(enabled: bool = True):
    """While active, outputs of arkernels ops (C++ and Triton) are NaN-filled before kernels run."""
    global _poison
    from arkernels import _library

    previous = _poison
    _poison = enabled
    _library.set_native_poison(enabled)
    try:
        yield
    finally:
        _poison = previous
        _library.set_native_poison(previous)
