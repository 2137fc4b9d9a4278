// causal_conv1d: parameters shared by the CPU kernels, the CUDA kernels and the C API (torch-free).
// Math and the derivation of the backward pass: docs/ops/causal_conv1d.md.
#pragma once

#include <cstddef>
#include <cstdint>

#include "arkernels/status.h"

namespace ark {

// Small per-channel / per-row arrays (weight, bias, states) may have any float dtype: reading them
// in their own dtype costs nothing and spares the caller a conversion kernel per call.
struct CausalConv1dFwdParams {
  const void* x;
  int64_t x_batch_stride, x_dim_stride;  // in elements; the time stride is 1
  const void* weight;                    // dim x width, contiguous
  const void* bias;                      // dim, or nullptr
  ark_dtype param_dtype;
  const void* initial_states;            // batch x dim x (width-1), contiguous, or nullptr
  ark_dtype states_dtype;
  void* out;                             // batch x dim x L, contiguous
  void* final_states;                    // batch x dim x (width-1), contiguous, x's dtype, or nullptr
  int64_t batch, dim, L;
  int width;
  bool silu;
};

struct CausalConv1dBwdParams {
  const void* x;
  int64_t x_batch_stride, x_dim_stride;
  const void* weight;
  const void* bias;
  ark_dtype param_dtype;
  const void* initial_states;
  ark_dtype states_dtype;
  const void* grad_out;
  int64_t g_batch_stride, g_dim_stride;
  const void* grad_final_states;  // batch x dim x (width-1), contiguous, x's dtype, or nullptr
  void* dx;                       // batch x dim x L, contiguous
  float* dweight;                 // dim x width, or nullptr
  float* dbias;                   // dim, or nullptr
  float* dinit;                   // batch x dim x (width-1), or nullptr
  void* workspace;
  size_t workspace_bytes;
  int64_t batch, dim, L;
  int width;
  bool silu;
};

struct CausalConv1dUpdateParams {
  const void* x;
  int64_t x_batch_stride, x_dim_stride, x_time_stride;
  void* conv_state;
  int64_t s_batch_stride, s_dim_stride, s_time_stride;
  int64_t state_batch, state_len;
  const void* weight;
  const void* bias;
  ark_dtype param_dtype;
  const int32_t* cache_seqlens;       // batch, or nullptr (no circular buffer)
  const int32_t* conv_state_indices;  // batch, or nullptr (row b of conv_state)
  void* out;                          // batch x dim x seqlen, contiguous
  int64_t batch, dim, seqlen;
  int width;
  bool silu;
};

// CPU kernels (OpenMP across rows). Arguments were validated by the C API.
void causal_conv1d_fwd_cpu(const CausalConv1dFwdParams& p, ark_dtype dtype);
void causal_conv1d_bwd_cpu(const CausalConv1dBwdParams& p, ark_dtype dtype);
void causal_conv1d_update_cpu(const CausalConv1dUpdateParams& p, ark_dtype dtype);

#ifdef ARKERNELS_WITH_CUDA
// CUDA kernels; `stream` is a cudaStream_t. Return ARK_SUCCESS or ARK_ERROR_CUDA with a message.
size_t causal_conv1d_bwd_workspace_bytes_cuda(int64_t batch, int64_t dim, int64_t L, int width, ark_dtype dtype);
ark_status causal_conv1d_fwd_cuda(const CausalConv1dFwdParams& p, ark_dtype dtype, void* stream);
ark_status causal_conv1d_bwd_cuda(const CausalConv1dBwdParams& p, ark_dtype dtype, void* stream);
ark_status causal_conv1d_update_cuda(const CausalConv1dUpdateParams& p, ark_dtype dtype, void* stream);
#endif

}  // namespace ark
