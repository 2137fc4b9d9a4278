// C API test of linear_scan: links only libarkernels (no torch). Checks the CPU path against a
// double-precision loop, the argument checks, and, where a GPU is present, the CUDA path against
// the CPU path. Exit code 0 = pass.
#include <arkernels/arkernels.h>

#include "capi_test_util.hpp"

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
  int64_t rows, T, stride;  // inputs use `stride` >= T (padding between rows); outputs are dense
  bool reverse;
  std::vector<float> a, b, h0, g, g_last;
};

Problem make_problem(int64_t rows, int64_t T, int64_t pad, bool reverse, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> gate(0.5f, 1.0f), val(-1.0f, 1.0f);
  Problem p{rows, T, T + pad, reverse, {}, {}, {}, {}, {}};
  p.a.resize(rows * p.stride);
  p.b.resize(rows * p.stride);
  p.g.resize(rows * p.stride);
  for (auto& x : p.a) x = bf16_to(bf16_from(gate(rng)));
  for (auto& x : p.b) x = bf16_to(bf16_from(val(rng)));
  for (auto& x : p.g) x = bf16_to(bf16_from(val(rng)));
  for (int64_t r = 0; r < rows; ++r) { p.h0.push_back(val(rng)); p.g_last.push_back(val(rng)); }
  return p;
}

// Double-precision definition: forward states, final state, and the three gradients.
struct Expected { std::vector<double> h, h_last, da, db, dh0; };

Expected expected(const Problem& p) {
  Expected e;
  e.h.assign(p.rows * p.T, 0.0); e.da = e.h; e.db = e.h;
  for (int64_t r = 0; r < p.rows; ++r) {
    auto at = [&](int64_t s) { return p.reverse ? p.T - 1 - s : s; };  // memory position of step s
    double h = p.h0[r];
    for (int64_t s = 0; s < p.T; ++s) {
      const int64_t t = at(s);
      h = double(p.a[r * p.stride + t]) * h + p.b[r * p.stride + t];
      e.h[r * p.T + t] = h;
    }
    e.h_last.push_back(h);
    double dh = p.g_last[r], gate_next = 1.0;
    for (int64_t s = p.T - 1; s >= 0; --s) {
      const int64_t t = at(s);
      dh = p.g[r * p.stride + t] + gate_next * dh;
      const double h_prev = s > 0 ? e.h[r * p.T + at(s - 1)] : p.h0[r];
      e.da[r * p.T + t] = h_prev * dh;
      e.db[r * p.T + t] = dh;
      gate_next = p.a[r * p.stride + t];
    }
    e.dh0.push_back(gate_next * dh);
  }
  return e;
}


// Results of one run of fwd + bwd, converted to float.
struct Result { std::vector<float> h, h_last, da, db, dh0; ark_status fwd, bwd; };

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

// Runs on the CPU with host buffers. Outputs are NaN-poisoned first so unwritten elements fail.
Result run_cpu(const Problem& p, ark_dtype dtype) {
  Result res;
  const size_t n = size_t(p.rows * p.T);
  res.h_last.assign(p.rows, NAN);
  res.dh0.assign(p.rows, NAN);
  if (dtype == ARK_FLOAT32) {
    res.h.assign(n, NAN); res.da.assign(n, NAN); res.db.assign(n, NAN);
    res.fwd = ark_linear_scan_fwd(p.a.data(), p.b.data(), p.h0.data(), res.h.data(), res.h_last.data(), p.rows, p.T,
                                  p.stride, p.stride, p.T, p.reverse, ARK_FLOAT32, ARK_DEVICE_CPU, nullptr);
    // The backward reads h with the input row stride: give it a padded copy.
    std::vector<float> h_pad(p.rows * p.stride, NAN);
    for (int64_t r = 0; r < p.rows; ++r)
      for (int64_t t = 0; t < p.T; ++t) h_pad[r * p.stride + t] = res.h[r * p.T + t];
    res.bwd = ark_linear_scan_bwd(p.a.data(), h_pad.data(), p.g.data(), p.h0.data(), p.g_last.data(), res.da.data(),
                                  res.db.data(), res.dh0.data(), p.rows, p.T, p.stride, p.stride, p.stride, p.reverse,
                                  ARK_FLOAT32, ARK_DEVICE_CPU, nullptr);
  } else {
    const auto a = to_bf16(p.a), b = to_bf16(p.b), g = to_bf16(p.g);
    std::vector<uint16_t> h(n, 0x7fc0), da(n, 0x7fc0), db(n, 0x7fc0);
    res.fwd = ark_linear_scan_fwd(a.data(), b.data(), p.h0.data(), h.data(), res.h_last.data(), p.rows, p.T, p.stride,
                                  p.stride, p.T, p.reverse, ARK_BFLOAT16, ARK_DEVICE_CPU, nullptr);
    res.bwd = ark_linear_scan_bwd(a.data(), h.data(), g.data(), p.h0.data(), p.g_last.data(), da.data(), db.data(),
                                  res.dh0.data(), p.rows, p.T, p.stride, p.T, p.stride, p.reverse, ARK_BFLOAT16,
                                  ARK_DEVICE_CPU, nullptr);
    res.h = from_bf16(h); res.da = from_bf16(da); res.db = from_bf16(db);
  }
  return res;
}

void check_against_expected(const char* what, const Problem& p, const Result& r, double tol) {
  EXPECT(r.fwd == ARK_SUCCESS, "%s fwd status %s: %s", what, ark_status_name(r.fwd), ark_last_error_message());
  EXPECT(r.bwd == ARK_SUCCESS, "%s bwd status %s: %s", what, ark_status_name(r.bwd), ark_last_error_message());
  const Expected e = expected(p);
  const double errs[] = {rel_error(r.h, e.h), rel_error(r.h_last, e.h_last), rel_error(r.da, e.da),
                         rel_error(r.db, e.db), rel_error(r.dh0, e.dh0)};
  const char* names[] = {"h", "h_last", "da", "db", "dh0"};
  for (int i = 0; i < 5; ++i)
    EXPECT(errs[i] <= tol, "%s rows=%lld T=%lld reverse=%d: %s relative error %.3e > %.1e", what, (long long)p.rows,
           (long long)p.T, int(p.reverse), names[i], errs[i], tol);
}

void test_cpu_matches_definition() {
  const int64_t lengths[] = {1, 7, 1000, 4097};
  unsigned seed = 1;
  for (int64_t T : lengths)
    for (bool reverse : {false, true}) {
      const Problem p = make_problem(5, T, 3, reverse, seed++);
      check_against_expected("cpu fp32", p, run_cpu(p, ARK_FLOAT32), 1e-5);
      check_against_expected("cpu bf16", p, run_cpu(p, ARK_BFLOAT16), 1e-2);
    }
}

void test_bad_arguments() {
  float x[4] = {1, 2, 3, 4}, y[4];
  ark_status s = ark_linear_scan_fwd(x, x, nullptr, y, nullptr, -1, 4, 4, 4, 4, 0, ARK_FLOAT32, ARK_DEVICE_CPU, nullptr);
  EXPECT(s == ARK_ERROR_INVALID_ARGUMENT && std::strstr(ark_last_error_message(), "rows"), "negative rows: %s %s",
         ark_status_name(s), ark_last_error_message());
  s = ark_linear_scan_fwd(x, x, nullptr, y, nullptr, 1, 4, 4, 4, 4, 0, ark_dtype(7), ARK_DEVICE_CPU, nullptr);
  EXPECT(s == ARK_ERROR_INVALID_ARGUMENT && std::strstr(ark_last_error_message(), "dtype"), "bad dtype: %s %s",
         ark_status_name(s), ark_last_error_message());
  s = ark_linear_scan_fwd(x, nullptr, nullptr, y, nullptr, 1, 4, 4, 4, 4, 0, ARK_FLOAT32, ARK_DEVICE_CPU, nullptr);
  EXPECT(s == ARK_ERROR_INVALID_ARGUMENT, "NULL b accepted: %s", ark_status_name(s));
  s = ark_linear_scan_fwd(x, x, nullptr, y, nullptr, 2, 2, 2, 2, 1, 0, ARK_FLOAT32, ARK_DEVICE_CPU, nullptr);
  EXPECT(s == ARK_ERROR_INVALID_ARGUMENT && std::strstr(ark_last_error_message(), "h_row_stride"),
         "overlapping output rows accepted: %s", ark_status_name(s));
  s = ark_linear_scan_fwd(x, x, nullptr, y, nullptr, 1, 4, 4, 4, 4, 2, ARK_FLOAT32, ARK_DEVICE_CPU, nullptr);
  EXPECT(s == ARK_ERROR_INVALID_ARGUMENT && std::strstr(ark_last_error_message(), "reverse"), "reverse=2 accepted");
  if (!ark_has_cuda()) {
    s = ark_linear_scan_fwd(x, x, nullptr, y, nullptr, 1, 4, 4, 4, 4, 0, ARK_FLOAT32, ARK_DEVICE_CUDA, nullptr);
    EXPECT(s == ARK_ERROR_NOT_COMPILED, "CUDA without CUDA build: %s", ark_status_name(s));
  }
  // Empty problems succeed and touch nothing.
  s = ark_linear_scan_fwd(nullptr, nullptr, nullptr, nullptr, nullptr, 0, 5, 5, 5, 5, 0, ARK_FLOAT32, ARK_DEVICE_CPU,
                          nullptr);
  EXPECT(s == ARK_SUCCESS, "zero rows: %s", ark_status_name(s));
  float h0[2] = {3, 4}, last[2] = {NAN, NAN};
  s = ark_linear_scan_fwd(nullptr, nullptr, h0, nullptr, last, 2, 0, 0, 0, 0, 0, ARK_FLOAT32, ARK_DEVICE_CPU, nullptr);
  EXPECT(s == ARK_SUCCESS && last[0] == 3 && last[1] == 4, "T = 0 must return h0 as the final state");
}

#ifdef ARKERNELS_TEST_CUDA
// Copies a problem to the GPU, runs fwd + bwd there, and compares with the CPU path (fp32 + bf16,
// padded input rows, misaligned row starts through odd T).
template <typename Elem>
Result run_cuda(const Problem& p, ark_dtype dtype, const std::vector<Elem>& a, const std::vector<Elem>& b,
                const std::vector<Elem>& g) {
  Result res;
  const size_t n_in = a.size(), n_out = size_t(p.rows * p.T);
  Elem *da_, *db_, *dh_, *dg_, *dda, *ddb;
  float *dh0, *dgl, *dlast, *ddh0;
  cudaMalloc(&da_, n_in * sizeof(Elem)); cudaMalloc(&db_, n_in * sizeof(Elem)); cudaMalloc(&dg_, n_in * sizeof(Elem));
  cudaMalloc(&dh_, n_out * sizeof(Elem) + 16); cudaMalloc(&dda, n_out * sizeof(Elem)); cudaMalloc(&ddb, n_out * sizeof(Elem));
  cudaMalloc(&dh0, p.rows * 4); cudaMalloc(&dgl, p.rows * 4); cudaMalloc(&dlast, p.rows * 4); cudaMalloc(&ddh0, p.rows * 4);
  cudaMemcpy(da_, a.data(), n_in * sizeof(Elem), cudaMemcpyHostToDevice);
  cudaMemcpy(db_, b.data(), n_in * sizeof(Elem), cudaMemcpyHostToDevice);
  cudaMemcpy(dg_, g.data(), n_in * sizeof(Elem), cudaMemcpyHostToDevice);
  cudaMemcpy(dh0, p.h0.data(), p.rows * 4, cudaMemcpyHostToDevice);
  cudaMemcpy(dgl, p.g_last.data(), p.rows * 4, cudaMemcpyHostToDevice);
  cudaMemset(dh_, 0xff, n_out * sizeof(Elem)); cudaMemset(dda, 0xff, n_out * sizeof(Elem));  // NaN poison
  cudaMemset(ddb, 0xff, n_out * sizeof(Elem)); cudaMemset(dlast, 0xff, p.rows * 4); cudaMemset(ddh0, 0xff, p.rows * 4);
  res.fwd = ark_linear_scan_fwd(da_, db_, dh0, dh_, dlast, p.rows, p.T, p.stride, p.stride, p.T, p.reverse, dtype,
                                ARK_DEVICE_CUDA, nullptr);
  res.bwd = ark_linear_scan_bwd(da_, dh_, dg_, dh0, dgl, dda, ddb, ddh0, p.rows, p.T, p.stride, p.T, p.stride,
                                p.reverse, dtype, ARK_DEVICE_CUDA, nullptr);
  const cudaError_t err = cudaDeviceSynchronize();
  EXPECT(err == cudaSuccess, "CUDA error: %s", cudaGetErrorString(err));
  std::vector<Elem> h(n_out), da(n_out), db(n_out);
  cudaMemcpy(h.data(), dh_, n_out * sizeof(Elem), cudaMemcpyDeviceToHost);
  cudaMemcpy(da.data(), dda, n_out * sizeof(Elem), cudaMemcpyDeviceToHost);
  cudaMemcpy(db.data(), ddb, n_out * sizeof(Elem), cudaMemcpyDeviceToHost);
  res.h_last.resize(p.rows); res.dh0.resize(p.rows);
  cudaMemcpy(res.h_last.data(), dlast, p.rows * 4, cudaMemcpyDeviceToHost);
  cudaMemcpy(res.dh0.data(), ddh0, p.rows * 4, cudaMemcpyDeviceToHost);
  for (void* ptr : {(void*)da_, (void*)db_, (void*)dg_, (void*)dh_, (void*)dda, (void*)ddb, (void*)dh0, (void*)dgl,
                    (void*)dlast, (void*)ddh0})
    cudaFree(ptr);
  if constexpr (sizeof(Elem) == 4) {
    res.h = h; res.da = da; res.db = db;
  } else {
    res.h = from_bf16(h); res.da = from_bf16(da); res.db = from_bf16(db);
  }
  return res;
}

void test_cuda_matches_definition() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: CUDA path not run\n");
    return;
  }
  const int64_t lengths[] = {1, 7, 300, 1000, 4097, 65537};
  unsigned seed = 100;
  for (int64_t T : lengths)
    for (bool reverse : {false, true}) {
      const Problem p = make_problem(T > 5000 ? 3 : 9, T, 1, reverse, seed++);
      check_against_expected("cuda fp32", p, run_cuda<float>(p, ARK_FLOAT32, p.a, p.b, p.g), 1e-5);
      check_against_expected("cuda bf16", p, run_cuda<uint16_t>(p, ARK_BFLOAT16, to_bf16(p.a), to_bf16(p.b), to_bf16(p.g)),
                             1e-2);
    }
}
#endif

}  // namespace

int main() {
  test_cpu_matches_definition();
  test_bad_arguments();
#ifdef ARKERNELS_TEST_CUDA
  test_cuda_matches_definition();
#endif
  return finish("linear_scan C API");
}
