"""Triton kernels of block_sparse_attention: FlashAttention-2 style forward and backward over a tile layout.

The mask arrives as an arkernels.masks.layout.TileLayout at this file's tiling (``config``): per query
tile the runs of key tiles it visits, each FULL (every pair visible: no mask work at all), RULE
(partial: the level rule evaluated from per-token int32 vectors, two int compares per element) or
BITS (partial: one bitmap word per 32 keys per query row); tiles in no run are never touched.

* ``_block_sparse_attention_fwd_kernel``: one program per (query tile, head, batch row) walks its runs;
  online softmax in fp32 in the log2 domain (scores pre-multiplied by scale * log2(e), exp2). A row
  that has seen no key keeps m = -inf; its exponent uses 0 instead, so its p is exp2(-inf) = 0 and it
  ends with out = 0, lse = -inf (no NaN).
* ``_block_sparse_attention_bwd_preprocess_kernel``: delta = rowsum(dO * O) (minus dlse when the
  log-sum-exp has a gradient: d lse / d s = p, so it folds into the same term).
* ``_block_sparse_attention_bwd_dkdv_kernel``: one program per (key tile, kv head, batch row) walks the
  transposed runs, for every q head of its GQA group in turn, with dK and dV in registers: written
  once, no atomics, deterministic.
* ``_block_sparse_attention_bwd_dq_kernel``: one program per (query tile, q head, batch row) walks the
  forward runs again (recomputing P from the saved lse), dQ in registers: deterministic.

64-bit addressing: the (batch, head) base offsets and the per-tile row offsets are int64 before a
stride multiplies them; offsets inside a tile stay int32. The last dimension must be contiguous.
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from arkernels._outputs import new_output
# Unaliased: torch.compile re-emits these helpers under their own names.
from arkernels.triton_kernels._common import dot, low, rnd

# Run kinds of the layout (arkernels.masks.layout): FULL 0, RULE 1, BITS 2. The tile bodies take a constexpr
# MODE: 0 FULL inside the key range (no mask work), 1 FULL on the last key tile when it crosses S (column
# bound only), 2 RULE, 3 BITS.
LOG2E = 1.4426950408889634


def config(D: int, dtype: torch.dtype, device) -> dict:
    """Tile sizes and launch parameters for head dim D. The mask layout must be built at
    (BLOCK_M, BLOCK_N); the backward processes a query tile in BWD_SUB_M-row slices (dK/dV kernel) and a
    key tile in BWD_SUB_N-key slices (dQ kernel); BWD_KEY_MAJOR (default True) picks the dK/dV kernel's
    orientation (_bwd_dkdv_tile). Small tiles under the interpreter (every program is a numpy loop).
    GPU, D <= 128: 64 x 32 with 4 warps, the fastest forward + backward of the H200 sweep on all four
    benchmark masks (VAR 1.20 ms vs 1.28 at the earlier 128-row tiles, causal 5.03 vs 8.58, SCAM 5.28 vs
    8.59, sliding window 2.52 vs 4.45) and the fastest Triton forward too (bench/NOTES.md, 2026-12-05).
    D 256: chosen from sm_90a compiles (ptxas -v) without a GPU."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return dict(BLOCK_M=32, BLOCK_N=16, BWD_SUB_M=16, BWD_SUB_N=16, num_warps=4, FWD_STAGES=1, BWD_STAGES=1)
    if D <= 128:
        return dict(BLOCK_M=64, BLOCK_N=32, BWD_SUB_M=32, BWD_SUB_N=32, num_warps=4,
                    FWD_STAGES=3 if dtype != torch.float32 else 2, BWD_STAGES=2)
    # D 256: forward ~30 bytes of spills, dQ ~450 (its (64, 256) fp32 accumulator), dK/dV none.
    return dict(BLOCK_M=64, BLOCK_N=32, BWD_SUB_M=16, BWD_SUB_N=32, num_warps=8, FWD_STAGES=2, BWD_STAGES=2)


def cuda_forward_config(D: int, dtype: torch.dtype, device) -> dict | None:
    """The configuration at the Hopper CUDA forward's tiling (128 query rows; block_k dividing its 128-key
    chunks): the backward of backend "cuda" runs here, on that forward's layout. None where that forward
    does not exist (D > 128, not CUDA). Its tiles (128 x 64 at D 64, 128 x 32 at D 128) are those the CUDA
    forward was timed with; the Triton kernels at them were the earlier defaults (no spills at sm_90a)."""
    if torch.device(device).type != "cuda" or D > 128:
        return None
    if D <= 64:
        return dict(BLOCK_M=128, BLOCK_N=64, BWD_SUB_M=32, BWD_SUB_N=32, num_warps=8, FWD_STAGES=3, BWD_STAGES=2)
    return dict(BLOCK_M=128, BLOCK_N=32, BWD_SUB_M=32, BWD_SUB_N=32, num_warps=8,
                FWD_STAGES=3 if dtype != torch.float32 else 2, BWD_STAGES=2)


def config_for_layout(D: int, dtype: torch.dtype, device, block_q: int, block_k: int) -> dict:
    """config() or cuda_forward_config(), whichever has the layout's tiling; ValueError for any other."""
    cands = [c for c in (config(D, dtype, device), cuda_forward_config(D, dtype, device)) if c is not None]
    for cfg in cands:
        if (block_q, block_k) == (cfg["BLOCK_M"], cfg["BLOCK_N"]):
            return cfg
    want = " or ".join(f"({c['BLOCK_M']}, {c['BLOCK_N']})" for c in cands)
    raise ValueError(f"mask: expected a layout at the kernel's tiling {want}, got one at ({block_q}, {block_k})")


# ---------------------------------------------------------------- helpers

@triton.jit
def _load_rows(p_base, rows, n_rows, s_row, offs_d, D, EVEN_D: tl.constexpr):
    """(len(rows), BLOCK_D) tile of a (n_rows, D) matrix, rows past n_rows / columns past D read as 0.
    p_base already holds the 64-bit part (rows are tile-local offsets added to it)."""
    ptrs = p_base + rows[:, None] * s_row + offs_d[None, :]
    if EVEN_D:
        return tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
    else:
        return tl.load(ptrs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < D), other=0.0)


@triton.jit
def _visible(rows, cols, L, S, p_bits_tile, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window, r_tile, c_tile,
             MODE: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, HAS_GROUP: tl.constexpr,
             N_WORDS: tl.constexpr):
    """Visibility of the (rows, cols) block of one partial (or edge) tile. rows / cols are absolute
    positions, r_tile / c_tile their offsets inside the layout's tile (for the bitmap)."""
    m = cols[None, :] < S
    if MODE == 2:  # RULE
        b_kl = tl.load(p_klev + cols, mask=cols < S, other=0)
        ok = (b_kl[None, :] <= b_ql[:, None])
        if HAS_WINDOW:
            ok = ok & (b_ql[:, None] - b_kl[None, :] < window)
        if HAS_GROUP:
            b_kg = tl.load(p_kgrp + cols, mask=cols < S, other=0)
            ok = ok | (b_qg[:, None] == b_kg[None, :])
        if HAS_DOC:
            b_kd = tl.load(p_kdoc + cols, mask=cols < S, other=0)
            ok = ok & (b_qd[:, None] == b_kd[None, :])
        m = m & ok
    elif MODE == 3:  # BITS
        words = tl.load(p_bits_tile + r_tile[:, None] * N_WORDS + (c_tile[None, :] >> 5))
        m = m & (((words >> (c_tile[None, :] & 31)) & 1) != 0)
    return m


@triton.jit
def _q_rule_vectors(rows, L, p_qlev, p_qdoc, p_qgrp, HAS_RULE: tl.constexpr, HAS_DOC: tl.constexpr,
                    HAS_GROUP: tl.constexpr):
    """The query-side rule vectors of a tile's rows (zeros without a rule: the pointers are dummies then)."""
    m = rows < L
    if HAS_RULE:
        b_ql = tl.load(p_qlev + rows, mask=m, other=0)
    else:
        b_ql = tl.zeros_like(rows)
    b_qd = b_ql
    b_qg = b_ql
    if HAS_DOC:
        b_qd = tl.load(p_qdoc + rows, mask=m, other=0)
    if HAS_GROUP:
        b_qg = tl.load(p_qgrp + rows, mask=m, other=0)
    return b_ql, b_qd, b_qg


# ---------------------------------------------------------------- forward

@triton.jit
def _fwd_tile(acc, m_i, l_i, b_q, j, p_k_bh, p_v_bh, sk_l, sv_l, rows, L, S, D, qk_scale, p_bits_tile,
              b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window,
              MODE: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, HAS_GROUP: tl.constexpr,
              N_WORDS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
              EVEN_D: tl.constexpr, PREC: tl.constexpr):
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n0 = j * BLOCK_N
    cols = n0 + offs_n
    s_left = S - n0  # keys left from the tile start: the in-tile bound
    b_k = _load_rows(p_k_bh + n0.to(tl.int64) * sk_l, offs_n, s_left, sk_l, offs_d, D, EVEN_D)
    b_v = _load_rows(p_v_bh + n0.to(tl.int64) * sv_l, offs_n, s_left, sv_l, offs_d, D, EVEN_D)
    s = dot(b_q, tl.trans(b_k), PREC) * qk_scale
    if MODE != 0:
        vis = _visible(rows, cols, L, S, p_bits_tile, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window,
                       tl.arange(0, BLOCK_M), offs_n, MODE, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS)
        s = tl.where(vis, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    # Rows with nothing visible yet: exponent base 0, so that p = exp2(-inf) = 0 and alpha = 1 (no NaN).
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + dot(low(p, b_v.dtype), b_v, PREC)
    return acc, m_new, l_i


@triton.jit
def _block_sparse_attention_fwd_kernel(
    p_q, p_k, p_v, p_o, p_lse,
    p_run_ptr, p_runs, p_bits, p_qlev, p_klev, p_qdoc, p_kdoc, p_qgrp, p_kgrp,
    L, S, D, Hq, GROUP, window, qk_scale,
    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, so_b, so_h, so_l,
    HAS_RULE: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, HAS_GROUP: tl.constexpr,
    N_WORDS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, PREC: tl.constexpr,
):
    # torch.compile passes Python floats to a kernel as fp64 (the softmax state would turn fp64).
    qk_scale = tl.cast(qk_scale, tl.float32)
    # Last query tiles first: under causal-like masks they visit the most key tiles (less tail at the end).
    i_m = tl.num_programs(0) - 1 - tl.program_id(0)
    i_h = tl.program_id(1).to(tl.int64)
    i_b = tl.program_id(2).to(tl.int64)
    i_hk = i_h // GROUP
    m0 = i_m * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    rows = m0 + offs_m
    p_q_tile = p_q + i_b * sq_b + i_h * sq_h + m0.to(tl.int64) * sq_l
    p_k_bh = p_k + i_b * sk_b + i_hk * sk_h
    p_v_bh = p_v + i_b * sv_b + i_hk * sv_h
    b_q = _load_rows(p_q_tile, offs_m, L - m0, sq_l, offs_d, D, EVEN_D)
    b_ql, b_qd, b_qg = _q_rule_vectors(rows, L, p_qlev, p_qdoc, p_qgrp, HAS_RULE, HAS_DOC, HAS_GROUP)

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    n_even = S // BLOCK_N  # key tiles [0, n_even) lie inside S: FULL tiles there need no bounds check
    r_lo = tl.load(p_run_ptr + i_m)
    r_hi = tl.load(p_run_ptr + i_m + 1)
    for r in range(r_lo, r_hi):
        start = tl.load(p_runs + r * 4)
        end = tl.load(p_runs + r * 4 + 1)
        kind = tl.load(p_runs + r * 4 + 2)
        bits = tl.load(p_runs + r * 4 + 3)
        if kind == 0:
            mid = tl.minimum(end, n_even)
            for j in range(start, mid):
                acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, b_q, j, p_k_bh, p_v_bh, sk_l, sv_l, rows, L, S, D,
                                          qk_scale, p_bits, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window,
                                          0, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS, BLOCK_M, BLOCK_N, BLOCK_D,
                                          EVEN_D, PREC)
            for j in range(tl.maximum(start, mid), end):
                acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, b_q, j, p_k_bh, p_v_bh, sk_l, sv_l, rows, L, S, D,
                                          qk_scale, p_bits, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window,
                                          1, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS, BLOCK_M, BLOCK_N, BLOCK_D,
                                          EVEN_D, PREC)
        elif kind == 1:
            for j in range(start, end):
                acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, b_q, j, p_k_bh, p_v_bh, sk_l, sv_l, rows, L, S, D,
                                          qk_scale, p_bits, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window,
                                          2, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS, BLOCK_M, BLOCK_N, BLOCK_D,
                                          EVEN_D, PREC)
        else:
            for j in range(start, end):
                p_bits_tile = p_bits + (bits + j - start).to(tl.int64) * (BLOCK_M * N_WORDS)
                acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, b_q, j, p_k_bh, p_v_bh, sk_l, sv_l, rows, L, S, D,
                                          qk_scale, p_bits_tile, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window,
                                          3, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS, BLOCK_M, BLOCK_N, BLOCK_D,
                                          EVEN_D, PREC)

    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    p_o_tile = p_o + i_b * so_b + i_h * so_h + m0.to(tl.int64) * so_l
    m_rows = offs_m < L - m0
    tl.store(p_o_tile + offs_m[:, None] * so_l + offs_d[None, :], rnd(out, p_o.dtype.element_ty),
             mask=m_rows[:, None] & (offs_d[None, :] < D))
    p_lse_tile = p_lse + (i_b * Hq + i_h) * L + m0
    tl.store(p_lse_tile + offs_m, lse, mask=m_rows)


# ---------------------------------------------------------------- backward

@triton.jit
def _block_sparse_attention_bwd_preprocess_kernel(
    p_o, p_do, p_dlse, p_delta, L, D, Hq, so_b, so_h, so_l, sdo_b, sdo_h, sdo_l,
    HAS_DLSE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """delta = rowsum(dO * O) - dlse, fp32 (B, Hq, L)."""
    i_m = tl.program_id(0)
    i_h = tl.program_id(1).to(tl.int64)
    i_b = tl.program_id(2).to(tl.int64)
    m0 = i_m * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_left = L - m0
    b_o = _load_rows(p_o + i_b * so_b + i_h * so_h + m0.to(tl.int64) * so_l, offs_m, n_left, so_l, offs_d, D,
                     False).to(tl.float32)
    b_do = _load_rows(p_do + i_b * sdo_b + i_h * sdo_h + m0.to(tl.int64) * sdo_l, offs_m, n_left, sdo_l, offs_d, D,
                      False).to(tl.float32)
    delta = tl.sum(b_o * b_do, axis=1)
    off = (i_b * Hq + i_h) * L + m0
    if HAS_DLSE:
        delta -= tl.load(p_dlse + off + offs_m, mask=offs_m < n_left, other=0.0)
    tl.store(p_delta + off + offs_m, delta, mask=offs_m < n_left)


@triton.jit
def _bwd_dq_tile(dq, b_q, b_do, b_lse2, b_delta, j, p_k_bh, p_v_bh, sk_l, sv_l, rows, L, S, D, qk_scale,
                 p_bits_tile, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window,
                 MODE: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, HAS_GROUP: tl.constexpr,
                 N_WORDS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUB_N: tl.constexpr,
                 BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, PREC: tl.constexpr):
    """Key tile j against this program's query tile, SUB_N keys at a time (fewer live registers)."""
    offs_s = tl.arange(0, SUB_N)
    offs_d = tl.arange(0, BLOCK_D)
    for sub in range(0, BLOCK_N // SUB_N):
        c_tile = sub * SUB_N + offs_s
        n0 = j * BLOCK_N + sub * SUB_N
        cols = n0 + offs_s
        s_left = S - n0
        b_k = _load_rows(p_k_bh + n0.to(tl.int64) * sk_l, offs_s, s_left, sk_l, offs_d, D, EVEN_D)
        b_v = _load_rows(p_v_bh + n0.to(tl.int64) * sv_l, offs_s, s_left, sv_l, offs_d, D, EVEN_D)
        s = dot(b_q, tl.trans(b_k), PREC) * qk_scale
        p = tl.math.exp2(s - b_lse2[:, None])
        if MODE != 0:
            # Also FULL tiles crossing S: a zero key past S would give p = exp2(-lse), unbounded.
            vis = _visible(rows, cols, L, S, p_bits_tile, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window,
                           tl.arange(0, BLOCK_M), c_tile, MODE, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS)
            p = tl.where(vis, p, 0.0)
        dp = dot(b_do, tl.trans(b_v), PREC)
        ds = p * (dp - b_delta[:, None])
        dq += dot(low(ds, b_k.dtype), b_k, PREC)
    return dq


@triton.jit
def _block_sparse_attention_bwd_dq_kernel(
    p_q, p_k, p_v, p_do, p_lse, p_delta, p_dq,
    p_run_ptr, p_runs, p_bits, p_qlev, p_klev, p_qdoc, p_kdoc, p_qgrp, p_kgrp,
    L, S, D, Hq, GROUP, window, qk_scale, scale,
    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, sdo_b, sdo_h, sdo_l, sdq_b, sdq_h, sdq_l,
    HAS_RULE: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, HAS_GROUP: tl.constexpr,
    N_WORDS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUB_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
    PREC: tl.constexpr,
):
    # torch.compile passes Python floats to a kernel as fp64 (the softmax state would turn fp64).
    qk_scale = tl.cast(qk_scale, tl.float32)
    scale = tl.cast(scale, tl.float32)
    # Last query tiles first: under causal-like masks they visit the most key tiles (less tail at the end).
    i_m = tl.num_programs(0) - 1 - tl.program_id(0)
    i_h = tl.program_id(1).to(tl.int64)
    i_b = tl.program_id(2).to(tl.int64)
    i_hk = i_h // GROUP
    m0 = i_m * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    rows = m0 + offs_m
    n_left = L - m0
    b_q = _load_rows(p_q + i_b * sq_b + i_h * sq_h + m0.to(tl.int64) * sq_l, offs_m, n_left, sq_l, offs_d, D, EVEN_D)
    b_do = _load_rows(p_do + i_b * sdo_b + i_h * sdo_h + m0.to(tl.int64) * sdo_l, offs_m, n_left, sdo_l, offs_d, D,
                      EVEN_D)
    off = (i_b * Hq + i_h) * L + m0
    b_lse = tl.load(p_lse + off + offs_m, mask=offs_m < n_left, other=float("inf"))
    # A row that sees no key has lse = -inf: +inf makes its p = exp2(s - inf) = 0 (no gradient, no NaN).
    b_lse2 = tl.where(b_lse == float("-inf"), float("inf"), b_lse * 1.4426950408889634)
    b_delta = tl.load(p_delta + off + offs_m, mask=offs_m < n_left, other=0.0)
    b_ql, b_qd, b_qg = _q_rule_vectors(rows, L, p_qlev, p_qdoc, p_qgrp, HAS_RULE, HAS_DOC, HAS_GROUP)
    p_k_bh = p_k + i_b * sk_b + i_hk * sk_h
    p_v_bh = p_v + i_b * sv_b + i_hk * sv_h

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    n_even = S // BLOCK_N
    r_lo = tl.load(p_run_ptr + i_m)
    r_hi = tl.load(p_run_ptr + i_m + 1)
    for r in range(r_lo, r_hi):
        start = tl.load(p_runs + r * 4)
        end = tl.load(p_runs + r * 4 + 1)
        kind = tl.load(p_runs + r * 4 + 2)
        bits = tl.load(p_runs + r * 4 + 3)
        if kind == 0:
            mid = tl.minimum(end, n_even)
            for j in range(start, mid):
                dq = _bwd_dq_tile(dq, b_q, b_do, b_lse2, b_delta, j, p_k_bh, p_v_bh, sk_l, sv_l, rows, L, S, D,
                                  qk_scale, p_bits, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window, 0, HAS_WINDOW,
                                  HAS_DOC, HAS_GROUP, N_WORDS, BLOCK_M, BLOCK_N, SUB_N, BLOCK_D, EVEN_D, PREC)
            for j in range(tl.maximum(start, mid), end):
                dq = _bwd_dq_tile(dq, b_q, b_do, b_lse2, b_delta, j, p_k_bh, p_v_bh, sk_l, sv_l, rows, L, S, D,
                                  qk_scale, p_bits, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window, 1, HAS_WINDOW,
                                  HAS_DOC, HAS_GROUP, N_WORDS, BLOCK_M, BLOCK_N, SUB_N, BLOCK_D, EVEN_D, PREC)
        elif kind == 1:
            for j in range(start, end):
                dq = _bwd_dq_tile(dq, b_q, b_do, b_lse2, b_delta, j, p_k_bh, p_v_bh, sk_l, sv_l, rows, L, S, D,
                                  qk_scale, p_bits, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window, 2, HAS_WINDOW,
                                  HAS_DOC, HAS_GROUP, N_WORDS, BLOCK_M, BLOCK_N, SUB_N, BLOCK_D, EVEN_D, PREC)
        else:
            for j in range(start, end):
                p_bits_tile = p_bits + (bits + j - start).to(tl.int64) * (BLOCK_M * N_WORDS)
                dq = _bwd_dq_tile(dq, b_q, b_do, b_lse2, b_delta, j, p_k_bh, p_v_bh, sk_l, sv_l, rows, L, S, D,
                                  qk_scale, p_bits_tile, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window, 3,
                                  HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS, BLOCK_M, BLOCK_N, SUB_N, BLOCK_D, EVEN_D,
                                  PREC)
    dq = dq * scale
    p_dq_tile = p_dq + i_b * sdq_b + i_h * sdq_h + m0.to(tl.int64) * sdq_l
    tl.store(p_dq_tile + offs_m[:, None] * sdq_l + offs_d[None, :], rnd(dq, p_dq.dtype.element_ty),
             mask=(offs_m[:, None] < n_left) & (offs_d[None, :] < D))


@triton.jit
def _bwd_dkdv_tile(dk, dv, b_k, b_v, i, p_q_bh, p_do_bh, p_lse_bh, p_delta_bh, sq_l, sdo_l, cols, L, S, D, qk_scale,
                   p_bits_tile, p_qlev, p_qdoc, p_qgrp, b_kl, b_kd, b_kg, window,
                   MODE: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, HAS_GROUP: tl.constexpr,
                   N_WORDS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUB_M: tl.constexpr,
                   BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, PREC: tl.constexpr, KEY_MAJOR: tl.constexpr):
    """Query tile i against this program's key tile, SUB_M query rows at a time. Triton emits Hopper
    warpgroup MMAs only for dots whose M is >= 64 (mma.sync otherwise), so the orientation follows the tiles:
    KEY_MAJOR (key tile >= 64): everything transposed, keys x queries (S^T = K Q^T, dP^T = V dO^T,
    dV += P^T dO, dK += dS^T Q: M = the key tile); else (query sub-tile >= 64 with a small key tile): S and dP
    query-major (M = the sub-tile) and dK, dV accumulated transposed, D x keys (dV^T += dO^T P,
    dK^T += Q^T dS: M = D)."""
    offs_s = tl.arange(0, SUB_M)
    offs_d = tl.arange(0, BLOCK_D)
    for sub in range(0, BLOCK_M // SUB_M):
        r_tile = sub * SUB_M + offs_s
        m0 = i * BLOCK_M + sub * SUB_M
        rows = m0 + offs_s
        n_left = L - m0
        b_q = _load_rows(p_q_bh + m0.to(tl.int64) * sq_l, offs_s, n_left, sq_l, offs_d, D, EVEN_D)
        b_do = _load_rows(p_do_bh + m0.to(tl.int64) * sdo_l, offs_s, n_left, sdo_l, offs_d, D, EVEN_D)
        b_lse = tl.load(p_lse_bh + rows, mask=rows < L, other=float("inf"))
        b_lse2 = tl.where(b_lse == float("-inf"), float("inf"), b_lse * 1.4426950408889634)
        b_delta = tl.load(p_delta_bh + rows, mask=rows < L, other=0.0)
        # Per-query and per-key vectors broadcast to the score tile's orientation.
        if KEY_MAJOR:
            s = dot(b_k, tl.trans(b_q), PREC) * qk_scale
            p = tl.math.exp2(s - b_lse2[None, :])
        else:
            s = dot(b_q, tl.trans(b_k), PREC) * qk_scale
            p = tl.math.exp2(s - b_lse2[:, None])
        if MODE == 2:
            # RULE: the query-side vectors of these rows; the key side is hoisted by the caller.
            m_r = rows < L
            ql = _along_queries(tl.load(p_qlev + rows, mask=m_r, other=0), KEY_MAJOR)
            kl = _along_keys(b_kl, KEY_MAJOR)
            ok = kl <= ql
            if HAS_WINDOW:
                ok = ok & (ql - kl < window)
            if HAS_GROUP:
                ok = ok | (_along_queries(tl.load(p_qgrp + rows, mask=m_r, other=0), KEY_MAJOR) ==
                           _along_keys(b_kg, KEY_MAJOR))
            if HAS_DOC:
                ok = ok & (_along_queries(tl.load(p_qdoc + rows, mask=m_r, other=0), KEY_MAJOR) ==
                           _along_keys(b_kd, KEY_MAJOR))
            p = tl.where(ok, p, 0.0)
        elif MODE == 3:
            c_tile = _along_keys(tl.arange(0, BLOCK_N), KEY_MAJOR)
            words = tl.load(p_bits_tile + _along_queries(r_tile, KEY_MAJOR) * N_WORDS + (c_tile >> 5))
            p = tl.where(((words >> (c_tile & 31)) & 1) != 0, p, 0.0)
        # Keys past S (the last key tile only) are never stored; queries past L have lse = +inf: p = 0.
        if KEY_MAJOR:
            dv += dot(low(p, b_do.dtype), b_do, PREC)
            dp = dot(b_v, tl.trans(b_do), PREC)
            ds = p * (dp - b_delta[None, :])
            dk += dot(low(ds, b_q.dtype), b_q, PREC)
        else:
            dv += dot(tl.trans(b_do), low(p, b_do.dtype), PREC)
            dp = dot(b_do, tl.trans(b_v), PREC)
            ds = p * (dp - b_delta[:, None])
            dk += dot(tl.trans(b_q), low(ds, b_q.dtype), PREC)
    return dk, dv


@triton.jit
def _along_queries(x, KEY_MAJOR: tl.constexpr):
    """A per-query vector broadcast along the query axis of a score tile (columns when key-major)."""
    if KEY_MAJOR:
        return x[None, :]
    else:
        return x[:, None]


@triton.jit
def _along_keys(x, KEY_MAJOR: tl.constexpr):
    """A per-key vector broadcast along the key axis of a score tile (rows when key-major)."""
    if KEY_MAJOR:
        return x[:, None]
    else:
        return x[None, :]


@triton.jit
def _block_sparse_attention_bwd_dkdv_kernel(
    p_q, p_k, p_v, p_do, p_lse, p_delta, p_dk, p_dv,
    p_run_ptr, p_runs, p_tile_of, p_bits, p_qlev, p_klev, p_qdoc, p_kdoc, p_qgrp, p_kgrp,
    L, S, D, Hq, GROUP, window, qk_scale, scale,
    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, sdo_b, sdo_h, sdo_l,
    sdk_b, sdk_h, sdk_l, sdv_b, sdv_h, sdv_l,
    HAS_RULE: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, HAS_GROUP: tl.constexpr,
    N_WORDS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUB_M: tl.constexpr, BLOCK_D: tl.constexpr,
    EVEN_D: tl.constexpr, PREC: tl.constexpr, KEY_MAJOR: tl.constexpr,
):
    # torch.compile passes Python floats to a kernel as fp64 (the softmax state would turn fp64).
    qk_scale = tl.cast(qk_scale, tl.float32)
    scale = tl.cast(scale, tl.float32)
    i_n = tl.program_id(0)
    i_hk = tl.program_id(1).to(tl.int64)
    i_b = tl.program_id(2).to(tl.int64)
    n0 = i_n * BLOCK_N
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    cols = n0 + offs_n
    s_left = S - n0
    b_k = _load_rows(p_k + i_b * sk_b + i_hk * sk_h + n0.to(tl.int64) * sk_l, offs_n, s_left, sk_l, offs_d, D, EVEN_D)
    b_v = _load_rows(p_v + i_b * sv_b + i_hk * sv_h + n0.to(tl.int64) * sv_l, offs_n, s_left, sv_l, offs_d, D, EVEN_D)
    m_c = cols < S
    # Key-side rule vectors, hoisted. Columns past S need no mask here: the column of a key only feeds
    # that key's own rows of dK and dV, which are not stored.
    if HAS_RULE:
        b_kl = tl.load(p_klev + cols, mask=m_c, other=0)
    else:
        b_kl = tl.zeros([BLOCK_N], dtype=tl.int32)
    b_kd = b_kl
    b_kg = b_kl
    if HAS_DOC:
        b_kd = tl.load(p_kdoc + cols, mask=m_c, other=0)
    if HAS_GROUP:
        b_kg = tl.load(p_kgrp + cols, mask=m_c, other=0)

    # dK, dV accumulate as keys x D (KEY_MAJOR) or transposed, D x keys (see _bwd_dkdv_tile).
    if KEY_MAJOR:
        dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    else:
        dk = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
        dv = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    r_lo = tl.load(p_run_ptr + i_n)
    r_hi = tl.load(p_run_ptr + i_n + 1)
    for hh in range(0, GROUP):
        i_h = i_hk * GROUP + hh
        p_q_bh = p_q + i_b * sq_b + i_h * sq_h
        p_do_bh = p_do + i_b * sdo_b + i_h * sdo_h
        p_lse_bh = p_lse + (i_b * Hq + i_h) * L
        p_delta_bh = p_delta + (i_b * Hq + i_h) * L
        for r in range(r_lo, r_hi):
            start = tl.load(p_runs + r * 4)
            end = tl.load(p_runs + r * 4 + 1)
            kind = tl.load(p_runs + r * 4 + 2)
            bits = tl.load(p_runs + r * 4 + 3)
            if kind == 0:
                for i in range(start, end):
                    dk, dv = _bwd_dkdv_tile(dk, dv, b_k, b_v, i, p_q_bh, p_do_bh, p_lse_bh, p_delta_bh, sq_l, sdo_l,
                                            cols, L, S, D, qk_scale, p_bits, p_qlev, p_qdoc, p_qgrp, b_kl, b_kd, b_kg,
                                            window, 0, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS, BLOCK_M, BLOCK_N,
                                            SUB_M, BLOCK_D, EVEN_D, PREC, KEY_MAJOR)
            elif kind == 1:
                for i in range(start, end):
                    dk, dv = _bwd_dkdv_tile(dk, dv, b_k, b_v, i, p_q_bh, p_do_bh, p_lse_bh, p_delta_bh, sq_l, sdo_l,
                                            cols, L, S, D, qk_scale, p_bits, p_qlev, p_qdoc, p_qgrp, b_kl, b_kd, b_kg,
                                            window, 2, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS, BLOCK_M, BLOCK_N,
                                            SUB_M, BLOCK_D, EVEN_D, PREC, KEY_MAJOR)
            else:
                for i in range(start, end):
                    t = tl.load(p_tile_of + bits + i - start)
                    p_bits_tile = p_bits + t.to(tl.int64) * (BLOCK_M * N_WORDS)
                    dk, dv = _bwd_dkdv_tile(dk, dv, b_k, b_v, i, p_q_bh, p_do_bh, p_lse_bh, p_delta_bh, sq_l, sdo_l,
                                            cols, L, S, D, qk_scale, p_bits_tile, p_qlev, p_qdoc, p_qgrp, b_kl, b_kd,
                                            b_kg, window, 3, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS, BLOCK_M,
                                            BLOCK_N, SUB_M, BLOCK_D, EVEN_D, PREC, KEY_MAJOR)
    dk = dk * scale
    p_dk_tile = p_dk + i_b * sdk_b + i_hk * sdk_h + n0.to(tl.int64) * sdk_l
    p_dv_tile = p_dv + i_b * sdv_b + i_hk * sdv_h + n0.to(tl.int64) * sdv_l
    if KEY_MAJOR:
        m_st = m_c[:, None] & (offs_d[None, :] < D)
        o_dk, o_dv = offs_n[:, None] * sdk_l + offs_d[None, :], offs_n[:, None] * sdv_l + offs_d[None, :]
    else:
        m_st = m_c[None, :] & (offs_d[:, None] < D)
        o_dk, o_dv = offs_n[None, :] * sdk_l + offs_d[:, None], offs_n[None, :] * sdv_l + offs_d[:, None]
    tl.store(p_dk_tile + o_dk, rnd(dk, p_dk.dtype.element_ty), mask=m_st)
    tl.store(p_dv_tile + o_dv, rnd(dv, p_dv.dtype.element_ty), mask=m_st)


# ---------------------------------------------------------------- launchers

class LayoutArgs:
    """The layout's tensors as the kernels take them (absent ones replaced by a dummy int32 tensor)."""

    def __init__(self, q_run_ptr, q_runs, k_run_ptr, k_runs, tile_bits, k_tile_bits, q_level, k_level, q_doc, k_doc,
                 q_group, k_group, window, block_q, block_k):
        dummy = q_run_ptr
        self.q_run_ptr, self.q_runs, self.k_run_ptr, self.k_runs = q_run_ptr, q_runs, k_run_ptr, k_runs
        self.tile_bits = tile_bits if tile_bits is not None else dummy
        self.k_tile_bits = k_tile_bits if k_tile_bits is not None else dummy
        self.n_words = tile_bits.shape[-1] if tile_bits is not None else -(-block_k // 32)
        self.q_level = q_level if q_level is not None else dummy
        self.k_level = k_level if k_level is not None else dummy
        self.has_rule = q_level is not None
        self.has_doc = q_doc is not None
        self.has_group = q_group is not None
        self.q_doc = q_doc if q_doc is not None else dummy
        self.k_doc = k_doc if k_doc is not None else dummy
        self.q_group = q_group if q_group is not None else dummy
        self.k_group = k_group if k_group is not None else dummy
        self.has_window = window >= 0
        self.window = max(int(window), 0)
        self.block_q, self.block_k = block_q, block_k

    def rule_args(self):
        return (self.q_level, self.k_level, self.q_doc, self.k_doc, self.q_group, self.k_group)


def _precision(dtype) -> str:
    # fp32 inputs: tf32 tensor-core dots (documented tolerance); bf16 / fp16 ignore the setting.
    return "tf32"


def block_sparse_attention_fwd(q, k, v, lay: LayoutArgs, scale: float):
    """(out (B, Hq, L, D) in q's dtype, lse (B, Hq, L) float32). q, k, v: last dimension contiguous."""
    B, Hq, L, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    cfg = config_for_layout(D, q.dtype, q.device, lay.block_q, lay.block_k)
    out = new_output((B, Hq, L, D), dtype=q.dtype, device=q.device)
    lse = new_output((B, Hq, L), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    BLOCK_D = max(16, triton.next_power_of_2(D))
    grid = (triton.cdiv(L, cfg["BLOCK_M"]), Hq, B)
    torch.library.wrap_triton(_block_sparse_attention_fwd_kernel)[grid](
        q, k, v, out, lse, lay.q_run_ptr, lay.q_runs, lay.tile_bits, *lay.rule_args(),
        L, S, D, Hq, Hq // Hkv, lay.window, scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        HAS_RULE=lay.has_rule, HAS_WINDOW=lay.has_window, HAS_DOC=lay.has_doc, HAS_GROUP=lay.has_group,
        N_WORDS=lay.n_words, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_D=BLOCK_D, EVEN_D=BLOCK_D == D,
        PREC=_precision(q.dtype), num_warps=cfg["num_warps"], num_stages=cfg["FWD_STAGES"])
    return out, lse


def block_sparse_attention_bwd(grad_out, grad_lse, q, k, v, out, lse, lay: LayoutArgs, scale: float):
    """(dq, dk, dv) in the inputs' dtypes; grad_lse (B, Hq, L) float32 or None."""
    B, Hq, L, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    cfg = config_for_layout(D, q.dtype, q.device, lay.block_q, lay.block_k)
    dq = new_output(q.shape, dtype=q.dtype, device=q.device)
    dk = new_output(k.shape, dtype=k.dtype, device=k.device)
    dv = new_output(v.shape, dtype=v.dtype, device=v.device)
    if q.numel() == 0 or k.numel() == 0:
        # Nothing visible: every gradient is zero (and the kernels would launch no program for one side).
        for t in (dq, dk, dv):
            t.zero_()
        return dq, dk, dv
    BLOCK_D = max(16, triton.next_power_of_2(D))
    BM, BN = cfg["BLOCK_M"], cfg["BLOCK_N"]
    qk_scale = scale * LOG2E
    delta = torch.empty((B, Hq, L), dtype=torch.float32, device=q.device)
    pre_m = max(16, 4096 // BLOCK_D)  # rows per program of the preprocess: two (rows, D) fp32 tiles in registers
    torch.library.wrap_triton(_block_sparse_attention_bwd_preprocess_kernel)[(triton.cdiv(L, pre_m), Hq, B)](
        out, grad_out, grad_lse if grad_lse is not None else lse, delta, L, D, Hq,
        out.stride(0), out.stride(1), out.stride(2), grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
        HAS_DLSE=grad_lse is not None, BLOCK_M=pre_m, BLOCK_D=BLOCK_D, num_warps=4)
    grid_m = (triton.cdiv(L, BM), Hq, B)
    prec = _precision(q.dtype)
    common = dict(HAS_RULE=lay.has_rule, HAS_WINDOW=lay.has_window, HAS_DOC=lay.has_doc, HAS_GROUP=lay.has_group,
                  N_WORDS=lay.n_words, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BLOCK_D, EVEN_D=BLOCK_D == D, PREC=prec,
                  num_warps=cfg["num_warps"], num_stages=cfg["BWD_STAGES"])
    grid_n = (triton.cdiv(S, BN), Hkv, B)
    torch.library.wrap_triton(_block_sparse_attention_bwd_dkdv_kernel)[grid_n](
        q, k, v, grad_out, lse, delta, dk, dv, lay.k_run_ptr, lay.k_runs, lay.k_tile_bits, lay.tile_bits,
        *lay.rule_args(), L, S, D, Hq, Hq // Hkv, lay.window, qk_scale, scale,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
        dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
        SUB_M=min(cfg["BWD_SUB_M"], BM), KEY_MAJOR=cfg.get("BWD_KEY_MAJOR", True), **common)
    torch.library.wrap_triton(_block_sparse_attention_bwd_dq_kernel)[grid_m](
        q, k, v, grad_out, lse, delta, dq, lay.q_run_ptr, lay.q_runs, lay.tile_bits, *lay.rule_args(),
        L, S, D, Hq, Hq // Hkv, lay.window, qk_scale, scale,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2), SUB_N=min(cfg["BWD_SUB_N"], BN), **common)
    return dq, dk, dv
