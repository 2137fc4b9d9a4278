"""Triton kernels of linear_scan: h[t] = a[t] * h[t-1] + b[t] along the last axis of (rows, T).

One program owns BLOCK_R rows and walks them in tiles of BLOCK_T steps; inside a tile the affine
maps (a, b) are composed by ``tl.associative_scan`` and the tile's last state is carried into the
next tile in fp32. The backward pass is the same scan run against the forward direction with the
next step's gate (see docs/ops/linear_scan.md). Launchers allocate outputs and pick the grid.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from arkernels._outputs import new_output

# Launches go through wrap_triton so that torch.compile and the fake-tensor tracing of the
# triton_op in ops/linear_scan.py see the kernel instead of calling it on fake tensors.
wrap_triton = torch.library.wrap_triton


@triton.jit
def _compose(a_prev, b_prev, a_next, b_next):
    # Apply the earlier map first: h -> a_next * (a_prev * h + b_prev) + b_next.
    return a_prev * a_next, a_next * b_prev + b_next


@triton.jit
def _tile_scan(b_gate, b_token, b_carry, REVERSE: tl.constexpr, BLOCK_T: tl.constexpr):
    """States of one (BLOCK_R, BLOCK_T) tile from the carried state, and the carry for the next tile."""
    b_A, b_B = tl.associative_scan((b_gate, b_token), axis=1, combine_fn=_compose, reverse=REVERSE)
    b_h = b_A * b_carry[:, None] + b_B
    i_edge = 0 if REVERSE else BLOCK_T - 1  # the tile's last step in scan order
    cols = tl.arange(0, BLOCK_T)
    b_next = tl.sum(tl.where(cols[None, :] == i_edge, b_h, 0.0), axis=1)
    return b_h, b_next


@triton.jit
def _linear_scan_fwd_kernel(
    p_a, p_b, p_h0, p_h, p_h_last,
    rows, T, stride_a, stride_b, stride_h,
    HAS_H0: tl.constexpr, REVERSE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
):
    i_r = tl.program_id(0)
    r = (i_r * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    m_r = r < rows
    b_carry = tl.zeros([BLOCK_R], dtype=tl.float32)
    if HAS_H0:
        b_carry = tl.load(p_h0 + r, mask=m_r, other=0.0)
    n_tiles = tl.cdiv(T, BLOCK_T)
    for i in range(0, n_tiles):
        i_t = i
        if REVERSE:
            i_t = n_tiles - 1 - i
        t = (i_t * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
        m = m_r[:, None] & (t < T)[None, :]
        b_gate = tl.load(p_a + r[:, None] * stride_a + t[None, :], mask=m, other=1.0).to(tl.float32)
        b_token = tl.load(p_b + r[:, None] * stride_b + t[None, :], mask=m, other=0.0).to(tl.float32)
        b_h, b_carry = _tile_scan(b_gate, b_token, b_carry, REVERSE, BLOCK_T)
        tl.store(p_h + r[:, None] * stride_h + t[None, :], b_h.to(p_h.dtype.element_ty), mask=m)
    tl.store(p_h_last + r, b_carry, mask=m_r)


@triton.jit
def _linear_scan_bwd_kernel(
    p_a, p_h, p_g, p_h0, p_g_last, p_da, p_db, p_dh0,
    rows, T, stride_a, stride_h, stride_g,
    HAS_H0: tl.constexpr, HAS_G_LAST: tl.constexpr, REVERSE: tl.constexpr,
    STEP: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
):
    # In memory the next forward step of t is t + STEP and the previous one t - STEP (STEP = -1
    # when REVERSE); the gradient scan runs against the forward scan.
    i_r = tl.program_id(0)
    r = (i_r * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    m_r = r < rows
    b_h0 = tl.zeros([BLOCK_R], dtype=tl.float32)
    if HAS_H0:
        b_h0 = tl.load(p_h0 + r, mask=m_r, other=0.0)
    b_carry = tl.zeros([BLOCK_R], dtype=tl.float32)
    if HAS_G_LAST:
        b_carry = tl.load(p_g_last + r, mask=m_r, other=0.0)
    first_t = 0  # memory position of the first forward step
    if REVERSE:
        first_t = T - 1
    n_tiles = tl.cdiv(T, BLOCK_T)
    for i in range(0, n_tiles):
        i_t = n_tiles - 1 - i
        if REVERSE:
            i_t = i
        t = (i_t * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
        m = m_r[:, None] & (t < T)[None, :]
        t_next, t_prev = t + STEP, t - STEP
        m_next = m & ((t_next >= 0) & (t_next < T))[None, :]
        m_prev = m & ((t_prev >= 0) & (t_prev < T))[None, :]
        b_g = tl.load(p_g + r[:, None] * stride_g + t[None, :], mask=m, other=0.0).to(tl.float32)
        b_gate = tl.load(p_a + r[:, None] * stride_a + t_next[None, :], mask=m_next, other=1.0).to(tl.float32)
        b_h_prev = tl.load(p_h + r[:, None] * stride_h + t_prev[None, :], mask=m_prev, other=0.0).to(tl.float32)
        b_h_prev = tl.where((t == first_t)[None, :], b_h0[:, None], b_h_prev)
        b_dh, b_carry = _tile_scan(b_gate, b_g, b_carry, STEP == 1, BLOCK_T)
        p_out = r[:, None] * T + t[None, :]
        tl.store(p_da + p_out, (b_h_prev * b_dh).to(p_da.dtype.element_ty), mask=m)
        tl.store(p_db + p_out, b_dh.to(p_db.dtype.element_ty), mask=m)
    # b_carry is now dh at the first forward step; the initial state saw it through that step's gate.
    b_a_first = tl.load(p_a + r * stride_a + first_t, mask=m_r & (T > 0), other=1.0).to(tl.float32)
    tl.store(p_dh0 + r, b_a_first * b_carry, mask=m_r)


def _blocks(T: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_T, num_warps): long rows get wide tiles, short rows share a program."""
    block_t = min(1024, max(16, triton.next_power_of_2(max(T, 1))))
    block_r = max(1, min(16, 1024 // block_t))
    return block_r, block_t, 4


def _row_stride(x: torch.Tensor) -> int:
    return x.stride(0) if x.shape[0] > 1 else x.shape[1]


# Positions inside a row are int32 in these kernels (row offsets are int64).
MAX_T = 2**31 - 4096


def _check_length(T: int) -> None:
    if T > MAX_T:
        raise ValueError(f"gates: the triton backend takes sequences of at most {MAX_T} steps, got T={T}")


def linear_scan_fwd(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None, reverse: bool):
    """a, b: (rows, T) with unit time stride; h0: (rows,) fp32 or None. Returns (h, h_last fp32)."""
    rows, T = a.shape
    _check_length(T)
    h = new_output((rows, T), dtype=a.dtype, device=a.device)
    h_last = new_output((rows,), dtype=torch.float32, device=a.device)
    if rows == 0:
        return h, h_last
    block_r, block_t, warps = _blocks(T)
    grid = (triton.cdiv(rows, block_r),)
    wrap_triton(_linear_scan_fwd_kernel)[grid](
        a, b, h0 if h0 is not None else h_last, h, h_last,
        rows, T, _row_stride(a), _row_stride(b), T,
        HAS_H0=h0 is not None, REVERSE=reverse, BLOCK_R=block_r, BLOCK_T=block_t, num_warps=warps,
    )
    return h, h_last


def linear_scan_bwd(a, h, g, h0, g_last, reverse: bool):
    """Gradients (da, db, dh0 fp32) of linear_scan_fwd given its output h and the gradients g, g_last."""
    rows, T = a.shape
    _check_length(T)
    da = new_output((rows, T), dtype=a.dtype, device=a.device)
    db = new_output((rows, T), dtype=a.dtype, device=a.device)
    dh0 = new_output((rows,), dtype=torch.float32, device=a.device)
    if rows == 0:
        return da, db, dh0
    block_r, block_t, warps = _blocks(T)
    grid = (triton.cdiv(rows, block_r),)
    wrap_triton(_linear_scan_bwd_kernel)[grid](
        a, h, g, h0 if h0 is not None else dh0, g_last if g_last is not None else dh0, da, db, dh0,
        rows, T, _row_stride(a), _row_stride(h), _row_stride(g),
        HAS_H0=h0 is not None, HAS_G_LAST=g_last is not None, REVERSE=reverse, STEP=-1 if reverse else 1,
        BLOCK_R=block_r, BLOCK_T=block_t, num_warps=warps,
    )
    return da, db, dh0
