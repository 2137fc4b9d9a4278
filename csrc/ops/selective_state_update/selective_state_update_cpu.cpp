// selective_state_update on the CPU: one (b, h, p) row at a time, its N state elements carried in
// fp32 across the k tokens, rows spread over OpenMP threads. The same math, in the same order, as the
// CUDA kernel; also the oracle the C API test compares the CUDA kernel with.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/half_convert.hpp"
#include "ops/selective_state_update/selective_state_update.cuh"

namespace ark {
namespace {

// Below this many state elements times tokens, thread start-up costs more than it saves.
constexpr int64_t kParallelMinWork = 1 << 15;

// One element of a tensor whose dtype is only known at run time (A, D, dt_bias: fp32 or the input dtype).
float load_any(const void* base, int64_t offset, ark_dtype dtype) {
  switch (dtype) {
    case ARK_FLOAT16: return to_float(static_cast<const fp16_bits*>(base)[offset]);
    case ARK_BFLOAT16: return to_float(static_cast<const bf16_bits*>(base)[offset]);
    case ARK_FLOAT32: break;
  }
  return static_cast<const float*>(base)[offset];
}

// log(1 + e^x), passed through above 20 (the CUDA kernel's softplus_f32 and mamba-ssm's threshold).
float softplus(float x) { return x <= 20.f ? std::log1p(std::exp(x)) : x; }
float silu(float x) { return x / (1.f + std::exp(-x)); }

template <typename S, typename X>
void run_rows(const SsuParams& p) {
  const ark_selective_state_update_args& a = p.a;
  const int64_t H = a.heads, P = a.head_dim, N = a.dstate, K = a.tokens;
  const int64_t rows = a.batch * H * P;
  S* state = static_cast<S*>(a.state);
  S* inter = static_cast<S*>(a.intermediate_states);
  const X* x = static_cast<const X*>(a.x);
  const X* dt = static_cast<const X*>(a.dt);
  const X* B = static_cast<const X*>(a.B);
  const X* C = static_cast<const X*>(a.C);
  const X* z = static_cast<const X*>(a.z);
  X* out = static_cast<X*>(a.out);
  const bool parallel = rows * std::max<int64_t>(N, 1) * K >= kParallelMinWork;

#pragma omp parallel if (parallel)
  {
    std::vector<float> s(static_cast<size_t>(N));  // the row's state, fp32, carried across the tokens
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t pp = row % P, h = (row / P) % H, b = row / (H * P);
      const auto tok = [&](const int64_t* st, int64_t t) { return b * st[0] + t * st[1] + h * st[2] + pp * st[3]; };
      int64_t srow = b;
      if (a.state_batch_indices) {
        const int64_t off = b * a.state_batch_indices_stride;
        srow = a.state_batch_indices_int64 ? static_cast<const int64_t*>(a.state_batch_indices)[off]
                                           : static_cast<const int32_t*>(a.state_batch_indices)[off];
      }
      if (srow < 0 || srow >= a.state_batch) {
        // Padding (negative index): outputs 0, state untouched. An index >= Bc never gets here on the
        // CPU (the C API rejects it); NaN as on CUDA for any other caller of this function.
        const float fill = srow < 0 ? 0.f : std::numeric_limits<float>::quiet_NaN();
        for (int64_t t = 0; t < K; ++t) out[tok(a.out_strides, t)] = from_float<X>(fill);
        continue;
      }
      S* st = state + srow * a.state_strides[0] + h * a.state_strides[1] + pp * a.state_strides[2];
      for (int64_t n = 0; n < N; ++n) s[size_t(n)] = to_float(st[n * a.state_strides[3]]);
      const int64_t a_off = h * a.A_strides[0] + pp * a.A_strides[1];
      const float a_row = p.a_const_n && N > 0 ? load_any(a.A, a_off, a.A_dtype) : 0.f;
      const float d = a.D ? load_any(a.D, h * a.D_strides[0] + pp * a.D_strides[1], a.D_dtype) : 0.f;
      const float bias =
          a.dt_bias ? load_any(a.dt_bias, h * a.dt_bias_strides[0] + pp * a.dt_bias_strides[1], a.dt_bias_dtype) : 0.f;
      const int64_t g = (h * P + pp) / p.channels_per_group;
      for (int64_t t = 0; t < K; ++t) {
        const float xv = to_float(x[tok(a.x_strides, t)]);
        float dtv = to_float(dt[tok(a.dt_strides, t)]) + bias;
        if (a.dt_softplus) dtv = softplus(dtv);
        const float dtx = dtv * xv;
        const float dA_row = p.a_const_n ? std::exp(dtv * a_row) : 1.f;
        const X* Bt = B + b * a.B_strides[0] + t * a.B_strides[1] + g * a.B_strides[2];
        const X* Ct = C + b * a.C_strides[0] + t * a.C_strides[1] + g * a.C_strides[2];
        float acc = 0.f;
        for (int64_t n = 0; n < N; ++n) {
          const float dA = p.a_const_n ? dA_row : std::exp(dtv * load_any(a.A, a_off + n * a.A_strides[2], a.A_dtype));
          const float sn = s[size_t(n)] * dA + to_float(Bt[n * a.B_strides[3]]) * dtx;
          s[size_t(n)] = sn;
          acc += sn * to_float(Ct[n * a.C_strides[3]]);
        }
        if (inter) {
          const int64_t* is = a.intermediate_states_strides;
          S* it = inter + b * is[0] + t * is[1] + h * is[2] + pp * is[3];
          for (int64_t n = 0; n < N; ++n) it[n * is[4]] = from_float<S>(s[size_t(n)]);
        }
        float y = acc + d * xv;
        if (a.z) y *= silu(to_float(z[tok(a.z_strides, t)]));
        out[tok(a.out_strides, t)] = from_float<X>(y);
      }
      for (int64_t n = 0; n < N; ++n) st[n * a.state_strides[3]] = from_float<S>(s[size_t(n)]);
    }
  }
}

template <typename S>
void dispatch_input(const SsuParams& p) {
  switch (p.a.input_dtype) {
    case ARK_FLOAT32: return run_rows<S, float>(p);
    case ARK_FLOAT16: return run_rows<S, fp16_bits>(p);
    case ARK_BFLOAT16: return run_rows<S, bf16_bits>(p);
  }
}

}  // namespace

void selective_state_update_cpu(const SsuParams& p) {
  switch (p.a.state_dtype) {
    case ARK_FLOAT32: return dispatch_input<float>(p);
    case ARK_FLOAT16: return dispatch_input<fp16_bits>(p);
    case ARK_BFLOAT16: return dispatch_input<bf16_bits>(p);
  }
}

}  // namespace ark
