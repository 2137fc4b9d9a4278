// C API test of selective_scan: links only libarkernels (no torch). The CPU forward is checked against
// a double-precision loop, the CPU backward against central finite differences of that loop, the
// argument checks against bad arguments, and, where a GPU is present, the CUDA forward and backward
// against the CPU path. Exit code 0 = pass.
#include <arkernels/arkernels.h>

#include "capi_test_util.hpp"

#include <cmath>
#include <random>
#include <vector>

#ifdef ARKERNELS_TEST_CUDA
#include <cuda_runtime.h>
#endif

namespace {

// One fp32 problem with every feature on: input-dependent B/C (2 groups), D, z, delta_bias with
// softplus, an initial state. dim = 4: 2 channels per group, one partial block of channels; dim = 74:
// 37 per group, full blocks of channels and a partial one at every backward shape.
struct Problem {
  int64_t batch = 2, dim = 4, L = 45, N = 5, G = 2;
  std::vector<float> u, delta, A, B, C, D, z, bias, h0, w_out, w_last;
  explicit Problem(unsigned seed, int64_t states = 5, int64_t length = 45, int64_t channels = 4)
      : dim(channels), L(length), N(states) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> nrm(0.f, 1.f);
    std::uniform_real_distribution<float> uni(0.f, 1.f);
    auto fill = [&](std::vector<float>& v, size_t n, auto f) { v.resize(n); for (auto& x : v) x = f(); };
    const size_t bdl = size_t(batch * dim * L);
    fill(u, bdl, [&] { return nrm(gen); });
    fill(delta, bdl, [&] { return -4.f + 3.f * uni(gen); });
    fill(A, size_t(dim * N), [&] { return -0.3f - 1.7f * uni(gen); });
    fill(B, size_t(batch * G * N * L), [&] { return nrm(gen); });
    fill(C, size_t(batch * G * N * L), [&] { return nrm(gen); });
    fill(D, size_t(dim), [&] { return nrm(gen); });
    fill(z, bdl, [&] { return nrm(gen); });
    fill(bias, size_t(dim), [&] { return uni(gen) - 0.5f; });
    fill(h0, size_t(batch * dim * N), [&] { return nrm(gen); });
    fill(w_out, bdl, [&] { return nrm(gen); });
    fill(w_last, size_t(batch * dim * N), [&] { return nrm(gen); });
  }
};

// The loss <out, w_out> + <last, w_last> of the definition, in double precision.
double loss(const Problem& p) {
  double total = 0;
  const int64_t per_group = p.dim / p.G;
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t d = 0; d < p.dim; ++d) {
      std::vector<double> h(p.N);
      for (int64_t n = 0; n < p.N; ++n) h[n] = p.h0[(b * p.dim + d) * p.N + n];
      const int64_t g = d / per_group;
      for (int64_t t = 0; t < p.L; ++t) {
        const int64_t i = (b * p.dim + d) * p.L + t;
        double x = double(p.delta[i]) + p.bias[d];
        const double dl = x <= 20 ? std::log1p(std::exp(x)) : x;
        double y = double(p.D[d]) * p.u[i];
        for (int64_t n = 0; n < p.N; ++n) {
          const int64_t bc = ((b * p.G + g) * p.N + n) * p.L + t;
          h[n] = std::exp(dl * p.A[d * p.N + n]) * h[n] + dl * p.u[i] * p.B[bc];
          y += double(p.C[bc]) * h[n];
        }
        const double zz = p.z[i];
        total += p.w_out[i] * y * zz / (1 + std::exp(-zz));
      }
      for (int64_t n = 0; n < p.N; ++n) total += p.w_last[(b * p.dim + d) * p.N + n] * h[n];
    }
  return total;
}

struct Outputs {
  std::vector<float> out, last, ckpt, y_pre;
  std::vector<float> du, ddelta, dA, dB, dC, dD, dbias, dz, dh0;
};

// Fills the argument struct with pointers into `p` (inputs) and `o` (outputs), host memory.
ark_selective_scan_args args_for(Problem& p, Outputs& o) {
  const size_t bdl = p.u.size(), states = p.h0.size();
  o.out.assign(bdl, NAN); o.y_pre.assign(bdl, NAN); o.last.assign(states, NAN);
  o.ckpt.assign(size_t(p.batch * p.dim * ((p.L + 31) / 32) * p.N), NAN);
  o.du.assign(bdl, NAN); o.ddelta.assign(bdl, NAN); o.dz.assign(bdl, NAN);
  o.dA.assign(p.A.size(), NAN); o.dB.assign(p.B.size(), NAN); o.dC.assign(p.C.size(), NAN);
  o.dD.assign(p.D.size(), NAN); o.dbias.assign(p.bias.size(), NAN); o.dh0.assign(states, NAN);
  ark_selective_scan_args a{};
  a.batch = p.batch; a.dim = p.dim; a.seqlen = p.L; a.dstate = p.N; a.ngroups = p.G; a.dtype = ARK_FLOAT32;
  a.B_variable = a.C_variable = 1; a.delta_softplus = 1; a.num_seqs = p.batch;
  a.u = p.u.data(); a.delta = p.delta.data(); a.A = p.A.data(); a.B = p.B.data(); a.C = p.C.data();
  a.D = p.D.data(); a.z = p.z.data(); a.delta_bias = p.bias.data(); a.initial_state = p.h0.data();
  a.out = o.out.data(); a.last_state = o.last.data(); a.checkpoints = o.ckpt.data(); a.y_pre = o.y_pre.data();
  a.dout = nullptr; a.dlast_state = p.w_last.data();
  a.du = o.du.data(); a.ddelta = o.ddelta.data(); a.dA = o.dA.data(); a.dB = o.dB.data(); a.dC = o.dC.data();
  a.dD = o.dD.data(); a.ddelta_bias = o.dbias.data(); a.dz = o.dz.data(); a.dinitial_state = o.dh0.data();
  return a;
}


// Runs the CPU forward and backward (dout = w_out) into `o`.
void run_cpu(Problem& p, Outputs& o) {
  ark_selective_scan_args a = args_for(p, o);
  a.dout = p.w_out.data();
  EXPECT(ark_selective_scan_fwd(&a, ARK_DEVICE_CPU, nullptr) == ARK_SUCCESS, "cpu forward: %s", ark_last_error_message());
  size_t bytes = 0;
  EXPECT(ark_selective_scan_bwd_workspace_size(&a, ARK_DEVICE_CPU, &bytes) == ARK_SUCCESS, "workspace size");
  std::vector<float> ws(bytes / sizeof(float) + 1);
  EXPECT(ark_selective_scan_bwd(&a, ws.data(), bytes, ARK_DEVICE_CPU, nullptr) == ARK_SUCCESS, "cpu backward: %s",
         ark_last_error_message());
}

void test_cpu_matches_definition() {
  Problem p(7);
  Outputs o;
  run_cpu(p, o);
  // Forward: the loss from the kernel's outputs equals the loss of the double-precision loop.
  double got = 0;
  for (size_t i = 0; i < o.out.size(); ++i) got += double(p.w_out[i]) * o.out[i];
  for (size_t i = 0; i < o.last.size(); ++i) got += double(p.w_last[i]) * o.last[i];
  const double want = loss(p);
  EXPECT(std::fabs(got - want) <= 1e-4 * std::fabs(want) + 1e-4, "forward loss %.8g, definition %.8g", got, want);
  // Backward: a few elements of every gradient against central differences of the definition.
  struct Grad { const char* name; std::vector<float>* x; const std::vector<float>* g; };
  const Grad grads[] = {{"u", &p.u, &o.du}, {"delta", &p.delta, &o.ddelta}, {"A", &p.A, &o.dA}, {"B", &p.B, &o.dB},
                        {"C", &p.C, &o.dC}, {"D", &p.D, &o.dD}, {"delta_bias", &p.bias, &o.dbias},
                        {"z", &p.z, &o.dz}, {"initial_state", &p.h0, &o.dh0}};
  for (const Grad& gr : grads) {
    const size_t n = gr.x->size();
    for (size_t i : {size_t(0), n / 3, n / 2, n - 1}) {
      const float keep = (*gr.x)[i];
      const double step = 1e-3 * std::max(1.0, std::fabs(double(keep)));
      (*gr.x)[i] = float(keep + step);
      const double up = loss(p);
      (*gr.x)[i] = float(keep - step);
      const double down = loss(p);
      (*gr.x)[i] = keep;
      const double fd = (up - down) / (double(float(keep + step)) - double(float(keep - step)));
      const double g = (*gr.g)[i];
      EXPECT(std::fabs(g - fd) <= 2e-3 * std::max(1.0, std::fabs(fd)), "d%s[%zu] = %.6g, finite differences %.6g",
             gr.name, i, g, fd);
    }
  }
}

void test_bad_arguments() {
  Problem p(3);
  Outputs o;
  ark_selective_scan_args a = args_for(p, o);
  auto expect_invalid = [](ark_selective_scan_args bad, const char* what) {
    EXPECT(ark_selective_scan_fwd(&bad, ARK_DEVICE_CPU, nullptr) == ARK_ERROR_INVALID_ARGUMENT, "%s accepted", what);
  };
  ark_selective_scan_args bad = a;
  bad.dstate = 257; expect_invalid(bad, "dstate 257");
  bad = a; bad.dstate = 0; expect_invalid(bad, "dstate 0");
  bad = a; bad.ngroups = 3; expect_invalid(bad, "ngroups 3 with dim 4");
  bad = a; bad.num_seqs = 5; expect_invalid(bad, "num_seqs != batch");
  bad = a; bad.u = nullptr; expect_invalid(bad, "u NULL");
  bad = a; bad.out = nullptr; expect_invalid(bad, "out NULL");
  bad = a; bad.dtype = ark_dtype(9); expect_invalid(bad, "dtype 9");
  const int64_t cu[3] = {0, 20, 45};
  bad = a; bad.cu_seqlens = cu; bad.num_seqs = 2; expect_invalid(bad, "cu_seqlens with batch 2");
  EXPECT(ark_selective_scan_fwd(nullptr, ARK_DEVICE_CPU, nullptr) == ARK_ERROR_INVALID_ARGUMENT, "args NULL accepted");
  // The forward's workspace: none on the CPU; checked arguments; a workspace-taking call validates like the plain one.
  size_t fwd_bytes = 1;
  EXPECT(ark_selective_scan_fwd_workspace_size(&a, ARK_DEVICE_CPU, &fwd_bytes) == ARK_SUCCESS && fwd_bytes == 0,
         "cpu forward workspace: %zu bytes", fwd_bytes);
  EXPECT(ark_selective_scan_fwd_workspace_size(&a, ARK_DEVICE_CPU, nullptr) == ARK_ERROR_INVALID_ARGUMENT,
         "forward workspace size into NULL accepted");
  bad = a; bad.dstate = 257;
  EXPECT(ark_selective_scan_fwd_workspace_size(&bad, ARK_DEVICE_CPU, &fwd_bytes) == ARK_ERROR_INVALID_ARGUMENT,
         "forward workspace size of dstate 257 accepted");
  EXPECT(ark_selective_scan_fwd_with_workspace(&bad, nullptr, 0, ARK_DEVICE_CPU, nullptr) == ARK_ERROR_INVALID_ARGUMENT,
         "forward with workspace: dstate 257 accepted");
  a.dout = p.w_out.data();
  size_t bytes = 0;
  EXPECT(ark_selective_scan_bwd_workspace_size(&a, ARK_DEVICE_CPU, &bytes) == ARK_SUCCESS && bytes > 0, "workspace");
  std::vector<float> ws(bytes / sizeof(float) + 1);
  EXPECT(ark_selective_scan_bwd(&a, ws.data(), bytes - 4, ARK_DEVICE_CPU, nullptr) == ARK_ERROR_INVALID_ARGUMENT,
         "a workspace 4 bytes short accepted");
  bad = a; bad.dz = nullptr;
  EXPECT(ark_selective_scan_bwd(&bad, ws.data(), bytes, ARK_DEVICE_CPU, nullptr) == ARK_ERROR_INVALID_ARGUMENT,
         "dz NULL with z accepted");
}

#ifdef ARKERNELS_TEST_CUDA
// Device copy of a host vector, freed at scope exit.
struct Dev {
  float* p = nullptr;
  size_t n = 0;
  explicit Dev(const std::vector<float>& h) : n(h.size()) {
    cudaMalloc(&p, n * sizeof(float));
    cudaMemcpy(p, h.data(), n * sizeof(float), cudaMemcpyHostToDevice);
  }
  std::vector<float> get() const {
    std::vector<float> h(n);
    cudaMemcpy(h.data(), p, n * sizeof(float), cudaMemcpyDeviceToHost);
    return h;
  }
  ~Dev() { cudaFree(p); }
};

// The tuning knobs of one CUDA run (0 = the launcher's choice): the forward's launch shape
// (sscan_fwd_shape, sscan_fwd_threads), the backward's time chunks (sscan_bwd_chunks) and scalar
// staging (sscan_bwd_scalar_staging; both any build), and,
// the backward's vectorised dB/dC row sums (sscan_bwd_rowsum_vec: -1 off, 1 on beyond the default's
// N <= 32), the forward's time chunks (sscan_fwd_chunks), its generic path (sscan_fwd_paired_bc = -1);
// tuning builds only, the backward's batched staging, the forward's reduction (sscan_fwd_reduce: -1
// overlapped, 1 not, 2 shared memory) and paired B/C rows (sscan_fwd_paired_bc: 1, or 2 = the default's
// instance).
struct Variant {
  int fwd_shape = 0, fwd_threads = 0, bwd_batched = 0, fwd_reduce = 0, fwd_paired = 0, bwd_chunks = 0, bwd_scalar = 0,
      bwd_rowsum = 0, fwd_chunks = 0;
};
void set_knobs(const Variant& v) {
  ark_tuning_set("sscan_fwd_shape", v.fwd_shape);
  ark_tuning_set("sscan_fwd_threads", v.fwd_threads);
  ark_tuning_set("sscan_bwd_batched_staging", v.bwd_batched);
  ark_tuning_set("sscan_fwd_reduce", v.fwd_reduce);
  ark_tuning_set("sscan_fwd_paired_bc", v.fwd_paired);
  ark_tuning_set("sscan_bwd_chunks", v.bwd_chunks);
  ark_tuning_set("sscan_bwd_scalar_staging", v.bwd_scalar);
  ark_tuning_set("sscan_bwd_rowsum_vec", v.bwd_rowsum);
  ark_tuning_set("sscan_fwd_chunks", v.fwd_chunks);
}

// The CUDA forward's time-chunk plan, through the workspace it asks for: 2 (chunks - 1) batch dim N floats.
// Needs no device (the plan reads the SM count, 132 when there is none; these cases do not depend on it
// beyond "at least 16"). N = 16 runs 64-step tiles: L = 300 is 5 tiles.
void test_fwd_chunk_plan() {
  struct Case { int64_t L; int knob; int64_t chunks; } cases[] = {
      {300, 1, 1},     // knob 1: unchunked
      {300, 3, 3},     // 5 tiles in 3 chunks of 2, 2, 1
      {300, 4, 3},     // 4 asked for: chunks of 2 tiles leave 3 (never an empty chunk)
      {300, 10, 5},    // at most one chunk per tile
      {300, 0, 1},     // default: chunks need 4 tiles each, 5 tiles make one
      {4096, 0, 16}};  // default, 4 blocks (2 rows x 2 groups) of 2 channels: 64 tiles in 16 chunks of 4
  for (const Case& c : cases) {
    Problem p(3, 16, c.L, 4);
    Outputs o;
    ark_selective_scan_args a = args_for(p, o);
    ark_tuning_set("sscan_fwd_chunks", c.knob);
    size_t bytes = 1;
    EXPECT(ark_selective_scan_fwd_workspace_size(&a, ARK_DEVICE_CUDA, &bytes) == ARK_SUCCESS, "fwd workspace size: %s",
           ark_last_error_message());
    const size_t want = size_t(2 * (c.chunks - 1) * p.batch * p.dim * p.N) * sizeof(float);
    EXPECT(bytes == want, "L %lld, knob %d: forward workspace %zu bytes, expected %zu (%lld chunks)", (long long)c.L,
           c.knob, bytes, want, (long long)c.chunks);
  }
  ark_tuning_set("sscan_fwd_chunks", 0);
}

void test_cuda_matches_cpu(int64_t N, int64_t L, const Variant& v = {}, int64_t dim = 4) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device: CUDA checks skipped\n");
    return;
  }
  set_knobs(v);
  Problem p(11, N, L, dim);
  Outputs cpu;
  run_cpu(p, cpu);
  Outputs host;
  ark_selective_scan_args h = args_for(p, host);
  Dev u(p.u), delta(p.delta), A(p.A), B(p.B), C(p.C), D(p.D), z(p.z), bias(p.bias), h0(p.h0), w_out(p.w_out),
      w_last(p.w_last), out(host.out), last(host.last), ckpt(host.ckpt), y_pre(host.y_pre), du(host.du),
      ddelta(host.ddelta), dA(host.dA), dB(host.dB), dC(host.dC), dD(host.dD), dbias(host.dbias), dz(host.dz),
      dh0(host.dh0);
  ark_selective_scan_args a = h;
  a.u = u.p; a.delta = delta.p; a.A = A.p; a.B = B.p; a.C = C.p; a.D = D.p; a.z = z.p; a.delta_bias = bias.p;
  a.initial_state = h0.p; a.out = out.p; a.last_state = last.p; a.checkpoints = ckpt.p; a.y_pre = y_pre.p;
  a.dout = w_out.p; a.dlast_state = w_last.p; a.du = du.p; a.ddelta = ddelta.p; a.dA = dA.p; a.dB = dB.p;
  a.dC = dC.p; a.dD = dD.p; a.ddelta_bias = dbias.p; a.dz = dz.p; a.dinitial_state = dh0.p;
  size_t fwd_bytes = 0;
  EXPECT(ark_selective_scan_fwd_workspace_size(&a, ARK_DEVICE_CUDA, &fwd_bytes) == ARK_SUCCESS, "cuda forward workspace size");
  EXPECT(v.fwd_chunks <= 1 || fwd_bytes > 0, "forward: %d time chunks asked for, no workspace wanted", v.fwd_chunks);
  void* fwd_ws = nullptr;
  if (fwd_bytes) cudaMalloc(&fwd_ws, fwd_bytes);
  EXPECT(ark_selective_scan_fwd_with_workspace(&a, fwd_ws, fwd_bytes, ARK_DEVICE_CUDA, nullptr) == ARK_SUCCESS,
         "cuda forward: %s", ark_last_error_message());
  size_t bytes = 0;
  EXPECT(ark_selective_scan_bwd_workspace_size(&a, ARK_DEVICE_CUDA, &bytes) == ARK_SUCCESS, "cuda workspace size");
  void* ws = nullptr;
  cudaMalloc(&ws, bytes);
  EXPECT(ark_selective_scan_bwd(&a, ws, bytes, ARK_DEVICE_CUDA, nullptr) == ARK_SUCCESS, "cuda backward: %s",
         ark_last_error_message());
  EXPECT(cudaDeviceSynchronize() == cudaSuccess, "cuda kernels failed");
  cudaFree(ws);
  cudaFree(fwd_ws);
  const struct { const char* name; const Dev* d; const std::vector<float>* want; double tol; } checks[] = {
      {"out", &out, &cpu.out, 1e-5}, {"last_state", &last, &cpu.last, 1e-5}, {"du", &du, &cpu.du, 1e-4},
      {"ddelta", &ddelta, &cpu.ddelta, 1e-4}, {"dA", &dA, &cpu.dA, 1e-4}, {"dB", &dB, &cpu.dB, 1e-4},
      {"dC", &dC, &cpu.dC, 1e-4}, {"dD", &dD, &cpu.dD, 1e-4}, {"ddelta_bias", &dbias, &cpu.dbias, 1e-4},
      {"dz", &dz, &cpu.dz, 1e-4}, {"dinitial_state", &dh0, &cpu.dh0, 1e-4}};
  for (const auto& c : checks) {
    const double err = rel_error(c.d->get(), *c.want);
    EXPECT(err <= c.tol,
           "cuda %s (N=%lld L=%lld dim=%lld, forward shape %d/%d reduce %d paired %d chunks %d, backward batched %d "
           "chunks %d scalar %d rowsum %d): relative difference to the CPU path %.3g > %.0e",
           c.name, (long long)N, (long long)L, (long long)dim, v.fwd_shape, v.fwd_threads, v.fwd_reduce, v.fwd_paired,
           v.fwd_chunks, v.bwd_batched, v.bwd_chunks, v.bwd_scalar, v.bwd_rowsum, err, c.tol);
  }
  set_knobs({});
}
#endif

}  // namespace

int main() {
  test_cpu_matches_definition();
  test_bad_arguments();
#ifdef ARKERNELS_TEST_CUDA
  test_fwd_chunk_plan();
  test_cuda_matches_cpu(5, 45);
  // N = 16 (Mamba-1): every forward launch shape a default build compiles for it.
  const int shapes[][2] = {{0, 0}, {404, 128}, {404, 256}, {208, 128}, {208, 256}};
  for (const auto& s : shapes) test_cuda_matches_cpu(16, 300, {s[0], s[1]});
  // The generic forward (sscan_fwd_paired_bc = -1, any build) with its overlapped reduce-scatter, where the
  // default runs paired B/C rows: the path of constant B or C and packed sequences, on variable B and C, at
  // every N = 16 shape, unchunked and in 3 time chunks.
  for (const auto& s : shapes) {
    test_cuda_matches_cpu(16, 300, {s[0], s[1], 0, -1, -1});
    Variant v{s[0], s[1], 0, -1, -1};
    v.fwd_chunks = 3;
    test_cuda_matches_cpu(16, 300, v, 74);
  }
  // Backward time chunks (L = 300: 10 tiles): unchunked, 2 (the default here), 3 uneven, one per tile.
  // With the 16-byte staging (L = 300 fp32: aligned rows), the scalar one, and rows that are not
  // 16-byte aligned (L = 301: the scalar staging whatever the knob).
  for (int chunks : {1, 2, 3, 10}) {
    for (int scalar : {0, 1}) {
      Variant v;
      v.bwd_chunks = chunks;
      v.bwd_scalar = scalar;
      test_cuda_matches_cpu(16, 300, v);
      test_cuda_matches_cpu(5, 300, v);
    }
    Variant v;
    v.bwd_chunks = chunks;
    test_cuda_matches_cpu(16, 301, v);
  }
  // Forward time chunks: 2, 3 of uneven length, one per 64-step tile (L = 300: 5 tiles at N = 16,
  // 10 at N = 5 and 256), every forward shape of N = 16, fp32 rows not 16-byte aligned (L = 301:
  // scalar staging), and the checkpoints and last state the chunks write, which the backward reads.
  for (int chunks : {2, 3, 5}) {
    for (const auto& s : shapes) {
      Variant v;
      v.fwd_shape = s[0];
      v.fwd_threads = s[1];
      v.fwd_chunks = chunks;
      test_cuda_matches_cpu(16, 300, v);
    }
    Variant v;
    v.fwd_chunks = chunks;
    test_cuda_matches_cpu(16, 301, v, 74);
    test_cuda_matches_cpu(5, 300, v);
    test_cuda_matches_cpu(256, 300, v, 74);
  }
  // Full and partial blocks of channels (dim 74) at every backward shape: N = 16 .. 64 run K = 2
  // unchunked and K = 4 chunked, 128 K4R32, 256 K8R32; the dB/dC row sums vectorised (the default for
  // N <= 32) and not (sscan_bwd_rowsum_vec = -1).
  for (int64_t n : {16, 32, 64, 128, 256}) {
    for (int chunks : {1, 2}) {
      for (int rowsum : {0, -1}) {
        Variant v;
        v.bwd_chunks = chunks;
        v.bwd_rowsum = rowsum;
        test_cuda_matches_cpu(n, 300, v, 74);
      }
    }
  }
#ifdef ARKERNELS_TUNING_VARIANTS
  test_cuda_matches_cpu(5, 45, {0, 0, 1});
  test_cuda_matches_cpu(16, 300, {0, 0, 1});
  for (const auto& s : shapes) test_cuda_matches_cpu(16, 300, {s[0], s[1], 0, 1, -1});  // generic, not overlapped
  for (const auto& s : shapes) test_cuda_matches_cpu(16, 300, {s[0], s[1], 0, 2});  // shared-memory reduction
  test_cuda_matches_cpu(16, 45, {208, 256, 0, 2});  // one partial tile
  for (const auto& s : shapes) test_cuda_matches_cpu(16, 300, {s[0], s[1], 0, -1, 1});  // paired, overlapped
  test_cuda_matches_cpu(64, 300, {0, 0, 0, -1, 1}, 74);  // paired B/C at N > 16
  // Paired rows with the reduce-scatter not overlapped and the element type read at run time
  // (sscan_fwd_paired_bc = 1, sscan_fwd_reduce = 1), and the same compiled for the element type
  // (sscan_fwd_paired_bc = 2: the default's instance): every N = 16 shape, a partial block of channels
  // with a partial last tile, and time chunks.
  for (int paired : {1, 2}) {
    for (const auto& s : shapes) test_cuda_matches_cpu(16, 300, {s[0], s[1], 0, paired == 1 ? 1 : 0, paired});
    test_cuda_matches_cpu(16, 301, {0, 0, 0, paired == 1 ? 1 : 0, paired}, 74);
    for (int chunks : {2, 3}) {
      Variant v;
      v.fwd_reduce = paired == 1 ? 1 : 0;
      v.fwd_paired = paired;
      v.fwd_chunks = chunks;
      test_cuda_matches_cpu(16, 300, v, 74);
    }
  }
  test_cuda_matches_cpu(16, 300, {208, 256, 0, 2, 1});
  // Vectorised dB/dC row sums (sscan_bwd_rowsum_vec): every shape of its preconditions (N = 16 ..
  // 128; N = 5 and 256 check that the launcher keeps write_bwd_bc there), unchunked (K = 2 up to
  // N = 64) and chunked (K = 4), 16-byte and scalar staging, one and several blocks of channels;
  // L = 301: rows not 16-byte aligned (scalar staging whatever the knob).
  for (int chunks : {1, 2, 3, 10}) {
    for (int scalar : {0, 1}) {
      Variant v;
      v.bwd_chunks = chunks;
      v.bwd_scalar = scalar;
      v.bwd_rowsum = 1;
      test_cuda_matches_cpu(16, 300, v);
      test_cuda_matches_cpu(5, 300, v);
      if (chunks > 2) continue;
      for (int64_t n : {16, 32, 64, 128, 256}) test_cuda_matches_cpu(n, 300, v, 74);
    }
    Variant v;
    v.bwd_chunks = chunks;
    v.bwd_rowsum = 1;
    test_cuda_matches_cpu(16, 301, v, 74);
  }
#endif
#endif
  return finish("selective_scan C API");
}
