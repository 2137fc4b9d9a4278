"""arkernels.linear_scan: the first-order linear recurrence h[t] = a[t] * h[t-1] + b[t].

Backends: "cuda" and "cpu" run torch op ``arkernels::linear_scan`` (C++/CUDA, csrc/torch/linear_scan.cpp),
"triton" runs ``arkernels::linear_scan_triton`` (triton_kernels/linear_scan.py), "reference" the
pure-PyTorch definition. Both torch ops have fake kernels and autograd registered here, so they work
under torch.compile(fullgraph=True) and pass torch.library.opcheck.
"""
from __future__ import annotations

import torch

from arkernels import _library
from arkernels.ops import _backends
from arkernels.ops._checks import (
    check_bool,
    check_choice,
    check_same_device,
    check_same_dtype,
    check_same_shape,
    check_shape,
    check_tensor,
)
from arkernels.reference.linear_scan import linear_scan_ref_logdepth

# Fastest first, per device type (bench/results: CUDA beats Triton on the H100 at every shape measured).
_PREFERENCE = {"cuda": ("cuda", "triton"), "cpu": ("cpu",)}


def linear_scan(gates, tokens, initial_state=None, *, reverse=False, return_final_state=False, backend="auto"):
    """Scan h[t] = gates[t] * h[t-1] + tokens[t] along the last dimension.

    Args:
        gates, tokens: (..., T) tensors of the same shape and dtype (float32, float16 or bfloat16),
            on one device. With (B, C, T) inputs this is a drop-in for ``accelerated_scan.scan``.
        initial_state: optional (...) tensor, h[-1]; any floating dtype (used in float32).
        reverse: scan from the end: h[t] = gates[t] * h[t+1] + tokens[t], and the final state is h[0].
        return_final_state: also return the state after the last step, float32, shape (...).
        backend: "auto", "cuda", "triton", "cpu" or "reference".

    Returns:
        The states h, shape and dtype of ``gates`` (accumulated in float32), and the final state if
        asked. Gradients flow to gates, tokens and initial_state, also through the final state.
    """
    check_tensor("gates", gates, min_dim=1)
    check_tensor("tokens", tokens)
    check_same_dtype("gates", gates, "tokens", tokens)
    check_same_shape("gates", gates, "tokens", tokens)
    check_same_device("gates", gates, "tokens", tokens)
    if initial_state is not None:
        check_tensor("initial_state", initial_state, dtypes=(torch.float32, torch.float16, torch.bfloat16, torch.float64))
        check_shape("initial_state", initial_state, gates.shape[:-1])
        check_same_device("gates", gates, "initial_state", initial_state)
    check_bool("reverse", reverse)
    check_bool("return_final_state", return_final_state)
    check_choice("backend", backend, _backends.BACKENDS)
    chosen = _backends.resolve("linear_scan", backend, gates.device, _PREFERENCE.get(gates.device.type, ()))

    if chosen == "reference":
        out, final = linear_scan_ref_logdepth(gates, tokens, initial_state, reverse=reverse, return_final_state=True)
    elif chosen == "triton":
        out, final = torch.ops.arkernels.linear_scan_triton(gates, tokens, initial_state, reverse)
    else:
        out, final = torch.ops.arkernels.linear_scan(gates, tokens, initial_state, reverse)
    return (out, final) if return_final_state else out


# ---- fake kernels and autograd, shared by the native and the Triton op ----

def _fake_forward(gates, tokens, initial_state=None, reverse=False):
    # Defaults as in the schema: the dispatcher drops arguments that are at their default.
    return gates.new_empty(gates.shape), gates.new_empty(gates.shape[:-1], dtype=torch.float32)


def _fake_backward(gates, out, grad_out, grad_final_state, initial_state, reverse):
    return (gates.new_empty(gates.shape), gates.new_empty(gates.shape),
            gates.new_empty(gates.shape[:-1], dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    gates, _tokens, initial_state, reverse = inputs
    out, _final = output
    ctx.save_for_backward(gates, out, initial_state)
    ctx.reverse = reverse
    # An unused final state (the common case) then reaches the backward as None, not as a zero-filled
    # tensor that costs an allocation and a kernel launch per call.
    ctx.set_materialize_grads(False)


def _make_backward(backward_op):
    def backward(ctx, grad_out, grad_final_state):
        gates, out, initial_state = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        grad_gates, grad_tokens, grad_h0 = backward_op(gates, out, grad_out.to(out.dtype), grad_final_state,
                                                       initial_state, ctx.reverse)
        grad_initial = grad_h0.to(initial_state.dtype) if initial_state is not None else None
        return grad_gates, grad_tokens, grad_initial, None

    return backward


# ---- the native op (C++ CPU kernel / CUDA kernel) ----

if _library.native_available():
    torch.library.register_fake("arkernels::linear_scan")(_fake_forward)
    torch.library.register_fake("arkernels::_linear_scan_backward")(_fake_backward)
    torch.library.register_autograd(
        "arkernels::linear_scan",
        _make_backward(lambda *args: torch.ops.arkernels._linear_scan_backward(*args)),
        setup_context=_setup_context,
    )


# ---- the Triton op ----

def _leading(x: torch.Tensor) -> int:
    n = 1
    for s in x.shape[:-1]:
        n *= s
    return n


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(rows, T) view of a (..., T) tensor with unit time stride, copying only when no view exists."""
    rows = x.reshape(_leading(x), x.shape[-1])
    if rows.shape[1] > 1 and rows.stride(1) != 1:
        rows = rows.contiguous()
    return rows


def _state_f32(x):
    return None if x is None else x.reshape(-1).to(torch.float32).contiguous()


if _backends.triton_available():
    from arkernels.triton_kernels import linear_scan as _tk

    @torch.library.triton_op("arkernels::linear_scan_triton", mutates_args=())
    def _linear_scan_triton(gates: torch.Tensor, tokens: torch.Tensor, initial_state: torch.Tensor | None,
                            reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        h, h_last = _tk.linear_scan_fwd(_rows(gates), _rows(tokens), _state_f32(initial_state), reverse)
        return h.view(gates.shape), h_last.view(gates.shape[:-1])

    @torch.library.triton_op("arkernels::_linear_scan_triton_backward", mutates_args=())
    def _linear_scan_triton_backward(gates: torch.Tensor, out: torch.Tensor, grad_out: torch.Tensor,
                                     grad_final_state: torch.Tensor | None, initial_state: torch.Tensor | None,
                                     reverse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        da, db, dh0 = _tk.linear_scan_bwd(_rows(gates), _rows(out), _rows(grad_out), _state_f32(initial_state),
                                          _state_f32(grad_final_state), reverse)
        return da.view(gates.shape), db.view(gates.shape), dh0.view(gates.shape[:-1])

    torch.library.register_autograd(
        "arkernels::linear_scan_triton",
        _make_backward(lambda *args: torch.ops.arkernels._linear_scan_triton_backward(*args)),
        setup_context=_setup_context,
    )
