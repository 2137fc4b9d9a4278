/* First-order linear recurrence h[t] = a[t] * h[t-1] + b[t] along the last axis.
 * Torch-free C API. Derivation of the backward pass: docs/ops/linear_scan.md. */
#ifndef ARKERNELS_LINEAR_SCAN_H
#define ARKERNELS_LINEAR_SCAN_H

#include "arkernels/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/// Forward scan over `rows` independent rows of length T.
/// With reverse = 0: h[t] = a[t] * h[t-1] + b[t], h[-1] = h0, final state h[T-1].
/// With reverse = 1: h[t] = a[t] * h[t+1] + b[t], h[T] = h0, final state h[0].
/// Accumulation is fp32 whatever `dtype`; h is rounded to `dtype` when stored.
/// \param[in]  a, b      rows x T, element (r, t) at ptr[r * row_stride + t], dtype `dtype`
/// \param[in]  h0        rows, fp32, contiguous, or NULL for zeros
/// \param[out] h         rows x T, dtype `dtype`, row stride `h_row_stride`
/// \param[out] h_last    rows, fp32, contiguous, or NULL
/// \param      stream    a cudaStream_t for ARK_DEVICE_CUDA (NULL = default stream); ignored on CPU
ARK_API ark_status ark_linear_scan_fwd(const void* a, const void* b, const float* h0, void* h, float* h_last,
                                       int64_t rows, int64_t T, int64_t a_row_stride, int64_t b_row_stride,
                                       int64_t h_row_stride, int reverse, ark_dtype dtype, ark_device device,
                                       void* stream);

/// Backward of ark_linear_scan_fwd, given the forward output h (not recomputed).
/// dh[t] = g[t] + a[t+1] * dh[t+1] (reverse = 0; dh[T-1] also receives g_last), then
/// da[t] = h[t-1] * dh[t] (h[-1] = h0), db[t] = dh[t], dh0 = a[0] * dh[0]. Mirrored for reverse = 1.
/// \param[in]  a, h, g   rows x T, dtype `dtype`, row strides as named
/// \param[in]  h0        rows, fp32, or NULL for zeros
/// \param[in]  g_last    rows, fp32 gradient of the final state, or NULL for zeros
/// \param[out] da, db    rows x T, dtype `dtype`, contiguous rows (row stride T)
/// \param[out] dh0       rows, fp32, or NULL when not needed
ARK_API ark_status ark_linear_scan_bwd(const void* a, const void* h, const void* g, const float* h0,
                                       const float* g_last, void* da, void* db, float* dh0, int64_t rows,
                                       int64_t T, int64_t a_row_stride, int64_t h_row_stride,
                                       int64_t g_row_stride, int reverse, ark_dtype dtype, ark_device device,
                                       void* stream);

#ifdef __cplusplus
}
#endif

#endif /* ARKERNELS_LINEAR_SCAN_H */
