"""Definition of causal_conv1d and causal_conv1d_update in plain PyTorch.

Per channel c of x (batch, dim, L), with width W = weight.shape[1]:

    out[b, c, t] = act(bias[c] + sum_k weight[c, k] * xpad[b, c, t + k])

where xpad = cat(initial_states (zeros if None), x) along time (length L + W - 1) and act is the
identity or silu. The final states are xpad[..., L:], the last W - 1 entries of the padded sequence.
Without initial states this is ``F.conv1d(x, weight.unsqueeze(1), bias, padding=W - 1, groups=dim)[..., :L]``
(tests/ops/test_causal_conv1d.py checks that).

Both functions compute in float32, or in float64 when x is float64 (the test oracle), and return
tensors in x's dtype. They are differentiable by autograd (the update mutates its state and is not).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _activation(v: torch.Tensor, activation) -> torch.Tensor:
    return F.silu(v) if activation in ("silu", "swish") else v


def _depthwise(xpad: torch.Tensor, weight: torch.Tensor, bias, n_out: int) -> torch.Tensor:
    """bias[c] + sum_k weight[c, k] * xpad[..., c, t + k] for t < n_out, summed in the kernels' order.
    Written as W shifted multiply-adds rather than F.conv1d: exact in float64, fused by torch.compile,
    and free of the per-shape set-up cost that F.conv1d has on the CPU (~0.5 s per new shape)."""
    acc = xpad.new_zeros(xpad.shape[:-1] + (n_out,)) if bias is None else bias[:, None].expand(xpad.shape[:-1] + (n_out,))
    for k in range(weight.shape[1]):
        acc = acc + weight[:, k, None] * xpad[..., k:k + n_out]
    return acc


def causal_conv1d_ref(x, weight, bias=None, initial_states=None, return_final_states=False, activation=None):
    """Reference of :func:`arkernels.causal_conv1d` (same arguments, no backend)."""
    dtype = _compute_dtype(x)
    batch, dim, L = x.shape
    width = weight.shape[1]
    xc = x.to(dtype)
    if initial_states is None:
        pad = xc.new_zeros((batch, dim, width - 1))
    else:
        pad = initial_states.to(dtype)
    xpad = torch.cat([pad, xc], dim=-1)
    b = None if bias is None else bias.to(dtype)
    out = _activation(_depthwise(xpad, weight.to(dtype), b, L), activation).to(x.dtype)
    if not return_final_states:
        return out
    return out, xpad[..., L:].to(x.dtype)  # xpad is a new tensor (cat): never an alias of an input


def causal_conv1d_update_ref(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                             conv_state_indices=None):
    """Reference of :func:`arkernels.causal_conv1d_update`: updates ``conv_state`` in place and returns
    the outputs of the new tokens (shape of x)."""
    squeeze = x.dim() == 2
    x3 = x.unsqueeze(-1) if squeeze else x
    batch, dim, k = x3.shape
    n_state, _, state_len = conv_state.shape
    width = weight.shape[1]
    dtype = _compute_dtype(x)
    if conv_state_indices is None:
        rows = torch.arange(batch, device=x.device)
    else:
        rows = conv_state_indices.to(device=x.device, dtype=torch.long)
    valid = (rows >= 0) & (rows < n_state)
    out = x3.new_zeros((batch, dim, k))
    sel = valid.nonzero().flatten()
    if sel.numel() and k:
        r = rows[sel]
        state = conv_state[r].to(dtype)  # (n, dim, state_len), oldest first after un-rolling below
        steps = torch.arange(state_len, device=x.device)
        if cache_seqlens is not None:
            # Circular buffer: the oldest entry sits at cache_seqlens mod state_len.
            q0 = cache_seqlens.to(device=x.device, dtype=torch.long)[sel].remainder(state_len)
            order = (q0[:, None] + steps[None, :]).remainder(state_len)  # logical -> physical
            state = state.gather(-1, order[:, None, :].expand(-1, dim, -1))
        seq = torch.cat([state, x3[sel].to(dtype)], dim=-1)  # (n, dim, state_len + k)
        window = seq[..., state_len - (width - 1):]
        b = None if bias is None else bias.to(dtype)
        out[sel] = _activation(_depthwise(window, weight.to(dtype), b, k), activation).to(x.dtype)
        new_state = seq[..., -state_len:]
        if cache_seqlens is not None:
            # Logical entry j of the new state lives at (q0 + k + j) mod state_len.
            order = (q0[:, None] + k + steps[None, :]).remainder(state_len)
            physical = torch.empty_like(new_state)
            physical.scatter_(-1, order[:, None, :].expand(-1, dim, -1), new_state)
            new_state = physical
        conv_state[r] = new_state.to(conv_state.dtype)
    return out.squeeze(-1) if squeeze else out
