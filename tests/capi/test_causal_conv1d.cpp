// C API test of causal_conv1d: links only libarkernels (no torch). Checks the CPU path against a
// double-precision loop (forward, backward, decode update), the argument checks, and, where a GPU is
// present, the CUDA path against the same loop (plus bitwise-reproducible weight gradients).
// Exit code 0 = pass.
#include <arkernels/arkernels.h>

#include "capi_test_util.hpp"
// Host float16 conversion (header-only, torch-free; the same code the CPU kernels use) for fp16 inputs.
#include "../../csrc/common/half_convert.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#ifdef ARKERNELS_TEST_CUDA
#include <cuda_runtime.h>
#endif

namespace {




struct Problem {
  int64_t batch, dim, L, pad;  // x and grad_out rows have stride L + pad (padding between rows)
  int W;
  bool silu;
  std::vector<float> x, g, w, bias, init, gfin;
  int64_t row_stride() const { return L + pad; }
  int64_t rows() const { return batch * dim; }
};

// `pad`: elements between x rows (3: most rows start misaligned against the output's 16-byte grid).
Problem make_problem(int64_t batch, int64_t dim, int64_t L, int W, bool silu, unsigned seed, int64_t pad = 3) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> val(-1.0f, 1.0f);
  Problem p{batch, dim, L, pad, W, silu, {}, {}, {}, {}, {}, {}};
  p.x.resize(size_t(p.rows() * p.row_stride()));
  p.g.resize(p.x.size());
  for (auto& v : p.x) v = bf16_round(val(rng));
  for (auto& v : p.g) v = bf16_round(val(rng));
  for (int64_t i = 0; i < dim * W; ++i) p.w.push_back(bf16_round(val(rng)));
  for (int64_t i = 0; i < dim; ++i) p.bias.push_back(bf16_round(val(rng)));
  for (int64_t i = 0; i < p.rows() * (W - 1); ++i) p.init.push_back(bf16_round(val(rng)));
  for (int64_t i = 0; i < p.rows() * (W - 1); ++i) p.gfin.push_back(bf16_round(val(rng)));
  return p;
}

double silu(double v) { return v / (1.0 + std::exp(-v)); }
double silu_grad(double v) { const double s = 1.0 / (1.0 + std::exp(-v)); return s * (1.0 + v * (1.0 - s)); }

// Double-precision definition: out, final states and every gradient.
struct Expected { std::vector<double> out, fin, dx, dw, db, dinit; };

Expected expected(const Problem& p) {
  const int W = p.W;
  const int64_t L = p.L;
  Expected e;
  e.out.assign(size_t(p.rows() * L), 0); e.dx = e.out;
  e.fin.assign(size_t(p.rows() * (W - 1)), 0); e.dinit = e.fin;
  e.dw.assign(size_t(p.dim * W), 0); e.db.assign(size_t(p.dim), 0);
  for (int64_t r = 0; r < p.rows(); ++r) {
    const int64_t c = r % p.dim;
    std::vector<double> xpad(static_cast<size_t>(L + W - 1)), gpre(static_cast<size_t>(L)),
        gx(static_cast<size_t>(L + W - 1), 0.0);
    for (int i = 0; i < W - 1; ++i) xpad[i] = p.init[size_t(r * (W - 1) + i)];
    for (int64_t t = 0; t < L; ++t) xpad[size_t(t + W - 1)] = p.x[size_t(r * p.row_stride() + t)];
    for (int64_t t = 0; t < L; ++t) {
      double v = p.bias[size_t(c)];
      for (int k = 0; k < W; ++k) v += p.w[size_t(c * W + k)] * xpad[size_t(t + k)];
      e.out[size_t(r * L + t)] = p.silu ? silu(v) : v;
      const double g = p.g[size_t(r * p.row_stride() + t)];
      gpre[size_t(t)] = p.silu ? g * silu_grad(v) : g;
    }
    for (int i = 0; i < W - 1; ++i) e.fin[size_t(r * (W - 1) + i)] = xpad[size_t(L + i)];
    for (int64_t t = 0; t < L; ++t) {
      for (int k = 0; k < W; ++k) {
        gx[size_t(t + k)] += p.w[size_t(c * W + k)] * gpre[size_t(t)];
        e.dw[size_t(c * W + k)] += gpre[size_t(t)] * xpad[size_t(t + k)];
      }
      e.db[size_t(c)] += gpre[size_t(t)];
    }
    for (int i = 0; i < W - 1; ++i) gx[size_t(L + i)] += p.gfin[size_t(r * (W - 1) + i)];
    for (int64_t t = 0; t < L; ++t) e.dx[size_t(r * L + t)] = gx[size_t(t + W - 1)];
    for (int i = 0; i < W - 1; ++i) e.dinit[size_t(r * (W - 1) + i)] = gx[size_t(i)];
  }
  return e;
}


std::vector<uint16_t> to_bf16(const std::vector<float>& x) {
  std::vector<uint16_t> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = bf16_from(x[i]);
  return y;
}
std::vector<float> from_bf16(const std::vector<uint16_t>& x) {
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = bf16_to(x[i]);
  return y;
}

struct Result { std::vector<float> out, fin, dx, dw, db, dinit; ark_status fwd, bwd; };

// Host buffers for one run: x, g, gfin, weights and initial states all in the run's dtype (fp32, bf16
// or fp16; the C API reads weights and states in `param_dtype` / `states_dtype`).
// Outputs are NaN-poisoned so unwritten elements fail.
struct Buffers {
  ark_dtype dtype;
  std::vector<uint8_t> x, g, gfin, w, bias, init, out, fin, dx;
  std::vector<float> dw, db, dinit;
};

template <typename E> std::vector<uint8_t> bytes_of(const std::vector<E>& v) {
  std::vector<uint8_t> b(v.size() * sizeof(E));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}
std::vector<uint16_t> to_fp16(const std::vector<float>& x) {
  std::vector<uint16_t> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = ark::from_float<ark::fp16_bits>(x[i]).x;
  return y;
}
std::vector<uint8_t> encode(const std::vector<float>& v, ark_dtype d) {
  if (d == ARK_FLOAT32) return bytes_of(v);
  return d == ARK_FLOAT16 ? bytes_of(to_fp16(v)) : bytes_of(to_bf16(v));
}
std::vector<float> decode(const std::vector<uint8_t>& b, ark_dtype d) {
  if (d == ARK_FLOAT32) {
    std::vector<float> v(b.size() / 4);
    std::memcpy(v.data(), b.data(), b.size());
    return v;
  }
  std::vector<uint16_t> v(b.size() / 2);
  std::memcpy(v.data(), b.data(), b.size());
  if (d == ARK_BFLOAT16) return from_bf16(v);
  std::vector<float> y(v.size());
  for (size_t i = 0; i < v.size(); ++i) y[i] = ark::to_float(ark::fp16_bits{v[i]});
  return y;
}

Buffers make_buffers(const Problem& p, ark_dtype dtype) {
  Buffers b;
  b.dtype = dtype;
  const size_t es = dtype == ARK_FLOAT32 ? 4 : 2;
  b.x = encode(p.x, dtype); b.g = encode(p.g, dtype); b.gfin = encode(p.gfin, dtype);
  b.w = encode(p.w, dtype); b.bias = encode(p.bias, dtype); b.init = encode(p.init, dtype);
  b.out.assign(size_t(p.rows() * p.L) * es, 0xff);
  b.dx = b.out;
  b.fin.assign(size_t(p.rows() * (p.W - 1)) * es, 0xff);
  b.dw.assign(size_t(p.dim * p.W), NAN); b.db.assign(size_t(p.dim), NAN); b.dinit.assign(size_t(p.rows() * (p.W - 1)), NAN);
  return b;
}

Result collect(const Buffers& b, ark_status fwd, ark_status bwd) {
  Result r;
  r.fwd = fwd; r.bwd = bwd;
  r.out = decode(b.out, b.dtype); r.fin = decode(b.fin, b.dtype); r.dx = decode(b.dx, b.dtype);
  r.dw = b.dw; r.db = b.db; r.dinit = b.dinit;
  return r;
}

Result run_cpu(const Problem& p, ark_dtype dtype) {
  Buffers b = make_buffers(p, dtype);
  const int64_t rs = p.row_stride();
  const ark_status fwd = ark_causal_conv1d_fwd(b.x.data(), b.w.data(), b.bias.data(), dtype, b.init.data(), dtype,
                                               b.out.data(), b.fin.data(), p.batch, p.dim, p.L, p.W, p.dim * rs, rs,
                                               p.silu, dtype, ARK_DEVICE_CPU, nullptr);
  const ark_status bwd = ark_causal_conv1d_bwd(
      b.x.data(), b.w.data(), b.bias.data(), dtype, b.init.data(), dtype, b.g.data(), b.gfin.data(), b.dx.data(),
      b.dw.data(), b.db.data(), b.dinit.data(), nullptr, 0, p.batch, p.dim, p.L, p.W, p.dim * rs, rs, p.dim * rs, rs,
      p.silu, dtype, ARK_DEVICE_CPU, nullptr);
  return collect(b, fwd, bwd);
}

void check_against_expected(const char* what, const Problem& p, const Result& r, double tol) {
  EXPECT(r.fwd == ARK_SUCCESS, "%s fwd status %s: %s", what, ark_status_name(r.fwd), ark_last_error_message());
  EXPECT(r.bwd == ARK_SUCCESS, "%s bwd status %s: %s", what, ark_status_name(r.bwd), ark_last_error_message());
  const Expected e = expected(p);
  const double errs[] = {rel_error(r.out, e.out), rel_error(r.fin, e.fin), rel_error(r.dx, e.dx),
                         rel_error(r.dw, e.dw), rel_error(r.db, e.db), rel_error(r.dinit, e.dinit)};
  const char* names[] = {"out", "final_states", "dx", "dweight", "dbias", "dinitial_states"};
  for (int i = 0; i < 6; ++i)
    EXPECT(errs[i] <= tol, "%s batch=%lld dim=%lld L=%lld W=%d silu=%d: %s relative error %.3e > %.1e", what,
           (long long)p.batch, (long long)p.dim, (long long)p.L, p.W, int(p.silu), names[i], errs[i], tol);
}

void test_cpu_matches_definition() {
  unsigned seed = 1;
  for (int W = 2; W <= 4; ++W)
    for (int64_t L : {1, 2, 7, 372, 1001})
      for (bool silu : {false, true}) {
        const Problem p = make_problem(2, 5, L, W, silu, seed++);
        check_against_expected("cpu fp32", p, run_cpu(p, ARK_FLOAT32), 1e-5);
        check_against_expected("cpu bf16", p, run_cpu(p, ARK_BFLOAT16), 1e-2);
        check_against_expected("cpu fp16", p, run_cpu(p, ARK_FLOAT16), 2e-3);
      }
}

// ---- decode update ----

struct UpdateCase {
  int64_t batch, dim, k, state_len, n_state;
  int W;
  bool circular, with_indices;
};

// Double-precision update of every row; returns outputs and the new state rows.
void update_expected(const UpdateCase& u, const std::vector<float>& x, const std::vector<float>& state,
                     const std::vector<float>& w, const std::vector<int32_t>& seqlens,
                     const std::vector<int32_t>& idx, std::vector<double>& out, std::vector<float>& new_state) {
  out.assign(size_t(u.batch * u.dim * u.k), 0.0);
  new_state = state;
  const int64_t S = u.state_len;
  for (int64_t b = 0; b < u.batch; ++b) {
    const int64_t r = u.with_indices ? idx[size_t(b)] : b;
    if (r < 0 || r >= u.n_state) continue;
    const int64_t q0 = u.circular ? ((seqlens[size_t(b)] % S) + S) % S : 0;
    for (int64_t c = 0; c < u.dim; ++c) {
      const float* srow = &state[size_t((r * u.dim + c) * S)];
      std::vector<double> seq;  // oldest first, then the new tokens
      for (int64_t q = 0; q < S; ++q) seq.push_back(srow[(q0 + q) % S]);
      for (int64_t t = 0; t < u.k; ++t) seq.push_back(x[size_t((b * u.dim + c) * u.k + t)]);
      for (int64_t t = 0; t < u.k; ++t) {
        double v = 0;
        for (int i = 0; i < u.W; ++i) v += w[size_t(c * u.W + i)] * seq[size_t(S + t - (u.W - 1) + i)];
        out[size_t((b * u.dim + c) * u.k + t)] = v;
      }
      float* nrow = &new_state[size_t((r * u.dim + c) * S)];
      for (int64_t j = 0; j < S; ++j) {  // logical entry j of the new state
        const int64_t phys = u.circular ? (q0 + u.k + j) % S : j;
        nrow[phys] = float(seq[size_t(u.k + j)]);
      }
    }
  }
}

void check_update(const char* what, const UpdateCase& u, ark_device device) {
  std::mt19937 rng(unsigned(u.k * 100 + u.W * 10 + u.circular * 2 + u.with_indices));
  std::uniform_real_distribution<float> val(-1.0f, 1.0f);
  std::vector<float> x(size_t(u.batch * u.dim * u.k)), state(size_t(u.n_state * u.dim * u.state_len)),
      w(size_t(u.dim * u.W));
  for (auto& v : x) v = val(rng);
  for (auto& v : state) v = val(rng);
  for (auto& v : w) v = val(rng);
  std::vector<int32_t> seqlens, idx;
  for (int64_t b = 0; b < u.batch; ++b) {
    seqlens.push_back(int32_t(7 * b + 3));
    idx.push_back(b == 1 ? -1 : int32_t(u.n_state - 1 - b));
  }
  std::vector<double> want_out;
  std::vector<float> want_state;
  update_expected(u, x, state, w, seqlens, idx, want_out, want_state);
  std::vector<float> out(size_t(u.batch * u.dim * u.k), NAN), got_state = state;
  ark_status s;
  const int64_t S = u.state_len;
  if (device == ARK_DEVICE_CPU) {
    s = ark_causal_conv1d_update(x.data(), got_state.data(), w.data(), nullptr, ARK_FLOAT32,
                                 u.circular ? seqlens.data() : nullptr, u.with_indices ? idx.data() : nullptr,
                                 out.data(), u.batch, u.dim, u.k, u.W, u.n_state, S, u.dim * u.k, u.k, 1, u.dim * S, S,
                                 1, 0, ARK_FLOAT32, ARK_DEVICE_CPU, nullptr);
  } else {
#ifdef ARKERNELS_TEST_CUDA
    float *dx, *dstate, *dw, *dout;
    int32_t *dseq, *didx;
    cudaMalloc(&dx, x.size() * 4); cudaMalloc(&dstate, state.size() * 4); cudaMalloc(&dw, w.size() * 4);
    cudaMalloc(&dout, out.size() * 4); cudaMalloc(&dseq, seqlens.size() * 4); cudaMalloc(&didx, idx.size() * 4);
    cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(dstate, state.data(), state.size() * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(dw, w.data(), w.size() * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(dseq, seqlens.data(), seqlens.size() * 4, cudaMemcpyHostToDevice);
    cudaMemcpy(didx, idx.data(), idx.size() * 4, cudaMemcpyHostToDevice);
    cudaMemset(dout, 0xff, out.size() * 4);
    s = ark_causal_conv1d_update(dx, dstate, dw, nullptr, ARK_FLOAT32, u.circular ? dseq : nullptr,
                                 u.with_indices ? didx : nullptr, dout, u.batch, u.dim, u.k, u.W, u.n_state, S,
                                 u.dim * u.k, u.k, 1, u.dim * S, S, 1, 0, ARK_FLOAT32, ARK_DEVICE_CUDA, nullptr);
    EXPECT(cudaDeviceSynchronize() == cudaSuccess, "%s: CUDA error", what);
    cudaMemcpy(out.data(), dout, out.size() * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(got_state.data(), dstate, state.size() * 4, cudaMemcpyDeviceToHost);
    for (void* ptr : {(void*)dx, (void*)dstate, (void*)dw, (void*)dout, (void*)dseq, (void*)didx}) cudaFree(ptr);
#else
    return;
#endif
  }
  EXPECT(s == ARK_SUCCESS, "%s update status %s: %s", what, ark_status_name(s), ark_last_error_message());
  EXPECT(rel_error(out, want_out) <= 1e-5, "%s k=%lld W=%d circular=%d indices=%d: out relative error %.3e", what,
         (long long)u.k, u.W, int(u.circular), int(u.with_indices), rel_error(out, want_out));
  EXPECT(got_state == want_state, "%s k=%lld W=%d circular=%d indices=%d: state differs", what, (long long)u.k, u.W,
         int(u.circular), int(u.with_indices));
}

void test_update(ark_device device, const char* what) {
  for (int W = 2; W <= 4; ++W)
    for (int64_t k : {1, 3, 9})
      for (bool circular : {false, true})
        for (bool with_indices : {false, true}) {
          const UpdateCase u{3, 5, k, 6, with_indices ? 4 : 3, W, circular, with_indices};
          check_update(what, u, device);
        }
}

void test_bad_arguments() {
  float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, w[4] = {1, 1, 1, 1}, out[8];
  ark_status s = ark_causal_conv1d_fwd(x, w, nullptr, ARK_FLOAT32, nullptr, ARK_FLOAT32, out, nullptr, 1, 1, 8, 5, 8,
                                       8, 0, ARK_FLOAT32, ARK_DEVICE_CPU, nullptr);
  EXPECT(s == ARK_ERROR_INVALID_ARGUMENT && std::strstr(ark_last_error_message(), "width"), "width 5: %s %s",
         ark_status_name(s), ark_last_error_message());
  s = ark_causal_conv1d_fwd(x, w, nullptr, ARK_FLOAT32, nullptr, ARK_FLOAT32, out, nullptr, -1, 1, 8, 4, 8, 8, 0,
                            ARK_FLOAT32, ARK_DEVICE_CPU, nullptr);
  EXPECT(s == ARK_ERROR_INVALID_ARGUMENT && std::strstr(ark_last_error_message(), "batch"), "negative batch");
  s = ark_causal_conv1d_fwd(x, w, nullptr, ark_dtype(9), nullptr, ARK_FLOAT32, out, nullptr, 1, 1, 8, 4, 8, 8, 0,
                            ARK_FLOAT32, ARK_DEVICE_CPU, nullptr);
  EXPECT(s == ARK_ERROR_INVALID_ARGUMENT && std::strstr(ark_last_error_message(), "param_dtype"), "bad param dtype");
  s = ark_causal_conv1d_fwd(x, nullptr, nullptr, ARK_FLOAT32, nullptr, ARK_FLOAT32, out, nullptr, 1, 1, 8, 4, 8, 8, 0,
                            ARK_FLOAT32, ARK_DEVICE_CPU, nullptr);
  EXPECT(s == ARK_ERROR_INVALID_ARGUMENT, "NULL weight accepted: %s", ark_status_name(s));
  s = ark_causal_conv1d_fwd(x, w, nullptr, ARK_FLOAT32, nullptr, ARK_FLOAT32, out, nullptr, 1, 1, 8, 4, 8, 8, 2,
                            ARK_FLOAT32, ARK_DEVICE_CPU, nullptr);
  EXPECT(s == ARK_ERROR_INVALID_ARGUMENT && std::strstr(ark_last_error_message(), "silu"), "silu = 2 accepted");
  s = ark_causal_conv1d_fwd(x, w, nullptr, ARK_FLOAT32, nullptr, ARK_FLOAT32, out, nullptr, 1, 1, 8, 4, -8, 8, 0,
                            ARK_FLOAT32, ARK_DEVICE_CPU, nullptr);
  EXPECT(s == ARK_ERROR_INVALID_ARGUMENT && std::strstr(ark_last_error_message(), "x_batch_stride"), "negative stride");
  if (!ark_has_cuda()) {
    s = ark_causal_conv1d_fwd(x, w, nullptr, ARK_FLOAT32, nullptr, ARK_FLOAT32, out, nullptr, 1, 1, 8, 4, 8, 8, 0,
                              ARK_FLOAT32, ARK_DEVICE_CUDA, nullptr);
    EXPECT(s == ARK_ERROR_NOT_COMPILED, "CUDA without CUDA build: %s", ark_status_name(s));
  } else {
    size_t need = 0;
    s = ark_causal_conv1d_bwd_workspace_bytes(2, 3, 100, 4, ARK_FLOAT32, ARK_DEVICE_CUDA, &need);
    EXPECT(s == ARK_SUCCESS && need > 0, "CUDA backward needs a workspace");
    float g[8], dx[8], dw[4];
    s = ark_causal_conv1d_bwd(x, w, nullptr, ARK_FLOAT32, nullptr, ARK_FLOAT32, g, nullptr, dx, dw, nullptr, nullptr,
                              nullptr, 0, 1, 1, 8, 4, 8, 8, 8, 8, 0, ARK_FLOAT32, ARK_DEVICE_CUDA, nullptr);
    EXPECT(s == ARK_ERROR_INVALID_ARGUMENT && std::strstr(ark_last_error_message(), "workspace"),
           "missing workspace accepted: %s", ark_status_name(s));
  }
  // Update: a state shorter than width - 1 is refused.
  float state[2] = {0, 0};
  s = ark_causal_conv1d_update(x, state, w, nullptr, ARK_FLOAT32, nullptr, nullptr, out, 1, 1, 1, 4, 1, 2, 1, 1, 1, 2,
                               2, 1, 0, ARK_FLOAT32, ARK_DEVICE_CPU, nullptr);
  EXPECT(s == ARK_ERROR_INVALID_ARGUMENT && std::strstr(ark_last_error_message(), "state_len"), "short state");
  // Empty problems succeed; L = 0 returns the initial states as final states and zero weight gradients.
  float init[3] = {3, 4, 5}, fin[3] = {NAN, NAN, NAN}, dwe[4] = {NAN, NAN, NAN, NAN}, db[1] = {NAN},
        dinit[3] = {NAN, NAN, NAN}, gfin[3] = {1, 2, 3};
  s = ark_causal_conv1d_fwd(nullptr, w, nullptr, ARK_FLOAT32, init, ARK_FLOAT32, nullptr, fin, 1, 1, 0, 4, 0, 0, 0,
                            ARK_FLOAT32, ARK_DEVICE_CPU, nullptr);
  EXPECT(s == ARK_SUCCESS && fin[0] == 3 && fin[1] == 4 && fin[2] == 5, "L = 0 must return the initial states");
  s = ark_causal_conv1d_bwd(nullptr, w, w, ARK_FLOAT32, init, ARK_FLOAT32, nullptr, gfin, nullptr, dwe, db, dinit,
                            nullptr, 0, 1, 1, 0, 4, 0, 0, 0, 0, 0, ARK_FLOAT32, ARK_DEVICE_CPU, nullptr);
  EXPECT(s == ARK_SUCCESS && dwe[0] == 0 && dwe[3] == 0 && db[0] == 0 && dinit[0] == 1 && dinit[2] == 3,
         "L = 0 backward: zero weight gradients, dinit = grad_final_states (%s)", ark_last_error_message());
}

#ifdef ARKERNELS_TEST_CUDA
template <typename V> void* to_device(const V& host) {
  void* d = nullptr;
  cudaMalloc(&d, host.size() * sizeof(host[0]) + 16);
  cudaMemcpy(d, host.data(), host.size() * sizeof(host[0]), cudaMemcpyHostToDevice);
  return d;
}
template <typename V> void to_host(V& host, const void* d) {
  cudaMemcpy(host.data(), d, host.size() * sizeof(host[0]), cudaMemcpyDeviceToHost);
}

Result run_cuda(const Problem& p, ark_dtype dtype, std::vector<float>* dw_again = nullptr) {
  Buffers b = make_buffers(p, dtype);
  const int64_t rs = p.row_stride();
  void *x = to_device(b.x), *g = to_device(b.g), *gfin = to_device(b.gfin), *w = to_device(b.w),
       *bias = to_device(b.bias), *init = to_device(b.init), *out = to_device(b.out), *fin = to_device(b.fin),
       *dx = to_device(b.dx), *dw = to_device(b.dw), *db = to_device(b.db), *dinit = to_device(b.dinit);
  size_t ws_bytes = 0;
  ark_causal_conv1d_bwd_workspace_bytes(p.batch, p.dim, p.L, p.W, dtype, ARK_DEVICE_CUDA, &ws_bytes);
  void* ws = nullptr;
  cudaMalloc(&ws, ws_bytes + 16);
  const ark_status fwd = ark_causal_conv1d_fwd(x, w, bias, dtype, init, dtype, out, fin, p.batch, p.dim, p.L, p.W,
                                               p.dim * rs, rs, p.silu, dtype, ARK_DEVICE_CUDA, nullptr);
  const auto bwd_once = [&]() {
    return ark_causal_conv1d_bwd(x, w, bias, dtype, init, dtype, g, gfin, dx, static_cast<float*>(dw),
                                 static_cast<float*>(db), static_cast<float*>(dinit), ws, ws_bytes, p.batch, p.dim,
                                 p.L, p.W, p.dim * rs, rs, p.dim * rs, rs, p.silu, dtype, ARK_DEVICE_CUDA, nullptr);
  };
  const ark_status bwd = bwd_once();
  const cudaError_t err = cudaDeviceSynchronize();
  EXPECT(err == cudaSuccess, "CUDA error: %s", cudaGetErrorString(err));
  to_host(b.out, out); to_host(b.fin, fin); to_host(b.dx, dx); to_host(b.dw, dw); to_host(b.db, db);
  to_host(b.dinit, dinit);
  if (dw_again) {  // a second backward: the weight gradient must be bitwise the same
    bwd_once();
    cudaDeviceSynchronize();
    dw_again->resize(b.dw.size());
    to_host(*dw_again, dw);
  }
  for (void* ptr : {x, g, gfin, w, bias, init, out, fin, dx, dw, db, dinit, ws}) cudaFree(ptr);
  return collect(b, fwd, bwd);
}

// One CUDA forward of `p` in `dtype` (weights, bias and states in the same dtype), with or without
// initial and final states, against the definition; without final states none may be written.
void check_cuda_forward(const char* what, const Problem& p, ark_dtype dtype, bool with_init, bool with_fin,
                        double tol) {
  Problem q = p;
  if (!with_init) std::fill(q.init.begin(), q.init.end(), 0.f);  // the definition's zeros before the row
  Buffers b = make_buffers(q, dtype);
  const int64_t rs = q.row_stride();
  void *x = to_device(b.x), *w = to_device(b.w), *bias = to_device(b.bias), *init = to_device(b.init),
       *out = to_device(b.out), *fin = to_device(b.fin);
  const ark_status s = ark_causal_conv1d_fwd(x, w, bias, dtype, with_init ? init : nullptr, dtype, out,
                                             with_fin ? fin : nullptr, q.batch, q.dim, q.L, q.W, q.dim * rs, rs,
                                             q.silu, dtype, ARK_DEVICE_CUDA, nullptr);
  const cudaError_t err = cudaDeviceSynchronize();
  to_host(b.out, out); to_host(b.fin, fin);
  for (void* ptr : {x, w, bias, init, out, fin}) cudaFree(ptr);
  EXPECT(s == ARK_SUCCESS, "%s fwd status %s: %s", what, ark_status_name(s), ark_last_error_message());
  EXPECT(err == cudaSuccess, "%s: CUDA error: %s", what, cudaGetErrorString(err));
  const Expected e = expected(q);
  const Result r = collect(b, s, ARK_SUCCESS);
  const double err_out = rel_error(r.out, e.out);
  EXPECT(err_out <= tol, "%s batch=%lld dim=%lld L=%lld pad=%lld W=%d silu=%d init=%d: out relative error %.3e > %.1e",
         what, (long long)q.batch, (long long)q.dim, (long long)q.L, (long long)q.pad, q.W, int(q.silu), int(with_init),
         err_out, tol);
  if (with_fin) {
    const double err_fin = rel_error(r.fin, e.fin);
    EXPECT(err_fin <= tol, "%s L=%lld W=%d init=%d: final_states relative error %.3e > %.1e", what, (long long)q.L,
           q.W, int(with_init), err_fin, tol);
  } else {
    bool untouched = true;
    for (float v : r.fin) untouched = untouched && std::isnan(v);
    EXPECT(untouched, "%s L=%lld W=%d: final states written without final_states", what, (long long)q.L, q.W);
  }
}

void test_cuda_matches_definition() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: CUDA path not run\n");
    return;
  }
  unsigned seed = 100;
  // Forward variants (tuning knobs): vectors per lane, warps per block, early halo, vec halo,
  // persistent grid (-1: the tiled kernel; 0: the default, persistent for full tiles; 1: the
  // resident-block grid, where these small problems give each warp one tile; 3: three blocks, so every
  // warp walks many tiles, rows and channels).
  struct FwdVariant { int vectors, warps, early_halo, vec_halo, persistent; };
#ifdef ARKERNELS_TUNING_VARIANTS
  const FwdVariant variants[] = {
      {1, 4, 0, 0, 0}, {2, 8, 0, 0, 0}, {4, 4, 0, 0, 0}, {8, 8, 0, 0, 0}, {1, 4, 1, 0, 0}, {4, 4, 1, 0, 0},
      {1, 4, 0, 1, 0}, {2, 4, 0, 1, 0}, {4, 4, 0, 1, 0}, {8, 4, 0, 1, 0},
      {2, 4, 0, 0, 1}, {4, 4, 0, 0, 1}, {2, 4, 0, 1, 1}, {4, 4, 0, 1, 1},
      {1, 4, 0, 0, 3}, {2, 4, 0, 0, 3}, {4, 4, 0, 0, 3}, {8, 4, 0, 0, 3},
      {1, 4, 0, 1, 3}, {2, 4, 0, 1, 3}, {4, 4, 0, 1, 3}, {8, 4, 0, 1, 3}, {0, 0, 0, 0, 0}, {4, 4, 0, 0, -1}};
  // Knob values the forward does not know, or combinations it does not compile, are refused.
  {
    const Problem p = make_problem(1, 2, 300, 4, true, seed++, 0);
    Buffers b = make_buffers(p, ARK_FLOAT32);
    void *x = to_device(b.x), *w = to_device(b.w), *out = to_device(b.out);
    const struct { const char* knob; int value; const char* other; int other_value; } bad[] = {
        {"conv1d_fwd_vec_halo", 2, "conv1d_fwd_warps", 0},     {"conv1d_fwd_persistent", -2, "conv1d_fwd_warps", 0},
        {"conv1d_fwd_vec_halo", 1, "conv1d_fwd_warps", 8},     {"conv1d_fwd_persistent", 1, "conv1d_fwd_warps", 8},
        {"conv1d_fwd_persistent", 1, "conv1d_fwd_early_halo", 1}};
    for (const auto& k : bad) {
      ark_tuning_set(k.knob, k.value);
      ark_tuning_set(k.other, k.other_value);
      const ark_status s = ark_causal_conv1d_fwd(x, w, nullptr, ARK_FLOAT32, nullptr, ARK_FLOAT32, out, nullptr, 1, 2,
                                                 300, 4, 600, 300, 1, ARK_FLOAT32, ARK_DEVICE_CUDA, nullptr);
      EXPECT(s == ARK_ERROR_INVALID_ARGUMENT && std::strstr(ark_last_error_message(), k.knob),
             "%s = %d with %s = %d: expected a refusal naming the knob, got %s: %s", k.knob, k.value, k.other,
             k.other_value, ark_status_name(s), ark_last_error_message());
      ark_tuning_set(k.knob, 0);
      ark_tuning_set(k.other, 0);
    }
    for (void* ptr : {x, w, out}) cudaFree(ptr);
  }
#else
  // The default (persistent grid for full tiles), the tiled kernel, and 3 blocks walking many tiles.
  const FwdVariant variants[] = {{0, 0, 0, 0, 0}, {0, 0, 0, 0, -1}, {0, 0, 0, 0, 3}};
#endif
  for (const FwdVariant& v : variants) {
    ark_tuning_set("conv1d_fwd_vectors", v.vectors);
    ark_tuning_set("conv1d_fwd_warps", v.warps);
    ark_tuning_set("conv1d_fwd_early_halo", v.early_halo);
    ark_tuning_set("conv1d_fwd_vec_halo", v.vec_halo);
    ark_tuning_set("conv1d_fwd_persistent", v.persistent);
    // The variant in every failure message.
    const auto tag = [&](const char* what) {
      static char buf[160];
      std::snprintf(buf, sizeof(buf), "%s [vectors=%d warps=%d early_halo=%d vec_halo=%d persistent=%d]", what,
                    v.vectors, v.warps, v.early_halo, v.vec_halo, v.persistent);
      return buf;
    };
    // The knobs select forward kernels only: the new forward variants skip the backward checks.
    const bool with_backward = v.vec_halo == 0 && v.persistent == 0;
    for (int W = 2; W <= 4; ++W)
      for (int64_t L : {1, 2, 7, 255, 256, 372, 1001, 4097})
        for (bool silu : {false, true}) {
          // x rows padded by 3 elements (most rows misaligned against the output), initial and final
          // states: fp32 and bf16 (forward and backward, or forward only), fp16 (forward).
          const Problem p = make_problem(3, 7, L, W, silu, seed++);
          if (with_backward) {
            std::vector<float> dw_again;
            const Result r32 = run_cuda(p, ARK_FLOAT32, &dw_again);
            check_against_expected(tag("cuda fp32"), p, r32, 1e-5);
            EXPECT(std::memcmp(dw_again.data(), r32.dw.data(), dw_again.size() * 4) == 0,
                   "cuda dweight differs between two runs (L=%lld W=%d)", (long long)L, W);
            check_against_expected(tag("cuda bf16"), p, run_cuda(p, ARK_BFLOAT16), 1e-2);
          } else {
            check_cuda_forward(tag("cuda fp32 fwd"), p, ARK_FLOAT32, true, true, 1e-5);
            check_cuda_forward(tag("cuda bf16 fwd"), p, ARK_BFLOAT16, true, true, 1e-2);
          }
          check_cuda_forward(tag("cuda fp16 fwd"), p, ARK_FLOAT16, true, true, 2e-3);
          // Unpadded x rows (aligned with the output: the 16-byte paths), with and without states;
          // dim 1: every tile of a persistent warp has the same channel (weights kept, not reloaded).
          check_cuda_forward(tag("cuda bf16 fwd unpadded"), make_problem(2, 3, L, W, silu, seed++, 0), ARK_BFLOAT16,
                             false, true, 1e-2);
          check_cuda_forward(tag("cuda fp32 fwd unpadded"), make_problem(6, 1, L, W, silu, seed++, 0), ARK_FLOAT32,
                             true, false, 1e-5);
          check_cuda_forward(tag("cuda fp16 fwd unpadded"), make_problem(4, 5, L, W, silu, seed++, 0), ARK_FLOAT16,
                             false, false, 2e-3);
        }
  }
  ark_tuning_set("conv1d_fwd_vectors", 0);
  ark_tuning_set("conv1d_fwd_warps", 0);
  ark_tuning_set("conv1d_fwd_early_halo", 0);
  ark_tuning_set("conv1d_fwd_vec_halo", 0);
  ark_tuning_set("conv1d_fwd_persistent", 0);
  test_update(ARK_DEVICE_CUDA, "cuda");
}
#endif

}  // namespace

int main() {
  test_cpu_matches_definition();
  test_update(ARK_DEVICE_CPU, "cpu");
  test_bad_arguments();
#ifdef ARKERNELS_TEST_CUDA
  test_cuda_matches_definition();
#endif
  return finish("causal_conv1d C API");
}
