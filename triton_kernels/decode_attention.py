"""Triton kernels of decode_attention: a few new queries per batch row against that row's KV cache
(split-KV, FlashDecoding style).

* ``_decode_attention_split_kernel``: one program per (batch row x kv head, key split, query tile). The
  query tile holds the rows (g, i) of every q head g of the kv head's GQA group and every new query i
  (G * Lq rows), so each K/V tile is read once for the whole group. It walks the split's keys up to the
  row's length (seqlens[b], read on the device: no host sync), applies the optional mask over the newest
  Lq keys, and keeps an online softmax in fp32 in the log2 domain. With one split it writes the output
  and log-sum-exp directly; else a normalised partial output and its log2-sum-exp per split.
* ``_decode_attention_combine_kernel``: one program per (batch row, q head, query): weights the splits by
  their log-sum-exp. A query that sees no key gets out = 0, lse = -inf.

Decoding is bound by reading the cache, so the splits are chosen to give every SM programs
(``num_splits``): B * Hkv programs per split.
"""
from __future__ import annotations

import functools
import warnings

import torch
import triton
import triton.language as tl

from arkernels._outputs import new_output
# Unaliased: torch.compile re-emits these helpers under their own names.
from arkernels.triton_kernels._common import dot, low, rnd

# Triton 3.8 marks tl.make_block_ptr deprecated in favour of TMA descriptors, which need 16-byte aligned
# strides that a slice of a larger cache need not have; it is still supported.
warnings.filterwarnings("ignore", message="tl.make_block_ptr is deprecated")

LOG2E = 1.4426950408889634
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)


def config(D: int, device) -> dict:
    """Tiles and warps. GPU values chosen without a GPU, from ptxas -v of the sm_90a compiles (mask on, the
    worst case): the largest tiles that do not spill (16 query rows: 215 registers at D 64 / BLOCK_N 64,
    213 at D 128 / 32, 182 at D 256 / 32 with 8 warps; 32 rows or wider key tiles spill). Not timed yet."""
    if torch.device(device).type != "cuda":
        return dict(BLOCK_M=16, BLOCK_N=16, num_warps=4)  # the interpreter: every program is a numpy loop
    if D <= 64:
        return dict(BLOCK_M=16, BLOCK_N=64, num_warps=4)
    return dict(BLOCK_M=16, BLOCK_N=32, num_warps=4 if D <= 128 else 8)


def num_splits(batch_heads: int, s_max: int, block_n: int, device) -> int:
    """Key splits per (row, kv head): enough programs for two per SM, no split shorter than a key tile."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return 1
    sms = _sm_count(dev.index if dev.index is not None else torch.cuda.current_device())
    return max(1, min(triton.cdiv(s_max, block_n), triton.cdiv(2 * sms, max(batch_heads, 1)), 128))


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    # Cached: the device query is host time on every decode step otherwise.
    return torch.cuda.get_device_properties(index).multi_processor_count


@triton.jit
def _attend_tile(acc, m_i, l_i, b_q, bp_k, bp_v, start, hi, new0, Lq, qi, m_row, NEW_MASK, qk_scale,
                 BOUNDED: tl.constexpr, MASKED: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr):
    """One key tile of the online softmax (log2 domain). BOUNDED: keys past `hi` are cut; MASKED: the new
    keys (from new0 on) are tested against the (Lq, Lq) mask."""
    b_k = tl.load(bp_k, boundary_check=(0, 1), padding_option="zero")
    s = dot(b_q, tl.trans(b_k), PREC) * qk_scale
    if BOUNDED:
        cols = start + tl.arange(0, BLOCK_N)
        vis = m_row[:, None] & (cols < hi)[None, :]
        if MASKED:
            c = cols - new0
            b_m = tl.load(NEW_MASK + qi[:, None] * Lq + c[None, :], mask=vis & (c >= 0)[None, :], other=1)
            vis = vis & (b_m != 0)
        s = tl.where(vis, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no visible key yet: exp2(-inf) = 0
    p = tl.math.exp2(s - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    b_v = tl.load(bp_v, boundary_check=(0, 1), padding_option="zero")
    acc = acc * alpha[:, None] + dot(low(p, b_v.dtype), b_v, PREC)
    return acc, m_new, l_i * alpha + tl.sum(p, 1)


# Counts and lengths stay unspecialised: the cache length moves every decode step, and a launch would otherwise
# compile again whenever it crosses a multiple of 16 or is 1 (they only bound masks and loops here).
@triton.jit(do_not_specialize=["Hkv", "Lq", "S_MAX", "G", "split_len", "num_splits"])
def _decode_attention_split_kernel(
        Q, K, V, SEQLENS, NEW_MASK, OUT, LSE, O_PART, LSE_PART,
        s_qb, s_qh, s_qi, s_kb, s_kh, s_ks, s_vb, s_vh, s_vs,
        Hkv, Lq, S_MAX, D, G, split_len, num_splits, qk_scale,
        HAS_MASK: tl.constexpr, DIRECT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr, PREC: tl.constexpr):
    qk_scale = tl.cast(qk_scale, tl.float32)  # torch.compile passes Python floats to a kernel as fp64
    i_bh = tl.program_id(0)
    i_split = tl.program_id(1)
    i_m = tl.program_id(2)
    b = i_bh // Hkv
    hk = i_bh % Hkv
    seqlen = tl.minimum(tl.load(SEQLENS + b).to(tl.int32), S_MAX)
    rows = i_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (g, i) flattened: g = rows // Lq, i = rows % Lq
    m_row = rows < G * Lq
    g = rows // Lq
    qi = rows % Lq
    hq = hk * G + g
    offs_d = tl.arange(0, BLOCK_D)
    m_d = offs_d < D
    p_q = Q + b.to(tl.int64) * s_qb + hq[:, None].to(tl.int64) * s_qh + qi[:, None].to(tl.int64) * s_qi + offs_d[None, :]
    b_q = tl.load(p_q, mask=m_row[:, None] & m_d[None, :], other=0.0)
    # K and V tiles through block pointers: per-element 64-bit pointer tensors took ~250 registers and
    # spilled at D 128 (ptxas -v of the sm_90a compile); keys past S_MAX read as zero.
    lo = i_split * split_len
    hi = tl.minimum(lo + split_len, seqlen)
    bp_k = tl.make_block_ptr(base=K + b.to(tl.int64) * s_kb + hk.to(tl.int64) * s_kh, shape=(S_MAX, D),
                             strides=(s_ks, 1), offsets=(lo, 0), block_shape=(BLOCK_N, BLOCK_D), order=(1, 0))
    bp_v = tl.make_block_ptr(base=V + b.to(tl.int64) * s_vb + hk.to(tl.int64) * s_vh, shape=(S_MAX, D),
                             strides=(s_vs, 1), offsets=(lo, 0), block_shape=(BLOCK_N, BLOCK_D), order=(1, 0))
    new0 = seqlen - Lq  # first key of the new tokens

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Whole key tiles before the new tokens' keys (most of a long cache): no mask, no column bound. The
    # mask's gather costs ~70 registers (ptxas), so it is compiled only into the second loop's tiles.
    if HAS_MASK:
        plain_end = lo + tl.maximum(tl.minimum(hi, new0) - lo, 0) // BLOCK_N * BLOCK_N
    else:
        plain_end = lo + tl.maximum(hi - lo, 0) // BLOCK_N * BLOCK_N
    for start in range(lo, plain_end, BLOCK_N):
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, b_q, bp_k, bp_v, start, hi, new0, Lq, qi, m_row, NEW_MASK,
                                     qk_scale, False, False, BLOCK_N, PREC)
        bp_k = tl.advance(bp_k, (BLOCK_N, 0))
        bp_v = tl.advance(bp_v, (BLOCK_N, 0))
    for start in range(plain_end, hi, BLOCK_N):  # the last partial tile, and the tiles of the new keys
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, b_q, bp_k, bp_v, start, hi, new0, Lq, qi, m_row, NEW_MASK,
                                     qk_scale, True, HAS_MASK, BLOCK_N, PREC)
        bp_k = tl.advance(bp_k, (BLOCK_N, 0))
        bp_v = tl.advance(bp_v, (BLOCK_N, 0))

    seen = l_i > 0
    o = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse2 = tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
    row_id = (b * Hkv * G + hq).to(tl.int64) * Lq + qi  # index of (b, hq, i) in (B, Hq, Lq)
    if DIRECT:
        tl.store(OUT + row_id[:, None] * D + offs_d[None, :], rnd(o, OUT.dtype.element_ty),
                 mask=m_row[:, None] & m_d[None, :])
        tl.store(LSE + row_id, lse2 * LN2, mask=m_row)
    else:
        part = row_id * num_splits + i_split
        tl.store(O_PART + part[:, None] * D + offs_d[None, :], o, mask=m_row[:, None] & m_d[None, :])
        tl.store(LSE_PART + part, lse2, mask=m_row)


@triton.jit(do_not_specialize=["num_splits"])
def _decode_attention_combine_kernel(OUT, LSE, O_PART, LSE_PART, D, num_splits, BLOCK_D: tl.constexpr):
    """One (row, q head, query): the splits merged one at a time with a running maximum (a (splits, D) tile
    in registers spilled at 128 splits, ptxas)."""
    row = tl.program_id(0).to(tl.int64)  # (b, hq, i) flattened
    offs_d = tl.arange(0, BLOCK_D)
    m = float("-inf")
    total = 0.0
    acc = tl.zeros([BLOCK_D], tl.float32)
    for sp in range(0, num_splits):
        lse2 = tl.load(LSE_PART + row * num_splits + sp)
        m_new = tl.maximum(m, lse2)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # empty splits so far: weights exp2(-inf) = 0
        alpha = tl.math.exp2(m - m_use)
        w = tl.math.exp2(lse2 - m_use)
        o = tl.load(O_PART + (row * num_splits + sp) * D + offs_d, mask=offs_d < D, other=0.0)
        acc = acc * alpha + w * o
        total = total * alpha + w
        m = m_new
    out = acc / tl.where(total > 0, total, 1.0)
    tl.store(OUT + row * D + offs_d, rnd(out, OUT.dtype.element_ty), mask=offs_d < D)
    m_use = tl.where(m == float("-inf"), 0.0, m)
    tl.store(LSE + row, tl.where(total > 0, (m_use + tl.math.log2(tl.where(total > 0, total, 1.0))) * LN2,
                                 float("-inf")))


def decode_attention_fwd(q, k_cache, v_cache, seqlens, new_mask, scale: float, splits: int | None = None):
    """(out (B, Hq, Lq, D) in q's dtype, lse (B, Hq, Lq) float32). q, k_cache, v_cache with a unit last
    stride; seqlens (B,) int32/int64 on q's device; new_mask None or (Lq, Lq) contiguous int8."""
    B, Hq, Lq, D = q.shape
    Hkv, S_max = k_cache.shape[1], k_cache.shape[2]
    G = Hq // Hkv
    cfg = config(D, q.device)
    block_n = cfg["BLOCK_N"]
    if splits is None:
        splits = num_splits(B * Hkv, S_max, block_n, q.device)
    split_len = triton.cdiv(triton.cdiv(max(S_max, 1), splits), block_n) * block_n
    splits = max(1, triton.cdiv(max(S_max, 1), split_len))
    out = new_output((B, Hq, Lq, D), dtype=q.dtype, device=q.device)
    lse = new_output((B, Hq, Lq), dtype=torch.float32, device=q.device)
    if out.numel() == 0 or lse.numel() == 0:
        lse.fill_(float("-inf"))
        return out.zero_(), lse
    rows = G * Lq
    block_m = cfg["BLOCK_M"]
    block_d = max(16, triton.next_power_of_2(D))
    direct = splits == 1
    o_part = out if direct else torch.empty((B, Hq, Lq, splits, D), dtype=torch.float32, device=q.device)
    lse_part = lse if direct else torch.empty((B, Hq, Lq, splits), dtype=torch.float32, device=q.device)
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    grid = (B * Hkv, splits, triton.cdiv(rows, block_m))
    torch.library.wrap_triton(_decode_attention_split_kernel)[grid](
        q, k_cache, v_cache, seqlens, new_mask if new_mask is not None else seqlens, out, lse, o_part, lse_part,
        q.stride(0), q.stride(1), q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        Hkv, Lq, S_max, D, G, split_len, splits, scale * LOG2E,
        HAS_MASK=new_mask is not None, DIRECT=direct, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        PREC=prec, num_warps=cfg["num_warps"])
    if not direct:
        torch.library.wrap_triton(_decode_attention_combine_kernel)[(B * Hq * Lq,)](
            out, lse, o_part, lse_part, D, splits, BLOCK_D=block_d, num_warps=1 if block_d <= 64 else 2)
    return out, lse
