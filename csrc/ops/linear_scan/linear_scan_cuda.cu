// linear_scan on CUDA: one warp per row, the row walked in chunks of 32 * K elements.
//
// Per chunk each lane loads K consecutive elements (two 16-byte vectors per array), reduces them
// to one affine map (A, B), the warp scans those maps with shuffles, and each lane replays its K
// elements from the carry-in. The chunk's last state is the carry into the next chunk. Loads and
// stores are 16-byte wide and coalesced; all arithmetic is fp32. The kernel is bandwidth-bound:
// it moves each input once and writes each output once. Design notes: docs/ops/linear_scan.md.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/status.hpp"
#include "ops/linear_scan/linear_scan.cuh"

namespace ark {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpsPerBlock = 4;

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Elements per lane per chunk: 32 bytes of each array, i.e. two 16-byte vectors.
template <typename T> struct Tile {
  static constexpr int kVec = 16 / sizeof(T);  // elements per 16-byte vector
  static constexpr int K = 2 * kVec;           // elements per lane
  static constexpr int kChunk = 32 * K;        // elements per warp step
};

// Elements a 16-byte aligned origin lies before `p` (so every lane's K elements start aligned).
template <typename T> __device__ __forceinline__ int misalignment(const void* p) {
  return int((reinterpret_cast<uintptr_t>(p) & 15u) / sizeof(T));
}

// Loads x[i0 .. i0+K) as fp32; positions outside [0, T) read as `identity`.
// `vec_ok` says the 16-byte grid of x matches the chunk grid (same misalignment as the origin).
template <typename T, int K>
__device__ __forceinline__ void load_lane(const T* __restrict__ x, int64_t i0, int64_t T_len, bool vec_ok,
                                          float identity, float (&out)[K]) {
  constexpr int V = Tile<T>::kVec;
  if (vec_ok && i0 >= 0 && i0 + K <= T_len) {
#pragma unroll
    for (int v = 0; v < K / V; ++v) {
      const uint4 raw = __ldcs(reinterpret_cast<const uint4*>(x + i0 + v * V));
      const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
      for (int j = 0; j < V; ++j) out[v * V + j] = to_f32(e[j]);
    }
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t i = i0 + k;
      out[k] = (i >= 0 && i < T_len) ? to_f32(x[i]) : identity;
    }
  }
}

template <typename T, int K>
__device__ __forceinline__ void store_lane(T* __restrict__ x, int64_t i0, int64_t T_len, bool vec_ok,
                                           const float (&in)[K]) {
  constexpr int V = Tile<T>::kVec;
  if (vec_ok && i0 >= 0 && i0 + K <= T_len) {
#pragma unroll
    for (int v = 0; v < K / V; ++v) {
      uint4 raw;
      T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
      for (int j = 0; j < V; ++j) e[j] = from_f32<T>(in[v * V + j]);
      __stcs(reinterpret_cast<uint4*>(x + i0 + v * V), raw);
    }
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int64_t i = i0 + k;
      if (i >= 0 && i < T_len) x[i] = from_f32<T>(in[k]);
    }
  }
}

// Scans one chunk held by the warp: state_k = gate_k * state_{k-1} + token_k, starting from `carry`,
// in ascending memory order, or descending when DESC (lane 31 and element K-1 come first).
// Writes every state to `states` and returns the chunk's last state (the same value on all lanes).
template <bool DESC, int K>
__device__ __forceinline__ float warp_chunk_scan(const float (&gate)[K], const float (&token)[K], float carry,
                                                 float (&states)[K]) {
  // 1. Each lane composes its K affine maps into one: state -> A * state + B.
  float A = 1.0f, B = 0.0f;
#pragma unroll
  for (int i = 0; i < K; ++i) {
    const int k = DESC ? K - 1 - i : i;
    B = gate[k] * B + token[k];
    A = gate[k] * A;
  }
  // 2. Inclusive scan of the maps over lanes in scan order (Kogge-Stone, 5 shuffle rounds).
  const int lane = threadIdx.x & 31;
  const int order = DESC ? 31 - lane : lane;  // position of this lane in scan order
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const float A_prev = DESC ? __shfl_down_sync(kFullMask, A, d) : __shfl_up_sync(kFullMask, A, d);
    const float B_prev = DESC ? __shfl_down_sync(kFullMask, B, d) : __shfl_up_sync(kFullMask, B, d);
    if (order >= d) {  // compose: earlier map first, then this lane's
      B = A * B_prev + B;
      A = A * A_prev;
    }
  }
  // 3. This lane's carry-in is the previous lane's inclusive map applied to the chunk carry.
  float A_excl = DESC ? __shfl_down_sync(kFullMask, A, 1) : __shfl_up_sync(kFullMask, A, 1);
  float B_excl = DESC ? __shfl_down_sync(kFullMask, B, 1) : __shfl_up_sync(kFullMask, B, 1);
  if (order == 0) {
    A_excl = 1.0f;
    B_excl = 0.0f;
  }
  float state = A_excl * carry + B_excl;
  // 4. Replay the lane's elements from its carry-in.
#pragma unroll
  for (int i = 0; i < K; ++i) {
    const int k = DESC ? K - 1 - i : i;
    state = gate[k] * state + token[k];
    states[k] = state;
  }
  return __shfl_sync(kFullMask, state, DESC ? 0 : 31);
}

// Chunk j of a row covers [j * kChunk - origin, (j + 1) * kChunk - origin): the origin shift puts
// the chunk grid on 16-byte boundaries of the first array, so whole vectors never straddle chunks.
struct ChunkGrid {
  int64_t origin;  // elements of the first (aligned) chunk that lie before the row start
  int64_t chunks;
  __device__ ChunkGrid(int64_t origin_, int64_t T_len, int chunk)
      : origin(origin_), chunks(T_len == 0 ? 0 : (T_len + origin_ + chunk - 1) / chunk) {}
};

template <typename T, bool REV>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    linear_scan_fwd_kernel(const LinearScanFwdParams p) {
  constexpr int K = Tile<T>::K;
  constexpr int kChunk = Tile<T>::kChunk;
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= p.rows) return;  // whole warps leave together
  const int lane = threadIdx.x & 31;
  const T* a = static_cast<const T*>(p.a) + row * p.a_row_stride;
  const T* b = static_cast<const T*>(p.b) + row * p.b_row_stride;
  T* h = static_cast<T*>(p.h) + row * p.h_row_stride;

  const int origin = misalignment<T>(a);
  const bool b_vec = misalignment<T>(b) == origin;
  const bool h_vec = misalignment<T>(h) == origin;
  const ChunkGrid grid(origin, p.T, kChunk);

  float carry = p.h0 ? p.h0[row] : 0.0f;
  for (int64_t c = 0; c < grid.chunks; ++c) {
    const int64_t j = REV ? grid.chunks - 1 - c : c;
    const int64_t i0 = j * kChunk - grid.origin + int64_t(lane) * K;
    float gate[K], token[K], states[K];
    load_lane<T, K>(a, i0, p.T, true, 1.0f, gate);
    load_lane<T, K>(b, i0, p.T, b_vec, 0.0f, token);
    carry = warp_chunk_scan<REV, K>(gate, token, carry, states);
    store_lane<T, K>(h, i0, p.T, h_vec, states);
  }
  if (p.h_last && lane == 0) p.h_last[row] = carry;
}

// Backward: dh[t] = g[t] + a[t+1] dh[t+1] is a scan against the forward direction whose gate at t
// is the NEXT step's a (in forward order); da[t] = h[t-1] dh[t] needs the PREVIOUS step's h. Both
// neighbours come from the adjacent lane by shuffle, or across chunk edges from a register carried
// over (a) or one scalar load (h).
template <typename T, bool REV>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    linear_scan_bwd_kernel(const LinearScanBwdParams p) {
  constexpr int K = Tile<T>::K;
  constexpr int kChunk = Tile<T>::kChunk;
  constexpr bool DESC = !REV;  // the gradient scan runs against the forward scan
  const int64_t row = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= p.rows) return;
  const int lane = threadIdx.x & 31;
  const int64_t T_len = p.T;
  const T* a = static_cast<const T*>(p.a) + row * p.a_row_stride;
  const T* h = static_cast<const T*>(p.h) + row * p.h_row_stride;
  const T* g = static_cast<const T*>(p.g) + row * p.g_row_stride;
  T* da = static_cast<T*>(p.da) + row * T_len;
  T* db = static_cast<T*>(p.db) + row * T_len;

  const int origin = misalignment<T>(g);
  const bool a_vec = misalignment<T>(a) == origin;
  const bool h_vec = misalignment<T>(h) == origin;
  const bool d_vec = misalignment<T>(da) == origin && misalignment<T>(db) == origin;
  const ChunkGrid grid(origin, T_len, kChunk);
  const int64_t first_t = REV ? T_len - 1 : 0;  // memory position of the first forward step
  const float h0 = p.h0 ? p.h0[row] : 0.0f;

  float carry = p.g_last ? p.g_last[row] : 0.0f;
  // a of the forward step just beyond the chunk being processed (in gradient-scan order it was
  // loaded with the previous chunk); 1 past the end of the sequence.
  float a_beyond = 1.0f;
  for (int64_t c = 0; c < grid.chunks; ++c) {
    const int64_t j = DESC ? grid.chunks - 1 - c : c;
    const int64_t i0 = j * kChunk - grid.origin + int64_t(lane) * K;
    float a_raw[K], g_raw[K], h_raw[K];
    load_lane<T, K>(g, i0, T_len, true, 0.0f, g_raw);
    load_lane<T, K>(a, i0, T_len, a_vec, 1.0f, a_raw);
    load_lane<T, K>(h, i0, T_len, h_vec, 0.0f, h_raw);

    // gate[k] = a of the next forward step: shift the lane's a by one, the edge from the neighbour lane.
    float gate[K], h_prev[K];
    if (!REV) {
      const float from_next_lane = __shfl_down_sync(kFullMask, a_raw[0], 1);
#pragma unroll
      for (int k = 0; k < K - 1; ++k) gate[k] = a_raw[k + 1];
      gate[K - 1] = lane == 31 ? a_beyond : from_next_lane;
      a_beyond = __shfl_sync(kFullMask, a_raw[0], 0);
      const float from_prev_lane = __shfl_up_sync(kFullMask, h_raw[K - 1], 1);
#pragma unroll
      for (int k = 1; k < K; ++k) h_prev[k] = h_raw[k - 1];
      h_prev[0] = lane == 0 ? (i0 >= 1 ? to_f32(h[i0 - 1]) : h0) : from_prev_lane;
    } else {
      const float from_prev_lane = __shfl_up_sync(kFullMask, a_raw[K - 1], 1);
#pragma unroll
      for (int k = 1; k < K; ++k) gate[k] = a_raw[k - 1];
      gate[0] = lane == 0 ? a_beyond : from_prev_lane;
      a_beyond = __shfl_sync(kFullMask, a_raw[K - 1], 31);
      const float from_next_lane = __shfl_down_sync(kFullMask, h_raw[0], 1);
#pragma unroll
      for (int k = 0; k < K - 1; ++k) h_prev[k] = h_raw[k + 1];
      h_prev[K - 1] = lane == 31 ? (i0 + K < T_len ? to_f32(h[i0 + K]) : h0) : from_next_lane;
    }
    // The first forward step has no previous h in memory: it reads h0.
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (i0 + k == first_t) h_prev[k] = h0;

    float dh[K], da_v[K];
    carry = warp_chunk_scan<DESC, K>(gate, g_raw, carry, dh);
#pragma unroll
    for (int k = 0; k < K; ++k) da_v[k] = h_prev[k] * dh[k];
    store_lane<T, K>(da, i0, T_len, d_vec, da_v);
    store_lane<T, K>(db, i0, T_len, d_vec, dh);
    if (p.dh0) {
#pragma unroll
      for (int k = 0; k < K; ++k)
        if (i0 + k == first_t) p.dh0[row] = a_raw[k] * dh[k];
    }
  }
  if (p.dh0 && T_len == 0 && lane == 0) p.dh0[row] = carry;
}

template <typename T>
ark_status launch_fwd(const LinearScanFwdParams& p, cudaStream_t stream) {
  const int64_t blocks = (p.rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > 0x7fffffffLL)
    return fail(ARK_ERROR_INVALID_ARGUMENT, "rows: expected at most %lld rows on CUDA, got %lld",
                0x7fffffffLL * kWarpsPerBlock, (long long)p.rows);
  if (p.reverse)
    linear_scan_fwd_kernel<T, true><<<unsigned(blocks), 32 * kWarpsPerBlock, 0, stream>>>(p);
  else
    linear_scan_fwd_kernel<T, false><<<unsigned(blocks), 32 * kWarpsPerBlock, 0, stream>>>(p);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return fail(ARK_ERROR_CUDA, "linear_scan forward launch failed: %s", cudaGetErrorString(err));
  return ARK_SUCCESS;
}

template <typename T>
ark_status launch_bwd(const LinearScanBwdParams& p, cudaStream_t stream) {
  const int64_t blocks = (p.rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > 0x7fffffffLL)
    return fail(ARK_ERROR_INVALID_ARGUMENT, "rows: expected at most %lld rows on CUDA, got %lld",
                0x7fffffffLL * kWarpsPerBlock, (long long)p.rows);
  if (p.reverse)
    linear_scan_bwd_kernel<T, true><<<unsigned(blocks), 32 * kWarpsPerBlock, 0, stream>>>(p);
  else
    linear_scan_bwd_kernel<T, false><<<unsigned(blocks), 32 * kWarpsPerBlock, 0, stream>>>(p);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return fail(ARK_ERROR_CUDA, "linear_scan backward launch failed: %s", cudaGetErrorString(err));
  return ARK_SUCCESS;
}

}  // namespace

ark_status linear_scan_fwd_cuda(const LinearScanFwdParams& p, ark_dtype dtype, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case ARK_FLOAT32: return launch_fwd<float>(p, s);
    case ARK_FLOAT16: return launch_fwd<__half>(p, s);
    case ARK_BFLOAT16: return launch_fwd<__nv_bfloat16>(p, s);
  }
  return fail(ARK_ERROR_INVALID_ARGUMENT, "dtype: unknown value %d", int(dtype));
}

ark_status linear_scan_bwd_cuda(const LinearScanBwdParams& p, ark_dtype dtype, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case ARK_FLOAT32: return launch_bwd<float>(p, s);
    case ARK_FLOAT16: return launch_bwd<__half>(p, s);
    case ARK_BFLOAT16: return launch_bwd<__nv_bfloat16>(p, s);
  }
  return fail(ARK_ERROR_INVALID_ARGUMENT, "dtype: unknown value %d", int(dtype));
}

}  // namespace ark
