// C API of causal_conv1d: validates every argument, then runs the CPU or CUDA kernel.
#include "arkernels/causal_conv1d.h"

#include "common/status.hpp"
#include "ops/causal_conv1d/causal_conv1d.cuh"

namespace {

// The checks forward, backward and update share.
ark_status check_common(int64_t batch, int64_t dim, int64_t L, int width, int silu, ark_dtype dtype,
                        ark_dtype param_dtype, ark_device device) {
  ARK_REQUIRE(batch >= 0, "batch: expected >= 0, got %lld", (long long)batch);
  ARK_REQUIRE(dim >= 0, "dim: expected >= 0, got %lld", (long long)dim);
  ARK_REQUIRE(L >= 0, "L: expected >= 0, got %lld", (long long)L);
  ARK_REQUIRE(width >= 2 && width <= 4, "width: expected 2, 3 or 4, got %d", width);
  ARK_REQUIRE(silu == 0 || silu == 1, "silu: expected 0 or 1, got %d", silu);
  ARK_TRY(ark::check_float_dtype("dtype", dtype));
  ARK_TRY(ark::check_float_dtype("param_dtype", param_dtype));
  return ark::check_device(device);
}

// Inputs may broadcast (stride 0); negative strides are not supported.
ark_status check_stride(const char* name, int64_t stride) {
  ARK_REQUIRE(stride >= 0, "%s: expected >= 0, got %lld", name, (long long)stride);
  return ARK_SUCCESS;
}

}  // namespace

extern "C" ark_status ark_causal_conv1d_fwd(const void* x, const void* weight, const void* bias, ark_dtype param_dtype,
                                            const void* initial_states, ark_dtype states_dtype, void* out,
                                            void* final_states, int64_t batch, int64_t dim, int64_t L, int width,
                                            int64_t x_batch_stride, int64_t x_dim_stride, int silu, ark_dtype dtype,
                                            ark_device device, void* stream) {
  ark::clear_error();
  ARK_TRY(check_common(batch, dim, L, width, silu, dtype, param_dtype, device));
  if (initial_states) ARK_TRY(ark::check_float_dtype("states_dtype", states_dtype));
  ARK_TRY(check_stride("x_batch_stride", x_batch_stride));
  ARK_TRY(check_stride("x_dim_stride", x_dim_stride));
  const bool has_elements = batch > 0 && dim > 0 && L > 0;
  ARK_REQUIRE(!has_elements || (x && weight && out),
              "x, weight, out: expected non-NULL pointers for a %lld x %lld x %lld input, got x=%p weight=%p out=%p",
              (long long)batch, (long long)dim, (long long)L, x, weight, out);
  if (batch == 0 || dim == 0) return ARK_SUCCESS;
  const ark::CausalConv1dFwdParams p{x, x_batch_stride, x_dim_stride, weight, bias, param_dtype, initial_states,
                                     states_dtype, out, final_states, batch, dim, L, width, silu != 0};
  if (device == ARK_DEVICE_CPU) {
    ark::causal_conv1d_fwd_cpu(p, dtype);
    return ARK_SUCCESS;
  }
#ifdef ARKERNELS_WITH_CUDA
  return ark::causal_conv1d_fwd_cuda(p, dtype, stream);
#else
  (void)stream;
  return ARK_ERROR_NOT_COMPILED;
#endif
}

extern "C" ark_status ark_causal_conv1d_bwd_workspace_bytes(int64_t batch, int64_t dim, int64_t L, int width,
                                                            ark_dtype dtype, ark_device device, size_t* bytes) {
  ark::clear_error();
  ARK_TRY(check_common(batch, dim, L, width, 0, dtype, ARK_FLOAT32, device));
  ARK_REQUIRE(bytes != nullptr, "bytes: expected a non-NULL pointer");
  *bytes = 0;
#ifdef ARKERNELS_WITH_CUDA
  if (device == ARK_DEVICE_CUDA) *bytes = ark::causal_conv1d_bwd_workspace_bytes_cuda(batch, dim, L, width, dtype);
#endif
  return ARK_SUCCESS;
}

extern "C" ark_status ark_causal_conv1d_bwd(const void* x, const void* weight, const void* bias, ark_dtype param_dtype,
                                            const void* initial_states, ark_dtype states_dtype, const void* grad_out,
                                            const void* grad_final_states, void* dx, float* dweight, float* dbias,
                                            float* dinitial_states, void* workspace, size_t workspace_bytes,
                                            int64_t batch, int64_t dim, int64_t L, int width, int64_t x_batch_stride,
                                            int64_t x_dim_stride, int64_t g_batch_stride, int64_t g_dim_stride,
                                            int silu, ark_dtype dtype, ark_device device, void* stream) {
  ark::clear_error();
  ARK_TRY(check_common(batch, dim, L, width, silu, dtype, param_dtype, device));
  if (initial_states) ARK_TRY(ark::check_float_dtype("states_dtype", states_dtype));
  ARK_TRY(check_stride("x_batch_stride", x_batch_stride));
  ARK_TRY(check_stride("x_dim_stride", x_dim_stride));
  ARK_TRY(check_stride("g_batch_stride", g_batch_stride));
  ARK_TRY(check_stride("g_dim_stride", g_dim_stride));
  const bool rows = batch > 0 && dim > 0;
  ARK_REQUIRE(!rows || weight, "weight: expected a non-NULL pointer");
  ARK_REQUIRE(!(rows && L > 0) || (x && grad_out && dx),
              "x, grad_out, dx: expected non-NULL pointers for a %lld x %lld x %lld input, got x=%p grad_out=%p dx=%p",
              (long long)batch, (long long)dim, (long long)L, x, grad_out, dx);
  size_t need = 0;
  ARK_TRY(ark_causal_conv1d_bwd_workspace_bytes(batch, dim, L, width, dtype, device, &need));
  ARK_REQUIRE(workspace_bytes >= need && (need == 0 || workspace),
              "workspace: expected %zu bytes (ark_causal_conv1d_bwd_workspace_bytes), got %zu bytes at %p", need,
              workspace_bytes, workspace);
  ARK_REQUIRE(need == 0 || (reinterpret_cast<uintptr_t>(workspace) & 15u) == 0,
              "workspace: expected a 16-byte aligned pointer, got %p", workspace);
  // With batch = 0 the kernels still run: they write zeros to dweight and dbias (sums over nothing).
  if (dim == 0) return ARK_SUCCESS;
  const ark::CausalConv1dBwdParams p{x, x_batch_stride, x_dim_stride, weight, bias, param_dtype, initial_states,
                                     states_dtype, grad_out, g_batch_stride, g_dim_stride, grad_final_states, dx,
                                     dweight, dbias, dinitial_states, workspace, workspace_bytes, batch, dim, L,
                                     width, silu != 0};
  if (device == ARK_DEVICE_CPU) {
    ark::causal_conv1d_bwd_cpu(p, dtype);
    return ARK_SUCCESS;
  }
#ifdef ARKERNELS_WITH_CUDA
  return ark::causal_conv1d_bwd_cuda(p, dtype, stream);
#else
  (void)stream;
  return ARK_ERROR_NOT_COMPILED;
#endif
}

extern "C" ark_status ark_causal_conv1d_update(const void* x, void* conv_state, const void* weight, const void* bias,
                                               ark_dtype param_dtype, const int32_t* cache_seqlens,
                                               const int32_t* conv_state_indices, void* out, int64_t batch,
                                               int64_t dim, int64_t seqlen, int width, int64_t state_batch,
                                               int64_t state_len, int64_t x_batch_stride, int64_t x_dim_stride,
                                               int64_t x_time_stride, int64_t state_batch_stride,
                                               int64_t state_dim_stride, int64_t state_time_stride, int silu,
                                               ark_dtype dtype, ark_device device, void* stream) {
  ark::clear_error();
  ARK_TRY(check_common(batch, dim, seqlen, width, silu, dtype, param_dtype, device));
  ARK_REQUIRE(state_batch >= 0, "state_batch: expected >= 0, got %lld", (long long)state_batch);
  ARK_REQUIRE(state_len >= width - 1, "state_len: expected >= width - 1 = %d, got %lld", width - 1,
              (long long)state_len);
  ARK_REQUIRE(conv_state_indices || state_batch >= batch,
              "state_batch: expected >= batch = %lld without conv_state_indices, got %lld", (long long)batch,
              (long long)state_batch);
  ARK_TRY(check_stride("x_batch_stride", x_batch_stride));
  ARK_TRY(check_stride("x_dim_stride", x_dim_stride));
  ARK_TRY(check_stride("x_time_stride", x_time_stride));
  ARK_TRY(check_stride("state_batch_stride", state_batch_stride));
  ARK_TRY(check_stride("state_dim_stride", state_dim_stride));
  ARK_TRY(check_stride("state_time_stride", state_time_stride));
  if (batch == 0 || dim == 0 || seqlen == 0) return ARK_SUCCESS;  // nothing to compute, nothing shifts
  ARK_REQUIRE(weight && conv_state && x && out,
              "x, conv_state, weight, out: expected non-NULL pointers, got x=%p conv_state=%p weight=%p out=%p", x,
              conv_state, weight, out);
  const ark::CausalConv1dUpdateParams p{x, x_batch_stride, x_dim_stride, x_time_stride, conv_state,
                                        state_batch_stride, state_dim_stride, state_time_stride, state_batch,
                                        state_len, weight, bias, param_dtype, cache_seqlens, conv_state_indices,
                                        out, batch, dim, seqlen, width, silu != 0};
  if (device == ARK_DEVICE_CPU) {
    ark::causal_conv1d_update_cpu(p, dtype);
    return ARK_SUCCESS;
  }
#ifdef ARKERNELS_WITH_CUDA
  return ark::causal_conv1d_update_cuda(p, dtype, stream);
#else
  (void)stream;
  return ARK_ERROR_NOT_COMPILED;
#endif
}
