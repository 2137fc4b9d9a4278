"""Definition of selective_state_update (the Mamba decode step) in plain PyTorch.

Both functions have the contract of :func:`arkernels.selective_state_update` and
:func:`arkernels.selective_state_update_tokens`: the state is updated in place and the output returned.
Per channel (h, p), token and state element n::

    dt'  = dt + dt_bias                      (dt_bias optional)
    dt'  = softplus(dt')                     (if dt_softplus; passed through above 20)
    s[n] = s[n] * exp(dt' * A[n]) + B[n] * (dt' * x)
    out  = sum_n s[n] * C[n] + D * x         (D optional)
    out *= silu(z)                           (z optional)

Math in float32 (float64 when the state or x is float64, the test oracle). The state is carried in that
precision across the tokens of one call and rounded to its dtype once at the end, like the kernels;
the multi-token reference is the one-token step applied token after token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _unified(state, x, dt, A, B, C, D, z, dt_bias, tokens: bool):
    """Views (never copies) in one layout for both Mamba versions: state (Bc, H, P, N), x/dt/z (b, k, H, P),
    A (H, P, N), B/C (b, k, G, N), D/dt_bias (H, P). Mamba-1 is H = 1, P = dim."""
    mamba2 = state.dim() == 4
    lead = 2 if tokens else 1

    def bkhp(t):
        if t is None:
            return None
        if not tokens:
            t = t.unsqueeze(1)
        return t if mamba2 else t.unsqueeze(2)

    def bkgn(t):
        if t.dim() == lead + 1:  # no group axis
            t = t.unsqueeze(-2)
        return t if tokens else t.unsqueeze(1)

    def chan(t):
        if t is None:
            return None
        return t if mamba2 else t.unsqueeze(0)

    st = state if mamba2 else state.unsqueeze(1)
    return st, bkhp(x), bkhp(dt), chan(A), bkgn(B), bkgn(C), chan(D), bkhp(z), chan(dt_bias)


def selective_state_step(s, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One token for rows r of the unified layout, out of place: s (r, H, P, N); x, dt, z (r, H, P);
    B, C (r, G, N); A (H, P, N); D, dt_bias (H, P). Returns (new s, out (r, H, P)) in the inputs' dtype."""
    r, H, P, N = s.shape
    G = B.shape[1]
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = F.softplus(dt)  # beta 1, threshold 20: x itself above 20
    # Channel c = h * P + p reads group c // (H * P / G).
    per_group = (H * P) // G if G else 0
    Bc = B.repeat_interleave(per_group, dim=1).reshape(r, H, P, N)
    Cc = C.repeat_interleave(per_group, dim=1).reshape(r, H, P, N)
    s = s * torch.exp(dt[..., None] * A) + Bc * (dt * x)[..., None]
    out = (s * Cc).sum(-1)
    if D is not None:
        out = out + D * x
    if z is not None:
        out = out * F.silu(z)
    return s, out


def _run(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, intermediate_states, tokens):
    st, x4, dt4, A3, B4, C4, D2, z4, bias2 = _unified(state, x, dt, A, B, C, D, z, dt_bias, tokens)
    cd = torch.float64 if torch.float64 in (state.dtype, x.dtype) else torch.float32
    b, k = x4.shape[:2]
    out = torch.zeros(x4.shape, dtype=cd, device=x.device)  # padding rows stay 0
    if state_batch_indices is None:
        rows = torch.arange(b, device=x.device)
        srows = rows
    else:
        idx = state_batch_indices.to(torch.int64)
        # Negative: padding. >= Bc: skipped with NaN outputs, as the CUDA kernel does (the public op
        # rejects such indices on the CPU before anything runs).
        out[idx >= st.shape[0]] = float("nan")
        rows = ((idx >= 0) & (idx < st.shape[0])).nonzero().squeeze(1)
        srows = idx[rows]
    inter = None
    if intermediate_states is not None:
        inter = intermediate_states if state.dim() == 4 else intermediate_states.unsqueeze(2)
    params = [None if t is None else t.to(cd) for t in (A3, D2, bias2)]
    s = st[srows].to(cd)
    for t in range(k):
        s, y = selective_state_step(
            s, x4[rows, t].to(cd), dt4[rows, t].to(cd), params[0], B4[rows, t].to(cd), C4[rows, t].to(cd),
            params[1], None if z4 is None else z4[rows, t].to(cd), params[2], dt_softplus)
        out[rows, t] = y
        if inter is not None:
            inter[rows, t] = s.to(inter.dtype)
    if k > 0:
        st[srows] = s.to(state.dtype)  # index_put_ on a view: writes into `state`
    return out.to(x.dtype).reshape(x.shape)


def selective_state_update_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                               state_batch_indices=None):
    """One decode step; updates `state` in place, returns out (the shape and dtype of x)."""
    return _run(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, None, tokens=False)


def selective_state_update_tokens_ref(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                                      state_batch_indices=None, intermediate_states=None):
    """k decode steps (x with a token axis after the batch axis); updates `state` in place, writes the
    state after each token to `intermediate_states` when given, returns out (the shape and dtype of x)."""
    return _run(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, intermediate_states,
                tokens=True)
