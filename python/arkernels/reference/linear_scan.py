"""Definition of linear_scan in plain PyTorch: h[t] = a[t] * h[t-1] + b[t] along the last axis.

Two references with the same contract as :func:`arkernels.linear_scan`:

* :func:`linear_scan_ref` walks the sequence step by step (the definition; slow for long T).
* :func:`linear_scan_ref_logdepth` composes affine maps by doubling (Hillis-Steele): log2(T) rounds of
  whole-tensor ops, so it is usable for long sequences and under ``torch.compile``.

Both compute in float32, or in float64 when given float64 inputs (the test oracle), and return the
output in the input dtype and the final state in float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import torch


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _initial(gates: torch.Tensor, initial_state: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    if initial_state is None:
        return gates.new_zeros(gates.shape[:-1], dtype=dtype)
    return initial_state.to(dtype)


def linear_scan_ref(gates, tokens, initial_state=None, *, reverse=False, return_final_state=False):
    """Sequential reference: one step per element of the last axis."""
    dtype = _compute_dtype(gates)
    a, b = gates.to(dtype), tokens.to(dtype)
    h = _initial(gates, initial_state, dtype)
    steps = range(a.shape[-1] - 1, -1, -1) if reverse else range(a.shape[-1])
    outs = [None] * a.shape[-1]
    for t in steps:
        h = a[..., t] * h + b[..., t]
        outs[t] = h
    out = torch.stack(outs, dim=-1) if outs else a.clone()
    out = out.to(gates.dtype)
    return (out, h) if return_final_state else out


def linear_scan_ref_logdepth(gates, tokens, initial_state=None, *, reverse=False, return_final_state=False):
    """Log-depth reference: after round k every position holds the map of the last 2^k steps."""
    dtype = _compute_dtype(gates)
    a, b = gates.to(dtype), tokens.to(dtype)
    if reverse:
        a, b = a.flip(-1), b.flip(-1)
    h0 = _initial(gates, initial_state, dtype)
    # Fold the initial state into the first step: h[0] = a[0] * h0 + b[0].
    if a.shape[-1] > 0:
        b = torch.cat([(a[..., :1] * h0.unsqueeze(-1) + b[..., :1]), b[..., 1:]], dim=-1)
    shift = 1
    while shift < a.shape[-1]:
        # (A, B) at t composed with the map ending at t - shift: earlier map first.
        a_prev = torch.nn.functional.pad(a[..., :-shift], (shift, 0), value=1.0)
        b_prev = torch.nn.functional.pad(b[..., :-shift], (shift, 0), value=0.0)
        a, b = a * a_prev, a * b_prev + b
        shift *= 2
    out = b.flip(-1) if reverse else b
    final = (out[..., 0] if reverse else out[..., -1]) if out.shape[-1] > 0 else h0.clone()  # never alias the input
    out = out.to(gates.dtype)
    return (out, final) if return_final_state else out
