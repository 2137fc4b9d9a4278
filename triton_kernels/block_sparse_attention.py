"""Triton kernels of block_sparse_attention: FlashAttention-2 style forward and backward over a tile layout.

The mask arrives as an arkernels.masks.layout.TileLayout (any tiling of powers of two >= 16; a Mask is laid
out at ``config()``'s BLOCK_M x BLOCK_N): per query tile the runs of key tiles it visits, each FULL (every
pair visible: no mask work at all), RULE (partial: the level rule evaluated from per-token int32 vectors, two
int compares per element) or BITS (partial: one bitmap word per 32 keys per query row); tiles in no run are
never touched.

Every kernel cuts the layout's tiles into its own slices: a program owns a slice of one tile along its own
axis (query rows for the forward and dQ, keys for dK/dV) and walks the other axis in steps, one flat loop per
run (step t covers tile t // NSTEP, slice t % NSTEP), so that Triton pipelines the loads of the next step
behind the current one. So one layout, at a tiling as coarse as FlexAttention's 128 x 128, serves the
forward's 64 x 32 shape and the backward's 64- or 128-key dK/dV programs alike (and the Hopper CUDA
forward's 128-row layout too). Steps that lie past L or S are not visited; steps of a partial tile that see
nothing are computed and masked (at 128 x 128 tiles, about 1.5 % extra work under a causal mask at L 4096).

* ``_block_sparse_attention_fwd_kernel``: one program per (FWD_M query rows, head, batch row) walks the runs of
  its tile in FWD_N-key steps; online softmax in fp32 in the log2 domain (scores pre-multiplied by
  scale * log2(e), exp2). A row that has seen no key keeps m = -inf; its exponent uses 0 instead, so its p is
  exp2(-inf) = 0 and it ends with out = 0, lse = -inf (no NaN).
* ``_block_sparse_attention_bwd_preprocess_kernel``: delta = rowsum(dO * O) (minus dlse when the
  log-sum-exp has a gradient: d lse / d s = p, so it folds into the same term).
* ``_block_sparse_attention_bwd_dkdv_kernel``: one program per (DKDV_N keys, kv head, batch row) walks the
  transposed runs of its key tile in DKDV_M-row query steps, for every q head of its GQA group in turn, with
  dK and dV in registers: written once, no atomics, deterministic.
* ``_block_sparse_attention_bwd_dq_kernel``: one program per (DQ_M query rows, q head, batch row) walks the
  forward runs again in DQ_N-key steps (recomputing P from the saved lse), dQ in registers: deterministic.

64-bit addressing: the (batch, head) base offsets and the per-step row offsets are int64 before a stride
multiplies them; offsets inside a step stay int32. The last dimension must be contiguous.
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from arkernels._outputs import new_output
# Unaliased: torch.compile re-emits these helpers under their own names.
from arkernels.triton_kernels._common import dot, dot_acc, low, rnd

# Run kinds of the layout (arkernels.masks.layout): FULL 0, RULE 1, BITS 2. The step bodies take a constexpr
# MODE: 0 FULL inside the key range (no mask work), 1 FULL on a step that crosses S (column bound only),
# 2 RULE, 3 BITS.
LOG2E = 1.4426950408889634
MIN_TILE = 16  # a layout tile (and every slice of it) must be a power of two of at least 16: tl.dot's minimum
SLICES = ("FWD_M", "FWD_N", "DKDV_N", "DKDV_M", "DQ_M", "DQ_N")
_ALONG_Q = ("FWD_M", "DKDV_M", "DQ_M")  # slices of a query tile (the others cut key tiles)
# Lengths and counts a launch would otherwise specialise on (divisible by 16, or equal to 1): every new L or S
# class would compile the kernels again (odd lengths in tests and generation) for no gain: they only bound
# masks, while the strides and D, which decide vectorised loads, stay specialised.
_LENGTHS = ["L", "S", "Hq", "GROUP", "window"]


def config(D: int, dtype: torch.dtype, device) -> dict:
    """The layout tiling (BLOCK_M x BLOCK_N) a Mask is laid out at, and per kernel its slice shape, warps and
    pipeline stages: forward FWD_M query rows per program x FWD_N-key steps (FWD_MAXNREG, optional: a register
    cap for more programs per SM, a sweep variant); dK/dV DKDV_N keys per program x
    DKDV_M-row query steps (DKDV_KEY_MAJOR: orientation, see _bwd_dkdv_step); dQ DQ_M rows per program x
    DQ_N-key steps. Small tiles under the interpreter (every program is a numpy loop), cut in two along each
    axis so that CI runs the slicing.
    GPU, D <= 128: a 128 x 128 layout (FlexAttention's block size; the CUDA forward takes it too). The
    forward's 64 x 32 / 4 warps was the fastest Triton forward of the H200 sweep on all four benchmark masks
    (bench/NOTES.md, 2026-12-05). The backward's shapes are chosen from sm_90a compiles (no spills:
    scripts/block_sparse_attention_resources.py --candidates) until a GPU sweep times them.
    D 256: chosen from sm_90a compiles (ptxas -v) without a GPU."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return dict(BLOCK_M=32, BLOCK_N=32, FWD_M=16, FWD_N=16, FWD_WARPS=4, FWD_STAGES=1,
                    DKDV_N=16, DKDV_M=16, DKDV_WARPS=4, DKDV_STAGES=1, DKDV_KEY_MAJOR=True,
                    DQ_M=16, DQ_N=16, DQ_WARPS=4, DQ_STAGES=1)
    if D <= 128:
        # Backward: the largest program x step that compiles without spills (bf16, every rule flag on): dK/dV
        # 128 keys x 32-row steps on 8 warps (128 x 64 spills 152 bytes at D 128), dQ 128 rows x 32-key steps
        # at D 128 (128 x 64: 16 bytes), 128 x 64 at D 64.
        return dict(BLOCK_M=128, BLOCK_N=128, FWD_M=64, FWD_N=32, FWD_WARPS=4,
                    FWD_STAGES=3 if dtype != torch.float32 else 2,
                    DKDV_N=128, DKDV_M=32, DKDV_WARPS=8, DKDV_STAGES=2, DKDV_KEY_MAJOR=True,
                    DQ_M=128, DQ_N=32 if D > 64 else 64, DQ_WARPS=8, DQ_STAGES=2)
    # D 256: forward ~30 bytes of spills, dQ ~450 (its (64, 256) fp32 accumulator), dK/dV none.
    return dict(BLOCK_M=128, BLOCK_N=128, FWD_M=64, FWD_N=32, FWD_WARPS=8, FWD_STAGES=2,
                DKDV_N=32, DKDV_M=16, DKDV_WARPS=8, DKDV_STAGES=2, DKDV_KEY_MAJOR=True,
                DQ_M=64, DQ_N=32, DQ_WARPS=8, DQ_STAGES=2)


TILINGS_TEXT = f"powers of two >= {MIN_TILE}"  # what takes_tiling accepts, for error messages


def takes_tiling(block_q: int, block_k: int) -> bool:
    """Whether the kernels run a layout at (block_q, block_k): both powers of two >= MIN_TILE."""
    return all(n >= MIN_TILE and n & (n - 1) == 0 for n in (block_q, block_k))


def config_for_layout(D: int, dtype: torch.dtype, device, block_q: int, block_k: int) -> dict:
    """config() with its slices cut to a layout at (block_q, block_k): any powers of two >= 16 (a slice larger
    than the layout's tile shrinks to it). ValueError for any other tiling."""
    if not takes_tiling(block_q, block_k):
        raise ValueError(f"mask: expected a layout whose tiles are {TILINGS_TEXT} (block_q, block_k), "
                         f"got one at ({block_q}, {block_k})")
    cfg = dict(config(D, dtype, device), BLOCK_M=block_q, BLOCK_N=block_k)
    for name in SLICES:
        cfg[name] = min(cfg[name], block_q if name in _ALONG_Q else block_k)
    return cfg


# ---------------------------------------------------------------- helpers

@triton.jit
def _load_rows(p_base, rows, n_rows, s_row, offs_d, D, EVEN_D: tl.constexpr):
    """(len(rows), BLOCK_D) tile of a (n_rows, D) matrix, rows past n_rows / columns past D read as 0.
    p_base already holds the 64-bit part (rows are step-local offsets added to it)."""
    ptrs = p_base + rows[:, None] * s_row + offs_d[None, :]
    if EVEN_D:
        return tl.load(ptrs, mask=rows[:, None] < n_rows, other=0.0)
    else:
        return tl.load(ptrs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < D), other=0.0)


@triton.jit
def _visible(rows, cols, L, S, p_bits_tile, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window, r_tile, c_tile,
             MODE: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, HAS_GROUP: tl.constexpr,
             N_WORDS: tl.constexpr):
    """Visibility of the (rows, cols) block of one partial (or edge) step. rows / cols are absolute
    positions, r_tile / c_tile their offsets inside the layout's tile (for the bitmap)."""
    m = cols[None, :] < S
    if MODE == 2:  # RULE
        b_kl = tl.load(p_klev + cols, mask=cols < S, other=0)
        ok = (b_kl[None, :] <= b_ql[:, None])
        if HAS_WINDOW:
            # int64: q_level - k_level of two int32 levels can overflow int32 (4e9 apart, tested).
            ok = ok & (b_ql[:, None].to(tl.int64) - b_kl[None, :].to(tl.int64) < window)
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
    """The query-side rule vectors of a program's rows (zeros without a rule: the pointers are dummies then)."""
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


@triton.jit
def _run(p_runs, r, NSTEP: tl.constexpr, n_steps):
    """Run r of a layout as steps: (first step, end step, kind, first bitmap entry, first tile). Its tiles
    [start, end) hold steps [start * NSTEP, end * NSTEP); those at or past n_steps (past L or S) are dropped."""
    start = tl.load(p_runs + r * 4)
    end = tl.load(p_runs + r * 4 + 1)
    kind = tl.load(p_runs + r * 4 + 2)
    bits = tl.load(p_runs + r * 4 + 3)
    return start * NSTEP, tl.minimum(end * NSTEP, n_steps), kind, bits, start


# ---------------------------------------------------------------- forward

@triton.jit
def _fwd_step(acc, m_i, l_i, b_q, t, p_k_bh, p_v_bh, sk_l, sv_l, rows, L, S, D, qk_scale, p_bits_tile,
              b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window, r_tile,
              MODE: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, HAS_GROUP: tl.constexpr,
              N_WORDS: tl.constexpr, STEP_N: tl.constexpr, NSTEP: tl.constexpr, BLOCK_D: tl.constexpr,
              EVEN_D: tl.constexpr, PREC: tl.constexpr):
    """Step t, keys [t * STEP_N, (t + 1) * STEP_N), into the online softmax."""
    offs_n = tl.arange(0, STEP_N)
    offs_d = tl.arange(0, BLOCK_D)
    n0 = t * STEP_N
    cols = n0 + offs_n
    s_left = S - n0  # keys left from the step start: the in-step bound
    b_k = _load_rows(p_k_bh + n0.to(tl.int64) * sk_l, offs_n, s_left, sk_l, offs_d, D, EVEN_D)
    b_v = _load_rows(p_v_bh + n0.to(tl.int64) * sv_l, offs_n, s_left, sv_l, offs_d, D, EVEN_D)
    s = dot(b_q, tl.trans(b_k), PREC) * qk_scale
    if MODE != 0:
        vis = _visible(rows, cols, L, S, p_bits_tile, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window,
                       r_tile, (t % NSTEP) * STEP_N + offs_n, MODE, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS)
        s = tl.where(vis, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    # Rows with nothing visible yet: exponent base 0, so that p = exp2(-inf) = 0 and alpha = 1 (no NaN).
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = dot_acc(low(p, b_v.dtype), b_v, acc * alpha[:, None], PREC)
    return acc, m_new, l_i


@triton.jit(do_not_specialize=_LENGTHS)
def _block_sparse_attention_fwd_kernel(
    p_q, p_k, p_v, p_o, p_lse,
    p_run_ptr, p_runs, p_bits, p_qlev, p_klev, p_qdoc, p_kdoc, p_qgrp, p_kgrp,
    L, S, D, Hq, GROUP, window, qk_scale,
    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, so_b, so_h, so_l,
    HAS_RULE: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, HAS_GROUP: tl.constexpr,
    N_WORDS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FWD_M: tl.constexpr, FWD_N: tl.constexpr,
    BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, PREC: tl.constexpr,
):
    # torch.compile passes Python floats to a kernel as fp64 (the softmax state would turn fp64).
    qk_scale = tl.cast(qk_scale, tl.float32)
    # Steps per layout tile: BLOCK_N // FWD_N (a constexpr, written out where used: Triton 3.6 has no local
    # constexpr assignment to rely on).
    # Last query rows first: under causal-like masks they visit the most key tiles (less tail at the end).
    m0 = (tl.num_programs(0) - 1 - tl.program_id(0)) * FWD_M
    i_h = tl.program_id(1).to(tl.int64)
    i_b = tl.program_id(2).to(tl.int64)
    i_hk = i_h // GROUP
    i_m = m0 // BLOCK_M  # the layout's query tile
    offs_m = tl.arange(0, FWD_M)
    offs_d = tl.arange(0, BLOCK_D)
    rows = m0 + offs_m
    r_tile = m0 - i_m * BLOCK_M + offs_m  # the rows inside the layout's tile (bitmap rows)
    p_q_tile = p_q + i_b * sq_b + i_h * sq_h + m0.to(tl.int64) * sq_l
    p_k_bh = p_k + i_b * sk_b + i_hk * sk_h
    p_v_bh = p_v + i_b * sv_b + i_hk * sv_h
    b_q = _load_rows(p_q_tile, offs_m, L - m0, sq_l, offs_d, D, EVEN_D)
    b_ql, b_qd, b_qg = _q_rule_vectors(rows, L, p_qlev, p_qdoc, p_qgrp, HAS_RULE, HAS_DOC, HAS_GROUP)

    acc = tl.zeros([FWD_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([FWD_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([FWD_M], dtype=tl.float32)
    n_steps = tl.cdiv(S, FWD_N)
    n_even = S // FWD_N  # steps [0, n_even) lie inside S: FULL steps there need no bounds check
    r_lo = tl.load(p_run_ptr + i_m)
    r_hi = tl.load(p_run_ptr + i_m + 1)
    for r in range(r_lo, r_hi):
        s0, s1, kind, bits, start = _run(p_runs, r, (BLOCK_N // FWD_N), n_steps)
        if kind == 0:
            mid = tl.minimum(s1, n_even)
            for t in range(s0, mid):
                acc, m_i, l_i = _fwd_step(acc, m_i, l_i, b_q, t, p_k_bh, p_v_bh, sk_l, sv_l, rows, L, S, D,
                                          qk_scale, p_bits, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window, r_tile,
                                          0, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS, FWD_N,
                                          (BLOCK_N // FWD_N), BLOCK_D, EVEN_D, PREC)
            for t in range(tl.maximum(s0, mid), s1):
                acc, m_i, l_i = _fwd_step(acc, m_i, l_i, b_q, t, p_k_bh, p_v_bh, sk_l, sv_l, rows, L, S, D,
                                          qk_scale, p_bits, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window, r_tile,
                                          1, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS, FWD_N,
                                          (BLOCK_N // FWD_N), BLOCK_D, EVEN_D, PREC)
        elif kind == 1:
            for t in range(s0, s1):
                acc, m_i, l_i = _fwd_step(acc, m_i, l_i, b_q, t, p_k_bh, p_v_bh, sk_l, sv_l, rows, L, S, D,
                                          qk_scale, p_bits, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window, r_tile,
                                          2, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS, FWD_N,
                                          (BLOCK_N // FWD_N), BLOCK_D, EVEN_D, PREC)
        else:
            for t in range(s0, s1):
                p_bits_tile = p_bits + (bits + t // (BLOCK_N // FWD_N) - start).to(tl.int64) * (BLOCK_M * N_WORDS)
                acc, m_i, l_i = _fwd_step(acc, m_i, l_i, b_q, t, p_k_bh, p_v_bh, sk_l, sv_l, rows, L, S, D,
                                          qk_scale, p_bits_tile, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window,
                                          r_tile, 3, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS, FWD_N,
                                          (BLOCK_N // FWD_N), BLOCK_D, EVEN_D, PREC)

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

@triton.jit(do_not_specialize=["L", "Hq"])
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
def _bwd_dq_step(dq, b_q, b_do, b_lse2, b_delta, t, p_k_bh, p_v_bh, sk_l, sv_l, rows, L, S, D, qk_scale,
                 p_bits_tile, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window, r_tile,
                 MODE: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, HAS_GROUP: tl.constexpr,
                 N_WORDS: tl.constexpr, STEP_N: tl.constexpr, NSTEP: tl.constexpr, BLOCK_D: tl.constexpr,
                 EVEN_D: tl.constexpr, PREC: tl.constexpr):
    """Step t, keys [t * STEP_N, (t + 1) * STEP_N), into this program's dQ."""
    offs_n = tl.arange(0, STEP_N)
    offs_d = tl.arange(0, BLOCK_D)
    n0 = t * STEP_N
    cols = n0 + offs_n
    s_left = S - n0
    b_k = _load_rows(p_k_bh + n0.to(tl.int64) * sk_l, offs_n, s_left, sk_l, offs_d, D, EVEN_D)
    b_v = _load_rows(p_v_bh + n0.to(tl.int64) * sv_l, offs_n, s_left, sv_l, offs_d, D, EVEN_D)
    s = dot(b_q, tl.trans(b_k), PREC) * qk_scale
    p = tl.math.exp2(s - b_lse2[:, None])
    if MODE != 0:
        # Also FULL steps crossing S: a zero key past S would give p = exp2(-lse), unbounded.
        vis = _visible(rows, cols, L, S, p_bits_tile, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window,
                       r_tile, (t % NSTEP) * STEP_N + offs_n, MODE, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS)
        p = tl.where(vis, p, 0.0)
    dp = dot(b_do, tl.trans(b_v), PREC)
    ds = p * (dp - b_delta[:, None])
    return dot_acc(low(ds, b_k.dtype), b_k, dq, PREC)


@triton.jit(do_not_specialize=_LENGTHS)
def _block_sparse_attention_bwd_dq_kernel(
    p_q, p_k, p_v, p_do, p_lse, p_delta, p_dq,
    p_run_ptr, p_runs, p_bits, p_qlev, p_klev, p_qdoc, p_kdoc, p_qgrp, p_kgrp,
    L, S, D, Hq, GROUP, window, qk_scale, scale,
    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, sdo_b, sdo_h, sdo_l, sdq_b, sdq_h, sdq_l,
    HAS_RULE: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, HAS_GROUP: tl.constexpr,
    N_WORDS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DQ_M: tl.constexpr, DQ_N: tl.constexpr,
    BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, PREC: tl.constexpr,
):
    # torch.compile passes Python floats to a kernel as fp64 (the softmax state would turn fp64).
    qk_scale = tl.cast(qk_scale, tl.float32)
    scale = tl.cast(scale, tl.float32)
    # Steps per layout tile: BLOCK_N // DQ_N (a constexpr, written out where used: Triton 3.6 has no local
    # constexpr assignment to rely on).
    # Last query rows first: under causal-like masks they visit the most key tiles (less tail at the end).
    m0 = (tl.num_programs(0) - 1 - tl.program_id(0)) * DQ_M
    i_h = tl.program_id(1).to(tl.int64)
    i_b = tl.program_id(2).to(tl.int64)
    i_hk = i_h // GROUP
    i_m = m0 // BLOCK_M
    offs_m = tl.arange(0, DQ_M)
    offs_d = tl.arange(0, BLOCK_D)
    rows = m0 + offs_m
    r_tile = m0 - i_m * BLOCK_M + offs_m
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

    dq = tl.zeros([DQ_M, BLOCK_D], dtype=tl.float32)
    n_steps = tl.cdiv(S, DQ_N)
    n_even = S // DQ_N
    r_lo = tl.load(p_run_ptr + i_m)
    r_hi = tl.load(p_run_ptr + i_m + 1)
    for r in range(r_lo, r_hi):
        s0, s1, kind, bits, start = _run(p_runs, r, (BLOCK_N // DQ_N), n_steps)
        if kind == 0:
            mid = tl.minimum(s1, n_even)
            for t in range(s0, mid):
                dq = _bwd_dq_step(dq, b_q, b_do, b_lse2, b_delta, t, p_k_bh, p_v_bh, sk_l, sv_l, rows, L, S, D,
                                  qk_scale, p_bits, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window, r_tile,
                                  0, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS, DQ_N, (BLOCK_N // DQ_N), BLOCK_D,
                                  EVEN_D, PREC)
            for t in range(tl.maximum(s0, mid), s1):
                dq = _bwd_dq_step(dq, b_q, b_do, b_lse2, b_delta, t, p_k_bh, p_v_bh, sk_l, sv_l, rows, L, S, D,
                                  qk_scale, p_bits, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window, r_tile,
                                  1, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS, DQ_N, (BLOCK_N // DQ_N), BLOCK_D,
                                  EVEN_D, PREC)
        elif kind == 1:
            for t in range(s0, s1):
                dq = _bwd_dq_step(dq, b_q, b_do, b_lse2, b_delta, t, p_k_bh, p_v_bh, sk_l, sv_l, rows, L, S, D,
                                  qk_scale, p_bits, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window, r_tile,
                                  2, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS, DQ_N, (BLOCK_N // DQ_N), BLOCK_D,
                                  EVEN_D, PREC)
        else:
            for t in range(s0, s1):
                p_bits_tile = p_bits + (bits + t // (BLOCK_N // DQ_N) - start).to(tl.int64) * (BLOCK_M * N_WORDS)
                dq = _bwd_dq_step(dq, b_q, b_do, b_lse2, b_delta, t, p_k_bh, p_v_bh, sk_l, sv_l, rows, L, S, D,
                                  qk_scale, p_bits_tile, b_ql, b_qd, b_qg, p_klev, p_kdoc, p_kgrp, window, r_tile,
                                  3, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS, DQ_N, (BLOCK_N // DQ_N), BLOCK_D,
                                  EVEN_D, PREC)
    dq = dq * scale
    p_dq_tile = p_dq + i_b * sdq_b + i_h * sdq_h + m0.to(tl.int64) * sdq_l
    tl.store(p_dq_tile + offs_m[:, None] * sdq_l + offs_d[None, :], rnd(dq, p_dq.dtype.element_ty),
             mask=(offs_m[:, None] < n_left) & (offs_d[None, :] < D))


@triton.jit
def _bwd_dkdv_step(dk, dv, b_k, b_v, t, p_q_bh, p_do_bh, p_lse_bh, p_delta_bh, sq_l, sdo_l, L, qk_scale,
                   p_bits_tile, p_qlev, p_qdoc, p_qgrp, b_kl, b_kd, b_kg, window, c_tile, D,
                   MODE: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, HAS_GROUP: tl.constexpr,
                   N_WORDS: tl.constexpr, STEP_M: tl.constexpr, NSTEP: tl.constexpr, BLOCK_D: tl.constexpr,
                   EVEN_D: tl.constexpr, PREC: tl.constexpr, KEY_MAJOR: tl.constexpr):
    """Step t, query rows [t * STEP_M, (t + 1) * STEP_M), into this program's dK, dV.
    Triton emits Hopper warpgroup MMAs only for dots whose M is >= 64 (mma.sync otherwise), so the orientation
    follows the slices: KEY_MAJOR (key slice >= 64): everything transposed, keys x queries (S^T = K Q^T,
    dP^T = V dO^T, dV += P^T dO, dK += dS^T Q: M = the key slice); else (query step >= 64 with a small key
    slice): S and dP query-major (M = the step) and dK, dV accumulated transposed, D x keys (dV^T += dO^T P,
    dK^T += Q^T dS: M = D)."""
    offs_s = tl.arange(0, STEP_M)
    offs_d = tl.arange(0, BLOCK_D)
    m0 = t * STEP_M
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
            ok = ok & (ql.to(tl.int64) - kl.to(tl.int64) < window)  # int64: see _visible
        if HAS_GROUP:
            ok = ok | (_along_queries(tl.load(p_qgrp + rows, mask=m_r, other=0), KEY_MAJOR) ==
                       _along_keys(b_kg, KEY_MAJOR))
        if HAS_DOC:
            ok = ok & (_along_queries(tl.load(p_qdoc + rows, mask=m_r, other=0), KEY_MAJOR) ==
                       _along_keys(b_kd, KEY_MAJOR))
        p = tl.where(ok, p, 0.0)
    elif MODE == 3:
        c = _along_keys(c_tile, KEY_MAJOR)
        words = tl.load(p_bits_tile + _along_queries((t % NSTEP) * STEP_M + offs_s, KEY_MAJOR) * N_WORDS + (c >> 5))
        p = tl.where(((words >> (c & 31)) & 1) != 0, p, 0.0)
    # Keys past S (the last key slice only) are never stored; queries past L have lse = +inf: p = 0.
    if KEY_MAJOR:
        dv = dot_acc(low(p, b_do.dtype), b_do, dv, PREC)
        dp = dot(b_v, tl.trans(b_do), PREC)
        ds = p * (dp - b_delta[None, :])
        dk = dot_acc(low(ds, b_q.dtype), b_q, dk, PREC)
    else:
        dv = dot_acc(tl.trans(b_do), low(p, b_do.dtype), dv, PREC)
        dp = dot(b_do, tl.trans(b_v), PREC)
        ds = p * (dp - b_delta[:, None])
        dk = dot_acc(tl.trans(b_q), low(ds, b_q.dtype), dk, PREC)
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


@triton.jit(do_not_specialize=_LENGTHS)
def _block_sparse_attention_bwd_dkdv_kernel(
    p_q, p_k, p_v, p_do, p_lse, p_delta, p_dk, p_dv,
    p_run_ptr, p_runs, p_tile_of, p_bits, p_qlev, p_klev, p_qdoc, p_kdoc, p_qgrp, p_kgrp,
    L, S, D, Hq, GROUP, window, qk_scale, scale,
    sq_b, sq_h, sq_l, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, sdo_b, sdo_h, sdo_l,
    sdk_b, sdk_h, sdk_l, sdv_b, sdv_h, sdv_l,
    HAS_RULE: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_DOC: tl.constexpr, HAS_GROUP: tl.constexpr,
    N_WORDS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DKDV_N: tl.constexpr,
    DKDV_M: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr, PREC: tl.constexpr, KEY_MAJOR: tl.constexpr,
):
    # torch.compile passes Python floats to a kernel as fp64 (the softmax state would turn fp64).
    qk_scale = tl.cast(qk_scale, tl.float32)
    scale = tl.cast(scale, tl.float32)
    # Steps per layout tile: BLOCK_M // DKDV_M (a constexpr, written out where used: Triton 3.6 has no local
    # constexpr assignment to rely on).
    n0 = tl.program_id(0) * DKDV_N
    i_hk = tl.program_id(1).to(tl.int64)
    i_b = tl.program_id(2).to(tl.int64)
    i_n = n0 // BLOCK_N  # the layout's key tile
    offs_n = tl.arange(0, DKDV_N)
    offs_d = tl.arange(0, BLOCK_D)
    cols = n0 + offs_n
    c_tile = n0 - i_n * BLOCK_N + offs_n  # the keys inside the layout's tile (bitmap columns)
    s_left = S - n0
    b_k = _load_rows(p_k + i_b * sk_b + i_hk * sk_h + n0.to(tl.int64) * sk_l, offs_n, s_left, sk_l, offs_d, D, EVEN_D)
    b_v = _load_rows(p_v + i_b * sv_b + i_hk * sv_h + n0.to(tl.int64) * sv_l, offs_n, s_left, sv_l, offs_d, D, EVEN_D)
    m_c = cols < S
    # Key-side rule vectors, hoisted. Columns past S need no mask here: the column of a key only feeds
    # that key's own rows of dK and dV, which are not stored.
    if HAS_RULE:
        b_kl = tl.load(p_klev + cols, mask=m_c, other=0)
    else:
        b_kl = tl.zeros([DKDV_N], dtype=tl.int32)
    b_kd = b_kl
    b_kg = b_kl
    if HAS_DOC:
        b_kd = tl.load(p_kdoc + cols, mask=m_c, other=0)
    if HAS_GROUP:
        b_kg = tl.load(p_kgrp + cols, mask=m_c, other=0)

    # dK, dV accumulate as keys x D (KEY_MAJOR) or transposed, D x keys (see _bwd_dkdv_step).
    if KEY_MAJOR:
        dk = tl.zeros([DKDV_N, BLOCK_D], dtype=tl.float32)
        dv = tl.zeros([DKDV_N, BLOCK_D], dtype=tl.float32)
    else:
        dk = tl.zeros([BLOCK_D, DKDV_N], dtype=tl.float32)
        dv = tl.zeros([BLOCK_D, DKDV_N], dtype=tl.float32)
    n_steps = tl.cdiv(L, DKDV_M)
    r_lo = tl.load(p_run_ptr + i_n)
    r_hi = tl.load(p_run_ptr + i_n + 1)
    for hh in range(0, GROUP):
        i_h = i_hk * GROUP + hh
        p_q_bh = p_q + i_b * sq_b + i_h * sq_h
        p_do_bh = p_do + i_b * sdo_b + i_h * sdo_h
        p_lse_bh = p_lse + (i_b * Hq + i_h) * L
        p_delta_bh = p_delta + (i_b * Hq + i_h) * L
        for r in range(r_lo, r_hi):
            s0, s1, kind, bits, start = _run(p_runs, r, (BLOCK_M // DKDV_M), n_steps)
            if kind == 0:
                for t in range(s0, s1):
                    dk, dv = _bwd_dkdv_step(dk, dv, b_k, b_v, t, p_q_bh, p_do_bh, p_lse_bh, p_delta_bh, sq_l,
                                            sdo_l, L, qk_scale, p_bits, p_qlev, p_qdoc, p_qgrp, b_kl, b_kd, b_kg,
                                            window, c_tile, D, 0, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS, DKDV_M,
                                            (BLOCK_M // DKDV_M), BLOCK_D, EVEN_D, PREC, KEY_MAJOR)
            elif kind == 1:
                for t in range(s0, s1):
                    dk, dv = _bwd_dkdv_step(dk, dv, b_k, b_v, t, p_q_bh, p_do_bh, p_lse_bh, p_delta_bh, sq_l,
                                            sdo_l, L, qk_scale, p_bits, p_qlev, p_qdoc, p_qgrp, b_kl, b_kd, b_kg,
                                            window, c_tile, D, 2, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS, DKDV_M,
                                            (BLOCK_M // DKDV_M), BLOCK_D, EVEN_D, PREC, KEY_MAJOR)
            else:
                for t in range(s0, s1):
                    # The bitmap is stored per forward tile: the transposed run names it.
                    tile = tl.load(p_tile_of + bits + t // (BLOCK_M // DKDV_M) - start)
                    p_bits_tile = p_bits + tile.to(tl.int64) * (BLOCK_M * N_WORDS)
                    dk, dv = _bwd_dkdv_step(dk, dv, b_k, b_v, t, p_q_bh, p_do_bh, p_lse_bh, p_delta_bh, sq_l,
                                            sdo_l, L, qk_scale, p_bits_tile, p_qlev, p_qdoc, p_qgrp, b_kl, b_kd, b_kg,
                                            window, c_tile, D, 3, HAS_WINDOW, HAS_DOC, HAS_GROUP, N_WORDS,
                                            DKDV_M, (BLOCK_M // DKDV_M), BLOCK_D, EVEN_D, PREC, KEY_MAJOR)
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

    def flags(self) -> dict:
        return dict(HAS_RULE=self.has_rule, HAS_WINDOW=self.has_window, HAS_DOC=self.has_doc,
                    HAS_GROUP=self.has_group, N_WORDS=self.n_words, BLOCK_M=self.block_q, BLOCK_N=self.block_k)


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
    grid = (triton.cdiv(L, cfg["FWD_M"]), Hq, B)
    torch.library.wrap_triton(_block_sparse_attention_fwd_kernel)[grid](
        q, k, v, out, lse, lay.q_run_ptr, lay.q_runs, lay.tile_bits, *lay.rule_args(),
        L, S, D, Hq, Hq // Hkv, lay.window, scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        **lay.flags(), FWD_M=cfg["FWD_M"], FWD_N=cfg["FWD_N"], BLOCK_D=BLOCK_D, EVEN_D=BLOCK_D == D,
        PREC=_precision(q.dtype), num_warps=cfg["FWD_WARPS"], num_stages=cfg["FWD_STAGES"],
        **({"maxnreg": cfg["FWD_MAXNREG"]} if cfg.get("FWD_MAXNREG") else {}))
    return out, lse


def block_sparse_attention_bwd(grad_out, grad_lse, q, k, v, out, lse, lay: LayoutArgs, scale: float, dkdv=None):
    """(dq, dk, dv) in the inputs' dtypes; grad_lse (B, Hq, L) float32 or None. dkdv: None (the Triton dK / dV
    kernel) or a function (q, k, v, grad_out, lse, delta) -> (dk, dv, dq or None) that computes them instead (dq
    None: the Triton dQ kernel runs)."""
    B, Hq, L, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    cfg = config_for_layout(D, q.dtype, q.device, lay.block_q, lay.block_k)
    if q.numel() == 0 or k.numel() == 0:
        # Nothing visible: every gradient is zero (and the kernels would launch no program for one side).
        return tuple(torch.zeros_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))
    BLOCK_D = max(16, triton.next_power_of_2(D))
    qk_scale = scale * LOG2E
    delta = torch.empty((B, Hq, L), dtype=torch.float32, device=q.device)
    pre_m = max(16, 4096 // BLOCK_D)  # rows per program of the preprocess: two (rows, D) fp32 tiles in registers
    torch.library.wrap_triton(_block_sparse_attention_bwd_preprocess_kernel)[(triton.cdiv(L, pre_m), Hq, B)](
        out, grad_out, grad_lse if grad_lse is not None else lse, delta, L, D, Hq,
        out.stride(0), out.stride(1), out.stride(2), grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
        HAS_DLSE=grad_lse is not None, BLOCK_M=pre_m, BLOCK_D=BLOCK_D, num_warps=4)
    common = dict(**lay.flags(), BLOCK_D=BLOCK_D, EVEN_D=BLOCK_D == D, PREC=_precision(q.dtype))
    dq = None
    if dkdv is not None:
        dk, dv, dq = dkdv(q, k, v, grad_out, lse, delta)
    else:
        dk = new_output(k.shape, dtype=k.dtype, device=k.device)
        dv = new_output(v.shape, dtype=v.dtype, device=v.device)
        torch.library.wrap_triton(_block_sparse_attention_bwd_dkdv_kernel)[(triton.cdiv(S, cfg["DKDV_N"]), Hkv, B)](
            q, k, v, grad_out, lse, delta, dk, dv, lay.k_run_ptr, lay.k_runs, lay.k_tile_bits, lay.tile_bits,
            *lay.rule_args(), L, S, D, Hq, Hq // Hkv, lay.window, qk_scale, scale,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
            dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
            DKDV_N=cfg["DKDV_N"], DKDV_M=cfg["DKDV_M"], KEY_MAJOR=cfg["DKDV_KEY_MAJOR"], **common,
            num_warps=cfg["DKDV_WARPS"], num_stages=cfg["DKDV_STAGES"])
    if dq is not None:
        return dq, dk, dv
    dq = new_output(q.shape, dtype=q.dtype, device=q.device)
    torch.library.wrap_triton(_block_sparse_attention_bwd_dq_kernel)[(triton.cdiv(L, cfg["DQ_M"]), Hq, B)](
        q, k, v, grad_out, lse, delta, dq, lay.q_run_ptr, lay.q_runs, lay.tile_bits, *lay.rule_args(),
        L, S, D, Hq, Hq // Hkv, lay.window, qk_scale, scale,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), grad_out.stride(0), grad_out.stride(1), grad_out.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2), DQ_M=cfg["DQ_M"], DQ_N=cfg["DQ_N"], **common,
        num_warps=cfg["DQ_WARPS"], num_stages=cfg["DQ_STAGES"])
    return dq, dk, dv
