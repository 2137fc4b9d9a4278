// causal_conv1d on CUDA (torch-free).
//
// Forward and backward: one warp per tile of NV * 32 vectors of one (batch, channel) row; lane l owns
// vector u * 32 + l of the tile (lane-major, so each warp-wide load moves 512 contiguous bytes). All
// NV 16-byte loads of a lane are issued before any is used. The W-1 inputs before a lane's vector (the
// halo) come from the previous lane by shuffle, from lane 31 of the previous sub-chunk, or, for the
// tile's first vector only, from memory (3 scalar loads that hit the lines the neighbouring warp
// loads). So every input element is read from DRAM once and every output written once: the kernels
// are bandwidth-bound, like a copy.
//
// The backward recomputes the pre-activation, forms gpre = grad_out * act'(pre), and needs gpre at
// the W-1 positions after the lane's vector (next lane by shuffle; past the tile's end recomputed from
// memory). dweight/dbias: per-warp partial sums written to a workspace, then reduced per channel in a
// fixed order by a second kernel (deterministic; no float atomics).
//
// Decode update: one thread per (batch, channel); the state row is read, the tokens convolved and
// the row rewritten in place (see causal_conv1d.h for the circular-buffer mode).
//
// 64-bit offsets throughout. Design notes and the derivation: docs/ops/causal_conv1d.md.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/device_math.cuh"
#include "common/status.hpp"
#include "common/tuning.hpp"
#include "ops/causal_conv1d/causal_conv1d.cuh"

namespace ark {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpsPerBlock = 4;
constexpr int kThreads = 32 * kWarpsPerBlock;

// Elements per 16-byte vector.
template <typename T> constexpr int kVec = 16 / int(sizeof(T));

// Vectors per lane per tile. Forward: 4 (64 bytes in flight per lane and tensor before any math).
// Backward: 2 (it holds x, grad_out and gpre per element; more would spill registers). Rows shorter
// than one such tile use 1, so short sequences still spread over many warps.
constexpr int kFwdNV = 4;
constexpr int kBwdNV = 2;

template <typename T, int V> struct alignas(16) Vec {
  T e[V];
};

// Elements that `p` lies past a 16-byte boundary.
template <typename T> __device__ __forceinline__ int misalignment(const void* p) {
  return int((reinterpret_cast<uintptr_t>(p) & 15u) / sizeof(T));
}

__device__ __forceinline__ float warp_sum(float v) {
  // Butterfly: a fixed order, so the same sum on every run.
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

// What one (batch, channel) row of the forward or backward needs: pointers, weights, bias.
template <typename T, int W>
struct RowContext {
  const T* x;
  int64_t row, b, c, L;
  const void* init;  // initial states, or nullptr
  ark_dtype init_dtype;
  float w[W];
  float bias;

  // xpad at x position `pos` (xpad index pos + W - 1): x inside [0, L), the initial states (or zeros)
  // just before it, zeros elsewhere (those values never reach an output that is stored).
  __device__ __forceinline__ float x_at(int64_t pos) const {
    if (pos >= L) return 0.f;
    if (pos >= 0) return to_f32(x[pos]);
    if (init != nullptr && pos >= -(W - 1)) return load_f32(init, row * (W - 1) + (W - 1) + pos, init_dtype);
    return 0.f;
  }

  // bias + sum_i w[i] * seq[i] over the window seq[0 .. W) (seq[W-1] is the current position).
  __device__ __forceinline__ float pre(const float* seq) const {
    float acc = bias;
#pragma unroll
    for (int i = 0; i < W; ++i) acc = fmaf(w[i], seq[i], acc);
    return acc;
  }
};

template <typename T, int W>
__device__ __forceinline__ RowContext<T, W> row_context(const void* x, int64_t x_batch_stride, int64_t x_dim_stride,
                                                        const void* weight, const void* bias, ark_dtype param_dtype,
                                                        const void* init, ark_dtype init_dtype, int64_t row,
                                                        int64_t dim, int64_t L) {
  RowContext<T, W> rc;
  rc.row = row;
  rc.b = row / dim;
  rc.c = row - rc.b * dim;
  rc.L = L;
  rc.x = static_cast<const T*>(x) + rc.b * x_batch_stride + rc.c * x_dim_stride;
  rc.init = init;
  rc.init_dtype = init_dtype;
#pragma unroll
  for (int i = 0; i < W; ++i) rc.w[i] = load_f32(weight, rc.c * W + i, param_dtype);
  rc.bias = bias != nullptr ? load_f32(bias, rc.c, param_dtype) : 0.f;
  return rc;
}

// The warp's (row, tile): warps are numbered row-major over rows x tiles_per_row.
struct WarpTask {
  int64_t row, tile;
  int lane;
};
template <int WARPS = kWarpsPerBlock>
__device__ __forceinline__ WarpTask warp_task(int64_t tiles_per_row) {
  const int64_t w = int64_t(blockIdx.x) * WARPS + threadIdx.x / 32;
  WarpTask t;
  t.row = w / tiles_per_row;
  t.tile = w - t.row * tiles_per_row;
  t.lane = threadIdx.x & 31;
  return t;
}

// Loads NV vectors of V elements starting at i0[u] from a row of a (batch, dim, L) tensor:
// 16-byte loads where the whole vector lies in [0, L) and the row shares the tile grid's alignment,
// else element by element through `slow(pos)`. All fast loads are issued before any value is used.
template <typename T, int NV, typename Slow>
__device__ __forceinline__ void load_vectors(const T* row, const int64_t (&i0)[NV], int64_t L, bool vec_ok,
                                             float (&out)[NV][kVec<T>], Slow slow) {
  constexpr int V = kVec<T>;
  Vec<T, V> raw[NV];
  bool fast[NV];
#pragma unroll
  for (int u = 0; u < NV; ++u) {
    fast[u] = vec_ok && i0[u] >= 0 && i0[u] + V <= L;
    if (fast[u]) raw[u] = *reinterpret_cast<const Vec<T, V>*>(row + i0[u]);
  }
#pragma unroll
  for (int u = 0; u < NV; ++u) {
#pragma unroll
    for (int k = 0; k < V; ++k) out[u][k] = fast[u] ? to_f32(raw[u].e[k]) : slow(i0[u] + k);
  }
}

// Stores V values at row[i0 ..]: one 16-byte store when the vector lies in [0, L) (the row's tile
// grid is aligned to this tensor), else only the elements inside [0, L).
template <typename T>
__device__ __forceinline__ void store_vector(T* row, int64_t i0, int64_t L, const float (&v)[kVec<T>]) {
  constexpr int V = kVec<T>;
  if (i0 >= 0 && i0 + V <= L) {
    Vec<T, V> raw;
#pragma unroll
    for (int k = 0; k < V; ++k) raw.e[k] = from_f32<T>(v[k]);
    *reinterpret_cast<Vec<T, V>*>(row + i0) = raw;
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k)
      if (i0 + k >= 0 && i0 + k < L) row[i0 + k] = from_f32<T>(v[k]);
  }
}

// seq[0 .. W-1) = xpad at the W-1 positions before vector u of this lane, seq[W-1 ..) = the vector.
// The halo comes from the previous lane, from lane 31's previous vector, or (lane 0, u = 0) from memory.
// `halo0`, when given: lane 0's halo of vector 0, loaded beforehand (else loaded here).
template <typename T, int W, int NV>
__device__ __forceinline__ void window(const RowContext<T, W>& rc, const float (&xv)[NV][kVec<T>], int u, int64_t i0,
                                       int lane, float (&seq)[W - 1 + kVec<T>], const float* halo0 = nullptr) {
  constexpr int V = kVec<T>;
  static_assert(W - 1 <= V, "the halo must come from one neighbouring vector");
#pragma unroll
  for (int m = 0; m < W - 1; ++m) {
    const float prev_lane = __shfl_up_sync(kFullMask, xv[u][V - (W - 1) + m], 1);
    const float prev_sub = u > 0 ? __shfl_sync(kFullMask, xv[u > 0 ? u - 1 : 0][V - (W - 1) + m], 31) : 0.f;
    seq[m] = lane > 0 ? prev_lane : (u > 0 ? prev_sub : (halo0 ? halo0[m] : rc.x_at(i0 - (W - 1) + m)));
  }
#pragma unroll
  for (int k = 0; k < V; ++k) seq[W - 1 + k] = xv[u][k];
}

// Tiles per row for tiles of `tile` elements when row starts lie up to `origin_pad` elements past a
// 16-byte boundary (at least one, so every row has a warp for its states).
int64_t tiles_per_row(int64_t L, int64_t tile, int64_t origin_pad) {
  const int64_t n = (L + origin_pad + tile - 1) / tile;
  return n > 0 ? n : 1;
}

// ------------------------------------------------------------------------------------------ forward

// EARLY_HALO: lane 0 loads its halo before the tile's vectors, so that its (usually L2-resident) read
// overlaps them instead of following the shuffles that need them (prepared, not yet measured on a
// GPU: tuning builds only, bench/NOTES.md).
template <typename T, int W, int NV, int WARPS, bool EARLY_HALO = false>
__global__ void __launch_bounds__(32 * WARPS) causal_conv1d_fwd_kernel(const CausalConv1dFwdParams p,
                                                                        int64_t tiles) {
  constexpr int V = kVec<T>;
  constexpr int kSub = 32 * V;
  const WarpTask task = warp_task<WARPS>(tiles);
  if (task.row >= p.batch * p.dim) return;  // the whole warp leaves together
  const int lane = task.lane;
  const int64_t L = p.L;
  const RowContext<T, W> rc = row_context<T, W>(p.x, p.x_batch_stride, p.x_dim_stride, p.weight, p.bias,
                                                p.param_dtype, p.initial_states, p.states_dtype, task.row, p.dim, L);
  T* out = static_cast<T*>(p.out) + task.row * L;
  // The tile grid starts `origin` elements before the row so that output vectors are 16-byte aligned.
  const int origin = misalignment<T>(out);
  const bool x_vec = misalignment<T>(rc.x) == origin;

  int64_t i0[NV];
#pragma unroll
  for (int u = 0; u < NV; ++u) i0[u] = task.tile * (NV * kSub) - origin + int64_t(u) * kSub + int64_t(lane) * V;
  float halo0[W - 1];
  if constexpr (EARLY_HALO) {
#pragma unroll
    for (int m = 0; m < W - 1; ++m) halo0[m] = lane == 0 ? rc.x_at(i0[0] - (W - 1) + m) : 0.f;
  }
  float xv[NV][V];
  load_vectors<T, NV>(rc.x, i0, L, x_vec, xv, [&](int64_t pos) { return rc.x_at(pos); });

#pragma unroll
  for (int u = 0; u < NV; ++u) {
    float seq[W - 1 + V];
    window<T, W, NV>(rc, xv, u, i0[u], lane, seq, EARLY_HALO ? halo0 : nullptr);
    float o[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float v = rc.pre(&seq[k]);
      o[k] = p.silu ? silu_f32(v) : v;
    }
    store_vector<T>(out, i0[u], L, o);
  }
  // Final states: xpad[L .. L + W - 1), written by the row's last tile.
  if (p.final_states != nullptr && task.tile == tiles - 1 && lane == 0) {
    T* fin = static_cast<T*>(p.final_states) + task.row * (W - 1);
#pragma unroll
    for (int m = 0; m < W - 1; ++m) fin[m] = from_f32<T>(rc.x_at(L - (W - 1) + m));
  }
}

// ----------------------------------------------------------------------------------------- backward

template <typename T, int W, int NV>
__global__ void __launch_bounds__(kThreads) causal_conv1d_bwd_kernel(const CausalConv1dBwdParams p, int64_t tiles,
                                                                      float* __restrict__ partials) {
  constexpr int V = kVec<T>;
  constexpr int kSub = 32 * V;
  const WarpTask task = warp_task(tiles);
  if (task.row >= p.batch * p.dim) return;
  const int lane = task.lane;
  const int64_t L = p.L;
  const RowContext<T, W> rc = row_context<T, W>(p.x, p.x_batch_stride, p.x_dim_stride, p.weight, p.bias,
                                                p.param_dtype, p.initial_states, p.states_dtype, task.row, p.dim, L);
  const T* g = static_cast<const T*>(p.grad_out) + rc.b * p.g_batch_stride + rc.c * p.g_dim_stride;
  const T* gfin = p.grad_final_states != nullptr ? static_cast<const T*>(p.grad_final_states) + task.row * (W - 1)
                                                 : nullptr;
  T* dx = static_cast<T*>(p.dx) + task.row * L;
  const int origin = misalignment<T>(dx);
  const bool x_vec = misalignment<T>(rc.x) == origin;
  const bool g_vec = misalignment<T>(g) == origin;
  const bool silu = p.silu;

  // gpre at one position, from memory (the positions past the tile, and the initial-state gradient).
  const auto gpre_at = [&](int64_t t) -> float {
    if (t < 0 || t >= L) return 0.f;
    float gt = to_f32(g[t]);
    if (silu) {
      float seq[W];
#pragma unroll
      for (int i = 0; i < W; ++i) seq[i] = rc.x_at(t - (W - 1) + i);
      gt *= silu_grad_f32(rc.pre(seq));
    }
    return gt;
  };

  int64_t i0[NV];
#pragma unroll
  for (int u = 0; u < NV; ++u) i0[u] = task.tile * (NV * kSub) - origin + int64_t(u) * kSub + int64_t(lane) * V;
  float xv[NV][V], gv[NV][V];
  load_vectors<T, NV>(rc.x, i0, L, x_vec, xv, [&](int64_t pos) { return rc.x_at(pos); });
  load_vectors<T, NV>(g, i0, L, g_vec, gv,
                      [&](int64_t pos) { return pos >= 0 && pos < L ? to_f32(g[pos]) : 0.f; });

  // 1. gpre = grad_out * act'(pre) (zero outside [0, L)); partial sums of dweight and dbias.
  float gp[NV][V];
  float dw[W], db = 0.f;
#pragma unroll
  for (int i = 0; i < W; ++i) dw[i] = 0.f;
#pragma unroll
  for (int u = 0; u < NV; ++u) {
    float seq[W - 1 + V];
    window<T, W, NV>(rc, xv, u, i0[u], lane, seq);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int64_t pos = i0[u] + k;
      float gk = gv[u][k];
      if (silu) gk *= silu_grad_f32(rc.pre(&seq[k]));
      gk = (pos >= 0 && pos < L) ? gk : 0.f;
      gp[u][k] = gk;
#pragma unroll
      for (int i = 0; i < W; ++i) dw[i] = fmaf(gk, seq[k + i], dw[i]);
      db += gk;
    }
  }

  // 2. dx[pos] = sum_i w[i] * gpre[pos + W - 1 - i] (+ the final-state gradient in the last W-1).
#pragma unroll
  for (int u = 0; u < NV; ++u) {
    float G[V + W - 1];
#pragma unroll
    for (int k = 0; k < V; ++k) G[k] = gp[u][k];
#pragma unroll
    for (int m = 0; m < W - 1; ++m) {
      const float next_lane = __shfl_down_sync(kFullMask, gp[u][m], 1);
      const float next_sub = u + 1 < NV ? __shfl_sync(kFullMask, gp[u + 1 < NV ? u + 1 : u][m], 0) : 0.f;
      G[V + m] = lane < 31 ? next_lane : (u + 1 < NV ? next_sub : gpre_at(i0[u] + V + m));
    }
    float d[V];
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float acc = 0.f;
#pragma unroll
      for (int i = 0; i < W; ++i) acc = fmaf(rc.w[i], G[k + W - 1 - i], acc);
      const int64_t pos = i0[u] + k;
      if (gfin != nullptr && pos >= L - (W - 1) && pos < L) acc += to_f32(gfin[pos - L + (W - 1)]);
      d[k] = acc;
    }
    store_vector<T>(dx, i0[u], L, d);
  }

  // 3. The warp's partial sums: one slot per (batch, tile, channel), reduced later in a fixed order.
  if (partials != nullptr) {
#pragma unroll
    for (int i = 0; i < W; ++i) dw[i] = warp_sum(dw[i]);
    db = warp_sum(db);
    if (lane == 0) {
      float* slot = partials + ((rc.b * tiles + task.tile) * p.dim + rc.c) * (W + 1);
#pragma unroll
      for (int i = 0; i < W; ++i) slot[i] = dw[i];
      slot[W] = db;
    }
  }

  // 4. dinitial_states[i] = gxpad[i] = sum_k w[k] gpre[i - k] (+ grad_final_states[i - L] when i >= L).
  if (p.dinit != nullptr && task.tile == 0 && lane == 0) {
#pragma unroll
    for (int i = 0; i < W - 1; ++i) {
      float acc = 0.f;
#pragma unroll
      for (int k = 0; k < W; ++k) acc = fmaf(rc.w[k], gpre_at(i - k), acc);
      if (gfin != nullptr && i >= L) acc += to_f32(gfin[i - L]);
      p.dinit[task.row * (W - 1) + i] = acc;
    }
  }
}

// dweight[c, i] (i < W) and dbias[c] (i = W): the n = batch * tiles partials of channel c, summed in
// order. One thread per (c, i); consecutive threads read consecutive floats.
__global__ void __launch_bounds__(kThreads) causal_conv1d_wgrad_reduce_kernel(const float* __restrict__ partials,
                                                                              int64_t n, int64_t dim, int W,
                                                                              float* dweight, float* dbias) {
  const int64_t P = W + 1;
  const int64_t idx = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= dim * P) return;
  float s = 0.f;
  for (int64_t q = 0; q < n; ++q) s += partials[q * dim * P + idx];
  const int64_t c = idx / P, i = idx - c * P;
  if (i < W) {
    if (dweight != nullptr) dweight[c * W + i] = s;
  } else if (dbias != nullptr) {
    dbias[c] = s;
  }
}

// ------------------------------------------------------------------------------------------- update

__device__ __forceinline__ int64_t wrap(int64_t x, int64_t n) { return ((x % n) + n) % n; }

template <typename T, int W>
__global__ void __launch_bounds__(kThreads) causal_conv1d_update_kernel(const CausalConv1dUpdateParams p) {
  const int64_t r = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (r >= p.batch * p.dim) return;
  const int64_t b = r / p.dim, c = r - b * p.dim, k = p.seqlen, S = p.state_len;
  const T* x = static_cast<const T*>(p.x) + b * p.x_batch_stride + c * p.x_dim_stride;
  T* out = static_cast<T*>(p.out) + r * k;
  const int64_t srow = p.conv_state_indices != nullptr ? int64_t(p.conv_state_indices[b]) : b;
  if (srow < 0 || srow >= p.state_batch) {  // padding slot: zeros out, state untouched
    for (int64_t t = 0; t < k; ++t) out[t] = from_f32<T>(0.f);
    return;
  }
  T* state = static_cast<T*>(p.conv_state) + srow * p.s_batch_stride + c * p.s_dim_stride;
  const int64_t q0 = p.cache_seqlens != nullptr ? wrap(p.cache_seqlens[b], S) : 0;  // the oldest entry
  const auto at = [&](int64_t q) { return state + wrap(q0 + q, S) * p.s_time_stride; };
  float w[W];
#pragma unroll
  for (int i = 0; i < W; ++i) w[i] = load_f32(p.weight, c * W + i, p.param_dtype);
  const float bias = p.bias != nullptr ? load_f32(p.bias, c, p.param_dtype) : 0.f;

  float win[W];  // the last W inputs, oldest first; win[W-1] is the current token
#pragma unroll
  for (int i = 0; i < W - 1; ++i) win[i] = to_f32(*at(S - (W - 1) + i));
  for (int64_t t = 0; t < k; ++t) {
    win[W - 1] = to_f32(x[t * p.x_time_stride]);
    float acc = bias;
#pragma unroll
    for (int i = 0; i < W; ++i) acc = fmaf(w[i], win[i], acc);
    out[t] = from_f32<T>(p.silu ? silu_f32(acc) : acc);
#pragma unroll
    for (int i = 0; i < W - 1; ++i) win[i] = win[i + 1];
  }
  if (p.cache_seqlens != nullptr) {
    for (int64_t t = k > S ? k - S : 0; t < k; ++t) *at(t) = x[t * p.x_time_stride];
  } else {
    // Shift left by k and append x; ascending q reads state[q + k] before anything writes it.
    for (int64_t q = 0; q < S; ++q) *at(q) = q + k < S ? *at(q + k) : x[(q + k - S) * p.x_time_stride];
  }
}

// ---------------------------------------------------------------------------------------- launchers

ark_status launch_status(const char* what) { return cuda_launch_status("causal_conv1d", what); }

ark_status blocks_for(int64_t work, int64_t per_block, const char* what, unsigned* blocks) {
  const int64_t n = (work + per_block - 1) / per_block;
  if (n > 0x7fffffffLL)
    return fail(ARK_ERROR_INVALID_ARGUMENT, "%s: %lld thread blocks exceed the CUDA grid limit of 2^31 - 1", what,
                (long long)n);
  *blocks = unsigned(n);
  return ARK_SUCCESS;
}

// Vectors per lane for a row length: one tile of NV vectors per lane when the row fills it, else 1.
template <typename T> int bwd_nv(int64_t L) { return L >= int64_t(kBwdNV) * 32 * kVec<T> ? kBwdNV : 1; }

// How far past a 16-byte boundary rows of a contiguous (rows, L) output can start: none when the base
// is aligned and L is a multiple of the vector width; else up to a vector's width minus one.
template <typename T> int64_t origin_pad(const void* base, int64_t L) {
  return (reinterpret_cast<uintptr_t>(base) & 15u) == 0 && L % kVec<T> == 0 ? 0 : kVec<T> - 1;
}

template <typename T, int W, int NV, int WARPS>
ark_status launch_fwd_nv(const CausalConv1dFwdParams& p, cudaStream_t stream) {
  const int64_t tiles = tiles_per_row(p.L, int64_t(NV) * 32 * kVec<T>, origin_pad<T>(p.out, p.L));
  unsigned blocks;
  if (const ark_status s = blocks_for(p.batch * p.dim * tiles, WARPS, "forward", &blocks)) return s;
#ifdef ARKERNELS_TUNING_VARIANTS
  if (knob(Knob::Conv1dFwdEarlyHalo)) {
    causal_conv1d_fwd_kernel<T, W, NV, WARPS, true><<<blocks, 32 * WARPS, 0, stream>>>(p, tiles);
    return launch_status("forward");
  }
#endif
  causal_conv1d_fwd_kernel<T, W, NV, WARPS><<<blocks, 32 * WARPS, 0, stream>>>(p, tiles);
  return launch_status("forward");
}

template <typename T, int W, int WARPS>
ark_status launch_fwd_warps(const CausalConv1dFwdParams& p, int nv, cudaStream_t stream) {
  switch (nv) {
    case 1: return launch_fwd_nv<T, W, 1, WARPS>(p, stream);
    case kFwdNV: return launch_fwd_nv<T, W, kFwdNV, WARPS>(p, stream);
#ifdef ARKERNELS_TUNING_VARIANTS
    case 2: return launch_fwd_nv<T, W, 2, WARPS>(p, stream);
    case 8: return launch_fwd_nv<T, W, 8, WARPS>(p, stream);
#endif
  }
  return fail(ARK_ERROR_INVALID_ARGUMENT, "tuning knob conv1d_fwd_vectors: %d is not compiled into this build", nv);
}

// Tile shape: the tuning knobs (common/tuning.hpp) where set, else kFwdNV vectors and
// kWarpsPerBlock warps (the best of 1, 2, 4, 8 vectors x 4, 8 warps at both benchmark shapes on the
// H200, bench/NOTES.md); rows shorter than one tile take one vector per lane. Tuning builds compile
// every combination, others the default ones.
template <typename T, int W>
ark_status launch_fwd_w(const CausalConv1dFwdParams& p, cudaStream_t stream) {
  int nv = knob(Knob::Conv1dFwdVectors) ? knob(Knob::Conv1dFwdVectors) : kFwdNV;
  if (p.L < int64_t(nv) * 32 * kVec<T>) nv = 1;
  const int warps = knob(Knob::Conv1dFwdWarps) ? knob(Knob::Conv1dFwdWarps) : kWarpsPerBlock;
  switch (warps) {
    case kWarpsPerBlock: return launch_fwd_warps<T, W, kWarpsPerBlock>(p, nv, stream);
#ifdef ARKERNELS_TUNING_VARIANTS
    case 8: return launch_fwd_warps<T, W, 8>(p, nv, stream);
#endif
  }
  return fail(ARK_ERROR_INVALID_ARGUMENT, "tuning knob conv1d_fwd_warps: %d is not compiled into this build", warps);
}

template <typename T>
ark_status launch_fwd(const CausalConv1dFwdParams& p, cudaStream_t stream) {
  switch (p.width) {
    case 2: return launch_fwd_w<T, 2>(p, stream);
    case 3: return launch_fwd_w<T, 3>(p, stream);
    case 4: return launch_fwd_w<T, 4>(p, stream);
  }
  return fail(ARK_ERROR_INVALID_ARGUMENT, "width: expected 2, 3 or 4, got %d", p.width);
}

// The workspace layout of the backward: (batch, tiles, dim, W + 1) floats, tiles for the worst
// alignment (the launch never uses more).
template <typename T>
int64_t bwd_tiles_max(int64_t L) {
  return tiles_per_row(L, int64_t(bwd_nv<T>(L)) * 32 * kVec<T>, kVec<T> - 1);
}

template <typename T>
size_t bwd_workspace_bytes(int64_t batch, int64_t dim, int64_t L, int W) {
  return size_t(batch) * size_t(bwd_tiles_max<T>(L)) * size_t(dim) * size_t(W + 1) * sizeof(float);
}

template <typename T, int W, int NV>
ark_status launch_bwd_nv(const CausalConv1dBwdParams& p, cudaStream_t stream) {
  const int64_t tiles = tiles_per_row(p.L, int64_t(NV) * 32 * kVec<T>, origin_pad<T>(p.dx, p.L));
  const bool wgrad = p.dweight != nullptr || p.dbias != nullptr;
  float* partials = wgrad ? static_cast<float*>(p.workspace) : nullptr;
  if (wgrad && bwd_workspace_bytes<T>(p.batch, p.dim, p.L, W) > p.workspace_bytes)
    return fail(ARK_ERROR_INVALID_ARGUMENT, "workspace: too small for the backward's partial sums");
  if (p.batch > 0) {
    unsigned blocks;
    if (const ark_status s = blocks_for(p.batch * p.dim * tiles, kWarpsPerBlock, "backward", &blocks)) return s;
    causal_conv1d_bwd_kernel<T, W, NV><<<blocks, kThreads, 0, stream>>>(p, tiles, partials);
    if (const ark_status s = launch_status("backward")) return s;
  }
  if (wgrad) {
    unsigned blocks;
    if (const ark_status s = blocks_for(p.dim * (W + 1), kThreads, "weight-gradient reduction", &blocks)) return s;
    causal_conv1d_wgrad_reduce_kernel<<<blocks, kThreads, 0, stream>>>(partials, p.batch * tiles, p.dim, W,
                                                                       p.dweight, p.dbias);
    return launch_status("weight-gradient reduction");
  }
  return ARK_SUCCESS;
}

template <typename T, int W>
ark_status launch_bwd_w(const CausalConv1dBwdParams& p, cudaStream_t stream) {
  return bwd_nv<T>(p.L) == kBwdNV ? launch_bwd_nv<T, W, kBwdNV>(p, stream) : launch_bwd_nv<T, W, 1>(p, stream);
}

template <typename T>
ark_status launch_bwd(const CausalConv1dBwdParams& p, cudaStream_t stream) {
  switch (p.width) {
    case 2: return launch_bwd_w<T, 2>(p, stream);
    case 3: return launch_bwd_w<T, 3>(p, stream);
    case 4: return launch_bwd_w<T, 4>(p, stream);
  }
  return fail(ARK_ERROR_INVALID_ARGUMENT, "width: expected 2, 3 or 4, got %d", p.width);
}

template <typename T, int W>
ark_status launch_update_w(const CausalConv1dUpdateParams& p, cudaStream_t stream) {
  unsigned blocks;
  if (const ark_status s = blocks_for(p.batch * p.dim, kThreads, "update", &blocks)) return s;
  causal_conv1d_update_kernel<T, W><<<blocks, kThreads, 0, stream>>>(p);
  return launch_status("update");
}

template <typename T>
ark_status launch_update(const CausalConv1dUpdateParams& p, cudaStream_t stream) {
  switch (p.width) {
    case 2: return launch_update_w<T, 2>(p, stream);
    case 3: return launch_update_w<T, 3>(p, stream);
    case 4: return launch_update_w<T, 4>(p, stream);
  }
  return fail(ARK_ERROR_INVALID_ARGUMENT, "width: expected 2, 3 or 4, got %d", p.width);
}

}  // namespace

size_t causal_conv1d_bwd_workspace_bytes_cuda(int64_t batch, int64_t dim, int64_t L, int width, ark_dtype dtype) {
  switch (dtype) {
    case ARK_FLOAT32: return bwd_workspace_bytes<float>(batch, dim, L, width);
    case ARK_FLOAT16: return bwd_workspace_bytes<__half>(batch, dim, L, width);
    case ARK_BFLOAT16: return bwd_workspace_bytes<__nv_bfloat16>(batch, dim, L, width);
  }
  return 0;
}

ark_status causal_conv1d_fwd_cuda(const CausalConv1dFwdParams& p, ark_dtype dtype, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  return dispatch_dtype(dtype, [&](auto tag) { return launch_fwd<decltype(tag)>(p, s); });
}

ark_status causal_conv1d_bwd_cuda(const CausalConv1dBwdParams& p, ark_dtype dtype, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  return dispatch_dtype(dtype, [&](auto tag) { return launch_bwd<decltype(tag)>(p, s); });
}

ark_status causal_conv1d_update_cuda(const CausalConv1dUpdateParams& p, ark_dtype dtype, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  return dispatch_dtype(dtype, [&](auto tag) { return launch_update<decltype(tag)>(p, s); });
}

}  // namespace ark
