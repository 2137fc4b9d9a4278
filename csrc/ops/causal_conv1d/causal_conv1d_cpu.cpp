// causal_conv1d on the CPU: one pass per (batch, channel) row over its padded sequence, rows spread
// over OpenMP threads. Also the oracle the C API tests compare the CUDA kernels with.
#include <cmath>
#include <vector>

#include "common/half_convert.hpp"
#include "ops/causal_conv1d/causal_conv1d.cuh"

namespace ark {
namespace {

// Rows are independent; below this many elements thread start-up costs more than it saves.
constexpr int64_t kParallelMinElements = 1 << 15;
constexpr int kMaxWidth = 4;

inline float silu(float v) { return v / (1.0f + std::exp(-v)); }
inline float silu_grad(float v) {
  const float s = 1.0f / (1.0f + std::exp(-v));
  return s * (1.0f + v * (1.0f - s));
}

// A row's weights and bias in fp32.
struct RowParams {
  float w[kMaxWidth];
  float bias;
};

RowParams row_params(const void* weight, const void* bias, ark_dtype dtype, int64_t c, int W) {
  RowParams rp{};
  for (int k = 0; k < W; ++k) rp.w[k] = load_float(weight, c * W + k, dtype);
  rp.bias = bias ? load_float(bias, c, dtype) : 0.0f;
  return rp;
}

// xpad of one row in fp32: [initial states (zeros when absent), x[0 .. L)], length L + W - 1.
template <typename T>
void padded_row(const T* x, int64_t L, int W, const void* init, ark_dtype init_dtype, int64_t row,
                std::vector<float>& xpad) {
  xpad.resize(size_t(L + W - 1));
  for (int i = 0; i < W - 1; ++i) xpad[i] = init ? load_float(init, row * (W - 1) + i, init_dtype) : 0.0f;
  for (int64_t t = 0; t < L; ++t) xpad[size_t(t + W - 1)] = to_float(x[t]);
}

// Pre-activation at output position t: bias + sum_k w[k] * xpad[t + k] (the order the CUDA kernel uses).
inline float pre_activation(const RowParams& rp, const float* xpad_t, int W) {
  float acc = rp.bias;
  for (int k = 0; k < W; ++k) acc += rp.w[k] * xpad_t[k];
  return acc;
}

template <typename T>
void fwd_rows(const CausalConv1dFwdParams& p) {
  const int W = p.width;
  const int64_t rows = p.batch * p.dim, L = p.L;
#pragma omp parallel if (rows * L >= kParallelMinElements)
  {
    std::vector<float> xpad;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = r / p.dim, c = r % p.dim;
      const T* x = static_cast<const T*>(p.x) + b * p.x_batch_stride + c * p.x_dim_stride;
      T* out = static_cast<T*>(p.out) + r * L;
      const RowParams rp = row_params(p.weight, p.bias, p.param_dtype, c, W);
      padded_row(x, L, W, p.initial_states, p.states_dtype, r, xpad);
      for (int64_t t = 0; t < L; ++t) {
        const float v = pre_activation(rp, &xpad[size_t(t)], W);
        out[t] = from_float<T>(p.silu ? silu(v) : v);
      }
      if (p.final_states) {
        T* fin = static_cast<T*>(p.final_states) + r * (W - 1);
        for (int i = 0; i < W - 1; ++i) fin[i] = from_float<T>(xpad[size_t(L + i)]);
      }
    }
  }
}

template <typename T>
void bwd_rows(const CausalConv1dBwdParams& p) {
  const int W = p.width, P = W + 1;  // per-row partials: dweight[0 .. W), dbias
  const int64_t rows = p.batch * p.dim, L = p.L;
  const bool partials = p.dweight || p.dbias;
  std::vector<float> part(partials ? size_t(rows * P) : 0);
#pragma omp parallel if (rows * L >= kParallelMinElements)
  {
    std::vector<float> xpad, gpre, gxpad;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = r / p.dim, c = r % p.dim;
      const T* x = static_cast<const T*>(p.x) + b * p.x_batch_stride + c * p.x_dim_stride;
      const T* g = static_cast<const T*>(p.grad_out) + b * p.g_batch_stride + c * p.g_dim_stride;
      const RowParams rp = row_params(p.weight, p.bias, p.param_dtype, c, W);
      padded_row(x, L, W, p.initial_states, p.states_dtype, r, xpad);
      // Gradient of the pre-activation.
      gpre.resize(size_t(L));
      for (int64_t t = 0; t < L; ++t) {
        const float gt = to_float(g[t]);
        gpre[size_t(t)] = p.silu ? gt * silu_grad(pre_activation(rp, &xpad[size_t(t)], W)) : gt;
      }
      // Gradient of the padded sequence: each gpre[t] reaches xpad[t + k] through weight k; the final
      // states are xpad[L .. L + W - 1) themselves.
      gxpad.assign(size_t(L + W - 1), 0.0f);
      for (int64_t s = 0; s < L + W - 1; ++s) {
        float acc = 0.0f;
        for (int k = 0; k < W; ++k) {
          const int64_t t = s - k;
          if (t >= 0 && t < L) acc += rp.w[k] * gpre[size_t(t)];
        }
        if (p.grad_final_states && s >= L)
          acc += to_float(static_cast<const T*>(p.grad_final_states)[r * (W - 1) + (s - L)]);
        gxpad[size_t(s)] = acc;
      }
      T* dx = static_cast<T*>(p.dx) + r * L;
      for (int64_t t = 0; t < L; ++t) dx[t] = from_float<T>(gxpad[size_t(t + W - 1)]);
      if (p.dinit)
        for (int i = 0; i < W - 1; ++i) p.dinit[r * (W - 1) + i] = gxpad[size_t(i)];
      if (partials) {
        float* pr = &part[size_t(r * P)];
        for (int k = 0; k < P; ++k) pr[k] = 0.0f;
        for (int64_t t = 0; t < L; ++t) {
          const float gt = gpre[size_t(t)];
          for (int k = 0; k < W; ++k) pr[k] += gt * xpad[size_t(t + k)];
          pr[W] += gt;
        }
      }
    }
  }
  if (!partials) return;
  // Per channel, the rows of every batch in order: the same sums on every run and thread count.
#pragma omp parallel for schedule(static) if (rows * L >= kParallelMinElements)
  for (int64_t c = 0; c < p.dim; ++c) {
    float acc[kMaxWidth + 1] = {};
    for (int64_t b = 0; b < p.batch; ++b)
      for (int k = 0; k < P; ++k) acc[k] += part[size_t((b * p.dim + c) * P + k)];
    if (p.dweight)
      for (int k = 0; k < W; ++k) p.dweight[c * W + k] = acc[k];
    if (p.dbias) p.dbias[c] = acc[W];
  }
}

// (x mod n) in [0, n) for any sign of x.
inline int64_t wrap(int64_t x, int64_t n) { return ((x % n) + n) % n; }

template <typename T>
void update_rows(const CausalConv1dUpdateParams& p) {
  const int W = p.width;
  const int64_t rows = p.batch * p.dim, k = p.seqlen, S = p.state_len;
#pragma omp parallel for schedule(static) if (rows * (k + S) >= kParallelMinElements)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / p.dim, c = r % p.dim;
    const T* x = static_cast<const T*>(p.x) + b * p.x_batch_stride + c * p.x_dim_stride;
    T* out = static_cast<T*>(p.out) + r * k;
    const int64_t srow = p.conv_state_indices ? int64_t(p.conv_state_indices[b]) : b;
    if (srow < 0 || srow >= p.state_batch) {  // padding slot: zeros out, state untouched
      for (int64_t t = 0; t < k; ++t) out[t] = from_float<T>(0.0f);
      continue;
    }
    T* state = static_cast<T*>(p.conv_state) + srow * p.s_batch_stride + c * p.s_dim_stride;
    const int64_t q0 = p.cache_seqlens ? wrap(p.cache_seqlens[b], S) : 0;  // position of the oldest entry
    const auto at = [&](int64_t q) { return state + wrap(q0 + q, S) * p.s_time_stride; };
    const RowParams rp = row_params(p.weight, p.bias, p.param_dtype, c, W);
    float win[kMaxWidth];  // the last W inputs, oldest first; win[W-1] is the current token
    for (int i = 0; i < W - 1; ++i) win[i] = to_float(*at(S - (W - 1) + i));
    for (int64_t t = 0; t < k; ++t) {
      win[W - 1] = to_float(x[t * p.x_time_stride]);
      const float v = pre_activation(rp, win, W);
      out[t] = from_float<T>(p.silu ? silu(v) : v);
      for (int i = 0; i + 1 < W; ++i) win[i] = win[i + 1];
    }
    if (p.cache_seqlens) {
      for (int64_t t = k > S ? k - S : 0; t < k; ++t) *at(t) = x[t * p.x_time_stride];
    } else {
      // Shift left by k and append x; ascending q reads state[q + k] before anything writes it.
      for (int64_t q = 0; q < S; ++q)
        *at(q) = q + k < S ? *at(q + k) : x[(q + k - S) * p.x_time_stride];
    }
  }
}

}  // namespace

void causal_conv1d_fwd_cpu(const CausalConv1dFwdParams& p, ark_dtype dtype) {
  switch (dtype) {
    case ARK_FLOAT32: return fwd_rows<float>(p);
    case ARK_FLOAT16: return fwd_rows<fp16_bits>(p);
    case ARK_BFLOAT16: return fwd_rows<bf16_bits>(p);
  }
}

void causal_conv1d_bwd_cpu(const CausalConv1dBwdParams& p, ark_dtype dtype) {
  switch (dtype) {
    case ARK_FLOAT32: return bwd_rows<float>(p);
    case ARK_FLOAT16: return bwd_rows<fp16_bits>(p);
    case ARK_BFLOAT16: return bwd_rows<bf16_bits>(p);
  }
}

void causal_conv1d_update_cpu(const CausalConv1dUpdateParams& p, ark_dtype dtype) {
  switch (dtype) {
    case ARK_FLOAT32: return update_rows<float>(p);
    case ARK_FLOAT16: return update_rows<fp16_bits>(p);
    case ARK_BFLOAT16: return update_rows<bf16_bits>(p);
  }
}

}  // namespace ark
