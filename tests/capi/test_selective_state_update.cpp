// C API test of selective_state_update: links only libarkernels (no torch). Checks the CPU path
// against a double-precision loop (Mamba-1 and Mamba-2 layouts, groups, broadcast A, several tokens,
// state_batch_indices with padding, intermediate states, fp32 and bf16), the argument checks, and,
// where a GPU is present, the CUDA path against the same loop. Exit code 0 = pass.
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




// One problem in the unified layout: state (Bc, H, P, N), x/dt/z/out (b, k, H, P), A (H, P, N),
// B/C (b, k, G, N), D/dt_bias (H, P), intermediate (b, k, H, P, N); all dense except A, which is
// broadcast over (P, N) (strides 0) when a_broadcast, and, when head_params, dt, D and dt_bias, which
// are then per head and broadcast over P (strides 0), as Mamba-2 passes them.
struct Problem {
  int64_t b, k, Bc, H, P, N, G;
  bool a_broadcast, with_D, with_z, with_bias, softplus, with_indices, with_inter, head_params;
  std::vector<float> state, x, dt, A, B, C, D, z, bias;
  std::vector<int32_t> idx;
};

Problem make_problem(int64_t b, int64_t k, int64_t H, int64_t P, int64_t N, int64_t G, bool a_broadcast, bool extras,
                     bool with_indices, unsigned seed, bool head_params = false) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_real_distribution<float> uni(0.f, 1.f);
  Problem p{b, k, with_indices ? b + 3 : b, H, P, N, G, a_broadcast, extras, extras, extras, extras, with_indices,
            extras, head_params, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}};
  const int64_t per_p = head_params ? 1 : P;  // dt, D, dt_bias entries per head
  auto fill = [&](std::vector<float>& v, size_t n, auto gen) {
    v.resize(n);
    for (auto& e : v) e = bf16_round(gen());
  };
  fill(p.state, size_t(p.Bc * H * P * N), [&] { return normal(rng); });
  fill(p.x, size_t(b * k * H * P), [&] { return normal(rng); });
  // dt: raw values for softplus (around -1), else positive step sizes.
  fill(p.dt, size_t(b * k * H * per_p), [&] { return extras ? normal(rng) * 0.5f - 1.f : 0.02f + 0.3f * uni(rng); });
  fill(p.A, size_t(a_broadcast ? H : H * P * N), [&] { return -(0.1f + 2.f * uni(rng)); });
  fill(p.B, size_t(b * k * G * N), [&] { return normal(rng); });
  fill(p.C, size_t(b * k * G * N), [&] { return normal(rng); });
  fill(p.D, size_t(H * per_p), [&] { return normal(rng); });
  fill(p.z, size_t(b * k * H * P), [&] { return normal(rng); });
  fill(p.bias, size_t(H * per_p), [&] { return -0.5f * uni(rng); });
  if (with_indices) {
    // A permutation of the last b rows of the cache (rows 0..2 stay untouched), one row padding.
    for (int64_t i = 0; i < b; ++i) p.idx.push_back(int32_t(p.Bc - 1 - (i + 1) % b));
    if (b > 1) p.idx[1] = -1;
  }
  return p;
}

struct Expected { std::vector<double> state, out, inter; };

Expected expected(const Problem& p) {
  Expected e;
  e.state.assign(p.state.begin(), p.state.end());
  e.out.assign(size_t(p.b * p.k * p.H * p.P), 0.0);
  e.inter.assign(size_t(p.b * p.k * p.H * p.P * p.N), NAN);  // padding rows: never written
  const int64_t cpg = p.H * p.P / p.G;
  for (int64_t b = 0; b < p.b; ++b) {
    const int64_t srow = p.with_indices ? p.idx[size_t(b)] : b;
    if (srow < 0) continue;  // out stays 0
    for (int64_t h = 0; h < p.H; ++h)
      for (int64_t pp = 0; pp < p.P; ++pp) {
        const int64_t ch = h * p.P + pp, g = ch / cpg;
        double* s = &e.state[size_t(((srow * p.H + h) * p.P + pp) * p.N)];
        for (int64_t t = 0; t < p.k; ++t) {
          const size_t xi = size_t(((b * p.k + t) * p.H + h) * p.P + pp);
          const size_t hi = p.head_params ? size_t(h) : size_t(ch);  // D, dt_bias
          const size_t dti = p.head_params ? size_t((b * p.k + t) * p.H + h) : xi;
          double dt = double(p.dt[dti]) + (p.with_bias ? p.bias[hi] : 0.0);
          if (p.softplus) dt = dt <= 20 ? std::log1p(std::exp(dt)) : dt;
          double acc = 0;
          for (int64_t n = 0; n < p.N; ++n) {
            const double A = p.a_broadcast ? p.A[size_t(h)] : p.A[size_t(ch * p.N + n)];
            const size_t bi = size_t(((b * p.k + t) * p.G + g) * p.N + n);
            s[n] = s[n] * std::exp(dt * A) + double(p.B[bi]) * dt * p.x[xi];
            acc += s[n] * p.C[bi];
            if (p.with_inter) e.inter[xi * size_t(p.N) + size_t(n)] = s[n];
          }
          double y = acc + (p.with_D ? double(p.D[hi]) * p.x[xi] : 0.0);
          if (p.with_z) y *= p.z[xi] / (1.0 + std::exp(-double(p.z[xi])));
          e.out[xi] = y;
        }
      }
  }
  return e;
}

// ||got - want|| / ||want|| over the elements where want is not NaN; got must be NaN exactly there
// (an element that must not be written kept its NaN poison).

// Buffers of one run, as raw bytes of the run's dtypes (fp32 or bf16 for state and inputs alike).
struct Buffers {
  size_t elem;
  std::vector<char> state, x, dt, A, B, C, D, z, bias, out, inter;
};

std::vector<char> pack(const std::vector<float>& v, size_t elem) {
  std::vector<char> out(v.size() * elem);
  for (size_t i = 0; i < v.size(); ++i) {
    if (elem == 4) std::memcpy(&out[i * 4], &v[i], 4);
    else { const uint16_t h = bf16_from(v[i]); std::memcpy(&out[i * 2], &h, 2); }
  }
  return out;
}

std::vector<float> unpack(const std::vector<char>& raw, size_t elem) {
  std::vector<float> out(raw.size() / elem);
  for (size_t i = 0; i < out.size(); ++i) {
    if (elem == 4) std::memcpy(&out[i], &raw[i * 4], 4);
    else { uint16_t h; std::memcpy(&h, &raw[i * 2], 2); out[i] = bf16_to(h); }
  }
  return out;
}

Buffers host_buffers(const Problem& p, ark_dtype dtype) {
  const size_t elem = dtype == ARK_FLOAT32 ? 4 : 2;
  Buffers h{elem, pack(p.state, elem), pack(p.x, elem), pack(p.dt, elem), pack(p.A, 4), pack(p.B, elem),
            pack(p.C, elem), pack(p.D, 4), pack(p.z, elem), pack(p.bias, 4), {}, {}};
  // NaN poison: 0xff bytes are a NaN in fp32 and bf16.
  h.out.assign(size_t(p.b * p.k * p.H * p.P) * elem, char(0xff));
  h.inter.assign(size_t(p.b * p.k * p.H * p.P * p.N) * elem, char(0xff));
  return h;
}

// The args for buffers at the given addresses (host or device).
ark_selective_state_update_args make_args(const Problem& p, ark_dtype dtype, void* state, const void* x,
                                          const void* dt, const void* A, const void* B, const void* C,
                                          const void* D, const void* z, const void* bias, const void* idx,
                                          void* out, void* inter) {
  ark_selective_state_update_args a;
  std::memset(&a, 0, sizeof(a));
  a.batch = p.b; a.tokens = p.k; a.state_batch = p.Bc; a.heads = p.H; a.head_dim = p.P; a.dstate = p.N;
  a.groups = p.G;
  const int64_t s4[4] = {p.H * p.P * p.N, p.P * p.N, p.N, 1};
  const int64_t t4[4] = {p.k * p.H * p.P, p.H * p.P, p.P, 1};
  const int64_t bc4[4] = {p.k * p.G * p.N, p.G * p.N, p.N, 1};
  a.state = state; std::memcpy(a.state_strides, s4, sizeof(s4));
  a.x = x; std::memcpy(a.x_strides, t4, sizeof(t4));
  a.dt = dt; std::memcpy(a.dt_strides, t4, sizeof(t4));
  if (p.head_params) { a.dt_strides[0] = p.k * p.H; a.dt_strides[1] = p.H; a.dt_strides[2] = 1; a.dt_strides[3] = 0; }
  const int64_t hp0 = p.head_params ? 1 : p.P, hp1 = p.head_params ? 0 : 1;  // D, dt_bias strides
  a.A = A;
  if (p.a_broadcast) { a.A_strides[0] = 1; a.A_strides[1] = 0; a.A_strides[2] = 0; }
  else { a.A_strides[0] = p.P * p.N; a.A_strides[1] = p.N; a.A_strides[2] = 1; }
  a.B = B; std::memcpy(a.B_strides, bc4, sizeof(bc4));
  a.C = C; std::memcpy(a.C_strides, bc4, sizeof(bc4));
  a.D = p.with_D ? D : nullptr; a.D_strides[0] = hp0; a.D_strides[1] = hp1;
  a.z = p.with_z ? z : nullptr; std::memcpy(a.z_strides, t4, sizeof(t4));
  a.dt_bias = p.with_bias ? bias : nullptr; a.dt_bias_strides[0] = hp0; a.dt_bias_strides[1] = hp1;
  a.state_batch_indices = p.with_indices ? idx : nullptr; a.state_batch_indices_stride = 1;
  a.out = out; std::memcpy(a.out_strides, t4, sizeof(t4));
  a.intermediate_states = p.with_inter ? inter : nullptr;
  const int64_t i5[5] = {p.k * p.H * p.P * p.N, p.H * p.P * p.N, p.P * p.N, p.N, 1};
  std::memcpy(a.intermediate_states_strides, i5, sizeof(i5));
  a.dt_softplus = p.softplus;
  a.state_dtype = dtype; a.input_dtype = dtype;
  a.A_dtype = ARK_FLOAT32; a.D_dtype = ARK_FLOAT32; a.dt_bias_dtype = ARK_FLOAT32;
  return a;
}

void check_result(const char* what, const Problem& p, const Buffers& h, ark_status st, double tol) {
  EXPECT(st == ARK_SUCCESS, "%s status %s: %s", what, ark_status_name(st), ark_last_error_message());
  const Expected e = expected(p);
  const double err_state = rel_error(unpack(h.state, h.elem), e.state);
  const double err_out = rel_error(unpack(h.out, h.elem), e.out);
  EXPECT(err_state <= tol && err_out <= tol, "%s b=%lld k=%lld H=%lld P=%lld N=%lld G=%lld: state error %.3e, out error %.3e > %.1e",
         what, (long long)p.b, (long long)p.k, (long long)p.H, (long long)p.P, (long long)p.N, (long long)p.G,
         err_state, err_out, tol);
  if (p.with_inter) {
    const double err_inter = rel_error(unpack(h.inter, h.elem), e.inter);
    EXPECT(err_inter <= tol, "%s N=%lld: intermediate states error %.3e > %.1e", what, (long long)p.N, err_inter, tol);
  }
  // Rows the indices do not name are bitwise unchanged.
  if (p.with_indices) {
    const std::vector<char> before = pack(p.state, h.elem);
    const size_t row_bytes = size_t(p.H * p.P * p.N) * h.elem;
    EXPECT(std::memcmp(before.data(), h.state.data(), 3 * row_bytes) == 0, "%s: untouched state rows changed", what);
  }
}

ark_status run_cpu(const Problem& p, ark_dtype dtype, Buffers& h) {
  const auto a = make_args(p, dtype, h.state.data(), h.x.data(), h.dt.data(), h.A.data(), h.B.data(), h.C.data(),
                           h.D.data(), h.z.data(), h.bias.data(), p.idx.data(), h.out.data(), h.inter.data());
  return ark_selective_state_update(&a, ARK_DEVICE_CPU, nullptr);
}

// (b, k, H, P, N, G, a_broadcast, extras, indices): Mamba-1 (H = 1), Mamba-2, long rows (chunks; on
// CUDA N = 300 takes the VEC kernel, N = 301 the general one), more tokens than a chunked row's token
// group (35, 40 > 32), N = 0 and N = 1; and shapes for CUDA's head-tile kernel (N = 4 .. 128 a power of
// two times 4, rows per block dividing the channels of a group): per-head parameters (Mamba-2) with
// 4 or 2 rows per lane group, per-row parameters, Mamba-1.
struct Shape { int64_t b, k, H, P, N, G; bool a_broadcast, extras, indices, head_params; };
const Shape kShapes[] = {
    {3, 1, 1, 37, 16, 1, false, true, false},  {4, 3, 1, 39, 16, 3, false, true, true},
    {3, 2, 4, 5, 128, 2, true, true, true},     {2, 8, 4, 5, 64, 4, true, false, false},
    {2, 3, 2, 3, 301, 1, false, true, true},    {2, 40, 1, 3, 300, 1, true, true, false},
    {2, 35, 2, 2, 301, 2, false, true, true},
    {2, 2, 1, 7, 1, 1, false, true, false},     {2, 2, 2, 3, 0, 1, false, true, true},
    {5, 1, 3, 4, 256, 3, true, true, true},
    {3, 2, 4, 64, 128, 2, true, true, true, true}, {2, 1, 2, 64, 128, 1, true, false, false, true},
    {2, 1, 2, 128, 32, 1, true, true, true, true},  {2, 1, 4, 128, 8, 2, true, true, false, true},
    {2, 3, 2, 32, 64, 1, true, true, false},        {3, 1, 1, 256, 16, 1, false, true, false},
    {4, 3, 1, 384, 16, 3, false, true, true},       {2, 2, 2, 256, 4, 1, false, true, false},
    {2, 3, 2, 256, 16, 2, false, true, true},       {2, 1, 2, 256, 16, 1, true, true, false, true},
};

void test_cpu_matches_definition() {
  unsigned seed = 1;
  for (const Shape& s : kShapes)
    for (ark_dtype dtype : {ARK_FLOAT32, ARK_BFLOAT16}) {
      const Problem p = make_problem(s.b, s.k, s.H, s.P, s.N, s.G, s.a_broadcast, s.extras, s.indices, seed++, s.head_params);
      Buffers h = host_buffers(p, dtype);
      const ark_status st = run_cpu(p, dtype, h);
      check_result(dtype == ARK_FLOAT32 ? "cpu fp32" : "cpu bf16", p, h, st, dtype == ARK_FLOAT32 ? 1e-5 : 1e-2);
    }
}

void test_bad_arguments() {
  const Problem p = make_problem(2, 1, 1, 4, 8, 1, false, false, false, 7);
  Buffers h = host_buffers(p, ARK_FLOAT32);
  auto args = [&] {
    return make_args(p, ARK_FLOAT32, h.state.data(), h.x.data(), h.dt.data(), h.A.data(), h.B.data(), h.C.data(),
                     h.D.data(), h.z.data(), h.bias.data(), nullptr, h.out.data(), nullptr);
  };
  const auto expect_invalid = [&](const ark_selective_state_update_args& a, const char* field, const char* what) {
    const ark_status s = ark_selective_state_update(&a, ARK_DEVICE_CPU, nullptr);
    EXPECT(s == ARK_ERROR_INVALID_ARGUMENT && std::strstr(ark_last_error_message(), field), "%s: %s %s", what,
           ark_status_name(s), ark_last_error_message());
  };
  ark_status s = ark_selective_state_update(nullptr, ARK_DEVICE_CPU, nullptr);
  EXPECT(s == ARK_ERROR_INVALID_ARGUMENT, "NULL args accepted");
  auto a = args(); a.batch = -1; expect_invalid(a, "batch", "negative batch");
  a = args(); a.groups = 3; expect_invalid(a, "groups", "groups not dividing H * P");
  a = args(); a.groups = 0; expect_invalid(a, "groups", "zero groups");
  a = args(); a.state_dtype = ark_dtype(9); expect_invalid(a, "state_dtype", "bad state dtype");
  a = args(); a.state_batch = 5; expect_invalid(a, "state_batch", "Bc != b without indices");
  a = args(); a.dt_softplus = 2; expect_invalid(a, "dt_softplus", "dt_softplus = 2");
  a = args(); a.B = nullptr; expect_invalid(a, "B", "NULL B");
  a = args(); a.x_strides[3] = -1; expect_invalid(a, "x_strides", "negative stride");
  a = args(); a.out_strides[0] = 0; expect_invalid(a, "out", "overlapping out rows");
  a = args(); a.state_strides[2] = 1; expect_invalid(a, "state", "overlapping state");
  // Indices: out of range and repeated rows are rejected on the CPU before anything is written.
  std::vector<int32_t> idx = {0, 2};
  a = args(); a.state_batch = 2; a.state_batch_indices = idx.data(); a.state_batch_indices_stride = 1;
  const std::vector<char> state_before = h.state;
  expect_invalid(a, "state_batch_indices", "index >= Bc");
  EXPECT(h.state == state_before, "a rejected call wrote the state");
  idx = {1, 1}; expect_invalid(a, "state_batch_indices", "repeated index");
  idx = {-5, 1};
  s = ark_selective_state_update(&a, ARK_DEVICE_CPU, nullptr);
  EXPECT(s == ARK_SUCCESS, "negative index (padding): %s %s", ark_status_name(s), ark_last_error_message());
  if (!ark_has_cuda()) {
    a = args();
    s = ark_selective_state_update(&a, ARK_DEVICE_CUDA, nullptr);
    EXPECT(s == ARK_ERROR_NOT_COMPILED, "CUDA without CUDA build: %s", ark_status_name(s));
  }
  // Empty problems succeed and touch nothing (NULL pointers allowed).
  ark_selective_state_update_args e;
  std::memset(&e, 0, sizeof(e));
  e.groups = 1; e.heads = 1; e.head_dim = 4; e.dstate = 8;
  s = ark_selective_state_update(&e, ARK_DEVICE_CPU, nullptr);
  EXPECT(s == ARK_SUCCESS, "zero batch: %s %s", ark_status_name(s), ark_last_error_message());
}

#ifdef ARKERNELS_TEST_CUDA
struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(const std::vector<char>& host) {
    cudaMalloc(&ptr, host.size() + 16);
    if (!host.empty()) cudaMemcpy(ptr, host.data(), host.size(), cudaMemcpyHostToDevice);
  }
  void to_host(std::vector<char>& host) const {
    if (!host.empty()) cudaMemcpy(host.data(), ptr, host.size(), cudaMemcpyDeviceToHost);
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

void test_cuda_matches_definition() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: CUDA path not run\n");
    return;
  }
  unsigned seed = 100;
  // (ssu_kernel, rows per lane group, token prefetch, lean): the default (head-tile kernel where it
  // applies, in its lean form where the state is fp32: every problem here has fp32 parameters and
  // small offsets), the head-tile kernel without the lean form, and the per-row kernel; in tuning
  // builds every variant.
#ifdef ARKERNELS_TUNING_VARIANTS
  const int variants[][4] = {{0, 0, 0, 0}, {0, 0, 0, -1}, {1, 1, 0, 0}, {1, 2, 0, 0}, {1, 4, 0, 0}, {1, 1, 1, 0},
                             {1, 2, 1, 0}, {2, 1, 0, 0}, {2, 2, 0, 0}, {2, 4, 0, 0}, {2, 1, 0, -1}, {2, 4, 0, -1}};
#else
  const int variants[][4] = {{0, 0, 0, 0}, {0, 0, 0, -1}, {1, 0, 0, 0}};
#endif
  for (const auto& v : variants)
  for (const Shape& s : kShapes)
    for (ark_dtype dtype : {ARK_FLOAT32, ARK_BFLOAT16}) {
      ark_tuning_set("ssu_kernel", v[0]);
      ark_tuning_set("ssu_rows", v[1]);
      ark_tuning_set("ssu_prefetch", v[2]);
      ark_tuning_set("ssu_lean", v[3]);
      const Problem p = make_problem(s.b, s.k, s.H, s.P, s.N, s.G, s.a_broadcast, s.extras, s.indices, seed++, s.head_params);
      Buffers h = host_buffers(p, dtype);
      std::vector<char> idx_bytes(p.idx.size() * 4);
      if (!p.idx.empty()) std::memcpy(idx_bytes.data(), p.idx.data(), idx_bytes.size());
      DeviceBuffer state(h.state), x(h.x), dt(h.dt), A(h.A), B(h.B), C(h.C), D(h.D), z(h.z), bias(h.bias), idx(idx_bytes),
          out(h.out), inter(h.inter);
      const auto a = make_args(p, dtype, state.ptr, x.ptr, dt.ptr, A.ptr, B.ptr, C.ptr, D.ptr, z.ptr, bias.ptr, idx.ptr,
                               out.ptr, inter.ptr);
      ark_status st = ark_selective_state_update(&a, ARK_DEVICE_CUDA, nullptr);
      const cudaError_t err = cudaDeviceSynchronize();
      EXPECT(err == cudaSuccess, "CUDA error: %s", cudaGetErrorString(err));
      state.to_host(h.state);
      out.to_host(h.out);
      inter.to_host(h.inter);
      char what[96];
      std::snprintf(what, sizeof(what), "cuda %s (ssu_kernel %d, rows %d, prefetch %d, lean %d)",
                    dtype == ARK_FLOAT32 ? "fp32" : "bf16", v[0], v[1], v[2], v[3]);
      check_result(what, p, h, st, dtype == ARK_FLOAT32 ? 1e-5 : 1e-2);
    }
  ark_tuning_set("ssu_kernel", 0);
  ark_tuning_set("ssu_rows", 0);
  ark_tuning_set("ssu_prefetch", 0);
  ark_tuning_set("ssu_lean", 0);
}
#endif

}  // namespace

int main() {
  test_cpu_matches_definition();
  test_bad_arguments();
#ifdef ARKERNELS_TEST_CUDA
  test_cuda_matches_definition();
#endif
  return finish("selective_state_update C API");
}
