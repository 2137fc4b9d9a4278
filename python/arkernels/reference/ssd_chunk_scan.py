"""Definition of ssd_chunk_scan (the Mamba-2 SSD scan) in plain PyTorch.

Per batch row b and head hh (group gg = hh // (h / g)), with dt already processed (+ dt_bias,
softplus, clamp to dt_limit):

    a_t = exp(dt_t * A[hh])
    S_t = a_t * S_{t-1} + dt_t * x_t B_t^T          (S is p x n; S_{-1} = initial state or 0)
    y_t = S_t C_t + D x_t,    out_t = y_t * silu(z_t)

The state is reset to zero at every sequence boundary: where seq_idx changes from one token to the
next, or at every cu_seqlens boundary. Two references with the same contract as
:func:`arkernels.ssd_chunk_scan`:

* :func:`ssd_chunk_scan_ref` walks the tokens one by one (the definition; the test oracle in float64).
* :func:`ssd_chunk_scan_chunked_ref` is the chunked matmul form (intra-chunk attention-like products
  plus a state passed between chunks), fast enough for benchmarks and long test sequences.

Both compute in float32, or in float64 when x is float64, and return the output in x's dtype and the
final states in float32 (float64 for float64 inputs).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def process_dt(dt, dt_bias, dt_softplus: bool, dt_limit) -> torch.Tensor:
    """dt + dt_bias, softplus (identity above 20, as torch's softplus threshold), clamped to dt_limit."""
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)  # beta 1, threshold 20: x itself above 20
    return dt.clamp(dt_limit[0], dt_limit[1])


def _sequences(cu_seqlens) -> list[tuple[int, int]]:
    cu = [int(v) for v in cu_seqlens.tolist()]
    return list(zip(cu[:-1], cu[1:]))


def _segments_from_seq_idx(seq_idx: torch.Tensor) -> torch.Tensor:
    """(b, l) segment counter: +1 wherever seq_idx differs from the previous token's (0 at t = 0)."""
    change = torch.zeros_like(seq_idx, dtype=torch.long)
    if seq_idx.shape[1] > 1:
        change[:, 1:] = (seq_idx[:, 1:] != seq_idx[:, :-1]).long()
    return change.cumsum(1)


def _per_sequence_initial(initial_states, num_seqs, shape, dtype, device):
    """Initial states of every sequence of a cu_seqlens batch: (num_seqs, h, p, n), or (1, h, p, n) for
    the first sequence only (the state before token 0 of the row, later sequences start from zero)."""
    if initial_states is None:
        return None
    init = initial_states.to(dtype)
    if init.shape[0] == num_seqs:
        return init
    pad = torch.zeros((num_seqs - 1, *shape), dtype=dtype, device=device)
    return torch.cat([init, pad], dim=0)


def _prepare(x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit):
    cdt = _compute_dtype(x)
    h = x.shape[2]
    heads_per_group = h // B.shape[2]
    xs = x.to(cdt)
    dts = process_dt(dt.to(cdt), None if dt_bias is None else dt_bias.to(cdt), dt_softplus, dt_limit)
    As = A.to(cdt)
    Bs = B.to(cdt).repeat_interleave(heads_per_group, dim=2)  # (b, l, h, n)
    Cs = C.to(cdt).repeat_interleave(heads_per_group, dim=2)
    return cdt, xs, dts, As, Bs, Cs


def _finish(y, x, D, z, cdt):
    if D is not None:
        Dc = D.to(cdt)
        y = y + x.to(cdt) * (Dc[:, None] if Dc.dim() == 1 else Dc)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(x.dtype)


# --------------------------------------------------------------------------- sequential

def ssd_chunk_scan_ref(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None,
                       cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, float("inf")), return_final_states=False):
    """Sequential reference: one token at a time. Arguments as :func:`arkernels.ssd_chunk_scan`
    (no chunk_size: there are no chunks here)."""
    bsz, L, h, p = x.shape
    n = B.shape[-1]
    cdt, xs, dts, As, Bs, Cs = _prepare(x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit)
    dev = x.device
    zero = torch.zeros((bsz, h, p, n), dtype=cdt, device=dev)

    # starts[t]: (b,) bool, the state is (re)set before token t; start_state[t]: what it is set to.
    if cu_seqlens is not None:
        seqs = _sequences(cu_seqlens)
        init = _per_sequence_initial(initial_states, len(seqs), (h, p, n), cdt, dev)
        starts = {s: k for k, (s, e) in enumerate(seqs) if e > s}
        ends = {e - 1: k for k, (s, e) in enumerate(seqs) if e > s}
        finals = [None] * len(seqs)
        for k, (s, e) in enumerate(seqs):
            if e == s:  # an empty sequence ends in its initial state
                finals[k] = init[k] if init is not None else zero[0]
    else:
        seg = _segments_from_seq_idx(seq_idx) if seq_idx is not None else None
        init = initial_states.to(cdt) if initial_states is not None else zero

    S = zero if cu_seqlens is not None or initial_states is None else init
    ys = []
    for t in range(L):
        if cu_seqlens is not None:
            if t in starts:
                k = starts[t]
                S = init[k][None] if init is not None else zero
        elif seg is not None and t > 0:
            reset = (seg[:, t] != seg[:, t - 1])[:, None, None, None]
            S = torch.where(reset, zero, S)
        a = torch.exp(dts[:, t] * As)  # (b, h)
        upd = (dts[:, t, :, None, None] * xs[:, t, :, :, None]) * Bs[:, t, :, None, :]
        S = a[:, :, None, None] * S + upd
        ys.append(torch.einsum("bhpn,bhn->bhp", S, Cs[:, t]))
        if cu_seqlens is not None and t in ends:
            finals[ends[t]] = S[0]
    y = torch.stack(ys, dim=1) if ys else xs.new_zeros((bsz, 0, h, p))
    out = _finish(y, x, D, z, cdt)
    if not return_final_states:
        return out
    if cu_seqlens is not None:
        final = torch.stack(finals, dim=0) if finals else zero[:0]
    else:
        final = S if L > 0 else init.clone()
    return out, final


# --------------------------------------------------------------------------- chunked

def _chunked_rows(xs, dts, As, Bs, Cs, S0, seg, Q):
    """The chunked form on rows (b, L, h, *) already in the compute dtype; seg (b, L) segment ids or
    None; S0 (b, h, p, n). Returns y (b, L, h, p) without the D and z terms, and the final state."""
    bsz, L, h, p = xs.shape
    n = Bs.shape[-1]
    nc = -(-L // Q)
    if nc == 0:
        return xs.new_zeros((bsz, 0, h, p)), S0
    pad = nc * Q - L
    if pad:
        # dt = 0 past the end: decay 1 and no contribution, so the last chunk's state is the final one.
        xs, Bs, Cs = (F.pad(v, (0, 0, 0, 0, 0, pad)) for v in (xs, Bs, Cs))
        dts = F.pad(dts, (0, 0, 0, pad))
        if seg is not None:
            seg = torch.cat([seg, seg[:, -1:].expand(bsz, pad)], dim=1)
    x = xs.view(bsz, nc, Q, h, p)
    dtc = dts.view(bsz, nc, Q, h)
    Bc = Bs.view(bsz, nc, Q, h, n)
    Cc = Cs.view(bsz, nc, Q, h, n)
    cs = torch.cumsum(dtc * As, dim=2)  # (b, nc, Q, h)
    cs_last = cs[:, :, -1:, :]
    causal = torch.ones(Q, Q, dtype=torch.bool, device=xs.device).tril()
    if seg is None:
        mask = causal.view(1, 1, Q, Q)
        first_seg = last_seg = None
    else:
        sg = seg.view(bsz, nc, Q)
        prev = torch.cat([sg[:, :1, :1], sg[:, :-1, -1:]], dim=1)  # segment of the token before the chunk
        mask = causal & (sg[..., :, None] == sg[..., None, :])  # (b, nc, Q, Q)
        first_seg = (sg == prev).to(xs.dtype)  # the token still sees the state from before the chunk
        last_seg = (sg == sg[..., -1:]).to(xs.dtype)  # the token reaches the state after the chunk
    # decay from s to t inside a chunk; -inf before exp where masked (an exp that overflows in the
    # masked half would give 0 * inf = nan in the backward)
    diff = cs[:, :, :, None, :] - cs[:, :, None, :, :]  # (b, nc, t, s, h)
    decay = torch.exp(diff.masked_fill(~mask[..., None], float("-inf")))
    CB = torch.einsum("bcthn,bcshn->bctsh", Cc, Bc)
    y = torch.einsum("bctsh,bcsh,bcshp->bcthp", CB * decay, dtc, x)

    g = torch.exp(cs)  # (b, nc, Q, h): decay from the chunk start to t
    w = torch.exp(cs_last - cs) * dtc  # weight of token s in the state after the chunk
    gamma = torch.exp(cs_last[:, :, 0, :])  # (b, nc, h)
    if seg is not None:
        g = g * first_seg[..., None]
        w = w * last_seg[..., None]
        gamma = gamma * first_seg[:, :, -1:]  # 0 when a reset happened inside the chunk
    new = torch.einsum("bcsh,bcshn,bcshp->bchpn", w, Bc, x)
    S = S0
    ys = []
    for c in range(nc):
        ys.append(torch.einsum("bthn,bhpn->bthp", Cc[:, c], S) * g[:, c, :, :, None])
        S = gamma[:, c, :, None, None] * S + new[:, c]
    y = y + torch.stack(ys, dim=1)
    return y.reshape(bsz, nc * Q, h, p)[:, :L], S


def ssd_chunk_scan_chunked_ref(x, dt, A, B, C, chunk_size=256, D=None, z=None, dt_bias=None, initial_states=None,
                               seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
                               return_final_states=False):
    """Chunked (matmul-form) reference with chunks of `chunk_size` tokens; same results as
    :func:`ssd_chunk_scan_ref` up to rounding. Arguments as :func:`arkernels.ssd_chunk_scan`."""
    bsz, L, h, p = x.shape
    n = B.shape[-1]
    cdt, xs, dts, As, Bs, Cs = _prepare(x, dt, A, B, C, D, z, dt_bias, dt_softplus, dt_limit)
    zero = torch.zeros((bsz, h, p, n), dtype=cdt, device=x.device)
    if cu_seqlens is None:
        seg = _segments_from_seq_idx(seq_idx) if seq_idx is not None else None
        S0 = initial_states.to(cdt) if initial_states is not None else zero
        y, final = _chunked_rows(xs, dts, As, Bs, Cs, S0, seg, chunk_size)
    else:
        # Every sequence separately: no masks, and its final state is where its own scan ends.
        seqs = _sequences(cu_seqlens)
        init = _per_sequence_initial(initial_states, len(seqs), (h, p, n), cdt, x.device)
        parts, finals = [], []
        for k, (s, e) in enumerate(seqs):
            S0 = init[k:k + 1] if init is not None else zero
            if e == s:
                finals.append(S0[0])
                continue
            y_k, f_k = _chunked_rows(xs[:, s:e], dts[:, s:e], As, Bs[:, s:e], Cs[:, s:e], S0, None, chunk_size)
            parts.append(y_k)
            finals.append(f_k[0])
        y = torch.cat(parts, dim=1) if parts else xs.new_zeros((bsz, 0, h, p))
        final = torch.stack(finals, dim=0) if finals else zero[:0]
    out = _finish(y, x, D, z, cdt)
    return (out, final) if return_final_states else out
