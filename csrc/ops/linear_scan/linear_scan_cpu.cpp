// linear_scan on the CPU: one sequential pass per row, rows spread over OpenMP threads.
// Also the oracle the C API tests compare the CUDA kernels with.
#include "ops/linear_scan/linear_scan.cuh"

#include "common/half_convert.hpp"

namespace ark {
namespace {

// Rows are independent; below this many elements thread start-up costs more than it saves.
constexpr int64_t kParallelMinElements = 1 << 15;

template <typename T>
void fwd_rows(const LinearScanFwdParams& p) {
  const T* a = static_cast<const T*>(p.a);
  const T* b = static_cast<const T*>(p.b);
  T* h = static_cast<T*>(p.h);
  const int64_t T_len = p.T;
#pragma omp parallel for schedule(static) if (p.rows * p.T >= kParallelMinElements)
  for (int64_t r = 0; r < p.rows; ++r) {
    const T* ar = a + r * p.a_row_stride;
    const T* br = b + r * p.b_row_stride;
    T* hr = h + r * p.h_row_stride;
    float state = p.h0 ? p.h0[r] : 0.0f;
    for (int64_t i = 0; i < T_len; ++i) {
      const int64_t t = p.reverse ? T_len - 1 - i : i;
      state = to_float(ar[t]) * state + to_float(br[t]);
      hr[t] = from_float<T>(state);
    }
    if (p.h_last) p.h_last[r] = state;
  }
}

template <typename T>
void bwd_rows(const LinearScanBwdParams& p) {
  const T* a = static_cast<const T*>(p.a);
  const T* h = static_cast<const T*>(p.h);
  const T* g = static_cast<const T*>(p.g);
  T* da = static_cast<T*>(p.da);
  T* db = static_cast<T*>(p.db);
  const int64_t T_len = p.T;
  // Logical step s runs in the forward scan's order; t(s) is its position in memory.
  const auto pos = [&](int64_t s) { return p.reverse ? T_len - 1 - s : s; };
#pragma omp parallel for schedule(static) if (p.rows * p.T >= kParallelMinElements)
  for (int64_t r = 0; r < p.rows; ++r) {
    const T* ar = a + r * p.a_row_stride;
    const T* hr = h + r * p.h_row_stride;
    const T* gr = g + r * p.g_row_stride;
    T* dar = da + r * T_len;
    T* dbr = db + r * T_len;
    const float h0 = p.h0 ? p.h0[r] : 0.0f;
    float dh = p.g_last ? p.g_last[r] : 0.0f;  // gradient flowing into the step after the last
    float gate_next = 1.0f;                    // a of the step after the current one
    for (int64_t s = T_len - 1; s >= 0; --s) {
      const int64_t t = pos(s);
      dh = to_float(gr[t]) + gate_next * dh;
      const float h_prev = s > 0 ? to_float(hr[pos(s - 1)]) : h0;
      dar[t] = from_float<T>(h_prev * dh);
      dbr[t] = from_float<T>(dh);
      gate_next = to_float(ar[t]);
    }
    if (p.dh0) p.dh0[r] = gate_next * dh;  // a[first] * dh[first]; g_last itself when T == 0
  }
}

}  // namespace

void linear_scan_fwd_cpu(const LinearScanFwdParams& p, ark_dtype dtype) {
  switch (dtype) {
    case ARK_FLOAT32: return fwd_rows<float>(p);
    case ARK_FLOAT16: return fwd_rows<fp16_bits>(p);
    case ARK_BFLOAT16: return fwd_rows<bf16_bits>(p);
  }
}

void linear_scan_bwd_cpu(const LinearScanBwdParams& p, ark_dtype dtype) {
  switch (dtype) {
    case ARK_FLOAT32: return bwd_rows<float>(p);
    case ARK_FLOAT16: return bwd_rows<fp16_bits>(p);
    case ARK_BFLOAT16: return bwd_rows<bf16_bits>(p);
  }
}

}  // namespace ark
