// block_sparse_attention dK / dV for Hopper (sm_90a), host side: tensor maps and launch. The kernel and its
// design: block_sparse_attention_dkdv_sm90.cuh.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "common/sm90_device.hpp"
#include "common/sm90_tma_host.hpp"
#include "common/status.hpp"
#include "ops/block_sparse_attention/block_sparse_attention.cuh"
#include "ops/block_sparse_attention/block_sparse_attention_dkdv_sm90.cuh"

namespace ark {
namespace {

using namespace bsa_dkdv;

// Ring slots of Q / dO steps (and their per-query values). At D 128 a slot is 32 KB beside the 64 KB K / V tiles and,
// with DQ, 32 KB of dS^T tiles and the 32 KB dQ staging tile: a third slot does not fit then. Without DQ it fits, and
// measured no faster (H200, bench/NOTES.md, session 9): the staging threads keep up with 2.
constexpr int kStages = 2;

template <typename T, int D>
bool has_sm90a_code() {
  static const bool has = sm90::has_sm90a_code(block_sparse_attention_dkdv_kernel<T, D, kStages, false>) &&
                          sm90::has_sm90a_code(block_sparse_attention_dkdv_kernel<T, D, kStages, true>);
  return has;
}

template <typename T, int D, bool DQ>
ark_status launch(const BlockSparseAttentionDkdvParams& p, cudaStream_t stream) {
  CUtensorMap tq, tdo, tk, tv, tdk, tdv, tdq{};  // tdq: DQ only (the dK/dV-only instance never reads it)
  const ark_dtype dt = std::is_same<T, __nv_bfloat16>::value ? ARK_BFLOAT16 : ARK_FLOAT16;
  ARK_TRY(sm90::make_tensor_map(&tq, "q", p.q, dt, D, p.L, p.q_heads, p.batch, p.q_strides, QS));
  ARK_TRY(sm90::make_tensor_map(&tdo, "dout", p.dout, dt, D, p.L, p.q_heads, p.batch, p.dout_strides, QS));
  ARK_TRY(sm90::make_tensor_map(&tk, "k", p.k, dt, D, p.S, p.kv_heads, p.batch, p.k_strides, KT));
  ARK_TRY(sm90::make_tensor_map(&tv, "v", p.v, dt, D, p.S, p.kv_heads, p.batch, p.v_strides, KT));
  const int64_t kv_out_strides[3] = {p.kv_heads * p.S * D, p.S * D, D};  // dk, dv: contiguous (batch, kv_heads, S, D)
  ARK_TRY(sm90::make_tensor_map(&tdk, "dk", p.dk, dt, D, p.S, p.kv_heads, p.batch, kv_out_strides, KT));
  ARK_TRY(sm90::make_tensor_map(&tdv, "dv", p.dv, dt, D, p.S, p.kv_heads, p.batch, kv_out_strides, KT));
  if (DQ) {
    const int64_t dq_strides[3] = {p.q_heads * p.L * D, p.L * D, D};  // contiguous (batch, q_heads, L, D)
    ARK_TRY(sm90::make_tensor_map(&tdq, "dq_accum", p.dq_accum, ARK_FLOAT32, D, p.L, p.q_heads, p.batch, dq_strides, QS));
  }
  DkdvArgs a{};
  a.lse = p.lse;
  a.delta = p.delta;
  a.L = p.L;
  a.S = p.S;
  a.Hq = int(p.q_heads);
  a.group = int(p.q_heads / p.kv_heads);
  a.scale = p.scale;
  a.scale_log2 = p.scale * 1.4426950408889634f;
  a.mask = p.mask;
  a.k_run_ptr = p.keys.k_run_ptr;
  a.k_runs = p.keys.k_runs;
  a.k_tile_bits = p.keys.k_tile_bits;
  using L = Smem<D, kStages, DQ>;
  static_assert(L::kLaunchBytes <= 227 * 1024, "the shared memory of one CTA exceeds the sm_90 limit");
  auto kernel = block_sparse_attention_dkdv_kernel<T, D, kStages, DQ>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(L::kLaunchBytes));
  if (err == cudaSuccess) {
    const dim3 grid(unsigned((p.S + KT - 1) / KT), unsigned(p.kv_heads), unsigned(p.batch));
    kernel<<<grid, kThreads, L::kLaunchBytes, stream>>>(tq, tdo, tk, tv, tdk, tdv, tdq, a);
    err = cudaGetLastError();
  }
  if (err != cudaSuccess) return fail(ARK_ERROR_CUDA, "block_sparse_attention dK/dV: %s", cudaGetErrorString(err));
  return ARK_SUCCESS;
}

template <bool DQ>
ark_status launch_dtype(const BlockSparseAttentionDkdvParams& p, ark_dtype dtype, cudaStream_t stream) {
  if (dtype == ARK_BFLOAT16)
    return p.head_dim == 64 ? launch<__nv_bfloat16, 64, DQ>(p, stream) : launch<__nv_bfloat16, 128, DQ>(p, stream);
  return p.head_dim == 64 ? launch<__half, 64, DQ>(p, stream) : launch<__half, 128, DQ>(p, stream);
}

}  // namespace

bool block_sparse_attention_dkdv_cuda_supported(int head_dim, int block_q, int block_k, ark_dtype dtype) {
  if (!((head_dim == 64 || head_dim == 128) && (dtype == ARK_BFLOAT16 || dtype == ARK_FLOAT16) && block_q == QT &&
        block_k == KT && sm90::device_is_sm90()))
    return false;
  if (dtype == ARK_BFLOAT16)
    return head_dim == 64 ? has_sm90a_code<__nv_bfloat16, 64>() : has_sm90a_code<__nv_bfloat16, 128>();
  return head_dim == 64 ? has_sm90a_code<__half, 64>() : has_sm90a_code<__half, 128>();
}

ark_status block_sparse_attention_dkdv_cuda(const BlockSparseAttentionDkdvParams& p, ark_dtype dtype,
                                           void* stream_ptr) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  if (p.batch == 0 || p.kv_heads == 0 || p.S == 0) return ARK_SUCCESS;  // dk, dv have no element
  if (p.L == 0 || p.q_heads == 0) {  // no query: zero gradients, no dQ row (TMA cannot describe an empty q)
    const size_t bytes = size_t(p.batch * p.kv_heads * p.S) * p.head_dim * 2;
    cudaError_t err = cudaMemsetAsync(p.dk, 0, bytes, stream);
    if (err == cudaSuccess) err = cudaMemsetAsync(p.dv, 0, bytes, stream);
    if (err != cudaSuccess) return fail(ARK_ERROR_CUDA, "block_sparse_attention dK/dV: %s", cudaGetErrorString(err));
    return ARK_SUCCESS;
  }
  if (p.kv_heads > 65535 || p.batch > 65535)
    return fail(ARK_ERROR_INVALID_ARGUMENT, "k: expected at most 65535 kv heads and batch rows, got %lld and %lld",
                (long long)p.kv_heads, (long long)p.batch);
  if (p.S >= (int64_t(1) << 31) - KT || p.L >= (int64_t(1) << 31) - QT)
    return fail(ARK_ERROR_INVALID_ARGUMENT, "L, S: expected < 2^31 - 128, got %lld, %lld", (long long)p.L,
                (long long)p.S);
  if (p.dq_accum) return launch_dtype<true>(p, dtype, stream);
  return launch_dtype<false>(p, dtype, stream);
}

}  // namespace ark
