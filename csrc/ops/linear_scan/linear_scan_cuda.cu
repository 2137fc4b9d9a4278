// linear_scan on CUDA: W warps per row, the row walked in chunks of U sub-chunks of 32 * W vectors.
//
// Per sub-chunk each lane holds one 16-byte vector per array, reduces it to one affine map (A, B),
// the warp scans those maps with shuffles, the W warps combine their totals in shared memory, and
// each lane replays its elements from its carry-in. The sub-chunk's last state is the carry into the
// next. The next chunk's loads are in flight while the current one is scanned. Loads and stores are
// 16-byte wide and coalesced; all arithmetic is fp32. The kernel is bandwidth-bound: it moves each
// input once and writes each output once. Design notes: docs/ops/linear_scan.md, bench/NOTES.md.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/device_math.cuh"
#include "common/status.hpp"
#include "ops/linear_scan/linear_scan.cuh"

namespace ark {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpsPerBlock = 4;
// Warps of a block: rows shorter than a block share it (W = 1), longer rows get W warps each.
constexpr int block_warps(int W) { return W > kWarpsPerBlock ? W : kWarpsPerBlock; }

// Each lane moves one 16-byte vector per array per sub-chunk, so one warp-wide load instruction
// covers 512 contiguous bytes (fully coalesced). Wider per-lane runs (2 or 4 vectors) measured
// slower: each instruction then spans 1-2 KB with gaps (bench/NOTES.md).
template <typename T> constexpr int kVec = 16 / sizeof(T);

// Elements a 16-byte aligned origin lies before `p` (so every lane's vectors start aligned).
template <typename T> __device__ __forceinline__ int misalignment(const void* p) {
  return int((reinterpret_cast<uintptr_t>(p) & 15u) / sizeof(T));
}

// One 16-byte vector kept as raw bits until it is used. The next chunk's loads are issued before
// the current chunk is scanned; converting them at load time would make the thread wait for them.
__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}
__device__ __forceinline__ void set_word(uint4& v, int i, uint32_t w) {
  if (i == 0) v.x = w; else if (i == 1) v.y = w; else if (i == 2) v.z = w; else v.w = w;
}
__device__ __forceinline__ uint32_t bits16(__half x) { return __half_as_ushort(x); }
__device__ __forceinline__ uint32_t bits16(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }

// Element k (a compile-time constant after unrolling) of a raw vector, as fp32.
template <typename T> __device__ __forceinline__ float element(const uint4& v, int k) {
  if constexpr (sizeof(T) == 4) {
    return __uint_as_float(word(v, k));
  } else {
    const uint32_t w = word(v, k / 2), h = (k & 1) ? (w >> 16) : (w & 0xffffu);
    if constexpr (std::is_same_v<T, __nv_bfloat16>) return __uint_as_float(h << 16);
    else return __half2float(__ushort_as_half(static_cast<unsigned short>(h)));
  }
}
template <typename T> __device__ __forceinline__ void set_element(uint4& v, int k, T x) {
  if constexpr (sizeof(T) == 4) {
    set_word(v, k, __float_as_uint(x));
  } else {
    const uint32_t w = word(v, k / 2);
    set_word(v, k / 2, (k & 1) ? ((w & 0xffffu) | (bits16(x) << 16)) : ((w & 0xffff0000u) | bits16(x)));
  }
}

// Loads x[i0 .. i0+V) raw; positions outside [0, T) read as `identity`. `vec_ok` says x's 16-byte
// grid matches the chunk grid (same misalignment as the row's origin).
// Plain cached loads and stores: streaming hints (__ldcs / __stcs) measured 2-4% slower (bench/NOTES.md).
template <typename T>
__device__ __forceinline__ uint4 load_raw(const T* __restrict__ x, int64_t i0, int64_t T_len, bool vec_ok, T identity) {
  constexpr int V = kVec<T>;
  if (vec_ok && i0 >= 0 && i0 + V <= T_len) return __ldg(reinterpret_cast<const uint4*>(x + i0));
  uint4 v = make_uint4(0, 0, 0, 0);
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int64_t i = i0 + k;
    set_element<T>(v, k, (i >= 0 && i < T_len) ? x[i] : identity);
  }
  return v;
}

template <typename T>
__device__ __forceinline__ void unpack(const uint4& v, float (&out)[kVec<T>]) {
#pragma unroll
  for (int k = 0; k < kVec<T>; ++k) out[k] = element<T>(v, k);
}

template <typename T, int K>
__device__ __forceinline__ void store_lane(T* __restrict__ x, int64_t i0, int64_t T_len, bool vec_ok,
                                           const float (&in)[K]) {
  constexpr int V = kVec<T>;
  static_assert(K == V, "one vector per lane and sub-chunk");
  if (vec_ok && i0 >= 0 && i0 + K <= T_len) {
    uint4 raw;
#pragma unroll
    for (int k = 0; k < V; ++k) set_element<T>(raw, k, from_f32<T>(in[k]));
    *reinterpret_cast<uint4*>(x + i0) = raw;
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t i = i0 + k;
      if (i >= 0 && i < T_len) x[i] = from_f32<T>(in[k]);
    }
  }
}

// Affine maps state -> A * state + B, composed "earlier first": (A1, B1) then (A2, B2) gives
// (A2 * A1, A2 * B1 + B2).
struct Affine {
  float A, B;
};

// Warps of a block that share one row exchange their chunk maps here; two buffers so that one
// barrier per chunk suffices (a warp can only reuse a buffer after every warp passed the next barrier).
template <int W> struct RowExchange {
  Affine maps[2][W];
};
template <> struct RowExchange<1> {};

// Scans one chunk of a row held by W warps (lane-major: warp `sub`, lane l own elements
// [(sub * 32 + l) * K, +K) of the chunk): state_k = gate_k * state_{k-1} + token_k from `carry`, in
// ascending memory order, or descending when DESC. Writes every state to `states`; returns the
// chunk's last state (the same value on every thread of the row).
template <bool DESC, int K, int W>
__device__ __forceinline__ float chunk_scan(const float (&gate)[K], const float (&token)[K], float carry,
                                           float (&states)[K], RowExchange<W>& xchg, int sub, int parity) {
  // 1. Each lane composes its K maps into one.
  float A = 1.0f, B = 0.0f;
#pragma unroll
  for (int i = 0; i < K; ++i) {
    const int k = DESC ? K - 1 - i : i;
    B = gate[k] * B + token[k];
    A = gate[k] * A;
  }
  // 2. Inclusive scan of the lane maps in scan order (Kogge-Stone, 5 shuffle rounds).
  const int lane = threadIdx.x & 31;
  const int order = DESC ? 31 - lane : lane;  // position of this lane in scan order
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const float A_prev = DESC ? __shfl_down_sync(kFullMask, A, d) : __shfl_up_sync(kFullMask, A, d);
    const float B_prev = DESC ? __shfl_down_sync(kFullMask, B, d) : __shfl_up_sync(kFullMask, B, d);
    if (order >= d) {
      B = A * B_prev + B;
      A = A * A_prev;
    }
  }
  // 3. Carry into this warp: the maps of the warps before it (in scan order) applied to `carry`.
  float carry_in = carry, carry_out;
  const int last_lane = DESC ? 0 : 31;
  if constexpr (W == 1) {
    (void)xchg; (void)sub; (void)parity;
  } else {
    const float A_warp = __shfl_sync(kFullMask, A, last_lane), B_warp = __shfl_sync(kFullMask, B, last_lane);
    if (lane == 0) xchg.maps[parity][sub] = Affine{A_warp, B_warp};
    __syncthreads();
    carry_out = carry;
#pragma unroll
    for (int i = 0; i < W; ++i) {
      const int s = DESC ? W - 1 - i : i;
      const Affine m = xchg.maps[parity][s];
      if (i == (DESC ? W - 1 - sub : sub)) carry_in = carry_out;  // before this warp's own map
      carry_out = m.A * carry_out + m.B;
    }
  }
  // 4. The lane's carry-in is the previous lane's inclusive map applied to the warp's carry-in.
  float A_excl = DESC ? __shfl_down_sync(kFullMask, A, 1) : __shfl_up_sync(kFullMask, A, 1);
  float B_excl = DESC ? __shfl_down_sync(kFullMask, B, 1) : __shfl_up_sync(kFullMask, B, 1);
  if (order == 0) {
    A_excl = 1.0f;
    B_excl = 0.0f;
  }
  float state = A_excl * carry_in + B_excl;
  // 5. Replay the lane's elements from its carry-in.
#pragma unroll
  for (int i = 0; i < K; ++i) {
    const int k = DESC ? K - 1 - i : i;
    state = gate[k] * state + token[k];
    states[k] = state;
  }
  if constexpr (W == 1) return __shfl_sync(kFullMask, state, last_lane);
  else return carry_out;
}

// Where a thread's work lies. A block holds (4 / W) rows of W warps each. A row is walked in chunks
// of U sub-chunks; sub-chunk u of chunk j covers W * 32 vectors of V elements, lane-major (warp
// `sub`, lane l own vector sub * 32 + l). All U sub-chunks of a chunk are loaded before the first
// is scanned, so U * 512 bytes per array and warp are in flight. The grid starts `origin` elements
// before the row so that vectors sit on 16-byte boundaries of the first array.
template <int V, int W, int U>
struct RowTiling {
  static constexpr int kSub = W * 32 * V;
  static constexpr int kChunk = U * kSub;
  int64_t row;
  int sub;  // this warp's position within the row's warps (memory order)
  int lane;
  __device__ RowTiling() {
    const int warp = threadIdx.x / 32;
    row = int64_t(blockIdx.x) * (block_warps(W) / W) + warp / W;
    sub = warp % W;
    lane = threadIdx.x & 31;
  }
  __device__ int64_t chunks(int64_t T_len, int origin) const {
    return T_len == 0 ? 0 : (T_len + origin + kChunk - 1) / kChunk;
  }
  // First element of this lane's vector in sub-chunk u of chunk j.
  __device__ int64_t lane_start(int64_t j, int u, int origin) const {
    return j * kChunk + u * kSub - origin + int64_t(sub * 32 + lane) * V;
  }
};

template <typename T, bool REV, int W, int U>
__global__ void __launch_bounds__(32 * block_warps(W))
    linear_scan_fwd_kernel(const LinearScanFwdParams p) {
  constexpr int V = kVec<T>;
  using Tiling = RowTiling<V, W, U>;
  __shared__ RowExchange<W> xchg;
  const Tiling tile;
  if (tile.row >= p.rows) return;  // whole rows (all their warps) leave together
  const T* a = static_cast<const T*>(p.a) + tile.row * p.a_row_stride;
  const T* b = static_cast<const T*>(p.b) + tile.row * p.b_row_stride;
  T* h = static_cast<T*>(p.h) + tile.row * p.h_row_stride;

  const int origin = misalignment<T>(a);
  const bool b_vec = misalignment<T>(b) == origin;
  const bool h_vec = misalignment<T>(h) == origin;
  const int64_t chunks = tile.chunks(p.T, origin);
  const T one = from_f32<T>(1.0f), zero = from_f32<T>(0.0f);
  // Raw gates and tokens of chunk j (identity maps outside the row).
  const auto load_chunk = [&](int64_t j, uint4 (&gates)[U], uint4 (&tokens)[U]) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i0 = tile.lane_start(j, u, origin);
      gates[u] = load_raw<T>(a, i0, p.T, true, one);
      tokens[u] = load_raw<T>(b, i0, p.T, b_vec, zero);
    }
  };

  float carry = p.h0 ? p.h0[tile.row] : 0.0f;
  int parity = 0;
  uint4 gates[U], tokens[U];
  if (chunks > 0) load_chunk(REV ? chunks - 1 : 0, gates, tokens);
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t j = REV ? chunks - 1 - c : c;
    uint4 next_gates[U] = {}, next_tokens[U] = {};
    if (c + 1 < chunks) load_chunk(REV ? j - 1 : j + 1, next_gates, next_tokens);  // in flight during the scan
#pragma unroll
    for (int s = 0; s < U; ++s) {
      const int u = REV ? U - 1 - s : s;
      float gate[V], token[V], states[V];
      unpack<T>(gates[u], gate);
      unpack<T>(tokens[u], token);
      carry = chunk_scan<REV, V, W>(gate, token, carry, states, xchg, tile.sub, parity);
      parity ^= 1;
      store_lane<T, V>(h, tile.lane_start(j, u, origin), p.T, h_vec, states);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      gates[u] = next_gates[u];
      tokens[u] = next_tokens[u];
    }
  }
  if (p.h_last && tile.sub == 0 && tile.lane == 0) p.h_last[tile.row] = carry;
}

// Raw inputs of one backward chunk: g, a, h vectors, and per sub-chunk the two neighbours across
// the lane's edge that the shuffles cannot supply (the next step's a, the previous step's h).
template <typename T, int U>
struct BwdChunk {
  uint4 g[U], a[U], h[U];
  T a_edge[U], h_edge[U];
};

// Backward: dh[t] = g[t] + a[t+1] dh[t+1] is a scan against the forward direction whose gate at t
// is the NEXT forward step's a; da[t] = h[t-1] dh[t] needs the PREVIOUS forward step's h. Both
// neighbours come from the adjacent lane by shuffle, or, at a warp's edge, from memory (a cache hit:
// the neighbouring warp or sub-chunk loads the same line).
template <typename T, bool REV, int W, int U>
__global__ void __launch_bounds__(32 * block_warps(W))
    linear_scan_bwd_kernel(const LinearScanBwdParams p) {
  constexpr int V = kVec<T>;
  using Tiling = RowTiling<V, W, U>;
  constexpr bool DESC = !REV;  // the gradient scan runs against the forward scan
  // In memory the next forward step of t is t + kStep, the previous one t - kStep.
  constexpr int kStep = REV ? -1 : 1;
  // The lane whose next-step gate / previous-step state lies outside its vector and its warp.
  constexpr int kNextLane = REV ? 0 : 31, kPrevLane = REV ? 31 : 0;
  __shared__ RowExchange<W> xchg;
  const Tiling tile;
  if (tile.row >= p.rows) return;
  const int lane = tile.lane;
  const int64_t T_len = p.T;
  const T* a = static_cast<const T*>(p.a) + tile.row * p.a_row_stride;
  const T* h = static_cast<const T*>(p.h) + tile.row * p.h_row_stride;
  const T* g = static_cast<const T*>(p.g) + tile.row * p.g_row_stride;
  T* da = static_cast<T*>(p.da) + tile.row * T_len;
  T* db = static_cast<T*>(p.db) + tile.row * T_len;

  const int origin = misalignment<T>(g);
  const bool a_vec = misalignment<T>(a) == origin;
  const bool h_vec = misalignment<T>(h) == origin;
  const bool d_vec = misalignment<T>(da) == origin && misalignment<T>(db) == origin;
  const int64_t chunks = tile.chunks(T_len, origin);
  const int64_t first_t = REV ? T_len - 1 : 0;  // memory position of the first forward step
  const float h0 = p.h0 ? p.h0[tile.row] : 0.0f;
  const T one = from_f32<T>(1.0f), zero = from_f32<T>(0.0f);
  const auto load_chunk = [&](int64_t j, BwdChunk<T, U>& ch) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t i0 = tile.lane_start(j, u, origin);
      ch.g[u] = load_raw<T>(g, i0, T_len, true, zero);
      ch.a[u] = load_raw<T>(a, i0, T_len, a_vec, one);
      ch.h[u] = load_raw<T>(h, i0, T_len, h_vec, zero);
      // Outside the row the next gate is the identity; the previous state of the first step is
      // replaced by h0 below, so its fallback value is never used.
      const int64_t i_next = REV ? i0 - 1 : i0 + V, i_prev = REV ? i0 + V : i0 - 1;
      ch.a_edge[u] = lane == kNextLane && i_next >= 0 && i_next < T_len ? a[i_next] : one;
      ch.h_edge[u] = lane == kPrevLane && i_prev >= 0 && i_prev < T_len ? h[i_prev] : zero;
    }
  };

  float carry = p.g_last ? p.g_last[tile.row] : 0.0f;
  int parity = 0;
  BwdChunk<T, U> cur;
  if (chunks > 0) load_chunk(DESC ? chunks - 1 : 0, cur);
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t j = DESC ? chunks - 1 - c : c;
    BwdChunk<T, U> next{};
    if (c + 1 < chunks) load_chunk(DESC ? j - 1 : j + 1, next);  // in flight during the scan
#pragma unroll
    for (int s = 0; s < U; ++s) {
      const int u = DESC ? U - 1 - s : s;
      const int64_t i0 = tile.lane_start(j, u, origin);
      float a_in[V], g_in[V], h_in[V], gate[V], h_prev[V];
      unpack<T>(cur.a[u], a_in);
      unpack<T>(cur.g[u], g_in);
      unpack<T>(cur.h[u], h_in);
      // Shift a one step back and h one step forward (in forward-scan order) across the warp.
      constexpr int kFirst = REV ? V - 1 : 0, kLast = REV ? 0 : V - 1;
      float a_nb = REV ? __shfl_up_sync(kFullMask, a_in[kFirst], 1) : __shfl_down_sync(kFullMask, a_in[kFirst], 1);
      float h_nb = REV ? __shfl_down_sync(kFullMask, h_in[kLast], 1) : __shfl_up_sync(kFullMask, h_in[kLast], 1);
      if (lane == kNextLane) a_nb = to_f32(cur.a_edge[u]);
      if (lane == kPrevLane) h_nb = to_f32(cur.h_edge[u]);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const int k_next = k + kStep, k_prev = k - kStep;
        gate[k] = (k_next >= 0 && k_next < V) ? a_in[k_next] : a_nb;
        h_prev[k] = (k_prev >= 0 && k_prev < V) ? h_in[k_prev] : h_nb;
        if (i0 + k == first_t) h_prev[k] = h0;  // the first forward step started from h0
      }
      float dh[V], da_v[V];
      carry = chunk_scan<DESC, V, W>(gate, g_in, carry, dh, xchg, tile.sub, parity);
      parity ^= 1;
#pragma unroll
      for (int k = 0; k < V; ++k) da_v[k] = h_prev[k] * dh[k];
      store_lane<T, V>(da, i0, T_len, d_vec, da_v);
      store_lane<T, V>(db, i0, T_len, d_vec, dh);
      if (p.dh0) {
#pragma unroll
        for (int k = 0; k < V; ++k)
          if (i0 + k == first_t) p.dh0[tile.row] = a_in[k] * dh[k];  // h0 entered through a[first]
      }
    }
    cur = next;
  }
  if (p.dh0 && T_len == 0 && tile.sub == 0 && lane == 0) p.dh0[tile.row] = carry;
}

template <typename Params>
ark_status check_grid(const Params& p, int rows_per_block, int64_t* blocks) {
  *blocks = (p.rows + rows_per_block - 1) / rows_per_block;
  if (*blocks > 0x7fffffffLL)
    return fail(ARK_ERROR_INVALID_ARGUMENT, "rows: expected at most %lld rows on CUDA, got %lld",
                0x7fffffffLL * rows_per_block, (long long)p.rows);
  return ARK_SUCCESS;
}

ark_status launch_status(const char* what) { return cuda_launch_status("linear_scan", what); }

template <typename T, bool REV, int W, int U> struct FwdKernel {
  static constexpr auto fn = linear_scan_fwd_kernel<T, REV, W, U>;
};
template <typename T, bool REV, int W, int U> struct BwdKernel {
  static constexpr auto fn = linear_scan_bwd_kernel<T, REV, W, U>;
};

// Launches the kernel for a row length: rows that one warp walks in at most two sub-chunks gain
// nothing from more warps (1 warp); rows shorter than the tuned chunk are split over 4 warps, one
// vector per lane; longer rows take the tuned shape TW warps x TU sub-chunks, measured fastest on
// the H100 at (8, 2048, 4096) (bench/NOTES.md). Only these three shapes are compiled.
template <template <typename, bool, int, int> class Kernel, typename T, bool REV, int TW, int TU, typename Params>
ark_status launch_for_length(const Params& p, cudaStream_t stream, const char* what) {
  const auto go = [&](auto kernel, int W) {
    const int warps = block_warps(W);
    int64_t blocks;
    if (const ark_status s = check_grid(p, warps / W, &blocks)) return s;
    kernel<<<unsigned(blocks), 32 * warps, 0, stream>>>(p);
    return launch_status(what);
  };
  constexpr int64_t V = kVec<T>;
  if (p.T <= 2 * 32 * V) return go(Kernel<T, REV, 1, 1>::fn, 1);
  if (p.T < TW * TU * 32 * V) return go(Kernel<T, REV, 4, 1>::fn, 4);
  return go(Kernel<T, REV, TW, TU>::fn, TW);
}

template <typename T>
ark_status launch_fwd(const LinearScanFwdParams& p, cudaStream_t stream) {
  constexpr int TW = sizeof(T) == 4 ? 8 : 4, TU = sizeof(T) == 4 ? 2 : 4;
  return p.reverse ? launch_for_length<FwdKernel, T, true, TW, TU>(p, stream, "forward")
                   : launch_for_length<FwdKernel, T, false, TW, TU>(p, stream, "forward");
}

template <typename T>
ark_status launch_bwd(const LinearScanBwdParams& p, cudaStream_t stream) {
  constexpr int TW = sizeof(T) == 4 ? 8 : 4, TU = 2;
  return p.reverse ? launch_for_length<BwdKernel, T, true, TW, TU>(p, stream, "backward")
                   : launch_for_length<BwdKernel, T, false, TW, TU>(p, stream, "backward");
}

}  // namespace

ark_status linear_scan_fwd_cuda(const LinearScanFwdParams& p, ark_dtype dtype, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  return dispatch_dtype(dtype, [&](auto tag) { return launch_fwd<decltype(tag)>(p, s); });
}

ark_status linear_scan_bwd_cuda(const LinearScanBwdParams& p, ark_dtype dtype, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  return dispatch_dtype(dtype, [&](auto tag) { return launch_bwd<decltype(tag)>(p, s); });
}

}  // namespace ark
