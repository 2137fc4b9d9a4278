// block_sparse_attention: parameters shared by the CPU kernel, the CUDA kernel and the C API (torch-free).
// Math and layout contract: csrc/include/arkernels/block_sparse_attention.h, docs/ops/block_sparse_attention.md.
#pragma once

#include <cstddef>
#include <cstdint>

#include "arkernels/block_sparse_attention.h"

namespace ark {

struct BlockSparseAttentionFwdParams {
  const void* q;
  const void* k;
  const void* v;
  void* out;   // batch x q_heads x L x head_dim, contiguous
  float* lse;  // batch x q_heads x L, contiguous, or nullptr
  int64_t q_strides[3], k_strides[3], v_strides[3];  // (batch, head, row) in elements; unit last stride
  int64_t batch, q_heads, kv_heads, L, S;
  int head_dim;
  float scale;
  ark_block_mask mask;
};

// The Hopper dK / dV kernel's inputs (the backward's key half; dQ is computed elsewhere).
struct BlockSparseAttentionDkdvParams {
  const void* q;
  const void* k;
  const void* v;
  const void* dout;
  const float* lse;    // batch x q_heads x L, contiguous (natural log; -inf: the row sees nothing)
  const float* delta;  // batch x q_heads x L, contiguous: rowsum(dout * out) - dlse
  void* dk;            // batch x kv_heads x S x head_dim, contiguous
  void* dv;            // likewise
  float* dq_accum;     // nullptr, or batch x q_heads x L x head_dim fp32, contiguous, zeroed: dQ is added to it
  int64_t q_strides[3], k_strides[3], v_strides[3], dout_strides[3];
  int64_t batch, q_heads, kv_heads, L, S;
  int head_dim;
  float scale;
  ark_block_mask mask;
  ark_block_mask_keys keys;
};

// The CUDA kernel's fixed query tile (two consumer warpgroups of 64 rows) and key chunk.
constexpr int kBsaCudaBlockQ = 128;
constexpr int kBsaCudaChunk = 128;

// CPU kernel (OpenMP across (batch, head, query tile)). Arguments were validated by the C API.
void block_sparse_attention_fwd_cpu(const BlockSparseAttentionFwdParams& p, ark_dtype dtype);

#ifdef ARKERNELS_WITH_CUDA
// 1 when the CUDA kernel handles (head_dim, tiling, dtype) on the current device.
bool block_sparse_attention_cuda_supported(int head_dim, int block_q, int block_k, ark_dtype dtype);
// CUDA kernel; `stream` is a cudaStream_t. ARK_SUCCESS, ARK_ERROR_INVALID_ARGUMENT (unsupported
// configuration, message set) or ARK_ERROR_CUDA.
ark_status block_sparse_attention_fwd_cuda(const BlockSparseAttentionFwdParams& p, ark_dtype dtype, void* stream);
// The dK / dV kernel: likewise (layouts at 128 x 128 only).
bool block_sparse_attention_dkdv_cuda_supported(int head_dim, int block_q, int block_k, ark_dtype dtype);
ark_status block_sparse_attention_dkdv_cuda(const BlockSparseAttentionDkdvParams& p, ark_dtype dtype, void* stream);
#endif

}  // namespace ark
