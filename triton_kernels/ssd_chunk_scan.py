"""Triton kernels of ssd_chunk_scan (Mamba-2 SSD): three kernels, derivation in docs/ops/ssd_chunk_scan.md.

Per head the sequence is cut into chunks of BLOCK_Q tokens; inside a chunk the scan is a masked
attention-like product, across chunks a p x n state is carried.

* ``_ssd_fwd_kernel``: one program per (sequence, head, block of p) walks its chunks in order with
  the state in registers (fp32): the output of a chunk is (L o C B^T)(dt x) + decay * C S^T (+ D x,
  * silu(z)), then S <- decay * S + B^T (w x). dt processing and the in-chunk cumsum are fused in;
  the per-chunk states are never written (the backward recomputes them with STORE_STATES). Where the
  programs are too few to fill the GPU, a sequence is cut into segments (SEG_LOCAL pass + fold).
* ``_ssd_bwd_dstate_kernel``: the same walk in reverse carries dL/dS (fp32) and stores it per chunk.
* ``_ssd_bwd_kernel``: one program per (chunk, group, head split), all chunks in parallel: loops over
  the heads of its group so that dB and dC (shared by the heads of a group) are summed in registers
  and written once, deterministically. Everything else (dx, dz, ddt, dA, dD, the decays' gradients)
  is per head.

Pointer arithmetic is 64-bit: program ids, positions and chunk ids are int64 before any stride
multiplies them. Tensor-core products take operands in the input dtype with fp32 accumulation
(``input_precision="ieee"`` for fp32 inputs, so fp32 stays fp32-accurate).
"""
from __future__ import annotations

import warnings

import torch
import triton
import triton.language as tl

from arkernels._outputs import new_output
# Unaliased: torch.compile re-emits these helpers under their own names.
from arkernels.triton_kernels._common import dot, dot_acc, rnd

wrap_triton = torch.library.wrap_triton

# Tiles are addressed through block pointers: no per-element 64-bit pointers in registers (measured:
# fewer spills than pointer tensors), offsets within a tile in int32 and the 64-bit part in the base.
# Triton 3.8 marks tl.make_block_ptr deprecated in favour of TMA descriptors, which need 16-byte
# aligned strides that slices of a fused projection do not always have; it is still supported.
warnings.filterwarnings("ignore", message="tl.make_block_ptr is deprecated")

# Internal chunk lengths (the chunk_size argument is a hint: results do not depend on it beyond
# rounding). The forward's is free; the three backward kernels share theirs (it indexes the per-chunk
# state buffers). 64 keeps the backward's (Q, Q) and (Q, n) fp32 tiles in registers; a smaller one
# trades register pressure for larger state buffers (n_chunks x h x p x n each).
FWD_BLOCK_Q = 32  # measured on the H200 (bf16, n 128): 0.32 ms against 0.42 at 64 (4 warps each)
BWD_BLOCK_Q = 64
MAX_N = 256  # the state's n dimension lives in registers whole


@triton.jit
def _tile(base, n_rows, n_cols, s_row, s_col, r0, c0, BR: tl.constexpr, BC: tl.constexpr):
    """Block pointer to the (BR, BC) tile at (r0, c0) of a (n_rows, n_cols) matrix: no per-element
    pointers in registers; rows/cols past the end read as zero (boundary_check) and are not stored."""
    return tl.make_block_ptr(base=base, shape=(n_rows, n_cols), strides=(s_row, s_col),
                             offsets=(r0.to(tl.int32), c0.to(tl.int32)), block_shape=(BR, BC), order=(1, 0))


@triton.jit
def _state_tile(base, p_rows, N, p0, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """Block pointer to rows p0 .. p0 + BLOCK_P of a dense (p, n) state; rows from p_rows on read as zero
    and are not stored (p_rows = 0 masks a whole load or store)."""
    return _tile(base, p_rows, N, N, 1, p0, p0 * 0, BLOCK_P, BLOCK_N)


@triton.jit
def _load_D(p_D, hh, o_p, m_p, sD_h, sD_p, D_PER_HEAD: tl.constexpr):
    """D of head hh: a scalar when D is (h,) (fewer registers), else the block o_p of its row."""
    if D_PER_HEAD:
        return tl.load(p_D + hh * sD_h).to(tl.float32)
    else:
        return tl.load(p_D + hh * sD_h + o_p * sD_p, mask=m_p, other=0.0).to(tl.float32)


@triton.jit
def _times_D(v, Dv, D_PER_HEAD: tl.constexpr):
    if D_PER_HEAD:
        return v * Dv
    else:
        return v * Dv[None, :]


@triton.jit
def _softplus(u):
    # log1p(exp(u)) accurate for small exp(u) (the w - 1 trick); callers pass u through above 20.
    e = tl.exp(u)
    w = 1.0 + e
    return tl.where(w == 1.0, e, tl.log(w) * (e / (w - 1.0)))


@triton.jit
def _load_dt(ptrs, p_dtb, hh, m_t, sdtb, dt_min, dt_max, HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Processed dt at `ptrs` (one head, a chunk of positions; 0 where masked) and d dt / d dt_raw."""
    u = tl.load(ptrs, mask=m_t, other=0.0).to(tl.float32)
    if HAS_DTB:
        u += tl.load(p_dtb + hh * sdtb).to(tl.float32)
    s = u
    grad = tl.full(u.shape, 1.0, tl.float32)
    if SOFTPLUS:
        s = tl.where(u <= 20.0, _softplus(u), u)
        grad = tl.where(u <= 20.0, tl.sigmoid(u), 1.0)
    grad = tl.where((s >= dt_min) & (s <= dt_max), grad, 0.0)
    dt = tl.minimum(tl.maximum(s, dt_min), dt_max)
    return tl.where(m_t, dt, 0.0), grad


@triton.jit
def _segments(p_seq, t, m_t, sseq_l, HAS_SEQ: tl.constexpr, BLOCK_Q: tl.constexpr):
    """Segment counter inside a chunk (+1 at every token whose seq_idx differs from the previous
    token's, including the chunk's first token), and the counter of the chunk's last token."""
    if HAS_SEQ:
        cur = tl.load(p_seq + t * sseq_l, mask=m_t, other=0)
        prev = tl.load(p_seq + (t - 1) * sseq_l, mask=m_t & (t > 0), other=0)
        change = tl.where(m_t & (t > 0) & (cur != prev), 1, 0)
        cnt = tl.cumsum(change, axis=0)
        cnt_last = tl.max(cnt, axis=0)  # counters never decrease; padding repeats the last one
    else:
        cnt = tl.zeros([BLOCK_Q], dtype=tl.int32)
        cnt_last = 0
    return cnt, cnt_last


@triton.jit
def _sequence(p_cu, p_coff, i_s, L, VARLEN: tl.constexpr, BLOCK_Q: tl.constexpr):
    """(row, first token, end token, first chunk id) of sequence i_s."""
    if VARLEN:
        t_begin = tl.load(p_cu + i_s)
        t_end = tl.load(p_cu + i_s + 1)
        c_base = tl.load(p_coff + i_s)
        row = i_s * 0
    else:
        t_begin = i_s * 0
        t_end = i_s * 0 + L
        c_base = i_s * tl.cdiv(L, BLOCK_Q)
        row = i_s
    return row, t_begin, t_end, c_base


@triton.jit
def _segment_of(pid, p_cu, p_coff, L, n_seg, seg_chunks, SEG_LOCAL: tl.constexpr, FIRST_LOCAL: tl.constexpr,
                VARLEN: tl.constexpr, BLOCK_Q: tl.constexpr):
    """(sequence, segment, row, sequence end, first chunk id, last segment, active, segment begin,
    segment end) of program `pid` of a segmented walk. The SEG_LOCAL pass launches n_seg - 1 segments per
    sequence, starting at FIRST_LOCAL (0 forward, 1 backward). Segments past a (varlen) sequence's end are
    inactive; the one holding its last token is the last."""
    n_launched = n_seg - 1 if SEG_LOCAL else n_seg
    i_s = pid // n_launched
    i_seg = pid % n_launched + (FIRST_LOCAL if SEG_LOCAL else 0)
    row, t_begin, t_end, c_base = _sequence(p_cu, p_coff, i_s, L, VARLEN, BLOCK_Q)
    seg_tokens = seg_chunks * BLOCK_Q
    last_seg = tl.maximum(tl.cdiv(t_end - t_begin, seg_tokens) - 1, 0)
    seg_begin = t_begin + i_seg * seg_tokens
    seg_end = tl.minimum(seg_begin + seg_tokens, t_end)
    return i_s, i_seg, row, t_end, c_base, last_seg, i_seg <= last_seg, seg_begin, seg_end


@triton.jit
def _ssd_fwd_kernel(
    p_x, p_dt, p_A, p_B, p_C, p_D, p_z, p_dtb, p_init, p_seq, p_cu, p_coff,
    p_out, p_final, p_states, p_seg_end, p_seg_decay,
    L, H, P, N, heads_per_group, dt_min, dt_max, n_seg, seg_chunks,
    sx_b, sx_l, sx_h, sx_p, sdt_b, sdt_l, sdt_h, sB_b, sB_l, sB_g, sB_n, sC_b, sC_l, sC_g, sC_n,
    sz_b, sz_l, sz_h, sz_p, so_b, so_l, so_h, so_p, sseq_b, sseq_l, sD_h, sD_p, sdtb,
    HAS_D: tl.constexpr, D_PER_HEAD: tl.constexpr, HAS_Z: tl.constexpr, HAS_DTB: tl.constexpr,
    HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr, VARLEN: tl.constexpr, SOFTPLUS: tl.constexpr, WRITE_OUT: tl.constexpr,
    STORE_STATES: tl.constexpr, SEG_LOCAL: tl.constexpr, PREC: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program per (sequence, segment, head, block of p). A sequence is cut into n_seg segments of
    seg_chunks chunks (n_seg = 1: the whole sequence). SEG_LOCAL: the pass over segments 0 .. n_seg - 2
    that only stores each segment's end state from a zero start (segment 0: from the initial state) in
    p_seg_end and its total decay in p_seg_decay. Otherwise a program starts from the fold of the
    earlier segments' (decay, end state) pairs, walks its segment and the last segment stores the final
    state. S_end = decay * S_start + local end state holds because the decay is a scalar per head."""
    pid = tl.program_id(0).to(tl.int64)
    hh = tl.program_id(1).to(tl.int64)
    i_p = tl.program_id(2).to(tl.int64)
    i_s, i_seg, row, t_end, c_base, last_seg, active, seg_begin, seg_end = _segment_of(
        pid, p_cu, p_coff, L, n_seg, seg_chunks, SEG_LOCAL, 0, VARLEN, BLOCK_Q)
    gg = hh // heads_per_group
    DT = p_x.dtype.element_ty

    o_q = tl.arange(0, BLOCK_Q).to(tl.int64)
    o_p = i_p * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    m_p = o_p < P
    causal = o_q[:, None] >= o_q[None, :]
    A_h = tl.load(p_A + hh).to(tl.float32)

    # The state, (p, n) of this head and block of p, in fp32; states are dense (n_states, h, p, n). The
    # initial state is segment 0's start; a later segment starts from the fold of the earlier ones.
    p0 = i_p * BLOCK_P
    o_state = (i_s * H + hh) * P * N
    if HAS_INIT:
        init_rows = tl.where(i_seg == 0, P, 0)
        S = tl.load(_state_tile(p_init + o_state, init_rows, N, p0, BLOCK_P, BLOCK_N),
                    boundary_check=(0, 1), padding_option="zero").to(tl.float32)
    else:
        S = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    if not SEG_LOCAL:
        n_fold = tl.where(active, i_seg, 0)
        for j in range(0, n_fold):
            i_end = i_s * (n_seg - 1) + j
            decay_j = tl.load(p_seg_decay + i_end * H + hh)
            S = decay_j * S + tl.load(_state_tile(p_seg_end + (i_end * H + hh) * P * N, P, N, p0, BLOCK_P, BLOCK_N),
                                      boundary_check=(0, 1), padding_option="zero")
    if HAS_D:
        Dv = _load_D(p_D, hh, o_p, m_p, sD_h, sD_p, D_PER_HEAD)

    p_x_row = p_x + row * sx_b + hh * sx_h
    p_B_row = p_B + row * sB_b + gg * sB_g
    p_C_row = p_C + row * sC_b + gg * sC_g
    p_dt_row = p_dt + row * sdt_b
    n_chunks = tl.where(active, tl.cdiv(seg_end - seg_begin, BLOCK_Q), 0)
    seg_decay = tl.sum(tl.zeros([BLOCK_Q], dtype=tl.float32), axis=0) + 1.0
    for i_c in range(0, n_chunks):
        t = seg_begin + i_c * BLOCK_Q + o_q
        m_t = t < t_end
        dt, _ = _load_dt(p_dt_row + t * sdt_l + hh * sdt_h, p_dtb, hh, m_t, sdtb, dt_min, dt_max, HAS_DTB,
                         SOFTPLUS)
        dA = dt * A_h
        cs = tl.cumsum(dA, axis=0)
        cs_last = tl.sum(dA, axis=0)
        cnt, cnt_last = _segments(p_seq + row * sseq_b, t, m_t, sseq_l, HAS_SEQ, BLOCK_Q)

        t0 = seg_begin + i_c * BLOCK_Q
        X = tl.load(_tile(p_x_row, t_end, P, sx_l, sx_p, t0, i_p * BLOCK_P, BLOCK_Q, BLOCK_P),
                    boundary_check=(0, 1), padding_option="zero")
        Bt = tl.load(_tile(p_B_row, t_end, N, sB_l, sB_n, t0, t0 * 0, BLOCK_Q, BLOCK_N),
                     boundary_check=(0, 1), padding_option="zero")
        if WRITE_OUT:
            Ct = tl.load(_tile(p_C_row, t_end, N, sC_l, sC_n, t0, t0 * 0, BLOCK_Q, BLOCK_N),
                         boundary_check=(0, 1), padding_option="zero")
            CB = dot(Ct, tl.trans(Bt), PREC)
            m_same = causal & (cnt[:, None] == cnt[None, :])
            decay = tl.where(m_same, tl.exp(cs[:, None] - cs[None, :]), 0.0)
            Pm = rnd(CB * decay * dt[None, :], DT)
            g = tl.where(cnt == 0, tl.exp(cs), 0.0)
            y = dot(Ct, tl.trans(rnd(S, DT)), PREC) * g[:, None]
            y = dot_acc(Pm, X, y, PREC)
            if HAS_D:
                y += _times_D(X.to(tl.float32), Dv, D_PER_HEAD)
            if HAS_Z:
                Z = tl.load(_tile(p_z + row * sz_b + hh * sz_h, t_end, P, sz_l, sz_p, t0, i_p * BLOCK_P, BLOCK_Q,
                                  BLOCK_P), boundary_check=(0, 1), padding_option="zero").to(tl.float32)
                y = y * Z * tl.sigmoid(Z)
            tl.store(_tile(p_out + row * so_b + hh * so_h, t_end, P, so_l, so_p, t0, i_p * BLOCK_P, BLOCK_Q, BLOCK_P),
                     rnd(y, p_out.dtype.element_ty), boundary_check=(0, 1))
        if STORE_STATES:
            # The state before this chunk, for the backward.
            o_chunk = ((c_base + i_seg * seg_chunks + i_c) * H + hh) * P * N
            tl.store(_state_tile(p_states + o_chunk, P, N, p0, BLOCK_P, BLOCK_N),
                     rnd(S, p_states.dtype.element_ty), boundary_check=(0, 1))
        w = tl.where(cnt == cnt_last, tl.exp(cs_last - cs) * dt, 0.0)
        gamma = tl.where(cnt_last == 0, tl.exp(cs_last), 0.0)
        Xw = rnd(X.to(tl.float32) * w[:, None], DT)
        S = dot_acc(tl.trans(Xw), Bt, S * gamma, PREC)
        if SEG_LOCAL:
            seg_decay *= gamma
    if SEG_LOCAL:
        # Only segments before the sequence's last are folded by later ones.
        keep = i_seg < last_seg
        tl.store(_state_tile(p_seg_end + (pid * H + hh) * P * N, tl.where(keep, P, 0), N, p0, BLOCK_P, BLOCK_N),
                 S, boundary_check=(0, 1))
        tl.store(p_seg_decay + pid * H + hh, seg_decay, mask=keep & (i_p == 0))
    else:
        final_rows = tl.where(i_seg == last_seg, P, 0)
        tl.store(_state_tile(p_final + o_state, final_rows, N, p0, BLOCK_P, BLOCK_N), S, boundary_check=(0, 1))


@triton.jit
def _ssd_bwd_dstate_kernel(
    p_dout, p_dt, p_A, p_C, p_z, p_dtb, p_dfinal, p_seq, p_cu, p_coff,
    p_dstates, p_dinit, p_seg_end, p_seg_decay,
    L, H, P, N, heads_per_group, dt_min, dt_max, n_seg, seg_chunks,
    sg_b, sg_l, sg_h, sg_p, sdt_b, sdt_l, sdt_h, sC_b, sC_l, sC_g, sC_n, sz_b, sz_l, sz_h, sz_p,
    sseq_b, sseq_l, sdtb,
    HAS_Z: tl.constexpr, HAS_DTB: tl.constexpr, HAS_DFINAL: tl.constexpr, WRITE_DINIT: tl.constexpr,
    HAS_SEQ: tl.constexpr, VARLEN: tl.constexpr, SOFTPLUS: tl.constexpr, SEG_LOCAL: tl.constexpr,
    PREC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dS_c = dL/d(state after chunk c), walking chunks backwards:
    dS_{c-1} = gamma_c dS_c + sum_t g_t dy_t C_t^T, seeded with the final state's gradient.
    Segments mirror the forward's (_ssd_fwd_kernel): SEG_LOCAL walks segments 1 .. n_seg - 1 from a zero
    gradient at their end (the last one: from the final state's) and stores the gradient at their start
    and their decay; the main pass starts a segment from the fold of the later segments' pairs."""
    pid = tl.program_id(0).to(tl.int64)
    hh = tl.program_id(1).to(tl.int64)
    i_p = tl.program_id(2).to(tl.int64)
    i_s, i_seg, row, t_end, c_base, last_seg, active, seg_begin, seg_end = _segment_of(
        pid, p_cu, p_coff, L, n_seg, seg_chunks, SEG_LOCAL, 1, VARLEN, BLOCK_Q)
    gg = hh // heads_per_group
    DT = p_C.dtype.element_ty

    o_q = tl.arange(0, BLOCK_Q).to(tl.int64)
    A_h = tl.load(p_A + hh).to(tl.float32)
    p0 = i_p * BLOCK_P
    o_state = (i_s * H + hh) * P * N
    if HAS_DFINAL:
        dfinal_rows = tl.where(i_seg == last_seg, P, 0)
        dS = tl.load(_state_tile(p_dfinal + o_state, dfinal_rows, N, p0, BLOCK_P, BLOCK_N),
                     boundary_check=(0, 1), padding_option="zero").to(tl.float32)
    else:
        dS = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    if not SEG_LOCAL:
        n_fold = tl.where(active, last_seg - i_seg, 0)
        for jj in range(0, n_fold):
            i_end = i_s * (n_seg - 1) + (last_seg - jj - 1)  # segment last_seg - jj
            decay_j = tl.load(p_seg_decay + i_end * H + hh)
            dS = decay_j * dS + tl.load(_state_tile(p_seg_end + (i_end * H + hh) * P * N, P, N, p0, BLOCK_P, BLOCK_N),
                                        boundary_check=(0, 1), padding_option="zero")

    p_dt_row = p_dt + row * sdt_b
    n_chunks = tl.where(active, tl.cdiv(seg_end - seg_begin, BLOCK_Q), 0)
    seg_decay = tl.sum(tl.zeros([BLOCK_Q], dtype=tl.float32), axis=0) + 1.0
    for i in range(0, n_chunks):
        i_c = n_chunks - 1 - i
        if not SEG_LOCAL:
            o_chunk = ((c_base + i_seg * seg_chunks + i_c) * H + hh) * P * N
            tl.store(_state_tile(p_dstates + o_chunk, P, N, p0, BLOCK_P, BLOCK_N),
                     rnd(dS, p_dstates.dtype.element_ty), boundary_check=(0, 1))
        t0 = seg_begin + i_c * BLOCK_Q
        t = t0 + o_q
        m_t = t < t_end
        dt, _ = _load_dt(p_dt_row + t * sdt_l + hh * sdt_h, p_dtb, hh, m_t, sdtb, dt_min, dt_max, HAS_DTB,
                         SOFTPLUS)
        dA = dt * A_h
        cs = tl.cumsum(dA, axis=0)
        cs_last = tl.sum(dA, axis=0)
        cnt, cnt_last = _segments(p_seq + row * sseq_b, t, m_t, sseq_l, HAS_SEQ, BLOCK_Q)
        dY = tl.load(_tile(p_dout + row * sg_b + hh * sg_h, t_end, P, sg_l, sg_p, t0, p0, BLOCK_Q, BLOCK_P),
                     boundary_check=(0, 1), padding_option="zero").to(tl.float32)
        if HAS_Z:
            Z = tl.load(_tile(p_z + row * sz_b + hh * sz_h, t_end, P, sz_l, sz_p, t0, p0, BLOCK_Q, BLOCK_P),
                        boundary_check=(0, 1), padding_option="zero").to(tl.float32)
            dY = dY * Z * tl.sigmoid(Z)
        Ct = tl.load(_tile(p_C + row * sC_b + gg * sC_g, t_end, N, sC_l, sC_n, t0, t0 * 0, BLOCK_Q, BLOCK_N),
                     boundary_check=(0, 1), padding_option="zero")
        g = tl.where(cnt == 0, tl.exp(cs), 0.0)
        gamma = tl.where(cnt_last == 0, tl.exp(cs_last), 0.0)
        dYg = rnd(dY * g[:, None], DT)
        dS = gamma * dS + dot(tl.trans(dYg), Ct, PREC)
        if SEG_LOCAL:
            seg_decay *= gamma
    if SEG_LOCAL:
        # Segment i_seg (1 .. last_seg) is stored at index i_seg - 1 of its sequence.
        i_end = i_s * (n_seg - 1) + i_seg - 1
        tl.store(_state_tile(p_seg_end + (i_end * H + hh) * P * N, tl.where(active, P, 0), N, p0, BLOCK_P, BLOCK_N),
                 dS, boundary_check=(0, 1))
        tl.store(p_seg_decay + i_end * H + hh, seg_decay, mask=active & (i_p == 0))
    elif WRITE_DINIT:
        tl.store(_state_tile(p_dinit + o_state, tl.where(i_seg == 0, P, 0), N, p0, BLOCK_P, BLOCK_N), dS,
                 boundary_check=(0, 1))


@triton.jit
def _chunk(p_ctab, j, L, VARLEN: tl.constexpr, BLOCK_Q: tl.constexpr):
    """(row, first token, end token) of chunk id j; end <= first for a padding entry (varlen)."""
    if VARLEN:
        t0 = tl.load(p_ctab + 2 * j)
        t1 = tl.load(p_ctab + 2 * j + 1)
        row = j * 0
    else:
        nc = tl.cdiv(L, BLOCK_Q)
        row = j // nc
        t0 = (j % nc) * BLOCK_Q
        t1 = tl.minimum(t0 + BLOCK_Q, L)
    return row, t0, t1


@triton.jit
def _ssd_bwd_dx_kernel(
    p_x, p_dt, p_A, p_B, p_C, p_D, p_z, p_dtb, p_seq, p_ctab, p_states, p_dstates, p_dout,
    p_dx, p_dz, p_ddt, p_dA_part, p_dD_part,
    L, H, P, N, heads_per_group, dt_min, dt_max,
    sx_b, sx_l, sx_h, sx_p, sdt_b, sdt_l, sdt_h, sB_b, sB_l, sB_g, sB_n, sC_b, sC_l, sC_g, sC_n,
    sz_b, sz_l, sz_h, sz_p, sg_b, sg_l, sg_h, sg_p, sseq_b, sseq_l, sD_h, sD_p, sdtb,
    HAS_D: tl.constexpr, D_PER_HEAD: tl.constexpr, HAS_Z: tl.constexpr, HAS_DTB: tl.constexpr,
    HAS_SEQ: tl.constexpr, VARLEN: tl.constexpr, SOFTPLUS: tl.constexpr, PREC: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Per (chunk, head), all chunks in parallel: dx, dz, the raw dt's gradient, and per-chunk partial
    sums of dA and dD, from the states before the chunk (S) and the gradient of the state after it (dS)."""
    j = tl.program_id(0).to(tl.int64)  # chunk id (index into the state buffers)
    hh = tl.program_id(1).to(tl.int64)
    gg = hh // heads_per_group
    row, t0, t1 = _chunk(p_ctab, j, L, VARLEN, BLOCK_Q)
    valid = t1 > t0
    DT = p_x.dtype.element_ty

    o_q = tl.arange(0, BLOCK_Q).to(tl.int64)
    t = t0 + o_q
    m_t = t < t1
    causal = o_q[:, None] >= o_q[None, :]

    Bt = tl.load(_tile(p_B + row * sB_b + gg * sB_g, t1, N, sB_l, sB_n, t0, t0 * 0, BLOCK_Q, BLOCK_N),
                 boundary_check=(0, 1), padding_option="zero")
    Ct = tl.load(_tile(p_C + row * sC_b + gg * sC_g, t1, N, sC_l, sC_n, t0, t0 * 0, BLOCK_Q, BLOCK_N),
                 boundary_check=(0, 1), padding_option="zero")
    CB = dot(Ct, tl.trans(Bt), PREC)
    cnt, cnt_last = _segments(p_seq + row * sseq_b, t, m_t, sseq_l, HAS_SEQ, BLOCK_Q)
    A_h = tl.load(p_A + hh).to(tl.float32)
    dt, dt_grad = _load_dt(p_dt + row * sdt_b + t * sdt_l + hh * sdt_h, p_dtb, hh, m_t, sdtb, dt_min, dt_max,
                           HAS_DTB, SOFTPLUS)
    dA = dt * A_h
    cs = tl.cumsum(dA, axis=0)
    cs_last = tl.sum(dA, axis=0)
    decay = tl.where(causal & (cnt[:, None] == cnt[None, :]), tl.exp(cs[:, None] - cs[None, :]), 0.0)
    K = CB * decay  # y_intra = (K * dt_s) @ x
    Pm = rnd(K * dt[None, :], DT)
    g = tl.where(cnt == 0, tl.exp(cs), 0.0)
    e = tl.where(cnt == cnt_last, tl.exp(cs_last - cs), 0.0)
    w = e * dt
    gamma = tl.where(cnt_last == 0, tl.exp(cs_last), 0.0)

    dP = tl.zeros([BLOCK_Q, BLOCK_Q], dtype=tl.float32)
    dg = tl.zeros([BLOCK_Q], dtype=tl.float32)
    dw = tl.zeros([BLOCK_Q], dtype=tl.float32)
    dgamma = tl.sum(tl.zeros([BLOCK_Q], dtype=tl.float32), axis=0)
    dD_acc = tl.sum(tl.zeros([BLOCK_Q], dtype=tl.float32), axis=0)
    o_head = (j * H + hh) * P
    o_dx = (row * L * H + hh) * P  # dx, dz: dense (b, l, h, p)
    p_rows = tl.where(valid, P, 0)  # a padding chunk's states were never written: read none
    for i_p in range(0, tl.cdiv(P, BLOCK_P)):
        p0 = i_p * BLOCK_P
        X = tl.load(_tile(p_x + row * sx_b + hh * sx_h, t1, P, sx_l, sx_p, t0, p0, BLOCK_Q, BLOCK_P),
                    boundary_check=(0, 1), padding_option="zero")
        Xf = X.to(tl.float32)
        dY = tl.load(_tile(p_dout + row * sg_b + hh * sg_h, t1, P, sg_l, sg_p, t0, p0, BLOCK_Q, BLOCK_P),
                     boundary_check=(0, 1), padding_option="zero").to(tl.float32)
        S = tl.load(_tile(p_states + o_head * N, p_rows, N, N, 1, p0, p0 * 0, BLOCK_P, BLOCK_N),
                    boundary_check=(0, 1), padding_option="zero")
        dS = tl.load(_tile(p_dstates + o_head * N, p_rows, N, N, 1, p0, p0 * 0, BLOCK_P, BLOCK_N),
                     boundary_check=(0, 1), padding_option="zero")
        CS = dot(Ct, tl.trans(rnd(S, DT)), PREC)  # (Q, BLOCK_P): C_t S^T
        if HAS_D:
            o_p = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
            m_p = o_p < P
            Dv = _load_D(p_D, hh, o_p, m_p, sD_h, sD_p, D_PER_HEAD)
        if HAS_Z:
            # Recompute y for dz = dout * y * silu'(z).
            Z = tl.load(_tile(p_z + row * sz_b + hh * sz_h, t1, P, sz_l, sz_p, t0, p0, BLOCK_Q, BLOCK_P),
                        boundary_check=(0, 1), padding_option="zero").to(tl.float32)
            y = dot_acc(Pm, X, g[:, None] * CS, PREC)
            if HAS_D:
                y += _times_D(Xf, Dv, D_PER_HEAD)
            sig = tl.sigmoid(Z)
            dz = dY * y * sig * (1.0 + Z * (1.0 - sig))
            tl.store(_tile(p_dz + o_dx, t1, P, H * P, 1, t0, p0, BLOCK_Q, BLOCK_P), rnd(dz, p_dz.dtype.element_ty),
                     boundary_check=(0, 1))
            dY = dY * Z * sig
        dYc = rnd(dY, DT)
        # intra-chunk: y = Pm @ x
        dX = dot(tl.trans(Pm), dYc, PREC)
        dP = dot_acc(dYc, tl.trans(X), dP, PREC)
        # from the state before the chunk: y += g_t C_t S^T
        dg += tl.sum(dY * CS, axis=1)
        # into the state after the chunk: S' = gamma S + sum_s w_s x_s B_s^T
        BdS = dot(Bt, tl.trans(rnd(dS, DT)), PREC)  # (Q, BLOCK_P)
        dX += w[:, None] * BdS
        dw += tl.sum(Xf * BdS, axis=1)
        dgamma += tl.sum(tl.sum(dS.to(tl.float32) * S.to(tl.float32), axis=1), axis=0)
        if HAS_D:
            dX += _times_D(dY, Dv, D_PER_HEAD)
            if D_PER_HEAD:
                dD_acc += tl.sum(tl.sum(dY * Xf, axis=1), axis=0)
            else:
                tl.store(p_dD_part + o_head + o_p, tl.sum(dY * Xf, axis=0), mask=m_p)
        tl.store(_tile(p_dx + o_dx, t1, P, H * P, 1, t0, p0, BLOCK_Q, BLOCK_P), rnd(dX, p_dx.dtype.element_ty),
                 boundary_check=(0, 1))

    # Gradients of the decays and of dt (derivation in the doc). ddA_r = d loss / d(dt_r A): each term
    # is summed over the pairs it really depends on, never as a difference of two large sums
    # (cancellation): cs_t - cs_s contains dA_r for s < r <= t, cs_t for r <= t, cs_last - cs_s for
    # s < r, cs_last for every r.
    ddt = tl.sum(dP * K, axis=0)
    dlog = dP * dt[None, :] * K  # d loss / d(cs_t - cs_s)
    before_r = tl.cumsum(dlog, axis=1) - dlog  # [t, r]: sum over s < r
    ddA = tl.sum(tl.where(causal, before_r, 0.0), axis=0)  # sum over t >= r
    ddt += dw * e
    de = dw * dt * e
    ddA += tl.cumsum(dg * g, axis=0, reverse=True) + (tl.cumsum(de, axis=0) - de) + dgamma * gamma
    ddt += ddA * A_h
    tl.store(p_dA_part + j * H + hh, tl.sum(ddA * dt, axis=0))
    tl.store(p_ddt + (row * L + t) * H + hh, ddt * dt_grad, mask=m_t)
    if HAS_D:
        if D_PER_HEAD:
            tl.store(p_dD_part + j * H + hh, dD_acc)


@triton.jit
def _ssd_bwd_dbc_kernel(
    p_x, p_dt, p_A, p_B, p_C, p_z, p_dtb, p_seq, p_ctab, p_states, p_dstates, p_dout,
    p_dB, p_dC,
    L, H, P, N, heads_per_group, heads_per_prog, dt_min, dt_max,
    sx_b, sx_l, sx_h, sx_p, sdt_b, sdt_l, sdt_h, sB_b, sB_l, sB_g, sB_n, sC_b, sC_l, sC_g, sC_n,
    sz_b, sz_l, sz_h, sz_p, sg_b, sg_l, sg_h, sg_p, sseq_b, sseq_l, sdtb, s_split,
    HAS_Z: tl.constexpr, HAS_DTB: tl.constexpr, HAS_SEQ: tl.constexpr,
    VARLEN: tl.constexpr, SOFTPLUS: tl.constexpr, PREC: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Per (chunk, group, split of the group's heads): dB and dC, shared by the heads of a group, summed
    over the heads in registers and written once (deterministic):
    dC_t = sum_h [g_t dy_t S^T + sum_s dCB_ts B_s],  dB_s = sum_h [w_s x_s dS] + sum_t dCB_ts C_t,
    with dCB = sum_h (dy x^T) * dt_s * decay (C B^T's gradient)."""
    j = tl.program_id(0).to(tl.int64)
    gg = tl.program_id(1).to(tl.int64)
    i_split = tl.program_id(2).to(tl.int64)
    row, t0, t1 = _chunk(p_ctab, j, L, VARLEN, BLOCK_Q)
    valid = t1 > t0
    DT = p_x.dtype.element_ty

    o_q = tl.arange(0, BLOCK_Q).to(tl.int64)
    t = t0 + o_q
    m_t = t < t1
    causal = o_q[:, None] >= o_q[None, :]
    cnt, cnt_last = _segments(p_seq + row * sseq_b, t, m_t, sseq_l, HAS_SEQ, BLOCK_Q)
    m_same = causal & (cnt[:, None] == cnt[None, :])
    p_rows = tl.where(valid, P, 0)

    dCB = tl.zeros([BLOCK_Q, BLOCK_Q], dtype=tl.float32)
    dB_acc = tl.zeros([BLOCK_Q, BLOCK_N], dtype=tl.float32)
    dC_acc = tl.zeros([BLOCK_Q, BLOCK_N], dtype=tl.float32)
    for ih in range(0, heads_per_prog):
        hh = gg * heads_per_group + i_split * heads_per_prog + ih
        A_h = tl.load(p_A + hh).to(tl.float32)
        dt, _ = _load_dt(p_dt + row * sdt_b + t * sdt_l + hh * sdt_h, p_dtb, hh, m_t, sdtb, dt_min, dt_max,
                         HAS_DTB, SOFTPLUS)
        dA = dt * A_h
        cs = tl.cumsum(dA, axis=0)
        cs_last = tl.sum(dA, axis=0)
        g = tl.where(cnt == 0, tl.exp(cs), 0.0)
        w = tl.where(cnt == cnt_last, tl.exp(cs_last - cs), 0.0) * dt
        o_head = (j * H + hh) * P
        dP = tl.zeros([BLOCK_Q, BLOCK_Q], dtype=tl.float32)
        for i_p in range(0, tl.cdiv(P, BLOCK_P)):
            p0 = i_p * BLOCK_P
            X = tl.load(_tile(p_x + row * sx_b + hh * sx_h, t1, P, sx_l, sx_p, t0, p0, BLOCK_Q, BLOCK_P),
                        boundary_check=(0, 1), padding_option="zero")
            dY = tl.load(_tile(p_dout + row * sg_b + hh * sg_h, t1, P, sg_l, sg_p, t0, p0, BLOCK_Q, BLOCK_P),
                         boundary_check=(0, 1), padding_option="zero").to(tl.float32)
            if HAS_Z:
                Z = tl.load(_tile(p_z + row * sz_b + hh * sz_h, t1, P, sz_l, sz_p, t0, p0, BLOCK_Q, BLOCK_P),
                            boundary_check=(0, 1), padding_option="zero").to(tl.float32)
                dY = dY * Z * tl.sigmoid(Z)
            S = tl.load(_tile(p_states + o_head * N, p_rows, N, N, 1, p0, p0 * 0, BLOCK_P, BLOCK_N),
                        boundary_check=(0, 1), padding_option="zero")
            dS = tl.load(_tile(p_dstates + o_head * N, p_rows, N, N, 1, p0, p0 * 0, BLOCK_P, BLOCK_N),
                         boundary_check=(0, 1), padding_option="zero")
            dC_acc = dot_acc(rnd(dY * g[:, None], DT), rnd(S, DT), dC_acc, PREC)
            dB_acc = dot_acc(rnd(X.to(tl.float32) * w[:, None], DT), rnd(dS, DT), dB_acc, PREC)
            dP = dot_acc(rnd(dY, DT), tl.trans(X), dP, PREC)
        decay = tl.where(m_same, tl.exp(cs[:, None] - cs[None, :]), 0.0)
        dCB += dP * dt[None, :] * decay

    Bt = tl.load(_tile(p_B + row * sB_b + gg * sB_g, t1, N, sB_l, sB_n, t0, t0 * 0, BLOCK_Q, BLOCK_N),
                 boundary_check=(0, 1), padding_option="zero")
    Ct = tl.load(_tile(p_C + row * sC_b + gg * sC_g, t1, N, sC_l, sC_n, t0, t0 * 0, BLOCK_Q, BLOCK_N),
                 boundary_check=(0, 1), padding_option="zero")
    dCBc = rnd(dCB, DT)
    dC_acc = dot_acc(dCBc, Bt, dC_acc, PREC)
    dB_acc = dot_acc(tl.trans(dCBc), Ct, dB_acc, PREC)
    G = H // heads_per_group
    o_bc = i_split * s_split + (row * L * G + gg) * N  # dB, dC: dense (split, b, l, g, n)
    tl.store(_tile(p_dB + o_bc, t1, N, G * N, 1, t0, t0 * 0, BLOCK_Q, BLOCK_N), rnd(dB_acc, p_dB.dtype.element_ty),
             boundary_check=(0, 1))
    tl.store(_tile(p_dC + o_bc, t1, N, G * N, 1, t0, t0 * 0, BLOCK_Q, BLOCK_N), rnd(dC_acc, p_dC.dtype.element_ty),
             boundary_check=(0, 1))


# --------------------------------------------------------------------------- launchers

def _strides4(t, like_shape):
    return tuple(t.stride()) if t is not None else (0,) * len(like_shape)


def _block_n(N: int) -> int:
    return max(16, triton.next_power_of_2(N))


def _prec(x: torch.Tensor) -> str:
    # fp32 inputs stay fp32-accurate ("tf32" would round operands to 10 bits); bf16/fp16 ignore it.
    return "ieee" if x.dtype == torch.float32 else "tf32"


# Tuning overrides (scripts/ssd_chunk_scan_sweep.py): kernel name -> (BLOCK_P, num_warps, num_stages),
# and "seg_chunks" -> chunks per segment of the sequential passes. Empty in normal use. (A state held
# transposed and register caps were measured too and dropped: bench/NOTES.md.)
_TUNE: dict = {}

# The sequential passes (forward, the backward's states and dstate) walk a sequence in order. Where the
# programs do not fill the GPU (fewer than SEGMENT_FILL per SM: two 4-warp programs of ~255 registers
# share an SM), a sequence is cut into segments of at least MIN_SEGMENT_CHUNKS chunks: a first pass
# stores each segment's end state from a zero start (reading x, dt, B only), the main pass starts each
# segment from the fold of the earlier ones. Measured on the H200: at the headline (256 programs, one
# wave) 2 or 3 segments cost 15-20% (the extra pass, more waves), so a full wave is never cut; at b1 h8
# (16 programs) the forward took 0.19 ms with its 16 segments against 0.29 with one. The GPU default
# cuts the forward only (see segments()); the backward's walks take segments through _TUNE.
SEGMENT_FILL = 2
MIN_SEGMENT_CHUNKS = 8
def segments(kind: str, device, programs: int, L: int, block_q: int) -> tuple[int, int]:
    """(segments per sequence, chunks per segment) of a sequential pass with `programs` programs per
    segment index over sequences of at most L tokens."""
    chunks = max(1, triton.cdiv(L, block_q))
    if "seg_chunks" in _TUNE:
        per = max(1, min(chunks, _TUNE["seg_chunks"]))
        return triton.cdiv(chunks, per), per
    if programs <= 0:
        return 1, chunks
    if device.type != "cuda":
        per = 1  # the interpreter: exercise the segment fold (several segments) in every multi-chunk test
        return triton.cdiv(chunks, per), per
    if kind != "fwd":
        # The backward's walks: segments measured slower at b1 h8 (2.44 against 1.96 ms fwd+bwd, one
        # run with a peer build loading the host), so they stay off there until measured cleanly.
        return 1, chunks
    want = SEGMENT_FILL * torch.cuda.get_device_properties(device).multi_processor_count
    n_seg = max(1, min(want // programs, chunks // MIN_SEGMENT_CHUNKS))
    per = triton.cdiv(chunks, n_seg)
    return triton.cdiv(chunks, per), per


def _segment_buffers(n_seq: int, n_seg: int, H: int, P: int, N: int, device):
    """The segment pass's outputs, fp32: end states (n_seq (n_seg - 1), h, p, n) and decays
    (n_seq (n_seg - 1), h); (None, None) without segments."""
    if n_seg <= 1:
        return None, None
    rows = n_seq * (n_seg - 1)
    return (new_output((rows, H, P, N), dtype=torch.float32, device=device),
            new_output((rows, H), dtype=torch.float32, device=device))


def config(kernel: str, dtype: torch.dtype, P: int, N: int) -> tuple[int, int, int]:
    """(BLOCK_P, num_warps, num_stages) of a kernel ("fwd", "segment", "states", "dstate", "dx", "dbc").

    Measured on the H200 (bf16, n = 128, p = 64; bench/NOTES.md, scripts/ssd_chunk_scan_sweep.py): every
    configuration compiles to ~255 registers per thread, so the number of warps sets how many programs
    share an SM. The sequential walks (fwd, states, dstate) are one dependent chain per program: 4 warps
    (two programs per SM) ran the forward 2.2x faster than 8 (one per SM). p tiles of 32: 16 halves the
    programs' work but not their chain (slower), 64 spills. dB/dC: p tiles of 32 measured faster than
    64. Not measured, kept from the resource-usage choice: n = 256 (8 warps) and fp32 (narrow tiles,
    no pipelining, to stay within the 227 KB of shared memory at n = 256)."""
    bn = _block_n(N)
    bp = 32 if P > 16 else 16
    if kernel == "segment":
        kernel = "states"  # the same walk without the per-chunk stores
    override = _TUNE.get(kernel)
    if override is not None:
        return override
    sequential = kernel in ("fwd", "states", "dstate")
    warps = 8 if bn >= 64 else 4
    if sequential and bn <= 128 and dtype != torch.float32:
        warps = 4
    stages = 3 if kernel == "dx" else 2  # dx: 3 stages measured 1.90 against 2.30 ms fwd+bwd (same run)
    if dtype == torch.float32:
        bp = min(bp, 32 if bn <= 64 else 16)
        stages = 1
    return bp, warps, stages


# Token positions are int32 inside the tiles (64-bit bases carry the rest).
MAX_L = 2**31 - 4096


def check_sizes(N: int, L: int = 0) -> None:
    if N > MAX_N:
        raise ValueError(f"B: the triton backend takes a state size n of at most {MAX_N}, got n={N} "
                         "(use backend='cpu' or 'reference')")
    if L > MAX_L:
        raise ValueError(f"x: the triton backend takes sequences of at most {MAX_L} tokens, got l={L}")


def varlen_chunks(cu_seqlens: torch.Tensor, L: int, Q: int):
    """Chunks that never straddle two sequences of a cu_seqlens batch, computed on the device with
    static sizes (no host sync): returns (table (n_chunks, 2) int64 of [start, end) per chunk id,
    first chunk id of every sequence (num_seqs,) int64, n_chunks). n_chunks is the upper bound
    floor((L + num_seqs (Q - 1)) / Q); unused entries are empty (start = end = 0)."""
    cu = cu_seqlens.to(torch.int64)
    ns = cu.numel() - 1
    n_chunks = (L + ns * (Q - 1)) // Q
    lens = cu[1:] - cu[:-1]
    per_seq = (lens + Q - 1) // Q
    off_incl = torch.cumsum(per_seq, 0)
    off_excl = off_incl - per_seq
    if ns == 0 or n_chunks == 0:
        return torch.zeros((n_chunks, 2), dtype=torch.int64, device=cu.device), off_excl, n_chunks
    jj = torch.arange(n_chunks, device=cu.device, dtype=torch.int64)
    k = torch.searchsorted(off_incl, jj, right=True)
    valid = k < ns
    kk = k.clamp(max=ns - 1)
    start = cu[kk] + (jj - off_excl[kk]) * Q
    end = torch.minimum(start + Q, cu[kk + 1])
    zero = torch.zeros_like(start)
    table = torch.stack([torch.where(valid, start, zero), torch.where(valid, end, zero)], dim=1).contiguous()
    return table, off_excl.contiguous(), n_chunks


def _d_strides(D, H):
    if D is None:
        return 0, 0
    if D.dim() == 1:
        return D.stride(0), 0
    return D.stride(0), D.stride(1)


def ssd_fwd(x, dt, A, B, C, D, z, dt_bias, init, seq_idx, cu_seqlens, dt_softplus: bool, dt_min: float,
            dt_max: float, *, write_out: bool = True, store_states: bool = False, state_dtype=None,
            block_q: int | None = None):
    """Forward. Shapes: x (b, l, h, p), dt (b, l, h), A (h,), B/C (b, l, g, n), D (h,) / (h, p), z like
    x, dt_bias (h,), init fp32 contiguous (num_states, h, p, n), seq_idx (b, l), cu_seqlens (ns+1,)
    (b == 1). Returns (out, final fp32 (num_states, h, p, n), states or None); num_states = b, or ns
    with cu_seqlens. With store_states, states[chunk id] is the state before that chunk."""
    bsz, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    check_sizes(N, L)
    block_q = block_q or FWD_BLOCK_Q
    varlen = cu_seqlens is not None
    n_seq = cu_seqlens.numel() - 1 if varlen else bsz
    out = new_output(x.shape, dtype=x.dtype, device=x.device) if write_out else None
    final = new_output((n_seq, H, P, N), dtype=torch.float32, device=x.device)
    if varlen:
        _, coff, n_chunks = varlen_chunks(cu_seqlens, L, block_q)
        cu = cu_seqlens.to(torch.int64).contiguous()
    else:
        coff = cu = None
        n_chunks = bsz * triton.cdiv(L, block_q)
    states = None
    if store_states:
        states = new_output((n_chunks, H, P, N), dtype=state_dtype or x.dtype, device=x.device)
    if n_seq == 0 or H == 0 or P == 0:
        return out, final, states
    kind = "fwd" if write_out else "states"
    bp, warps, stages = config(kind, x.dtype, P, N)
    bn = _block_n(N)
    n_pb = triton.cdiv(P, bp)
    n_seg, seg_chunks = segments(kind, x.device, n_seq * H * n_pb, L, block_q)
    sD_h, sD_p = _d_strides(D, H)
    o = out if out is not None else x
    seg_end, seg_decay = _segment_buffers(n_seq, n_seg, H, P, N, x.device)
    args = [
        x, dt, A, B, C, D if D is not None else x, z if z is not None else x,
        dt_bias if dt_bias is not None else A, init if init is not None else final,
        seq_idx if seq_idx is not None else dt, cu if cu is not None else A, coff if coff is not None else A,
        o, final, states if states is not None else final,
        seg_end if seg_end is not None else final, seg_decay if seg_decay is not None else final,
        L, H, P, N, H // G, dt_min, dt_max, n_seg, seg_chunks,
        *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *_strides4(z, x.shape), *o.stride(),
        *(seq_idx.stride() if seq_idx is not None else (0, 0)), sD_h, sD_p,
        dt_bias.stride(0) if dt_bias is not None else 0,
    ]
    flags = dict(HAS_D=D is not None, D_PER_HEAD=D is not None and D.dim() == 1, HAS_Z=z is not None,
                 HAS_DTB=dt_bias is not None, HAS_INIT=init is not None,
                 HAS_SEQ=seq_idx is not None and not varlen, VARLEN=varlen, SOFTPLUS=dt_softplus, PREC=_prec(x),
                 BLOCK_Q=block_q, BLOCK_P=bp, BLOCK_N=bn)
    if n_seg > 1:
        # The end state of every segment but the last, from a zero start: only x, dt, B are read.
        _, swarps, sstages = config("segment", x.dtype, P, N)  # the p tiling is the main pass's
        wrap_triton(_ssd_fwd_kernel)[(n_seq * (n_seg - 1), H, n_pb)](
            *args, WRITE_OUT=False, STORE_STATES=False, SEG_LOCAL=True, **flags,
            num_warps=swarps, num_stages=sstages)
    wrap_triton(_ssd_fwd_kernel)[(n_seq * n_seg, H, n_pb)](
        *args, WRITE_OUT=write_out, STORE_STATES=store_states, SEG_LOCAL=False, **flags,
        num_warps=warps, num_stages=stages)
    return out, final, states


def _head_split(n_programs: int, heads_per_group: int, device) -> int:
    """Heads of a group split over this many programs (a divisor of heads_per_group) so that short
    inputs still fill the GPU; each split writes fp32 partial dB/dC that are summed afterwards."""
    if device.type != "cuda":
        return 1 if heads_per_group % 2 else 2  # exercise the partial-sum path in the interpreter
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    split = 1
    while n_programs * split < 2 * sms and heads_per_group % (split * 2) == 0:
        split *= 2
    return split


def ssd_bwd(dout, dfinal, x, dt, A, B, C, D, z, dt_bias, init, seq_idx, cu_seqlens, dt_softplus: bool,
            dt_min: float, dt_max: float):
    """Gradients of ssd_fwd: (dx, ddt (fp32, w.r.t. the raw dt), dA (fp32, (h,)), dB, dC, dD (fp32, D's
    shape) or None, dz or None, dinit (fp32) or None). dfinal: fp32 (num_states, h, p, n) or None."""
    bsz, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    check_sizes(N, L)
    varlen = cu_seqlens is not None
    n_seq = cu_seqlens.numel() - 1 if varlen else bsz
    dev = x.device
    if n_seq == 0 or H == 0 or P == 0:
        # Nothing depends on anything: zero gradients (the initial state's is the final state's).
        dinit = None
        if init is not None:
            dinit = dfinal.clone() if dfinal is not None else torch.zeros_like(init)
        return (torch.zeros_like(x), torch.zeros(dt.shape, dtype=torch.float32, device=dev),
                torch.zeros((H,), dtype=torch.float32, device=dev), torch.zeros_like(B), torch.zeros_like(C),
                None if D is None else torch.zeros(D.shape, dtype=torch.float32, device=dev),
                None if z is None else torch.zeros_like(z), dinit)

    # States before every chunk (recomputed: the forward does not keep them), then dL/dstates.
    Q = BWD_BLOCK_Q
    _, _, states = ssd_fwd(x, dt, A, B, C, D, z, dt_bias, init, seq_idx, cu_seqlens, dt_softplus, dt_min, dt_max,
                           write_out=False, store_states=True, block_q=Q)
    n_chunks = states.shape[0]
    dstates = new_output(states.shape, dtype=states.dtype, device=dev)
    dinit = new_output((n_seq, H, P, N), dtype=torch.float32, device=dev) if init is not None else None
    dx = new_output(x.shape, dtype=x.dtype, device=dev)
    dz = new_output(x.shape, dtype=z.dtype, device=dev) if z is not None else None
    ddt = new_output((bsz, L, H), dtype=torch.float32, device=dev)
    dA_part = new_output((n_chunks, H), dtype=torch.float32, device=dev)
    # dD partial sums per chunk: (n_chunks, h) for a per-head D, (n_chunks, h, p) for D (h, p).
    d_per_head = D is not None and D.dim() == 1
    dD_part = None
    if D is not None:
        dD_part = new_output((n_chunks, H) if d_per_head else (n_chunks, H, P), dtype=torch.float32, device=dev)
    heads_per_group = H // G
    split = _head_split(n_chunks * G, heads_per_group, dev)
    if split == 1:
        dB = new_output(B.shape, dtype=B.dtype, device=dev)
        dC = new_output(C.shape, dtype=C.dtype, device=dev)
    else:
        dB = new_output((split, *B.shape), dtype=torch.float32, device=dev)
        dC = new_output((split, *C.shape), dtype=torch.float32, device=dev)
    if varlen:
        table, coff, _ = varlen_chunks(cu_seqlens, L, Q)
        cu = cu_seqlens.to(torch.int64).contiguous()
    else:
        table = coff = cu = None
    bn = _block_n(N)
    bp, warps, stages = config("dstate", x.dtype, P, N)
    n_pb = triton.cdiv(P, bp)
    n_seg, seg_chunks = segments("dstate", dev, n_seq * H * n_pb, L, Q)
    seg_end, seg_decay = _segment_buffers(n_seq, n_seg, H, P, N, dev)
    sD_h, sD_p = _d_strides(D, H)
    seq_strides = seq_idx.stride() if seq_idx is not None else (0, 0)
    has_seq = seq_idx is not None and not varlen
    dstate_args = [
        dout, dt, A, C, z if z is not None else x, dt_bias if dt_bias is not None else A,
        dfinal if dfinal is not None else dstates,
        seq_idx if seq_idx is not None else dt, cu if cu is not None else A, coff if coff is not None else A,
        dstates, dinit if dinit is not None else dstates,
        seg_end if seg_end is not None else dstates, seg_decay if seg_decay is not None else dA_part,
        L, H, P, N, heads_per_group, dt_min, dt_max, n_seg, seg_chunks,
        *dout.stride(), *dt.stride(), *C.stride(), *_strides4(z, x.shape), *seq_strides,
        dt_bias.stride(0) if dt_bias is not None else 0,
    ]
    dstate_flags = dict(HAS_Z=z is not None, HAS_DTB=dt_bias is not None, HAS_DFINAL=dfinal is not None,
                        WRITE_DINIT=dinit is not None, HAS_SEQ=has_seq, VARLEN=varlen,
                        SOFTPLUS=dt_softplus, PREC=_prec(x), BLOCK_Q=Q, BLOCK_P=bp, BLOCK_N=bn,
                        num_warps=warps, num_stages=stages)
    if n_seg > 1:
        wrap_triton(_ssd_bwd_dstate_kernel)[(n_seq * (n_seg - 1), H, n_pb)](*dstate_args, SEG_LOCAL=True,
                                                                            **dstate_flags)
    wrap_triton(_ssd_bwd_dstate_kernel)[(n_seq * n_seg, H, n_pb)](*dstate_args, SEG_LOCAL=False, **dstate_flags)
    if n_chunks > 0:
        cfg = {k: config(k, x.dtype, P, N) for k in ("dx", "dbc")}
        common = dict(HAS_Z=z is not None, HAS_DTB=dt_bias is not None, HAS_SEQ=has_seq, VARLEN=varlen,
                      SOFTPLUS=dt_softplus, PREC=_prec(x), BLOCK_Q=Q, BLOCK_N=bn)
        tab = table if table is not None else A
        seq = seq_idx if seq_idx is not None else dt
        zz = z if z is not None else x
        dtb = dt_bias if dt_bias is not None else A
        wrap_triton(_ssd_bwd_dx_kernel)[(n_chunks, H)](
            x, dt, A, B, C, D if D is not None else x, zz, dtb, seq, tab, states, dstates, dout,
            dx, dz if dz is not None else dx, ddt, dA_part, dD_part if dD_part is not None else dA_part,
            L, H, P, N, heads_per_group, dt_min, dt_max,
            *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *_strides4(z, x.shape), *dout.stride(),
            *seq_strides, sD_h, sD_p, dt_bias.stride(0) if dt_bias is not None else 0,
            HAS_D=D is not None, D_PER_HEAD=d_per_head, BLOCK_P=cfg["dx"][0], num_warps=cfg["dx"][1],
            num_stages=cfg["dx"][2], **common,
        )
        wrap_triton(_ssd_bwd_dbc_kernel)[(n_chunks, G, split)](
            x, dt, A, B, C, zz, dtb, seq, tab, states, dstates, dout, dB, dC,
            L, H, P, N, heads_per_group, heads_per_group // split, dt_min, dt_max,
            *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *_strides4(z, x.shape), *dout.stride(),
            *seq_strides, dt_bias.stride(0) if dt_bias is not None else 0, B.numel() if split > 1 else 0,
            BLOCK_P=cfg["dbc"][0], num_warps=cfg["dbc"][1], num_stages=cfg["dbc"][2], **common,
        )
    if split > 1:
        dB = dB.sum(0).to(B.dtype)
        dC = dC.sum(0).to(C.dtype)
    dA = dA_part.sum(0)
    dD = dD_part.sum(0) if dD_part is not None else None
    return dx, ddt, dA, dB, dC, dD, dz, dinit
