// linear_scan: parameters shared by the CPU kernel, the CUDA kernels and the C API (torch-free).
// Math and the derivation of the backward pass: docs/ops/linear_scan.md.
#pragma once

#include <cstdint>
#include "arkernels/status.h"

namespace ark {

// Forward: h[t] = a[t] * h[t-1] + b[t] along each row (mirrored when reverse).
struct LinearScanFwdParams {
  const void* a;
  const void* b;
  const float* h0;  // rows, or nullptr for zeros
  void* h;
  float* h_last;    // rows, or nullptr
  int64_t rows, T;
  int64_t a_row_stride, b_row_stride, h_row_stride;  // in elements; the time stride is 1
  bool reverse;
};

// Backward given the forward output h (see linear_scan.h for the equations).
struct LinearScanBwdParams {
  const void* a;
  const void* h;
  const void* g;
  const float* h0;      // rows, or nullptr for zeros
  const float* g_last;  // rows, or nullptr for zeros
  void* da;             // rows x T, row stride T
  void* db;             // rows x T, row stride T
  float* dh0;           // rows, or nullptr
  int64_t rows, T;
  int64_t a_row_stride, h_row_stride, g_row_stride;
  bool reverse;
};

// CPU kernels (OpenMP across rows). Arguments were validated by the C API.
void linear_scan_fwd_cpu(const LinearScanFwdParams& p, ark_dtype dtype);
void linear_scan_bwd_cpu(const LinearScanBwdParams& p, ark_dtype dtype);

#ifdef ARKERNELS_WITH_CUDA
// CUDA kernels; `stream` is a cudaStream_t. Returns ARK_SUCCESS or ARK_ERROR_CUDA with a message.
ark_status linear_scan_fwd_cuda(const LinearScanFwdParams& p, ark_dtype dtype, void* stream);
ark_status linear_scan_bwd_cuda(const LinearScanBwdParams& p, ark_dtype dtype, void* stream);
#endif

}  // namespace ark
