"""arkernels.ssd_chunk_scan: the Mamba-2 SSD scan, a drop-in for mamba-ssm's ``mamba_chunk_scan_combined``.

Backends: "triton" runs ``arkernels::ssd_chunk_scan_triton`` (triton_kernels/ssd_chunk_scan.py), "cpu"
runs ``arkernels::ssd_chunk_scan`` (C++, csrc/torch/ssd_chunk_scan.cpp), "reference" the chunked
pure-PyTorch form. Both torch ops have fake kernels and autograd registered here, so they work under
torch.compile(fullgraph=True) and pass torch.library.opcheck. Math and numerics: docs/ops/ssd_chunk_scan.md.
"""
from __future__ import annotations

import math
import numbers

import torch

from arkernels import _library
from arkernels.ops import _backends
from arkernels.ops._checks import (
    FLOAT_DTYPES,
    check_bool,
    check_choice,
    check_same_device,
    check_same_dtype,
    check_same_shape,
    check_shape,
    check_tensor,
)
from arkernels.reference.ssd_chunk_scan import ssd_chunk_scan_chunked_ref

_PREFERENCE = {"cuda": ("triton",), "cpu": ("cpu",)}
_INDEX_DTYPES = (torch.int32, torch.int64)


def ssd_chunk_scan(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None,
                   cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False, *,
                   backend="auto"):
    """The Mamba-2 SSD scan (state space duality), chunked.

    Per batch row and head hh (group gg = hh // (h / g)), with dt <- clamp(softplus?(dt + dt_bias), dt_limit):
    ``S_t = exp(dt_t A[hh]) S_{t-1} + dt_t x_t B_t^T`` (S is p x n, S_{-1} = initial state or 0, reset to
    0 at sequence boundaries), ``y_t = S_t C_t + D x_t``, ``out = y * silu(z)``.

    Args:
        x: (b, l, h, p), float32 / float16 / bfloat16.
        dt: (b, l, h), any of those dtypes.
        A: (h,) (float32 as a rule).
        B, C: (b, l, g, n), x's dtype, h % g == 0.
        chunk_size: the chunk length of the reference backend; a hint only for the kernels, whose
            internal chunk length is their own (results agree up to rounding).
        D: (h,) or (h, p) skip term. z: like x, gate (out = y * silu(z)). dt_bias: (h,).
        initial_states: (b, h, p, n), the state before token 0 of each row; with cu_seqlens either
            (num_seqs, h, p, n), one per sequence, or (1, h, p, n) for the first sequence only.
        seq_idx: (b, l) int32/int64 sequence ids of packed sequences: the state is reset to zero
            wherever the id changes from one token to the next.
        cu_seqlens: (num_seqs + 1,) int32/int64 sequence boundaries, needs b == 1: non-decreasing,
            from 0 to l. The state is reset at every boundary; final states are per sequence.
        dt_softplus: apply softplus to dt + dt_bias (identity above 20).
        dt_limit: (min, max) clamp of the processed dt.
        return_final_states: also return the final states, float32: (b, h, p, n), or
            (num_seqs, h, p, n) with cu_seqlens.
        backend: "auto", "triton", "cpu" or "reference".

    Returns:
        out (b, l, h, p) in x's dtype [, final_states]. Gradients flow to x, dt, A, B, C, D, z, dt_bias
        and initial_states, also through the final states.
    """
    b, l, h, p, g, n, num_seqs = _validate(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx,
                                           cu_seqlens, dt_softplus, dt_limit, return_final_states, backend)
    if backend == "cuda":
        raise ValueError("backend: 'cuda' cannot run ssd_chunk_scan: it has no CUDA C++ kernel; its GPU backend is "
                         "'triton' (or 'auto')")
    chosen = _backends.resolve("ssd_chunk_scan", backend, x.device, _PREFERENCE.get(x.device.type, ()))
    dt_min, dt_max = float(dt_limit[0]), float(dt_limit[1])

    if chosen == "reference":
        out, final = ssd_chunk_scan_chunked_ref(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias,
                                                initial_states=initial_states, seq_idx=seq_idx, cu_seqlens=cu_seqlens,
                                                dt_softplus=dt_softplus, dt_limit=(dt_min, dt_max),
                                                return_final_states=True)
        final = final.to(torch.float32)
    else:
        init = initial_states
        if init is not None:
            if cu_seqlens is not None and init.shape[0] != num_seqs:
                # (1, h, p, n): the first sequence's; the later ones start from zero.
                init = torch.cat([init, init.new_zeros((num_seqs - 1, h, p, n))], dim=0)
            init = init.to(torch.float32).contiguous()
        op = torch.ops.arkernels.ssd_chunk_scan_triton if chosen == "triton" else torch.ops.arkernels.ssd_chunk_scan
        out, final = op(x, dt, A, B, C, D, z, dt_bias, init, seq_idx, cu_seqlens, dt_softplus, dt_min, dt_max)
    return (out, final) if return_final_states else out


# ---- validation ----

def _validate(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dt_softplus,
              dt_limit, return_final_states, backend):
    check_tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"x: expected 4 dimensions (b, l, h, p), got shape {tuple(x.shape)}")
    b, l, h, p = x.shape
    check_tensor("dt", dt)
    check_shape("dt", dt, (b, l, h))
    check_tensor("A", A)
    check_shape("A", A, (h,))
    check_tensor("B", B)
    if B.dim() != 4 or B.shape[:2] != x.shape[:2]:
        raise ValueError(f"B: expected shape (b, l, g, n) = ({b}, {l}, g, n), got {tuple(B.shape)}")
    g, n = B.shape[2], B.shape[3]
    if g < 1 or h % g != 0:
        raise ValueError(f"B: expected a number of groups g that divides the number of heads h = {h}, got g = {g}")
    check_same_dtype("x", x, "B", B)
    check_tensor("C", C)
    check_same_shape("B", B, "C", C)
    check_same_dtype("x", x, "C", C)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    for name, t in (("dt", dt), ("A", A), ("B", B), ("C", C)):
        check_same_device("x", x, name, t)
    if D is not None:
        check_tensor("D", D)
        if tuple(D.shape) not in ((h,), (h, p)):
            raise ValueError(f"D: expected shape ({h},) or ({h}, {p}), got {tuple(D.shape)}")
        check_same_device("x", x, "D", D)
    if z is not None:
        check_tensor("z", z)
        check_same_shape("x", x, "z", z)
        check_same_dtype("x", x, "z", z)
        check_same_device("x", x, "z", z)
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias)
        check_shape("dt_bias", dt_bias, (h,))
        check_same_device("x", x, "dt_bias", dt_bias)
    num_seqs = b
    if cu_seqlens is not None:
        check_tensor("cu_seqlens", cu_seqlens, dtypes=_INDEX_DTYPES)
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
            raise ValueError(f"cu_seqlens: expected a 1-d tensor (num_seqs + 1,), got shape {tuple(cu_seqlens.shape)}")
        if b != 1:
            raise ValueError(f"cu_seqlens: expected batch size 1 (packed sequences), got x with batch size {b}")
        check_same_device("x", x, "cu_seqlens", cu_seqlens)
        num_seqs = cu_seqlens.numel() - 1
        if not torch.compiler.is_compiling():
            _check_cu_seqlens_values(cu_seqlens, l, seq_idx)
    if seq_idx is not None:
        check_tensor("seq_idx", seq_idx, dtypes=_INDEX_DTYPES)
        check_shape("seq_idx", seq_idx, (b, l))
        check_same_device("x", x, "seq_idx", seq_idx)
    if initial_states is not None:
        check_tensor("initial_states", initial_states, dtypes=FLOAT_DTYPES + (torch.float64,))
        check_same_device("x", x, "initial_states", initial_states)
        if cu_seqlens is not None:
            if tuple(initial_states.shape) not in ((num_seqs, h, p, n), (1, h, p, n)):
                raise ValueError(f"initial_states: expected shape ({num_seqs}, {h}, {p}, {n}) (one per sequence) or "
                                 f"(1, {h}, {p}, {n}) with cu_seqlens, got {tuple(initial_states.shape)}")
        else:
            check_shape("initial_states", initial_states, (b, h, p, n))
    check_bool("dt_softplus", dt_softplus)
    if (not isinstance(dt_limit, (tuple, list)) or len(dt_limit) != 2
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in dt_limit)):
        raise ValueError(f"dt_limit: expected a pair of numbers (min, max), got {dt_limit!r}")
    if math.isnan(dt_limit[0]) or math.isnan(dt_limit[1]) or dt_limit[0] > dt_limit[1]:
        raise ValueError(f"dt_limit: expected min <= max, got {tuple(dt_limit)}")
    check_bool("return_final_states", return_final_states)
    check_choice("backend", backend, _backends.BACKENDS)
    return b, l, h, p, g, n, num_seqs


def _check_cu_seqlens_values(cu_seqlens, l, seq_idx):
    """Values of cu_seqlens (a device sync on GPUs; skipped under torch.compile): 0 = cu[0] <= ... <= cu[-1] = l,
    and, when seq_idx is given as well, seq_idx changes exactly at the boundaries."""
    cu = cu_seqlens.detach().to("cpu", torch.int64)
    if cu[0].item() != 0 or cu[-1].item() != l:
        raise ValueError(f"cu_seqlens: expected values from 0 to l = {l}, got first {cu[0].item()} and last "
                         f"{cu[-1].item()}")
    if cu.numel() > 1 and bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"cu_seqlens: expected non-decreasing values, got {cu.tolist()[:16]}")
    if seq_idx is not None and seq_idx.dim() == 2 and seq_idx.shape == (1, l) and l > 1:
        s = seq_idx.detach().to("cpu", torch.int64)[0]
        changes = (s[1:] != s[:-1]).nonzero().flatten() + 1
        starts = cu[1:-1]
        starts = torch.unique(starts[(starts > 0) & (starts < l)])
        if not torch.equal(changes, starts):
            raise ValueError("seq_idx: expected it to change exactly at the cu_seqlens boundaries "
                             f"{starts.tolist()[:16]}, got changes at {changes.tolist()[:16]}")


# ---- fake kernels and autograd, shared by the native and the Triton op ----

def _num_states(x, initial_states, cu_seqlens):
    return cu_seqlens.shape[0] - 1 if cu_seqlens is not None else x.shape[0]


def _fake_forward(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None, cu_seqlens=None,
                  dt_softplus=False, dt_min=0.0, dt_max=float("inf")):
    h, p, n = x.shape[2], x.shape[3], B.shape[3]
    ns = _num_states(x, initial_states, cu_seqlens)
    return x.new_empty(x.shape), x.new_empty((ns, h, p, n), dtype=torch.float32)


def _fake_backward(grad_out, grad_final, x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens,
                   dt_softplus, dt_min, dt_max):
    def like(t):
        return t.new_empty(t.shape) if t is not None else x.new_empty((0,))

    return (like(x), like(dt), like(A), like(B), like(C), like(D), like(z), like(dt_bias),
            initial_states.new_empty(initial_states.shape, dtype=torch.float32) if initial_states is not None
            else x.new_empty((0,)))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:11])
    ctx.flags = inputs[11:]
    # An unused final state (the common case) reaches the backward as None, not as zeros.
    ctx.set_materialize_grads(False)


def _make_backward(backward_op):
    def backward(ctx, grad_out, grad_final):
        x, dt, A, B, C, D, z, dt_bias, init, seq_idx, cu_seqlens = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(x)
        grads = backward_op(grad_out.to(x.dtype), grad_final, x, dt, A, B, C, D, z, dt_bias, init, seq_idx,
                            cu_seqlens, *ctx.flags)
        present = (x, dt, A, B, C, D, z, dt_bias, init)
        out = [g if t is not None else None for g, t in zip(grads, present)]
        return (*out, None, None, None, None, None)

    return backward


def _backward_outputs(x, dt, A, B, C, D, z, dt_bias, init, dx, ddt32, dA32, dB, dC, dD32, dz, dinit):
    """The backward op's outputs in the inputs' dtypes and shapes; empty tensors for absent inputs."""
    def empty():  # one per absent input: outputs of a custom op may not alias each other
        return x.new_empty((0,))

    ddt_bias = ddt32.sum((0, 1)).to(dt_bias.dtype) if dt_bias is not None else empty()
    if D is not None:
        dD = dD32.to(D.dtype)
    else:
        dD = empty()
    return (dx, ddt32.to(dt.dtype), dA32.to(A.dtype), dB, dC, dD, dz if dz is not None else empty(), ddt_bias,
            dinit if dinit is not None else empty())


# ---- the native op (C++ CPU kernel) ----

if _library.native_available() and hasattr(torch.ops.arkernels, "ssd_chunk_scan"):
    torch.library.register_fake("arkernels::ssd_chunk_scan")(_fake_forward)
    torch.library.register_fake("arkernels::_ssd_chunk_scan_backward")(_fake_backward)
    torch.library.register_autograd(
        "arkernels::ssd_chunk_scan",
        _make_backward(lambda *args: torch.ops.arkernels._ssd_chunk_scan_backward(*args)),
        setup_context=_setup_context,
    )


# ---- the Triton op ----

def _state(s):
    """States as the kernels read them: fp32, contiguous (a gradient of a sum arrives expanded, stride 0)."""
    return None if s is None else s.to(torch.float32).contiguous()


if _backends.triton_available():
    from arkernels.triton_kernels import ssd_chunk_scan as _tk

    @torch.library.triton_op("arkernels::ssd_chunk_scan_triton", mutates_args=())
    def _ssd_chunk_scan_triton(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                               D: torch.Tensor | None, z: torch.Tensor | None, dt_bias: torch.Tensor | None,
                               initial_states: torch.Tensor | None, seq_idx: torch.Tensor | None,
                               cu_seqlens: torch.Tensor | None, dt_softplus: bool, dt_min: float,
                               dt_max: float) -> tuple[torch.Tensor, torch.Tensor]:
        out, final, _ = _tk.ssd_fwd(x, dt, A, B, C, D, z, dt_bias, _state(initial_states), seq_idx, cu_seqlens,
                                    dt_softplus, dt_min, dt_max)
        return out, final

    @torch.library.triton_op("arkernels::_ssd_chunk_scan_triton_backward", mutates_args=())
    def _ssd_chunk_scan_triton_backward(
            grad_out: torch.Tensor, grad_final: torch.Tensor | None, x: torch.Tensor, dt: torch.Tensor,
            A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
            dt_bias: torch.Tensor | None, initial_states: torch.Tensor | None, seq_idx: torch.Tensor | None,
            cu_seqlens: torch.Tensor | None, dt_softplus: bool, dt_min: float, dt_max: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
               torch.Tensor, torch.Tensor]:
        dx, ddt, dA, dB, dC, dD, dz, dinit = _tk.ssd_bwd(grad_out, _state(grad_final), x, dt, A, B, C, D, z, dt_bias,
                                                         _state(initial_states), seq_idx, cu_seqlens, dt_softplus,
                                                         dt_min, dt_max)
        return _backward_outputs(x, dt, A, B, C, D, z, dt_bias, initial_states, dx, ddt, dA, dB, dC, dD, dz, dinit)

    torch.library.register_autograd(
        "arkernels::ssd_chunk_scan_triton",
        _make_backward(lambda *args: torch.ops.arkernels._ssd_chunk_scan_triton_backward(*args)),
        setup_context=_setup_context,
    )
