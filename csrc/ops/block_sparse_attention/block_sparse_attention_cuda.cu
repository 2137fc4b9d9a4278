// block_sparse_attention forward for Hopper (sm_90a), host side: tensor maps, schedule choice, launch. The
// kernels and their design: block_sparse_attention_sm90.cuh.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "common/device_info.hpp"
#include "common/sm90_device.hpp"
#include "common/sm90_tma_host.hpp"
#include "common/status.hpp"
#include "common/tuning.hpp"
#include "ops/block_sparse_attention/block_sparse_attention.cuh"
#include "ops/block_sparse_attention/block_sparse_attention_sm90.cuh"

namespace ark {
namespace {

using namespace bsa_sm90;

// Rows with no key at all (S == 0): out 0, lse -inf.
__global__ void fill_lse_neg_inf(float* lse, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) lse[i] = -INFINITY;
}

// Kernel instances: schedule (serial / pipelined / pipelined with the TMA epilogue / persistent, see the .cuh) x ring
// slots (2; 3 fits D 64 and, at 224 KB, D 128 but not beside the persistent form's O tile). Knobs bsa_fwd_schedule (1
// serial, 2 pipelined, 3 pipelined + TMA epilogue, 4 persistent) and bsa_fwd_stages (2, 3) pick one for tuning runs.
// Default (H100, bench/NOTES.md session 10): schedule 3, the fastest of 1-3 on all four benchmark masks; schedule 4
// where a (batch row, head) has few query tiles (VAR, 6 tiles: 0.174 vs 0.189 ms), which it lost on the long ones
// (causal 4096: 0.633 vs 0.572; SCAM, sliding window 8192 too: its static hand-out balances heavy and light tiles
// worse than the hardware's block scheduler, and long walks have little per-CTA overhead to save).
constexpr int kPersistentMaxTiles = 8;
constexpr uint32_t kMaxSharedBytes = 227 * 1024;

template <typename T, int D, int STAGES, bool PIPELINED, bool TMA_OUT = false, bool PERSISTENT = false>
ark_status launch_instance(const CUtensorMap& tq, const CUtensorMap& tk, const CUtensorMap& tv, const CUtensorMap& tout,
                           const KernelArgs& a, dim3 grid, cudaStream_t stream) {
  using L = Smem<D, STAGES>;
  constexpr uint32_t bytes = L::launch_bytes(PERSISTENT);
  if constexpr (bytes > kMaxSharedBytes) {
    return fail(ARK_ERROR_INVALID_ARGUMENT,
                "knobs bsa_fwd_schedule / bsa_fwd_stages: the persistent schedule with %d slots needs %u bytes of shared "
                "memory at head_dim %d, more than the %u an SM has",
                STAGES, bytes, D, kMaxSharedBytes);
  } else {
    auto kernel = block_sparse_attention_fwd_kernel<T, D, STAGES, PIPELINED, TMA_OUT, PERSISTENT>;
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
    if (err == cudaSuccess) {
      kernel<<<grid, Schedule<PIPELINED>::kThreads, bytes, stream>>>(tq, tk, tv, tout, a);
      err = cudaGetLastError();
    }
    if (err != cudaSuccess) return fail(ARK_ERROR_CUDA, "block_sparse_attention: %s", cudaGetErrorString(err));
    return ARK_SUCCESS;
  }
}

template <typename T, int D>
ark_status launch(const BlockSparseAttentionFwdParams& p, cudaStream_t stream) {
  const int64_t tiles = (p.L + BM - 1) / BM;
  const int schedule = knob(Knob::BsaFwdSchedule) ? knob(Knob::BsaFwdSchedule) : tiles <= kPersistentMaxTiles ? 4 : 3;
  const int stages = knob(Knob::BsaFwdStages) ? knob(Knob::BsaFwdStages) : 2;
  if (schedule < 1 || schedule > 4 || (stages != 2 && stages != 3) || knob(Knob::BsaFwdCtas) < 0)
    return fail(ARK_ERROR_INVALID_ARGUMENT,
                "knobs bsa_fwd_schedule / bsa_fwd_stages / bsa_fwd_ctas: expected 1 to 4 / 2 or 3 / >= 0, got %d / %d / "
                "%d", schedule, stages, knob(Knob::BsaFwdCtas));
  CUtensorMap tq, tk, tv, tout{};  // tout: schedules 3 and 4 only
  const ark_dtype dt = std::is_same<T, __nv_bfloat16>::value ? ARK_BFLOAT16 : ARK_FLOAT16;
  ARK_TRY(sm90::make_tensor_map(&tq, "q", p.q, dt, D, p.L, p.q_heads, p.batch, p.q_strides, BM));
  ARK_TRY(sm90::make_tensor_map(&tk, "k", p.k, dt, D, p.S, p.kv_heads, p.batch, p.k_strides, BN));
  ARK_TRY(sm90::make_tensor_map(&tv, "v", p.v, dt, D, p.S, p.kv_heads, p.batch, p.v_strides, BN));
  if (schedule >= 3) {  // out: contiguous (batch, q_heads, L, D), 16-byte aligned (the C API checks); boxes of 64 rows
    const int64_t out_strides[3] = {p.q_heads * p.L * D, p.L * D, D};
    ARK_TRY(sm90::make_tensor_map(&tout, "out", p.out, dt, D, p.L, p.q_heads, p.batch, out_strides, 64));
  }
  KernelArgs a;
  a.out = p.out;
  a.lse = p.lse;
  a.L = p.L;
  a.tiles = int(tiles);
  a.Hq = int(p.q_heads);
  a.batch = int(p.batch);
  a.group = int(p.q_heads / p.kv_heads);
  a.scale = p.scale;
  a.scale_log2 = p.scale * 1.4426950408889634f;
  a.walk = bsa_walk::make_walk(p.S, p.mask);
  const dim3 grid(unsigned(a.tiles), unsigned(p.q_heads), unsigned(p.batch));
  if (schedule == 4) {  // one CTA per SM (registers allow one), never more than the items
    const int64_t items = int64_t(a.tiles) * p.q_heads * p.batch;
    const int64_t resident = knob(Knob::BsaFwdCtas) > 0 ? knob(Knob::BsaFwdCtas) : device_sm_count();
    const dim3 ctas(unsigned(std::min<int64_t>(items, resident)));
    return stages == 2 ? launch_instance<T, D, 2, true, true, true>(tq, tk, tv, tout, a, ctas, stream)
                       : launch_instance<T, D, 3, true, true, true>(tq, tk, tv, tout, a, ctas, stream);
  }
  if (schedule == 3)
    return stages == 2 ? launch_instance<T, D, 2, true, true>(tq, tk, tv, tout, a, grid, stream)
                       : launch_instance<T, D, 3, true, true>(tq, tk, tv, tout, a, grid, stream);
  if (schedule == 2)
    return stages == 2 ? launch_instance<T, D, 2, true>(tq, tk, tv, tout, a, grid, stream)
                       : launch_instance<T, D, 3, true>(tq, tk, tv, tout, a, grid, stream);
  return stages == 2 ? launch_instance<T, D, 2, false>(tq, tk, tv, tout, a, grid, stream)
                     : launch_instance<T, D, 3, false>(tq, tk, tv, tout, a, grid, stream);
}

// Asked once per instance: the answer is a property of the binary.
template <typename T, int D>
bool has_sm90a_code() {
  static const bool has = sm90::has_sm90a_code(block_sparse_attention_fwd_kernel<T, D, 2, false>);
  return has;
}

}  // namespace

bool block_sparse_attention_cuda_supported(int head_dim, int block_q, int block_k, ark_dtype dtype) {
  if (!((head_dim == 64 || head_dim == 128) && (dtype == ARK_BFLOAT16 || dtype == ARK_FLOAT16) && block_q == BM &&
        block_k >= 1 && BN % block_k == 0 && sm90::device_is_sm90()))
    return false;
  if (dtype == ARK_BFLOAT16) return head_dim == 64 ? has_sm90a_code<__nv_bfloat16, 64>() : has_sm90a_code<__nv_bfloat16, 128>();
  return head_dim == 64 ? has_sm90a_code<__half, 64>() : has_sm90a_code<__half, 128>();
}

ark_status block_sparse_attention_fwd_cuda(const BlockSparseAttentionFwdParams& p, ark_dtype dtype, void* stream_ptr) {
  if (!block_sparse_attention_cuda_supported(p.head_dim, p.mask.block_q, p.mask.block_k, dtype))
    return fail(ARK_ERROR_INVALID_ARGUMENT,
                "block_sparse_attention: the CUDA kernel needs an sm_90 GPU, bf16/fp16, head_dim 64 or 128, block_q %d "
                "and block_k dividing %d; got head_dim %d, dtype %d, tiling %d x %d",
                BM, BN, p.head_dim, int(dtype), p.mask.block_q, p.mask.block_k);
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  if (p.batch == 0 || p.q_heads == 0 || p.L == 0) return ARK_SUCCESS;
  if (p.S == 0) {  // no keys: TMA cannot describe an empty tensor, and there is nothing to attend to
    const int64_t rows = p.batch * p.q_heads * p.L;
    cudaError_t err = cudaMemsetAsync(p.out, 0, size_t(rows) * p.head_dim * 2, stream);
    if (err == cudaSuccess && p.lse) {
      fill_lse_neg_inf<<<unsigned((rows + 255) / 256), 256, 0, stream>>>(p.lse, rows);
      err = cudaGetLastError();
    }
    if (err != cudaSuccess) return fail(ARK_ERROR_CUDA, "block_sparse_attention: %s", cudaGetErrorString(err));
    return ARK_SUCCESS;
  }
  if (p.q_heads > 65535 || p.batch > 65535)
    return fail(ARK_ERROR_INVALID_ARGUMENT, "q: expected at most 65535 heads and batch rows, got %lld and %lld",
                (long long)p.q_heads, (long long)p.batch);
  if (p.S >= (int64_t(1) << 31) - BN || p.L >= (int64_t(1) << 31) - BM)
    return fail(ARK_ERROR_INVALID_ARGUMENT, "L, S: expected < 2^31 - 128, got %lld, %lld", (long long)p.L,
                (long long)p.S);
  if (dtype == ARK_BFLOAT16)
    return p.head_dim == 64 ? launch<__nv_bfloat16, 64>(p, stream) : launch<__nv_bfloat16, 128>(p, stream);
  return p.head_dim == 64 ? launch<__half, 64>(p, stream) : launch<__half, 128>(p, stream);
}

}  // namespace ark
