/* Block-sparse softmax attention: the forward of arkernels.block_sparse_attention over a tile layout.
 * Torch-free C API. Math, the layout contract and the kernels' design: docs/ops/block_sparse_attention.md.
 *
 * For batch row b, query head h (kv head h / (q_heads / kv_heads)), query i and key j:
 *   s[i,j] = scale * q[b,h,i,:] . k[b,hk,j,:],    visible(i, j) from the mask below
 *   out[b,h,i,:] = sum_j p[i,j] v[b,hk,j,:],  p = softmax over the visible j of s[i,:]
 *   lse[b,h,i] = log(sum_{visible j} exp(s[i,j]))  (natural log)
 * A query that sees no key gets out = 0 and lse = -inf. Accumulation is fp32 whatever the dtype. */
#ifndef ARKERNELS_BLOCK_SPARSE_ATTENTION_H
#define ARKERNELS_BLOCK_SPARSE_ATTENTION_H

#include <stddef.h>

#include "arkernels/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* An (L, S) mask as a tile layout at tiling block_q x block_k (python/arkernels/masks/layout.py is the
 * contract; arkernels.masks builds it). Only the forward half is read here:
 *   query tile t visits the runs r in [q_run_ptr[t], q_run_ptr[t+1]), q_runs[4r..4r+3] = (start, end, kind,
 *   bits): key tiles [start, end), kind 0 FULL (every in-bounds pair visible), 1 RULE (the level rule),
 *   2 BITS (key tile start + u uses bitmap bits + u of tile_bits, (P, block_q, ceil(block_k / 32)) int32,
 *   bit c of word w of row r = key (tile start) + 32 w + c). Key tiles in no run are invisible.
 *   Level rule, per token: visible(i, j) = doc_ok and ((k_level[j] <= q_level[i] and
 *   (window < 0 or q_level[i] - k_level[j] < window)) or group_ok), doc_ok = (q_doc[i] == k_doc[j]) or no
 *   docs, group_ok = (q_group[i] == k_group[j]) when groups are given, else false.
 * Every array is int32 in the memory of the call's device. The layout is trusted: it must satisfy the
 * invariants of layout.py (runs sorted, in range; arkernels.masks validates it). */
typedef struct ark_block_mask {
  int32_t block_q, block_k;
  const int32_t* q_run_ptr;  /* ceil(L / block_q) + 1 */
  const int32_t* q_runs;     /* 4 per run */
  const int32_t* tile_bits;  /* NULL when no run is BITS */
  const int32_t* q_level;    /* L; NULL when no run is RULE (then every rule array below is NULL too) */
  const int32_t* k_level;    /* S */
  const int32_t* q_doc;      /* L, or NULL (no documents) */
  const int32_t* k_doc;      /* S, or NULL */
  const int32_t* q_group;    /* L, or NULL (no groups) */
  const int32_t* k_group;    /* S, or NULL */
  int32_t window;            /* < 0: no window */
} ark_block_mask;

/// Forward.
/// \param[in]  q        batch x q_heads x L x head_dim, element (b, h, i, d) at
///                      q[b * q_strides[0] + h * q_strides[1] + i * q_strides[2] + d]
/// \param[in]  k, v     batch x kv_heads x S x head_dim, strides k_strides / v_strides likewise
/// \param[out] out      batch x q_heads x L x head_dim, contiguous, dtype `dtype`
/// \param[out] lse      batch x q_heads x L, contiguous, fp32, or NULL
/// \param      scale    softmax scale, finite and > 0
/// CPU: any float dtype and head_dim. CUDA: an sm_90 GPU (the kernel uses wgmma and TMA), dtype
/// ARK_BFLOAT16 or ARK_FLOAT16, head_dim 64 or 128, block_q = 128 and block_k dividing 128, the stride of
/// every dimension longer than 1 a nonzero multiple of 8 elements (no broadcasting) and q, k, v, out
/// 16-byte aligned; anything else returns ARK_ERROR_INVALID_ARGUMENT naming what is not supported
/// (ark_block_sparse_attention_cuda_supported asks first).
ARK_API ark_status ark_block_sparse_attention_fwd(const void* q, const void* k, const void* v, void* out, float* lse,
                                                  int64_t batch, int64_t q_heads, int64_t kv_heads, int64_t L,
                                                  int64_t S, int64_t head_dim, const int64_t q_strides[3],
                                                  const int64_t k_strides[3], const int64_t v_strides[3],
                                                  const ark_block_mask* mask, float scale, ark_dtype dtype,
                                                  ark_device device, void* stream);

/// 1 when the CUDA forward runs this configuration on the current device (the CUDA requirements of
/// ark_block_sparse_attention_fwd, the device's compute capability included), 0 otherwise; never fails.
ARK_API int ark_block_sparse_attention_cuda_supported(int64_t head_dim, int32_t block_q, int32_t block_k,
                                                      ark_dtype dtype);

/* The key half of the same layout (layout.py's transposed runs), read by the dK / dV kernel:
 *   key tile u visits the runs r in [k_run_ptr[u], k_run_ptr[u+1]), k_runs[4r..4r+3] = (start, end, kind, first):
 *   query tiles [start, end) of one kind (as in q_runs); for a BITS run, query tile start + i uses bitmap
 *   tile_bits[k_tile_bits[first + i]] (the forward's bitmap of that tile pair). */
typedef struct ark_block_mask_keys {
  const int32_t* k_run_ptr;   /* ceil(S / block_k) + 1 */
  const int32_t* k_runs;      /* 4 per run */
  const int32_t* k_tile_bits; /* NULL when no run is BITS */
} ark_block_mask_keys;

/// The backward of the forward above, given delta: dK and dV, and dQ when dq_accum is given:
///   p[i,j] = exp(s[i,j] - lse[b,h,i]) where visible (0 elsewhere and where lse = -inf),
///   ds[i,j] = p[i,j] (dout[b,h,i,:] . v[b,hk,j,:] - delta[b,h,i]),
///   dv[b,hk,j,:] = sum over the group's heads h and queries i of p[i,j] dout[b,h,i,:],
///   dk[b,hk,j,:] = scale * sum of ds[i,j] q[b,h,i,:],   dq[b,h,i,:] = scale * sum over j of ds[i,j] k[b,hk,j,:],
/// with delta[b,h,i] = dout[b,h,i,:] . out[b,h,i,:] - dlse[b,h,i] (dlse: the gradient of lse, 0 when unused),
/// which the caller computes. dk and dv are deterministic (no atomics); dq is summed by fp32 reduce-adds (TMA), in
/// an order that varies from run to run.
/// \param[in]  dout       batch x q_heads x L x head_dim, strides dout_strides
/// \param[in]  lse, delta batch x q_heads x L, contiguous, fp32 (lse from the forward)
/// \param[out] dk, dv     batch x kv_heads x S x head_dim, contiguous, dtype `dtype`
/// \param[in,out] dq_accum NULL (no dQ), or batch x q_heads x L x head_dim, contiguous, fp32, zeroed by the
///                        caller (or holding a sum to add to): dq is added to it
/// CUDA only (ARK_DEVICE_CPU returns ARK_ERROR_INVALID_ARGUMENT): an sm_90 GPU, ARK_BFLOAT16 or ARK_FLOAT16,
/// head_dim 64 or 128, a layout at block_q = block_k = 128, strides and alignment as for the CUDA forward
/// (q, k, v, dout, dk, dv, dq_accum 16-byte aligned); ark_block_sparse_attention_dkdv_cuda_supported asks first.
ARK_API ark_status ark_block_sparse_attention_bwd_dkdv(
    const void* q, const void* k, const void* v, const void* dout, const float* lse, const float* delta, void* dk,
    void* dv, float* dq_accum, int64_t batch, int64_t q_heads, int64_t kv_heads, int64_t L, int64_t S, int64_t head_dim,
    const int64_t q_strides[3], const int64_t k_strides[3], const int64_t v_strides[3],
    const int64_t dout_strides[3], const ark_block_mask* mask, const ark_block_mask_keys* keys, float scale,
    ark_dtype dtype, ark_device device, void* stream);

/// 1 when ark_block_sparse_attention_bwd_dkdv runs this configuration on the current device, 0 otherwise.
ARK_API int ark_block_sparse_attention_dkdv_cuda_supported(int64_t head_dim, int32_t block_q, int32_t block_k,
                                                           ark_dtype dtype);

#ifdef __cplusplus
}
#endif

#endif /* ARKERNELS_BLOCK_SPARSE_ATTENTION_H */
