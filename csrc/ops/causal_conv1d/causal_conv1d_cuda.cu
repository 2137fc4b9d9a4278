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
#include <type_traits>

#include "common/device_math.cuh"
#include "common/status.hpp"
#include "common/tuning.hpp"
#include "common/vector_io.cuh"
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

// rc.x and the initial states of the row rc.row = rc.b * dim + rc.c.
template <typename T, int W>
__device__ __forceinline__ void set_row_pointers(RowContext<T, W>& rc, const void* x, int64_t x_batch_stride,
                                                 int64_t x_dim_stride, const void* init, ark_dtype init_dtype) {
  rc.x = static_cast<const T*>(x) + rc.b * x_batch_stride + rc.c * x_dim_stride;
  rc.init = init;
  rc.init_dtype = init_dtype;
}

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
  set_row_pointers(rc, x, x_batch_stride, x_dim_stride, init, init_dtype);
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

// How a loaded 16-byte vector is held until converted: Vec<T, V> (V elements of T, as the default
// kernels hold it) or uint4 (four raw 32-bit words, elements extracted when converted). For 16-bit T
// the compiler keeps each element of a Vec<T, V> in a register of its own, so uint4 takes half the
// registers (what the persistent forward, which holds a second tile, needs).
template <typename T, int V>
__device__ __forceinline__ float element_f32(const Vec<T, V>& v, int k) {
  return to_f32(v.e[k]);
}
template <typename T>
__device__ __forceinline__ float element_f32(const uint4& v, int k) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
  return vec_detail::element<T>(w, k);
}

// NV vectors of a tile as loaded (raw bits), and which of them were loaded as 16-byte vectors.
template <typename T, int NV, typename S = Vec<T, kVec<T>>>
struct RawTile {
  S v[NV];
  bool fast[NV];
};

// Issues the loads of NV vectors of V elements starting at i0[u] from a row of a (batch, dim, L)
// tensor: 16-byte loads where the whole vector lies in [0, L) and the row shares the tile grid's
// alignment; the other vectors are read element by element by convert_vectors. Uses no loaded value,
// so all the loads are in flight together.
template <typename T, int NV, typename S>
__device__ __forceinline__ void issue_vectors(const T* row, const int64_t (&i0)[NV], int64_t L, bool vec_ok,
                                              S (&raw)[NV], bool (&fast)[NV]) {
  constexpr int V = kVec<T>;
  static_assert(sizeof(S) == 16, "16-byte vectors");
#pragma unroll
  for (int u = 0; u < NV; ++u) {
    fast[u] = vec_ok && i0[u] >= 0 && i0[u] + V <= L;
    if (fast[u]) raw[u] = *reinterpret_cast<const S*>(row + i0[u]);
  }
}

// The issued vectors as fp32; where no vector was loaded, element by element through `slow(pos)`.
template <typename T, int NV, typename S, typename Slow>
__device__ __forceinline__ void convert_vectors(const S (&raw)[NV], const bool (&fast)[NV], const int64_t (&i0)[NV],
                                                float (&out)[NV][kVec<T>], Slow slow) {
  constexpr int V = kVec<T>;
#pragma unroll
  for (int u = 0; u < NV; ++u) {
#pragma unroll
    for (int k = 0; k < V; ++k) out[u][k] = fast[u] ? element_f32<T>(raw[u], k) : slow(i0[u] + k);
  }
}

// Loads NV vectors (issue_vectors, then convert_vectors): all fast loads are issued before any value
// is used.
template <typename T, int NV, typename Slow>
__device__ __forceinline__ void load_vectors(const T* row, const int64_t (&i0)[NV], int64_t L, bool vec_ok,
                                             float (&out)[NV][kVec<T>], Slow slow) {
  Vec<T, kVec<T>> raw[NV];
  bool fast[NV];
  issue_vectors(row, i0, L, vec_ok, raw, fast);
  convert_vectors<T>(raw, fast, i0, out, slow);
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

// Whether lane 0 of this tile reads its halo from the vector before the tile (see HaloVec).
template <typename T>
__device__ __forceinline__ bool halo_vec_ok(int64_t tile_start, int64_t L, bool vec_ok, int lane) {
  return lane == 0 && vec_ok && tile_start >= kVec<T> && tile_start <= L;
}

// The 16-byte vector just before a tile (the vec-halo variants): the W-1 inputs lane 0 needs before
// the tile's first vector are its last elements. Loaded by lane 0 only, and only where the vector lies
// in [0, L) and the row shares the tile grid's alignment (`vec_ok`); elsewhere (row starts, whose halo
// is the initial states or zeros; rows misaligned against the output; a tile wholly past L) `ok` is
// false and window() reads the halo element by element, as the default kernel does.

template <typename T, typename S = Vec<T, kVec<T>>>
struct HaloVec {
  S v;
  bool ok;
};

template <typename T, typename S>
__device__ __forceinline__ void issue_halo(const T* row, int64_t tile_start, int64_t L, bool vec_ok, int lane,
                                           HaloVec<T, S>& h) {
  h.ok = halo_vec_ok<T>(tile_start, L, vec_ok, lane);
  if (h.ok) h.v = *reinterpret_cast<const S*>(row + tile_start - kVec<T>);
}

// The halo (the vector's last W-1 elements) as fp32; meaningless where !h.ok (never used then).
template <typename T, int W, typename S>
__device__ __forceinline__ void halo_f32(const HaloVec<T, S>& h, float (&out)[W - 1]) {
#pragma unroll
  for (int m = 0; m < W - 1; ++m) out[m] = element_f32<T>(h.v, kVec<T> - (W - 1) + m);
}

// seq[0 .. W-1) = xpad at the W-1 positions before vector u of this lane, seq[W-1 ..) = the vector.
// The halo comes from the previous lane, from lane 31's previous vector, or (lane 0, u = 0) from memory.
// `halo0`, when given: lane 0's halo of vector 0, loaded beforehand; used where `halo_ok` (else, and
// without `halo0`, loaded here element by element).
template <typename T, int W, int NV>
__device__ __forceinline__ void window(const RowContext<T, W>& rc, const float (&xv)[NV][kVec<T>], int u, int64_t i0,
                                       int lane, float (&seq)[W - 1 + kVec<T>], const float* halo0 = nullptr,
                                       bool halo_ok = true) {
  constexpr int V = kVec<T>;
  static_assert(W - 1 <= V, "the halo must come from one neighbouring vector");
#pragma unroll
  for (int m = 0; m < W - 1; ++m) {
    const float prev_lane = __shfl_up_sync(kFullMask, xv[u][V - (W - 1) + m], 1);
    const float prev_sub = u > 0 ? __shfl_sync(kFullMask, xv[u > 0 ? u - 1 : 0][V - (W - 1) + m], 31) : 0.f;
    seq[m] = lane > 0 ? prev_lane
                      : (u > 0 ? prev_sub : (halo0 && halo_ok ? halo0[m] : rc.x_at(i0 - (W - 1) + m)));
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

// First element of vector u of this lane in tile `tile` of a row (the tile grid starts `origin`
// elements before the row, so that the output's vectors are 16-byte aligned).
template <typename T, int NV>
__device__ __forceinline__ void tile_indices(int64_t tile, int origin, int lane, int64_t (&i0)[NV]) {
  constexpr int V = kVec<T>;
  constexpr int kSub = 32 * V;
#pragma unroll
  for (int u = 0; u < NV; ++u) i0[u] = tile * (NV * kSub) - origin + int64_t(u) * kSub + int64_t(lane) * V;
}

// Output vector u of a tile from the tile's inputs `xv`: window, convolution, activation, store.
// `halo0` and `halo_ok`: as for window().
template <typename T, int W, int NV>
__device__ __forceinline__ void fwd_vector_output(const RowContext<T, W>& rc, const float (&xv)[NV][kVec<T>], int u,
                                                  int64_t i0, int lane, bool silu, T* out, const float* halo0,
                                                  bool halo_ok) {
  constexpr int V = kVec<T>;
  float seq[W - 1 + V];
  window<T, W, NV>(rc, xv, u, i0, lane, seq, halo0, halo_ok);
  float o[V];
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const float v = rc.pre(&seq[k]);
    o[k] = silu ? silu_f32(v) : v;
  }
  store_vector<T>(out, i0, rc.L, o);
}

// The outputs of one tile.
template <typename T, int W, int NV>
__device__ __forceinline__ void fwd_tile_outputs(const RowContext<T, W>& rc, const float (&xv)[NV][kVec<T>],
                                                 const int64_t (&i0)[NV], int lane, bool silu, T* out,
                                                 const float* halo0, bool halo_ok) {
#pragma unroll
  for (int u = 0; u < NV; ++u) fwd_vector_output<T, W, NV>(rc, xv, u, i0[u], lane, silu, out, halo0, halo_ok);
}

// Final states: xpad[L .. L + W - 1), written by lane 0 of the row's last tile.
template <typename T, int W>
__device__ __forceinline__ void fwd_final_states(const CausalConv1dFwdParams& p, const RowContext<T, W>& rc,
                                                 int64_t tile, int64_t tiles, int lane) {
  if (p.final_states != nullptr && tile == tiles - 1 && lane == 0) {
    T* fin = static_cast<T*>(p.final_states) + rc.row * (W - 1);
#pragma unroll
    for (int m = 0; m < W - 1; ++m) fin[m] = from_f32<T>(rc.x_at(p.L - (W - 1) + m));
  }
}

// One tile per warp (the default forward). EARLY_HALO, VEC_HALO: the tuning variants below.
template <typename T, int W, int NV, int WARPS, bool EARLY_HALO, bool VEC_HALO>
__device__ __forceinline__ void fwd_one_tile(const CausalConv1dFwdParams& p, int64_t tiles) {
  static_assert(!(EARLY_HALO && VEC_HALO), "one halo variant at a time");
  constexpr int V = kVec<T>;
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
  tile_indices<T, NV>(task.tile, origin, lane, i0);
  float halo0[W - 1];
  if constexpr (EARLY_HALO) {
#pragma unroll
    for (int m = 0; m < W - 1; ++m) halo0[m] = lane == 0 ? rc.x_at(i0[0] - (W - 1) + m) : 0.f;
  }
  // VEC_HALO holds the tile as raw words (bf16, W = 4, NV = 4: 68 registers unbounded, against 71
  // with Vec<T, V>; its launch bounds then bring it to the default's 64).
  using Storage = std::conditional_t<VEC_HALO, uint4, Vec<T, V>>;
  RawTile<T, NV, Storage> raw;
  issue_vectors(rc.x, i0, L, x_vec, raw.v, raw.fast);
  HaloVec<T, uint4> hv;
  hv.ok = true;
  if constexpr (VEC_HALO) issue_halo(rc.x, i0[0], L, x_vec, lane, hv);
  float xv[NV][V];
  convert_vectors<T>(raw.v, raw.fast, i0, xv, [&](int64_t pos) { return rc.x_at(pos); });
  if constexpr (VEC_HALO) halo_f32<T, W>(hv, halo0);

  fwd_tile_outputs<T, W, NV>(rc, xv, i0, lane, p.silu, out, EARLY_HALO || VEC_HALO ? halo0 : nullptr, hv.ok);
  fwd_final_states<T, W>(p, rc, task.tile, tiles, lane);
}

// EARLY_HALO: lane 0 loads its halo before the tile's vectors, so that its (usually L2-resident) read
// overlaps them instead of following the shuffles that need them (tuning builds only; measured worse
// on the H200, bench/NOTES.md; its SASS: the scalar loads sit in branches that end in the loaded
// values' conversions, so the warp waits for them before it issues the tile's loads).
template <typename T, int W, int NV, int WARPS, bool EARLY_HALO = false>
__global__ void __launch_bounds__(32 * WARPS) causal_conv1d_fwd_kernel(const CausalConv1dFwdParams p,
                                                                        int64_t tiles) {
  fwd_one_tile<T, W, NV, WARPS, EARLY_HALO, false>(p, tiles);
}

#ifdef ARKERNELS_TUNING_VARIANTS
// Vec-halo forward (tuning builds only, knob conv1d_fwd_vec_halo): lane 0's halo comes from one
// 16-byte load of the vector before the tile (issue_halo), issued right after the tile's loads, in
// place of the default's W-1 scalar loads, which it issues only after the tile's values have arrived
// (its SASS: the halo loads sit after the first SHFL, in branches, and the first MUFU waits for
// them): a second, L2, round trip in each warp's life after the DRAM one. Row starts (initial states
// or zeros), rows misaligned against the output and tiles past L keep the scalar path.
// Launch bounds hold it to the default kernel's blocks per SM at bf16, W = 4 (ptxas: 56, 64 and 128
// registers at NV = 2, 4, 8: 9, 8 and 4 blocks of 4 warps; at NV = 1, short rows only, at most 64),
// so that only the halo differs, not the occupancy (bf16, W = 4, NV = 4: 64 registers, 4 bytes of
// spill; without the bound 68).
// Prediction (bench/NOTES.md, 2026-12-04): one round trip per warp instead of two, 62/68% -> ~72-75%
// of copy at the two benchmark shapes.
template <int NV>
constexpr int kVecHaloMinBlocks = NV == 1 ? 8 : NV == 2 ? 9 : NV == 4 ? 8 : 4;

template <typename T, int W, int NV, int WARPS>
__global__ void __launch_bounds__(32 * WARPS, kVecHaloMinBlocks<NV>) causal_conv1d_fwd_vec_halo_kernel(
    const CausalConv1dFwdParams p, int64_t tiles) {
  static_assert(WARPS == kWarpsPerBlock, "the launch bounds assume 4 warps per block");
  fwd_one_tile<T, W, NV, WARPS, false, true>(p, tiles);
}
#endif

// Persistent forward: the default where rows fill a tile of kFwdNV vectors per lane (measured on the
// H200, 2026-12-04: 62.4 -> 66.3% of copy at 8x1536x2048 and 68.1 -> 74.0% at 4x4096x4096, bf16;
// knob conv1d_fwd_persistent = -1 selects the tiled kernel). A grid of as many blocks as
// fit on the GPU at once; warp w takes the flat tiles t = w, w + n, w + 2n, ... (t = row * tiles +
// tile, n = the grid's warps), and issues the loads of its next tile (16-byte vectors, lane 0's halo
// and, when the channel changes, weights and bias, all as raw bits in registers) before it computes
// and stores most of the current one.
// Why: in the default kernel a warp loads one tile, waits, computes, stores and exits, so it has
// loads in flight only in the first part of its life, and a new block starts only when all four warps
// of one have finished; here every warp has its next tile's loads in flight while it computes. Also
// no 64-bit division per tile (the walk steps by additions), and weights reloaded only when the
// channel changes. Lane 0's halo is loaded with its tile: with VEC_HALO from the aligned vector
// before the tile (HaloTail), otherwise as W-1 scalar loads (the default's x_at after the shuffles
// would, here, make the warp wait for the next tile's loads too, see the loop).
// Prediction (bench/NOTES.md, 2026-12-04): 62/68% -> ~75-80% of copy; with VEC_HALO about the same
// (the halo is loaded with the tile either way here).

// The walk: stepping by n warps adds step_rows rows and step_tiles tiles (n = step_rows * tiles +
// step_tiles), and step_rows = step_b * dim + step_c; two carries keep tile < tiles and c < dim.
struct FwdWalk {
  int64_t tiles, step_rows, step_tiles, step_b, step_c;
};

struct TileTask {
  int64_t row, tile, b, c;  // row = b * dim + c
};

__device__ __forceinline__ TileTask next_task(TileTask t, const FwdWalk& w, int64_t dim) {
  t.row += w.step_rows;
  t.tile += w.step_tiles;
  t.b += w.step_b;
  t.c += w.step_c;
  if (t.tile >= w.tiles) {  // tile < 2 * tiles before: one carry
    t.tile -= w.tiles;
    ++t.row;
    ++t.c;
  }
  if (t.c >= dim) {  // c <= 2 * dim - 1 before: one carry
    t.c -= dim;
    ++t.b;
  }
  return t;
}

// Element i of a weight or bias array of run-time dtype, as raw bits (one 4- or 2-byte load, converted
// later by param_f32), so that the load is issued ahead and nothing waits for it where it is issued.
__device__ __forceinline__ uint32_t load_param_bits(const void* p, int64_t i, ark_dtype dtype) {
  return dtype == ARK_FLOAT32 ? static_cast<const uint32_t*>(p)[i] : uint32_t(static_cast<const uint16_t*>(p)[i]);
}
__device__ __forceinline__ float param_f32(uint32_t bits, ark_dtype dtype) {
  switch (dtype) {
    case ARK_FLOAT16: return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
    case ARK_BFLOAT16: return __uint_as_float(bits << 16);
    default: return __uint_as_float(bits);
  }
}

// An element of x as raw bits (zero-extended), and back to fp32.
template <typename T>
__device__ __forceinline__ uint32_t load_bits(const T* p) {
  if constexpr (sizeof(T) == 4) return *reinterpret_cast<const uint32_t*>(p);
  else return *reinterpret_cast<const uint16_t*>(p);
}
template <typename T>
__device__ __forceinline__ float bits_f32(uint32_t bits) {
  return element_f32<T>(make_uint4(bits, 0u, 0u, 0u), 0);
}

// The vector at row[i0 ..] gathered element by element, where no 16-byte load was possible: the
// bits of the elements inside [0, L), zeros (+0.0) elsewhere (the caller replaces positions before the
// row, which hold initial states of a possibly wider dtype, in fp32).
template <typename T>
__device__ __forceinline__ uint4 gather_words(const T* row, int64_t i0, int64_t L) {
  constexpr int V = kVec<T>;
  uint32_t w[4] = {0u, 0u, 0u, 0u};
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int64_t pos = i0 + k;
    if (pos >= 0 && pos < L) {
      if constexpr (sizeof(T) == 4) w[k] = load_bits(row + pos);
      else w[k / 2] |= load_bits(row + pos) << (16 * (k & 1));
    }
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// Lane 0's halo as the persistent kernel issues it with its tile. Where not `ok` (row starts, and
// with VEC_HALO rows misaligned against the output), fwd_inputs reads it element by element with x_at
// before the next tile is issued.
// Without VEC_HALO: the W-1 elements before the tile as raw bits, where they lie in [0, L) (no
// alignment needed).
template <typename T, int W>
struct HaloScalars {
  uint32_t bits[W - 1];
  bool ok;
};

template <typename T, int W>
__device__ __forceinline__ void issue_halo(const T* row, int64_t tile_start, int64_t L, bool /*vec_ok*/, int lane,
                                           HaloScalars<T, W>& h) {
  h.ok = lane == 0 && tile_start >= W - 1 && tile_start <= L;
#pragma unroll
  for (int m = 0; m < W - 1; ++m)
    if (h.ok) h.bits[m] = load_bits(row + tile_start - (W - 1) + m);
}

template <typename T, int W>
__device__ __forceinline__ void halo_f32(const HaloScalars<T, W>& h, float (&out)[W - 1]) {
#pragma unroll
  for (int m = 0; m < W - 1; ++m) out[m] = bits_f32<T>(h.bits[m]);
}

// Whether the halo reaches below the vector's last 8 bytes (fp32, W = 4).
template <typename T, int W>
constexpr bool halo_has_head() {
  return (W - 1) * int(sizeof(T)) > 8;
}

// With VEC_HALO: the aligned 16-byte vector before the tile, as HaloVec, but only its bytes that hold
// the halo are loaded: its last 8 (one load; what the compiler makes of the 16-byte load for 16-bit
// types anyway), and for fp32 with W = 4 the 4 before them. A 16-byte load there (fp32, W = 4) leaves
// its first word unused; the register allocator reused that register right after the load, and the
// write-after-write wait on it made the warp wait for the next tile's loads (SASS).

template <typename T, int W>
struct HaloTail {
  uint2 tail;     // bytes 8 .. 16 of the vector
  uint32_t head;  // bytes 4 .. 8 (halo_has_head only)
  bool ok;
};

template <typename T, int W>
__device__ __forceinline__ void issue_halo(const T* row, int64_t tile_start, int64_t L, bool vec_ok, int lane,
                                           HaloTail<T, W>& h) {
  h.ok = halo_vec_ok<T>(tile_start, L, vec_ok, lane);
  const char* end = reinterpret_cast<const char*>(row + tile_start);  // 16-byte aligned where ok
  if (h.ok) h.tail = *reinterpret_cast<const uint2*>(end - 8);
  if constexpr (halo_has_head<T, W>()) {
    if (h.ok) h.head = *reinterpret_cast<const uint32_t*>(end - 12);
  }
}

template <typename T, int W>
__device__ __forceinline__ void halo_f32(const HaloTail<T, W>& h, float (&out)[W - 1]) {
  const uint4 v = make_uint4(0u, halo_has_head<T, W>() ? h.head : 0u, h.tail.x, h.tail.y);
#pragma unroll
  for (int m = 0; m < W - 1; ++m) out[m] = element_f32<T>(v, kVec<T> - (W - 1) + m);
}

// What a persistent warp holds of the tile whose loads are in flight.
template <typename T, int W, int NV, bool VEC_HALO>
struct FwdStage {
  TileTask task;
  RawTile<T, NV, uint4> raw;
  std::conditional_t<VEC_HALO, HaloTail<T, W>, HaloScalars<T, W>> halo;
  uint32_t w_bits[W], bias_bits;
};

// Issues the loads of s.task's tile into s. The weights and bias are loaded only when the channel
// differs from the previous tile's (`same_channel`: s still holds that tile's).
template <typename T, int W, int NV, bool VEC_HALO>
__device__ __forceinline__ void fwd_issue(const CausalConv1dFwdParams& p, int lane, FwdStage<T, W, NV, VEC_HALO>& s,
                                          bool same_channel) {
  const T* x = static_cast<const T*>(p.x) + s.task.b * p.x_batch_stride + s.task.c * p.x_dim_stride;
  const int origin = misalignment<T>(static_cast<const T*>(p.out) + s.task.row * p.L);
  const bool x_vec = misalignment<T>(x) == origin;
  int64_t i0[NV];
  tile_indices<T, NV>(s.task.tile, origin, lane, i0);
  issue_vectors(x, i0, p.L, x_vec, s.raw.v, s.raw.fast);
  issue_halo(x, i0[0], p.L, x_vec, lane, s.halo);
  if (!same_channel) {
#pragma unroll
    for (int i = 0; i < W; ++i) s.w_bits[i] = load_param_bits(p.weight, s.task.c * W + i, p.param_dtype);
    s.bias_bits = p.bias != nullptr ? load_param_bits(p.bias, s.task.c, p.param_dtype) : 0u;  // 0u: +0.f
  }
}

// A tile's inputs in fp32, converted from what fwd_issue loaded.
template <typename T, int W, int NV>
struct FwdInputs {
  RowContext<T, W> rc;
  float xv[NV][kVec<T>];
  float halo0[W - 1];
};

// Converts s's tile to fp32. Vectors that were not loaded whole are gathered element by element; the
// choice is made per vector, not per element (per element, as in convert_vectors, costs ~30 registers
// here). Lane 0's halo, where it was not loaded with the tile, is read here element by element.
template <typename T, int W, int NV, bool VEC_HALO>
__device__ __forceinline__ void fwd_inputs(const CausalConv1dFwdParams& p, int lane,
                                           const FwdStage<T, W, NV, VEC_HALO>& s, FwdInputs<T, W, NV>& in) {
  constexpr int V = kVec<T>;
  RowContext<T, W>& rc = in.rc;
  rc.row = s.task.row;
  rc.b = s.task.b;
  rc.c = s.task.c;
  rc.L = p.L;
  set_row_pointers(rc, p.x, p.x_batch_stride, p.x_dim_stride, p.initial_states, p.states_dtype);
#pragma unroll
  for (int i = 0; i < W; ++i) rc.w[i] = param_f32(s.w_bits[i], p.param_dtype);
  rc.bias = param_f32(s.bias_bits, p.param_dtype);
  int64_t i0[NV];
  tile_indices<T, NV>(s.task.tile, misalignment<T>(static_cast<const T*>(p.out) + s.task.row * p.L), lane, i0);
#pragma unroll
  for (int u = 0; u < NV; ++u) {
    const uint4 v = s.raw.fast[u] ? s.raw.v[u] : gather_words(rc.x, i0[u], p.L);
#pragma unroll
    for (int k = 0; k < V; ++k) in.xv[u][k] = element_f32<T>(v, k);
  }
  // Positions before the row (only lane 0's first vector in the row's first tile, when the row
  // starts past a 16-byte boundary) hold the initial states or zeros, in fp32.
  if (i0[0] < 0) {
#pragma unroll
    for (int k = 0; k < V; ++k) in.xv[0][k] = rc.x_at(i0[0] + k);
  }
  halo_f32<T, W>(s.halo, in.halo0);
  if (lane == 0 && !s.halo.ok) {
#pragma unroll
    for (int m = 0; m < W - 1; ++m) in.halo0[m] = rc.x_at(i0[0] - (W - 1) + m);
  }
}

// Register budget: at least 8, 7, 5, 3 blocks of 4 warps per SM at NV = 1, 2, 4, 8 (bf16, W = 4:
// 56-64, 72, 94-96, 128-144 registers, no spill; fp16 at NV = 4 spills 32-60 bytes), i.e. 20 warps
// per SM with 2 KB of loads in flight each at NV = 4.
template <int NV>
constexpr int kPersistentMinBlocks = NV == 1 ? 8 : NV == 2 ? 7 : NV == 4 ? 5 : 3;

template <typename T, int W, int NV, int WARPS, bool VEC_HALO>
__global__ void __launch_bounds__(32 * WARPS, kPersistentMinBlocks<NV>) causal_conv1d_fwd_persistent_kernel(
    const CausalConv1dFwdParams p, FwdWalk walk) {
  static_assert(WARPS == kWarpsPerBlock, "the launch bounds assume 4 warps per block");
  const int lane = threadIdx.x & 31;
  const int64_t rows = p.batch * p.dim;
  FwdStage<T, W, NV, VEC_HALO> s;
  {
    const int64_t w = int64_t(blockIdx.x) * WARPS + threadIdx.x / 32;
    s.task.row = w / walk.tiles;
    s.task.tile = w - s.task.row * walk.tiles;
    s.task.b = s.task.row / p.dim;
    s.task.c = s.task.row - s.task.b * p.dim;
  }
  if (s.task.row >= rows) return;  // the whole warp leaves together (tasks are warp-uniform)
  fwd_issue<T, W, NV, VEC_HALO>(p, lane, s, false);
  while (true) {
    FwdInputs<T, W, NV> in;
    fwd_inputs<T, W, NV, VEC_HALO>(p, lane, s, in);
    const TileTask cur = s.task;
    T* out = static_cast<T*>(p.out) + cur.row * p.L;
    // The same indices as fwd_inputs computed (recomputed: holding them in FwdInputs gave 48 more
    // SASS instructions over the instances, the compiler already shares the arithmetic).
    int64_t i0[NV];
    tile_indices<T, NV>(cur.tile, misalignment<T>(out), lane, i0);
    // Order matters. All loads count on one scoreboard, and an instruction that uses a loaded value
    // waits for all loads outstanding. So every value of the current tile (and every value read
    // element by element: halo, initial states, gathered vectors, final states) must be used once
    // before the next tile's loads are issued, else the first use waits for the next tile too (the
    // SASS of a first version, which issued the next tile first, waited at its first shuffle). The
    // first output vector uses all of them (its window reads the halo; its first FMA waits for the
    // tile; a gathered vector waits in its gather), so it is computed first.
    fwd_vector_output<T, W, NV>(in.rc, in.xv, 0, i0[0], lane, p.silu, out, in.halo0, true);
    fwd_final_states<T, W>(p, in.rc, cur.tile, walk.tiles, lane);
    s.task = next_task(cur, walk, p.dim);
    const bool more = s.task.row < rows;
    if (more) fwd_issue<T, W, NV, VEC_HALO>(p, lane, s, s.task.c == cur.c);
#pragma unroll
    for (int u = 1; u < NV; ++u) fwd_vector_output<T, W, NV>(in.rc, in.xv, u, i0[u], lane, p.silu, out, in.halo0, true);
    if (!more) return;
  }
}

// ----------------------------------------------------------------------------------------- backward

template <typename T, int W, int NV>
__global__ void __launch_bounds__(kThreads) causal_conv1d_bwd_kernel(const CausalConv1dBwdParams p, int64_t tiles,
                                                                      float* __restrict__ partials) {
  constexpr int V = kVec<T>;
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
  tile_indices<T, NV>(task.tile, origin, lane, i0);
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

// The persistent forward's grid: `grid_knob` 1 = as many blocks as can be resident on the device at
// once (SMs x cudaOccupancyMaxActiveBlocksPerMultiprocessor); g > 1 = g blocks (for tests, where every
// warp must walk many tiles and rows). Never more blocks than the tiles need. It handles every input
// the default kernel handles (same tiles, same per-tile code).
template <typename T, int W, int NV, int WARPS, bool VEC_HALO>
ark_status launch_fwd_persistent(const CausalConv1dFwdParams& p, int64_t tiles, int grid_knob, cudaStream_t stream) {
  const auto kernel = causal_conv1d_fwd_persistent_kernel<T, W, NV, WARPS, VEC_HALO>;
  int64_t resident = grid_knob;
  if (grid_knob == 1) {
    int device = 0, sms = 0, per_sm = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 32 * WARPS, 0) != cudaSuccess)
      return fail(ARK_ERROR_CUDA, "causal_conv1d persistent forward: occupancy query failed: %s",
                  cudaGetErrorString(cudaGetLastError()));
    resident = int64_t(sms) * (per_sm > 0 ? per_sm : 1);
  }
  const int64_t needed = (p.batch * p.dim * tiles + WARPS - 1) / WARPS;
  const int64_t blocks = needed < resident ? needed : resident;
  const int64_t warps = blocks * WARPS;
  FwdWalk walk;
  walk.tiles = tiles;
  walk.step_rows = warps / tiles;
  walk.step_tiles = warps - walk.step_rows * tiles;
  walk.step_b = walk.step_rows / p.dim;
  walk.step_c = walk.step_rows - walk.step_b * p.dim;
  kernel<<<unsigned(blocks), 32 * WARPS, 0, stream>>>(p, walk);
  return launch_status("persistent forward");
}

template <typename T, int W, int NV, int WARPS>
ark_status launch_fwd_nv(const CausalConv1dFwdParams& p, cudaStream_t stream) {
  const int64_t tiles = tiles_per_row(p.L, int64_t(NV) * 32 * kVec<T>, origin_pad<T>(p.out, p.L));
  // Persistent grid by default for full tiles (kFwdNV vectors per lane), the tiled kernel for rows
  // shorter than a tile (NV = 1) and for knob value -1; the early-halo variant is tiled only.
  int grid = knob(Knob::Conv1dFwdPersistent);
  if (grid == 0) grid = NV == kFwdNV && knob(Knob::Conv1dFwdEarlyHalo) == 0 ? 1 : -1;
#ifdef ARKERNELS_TUNING_VARIANTS
  const bool vec_halo = knob(Knob::Conv1dFwdVecHalo) != 0;
#endif
  if constexpr (WARPS == kWarpsPerBlock) {  // check_fwd_variant_knobs refused the knobs for other sizes
    if (grid > 0) {
#ifdef ARKERNELS_TUNING_VARIANTS
      if (vec_halo) return launch_fwd_persistent<T, W, NV, WARPS, true>(p, tiles, grid, stream);
#endif
      return launch_fwd_persistent<T, W, NV, WARPS, false>(p, tiles, grid, stream);
    }
  }
  unsigned blocks;
  if (const ark_status s = blocks_for(p.batch * p.dim * tiles, WARPS, "forward", &blocks)) return s;
#ifdef ARKERNELS_TUNING_VARIANTS
  if constexpr (WARPS == kWarpsPerBlock) {
    if (vec_halo) {
      causal_conv1d_fwd_vec_halo_kernel<T, W, NV, WARPS><<<blocks, 32 * WARPS, 0, stream>>>(p, tiles);
      return launch_status("vec-halo forward");
    }
  }
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

// The forward's variant knobs: conv1d_fwd_persistent -1 (tiled), 0 (default), 1 or a block count > 1
// (launch_fwd_persistent); conv1d_fwd_vec_halo 0 or 1 (tuning builds only); early halo combines with
// neither. Both only with the default kWarpsPerBlock warps per block (8 measured worse; their compile
// time).
ark_status check_fwd_variant_knobs(int warps) {
  const int persistent = knob(Knob::Conv1dFwdPersistent), vec_halo = knob(Knob::Conv1dFwdVecHalo);
  if (persistent < -1)
    return fail(ARK_ERROR_INVALID_ARGUMENT,
                "tuning knob conv1d_fwd_persistent: expected -1 (tiled), 0 (default), 1 or a block count > 1, got %d",
                persistent);
  if (vec_halo != 0 && vec_halo != 1)
    return fail(ARK_ERROR_INVALID_ARGUMENT, "tuning knob conv1d_fwd_vec_halo: expected 0 or 1, got %d", vec_halo);
#ifdef ARKERNELS_TUNING_VARIANTS
  if (knob(Knob::Conv1dFwdEarlyHalo) && (persistent > 0 || vec_halo))
    return fail(ARK_ERROR_INVALID_ARGUMENT,
                "tuning knob conv1d_fwd_early_halo: combines with neither conv1d_fwd_vec_halo nor conv1d_fwd_persistent");
  if ((persistent > 0 || vec_halo) && warps != kWarpsPerBlock)
    return fail(ARK_ERROR_INVALID_ARGUMENT,
                "tuning knobs conv1d_fwd_persistent, conv1d_fwd_vec_halo: compiled for %d warps per block only, not %d",
                kWarpsPerBlock, warps);
#else
  (void)warps;
  if (vec_halo)
    return fail(ARK_ERROR_INVALID_ARGUMENT, "tuning knob conv1d_fwd_vec_halo: not compiled into this build");
#endif
  return ARK_SUCCESS;
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
  if (const ark_status s = check_fwd_variant_knobs(warps)) return s;
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
