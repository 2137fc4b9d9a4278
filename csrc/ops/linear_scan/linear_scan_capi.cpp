// C API of linear_scan: validates every argument, then runs the CPU or CUDA kernel.
#include "arkernels/linear_scan.h"

#include "common/status.hpp"
#include "ops/linear_scan/linear_scan.cuh"

namespace {

ark_status check_common(int64_t rows, int64_t T, int reverse, ark_dtype dtype, ark_device device) {
  ARK_REQUIRE(rows >= 0, "rows: expected >= 0, got %lld", (long long)rows);
  ARK_REQUIRE(T >= 0, "T: expected >= 0, got %lld", (long long)T);
  ARK_REQUIRE(reverse == 0 || reverse == 1, "reverse: expected 0 or 1, got %d", reverse);
  ARK_TRY(ark::check_float_dtype("dtype", dtype));
  return ark::check_device(device);
}

// Inputs may share rows (stride 0 broadcasts one row); outputs must not overlap.
ark_status check_strides(const char* name, int64_t stride, int64_t rows, int64_t T, bool output) {
  if (rows <= 1 || T == 0) return ARK_SUCCESS;
  if (output)
    ARK_REQUIRE(stride >= T, "%s: expected a row stride >= T = %lld for an output, got %lld", name, (long long)T,
                (long long)stride);
  else
    ARK_REQUIRE(stride >= 0, "%s: expected a row stride >= 0, got %lld", name, (long long)stride);
  return ARK_SUCCESS;
}

}  // namespace

extern "C" ark_status ark_linear_scan_fwd(const void* a, const void* b, const float* h0, void* h, float* h_last,
                                          int64_t rows, int64_t T, int64_t a_row_stride, int64_t b_row_stride,
                                          int64_t h_row_stride, int reverse, ark_dtype dtype, ark_device device,
                                          void* stream) {
  ark::clear_error();
  ARK_TRY(check_common(rows, T, reverse, dtype, device));
  ARK_TRY(check_strides("a_row_stride", a_row_stride, rows, T, false));
  ARK_TRY(check_strides("b_row_stride", b_row_stride, rows, T, false));
  ARK_TRY(check_strides("h_row_stride", h_row_stride, rows, T, true));
  const bool has_elements = rows > 0 && T > 0;
  ARK_REQUIRE(!has_elements || (a && b && h), "a, b, h: expected non-NULL pointers for %lld x %lld rows, got a=%p b=%p h=%p",
              (long long)rows, (long long)T, a, (const void*)b, h);
  if (rows == 0) return ARK_SUCCESS;
  const ark::LinearScanFwdParams p{a, b, h0, h, h_last, rows, T, a_row_stride, b_row_stride, h_row_stride, reverse != 0};
  if (device == ARK_DEVICE_CPU) {
    ark::linear_scan_fwd_cpu(p, dtype);
    return ARK_SUCCESS;
  }
#ifdef ARKERNELS_WITH_CUDA
  return ark::linear_scan_fwd_cuda(p, dtype, stream);
#else
  (void)stream;
  return ARK_ERROR_NOT_COMPILED;
#endif
}

extern "C" ark_status ark_linear_scan_bwd(const void* a, const void* h, const void* g, const float* h0,
                                          const float* g_last, void* da, void* db, float* dh0, int64_t rows,
                                          int64_t T, int64_t a_row_stride, int64_t h_row_stride,
                                          int64_t g_row_stride, int reverse, ark_dtype dtype, ark_device device,
                                          void* stream) {
  ark::clear_error();
  ARK_TRY(check_common(rows, T, reverse, dtype, device));
  ARK_TRY(check_strides("a_row_stride", a_row_stride, rows, T, false));
  ARK_TRY(check_strides("h_row_stride", h_row_stride, rows, T, false));
  ARK_TRY(check_strides("g_row_stride", g_row_stride, rows, T, false));
  const bool has_elements = rows > 0 && T > 0;
  ARK_REQUIRE(!has_elements || (a && h && g && da && db),
              "a, h, g, da, db: expected non-NULL pointers for %lld x %lld rows, got a=%p h=%p g=%p da=%p db=%p",
              (long long)rows, (long long)T, a, h, g, da, db);
  if (rows == 0) return ARK_SUCCESS;
  const ark::LinearScanBwdParams p{a, h, g, h0, g_last, da, db, dh0, rows, T, a_row_stride, h_row_stride,
                                   g_row_stride, reverse != 0};
  if (device == ARK_DEVICE_CPU) {
    ark::linear_scan_bwd_cpu(p, dtype);
    return ARK_SUCCESS;
  }
#ifdef ARKERNELS_WITH_CUDA
  return ark::linear_scan_bwd_cuda(p, dtype, stream);
#else
  (void)stream;
  return ARK_ERROR_NOT_COMPILED;
#endif
}
