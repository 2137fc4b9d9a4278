// Shared helpers of the torch bindings: tensor <-> C API conversions and argument checks.
#pragma once

#include <ATen/ATen.h>

#include <limits>
#include <string>
#include <c10/util/Exception.h>
#include <c10/util/accumulate.h>

#include "arkernels/status.h"

#ifdef ARKERNELS_TORCH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace ark_torch {

// "[2, 7]" for error messages, formatted here: streaming an IntArrayRef, or any integer, into
// TORCH_CHECK's message crashed the process with torch 2.11 (the torch-op bad-input tests of
// linear_scan, selective_scan and causal_conv1d). Messages therefore carry integers as strings
// (num_str, shape_str); strings, ScalarType and Device stream safely.
inline std::string num_str(int64_t v) { return std::to_string(v); }

inline std::string shape_str(at::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

inline ark_dtype to_ark_dtype(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return ARK_FLOAT32;
    case at::kHalf: return ARK_FLOAT16;
    case at::kBFloat16: return ARK_BFLOAT16;
    default: break;
  }
  TORCH_CHECK_TYPE(false, name, ": expected dtype float32, float16 or bfloat16, got ", t.scalar_type());
}

inline ark_device to_ark_device(const at::Tensor& t, const char* name) {
  if (t.is_cpu()) return ARK_DEVICE_CPU;
  if (t.is_cuda()) return ARK_DEVICE_CUDA;
  TORCH_CHECK_VALUE(false, name, ": expected a CPU or CUDA tensor, got device ", t.device());
}

// The stream the C API should run on: torch's current stream for `t`'s device (nullptr on CPU).
inline void* current_stream(const at::Tensor& t) {
#ifdef ARKERNELS_TORCH_CUDA
  if (t.is_cuda()) return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
#endif
  TORCH_CHECK(t.is_cpu(), "arkernels was built without CUDA support in its torch bindings; got a tensor on ", t.device());
  return nullptr;
}

// A (rows, T) view of a (..., T) tensor whose time axis has stride 1, copying only when no such
// view exists. Returns the view; its row stride is view.stride(0).
inline at::Tensor as_rows(const at::Tensor& t) {
  const int64_t T = t.size(-1);
  const int64_t n_rows = c10::multiply_integers(t.sizes().slice(0, t.dim() - 1));
  at::Tensor rows = t.reshape({n_rows, T});
  if (T > 1 && rows.stride(1) != 1) rows = rows.contiguous();
  return rows;
}

inline int64_t row_stride(const at::Tensor& rows) { return rows.size(0) > 1 ? rows.stride(0) : rows.size(1); }

// Test switch (arkernels._outputs.poisoned_outputs): NaN-fill new outputs before the kernel runs.
bool& poison_outputs();

inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  if (poison_outputs()) out.fill_(std::numeric_limits<float>::quiet_NaN());
  return out;
}

// Throws a RuntimeError carrying the C API's message when `status` is not ARK_SUCCESS.
inline void check_status(ark_status status, const char* what) {
  TORCH_CHECK(status == ARK_SUCCESS, what, " failed: ", ark_status_name(status), ": ", ark_last_error_message());
}

}  // namespace ark_torch
