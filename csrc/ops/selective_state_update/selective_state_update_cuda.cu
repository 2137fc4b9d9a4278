// selective_state_update on CUDA. The op is memory-bound: the state cache is the big tensor (read
// once, written once per call whatever the number of tokens k); everything else is small or shared by
// many rows and stays in cache.
//
// Work split: a group of L lanes (L a power of two, 1..32, within one warp) owns one (b, h, p) row of
// the state, whose N elements are contiguous in the usual layout. Each lane holds V = 4 consecutive
// elements (one 16-byte access of an fp32 state, 8 bytes of a 16-bit one), so a warp-wide access covers
// 32 * 16 contiguous bytes of an fp32 state when L * V = N (Mamba-1 N = 16: L = 4, 8 rows per warp;
// Mamba-2 N = 128: L = 32, one row per warp). The row's output is a sum over N, reduced across the L
// lanes with xor shuffles. The state is carried in registers, in fp32, across the k tokens.
// Rows longer than 32 * V elements are walked in chunks of 32 * V; each chunk is loaded, advanced over
// the tokens and stored. With several chunks a token's output sum is completed across chunks, so the
// partial sums of token t0 + l are kept by lane l and the tokens are taken 32 at a time (the state of
// such long rows is then read and written ceil(k / 32) times).
//
// Grid: x over the H * P channels, (y, z) over the batch. Two kernels per dtype pair: VEC, when every
// row read or written along N is contiguous and aligned and N % 4 == 0 (the layout models use: 16-byte
// accesses, no bounds per element), and a general one (any strides, any N). VEC has a variant for A
// constant along N (Mamba-2 passes A broadcast over (p, n)): one exp per row and token instead of N.
// All offsets are 64-bit; the state is read with plain loads (this kernel writes it), the read-only
// inputs through the non-coherent cache. Design notes: docs/ops/selective_state_update.md.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/device_math.cuh"
#include "common/status.hpp"
#include "common/tuning.hpp"
#include "common/vector_io.cuh"
#include "ops/selective_state_update/selective_state_update.cuh"

namespace ark {
namespace {

constexpr int kThreads = 256;
// State elements per lane and access: 16 bytes of an fp32 state, 8 of a 16-bit one. 8 elements per
// lane for 16-bit states would double the registers a lane holds (state, A, B, C) and cost occupancy.
constexpr int kVec = 4;
// Blocks per SM the kernels are compiled for: 4 x 256 threads = 64 registers per thread, half the
// SM's threads resident, enough 16-byte loads in flight to saturate HBM (the op is memory-bound; the
// VEC kernels fit without spilling). The general kernel (strided rows) may take 80 registers.
constexpr int kMinBlocksVec = 4;
constexpr int kMinBlocksGeneral = 3;
constexpr int64_t kMaxGridYZ = 65535;

// q = a / b, r = a % b for a, b >= 0: 32-bit division when both fit (the usual case; the 64-bit
// division routine costs several times more).
__device__ __forceinline__ void divmod(int64_t a, int64_t b, int64_t& q, int64_t& r) {
  if (((a | b) >> 31) == 0) {
    const uint32_t q32 = uint32_t(a) / uint32_t(b);
    q = q32;
    r = a - int64_t(q32) * b;
  } else {
    q = a / b;
    r = a - q * b;
  }
}

// One element of A, D or dt_bias, whose dtype (fp32 or the input dtype) is a run-time value.
__device__ __forceinline__ float load_param(const void* base, int64_t off, ark_dtype dtype) {
  switch (dtype) {
    case ARK_FLOAT16: return to_f32(__ldg(static_cast<const __half*>(base) + off));
    case ARK_BFLOAT16: return to_f32(__ldg(static_cast<const __nv_bfloat16*>(base) + off));
    case ARK_FLOAT32: break;
  }
  return __ldg(static_cast<const float*>(base) + off);
}

// The state row batch element b uses: state_batch_indices[b] where given, else b. Negative marks
// padding; a value >= state_batch is a bad index (the kernels skip such rows, see the general kernel).
__device__ __forceinline__ int64_t state_row_of(const ark_selective_state_update_args& a, int64_t b) {
  if (!a.state_batch_indices) return b;
  const int64_t off = b * a.state_batch_indices_stride;
  return a.state_batch_indices_int64 ? __ldg(static_cast<const long long*>(a.state_batch_indices) + off)
                                     : __ldg(static_cast<const int*>(a.state_batch_indices) + off);
}

// V consecutive elements of A (run-time dtype: fp32 or the input dtype) at element offset `off`,
// aligned for V-element accesses (VEC layouts).
template <int V>
__device__ __forceinline__ void load_A_vec(const ark_selective_state_update_args& a, int64_t off, float (&out)[V]) {
  switch (a.A_dtype) {
    case ARK_FLOAT16: load_vec<__half, V, true>(static_cast<const __half*>(a.A) + off, out); break;
    case ARK_BFLOAT16: load_vec<__nv_bfloat16, V, true>(static_cast<const __nv_bfloat16*>(a.A) + off, out); break;
    default: load_vec<float, V, true>(static_cast<const float*>(a.A) + off, out); break;
  }
}

template <typename X>
__device__ __forceinline__ float ld(const X* p) {
  return to_f32(__ldg(p));
}

// Sum over the `lanes` lanes of a group (`mask` = exactly those lanes); every lane gets the sum.
__device__ __forceinline__ float group_sum(float v, unsigned mask, int lanes) {
  for (int off = lanes >> 1; off > 0; off >>= 1) v += __shfl_xor_sync(mask, v, off, lanes);
  return v;
}

// Token 0 of a (b, k, H, P) tensor.
__device__ __forceinline__ int64_t token0(const int64_t* s, int64_t b, int64_t h, int64_t p) {
  return b * s[0] + h * s[2] + p * s[3];
}

// How a lane reads and writes its V elements n0 .. n0 + V - 1 of a row of N (N < 2^31, checked by
// the C API). VEC (chosen on the host, vec_layout below): every row of every tensor read or written
// along N is contiguous and aligned for whole-vector accesses, and N is a multiple of V, so a lane's
// vector lies entirely inside the row (n0 < N) or entirely outside it. Otherwise element accesses with
// strides and a bound (slower; odd N, strided views).
template <bool VEC, int V>
struct LaneIO {
  int n0, N;
  __device__ __forceinline__ bool inside(int k) const { return VEC ? n0 < N : n0 + k < N; }
  template <typename T, bool NC>
  __device__ __forceinline__ void load(const T* row, int64_t stride, float (&out)[V]) const {
    if constexpr (VEC) {
      if (n0 < N) {
        load_vec<T, V, NC>(row + n0, out);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) out[k] = 0.f;
      }
    } else {
      load_row<T, V, NC>(row, n0, N, stride, stride == 1 && vec_aligned<T, V>(row), out);
    }
  }
  template <typename T>
  __device__ __forceinline__ void store(T* row, int64_t stride, const float (&in)[V]) const {
    if constexpr (VEC) {
      if (n0 < N) store_vec<T, V>(row + n0, in);
    } else {
      store_row<T, V>(row, n0, N, stride, stride == 1 && vec_aligned<T, V>(row), in);
    }
  }
  // A row of A (run-time dtype: fp32 or the input dtype).
  __device__ __forceinline__ void load_A(const void* base, int64_t stride, ark_dtype dtype, float (&out)[V]) const {
    switch (dtype) {
      case ARK_FLOAT16: return load<__half, true>(static_cast<const __half*>(base), stride, out);
      case ARK_BFLOAT16: return load<__nv_bfloat16, true>(static_cast<const __nv_bfloat16*>(base), stride, out);
      case ARK_FLOAT32: break;
    }
    load<float, true>(static_cast<const float*>(base), stride, out);
  }
};

// A lane group owns one row (b, h, p) of the state; see the top of this file. A_CONST: A is constant
// along N (p.a_const_n), one exp per row and token.
template <typename S, typename X, bool VEC, bool A_CONST>
__global__ void __launch_bounds__(kThreads, VEC ? kMinBlocksVec : kMinBlocksGeneral)
    selective_state_update_kernel(const SsuParams p, int log2_lanes) {
  constexpr int V = kVec;
  const ark_selective_state_update_args& a = p.a;
  const int lanes = 1 << log2_lanes;
  const int lane = int(threadIdx.x) & (lanes - 1);
  const int64_t c = int64_t(blockIdx.x) * (kThreads >> log2_lanes) + (threadIdx.x >> log2_lanes);  // channel
  const int64_t b = int64_t(blockIdx.z) * gridDim.y + blockIdx.y;
  if (c >= a.heads * a.head_dim || b >= a.batch) return;  // whole lane groups leave together
  // The lanes of this row's group (other groups of the warp may take other branches).
  const unsigned mask =
      lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u) << ((threadIdx.x & 31u) & ~unsigned(lanes - 1));
  int64_t h, pp, g, unused;
  divmod(c, a.head_dim, h, pp);
  divmod(c, p.channels_per_group, g, unused);
  const int K = int(a.tokens), N = int(a.dstate);  // < 2^31 (C API)

  const X* x0 = static_cast<const X*>(a.x) + token0(a.x_strides, b, h, pp);
  X* out0 = static_cast<X*>(a.out) + token0(a.out_strides, b, h, pp);
  const int64_t srow = state_row_of(a, b);
  if (srow < 0 || srow >= a.state_batch) {
    // Padding (negative index): outputs 0, state untouched. An index >= Bc cannot be checked on the
    // host without a device sync: the row is skipped and its outputs are NaN so that the error shows.
    const X fill = from_f32<X>(srow < 0 ? 0.f : __int_as_float(0x7fc00000));
#pragma unroll 1
    for (int t = lane; t < K; t += lanes) out0[t * a.out_strides[1]] = fill;
    return;
  }
  const X* dt0 = static_cast<const X*>(a.dt) + token0(a.dt_strides, b, h, pp);
  const X* z0 = a.z ? static_cast<const X*>(a.z) + token0(a.z_strides, b, h, pp) : nullptr;
  S* st = static_cast<S*>(a.state) + srow * a.state_strides[0] + h * a.state_strides[1] + pp * a.state_strides[2];
  const X* B0 = static_cast<const X*>(a.B) + b * a.B_strides[0] + g * a.B_strides[2];
  const X* C0 = static_cast<const X*>(a.C) + b * a.C_strides[0] + g * a.C_strides[2];
  const int64_t* is = a.intermediate_states_strides;
  S* it0 = a.intermediate_states
               ? static_cast<S*>(a.intermediate_states) + b * is[0] + h * is[2] + pp * is[3]
               : nullptr;
  const float d = a.D ? load_param(a.D, h * a.D_strides[0] + pp * a.D_strides[1], a.D_dtype) : 0.f;
  const float bias =
      a.dt_bias ? load_param(a.dt_bias, h * a.dt_bias_strides[0] + pp * a.dt_bias_strides[1], a.dt_bias_dtype) : 0.f;
  const int64_t a_off = h * a.A_strides[0] + pp * a.A_strides[1];
  const float a_row = A_CONST && N > 0 ? load_param(a.A, a_off, a.A_dtype) : 0.f;
  // The token's output from its sum over N.
  const auto finish = [&](int t, float sum) {
    float y = sum + d * ld(x0 + t * a.x_strides[1]);
    if (z0) y *= silu_f32(ld(z0 + t * a.z_strides[1]));
    out0[t * a.out_strides[1]] = from_f32<X>(y);
  };

  const int span = lanes * V;  // elements of a row per chunk
  const int chunks = N <= span ? 1 : (N - 1) / span + 1;
  // Tokens whose sums are completed together: all of them with one chunk; with several chunks the
  // sum of token t0 + l is accumulated by lane l, so 32 at a time.
  const int token_group = chunks == 1 ? K : lanes;
#pragma unroll 1
  for (int t0 = 0; t0 < K; t0 += token_group) {
    const int t1 = K - t0 > token_group ? t0 + token_group : K;
    float acc = 0.f;  // several chunks: the sum of token t0 + lane
#pragma unroll 1
    for (int chunk = 0; chunk < chunks; ++chunk) {
      const LaneIO<VEC, V> io{chunk * span + lane * V, N};
      float s[V], A[V];
      io.template load<S, false>(st, a.state_strides[3], s);  // plain loads: this kernel writes the state
      if constexpr (!A_CONST) io.load_A(static_cast<const char*>(a.A) + a_off * (a.A_dtype == ARK_FLOAT32 ? 4 : 2),
                                        a.A_strides[2], a.A_dtype, A);
#pragma unroll 1
      for (int t = t0; t < t1; ++t) {
        float dtv = ld(dt0 + t * a.dt_strides[1]) + bias;
        if (a.dt_softplus) dtv = softplus_f32(dtv);
        const float dtx = dtv * ld(x0 + t * a.x_strides[1]);
        float Bv[V], Cv[V];
        io.template load<X, true>(B0 + t * a.B_strides[1], a.B_strides[3], Bv);
        io.template load<X, true>(C0 + t * a.C_strides[1], a.C_strides[3], Cv);
        float part = 0.f;
        if constexpr (A_CONST) {
          const float dA = __expf(dtv * a_row);  // one exp per row and token (A broadcast over N)
#pragma unroll
          for (int k = 0; k < V; ++k) {
            s[k] = s[k] * dA + Bv[k] * dtx;
            if (io.inside(k)) part += s[k] * Cv[k];
          }
        } else {
#pragma unroll
          for (int k = 0; k < V; ++k) {
            s[k] = s[k] * __expf(dtv * A[k]) + Bv[k] * dtx;
            if (io.inside(k)) part += s[k] * Cv[k];
          }
        }
        if (it0) io.store(it0 + t * is[1], is[4], s);
        part = group_sum(part, mask, lanes);
        if (chunks == 1) {
          if (lane == 0) finish(t, part);
        } else if (lane == t - t0) {
          acc += part;
        }
      }
      io.store(st, a.state_strides[3], s);
    }
    if (chunks > 1 && t0 + lane < t1) finish(t0 + lane, acc);
  }
}

// The common case in one pass: VEC layout and a whole row in one chunk (N <= 32 * V), so each lane
// group reads its rows' state once, advances it over the k tokens and writes it once. A lane group
// owns ROWS rows (channels c0 + r * groups_per_block, coalesced for each r) of one batch element and
// issues the state (and A) loads of all of them before any arithmetic. ROWS = 1 is the default: 2 and
// 4 (tuning builds) put more bytes in flight per thread but measured slower on the H200, since
// occupancy falls with the registers (bench/NOTES.md, selective_state_update).
template <typename S, typename X, bool A_CONST, int ROWS, bool PREFETCH>
__global__ void __launch_bounds__(kThreads, ROWS == 1 ? kMinBlocksVec : (ROWS == 2 ? 3 : 2))
    selective_state_update_rows_kernel(const SsuParams p, int log2_lanes) {
  constexpr int V = kVec;
  const ark_selective_state_update_args& a = p.a;
  const int lanes = 1 << log2_lanes;
  const int lane = int(threadIdx.x) & (lanes - 1);
  const int64_t groups_per_block = kThreads >> log2_lanes;
  const int64_t channels = a.heads * a.head_dim;
  const int64_t c_first = int64_t(blockIdx.x) * groups_per_block * ROWS + (threadIdx.x >> log2_lanes);
  const int64_t b = int64_t(blockIdx.z) * gridDim.y + blockIdx.y;
  if (c_first >= channels || b >= a.batch) return;  // whole lane groups leave together
  const unsigned mask =
      lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u) << ((threadIdx.x & 31u) & ~unsigned(lanes - 1));
  const int K = int(a.tokens), N = int(a.dstate);
  const int n0 = lane * V;
  const bool lane_in_row = n0 < N;  // N is a multiple of V (VEC); lanes past the row hold zeros

  const int64_t srow = state_row_of(a, b);
  const bool skip = srow < 0 || srow >= a.state_batch;  // padding / bad index: see the general kernel

  // Phase 1: every row's state, A and per-row parameters, all loads issued before any is used.
  int64_t hrow[ROWS], prow[ROWS], grow[ROWS];
  bool valid[ROWS];
  float s[ROWS][V], A[ROWS][V], d[ROWS], bias[ROWS], a_row[ROWS];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    const int64_t c = c_first + r * groups_per_block;
    valid[r] = c < channels;
    const int64_t cc = valid[r] ? c : c_first;
    int64_t unused;
    divmod(cc, a.head_dim, hrow[r], prow[r]);
    divmod(cc, p.channels_per_group, grow[r], unused);
    const int64_t h = hrow[r], pp = prow[r];
#pragma unroll
    for (int k = 0; k < V; ++k) s[r][k] = A[r][k] = 0.f;
    if (!skip && valid[r] && lane_in_row) {
      const S* st = static_cast<const S*>(a.state) + srow * a.state_strides[0] + h * a.state_strides[1] +
                    pp * a.state_strides[2];
      load_vec<S, V, false>(st + n0, s[r]);  // plain loads: this kernel writes the state
      if constexpr (!A_CONST) {
        const int64_t off = h * a.A_strides[0] + pp * a.A_strides[1] + n0;
        load_A_vec<V>(a, off, A[r]);
      }
    }
    d[r] = a.D ? load_param(a.D, h * a.D_strides[0] + pp * a.D_strides[1], a.D_dtype) : 0.f;
    bias[r] = a.dt_bias ? load_param(a.dt_bias, h * a.dt_bias_strides[0] + pp * a.dt_bias_strides[1], a.dt_bias_dtype)
                        : 0.f;
    a_row[r] = A_CONST && N > 0 ? load_param(a.A, h * a.A_strides[0] + pp * a.A_strides[1], a.A_dtype) : 0.f;
  }

  // One token's inputs of one row. PREFETCH: token t + 1's are loaded before token t is computed
  // (token 0's with the state), so that a thread waits for memory once, not once for the state and
  // again for the inputs after the reduction (z is read after it otherwise).
  struct TokenIn {
    float x, dt, z, B[V], C[V];
  };
  const auto load_token = [&](int r, int t, TokenIn& in) {
    const int64_t h = hrow[r], pp = prow[r];
    in.x = ld(static_cast<const X*>(a.x) + token0(a.x_strides, b, h, pp) + t * a.x_strides[1]);
    in.dt = ld(static_cast<const X*>(a.dt) + token0(a.dt_strides, b, h, pp) + t * a.dt_strides[1]);
    // Without PREFETCH z is read by lane 0 after the reduction (the layout measured on the GPU).
    in.z = PREFETCH && a.z ? ld(static_cast<const X*>(a.z) + token0(a.z_strides, b, h, pp) + t * a.z_strides[1]) : 0.f;
    if (lane_in_row) {
      const int64_t g = grow[r];
      load_vec<X, V, true>(static_cast<const X*>(a.B) + b * a.B_strides[0] + t * a.B_strides[1] + g * a.B_strides[2] + n0,
                           in.B);
      load_vec<X, V, true>(static_cast<const X*>(a.C) + b * a.C_strides[0] + t * a.C_strides[1] + g * a.C_strides[2] + n0,
                           in.C);
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) in.B[k] = in.C[k] = 0.f;
    }
  };
  TokenIn next[ROWS];
  if constexpr (PREFETCH) {
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
      if (!skip && valid[r] && K > 0) load_token(r, 0, next[r]);
  }

  const int64_t* is = a.intermediate_states_strides;
#pragma unroll 1
  for (int t = 0; t < K; ++t) {
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      if (!valid[r]) continue;
      const int64_t h = hrow[r], pp = prow[r];
      X* out = static_cast<X*>(a.out) + token0(a.out_strides, b, h, pp) + t * a.out_strides[1];
      if (skip) {
        if (lane == 0) *out = from_f32<X>(srow < 0 ? 0.f : __int_as_float(0x7fc00000));
        continue;
      }
      TokenIn in;
      if constexpr (PREFETCH) {
        in = next[r];
        if (t + 1 < K) load_token(r, t + 1, next[r]);
      } else {
        load_token(r, t, in);
      }
      float dtv = in.dt + bias[r];
      if (a.dt_softplus) dtv = softplus_f32(dtv);
      const float dtx = dtv * in.x;
      float part = 0.f;
      const float dA_row = A_CONST ? __expf(dtv * a_row[r]) : 0.f;  // one exp per row and token
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float dA = A_CONST ? dA_row : __expf(dtv * A[r][k]);
        s[r][k] = s[r][k] * dA + in.B[k] * dtx;
        part += s[r][k] * in.C[k];
      }
      if (a.intermediate_states && lane_in_row)
        store_vec<S, V>(static_cast<S*>(a.intermediate_states) + b * is[0] + t * is[1] + h * is[2] + pp * is[3] + n0,
                        s[r]);
      part = group_sum(part, mask, lanes);
      if (lane == 0) {
        float y = part + d[r] * in.x;
        if (a.z)
          y *= silu_f32(PREFETCH ? in.z
                                 : ld(static_cast<const X*>(a.z) + token0(a.z_strides, b, h, pp) + t * a.z_strides[1]));
        *out = from_f32<X>(y);
      }
    }
  }
  if (skip || !lane_in_row) return;
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    if (!valid[r]) continue;
    S* st = static_cast<S*>(a.state) + srow * a.state_strides[0] + hrow[r] * a.state_strides[1] +
            prow[r] * a.state_strides[2];
    store_vec<S, V>(st + n0, s[r]);
  }
}

// The head-tile kernel: the VEC layout with a whole row per lane group (N = lanes * V exactly), for
// blocks whose rows all read one B/C group. The per-row kernels above spend ~600 instructions per
// row on index arithmetic, parameter loads and their dtype switches, softplus and z: measured on the
// H200 (ncu, Mamba-2 (64, 64, 64, 128)) a warp issued every 10.4 cycles with 8 warps per scheduler,
// i.e. the kernel was issue-bound at 30% of the copy bandwidth, not waiting on memory. Here a block
// owns rows_per_block consecutive channels of one batch element; each lane group owns RPT of them
// (rows c0 + (i * warps + warp) * rows_per_warp + group, so that for each i a warp's state accesses
// are 512 contiguous bytes of an fp32 state), and everything a block shares is computed once:
// the state row, B and C of its group (one load per token for all RPT rows), and with PER_HEAD (dt,
// dt_bias, A, D constant over the head's P rows, as Mamba-2 passes them, and the block inside one
// head) one softplus and one exp per token. All loads of a token are issued before any arithmetic;
// z is read with them, not after the reduction.
constexpr int kTileWarps = kThreads / 32;

// n / d for 0 <= n < 2^31 and a divisor d >= 1 fixed for the launch: a multiply-high, an add and a
// shift (Granlund and Montgomery's round-up multiplier, with 2^shift >= d; the add cannot carry out
// of 32 bits for n < 2^31) instead of the ~30-instruction sequence of a run-time 32-bit division.
struct DivU31 {
  uint32_t mul = 1;
  int shift = 0;
  static DivU31 of(uint32_t d) {
    DivU31 r;
    if (d == 0) return r;  // no channels: nothing is divided
    while ((uint64_t(1) << r.shift) < d) ++r.shift;
    r.mul = uint32_t(((uint64_t(1) << 32) * ((uint64_t(1) << r.shift) - d)) / d + 1);
    return r;
  }
  __device__ __forceinline__ int operator()(int n) const {
    return int((__umulhi(uint32_t(n), mul) + uint32_t(n)) >> shift);
  }
};
struct TileDivisors {
  DivU31 head_dim, channels_per_group;
};

__host__ __device__ constexpr int tile_rows_per_block(int log2_lanes, int rpt) {
  return kTileWarps * (32 >> log2_lanes) * rpt;
}

// LEAN (host: lean_layout): every element offset the kernel forms fits in 31 bits and A, D, dt_bias
// are fp32, so offsets are 32-bit products and the parameters plain float loads, where the general
// form spends ~200 of its ~1000 SASS instructions on 64-bit offset IMADs and puts a three-way dtype
// branch around every parameter load (ncu of 12-04 had the Mamba-1 step issuing on 75% of cycles).
// Measured on the H100 (bench/NOTES.md, session 12): -21% at 4 rows per lane group, no change at
// the default 2 rows (so that form is not bound by its instruction count), -1% on Mamba-2.
template <typename S, typename X, int RPT, bool A_CONST, bool PER_HEAD, bool LEAN = false>
__global__ void __launch_bounds__(kThreads, kMinBlocksVec)
    selective_state_update_tile_kernel(const SsuParams p, int log2_lanes, const TileDivisors div) {
  static_assert(!PER_HEAD || A_CONST, "PER_HEAD needs A constant along N");
  constexpr int V = kVec;
  using Off = std::conditional_t<LEAN, int32_t, int64_t>;
  const auto param = [](const void* base, Off off, ark_dtype dtype) {
    if constexpr (LEAN) return __ldg(static_cast<const float*>(base) + off);
    else return load_param(base, off, dtype);
  };
  const ark_selective_state_update_args& a = p.a;
  const int lanes = 1 << log2_lanes;
  const int lane = int(threadIdx.x) & (lanes - 1);
  const int rows_per_warp = 32 >> log2_lanes;
  const int warp = int(threadIdx.x) >> 5;
  const int group = (int(threadIdx.x) & 31) >> log2_lanes;
  const int64_t b = int64_t(blockIdx.z) * gridDim.y + blockIdx.y;
  if (b >= a.batch) return;  // the whole block
  // Channels < 2^31 and a multiple of rows_per_block, which divides channels_per_group (launcher):
  // every row of the grid exists and a block reads one B/C group.
  const int P = int(a.head_dim);
  const int c0 = int(blockIdx.x) * tile_rows_per_block(log2_lanes, RPT);
  const int h0 = div.head_dim(c0);  // PER_HEAD: the block's head
  int hrow[RPT], prow[RPT];
#pragma unroll
  for (int i = 0; i < RPT; ++i) {
    const int c = c0 + (i * kTileWarps + warp) * rows_per_warp + group;
    hrow[i] = PER_HEAD ? h0 : div.head_dim(c);
    prow[i] = c - hrow[i] * P;
  }
  const int K = int(a.tokens);
  const auto tok = [&](const int64_t* s, int i, int t) {  // offset of (b, t, h, p) in a (b, k, H, P) tensor
    return Off(b) * Off(s[0]) + Off(t) * Off(s[1]) + Off(hrow[i]) * Off(s[2]) + Off(prow[i]) * Off(s[3]);
  };

  const int64_t srow = state_row_of(a, b);
  if (srow < 0 || srow >= a.state_batch) {  // padding / bad index: see the general kernel
    const X fill = from_f32<X>(srow < 0 ? 0.f : __int_as_float(0x7fc00000));
    if (lane == 0)
#pragma unroll 1
      for (int t = 0; t < K; ++t)
#pragma unroll
        for (int i = 0; i < RPT; ++i) static_cast<X*>(a.out)[tok(a.out_strides, i, t)] = fill;
    return;
  }
  const int n0 = lane * V;
  const auto state_row = [&](int i) {
    return static_cast<S*>(a.state) + Off(srow) * Off(a.state_strides[0]) + Off(hrow[i]) * Off(a.state_strides[1]) +
           Off(prow[i]) * Off(a.state_strides[2]) + n0;
  };
  const auto hp = [&](const int64_t* s, int i) { return Off(hrow[i]) * Off(s[0]) + Off(prow[i]) * Off(s[1]); };

  // Every state row (and A row) of the thread first; the token's inputs follow before any use.
  float s[RPT][V];
#pragma unroll
  for (int i = 0; i < RPT; ++i) load_vec<S, V, false>(state_row(i), s[i]);  // plain loads: written below
  constexpr int NP = PER_HEAD ? 1 : RPT;  // rows with their own dt_bias, D and (A_CONST) A
  float A[A_CONST ? 1 : RPT][V], a_row[NP], d[NP], bias[NP];
#pragma unroll
  for (int i = 0; i < NP; ++i) {
    const Off a_off = Off(hrow[i]) * Off(a.A_strides[0]) + Off(prow[i]) * Off(a.A_strides[1]);
    if constexpr (A_CONST) {
      a_row[i] = param(a.A, a_off, a.A_dtype);
    } else {
      a_row[i] = 0.f;
      if constexpr (LEAN) load_vec<float, V, true>(static_cast<const float*>(a.A) + a_off + n0, A[i]);
      else load_A_vec<V>(a, a_off + n0, A[i]);
    }
    d[i] = a.D ? param(a.D, hp(a.D_strides, i), a.D_dtype) : 0.f;
    bias[i] = a.dt_bias ? param(a.dt_bias, hp(a.dt_bias_strides, i), a.dt_bias_dtype) : 0.f;
  }
  const Off g = div.channels_per_group(c0);
  const X* B0 = static_cast<const X*>(a.B) + Off(b) * Off(a.B_strides[0]) + g * Off(a.B_strides[2]) + n0;
  const X* C0 = static_cast<const X*>(a.C) + Off(b) * Off(a.C_strides[0]) + g * Off(a.C_strides[2]) + n0;
  const X* xp = static_cast<const X*>(a.x);
  const X* dtp = static_cast<const X*>(a.dt);
  const X* zp = static_cast<const X*>(a.z);
  const int64_t* is = a.intermediate_states_strides;

#pragma unroll 1
  for (int t = 0; t < K; ++t) {
    float Bv[V], Cv[V], xv[RPT], zv[RPT], dtv[NP];
    load_vec<X, V, true>(B0 + Off(t) * Off(a.B_strides[1]), Bv);
    load_vec<X, V, true>(C0 + Off(t) * Off(a.C_strides[1]), Cv);
#pragma unroll
    for (int i = 0; i < RPT; ++i) {
      xv[i] = ld(xp + tok(a.x_strides, i, t));
      zv[i] = zp ? ld(zp + tok(a.z_strides, i, t)) : 0.f;
      if (i < NP) dtv[i] = ld(dtp + tok(a.dt_strides, i, t));
    }
    float dA_row[NP];
#pragma unroll
    for (int i = 0; i < NP; ++i) {
      dtv[i] += bias[i];
      if (a.dt_softplus) dtv[i] = softplus_f32(dtv[i]);
      dA_row[i] = A_CONST ? __expf(dtv[i] * a_row[i]) : 0.f;
    }
    float part[RPT];
#pragma unroll
    for (int i = 0; i < RPT; ++i) {
      const int j = PER_HEAD ? 0 : i;
      const float dtx = dtv[j] * xv[i];
      part[i] = 0.f;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float dA = A_CONST ? dA_row[j] : __expf(dtv[j] * A[A_CONST ? 0 : i][k]);
        s[i][k] = fmaf(s[i][k], dA, Bv[k] * dtx);
        part[i] = fmaf(s[i][k], Cv[k], part[i]);
      }
      if (a.intermediate_states)
        store_vec<S, V>(static_cast<S*>(a.intermediate_states) + Off(b) * Off(is[0]) + Off(t) * Off(is[1]) +
                            Off(hrow[i]) * Off(is[2]) + Off(prow[i]) * Off(is[3]) + n0,
                        s[i]);
    }
    // The RPT row sums over each lane group, their shuffles interleaved (independent chains).
#pragma unroll 1
    for (int off = lanes >> 1; off > 0; off >>= 1)
#pragma unroll
      for (int i = 0; i < RPT; ++i) part[i] += __shfl_xor_sync(0xffffffffu, part[i], off, lanes);
    if (lane == 0) {
#pragma unroll
      for (int i = 0; i < RPT; ++i) {
        float y = part[i] + d[PER_HEAD ? 0 : i] * xv[i];
        if (zp) y *= silu_f32(zv[i]);
        static_cast<X*>(a.out)[tok(a.out_strides, i, t)] = from_f32<X>(y);
      }
    }
  }
#pragma unroll
  for (int i = 0; i < RPT; ++i) store_vec<S, V>(state_row(i), s[i]);
}

// True when rows of a tensor along its last axis (extent N, stride `inner`) start at addresses aligned
// to `align` bytes for every index of the other axes (sizes[i], strides[i], i < rank) and are contiguous.
bool rows_aligned(const void* base, const int64_t* sizes, const int64_t* strides, int rank, int64_t inner,
                  int elem_bytes, int align) {
  if (inner != 1 || reinterpret_cast<uintptr_t>(base) % uintptr_t(align) != 0) return false;
  for (int i = 0; i < rank; ++i)
    if (sizes[i] > 1 && (strides[i] * elem_bytes) % align != 0) return false;
  return true;
}

int dtype_bytes(ark_dtype d) { return d == ARK_FLOAT32 ? 4 : 2; }

// Whether every element offset of a tensor of these sizes and strides lies in [0, 2^31): no negative
// stride where the extent is above 1, and the offset of the last element (every index at its largest)
// below 2^31. Each product the kernel forms is then below it too.
bool offsets_fit_31(const int64_t* sizes, const int64_t* strides, int rank) {
  constexpr int64_t kLimit = (int64_t(1) << 31) - 1;
  int64_t largest = 0;
  for (int i = 0; i < rank; ++i) {
    if (sizes[i] <= 1) continue;
    if (strides[i] < 0) return false;
    if (strides[i] > 0 && sizes[i] - 1 > (kLimit - largest) / strides[i]) return false;
    largest += (sizes[i] - 1) * strides[i];
  }
  return true;
}

// Whether the head-tile kernel may take its LEAN form: an fp32 state (the only LEAN instances), fp32
// A, D and dt_bias, and every tensor's offsets within 31 bits.
bool lean_layout(const SsuParams& p) {
  const ark_selective_state_update_args& a = p.a;
  if (p.a.state_dtype != ARK_FLOAT32 || knob(Knob::SsuLean) < 0 || a.A_dtype != ARK_FLOAT32 ||
      (a.D && a.D_dtype != ARK_FLOAT32) || (a.dt_bias && a.dt_bias_dtype != ARK_FLOAT32))
    return false;
  const int64_t tok[4] = {a.batch, a.tokens, a.heads, a.head_dim};
  const int64_t st[4] = {a.state_batch, a.heads, a.head_dim, a.dstate};
  const int64_t bc[4] = {a.batch, a.tokens, a.groups, a.dstate};
  const int64_t hpn[3] = {a.heads, a.head_dim, a.dstate}, hp[2] = {a.heads, a.head_dim};
  const int64_t inter[5] = {a.batch, a.tokens, a.heads, a.head_dim, a.dstate};
  return offsets_fit_31(st, a.state_strides, 4) && offsets_fit_31(tok, a.x_strides, 4) &&
         offsets_fit_31(tok, a.dt_strides, 4) && offsets_fit_31(tok, a.out_strides, 4) &&
         (!a.z || offsets_fit_31(tok, a.z_strides, 4)) && offsets_fit_31(bc, a.B_strides, 4) &&
         offsets_fit_31(bc, a.C_strides, 4) && offsets_fit_31(hpn, a.A_strides, 3) &&
         (!a.D || offsets_fit_31(hp, a.D_strides, 2)) && (!a.dt_bias || offsets_fit_31(hp, a.dt_bias_strides, 2)) &&
         (!a.intermediate_states || offsets_fit_31(inter, a.intermediate_states_strides, 5));
}

// Whether the VEC kernel applies (see LaneIO): N a multiple of V and every row read or written along N
// contiguous and aligned for V-element accesses.
template <typename S, typename X>
bool vec_layout(const SsuParams& p) {
  constexpr int V = kVec;
  const ark_selective_state_update_args& a = p.a;
  if (a.dstate == 0 || a.dstate % V != 0) return false;
  const int64_t state_sizes[3] = {a.state_batch, a.heads, a.head_dim};
  const int64_t bc_sizes[3] = {a.batch, a.tokens, a.groups};
  const int64_t inter_sizes[4] = {a.batch, a.tokens, a.heads, a.head_dim};
  const int64_t a_sizes[2] = {a.heads, a.head_dim};
  const int x_align = V * int(sizeof(X)) < 16 ? V * int(sizeof(X)) : 16;
  const int a_bytes = dtype_bytes(a.A_dtype), a_align = V * a_bytes < 16 ? V * a_bytes : 16;
  const int s_align = V * int(sizeof(S));
  return rows_aligned(a.state, state_sizes, a.state_strides, 3, a.state_strides[3], int(sizeof(S)), s_align) &&
         rows_aligned(a.B, bc_sizes, a.B_strides, 3, a.B_strides[3], int(sizeof(X)), x_align) &&
         rows_aligned(a.C, bc_sizes, a.C_strides, 3, a.C_strides[3], int(sizeof(X)), x_align) &&
         (p.a_const_n || rows_aligned(a.A, a_sizes, a.A_strides, 2, a.A_strides[2], a_bytes, a_align)) &&
         (!a.intermediate_states || rows_aligned(a.intermediate_states, inter_sizes, a.intermediate_states_strides,
                                                 4, a.intermediate_states_strides[4], int(sizeof(S)), s_align));
}

// Rows per lane group of the one-chunk kernel: the tuning knob, else kRowsDefault. One row measured
// fastest on the H200 (bench/NOTES.md): more rows per thread cost occupancy and did not put more bytes
// in flight (Mamba-1 0.033 / 0.036 / 0.042 ms, Mamba-2 0.216 / 0.228 / 0.257 ms for 1 / 2 / 4 rows).
constexpr int kRowsDefault = 1;

template <typename S, typename X, int ROWS, bool PREFETCH>
ark_status launch_rows_n(const SsuParams& p, int log2_lanes, dim3 grid, cudaStream_t stream) {
  const int64_t per_block = (kThreads >> log2_lanes) * ROWS;
  grid.x = unsigned((p.a.heads * p.a.head_dim + per_block - 1) / per_block);
  if (p.a_const_n)
    selective_state_update_rows_kernel<S, X, true, ROWS, PREFETCH><<<grid, kThreads, 0, stream>>>(p, log2_lanes);
  else
    selective_state_update_rows_kernel<S, X, false, ROWS, PREFETCH><<<grid, kThreads, 0, stream>>>(p, log2_lanes);
  return cuda_launch_status("selective_state_update", "rows kernel");
}

template <typename S, typename X>
ark_status launch_rows(const SsuParams& p, int log2_lanes, dim3 grid, cudaStream_t stream) {
  const int rows = knob(Knob::SsuRows) ? knob(Knob::SsuRows) : kRowsDefault;
#ifdef ARKERNELS_TUNING_VARIANTS
  // Token prefetch: prepared, not yet measured on a GPU (bench/NOTES.md), so tuning builds only.
  if (knob(Knob::SsuPrefetch)) {
    switch (rows) {
      case 1: return launch_rows_n<S, X, 1, true>(p, log2_lanes, grid, stream);
      case 2: return launch_rows_n<S, X, 2, true>(p, log2_lanes, grid, stream);
    }
  }
#endif
  switch (rows) {
    case 1: return launch_rows_n<S, X, 1, false>(p, log2_lanes, grid, stream);
#ifdef ARKERNELS_TUNING_VARIANTS
    case 2: return launch_rows_n<S, X, 2, false>(p, log2_lanes, grid, stream);
    case 4: return launch_rows_n<S, X, 4, false>(p, log2_lanes, grid, stream);
#endif
  }
  return fail(ARK_ERROR_INVALID_ARGUMENT, "tuning knob ssu_rows: %d is not compiled into this build", rows);
}

// PER_HEAD_ONLY: only the PER_HEAD kernel of this RPT is compiled (default builds pick 4 rows only
// there; with per-row parameters 4 rows spill registers).
template <typename S, typename X, int RPT, bool PER_HEAD_ONLY, bool LEAN>
ark_status launch_tile_instance(const SsuParams& p, int log2_lanes, dim3 grid, bool per_head, cudaStream_t stream) {
  // Both below 2^31 (launch_tile).
  const TileDivisors div{DivU31::of(uint32_t(p.a.head_dim)), DivU31::of(uint32_t(p.channels_per_group))};
  if (per_head)
    selective_state_update_tile_kernel<S, X, RPT, true, true, LEAN><<<grid, kThreads, 0, stream>>>(p, log2_lanes, div);
  else if constexpr (PER_HEAD_ONLY)
    return fail(ARK_ERROR_INVALID_ARGUMENT, "tuning knob ssu_rows: %d rows without PER_HEAD are not compiled", RPT);
  else if (p.a_const_n)
    selective_state_update_tile_kernel<S, X, RPT, true, false, LEAN><<<grid, kThreads, 0, stream>>>(p, log2_lanes, div);
  else
    selective_state_update_tile_kernel<S, X, RPT, false, false, LEAN><<<grid, kThreads, 0, stream>>>(p, log2_lanes, div);
  return cuda_launch_status("selective_state_update", LEAN ? "head-tile kernel (lean)" : "head-tile kernel");
}

// lean: lean_layout(p), computed once by the caller. LEAN_ONLY: the 64-bit form is not compiled.
template <typename S, typename X, int RPT, bool PER_HEAD_ONLY = false, bool LEAN_ONLY = false>
ark_status launch_tile_rpt(const SsuParams& p, int log2_lanes, dim3 grid, bool per_head, bool lean,
                           cudaStream_t stream) {
  grid.x = unsigned(p.a.heads * p.a.head_dim / tile_rows_per_block(log2_lanes, RPT));
  if constexpr (std::is_same_v<S, float>) {
    if (lean) return launch_tile_instance<S, X, RPT, PER_HEAD_ONLY, true>(p, log2_lanes, grid, per_head, stream);
  }
  if constexpr (!LEAN_ONLY) return launch_tile_instance<S, X, RPT, PER_HEAD_ONLY, false>(p, log2_lanes, grid, per_head, stream);
  return fail(ARK_ERROR_INVALID_ARGUMENT, "selective_state_update: the lean head-tile form needs an fp32 state");
}

// The head-tile kernel where it applies (true; *status set), else false: N = lanes * V exactly,
// fewer than 2^31 channels, and a block's rows (rows_per_block) within one B/C group. Rows per lane
// group: 4 where the block shares its head's parameters (PER_HEAD: few registers per row), else 2
// (A, dt, D, dt_bias per row), or 1 for the lean form with per-row parameters (Mamba-1): twice the
// warps, and 5-8% faster than 2 rows at (64, 4096, 16) on the H100 and the H200 (bench/NOTES.md,
// sessions 12 and 13; without the lean form 1 row was slower). The knob ssu_rows overrides (tuning
// builds: 1, 2, 4; 8 measured 52% of copy against 74% for 4 at Mamba-2 on the H200, 2026-12-04).
template <typename S, typename X>
bool launch_tile(const SsuParams& p, int log2_lanes, dim3 grid, cudaStream_t stream, ark_status* status) {
  const ark_selective_state_update_args& a = p.a;
  if (a.dstate != (int64_t(1) << log2_lanes) * kVec || a.heads * a.head_dim >= (int64_t(1) << 31)) return false;
  const auto over_p = [&](int64_t stride) { return a.head_dim == 1 || stride == 0; };
  const bool head_params = p.a_const_n && over_p(a.A_strides[1]) && over_p(a.dt_strides[3]) &&
                           (!a.D || over_p(a.D_strides[1])) && (!a.dt_bias || over_p(a.dt_bias_strides[1]));
  // 4 rows where that keeps the block inside one head, else 2, or 1 (lean, per-row parameters).
  const auto rows_per_block = [&](int rpt) { return int64_t(tile_rows_per_block(log2_lanes, rpt)); };
  const bool lean = std::is_same_v<S, float> && lean_layout(p);
  int rpt = knob(Knob::SsuRows);
  if (rpt == 0) {
    if (head_params && a.head_dim % rows_per_block(4) == 0 && p.channels_per_group % rows_per_block(4) == 0) rpt = 4;
    else rpt = !head_params && lean ? 1 : 2;
  }
  const int64_t rpb = rows_per_block(rpt);
  if (p.channels_per_group % rpb != 0) return false;
  const bool per_head = head_params && a.head_dim % rpb == 0;
  switch (rpt) {
    case 2: *status = launch_tile_rpt<S, X, 2>(p, log2_lanes, grid, per_head, lean, stream); return true;
#ifdef ARKERNELS_TUNING_VARIANTS
    case 4: *status = launch_tile_rpt<S, X, 4>(p, log2_lanes, grid, per_head, lean, stream); return true;
    case 1: *status = launch_tile_rpt<S, X, 1>(p, log2_lanes, grid, per_head, lean, stream); return true;
#else
    case 4: *status = launch_tile_rpt<S, X, 4, true>(p, log2_lanes, grid, per_head, lean, stream); return true;
    case 1:  // the default's 1 row: lean form only
      if (!lean) break;
      *status = launch_tile_rpt<S, X, 1, false, true>(p, log2_lanes, grid, per_head, lean, stream);
      return true;
#endif
  }
  *status = fail(ARK_ERROR_INVALID_ARGUMENT, "tuning knob ssu_rows: %d is not compiled into this build", rpt);
  return true;
}

template <typename S, typename X>
ark_status launch(const SsuParams& p, cudaStream_t stream) {
  constexpr int V = kVec;
  const ark_selective_state_update_args& a = p.a;
  // Lanes per row: enough for one V-element access per lane over the row, at most a warp.
  int log2_lanes = 0;
  while (log2_lanes < 5 && (int64_t(1) << log2_lanes) * V < a.dstate) ++log2_lanes;
  const int64_t rows_per_block = kThreads >> log2_lanes;
  const int64_t channels = a.heads * a.head_dim;
  const int64_t grid_x = (channels + rows_per_block - 1) / rows_per_block;
  if (grid_x > 0x7fffffffLL)
    return fail(ARK_ERROR_INVALID_ARGUMENT, "heads * head_dim: expected at most %lld channels on CUDA, got %lld",
                0x7fffffffLL * rows_per_block, (long long)channels);
  // Batch element b = blockIdx.z * gridDim.y + blockIdx.y.
  const int64_t grid_y = a.batch < kMaxGridYZ ? a.batch : kMaxGridYZ;
  const int64_t grid_z = (a.batch + grid_y - 1) / grid_y;
  if (grid_z > kMaxGridYZ)
    return fail(ARK_ERROR_INVALID_ARGUMENT, "batch: expected at most %lld on CUDA, got %lld", kMaxGridYZ * kMaxGridYZ,
                (long long)a.batch);
  const dim3 grid{unsigned(grid_x), unsigned(grid_y), unsigned(grid_z)};
  const bool vec = vec_layout<S, X>(p);
  if (vec && a.dstate <= 32 * V) {
    // ssu_kernel: 0 = the head-tile kernel where it applies, 1 = the per-row kernel, 2 = the same as 0.
    ark_status status = ARK_SUCCESS;
    if (knob(Knob::SsuKernel) != 1 && launch_tile<S, X>(p, log2_lanes, grid, stream, &status)) return status;
    return launch_rows<S, X>(p, log2_lanes, grid, stream);
  }
  if (!vec)
    selective_state_update_kernel<S, X, false, false><<<grid, kThreads, 0, stream>>>(p, log2_lanes);
  else if (p.a_const_n)
    selective_state_update_kernel<S, X, true, true><<<grid, kThreads, 0, stream>>>(p, log2_lanes);
  else
    selective_state_update_kernel<S, X, true, false><<<grid, kThreads, 0, stream>>>(p, log2_lanes);
  return cuda_launch_status("selective_state_update", "kernel");
}

template <typename S>
ark_status dispatch_input(const SsuParams& p, cudaStream_t stream) {
  switch (p.a.input_dtype) {
    case ARK_FLOAT32: return launch<S, float>(p, stream);
    case ARK_FLOAT16: return launch<S, __half>(p, stream);
    case ARK_BFLOAT16: return launch<S, __nv_bfloat16>(p, stream);
  }
  return fail(ARK_ERROR_INVALID_ARGUMENT, "input_dtype: unknown value %d", int(p.a.input_dtype));
}

}  // namespace

ark_status selective_state_update_cuda(const SsuParams& p, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (p.a.state_dtype) {
    case ARK_FLOAT32: return dispatch_input<float>(p, s);
    case ARK_FLOAT16: return dispatch_input<__half>(p, s);
    case ARK_BFLOAT16: return dispatch_input<__nv_bfloat16>(p, s);
  }
  return fail(ARK_ERROR_INVALID_ARGUMENT, "state_dtype: unknown value %d", int(p.a.state_dtype));
}

}  // namespace ark
