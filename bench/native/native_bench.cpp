// Native variant benchmark: times the CUDA kernels of the Mamba ops (and the block-sparse attention
// forward) through the public C API at the issue's headline shapes, once per launch-shape variant
// (tuning knobs, csrc/common/tuning.hpp), and checks every variant's output against the CPU kernel on
// the same inputs. Torch-free, so that a GPU machine can run it without building the torch bindings (it
// is built where the kernels are built and carried there, see scripts/device_kit.sh). The copy ceiling
// is measured in the same run.
//
// Timing: CUDA events around one call, median over repetitions, a 256 MiB memset before every call to
// evict the L2 (as triton.testing.do_bench does); the host-side cost of a C API call is a few
// microseconds, far less than the memset, so the GPU never waits for the host inside the events.
//
// Usage: native_bench [results.tsv [case ...]]   prints a table (and writes it as TSV when a path is
// given) for the named cases, or all of them (names at the end of main; `bsa` names every bsa_ case;
// results.tsv `-`: no TSV).
//
// Compiled as CUDA (bench/native/CMakeLists.txt) for one diagnostic kernel of its own: the copy probe
// of the causal_conv1d cases (a copy with the forward's tiling; a benchmark probe, not a library kernel).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "arkernels/arkernels.h"
// Block-sparse attention masks and their tile layouts, shared with the C API test.
#include "../../tests/capi/bsa_layouts.hpp"

extern "C" int ark_tuning_set(const char* name, int value);  // csrc/common/tuning.hpp (internal)

namespace {

// ------------------------------------------------------------------ host data

uint64_t g_rng = 0x9e3779b97f4a7c15ull;
float uniform() {  // [0, 1)
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return float(g_rng >> 40) / float(1ull << 24);
}
float normal() {
  const float a = uniform() + 1e-7f, b = uniform();
  return std::sqrt(-2.f * std::log(a)) * std::cos(6.2831853f * b);
}

uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
float from_bf16(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// A host tensor in fp32 or bf16 storage (bytes), filled by `gen`.
struct Host {
  ark_dtype dtype = ARK_FLOAT32;
  std::vector<char> bytes;
  size_t n = 0;
  Host() = default;
  Host(size_t count, ark_dtype dt, const std::function<float()>& gen) : dtype(dt), n(count) {
    bytes.resize(count * (dt == ARK_FLOAT32 ? 4 : 2));
    for (size_t i = 0; i < count; ++i) set(i, gen());
  }
  void set(size_t i, float v) {
    if (dtype == ARK_FLOAT32) std::memcpy(bytes.data() + 4 * i, &v, 4);
    else { const uint16_t b = to_bf16(v); std::memcpy(bytes.data() + 2 * i, &b, 2); }
  }
  float get(size_t i) const {
    if (dtype == ARK_FLOAT32) { float v; std::memcpy(&v, bytes.data() + 4 * i, 4); return v; }
    uint16_t b;
    std::memcpy(&b, bytes.data() + 2 * i, 2);
    return from_bf16(b);
  }
  void* data() { return bytes.data(); }
};

bool cuda_ok(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  std::printf("CUDA error in %s: %s\n", what, cudaGetErrorString(e));
  return false;
}

struct Device {
  void* ptr = nullptr;
  size_t size = 0;
  explicit Device(size_t bytes) : size(bytes) { cuda_ok(cudaMalloc(&ptr, bytes ? bytes : 16), "cudaMalloc"); }
  explicit Device(const Host& h) : Device(h.bytes.size()) { upload(h); }
  void upload(const Host& h) { cudaMemcpy(ptr, h.bytes.data(), h.bytes.size(), cudaMemcpyHostToDevice); }
  void download(Host& h) const { cudaMemcpy(h.bytes.data(), ptr, h.bytes.size(), cudaMemcpyDeviceToHost); }
  void poison() { cudaMemset(ptr, 0xff, size); }  // all-ones bytes: NaN in fp32 and bf16
  ~Device() { cudaFree(ptr); }
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
};

// ||got - want|| / ||want||; infinite when got has a non-finite element.
double rel_error(const Host& got, const Host& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.n; ++i) {
    const double g = got.get(i), w = want.get(i);
    if (!std::isfinite(g)) return INFINITY;
    num += (g - w) * (g - w);
    den += w * w;
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// ------------------------------------------------------------------ timing

constexpr size_t kFlushBytes = size_t(256) << 20;
void* g_flush = nullptr;
cudaEvent_t g_start, g_stop;

// Reads the flush buffer (xor of every word, stored only if it hits a value it never has, so that the
// loads stay): afterwards the L2 holds clean lines of that buffer and nothing of the timed call's data.
__global__ void read_flush(const uint4* __restrict__ p, size_t n, unsigned* sink) {
  unsigned acc = 0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    const uint4 v = p[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9e3779b9u) *sink = acc;
}

// Median ms of f() over repetitions (about 0.25 s of calls, 5..200), L2 evicted before each.
// The eviction writes kFlushBytes (as do_bench's zero_() does): the L2 then holds up to its size in
// dirty lines that the timed call writes back to HBM as it evicts them, up to ~50-60 MB of extra
// traffic, which weighs on calls that move little. clean: the flush reads instead (read_flush), so
// the timed call finds an L2 of clean lines, none of its own data (compare both: bench/NOTES.md).
double time_ms(const std::function<ark_status()>& f, bool clean = false) {
  if (f() != ARK_SUCCESS || !cuda_ok(cudaDeviceSynchronize(), "warm-up")) return NAN;
  std::vector<float> t;
  float total = 0.f;
  while (t.size() < 200 && (t.size() < 5 || total < 250.f)) {
    if (clean) {
      read_flush<<<1056, 512>>>(static_cast<const uint4*>(g_flush), kFlushBytes / 16,
                                static_cast<unsigned*>(g_flush));
    } else {
      cudaMemsetAsync(g_flush, int(t.size() & 0xff), kFlushBytes);
    }
    cudaEventRecord(g_start);
    f();
    cudaEventRecord(g_stop);
    cudaEventSynchronize(g_stop);
    float ms = 0.f;
    cudaEventElapsedTime(&ms, g_start, g_stop);
    t.push_back(ms);
    total += ms;
  }
  if (!cuda_ok(cudaGetLastError(), "timed calls")) return NAN;
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

double g_copy_gbps = 0;

double copy_ceiling_gbps() {
  const size_t bytes = size_t(1) << 30;
  Device a(bytes), b(bytes);
  cudaMemset(a.ptr, 1, bytes);
  const double ms = time_ms([&] {
    return cudaMemcpyAsync(b.ptr, a.ptr, bytes, cudaMemcpyDeviceToDevice) == cudaSuccess ? ARK_SUCCESS
                                                                                          : ARK_ERROR_CUDA;
  });
  return 2.0 * double(bytes) / (ms * 1e-3) / 1e9;
}

// ------------------------------------------------------------------ report

FILE* g_tsv = nullptr;

void report(const char* op, const char* shape, const std::string& variant, const char* mode, double ms, double bytes,
            double err, double tol, const char* extra = "") {
  const double gbps = bytes / (ms * 1e-3) / 1e9;
  const bool ok = err <= tol && std::isfinite(ms);
  std::printf("%-22s %-22s %-26s %-8s %9.4f ms %7.0f GB/s %5.1f%% copy  err %.1e  %s %s\n", op, shape, variant.c_str(),
              mode, ms, gbps, 100.0 * gbps / g_copy_gbps, err, ok ? "ok" : "FAILED", extra);
  if (g_tsv)
    std::fprintf(g_tsv, "%s\t%s\t%s\t%s\t%.5f\t%.0f\t%.1f\t%.2e\t%s\t%s\n", op, shape, variant.c_str(), mode, ms, gbps,
                 100.0 * gbps / g_copy_gbps, err, ok ? "ok" : "FAILED", extra);
  std::fflush(stdout);
  if (g_tsv) std::fflush(g_tsv);
}

void report_error(const char* op, const char* shape, const std::string& variant, ark_status s) {
  std::printf("%-22s %-22s %-26s error: %s %s\n", op, shape, variant.c_str(), ark_status_name(s), ark_last_error_message());
  if (g_tsv) std::fprintf(g_tsv, "%s\t%s\t%s\terror\t%s\n", op, shape, variant.c_str(), ark_last_error_message());
}

// One checked call of a variant: runs `call` with `d_out` poisoned and copies the output into `got`;
// false (and reported) on an error status.
bool run_once(const char* op, const char* shape, const std::string& variant, const std::function<ark_status()>& call,
              Device& d_out, Host& got) {
  d_out.poison();
  if (const ark_status s = call()) {
    report_error(op, shape, variant, s);
    return false;
  }
  cudaDeviceSynchronize();
  d_out.download(got);
  return true;
}

// ------------------------------------------------------------------ selective_state_update

// Mamba-1 (H = 1, P = 4096, N = 16, fp32 inputs) or Mamba-2 (H = 64, P = 64, N = 128, bf16 inputs,
// dt / A / D / dt_bias broadcast over the head as the models pass them); fp32 state, softplus, z, D.
void bench_ssu(bool mamba2) {
  const int64_t b = 64, H = mamba2 ? 64 : 1, P = mamba2 ? 64 : 4096, N = mamba2 ? 128 : 16;
  const ark_dtype xt = mamba2 ? ARK_BFLOAT16 : ARK_FLOAT32;
  const int64_t rows = b * H * P, xs = mamba2 ? 2 : 4;
  const char* shape = mamba2 ? "64x64x64x128 bf16" : "64x4096x16 fp32";
  Host state(size_t(rows * N), ARK_FLOAT32, normal);
  Host x(size_t(rows), xt, normal), z(size_t(rows), xt, normal);
  Host dt(size_t(mamba2 ? b * H : rows), xt, [] { return 0.5f * normal() - 1.f; });
  Host A(size_t(mamba2 ? H : P * N), ARK_FLOAT32, [] { return -(uniform() + 0.1f); });
  Host D(size_t(mamba2 ? H : P), ARK_FLOAT32, normal), bias(size_t(mamba2 ? H : P), ARK_FLOAT32, [] { return 0.1f * normal(); });
  Host Bm(size_t(b * N), xt, normal), Cm(size_t(b * N), xt, normal);
  Host out(size_t(rows), xt, [] { return 0.f; });

  ark_selective_state_update_args a;
  std::memset(&a, 0, sizeof(a));
  a.batch = b; a.tokens = 1; a.state_batch = b; a.heads = H; a.head_dim = P; a.dstate = N; a.groups = 1;
  const int64_t st[4] = {H * P * N, P * N, N, 1}, tok[4] = {H * P, H * P, P, 1};
  std::memcpy(a.state_strides, st, sizeof(st));
  std::memcpy(a.x_strides, tok, sizeof(tok));
  std::memcpy(a.z_strides, tok, sizeof(tok));
  std::memcpy(a.out_strides, tok, sizeof(tok));
  if (mamba2) {
    const int64_t dts[4] = {H, H, 1, 0}, As[3] = {1, 0, 0}, hp[2] = {1, 0};
    std::memcpy(a.dt_strides, dts, sizeof(dts));
    std::memcpy(a.A_strides, As, sizeof(As));
    std::memcpy(a.D_strides, hp, sizeof(hp));
    std::memcpy(a.dt_bias_strides, hp, sizeof(hp));
  } else {
    const int64_t As[3] = {P * N, N, 1}, hp[2] = {P, 1};
    std::memcpy(a.dt_strides, tok, sizeof(tok));
    std::memcpy(a.A_strides, As, sizeof(As));
    std::memcpy(a.D_strides, hp, sizeof(hp));
    std::memcpy(a.dt_bias_strides, hp, sizeof(hp));
  }
  const int64_t bc[4] = {N, N, N, 1};
  std::memcpy(a.B_strides, bc, sizeof(bc));
  std::memcpy(a.C_strides, bc, sizeof(bc));
  a.dt_softplus = 1;
  a.state_dtype = ARK_FLOAT32; a.input_dtype = xt; a.A_dtype = ARK_FLOAT32; a.D_dtype = ARK_FLOAT32;
  a.dt_bias_dtype = ARK_FLOAT32;

  // CPU oracle on copies of the state.
  Host state_cpu = state, out_cpu = out;
  ark_selective_state_update_args c = a;
  c.state = state_cpu.data(); c.x = x.data(); c.dt = dt.data(); c.A = A.data(); c.B = Bm.data(); c.C = Cm.data();
  c.D = D.data(); c.z = z.data(); c.dt_bias = bias.data(); c.out = out_cpu.data();
  if (const ark_status s = ark_selective_state_update(&c, ARK_DEVICE_CPU, nullptr)) return report_error("ssu", shape, "cpu", s);

  Device d_state(state), d_x(x), d_dt(dt), d_A(A), d_B(Bm), d_C(Cm), d_D(D), d_z(z), d_bias(bias), d_out(out);
  a.state = d_state.ptr; a.x = d_x.ptr; a.dt = d_dt.ptr; a.A = d_A.ptr; a.B = d_B.ptr; a.C = d_C.ptr; a.D = d_D.ptr;
  a.z = d_z.ptr; a.dt_bias = d_bias.ptr; a.out = d_out.ptr;
  const double bytes = double(2 * rows * N * 4 + 3 * rows * xs + 2 * b * N * xs + (mamba2 ? b * H : rows) * xs +
                              (mamba2 ? H * 12 : P * 4 * (N + 2)));
  // (ssu_kernel, rows, prefetch, lean): the default (head-tile kernel), the per-row kernel's variants,
  // the head-tile kernel's rows per lane group, with and without its lean form (-1: 64-bit offsets and
  // run-time parameter dtypes).
  const int variants[][4] = {{0, 0, 0, 0}, {0, 0, 0, -1}, {1, 1, 0, 0}, {1, 2, 0, 0}, {1, 1, 1, 0},
                             {2, 1, 0, 0}, {2, 2, 0, 0}, {2, 4, 0, 0}, {2, 1, 0, -1}, {2, 2, 0, -1}, {2, 4, 0, -1}};
  for (const auto& v : variants) {
    ark_tuning_set("ssu_kernel", v[0]);
    ark_tuning_set("ssu_rows", v[1]);
    ark_tuning_set("ssu_prefetch", v[2]);
    ark_tuning_set("ssu_lean", v[3]);
    const std::string variant = (v[0] == 0 ? std::string("default")
                                           : std::string(v[0] == 1 ? "rows=" : "tile rows=") + std::to_string(v[1]) +
                                                 (v[2] ? " prefetch" : "")) +
                                (v[3] < 0 ? " lean off" : "");
    d_state.upload(state);
    const auto call = [&] { return ark_selective_state_update(&a, ARK_DEVICE_CUDA, nullptr); };
    Host got_state = state, got_out = out;
    if (!run_once("selective_state_update", shape, variant, call, d_out, got_out)) continue;
    d_state.download(got_state);
    const double err = std::max(rel_error(got_state, state_cpu), rel_error(got_out, out_cpu));
    // Timed calls keep advancing the state in place (bounded: exp(dt A) < 1).
    const double ms = time_ms(call);
    report("selective_state_update", shape, variant, "step", ms, bytes, err, mamba2 ? 1e-2 : 1e-5);
    if (v[0] == 0 && v[3] == 0)
      report("selective_state_update", shape, "default clean-L2", "step", time_ms(call, true), bytes, err,
             mamba2 ? 1e-2 : 1e-5);
  }
  ark_tuning_set("ssu_kernel", 0);
  ark_tuning_set("ssu_rows", 0);
  ark_tuning_set("ssu_prefetch", 0);
  ark_tuning_set("ssu_lean", 0);
  // The ceiling at this size: a device-to-device copy of the state alone (read and written), timed as the
  // kernel is; its "% copy" column is against the 1 GiB copy, as every row's.
  Device d_copy(state);
  const size_t state_bytes = size_t(rows * N * 4);
  const double copy_ms = time_ms([&] {
    return cudaMemcpyAsync(d_copy.ptr, d_state.ptr, state_bytes, cudaMemcpyDeviceToDevice) == cudaSuccess ? ARK_SUCCESS
                                                                                                         : ARK_ERROR_CUDA;
  });
  report("selective_state_update", shape, "state-size memcpy", "copy", copy_ms, double(2 * state_bytes), 0.0, 0.0);
}

// ------------------------------------------------------------------ causal_conv1d

// Copy probe: the forward's tiling without its math, to tell whether the tiling itself or the conv
// math and halo limit the forward. A row of n 16-byte vectors is cut into tiles of NV * 32 vectors;
// lane l moves vectors u * 32 + l of its tile (as the forward does); all NV loads are issued, then
// the NV stores. Tiled: one warp per tile, 4 warps per block, the tile found by the forward's two
// 64-bit divisions. Persistent: a grid of resident blocks whose warps walk tiles w, w + n, ...;
// PREFETCH: the next tile's loads are issued before the current tile is stored (the persistent
// forward's order), else each tile is loaded, then stored.
constexpr int kProbeWarps = 4;

template <int NV>
__device__ __forceinline__ void probe_load(const uint4* in, int64_t tile, int64_t vecs, int lane, uint4 (&v)[NV]) {
#pragma unroll
  for (int u = 0; u < NV; ++u) {
    const int64_t i = tile * (NV * 32) + u * 32 + lane;
    if (i < vecs) v[u] = in[i];
  }
}
// Stores vectors U0 .. U1-1 of a tile.
template <int NV, int U0 = 0, int U1 = NV>
__device__ __forceinline__ void probe_store(uint4* out, int64_t tile, int64_t vecs, int lane, const uint4 (&v)[NV]) {
#pragma unroll
  for (int u = U0; u < U1; ++u) {
    const int64_t i = tile * (NV * 32) + u * 32 + lane;
    if (i < vecs) out[i] = v[u];
  }
}

template <int NV>
__global__ void __launch_bounds__(32 * kProbeWarps) copy_probe_tiled(const uint4* __restrict__ in,
                                                                   uint4* __restrict__ out, int64_t rows,
                                                                   int64_t vecs, int64_t tiles, int64_t dim,
                                                                   int64_t batch_stride, int64_t dim_stride) {
  const int64_t w = int64_t(blockIdx.x) * kProbeWarps + threadIdx.x / 32;
  const int64_t row = w / tiles, tile = w - row * tiles;
  if (row >= rows) return;
  const int64_t b = row / dim;  // the forward's second division: (batch, channel) for the strides
  const int64_t base = b * batch_stride + (row - b * dim) * dim_stride;
  uint4 v[NV];
  probe_load<NV>(in + base, tile, vecs, threadIdx.x & 31, v);
  probe_store<NV>(out + base, tile, vecs, threadIdx.x & 31, v);
}

template <int NV, bool PREFETCH>
__global__ void __launch_bounds__(32 * kProbeWarps) copy_probe_persistent(const uint4* __restrict__ in,
                                                                        uint4* __restrict__ out, int64_t rows,
                                                                        int64_t vecs, int64_t tiles) {
  const int lane = threadIdx.x & 31;
  const int64_t n = int64_t(gridDim.x) * kProbeWarps, total = rows * tiles;
  int64_t t = int64_t(blockIdx.x) * kProbeWarps + threadIdx.x / 32;
  if (t >= total) return;
  uint4 v[NV];
  probe_load<NV>(in + t / tiles * vecs, t % tiles, vecs, lane, v);
  while (true) {
    const int64_t next = t + n;
    if constexpr (PREFETCH) {
      // As the persistent forward: the first store waits for the current tile (all loads count on one
      // scoreboard, so a first use after the next tile's loads would wait for those too), then the
      // next tile's loads, then the other stores.
      uint4 nv[NV];
      const int64_t tile = t % tiles;
      uint4* row = out + t / tiles * vecs;
      probe_store<NV, 0, 1>(row, tile, vecs, lane, v);
      if (next < total) probe_load<NV>(in + next / tiles * vecs, next % tiles, vecs, lane, nv);
      probe_store<NV, 1>(row, tile, vecs, lane, v);
      if (next >= total) return;
#pragma unroll
      for (int u = 0; u < NV; ++u) v[u] = nv[u];
    } else {
      probe_store<NV>(out + t / tiles * vecs, t % tiles, vecs, lane, v);
      if (next >= total) return;
      probe_load<NV>(in + next / tiles * vecs, next % tiles, vecs, lane, v);
    }
    t = next;
  }
}

// Times the probe kernels on x -> out (rows of L bf16 elements, L a multiple of 8) and reports each
// as a row `conv1d_copy_probe` (the error column: 0 when out equals x byte for byte).
void bench_copy_probe(const char* shape, const Host& x, Device& d_x, Device& d_out, int64_t rows, int64_t L,
                      int64_t dim) {
  const int64_t vecs = L / 8;
  const double bytes = 2.0 * double(rows * L) * 2;
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const auto* in = static_cast<const uint4*>(d_x.ptr);
  auto* out = static_cast<uint4*>(d_out.ptr);
  const auto run = [&](const std::string& variant, const std::function<void()>& launch) {
    const auto call = [&] {
      launch();
      return cudaGetLastError() == cudaSuccess ? ARK_SUCCESS : ARK_ERROR_CUDA;
    };
    Host got = x;
    d_out.poison();
    if (call() != ARK_SUCCESS || !cuda_ok(cudaDeviceSynchronize(), "copy probe")) {
      std::printf("%-22s %-22s %-26s launch failed\n", "conv1d_copy_probe", shape, variant.c_str());
      return;
    }
    d_out.download(got);
    const double err = std::memcmp(got.bytes.data(), x.bytes.data(), x.bytes.size()) == 0 ? 0.0 : INFINITY;
    report("conv1d_copy_probe", shape, variant, "copy", time_ms(call), bytes, err, 0.0);
  };
  const auto probes = [&](auto nv_tag) {
    constexpr int NV = decltype(nv_tag)::value;
    const int64_t tiles = (vecs + NV * 32 - 1) / (NV * 32);
    const int64_t blocks = (rows * tiles + kProbeWarps - 1) / kProbeWarps;
    const std::string nv = "nv=" + std::to_string(NV);
    run(nv + " tiled", [&] {
      copy_probe_tiled<NV><<<unsigned(blocks), 32 * kProbeWarps>>>(in, out, rows, vecs, tiles, dim, dim * vecs, vecs);
    });
    int per_sm = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, copy_probe_persistent<NV, false>, 32 * kProbeWarps, 0);
    const unsigned grid = unsigned(std::min<int64_t>(blocks, int64_t(sms) * std::max(per_sm, 1)));
    run(nv + " persistent", [&] { copy_probe_persistent<NV, false><<<grid, 32 * kProbeWarps>>>(in, out, rows, vecs, tiles); });
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, copy_probe_persistent<NV, true>, 32 * kProbeWarps, 0);
    const unsigned grid_p = unsigned(std::min<int64_t>(blocks, int64_t(sms) * std::max(per_sm, 1)));
    run(nv + " persistent prefetch",
        [&] { copy_probe_persistent<NV, true><<<grid_p, 32 * kProbeWarps>>>(in, out, rows, vecs, tiles); });
  };
  probes(std::integral_constant<int, 1>{});
  probes(std::integral_constant<int, 2>{});
  probes(std::integral_constant<int, 4>{});
  probes(std::integral_constant<int, 8>{});
}

void bench_conv1d(int64_t B, int64_t D, int64_t L) {
  const int W = 4;
  char shape[64];
  std::snprintf(shape, sizeof(shape), "%lldx%lldx%lld bf16", (long long)B, (long long)D, (long long)L);
  Host x(size_t(B * D * L), ARK_BFLOAT16, normal), w(size_t(D * W), ARK_FLOAT32, [] { return 0.5f * normal(); });
  Host bias(size_t(D), ARK_FLOAT32, normal), out(size_t(B * D * L), ARK_BFLOAT16, [] { return 0.f; });
  Host out_cpu = out;
  if (const ark_status s = ark_causal_conv1d_fwd(x.data(), w.data(), bias.data(), ARK_FLOAT32, nullptr, ARK_FLOAT32,
                                                 out_cpu.data(), nullptr, B, D, L, W, D * L, L, 1, ARK_BFLOAT16,
                                                 ARK_DEVICE_CPU, nullptr))
    return report_error("causal_conv1d", shape, "cpu", s);
  Device d_x(x), d_w(w), d_bias(bias), d_out(out);
  auto call = [&] {
    return ark_causal_conv1d_fwd(d_x.ptr, d_w.ptr, d_bias.ptr, ARK_FLOAT32, nullptr, ARK_FLOAT32, d_out.ptr, nullptr, B,
                                 D, L, W, D * L, L, 1, ARK_BFLOAT16, ARK_DEVICE_CUDA, nullptr);
  };
  const double bytes = 2.0 * double(B * D * L) * 2;
  // Knobs (common/tuning.hpp): vectors per lane, warps per block, early halo, vec halo (lane 0's halo
  // as one 16-byte load with the tile), persistent grid (1: resident blocks, next tile's loads issued
  // before the current tile is computed).
  struct V { int nv, warps, early_halo, vec_halo, persistent; };
  // persistent -1: the tiled kernel (one tile per warp); 0: the default (persistent for full tiles).
  const V variants[] = {{0, 0, 0, 0, 0},  {1, 4, 0, 0, -1}, {2, 4, 0, 0, -1}, {4, 4, 0, 0, -1}, {4, 4, 0, 1, -1},
                        {4, 4, 0, 0, 1},  {2, 4, 0, 0, 1},  {4, 4, 0, 1, 1}};
  for (const V& v : variants) {
    ark_tuning_set("conv1d_fwd_warps", v.warps);
    ark_tuning_set("conv1d_fwd_vectors", v.nv);
    ark_tuning_set("conv1d_fwd_early_halo", v.early_halo);
    ark_tuning_set("conv1d_fwd_vec_halo", v.vec_halo);
    ark_tuning_set("conv1d_fwd_persistent", v.persistent);
    const std::string variant = v.nv == 0 ? std::string("default")
                                          : "nv=" + std::to_string(v.nv) + " warps=" + std::to_string(v.warps) +
                                                (v.early_halo ? " halo" : "") +
                                                (v.persistent > 0 ? " persist" : v.persistent < 0 ? " tiled" : "") +
                                                (v.vec_halo ? (v.persistent > 0 ? "+vhalo" : " vhalo") : "");
    Host got = out;
    if (!run_once("causal_conv1d", shape, variant, call, d_out, got)) continue;
    const double err = rel_error(got, out_cpu);
    report("causal_conv1d", shape, variant, "fwd", time_ms(call), bytes, err, 1e-2);
    if (v.nv == 0) report("causal_conv1d", shape, "default clean-L2", "fwd", time_ms(call, true), bytes, err, 1e-2);
  }
  ark_tuning_set("conv1d_fwd_warps", 0);
  ark_tuning_set("conv1d_fwd_vectors", 0);
  ark_tuning_set("conv1d_fwd_early_halo", 0);
  ark_tuning_set("conv1d_fwd_vec_halo", 0);
  ark_tuning_set("conv1d_fwd_persistent", 0);
  bench_copy_probe(shape, x, d_x, d_out, B * D, L, D);
}

// ------------------------------------------------------------------ selective_scan

// The issue's headline case: bf16 u, delta, input-dependent B, C (one group); fp32 A, D; no z.
// `variants`: time (and check against the CPU) every forward launch shape; false: only the default
// forward + backward, without the CPU oracle (a profiler's run).
void bench_sscan(int64_t b, int64_t d, int64_t L, int64_t N, bool run_variants) {
  char shape[64];
  std::snprintf(shape, sizeof(shape), "b%lld d%lld l%lld n%lld", (long long)b, (long long)d, (long long)L, (long long)N);
  const size_t rows = size_t(b * d * L), bc = size_t(b * N * L);
  Host u(rows, ARK_BFLOAT16, normal), delta(rows, ARK_BFLOAT16, [] { return 0.01f + 0.1f * uniform(); });
  Host A(size_t(d * N), ARK_FLOAT32, [] { return -(1.7f * uniform() + 0.3f); });
  Host Bm(bc, ARK_BFLOAT16, normal), Cm(bc, ARK_BFLOAT16, normal), D(size_t(d), ARK_FLOAT32, normal);
  Host out(rows, ARK_BFLOAT16, [] { return 0.f; });
  const int64_t nck = (L + ARK_SELECTIVE_SCAN_CHECKPOINT - 1) / ARK_SELECTIVE_SCAN_CHECKPOINT;

  ark_selective_scan_args a;
  std::memset(&a, 0, sizeof(a));
  a.batch = b; a.dim = d; a.seqlen = L; a.dstate = N; a.ngroups = 1; a.dtype = ARK_BFLOAT16;
  a.B_variable = a.C_variable = 1; a.num_seqs = b;
  ark_selective_scan_args c = a;
  Host out_cpu = out;
  if (run_variants) {
  c.u = u.data(); c.delta = delta.data(); c.A = static_cast<const float*>(A.data()); c.B = Bm.data(); c.C = Cm.data();
  c.D = static_cast<const float*>(D.data()); c.out = out_cpu.data();
  if (const ark_status s = ark_selective_scan_fwd(&c, ARK_DEVICE_CPU, nullptr)) return report_error("selective_scan", shape, "cpu", s);
  }

  Device d_u(u), d_delta(delta), d_A(A), d_B(Bm), d_C(Cm), d_D(D), d_out(out);
  Device d_ck(size_t(b * d * nck * N) * 4), d_last(size_t(b * d * N) * 4);
  a.u = d_u.ptr; a.delta = d_delta.ptr; a.A = static_cast<const float*>(d_A.ptr); a.B = d_B.ptr; a.C = d_C.ptr;
  a.D = static_cast<const float*>(d_D.ptr); a.out = d_out.ptr;
  const double bytes = 3.0 * double(rows) * 2 + 2.0 * double(bc) * 2;
  const double exps = double(b * d * L * N);
  // reduce: the sscan_fwd_reduce knob (0 the launcher's choice, -1 shuffles overlapped, 1 not overlapped, 2 through
  // shared memory); paired: sscan_fwd_paired_bc (0 the launcher's choice, -1 generic rows, 1 B and C in paired rows
  // with compile-time strides, 2 the same compiled for the element type); chunks: sscan_fwd_chunks (0 the
  // launcher's choice, 1 unchunked, n time chunks). Shape 0: the launcher's choice; the default is timed first and
  // last (its spread between the two rows is the noise floor of the others). The default where B and C are both
  // variable at N <= 16 is paired rows, not overlapped, compiled for the element type (kFwdPairedDefault): so a
  // shape row with knobs 0 runs that form; "default piped generic" is the default before session 14, "default
  // unpiped paired-bc" the same form as today's with the element type read at run time.
  struct V { int shape, threads, reduce, paired, chunks; };
  const V variants[] = {{0, 0, 0, 0, 0},      {0, 0, -1, -1, 0},    {208, 256, -1, 1, 1}, {208, 256, 2, -1, 1},
                        {208, 256, 1, -1, 1}, {208, 256, 1, 1, 1},  {404, 128, 0, 0, 1},  {404, 128, 2, -1, 1},
                        {208, 128, 0, 0, 1},  {208, 128, 2, -1, 1}, {404, 256, 0, 0, 1},  {208, 64, 0, 0, 1},
                        {208, 256, 0, 0, 4},  {208, 256, 0, 0, 6},  {208, 256, 0, 0, 8},  {208, 256, 0, 0, 12},
                        {208, 128, 0, 0, 4},  {404, 128, 0, 0, 6},  {0, 0, 1, 1, 0},      {0, 0, 0, 0, 0}};
  for (const V& v : variants) {
    if (!run_variants) break;
    ark_tuning_set("sscan_fwd_shape", v.shape);
    ark_tuning_set("sscan_fwd_threads", v.threads);
    ark_tuning_set("sscan_fwd_reduce", v.reduce);
    ark_tuning_set("sscan_fwd_paired_bc", v.paired);
    ark_tuning_set("sscan_fwd_chunks", v.chunks);
    const std::string variant =
        (v.shape ? "K" + std::to_string(v.shape / 100) + "R" + std::to_string(v.shape % 100) + " T" + std::to_string(v.threads)
                 : std::string("default")) +
        (v.reduce == -1 ? " piped" : v.reduce == 1 ? " unpiped" : v.reduce == 2 ? " smem-reduce" : "") +
        (v.paired == -1 ? " generic" : v.paired == 1 ? " paired-bc" : v.paired == 2 ? " static-dtype" : "") +
        (v.chunks > 1 ? " " + std::to_string(v.chunks) + " chunks" : "");
    size_t ws_bytes = 0;
    if (const ark_status s = ark_selective_scan_fwd_workspace_size(&a, ARK_DEVICE_CUDA, &ws_bytes)) {
      report_error("selective_scan", shape, variant, s);
      continue;
    }
    Device ws(ws_bytes);
    const auto fwd = [&] { return ark_selective_scan_fwd_with_workspace(&a, ws.ptr, ws_bytes, ARK_DEVICE_CUDA, nullptr); };
    Host got = out;
    if (!run_once("selective_scan", shape, variant, fwd, d_out, got)) continue;
    const double ms = time_ms(fwd);
    char extra[64];
    std::snprintf(extra, sizeof(extra), "%.2f Texp/s", exps / (ms * 1e-3) / 1e12);
    report("selective_scan", shape, variant, "fwd", ms, bytes, rel_error(got, out_cpu), 1e-2, extra);
  }
  ark_tuning_set("sscan_fwd_shape", 0);
  ark_tuning_set("sscan_fwd_threads", 0);
  ark_tuning_set("sscan_fwd_reduce", 0);
  ark_tuning_set("sscan_fwd_paired_bc", 0);
  ark_tuning_set("sscan_fwd_chunks", 0);

  // Forward (with checkpoints and last state, as autograd runs it) + backward, default shapes.
  Host g(rows, ARK_BFLOAT16, normal);
  Device d_g(g), d_du(rows * 2), d_ddelta(rows * 2), d_dA(size_t(d * N) * 4), d_dB(bc * 2), d_dC(bc * 2), d_dD(size_t(d) * 4);
  a.checkpoints = static_cast<float*>(d_ck.ptr);
  a.last_state = static_cast<float*>(d_last.ptr);
  a.dout = d_g.ptr; a.du = d_du.ptr; a.ddelta = d_ddelta.ptr; a.dA = static_cast<float*>(d_dA.ptr);
  a.dB = d_dB.ptr; a.dC = d_dC.ptr; a.dD = static_cast<float*>(d_dD.ptr);
  // Backward variants, each timed with the default forward: the default (16-byte staging; time
  // chunks where the channels are few), unchunked (sscan_bwd_chunks = 1), 5 time chunks, the scalar
  // staging (sscan_bwd_scalar_staging), and (tuning builds) the batched staging and the vectorised
  // dB/dC row sums (sscan_bwd_rowsum_vec). The workspace is sized per variant (its size follows the
  // launch shape).
  const struct { const char* name; int chunks, batched, scalar, rowsum; } bwd_variants[] = {
      {"default", 0, 0, 0, 0}, {"bwd unchunked", 1, 0, 0, 0}, {"bwd 5 chunks", 5, 0, 0, 0},
      {"bwd scalar staging", 0, 0, 1, 0}, {"bwd batched staging", 0, 1, 0, 0}, {"bwd rowsum off", 0, 0, 0, -1}};
  for (const auto& bv : bwd_variants) {
    ark_tuning_set("sscan_bwd_chunks", bv.chunks);
    ark_tuning_set("sscan_bwd_batched_staging", bv.batched);
    ark_tuning_set("sscan_bwd_scalar_staging", bv.scalar);
    ark_tuning_set("sscan_bwd_rowsum_vec", bv.rowsum);
    size_t ws_bytes = 0;
    if (const ark_status s = ark_selective_scan_bwd_workspace_size(&a, ARK_DEVICE_CUDA, &ws_bytes)) {
      report_error("selective_scan", shape, bv.name, s);
      continue;
    }
    Device ws(ws_bytes);
    size_t fwd_bytes = 0;
    if (const ark_status s = ark_selective_scan_fwd_workspace_size(&a, ARK_DEVICE_CUDA, &fwd_bytes)) {
      report_error("selective_scan", shape, bv.name, s);
      continue;
    }
    Device fwd_ws(fwd_bytes);
    auto fwd_bwd = [&] {
      const ark_status s = ark_selective_scan_fwd_with_workspace(&a, fwd_ws.ptr, fwd_bytes, ARK_DEVICE_CUDA, nullptr);
      return s ? s : ark_selective_scan_bwd(&a, ws.ptr, ws_bytes, ARK_DEVICE_CUDA, nullptr);
    };
    const char* variant = bv.name;
    if (const ark_status s = fwd_bwd()) {
      report_error("selective_scan", shape, variant, s);
      continue;
    }
    const double ms = time_ms(fwd_bwd);
    report("selective_scan", shape, variant, "fwd+bwd", ms, bytes + 5.0 * double(rows) * 2, 0.0, 1.0,
           "(bwd error: checked by the C API test)");
    if (!run_variants) break;
  }
  ark_tuning_set("sscan_bwd_chunks", 0);
  ark_tuning_set("sscan_bwd_batched_staging", 0);
  ark_tuning_set("sscan_bwd_scalar_staging", 0);
  ark_tuning_set("sscan_bwd_rowsum_vec", 0);
}

// ------------------------------------------------------------------ block_sparse_attention

// Device copy of an int32 vector (NULL for an empty one).
struct DeviceInts {
  void* ptr = nullptr;
  explicit DeviceInts(const std::vector<int32_t>& v) {
    if (v.empty()) return;
    cuda_ok(cudaMalloc(&ptr, v.size() * 4), "cudaMalloc");
    cudaMemcpy(ptr, v.data(), v.size() * 4, cudaMemcpyHostToDevice);
  }
  ~DeviceInts() { cudaFree(ptr); }
  DeviceInts(const DeviceInts&) = delete;
  DeviceInts& operator=(const DeviceInts&) = delete;
  const int32_t* get() const { return static_cast<const int32_t*>(ptr); }
};

// Waits for the device; a fault is reported (the context is lost, and with it the rest of the case) and true.
bool faulted(const char* op, const char* shape, const std::string& variant) {
  const cudaError_t e = cudaDeviceSynchronize();
  if (e == cudaSuccess) return false;
  std::printf("%-22s %-34s %-26s error: CUDA %s\n", op, shape, variant.c_str(), cudaGetErrorString(e));
  if (g_tsv) std::fprintf(g_tsv, "%s\t%s\t%s\terror\tCUDA %s\n", op, shape, variant.c_str(), cudaGetErrorString(e));
  std::fflush(stdout);
  return true;
}

// The forward (bf16, (B, H, L, D) contiguous, MHA, with lse) over `mask` at tiling 128 x bk (bk = 32 for
// D 128, 64 for D 64: the tilings the CUDA forward is used with), once per kernel instance: the default and
// every (bsa_fwd_schedule, bsa_fwd_stages). Each variant is checked first against the CPU forward on the
// slice batch 0, head 0 (out relative error and lse max abs error, bf16 tolerance), and the whole output
// must be finite (every query of these masks sees a key); a variant that fails is reported FAILED and not
// timed. TFLOP/s counts the visible pairs only: 4 D (QK^T and PV) per visible pair and (batch, head).
void bench_bsa(const char* name, int64_t B, int64_t H, int64_t D, const bsa_layouts::MaskDef& mask) {
  const char* op = "block_sparse_attention";
  const int64_t L = mask.L, S = mask.S;
  const int32_t bq = 128, bk = D == 128 ? 32 : 64;
  char shape[96];
  std::snprintf(shape, sizeof(shape), "%s b%lld h%lld l%lld d%lld", name, (long long)B, (long long)H, (long long)L,
                (long long)D);
  if (!ark_block_sparse_attention_cuda_supported(D, bq, bk, ARK_BFLOAT16)) {
    std::printf("%-22s %-34s skipped: the CUDA forward does not run head_dim %lld at %d x %d bf16 on this device\n",
                op, shape, (long long)D, bq, bk);
    if (g_tsv) std::fprintf(g_tsv, "%s\t%s\t-\tskip\tCUDA forward not supported on this device\n", op, shape);
    std::fflush(stdout);
    return;
  }
  const bsa_layouts::Layout lay = bsa_layouts::build_layout(mask, bq, bk, bsa_layouts::Partial::kRule);
  const int64_t visible = bsa_layouts::count_visible(mask);
  const double flops = 4.0 * double(D) * double(visible) * double(B * H);
  const size_t n_q = size_t(B * H * L * D), n_kv = size_t(B * H * S * D);
  Host q(n_q, ARK_BFLOAT16, normal), k(n_kv, ARK_BFLOAT16, normal), v(n_kv, ARK_BFLOAT16, normal);
  const float scale = float(1.0 / std::sqrt(double(D)));
  const int64_t q_st[3] = {H * L * D, L * D, D}, kv_st[3] = {H * S * D, S * D, D};

  // CPU oracle on the slice batch 0, head 0: its base pointers and the full tensors' strides.
  Host want(size_t(L * D), ARK_BFLOAT16, [] { return 0.f; }), want_lse(size_t(L), ARK_FLOAT32, [] { return 0.f; });
  const ark_block_mask host_mask = bsa_layouts::c_mask(lay, mask);
  if (const ark_status s = ark_block_sparse_attention_fwd(q.data(), k.data(), v.data(), want.data(),
                                                          static_cast<float*>(want_lse.data()), 1, 1, 1, L, S, D, q_st,
                                                          kv_st, kv_st, &host_mask, scale, ARK_BFLOAT16,
                                                          ARK_DEVICE_CPU, nullptr))
    return report_error(op, shape, "cpu", s);

  Device d_q(q), d_k(k), d_v(v), d_out(n_q * 2), d_lse(size_t(B * H * L) * 4);
  const bsa_layouts::Rule& ru = mask.rule;
  const DeviceInts run_ptr(lay.run_ptr), runs(lay.runs), bits(lay.bits), q_level(ru.q_level), k_level(ru.k_level),
      q_doc(ru.q_doc), k_doc(ru.k_doc), q_group(ru.q_group), k_group(ru.k_group);
  const ark_block_mask dev_mask{bq,          bk,          run_ptr.get(), runs.get(),    bits.get(),    q_level.get(),
                                k_level.get(), q_doc.get(), k_doc.get(),  q_group.get(), k_group.get(), ru.window};
  const auto call = [&] {
    return ark_block_sparse_attention_fwd(d_q.ptr, d_k.ptr, d_v.ptr, d_out.ptr, static_cast<float*>(d_lse.ptr), B, H,
                                          H, L, S, D, q_st, kv_st, kv_st, &dev_mask, scale, ARK_BFLOAT16,
                                          ARK_DEVICE_CUDA, nullptr);
  };
  // Bytes: q, k, v read and out written once, lse (a floor, not the traffic of a tiled kernel).
  const double bytes = double(n_q + 2 * n_kv + n_q) * 2 + double(B * H * L) * 4;
  const double tol = 1e-2;
  char vis[96];
  std::snprintf(vis, sizeof(vis), "visible %lld pairs (%.1f%%)", (long long)visible,
                100.0 * double(visible) / double(std::max<int64_t>(L * S, 1)));
  std::printf("%-22s %-34s %s, %zu runs at %d x %d\n", op, shape, vis, lay.runs.size() / 4, bq, bk);
  // (bsa_fwd_schedule, bsa_fwd_stages); (0, 0): the launcher's default.
  // (4, 3) at D 128 does not fit (refused): its row reports the error.
  const int variants[][2] = {{0, 0}, {1, 2}, {1, 3}, {2, 2}, {2, 3}, {3, 2}, {3, 3}, {4, 2}, {4, 3}};
  std::string best;
  double best_ms = INFINITY, default_ms = NAN;
  for (const auto& var : variants) {
    const std::string variant =
        var[0] == 0 ? std::string("default") : "s" + std::to_string(var[0]) + "x" + std::to_string(var[1]);
    if (!ark_tuning_set("bsa_fwd_schedule", var[0]) || !ark_tuning_set("bsa_fwd_stages", var[1])) {
      std::printf("%-22s %-34s %-26s error: knobs bsa_fwd_schedule / bsa_fwd_stages unknown to this library\n", op,
                  shape, variant.c_str());
      if (g_tsv) std::fprintf(g_tsv, "%s\t%s\t%s\terror\tknobs unknown\n", op, shape, variant.c_str());
      break;
    }
    d_out.poison();
    d_lse.poison();
    if (const ark_status s = call()) {
      report_error(op, shape, variant, s);
      continue;
    }
    if (faulted(op, shape, variant)) break;
    Host got(n_q, ARK_BFLOAT16, [] { return 0.f; }), got_lse(size_t(B * H * L), ARK_FLOAT32, [] { return 0.f; });
    d_out.download(got);
    d_lse.download(got_lse);
    // The slice (batch 0, head 0) against the CPU: the first L x D elements of out, the first L of lse.
    Host slice(size_t(L * D), ARK_BFLOAT16, [] { return 0.f; });
    std::memcpy(slice.data(), got.data(), slice.bytes.size());
    const double out_err = rel_error(slice, want);
    double lse_err = 0;
    for (int64_t i = 0; i < L; ++i) {
      const double g = got_lse.get(size_t(i)), w = want_lse.get(size_t(i));
      lse_err = std::max(lse_err, g == w ? 0.0 : std::isnan(g) ? INFINITY : std::fabs(g - w));
    }
    int64_t non_finite = 0;  // anywhere in out / lse: a tile of another (batch, head) left unwritten
    for (size_t i = 0; i < got.n; ++i) non_finite += !std::isfinite(got.get(i));
    for (size_t i = 0; i < got_lse.n; ++i) non_finite += !std::isfinite(got_lse.get(i));
    const double err = non_finite ? INFINITY : std::max(out_err, lse_err);
    char extra[192];
    if (!(err <= tol)) {
      std::snprintf(extra, sizeof(extra), "WRONG (not timed): out rel err %.1e, lse err %.1e, %lld non-finite; %s",
                    out_err, lse_err, (long long)non_finite, vis);
      report(op, shape, variant, "fwd", NAN, bytes, err, tol, extra);
      continue;
    }
    const double ms = time_ms(call);
    std::snprintf(extra, sizeof(extra), "%.1f TFLOP/s (visible), lse err %.1e; %s", flops / (ms * 1e-3) / 1e12,
                  lse_err, vis);
    report(op, shape, variant, "fwd", ms, bytes, err, tol, extra);
    if (var[0] == 0) default_ms = ms;
    if (std::isfinite(ms) && ms < best_ms) best_ms = ms, best = variant;
  }
  ark_tuning_set("bsa_fwd_schedule", 0);
  ark_tuning_set("bsa_fwd_stages", 0);
  if (!best.empty()) {
    char vs_default[48] = "the default failed";
    if (std::isfinite(default_ms))
      std::snprintf(vs_default, sizeof(vs_default), "%.2fx the default", default_ms / best_ms);
    std::printf("%-22s %-34s fastest correct: %s %.4f ms (%.1f TFLOP/s, %s)\n", op, shape, best.c_str(), best_ms,
                flops / (best_ms * 1e-3) / 1e12, vs_default);
  }
  std::fflush(stdout);
}

// The Hopper backward kernel (ark_block_sparse_attention_bwd_dkdv, bf16, MHA) over `mask` at 128 x 128: dK / dV
// alone ("dkdv", dQ left to another kernel) and with dQ added by TMA reduce-adds ("dkdv+dq", the zeroing memset of the fp32
// buffer timed with it). lse comes from the CUDA forward (so P is a softmax), delta is random: values are checked
// by the C API test against a float64 oracle, here only that dK, dV (and dQ) come out finite. TFLOP/s count the
// visible pairs: 8 D per pair and (batch, head) for the four dK / dV products, 10 D with dQ.
void bench_bsa_bwd(const char* name, int64_t B, int64_t H, int64_t D, const bsa_layouts::MaskDef& mask) {
  const char* op = "block_sparse_attention";
  const int64_t L = mask.L, S = mask.S;
  constexpr int32_t kTile = 128;
  char shape[96];
  std::snprintf(shape, sizeof(shape), "%s b%lld h%lld l%lld d%lld", name, (long long)B, (long long)H, (long long)L,
                (long long)D);
  if (!ark_block_sparse_attention_dkdv_cuda_supported(D, kTile, kTile, ARK_BFLOAT16) ||
      !ark_block_sparse_attention_cuda_supported(D, kTile, kTile, ARK_BFLOAT16)) {
    std::printf("%-22s %-34s skipped: the CUDA backward / forward does not run head_dim %lld bf16 here\n", op, shape,
                (long long)D);
    if (g_tsv) std::fprintf(g_tsv, "%s\t%s\t-\tskip\tCUDA backward not supported on this device\n", op, shape);
    return;
  }
  const bsa_layouts::Layout lay = bsa_layouts::build_layout(mask, kTile, kTile, bsa_layouts::Partial::kRule);
  const bsa_layouts::Transposed tr = bsa_layouts::transpose(lay, (S + kTile - 1) / kTile);
  const int64_t visible = bsa_layouts::count_visible(mask);
  const size_t n_q = size_t(B * H * L * D), n_kv = size_t(B * H * S * D), n_rows = size_t(B * H * L);
  Host q(n_q, ARK_BFLOAT16, normal), k(n_kv, ARK_BFLOAT16, normal), v(n_kv, ARK_BFLOAT16, normal),
      dout(n_q, ARK_BFLOAT16, normal), delta(n_rows, ARK_FLOAT32, [] { return 0.1f * normal(); });
  const float scale = float(1.0 / std::sqrt(double(D)));
  const int64_t q_st[3] = {H * L * D, L * D, D}, kv_st[3] = {H * S * D, S * D, D};
  Device d_q(q), d_k(k), d_v(v), d_do(dout), d_delta(delta), d_out(n_q * 2), d_lse(n_rows * 4), d_dk(n_kv * 2),
      d_dv(n_kv * 2), d_dq(n_q * 4);
  const bsa_layouts::Rule& ru = mask.rule;
  const DeviceInts run_ptr(lay.run_ptr), runs(lay.runs), bits(lay.bits), k_run_ptr(tr.run_ptr), k_runs(tr.runs),
      k_tile_bits(tr.tile_of), q_level(ru.q_level), k_level(ru.k_level), q_doc(ru.q_doc), k_doc(ru.k_doc),
      q_group(ru.q_group), k_group(ru.k_group);
  const ark_block_mask dev_mask{kTile,       kTile,       run_ptr.get(), runs.get(),    bits.get(),
                                q_level.get(), k_level.get(), q_doc.get(), k_doc.get(), q_group.get(),
                                k_group.get(), ru.window};
  const ark_block_mask_keys keys{k_run_ptr.get(), k_runs.get(), k_tile_bits.get()};
  if (const ark_status s =
          ark_block_sparse_attention_fwd(d_q.ptr, d_k.ptr, d_v.ptr, d_out.ptr, static_cast<float*>(d_lse.ptr), B, H, H,
                                         L, S, D, q_st, kv_st, kv_st, &dev_mask, scale, ARK_BFLOAT16, ARK_DEVICE_CUDA,
                                         nullptr))
    return report_error(op, shape, "fwd for lse", s);
  for (const bool with_dq : {false, true}) {
    const char* variant = with_dq ? "cuda bwd dkdv+dq" : "cuda bwd dkdv";
    const auto call = [&] {
      if (with_dq && cudaMemsetAsync(d_dq.ptr, 0, n_q * 4) != cudaSuccess) return ARK_ERROR_CUDA;
      return ark_block_sparse_attention_bwd_dkdv(
          d_q.ptr, d_k.ptr, d_v.ptr, d_do.ptr, static_cast<const float*>(d_lse.ptr),
          static_cast<const float*>(d_delta.ptr), d_dk.ptr, d_dv.ptr, with_dq ? static_cast<float*>(d_dq.ptr) : nullptr,
          B, H, H, L, S, D, q_st, kv_st, kv_st, q_st, &dev_mask, &keys, scale, ARK_BFLOAT16, ARK_DEVICE_CUDA, nullptr);
    };
    d_dk.poison();
    d_dv.poison();
    if (const ark_status s = call()) {
      report_error(op, shape, variant, s);
      continue;
    }
    if (faulted(op, shape, variant)) return;
    Host dk(n_kv, ARK_BFLOAT16, [] { return 0.f; }), dv(n_kv, ARK_BFLOAT16, [] { return 0.f; }),
        dq(with_dq ? n_q : 0, ARK_FLOAT32, [] { return 0.f; });
    d_dk.download(dk);
    d_dv.download(dv);
    if (with_dq) d_dq.download(dq);
    int64_t non_finite = 0;
    for (const Host* h : {&dk, &dv, &dq})
      for (size_t i = 0; i < h->n; ++i) non_finite += !std::isfinite(h->get(i));
    const double flops = (with_dq ? 10.0 : 8.0) * double(D) * double(visible) * double(B * H);
    const double bytes = double(n_q * 2 + 2 * n_kv) * 2 + double(n_kv) * 2 * 2 + (with_dq ? double(n_q) * 4 : 0.0);
    const double ms = non_finite ? NAN : time_ms(call);
    char extra[160];
    std::snprintf(extra, sizeof(extra), "%.1f TFLOP/s (visible); %lld non-finite outputs", flops / (ms * 1e-3) / 1e12,
                  (long long)non_finite);
    report(op, shape, variant, "bwd", ms, bytes, non_finite ? INFINITY : 0.0, 1.0, extra);
  }
}

// VAR: scales of 1, 2, 3, 4, 5, 6, 8, 10, 13, 16 squared tokens (L = 680), block-causal over the scales.
bsa_layouts::MaskDef var_mask() {
  std::vector<int64_t> lengths;
  for (const int64_t side : {1, 2, 3, 4, 5, 6, 8, 10, 13, 16}) lengths.push_back(side * side);
  const bsa_layouts::Rule r = bsa_layouts::block_causal_rule(lengths);
  const int64_t L = int64_t(r.q_level.size());
  return bsa_layouts::rule_mask(L, L, r);
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // rows survive a run the kit's timeout cuts off
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("native_bench: no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  if (argc > 1 && std::strcmp(argv[1], "-") != 0) g_tsv = std::fopen(argv[1], "w");
  cudaMalloc(&g_flush, kFlushBytes);
  cudaEventCreate(&g_start);
  cudaEventCreate(&g_stop);
  g_copy_gbps = copy_ceiling_gbps();
  std::printf("copy ceiling: %.0f GB/s (1 GiB device-to-device, read + write)\n", g_copy_gbps);
  // Copies of the sizes the decode-step cases move, after either flush (time_ms): what a plain copy
  // of that size reaches in each L2 state.
  for (const size_t mib : {size_t(16), size_t(128)}) {
    Device a(mib << 20), b(mib << 20);
    cudaMemset(a.ptr, 1, mib << 20);
    const auto copy = [&] {
      return cudaMemcpyAsync(b.ptr, a.ptr, mib << 20, cudaMemcpyDeviceToDevice) == cudaSuccess ? ARK_SUCCESS
                                                                                                : ARK_ERROR_CUDA;
    };
    const std::string shape = std::to_string(mib) + " MiB";
    report("copy", shape.c_str(), "write flush", "copy", time_ms(copy), 2.0 * double(mib << 20), 0, 1);
    report("copy", shape.c_str(), "clean-L2", "copy", time_ms(copy, true), 2.0 * double(mib << 20), 0, 1);
  }
  if (g_tsv) std::fprintf(g_tsv, "copy\t-\t-\t-\t-\t%.0f\n", g_copy_gbps);
  // Cases by name; all of them when none is given (e.g. `native_bench out.tsv sscan_big` for a profiler).
  // sscan_big_default: only the default forward + backward at the big shape, for a profiler.
  const struct { const char* name; std::function<void()> run; } cases[] = {
      {"ssu_mamba1", [] { bench_ssu(false); }},
      {"ssu_mamba2", [] { bench_ssu(true); }},
      {"conv1d_small", [] { bench_conv1d(8, 1536, 2048); }},
      {"conv1d_big", [] { bench_conv1d(4, 4096, 4096); }},
      {"sscan_big", [] { bench_sscan(4, 2048, 4096, 16, true); }},
      {"sscan_small", [] { bench_sscan(2, 1536, 2048, 16, true); }},
      {"sscan_lm", [] { bench_sscan(8, 1536, 2048, 16, true); }},  // one layer of the 130M Mamba-1 LM bench
      {"sscan_big_default", [] { bench_sscan(4, 2048, 4096, 16, false); }},
      // block_sparse_attention forward, bf16, every kernel instance (`bsa` names the four).
      {"bsa_causal", [] { bench_bsa("causal", 4, 16, 128, bsa_layouts::rule_mask(4096, 4096, bsa_layouts::causal_rule(4096, 4096))); }},
      {"bsa_var", [] { bench_bsa("var", 16, 16, 64, var_mask()); }},
      // ACDiT SCAM: 16 clean + 16 noisy blocks of 256 tokens.
      {"bsa_scam", [] { bench_bsa("scam", 2, 16, 128, bsa_layouts::rule_mask(8192, 8192, bsa_layouts::skip_causal_rule(16, 256))); }},
      {"bsa_sliding", [] {
         bench_bsa("sliding1024", 2, 16, 128, bsa_layouts::rule_mask(8192, 8192, bsa_layouts::causal_rule(8192, 8192, 1024)));
       }},
      // The Hopper backward kernel (dK / dV, and with dQ by TMA reduce-adds) at the same four cases.
      {"bsa_bwd_causal", [] {
         bench_bsa_bwd("causal", 4, 16, 128, bsa_layouts::rule_mask(4096, 4096, bsa_layouts::causal_rule(4096, 4096)));
       }},
      {"bsa_bwd_var", [] { bench_bsa_bwd("var", 16, 16, 64, var_mask()); }},
      {"bsa_bwd_scam", [] {
         bench_bsa_bwd("scam", 2, 16, 128, bsa_layouts::rule_mask(8192, 8192, bsa_layouts::skip_causal_rule(16, 256)));
       }},
      {"bsa_bwd_sliding", [] {
         bench_bsa_bwd("sliding1024", 2, 16, 128,
                       bsa_layouts::rule_mask(8192, 8192, bsa_layouts::causal_rule(8192, 8192, 1024)));
       }},
  };
  for (const auto& c : cases) {
    bool wanted = argc <= 2 && std::strcmp(c.name, "sscan_big_default") != 0;
    for (int i = 2; i < argc; ++i)
      wanted = wanted || std::strcmp(argv[i], c.name) == 0 ||
               (std::strcmp(argv[i], "bsa") == 0 && std::strncmp(c.name, "bsa_", 4) == 0);
    if (wanted) c.run();
  }
  if (g_tsv) std::fclose(g_tsv);
  return cuda_ok(cudaDeviceSynchronize(), "end") ? 0 : 1;
}
