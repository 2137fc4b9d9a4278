"""Definition of selective_scan (Mamba-1's S6 scan) in plain PyTorch.

Per batch b, channel d and state n, with dl = softplus(delta + delta_bias) (or delta + delta_bias):

    h[t, n] = exp(dl[t] * A[d, n]) * h[t-1, n] + dl[t] * u[t] * B[t, n]
    y[t]    = sum_n C[t, n] * h[t, n] + D[d] * u[t]
    out[t]  = y[t] * silu(z[t])            (when z is given)

B and C are constant (dim, N), input-dependent (batch, N, L) or grouped (batch, G, N, L) with the
channels split into G equal groups. h[-1] is `initial_state` (zeros when absent). With `cu_seqlens`
(batch 1), the sequence axis holds packed sequences: the state restarts at each boundary, and the
initial and last states are per sequence.

The math runs in float32 (float64 when u is float64: the test oracle); out has u's dtype and the
last state is float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from arkernels.reference.linear_scan import linear_scan_ref_logdepth


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def expand_bc(x: torch.Tensor, dim: int, compute: torch.dtype) -> tuple[torch.Tensor, bool]:
    """B or C as (batch, dim, N, L) (variable) or (dim, N) (constant), in the compute dtype."""
    x = x.to(compute)
    if x.dim() == 2:
        return x, False
    if x.dim() == 3:  # (batch, N, L): one group
        x = x.unsqueeze(1)
    groups = x.shape[1]
    return x.repeat_interleave(dim // groups, dim=1), True


def processed_delta(delta, delta_bias, delta_softplus, compute):
    dl = delta.to(compute)
    if delta_bias is not None:
        dl = dl + delta_bias.to(compute)[:, None]
    return F.softplus(dl) if delta_softplus else dl  # F.softplus passes x through above 20, like the kernels


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, *, initial_state=None, cu_seqlens=None):
    """Same contract as :func:`arkernels.selective_scan` (arguments already validated).

    Materialises the per-state decays a = exp(dl A) and inputs b = dl u B as (batch, dim, N, L) and
    runs the first-order recurrence h = a h + b with linear_scan_ref_logdepth (log2(L) rounds of
    whole-tensor ops, so the reference is usable at long L and differentiable by autograd). Packed
    sequences restart by a zero decay at each sequence's first step, whose input then carries that
    sequence's initial state.
    """
    compute = _compute_dtype(u)
    batch, dim, L = u.shape
    N = A.shape[1]
    uc = u.to(compute)
    dl = processed_delta(delta, delta_bias, delta_softplus, compute)
    Bc, b_var = expand_bc(B, dim, compute)
    Cc, c_var = expand_bc(C, dim, compute)
    a = torch.exp(dl[:, :, None, :] * A.to(compute)[None, :, :, None])            # (batch, dim, N, L)
    b = (dl * uc)[:, :, None, :] * (Bc if b_var else Bc[None, :, :, None])
    h0 = initial_state.to(compute) if initial_state is not None else None
    if cu_seqlens is None:
        h, last = linear_scan_ref_logdepth(a, b, h0, return_final_state=True)
    else:
        h, last = _packed_scan(a, b, h0, cu_seqlens.to(device=u.device, dtype=torch.int64), dim, N)
    y = (h * (Cc if c_var else Cc[None, :, :, None])).sum(2)
    if D is not None:
        y = y + D.to(compute)[:, None] * uc
    if z is not None:
        y = y * F.silu(z.to(compute))
    out = y.to(u.dtype)
    return (out, last) if return_last_state else out


def _packed_scan(a, b, h0, cu, dim, N):
    """h = a h + b over packed sequences (batch 1): restarts at each boundary; per-sequence last states."""
    L = a.shape[-1]
    n_seq = cu.numel() - 1
    steps = torch.arange(L, device=a.device)
    seq_of_step = torch.bucketize(steps, cu[1:], right=True)                     # sequence holding step t
    is_start = steps == cu[seq_of_step]
    if h0 is None:
        h0 = a.new_zeros(n_seq, dim, N)
    carried = h0[seq_of_step].permute(1, 2, 0).unsqueeze(0)                      # (1, dim, N, L)
    b = b + torch.where(is_start, a * carried, torch.zeros_like(a))
    a = torch.where(is_start, torch.zeros_like(a), a)
    h = linear_scan_ref_logdepth(a, b)
    lengths = cu[1:] - cu[:-1]
    at_end = h[0][..., (cu[1:] - 1).clamp(min=0)].permute(2, 0, 1)               # (n_seq, dim, N)
    last = torch.where((lengths > 0)[:, None, None], at_end, h0)
    return h, last
