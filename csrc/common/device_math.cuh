// Device helpers shared by the CUDA kernels of every op (torch-free): fp32 <-> storage dtype
// conversions, the activations the ops fuse (softplus, silu), and the launch-status check.
// Every op computes in fp32 whatever its storage dtype (ARCHITECTURE.md, numerics contract).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/status.hpp"

namespace ark {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// log(1 + e^x), passed through above 20 where it equals x in fp32 (mamba-ssm's threshold, so that
// results match the peer's bit for bit in that range).
__device__ __forceinline__ float softplus_f32(float x) { return x <= 20.f ? log1pf(__expf(x)) : x; }
// d softplus / dx = sigmoid(x); 1 above the passthrough threshold.
__device__ __forceinline__ float softplus_grad_f32(float x) { return x <= 20.f ? 1.f / (1.f + __expf(-x)) : 1.f; }
// Fast division (MUFU.RCP): an IEEE division costs ~10 instructions and a branch per element.
__device__ __forceinline__ float sigmoid_f32(float x) { return __fdividef(1.f, 1.f + __expf(-x)); }
__device__ __forceinline__ float silu_f32(float x) { return x * sigmoid_f32(x); }
// d silu / dx = sigmoid(x) * (1 + x * (1 - sigmoid(x))).
__device__ __forceinline__ float silu_grad_f32(float x) {
  const float s = sigmoid_f32(x);
  return s * (1.f + x * (1.f - s));
}

// Element i of a float32 / float16 / bfloat16 array whose dtype is known only at run time (small
// per-channel arrays such as weights, biases and states: no conversion kernel on the caller's side).
__device__ __forceinline__ float load_f32(const void* p, int64_t i, ark_dtype dtype) {
  switch (dtype) {
    case ARK_FLOAT16: return __half2float(static_cast<const __half*>(p)[i]);
    case ARK_BFLOAT16: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

// ARK_SUCCESS, or ARK_ERROR_CUDA naming the op and kernel when the last launch failed.
inline ark_status cuda_launch_status(const char* op, const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return fail(ARK_ERROR_CUDA, "%s %s launch failed: %s", op, what, cudaGetErrorString(err));
  return ARK_SUCCESS;
}

// Calls f(T{}) with T the storage type of `dtype` (float, __half, __nv_bfloat16): one place that maps
// the C API's dtype enum onto kernel template arguments.
template <class F> ark_status dispatch_dtype(ark_dtype dtype, F&& f) {
  switch (dtype) {
    case ARK_FLOAT32: return f(float{});
    case ARK_FLOAT16: return f(__half{});
    case ARK_BFLOAT16: return f(__nv_bfloat16{});
  }
  return fail(ARK_ERROR_INVALID_ARGUMENT, "dtype: unknown value %d", int(dtype));
}

}  // namespace ark
