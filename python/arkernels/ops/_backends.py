"""Backend choice shared by every op: which backends exist, which can run for given tensors, and
the clear error when an explicitly requested backend cannot run (never a silent slow fallback)."""
from __future__ import annotations

import os

import torch

from arkernels import _library
from arkernels.ops._checks import check_choice

BACKENDS = ("auto", "cuda", "triton", "cpu", "reference")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(op: str, backend: str, device: torch.device) -> str | None:
    """Why `backend` cannot run arkernels::`op` on `device`, or None when it can."""
    if backend == "reference":
        return None
    if backend == "cpu":
        if device.type != "cpu":
            return f"the cpu backend needs CPU tensors, got tensors on {device}"
        if not _library.has_kernel(op, "CPU"):
            return "arkernels._C is not built (no CPU kernel registered)"
        return None
    if backend == "cuda":
        if device.type != "cuda":
            return f"the cuda backend needs CUDA tensors, got tensors on {device}"
        if not _library.has_kernel(op, "CUDA"):
            return "this build of arkernels has no CUDA kernels (built without nvcc, or against a CPU-only torch)"
        return None
    if backend == "triton":
        if not triton_available():
            return "triton is not installed"
        if device.type == "cuda" or (device.type == "cpu" and triton_interpreted()):
            return None
        return f"the triton backend needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), got tensors on {device}"
    return f"unknown backend {backend!r}"


# Under torch.compile the choice is made once while tracing and baked into the graph: it depends only
# on what this build registered and on the device, not on tensor values (dynamo cannot trace the
# dispatcher queries inside).
@torch.compiler.assume_constant_result
def resolve(op: str, backend: str, device: torch.device, preference: tuple[str, ...]) -> str:
    """The backend to run: `backend` itself when it can run, else ValueError; for "auto" the first
    of `preference` (fastest first, as measured per device in bench/results) that can run."""
    if backend != "auto":
        reason = unavailable_reason(op, backend, device)
        if reason is not None:
            raise ValueError(f"backend: {backend!r} cannot run here: {reason}")
        return backend
    for candidate in preference:
        if unavailable_reason(op, candidate, device) is None:
            return candidate
    reasons = "; ".join(f"{c}: {unavailable_reason(op, c, device)}" for c in preference)
    raise ValueError(f"backend: no backend of arkernels::{op} can run on {device} ({reasons})")


def resolve_triton_or_torch_cpu(op: str, triton_op: str, backend: str, device: torch.device) -> str:
    """The backend of an op whose GPU kernel is Triton (torch op `triton_op`) and whose "cpu" backend is
    PyTorch code (no C++ kernel registered, so resolve() cannot see it): "auto" takes "cpu" for CPU tensors
    (Triton under TRITON_INTERPRET=1), else "triton"; an explicit backend that cannot run raises."""
    check_choice("backend", backend, BACKENDS)
    if backend == "cuda":
        raise ValueError(f"backend: 'cuda' cannot run {op}: it has no CUDA C++ kernel; its GPU backend is 'triton' "
                         "(or 'auto')")
    if backend == "cpu" or (backend == "auto" and device.type == "cpu" and not triton_interpreted()):
        if device.type != "cpu":
            raise ValueError(f"backend: 'cpu' cannot run here: it needs CPU tensors, got tensors on {device}")
        return "cpu"
    return resolve(triton_op, backend, device, ("triton",))

def call_native(run, validate):
    """``run()``, the call of a native op whose C++ binding checks every argument itself, with the
    op's Python checks (``validate()``) moved off the eager path: on the decode steps they were half
    of a call's host time (bench/NOTES.md), and a decode step is host-bound. When the op raises,
    ``validate()`` runs, so a bad argument still gets the Python message (a dispatcher's schema error
    becomes the argument-named TypeError); when the arguments pass, the op's own error propagates.
    While torch.compile traces, the fake kernel checks nothing, so ``validate()`` runs first (at trace
    time only)."""
    if torch.compiler.is_compiling():
        validate()
        return run()
    try:
        return run()
    except (RuntimeError, TypeError, ValueError, IndexError):
        validate()
        raise
