// selective_scan on CUDA: one thread per (channel, K states), walking time in order.
//
// A block holds ROWS channels of one (batch row, group) and R lanes per channel; lane l owns states
// [l*K, l*K + K). Time is staged in tiles of TT steps through shared memory: delta (bias, softplus)
// and delta*u per channel, B/C per step (shared by every channel of the group). Each thread then runs
// the recurrence for its K states with one ex2 per state and step, and accumulates its share of
// y[t] = sum_n C h. The R lanes of a channel combine their shares for R steps at once with a
// reduce-scatter (R-1 shuffles per R steps per lane), so each lane ends up owning one step's sum.
// Why this shape: the scan is bound by the exponentials (B*D*L*N of them), and this layout spends
// about 4 FP32 instructions and one MUFU.EX2 per (step, state) with no block-wide scan per state
// (mamba-ssm runs a CUB block scan per state and step chunk). The sequential dependency per thread
// is one FMA per step; independent states and unrolled steps keep the pipes busy.
//
// Backward: same thread layout, time reversed in tiles of kScanCheckpoint steps. The forward stored
// the state at every tile end; the backward recomputes the tile's states from there (in sub-tiles
// held in registers), runs the adjoint recurrence dh[t] = C[t] dy[t] + a[t+1] dh[t+1], and writes
// per-step sums over states through shared memory. Sums over channels (dB, dC) and over the batch
// (dA, dD, ddelta_bias, constant dB/dC) go to a workspace and are reduced in a fixed order.
// Time chunks: the states come from the checkpoints, so only the adjoint state g = a dh carries from
// one stretch of time to the one before it. Long sequences are cut into chunks that run as separate
// blocks (as many blocks as the GPU holds, whatever batch * dim is): a carry kernel first runs each
// chunk's adjoint recurrence alone (g = 0 at its end), which gives g at the chunk's start as
// G_local + P * g_end with P the product of the chunk's decays (0 if a sequence ends inside it); the
// main kernel's block for a chunk folds the later chunks' (G_local, P) into its g_end and runs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/device_info.hpp"
#include "common/device_math.cuh"
#include "common/status.hpp"
#include "common/tuning.hpp"
#include "ops/selective_scan/selective_scan.cuh"

namespace ark {
namespace {

constexpr int kThreads = 128;
#ifdef ARKERNELS_TUNING_VARIANTS
constexpr bool kTuningVariants = true;
#else
constexpr bool kTuningVariants = false;
#endif
constexpr int kCk = int(kScanCheckpoint);
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

template <typename T> __device__ __forceinline__ float ld(const void* p, int64_t i) {
  return to_f32(static_cast<const T*>(p)[i]);
}
template <typename T> __device__ __forceinline__ void st(void* p, int64_t i, float v) {
  static_cast<T*>(p)[i] = from_f32<T>(v);
}

// Forward time tile (a multiple of kCk): 32 steps where 64 would take more than 4 prefetched chunks
// per thread (Shape::NV_ROWS) or too much shared memory. The host needs it too: time chunks of the
// forward are whole tiles.
__host__ __device__ constexpr int fwd_time_tile(int np, int r) { return (np >= 128 || r < 4) ? 32 : 64; }

// Compile-time shape of a launch: K states per lane, R lanes per channel. SMEM_REDUCE (forward,
// R a multiple of 4): the R lanes' per-step partial sums of y go to shared memory and are added when
// the tile is written, instead of a reduce-scatter through shuffles (see the forward kernel).
template <int K_, int R_, int THREADS_ = kThreads, bool SMEM_REDUCE_ = false> struct Shape {
  static constexpr int K = K_, R = R_, THREADS = THREADS_, ROWS = THREADS_ / R_, NP = K_ * R_;
  static constexpr bool SMEM_REDUCE = SMEM_REDUCE_;
  static_assert(!SMEM_REDUCE_ || R_ % 4 == 0, "smem reduction stores 4 steps per 16-byte store");
  static constexpr int NPP = NP + 4;                 // padded B/C row: 16-byte aligned, fewer bank conflicts
  static constexpr int TT = fwd_time_tile(NP, R_);
  static constexpr int TS = 32 / K_;                 // backward sub-tile held in registers
  // Forward staging through 16-byte chunks prefetched in registers: chunks per thread per tensor
  // (sized for fp32); used where that stays within a few registers.
  static constexpr int NV_ROWS = (ROWS * TT * 4 / 16 + THREADS - 1) / THREADS;
  static constexpr int NV_BC = (NP * TT * 4 / 16 + THREADS - 1) / THREADS;
  static constexpr bool VEC = NV_ROWS <= 4 && NV_BC <= 4;
};

__host__ __device__ constexpr int align4(int n) { return (n + 3) & ~3; }

// Which block of channels this block owns.
struct BlockPos {
  int64_t b, g, rb, d_first;  // batch row, group, row block, first channel
  int rows_valid;
};
__device__ __forceinline__ BlockPos block_pos(const ark_selective_scan_args& a, int rows, int64_t blk = blockIdx.x) {
  const int64_t per_group = a.dim / a.ngroups, nrb = (per_group + rows - 1) / rows;
  BlockPos p;
  p.rb = blk % nrb;
  blk /= nrb;
  p.g = blk % a.ngroups;
  p.b = blk / a.ngroups;
  p.d_first = p.g * per_group + p.rb * rows;
  const int64_t left = per_group - p.rb * rows;
  p.rows_valid = int(left < rows ? left : rows);
  return p;
}

// Time chunks of the forward (pick_fwd): blocks0 blocks per chunk, chunks of whole time tiles. The
// carries live in the forward's workspace (fwd_workspace_floats).
struct FwdChunks {
  int64_t chunks = 1, blocks0 = 1;
  float* carry_h = nullptr;  // (chunks - 1, batch, dim, N): each chunk's end state from a zero start
  float* carry_p = nullptr;  // (chunks - 1, batch, dim, N): the product of its decays (0 past a sequence start)
};
struct FwdChunkSteps {
  int64_t first, end;
};
__host__ __device__ inline FwdChunkSteps fwd_chunk_steps(int64_t L, int tile, int64_t chunks, int64_t chunk) {
  const int64_t per = ceil_div(ceil_div(L, tile), chunks) * tile, first = chunk * per;
  return {first, first + per < L ? first + per : L};
}

// 16-byte chunks line up with rows: every itype row starts 16-byte aligned.
__host__ __device__ inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
__host__ __device__ inline bool vec_ok(const ark_selective_scan_args& a) {
  const int esize = a.dtype == ARK_FLOAT32 ? 4 : 2;
  const auto aligned = aligned16;
  return (a.seqlen * esize) % 16 == 0 && aligned(a.u) && aligned(a.delta) && aligned(a.out) &&
         (!a.z || (aligned(a.z) && (!a.y_pre || aligned(a.y_pre)))) && (!a.B_variable || aligned(a.B)) &&
         (!a.C_variable || aligned(a.C));
}

// Sequence boundaries of packed inputs: for each step of the tile, the index of the sequence that
// starts / ends there, or -1.
__device__ void stage_seq_flags(const ark_selective_scan_args& a, int64_t t0, int tile, int* s_start, int* s_end) {
  for (int t = threadIdx.x; t < tile; t += blockDim.x) {
    const int64_t tg = t0 + t;
    int st = -1, en = -1;
    if (tg < a.seqlen) {
      int64_t lo = 0, hi = a.num_seqs;  // largest s with cu[s] <= tg; cu[s+1] > tg then
      while (hi - lo > 1) {
        const int64_t mid = (lo + hi) / 2;
        if (a.cu_seqlens[mid] <= tg) lo = mid; else hi = mid;
      }
      if (a.cu_seqlens[lo] == tg) st = int(lo);
      if (a.cu_seqlens[lo + 1] - 1 == tg) en = int(lo);
    }
    s_start[t] = st;
    s_end[t] = en;
  }
}

// Constant B or C: the block's channels' rows, once.
template <class S>
__device__ void stage_const_bc(const ark_selective_scan_args& a, const float* src, const BlockPos& bp, float* dst) {
  for (int e = threadIdx.x; e < S::ROWS * S::NP; e += S::THREADS) {
    const int r = e / S::NP, n = e % S::NP;
    dst[r * S::NPP + n] = (r < bp.rows_valid && n < a.dstate) ? src[(bp.d_first + r) * a.dstate + n] : 0.f;
  }
}

// Index of (step t, state n) in a staged variable B or C: transposed, (step, state).
template <class S> struct StepMajor {
  __device__ int operator()(int t, int n) const { return t * S::NPP + n; }
};

// The forward's layout when B and C are both variable: per step a row of 2 * NPP floats in which
// each lane's K B values are followed by its K C values, so that a lane reads its B and C of a step
// with one 16-byte load (K = 2) instead of two 8-byte ones. WHICH: 0 = B, 1 = C.
template <class S, int WHICH> struct PairedBC {
  __device__ int operator()(int t, int n) const { return t * 2 * S::NPP + (n / S::K) * 2 * S::K + WHICH * S::K + n % S::K; }
};

// Variable B or C for steps [t0, t0 + tile), at dst[index(step, state)].
template <typename T, class S, class Index = StepMajor<S>>
__device__ void stage_var_bc(const ark_selective_scan_args& a, const void* src, const BlockPos& bp, int64_t t0,
                             int tile, float* dst, Index index = {}) {
  const int64_t base = (bp.b * a.ngroups + bp.g) * a.dstate * a.seqlen;
  for (int e = threadIdx.x; e < S::NP * tile; e += S::THREADS) {
    const int n = e / tile, t = e % tile;
    const int64_t tg = t0 + t;
    dst[index(t, n)] = (n < a.dstate && tg < a.seqlen) ? ld<T>(src, base + n * a.seqlen + tg) : 0.f;
  }
}

// stage_var_bc with every load of the thread issued before the first store (a compile-time trip
// count, unrolled): one memory latency per call instead of one per loop iteration.
template <typename T, class S, int TILE>
__device__ void stage_var_bc_batched(const ark_selective_scan_args& a, const void* src, const BlockPos& bp, int64_t t0,
                                     float* dst) {
  constexpr int ITER = (S::NP * TILE + S::THREADS - 1) / S::THREADS;
  const int64_t base = (bp.b * a.ngroups + bp.g) * a.dstate * a.seqlen;
  float v[ITER];
#pragma unroll
  for (int m = 0; m < ITER; ++m) {
    const int e = threadIdx.x + m * S::THREADS, n = e / TILE, t = e % TILE;
    const int64_t tg = t0 + t;
    v[m] = (e < S::NP * TILE && n < a.dstate && tg < a.seqlen) ? ld<T>(src, base + n * a.seqlen + tg) : 0.f;
  }
#pragma unroll
  for (int m = 0; m < ITER; ++m) {
    const int e = threadIdx.x + m * S::THREADS;
    if (e < S::NP * TILE) dst[(e % TILE) * S::NPP + e / TILE] = v[m];
  }
}

// R values per lane -> lane l holds the sum over the R lanes of value l, in v[0].
template <int R> __device__ __forceinline__ void reduce_scatter(float (&v)[R], int lane) {
#pragma unroll
  for (int o = R / 2; o >= 1; o /= 2) {
    const bool upper = lane & o;
#pragma unroll
    for (int i = 0; i < o; ++i) {
      const float send = upper ? v[i] : v[i + o];
      const float keep = upper ? v[i + o] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
    }
  }
}

template <int K> __device__ __forceinline__ void load_vec(const float* p, float (&v)[K]) {
  if constexpr (K == 4) {
    const float4 x = *reinterpret_cast<const float4*>(p);
    v[0] = x.x; v[1] = x.y; v[2] = x.z; v[3] = x.w;
  } else if constexpr (K == 2) {
    const float2 x = *reinterpret_cast<const float2*>(p);
    v[0] = x.x; v[1] = x.y;
  } else {
#pragma unroll
    for (int k = 0; k < K; k += 4) {
      const float4 x = *reinterpret_cast<const float4*>(p + k);
      v[k] = x.x; v[k + 1] = x.y; v[k + 2] = x.z; v[k + 3] = x.w;
    }
  }
}

// Per-thread state loads/stores of K consecutive states of one (sequence, channel) row.
template <int K> __device__ __forceinline__ void load_state(const float* src, int64_t row, int64_t N, int n0, bool ok,
                                                             float (&h)[K]) {
#pragma unroll
  for (int k = 0; k < K; ++k) h[k] = (ok && src && n0 + k < N) ? src[row * N + n0 + k] : 0.f;
}
template <int K> __device__ __forceinline__ void store_state(float* dst, int64_t row, int64_t N, int n0, bool ok,
                                                              const float (&h)[K]) {
  if (!ok || !dst) return;
#pragma unroll
  for (int k = 0; k < K; ++k)
    if (n0 + k < N) dst[row * N + n0 + k] = h[k];
}


// ---- 16-byte chunks: the forward's staging when rows are 16-byte aligned ----

template <int NV> struct Chunks {
  uint4 v[NV];
};

__device__ __forceinline__ int chunk_elems(ark_dtype dt) { return dt == ARK_FLOAT32 ? 4 : 8; }

// The chunk's elements as fp32 (4 for fp32, 8 for 16-bit types); DT known at compile time, or (the
// forward) at run time.
template <ark_dtype DT> __device__ __forceinline__ void unpack_as(const uint4& v, float (&x)[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (DT == ARK_FLOAT32) {
      x[i] = __uint_as_float(w[i]);
    } else if constexpr (DT == ARK_BFLOAT16) {
      x[2 * i] = __uint_as_float(w[i] << 16);
      x[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    } else {
      x[2 * i] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[i] & 0xffffu)));
      x[2 * i + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[i] >> 16)));
    }
  }
}
__device__ __forceinline__ void unpack(const uint4& v, ark_dtype dt, float (&x)[8]) {
  if (dt == ARK_FLOAT32) unpack_as<ARK_FLOAT32>(v, x);
  else if (dt == ARK_BFLOAT16) unpack_as<ARK_BFLOAT16>(v, x);
  else unpack_as<ARK_FLOAT16>(v, x);
}

template <ark_dtype DT> __device__ __forceinline__ uint4 pack_as(const float (&x)[8]) {
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (DT == ARK_FLOAT32) {
      w[i] = __float_as_uint(x[i]);
    } else if constexpr (DT == ARK_BFLOAT16) {
      w[i] = uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(x[2 * i]))) |
             (uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(x[2 * i + 1]))) << 16);
    } else {
      w[i] = uint32_t(__half_as_ushort(__float2half_rn(x[2 * i]))) |
             (uint32_t(__half_as_ushort(__float2half_rn(x[2 * i + 1]))) << 16);
    }
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}
__device__ __forceinline__ uint4 pack(const float (&x)[8], ark_dtype dt) {
  if (dt == ARK_FLOAT32) return pack_as<ARK_FLOAT32>(x);
  if (dt == ARK_BFLOAT16) return pack_as<ARK_BFLOAT16>(x);
  return pack_as<ARK_FLOAT16>(x);
}

// Chunk k of this thread in a (rows x tile) tile: tile row r, chunk j of the row. Consecutive threads
// take consecutive chunks of a row (coalesced loads), or, ROW_MINOR, the same chunk of consecutive
// rows (B/C: their stores into the step-major layout then hit distinct banks; B/C traffic is small).
// chunks_per_row is a power of two (tiles of 32 or 64 steps, chunks of 4 or 8), so the row and chunk
// come from a shift and a mask: the forward knows its dtype only at run time, and there the division
// cost ~50 instructions per tile and warp (ncu source counters, bench/NOTES.md session 11).
template <int THREADS, bool ROW_MINOR = false> struct ChunkPos {
  int r, j;
  bool in_tile;
  __device__ ChunkPos(int k, int rows, int chunks_per_row) {
    const int e = threadIdx.x + k * THREADS, shift = __ffs(chunks_per_row) - 1;
    in_tile = e < (rows << shift);
    r = ROW_MINOR ? e % rows : e >> shift;
    j = ROW_MINOR ? e / rows : e & (chunks_per_row - 1);
  }
};

// Loads this thread's chunks of steps [t0, t0 + tile) of rows first_row + r (r < rows_valid) of a
// (.., L) tensor; chunks outside the tensor read as zeros. Needs L and the base 16-byte aligned.
template <int NV, int THREADS, bool ROW_MINOR = false>
__device__ __forceinline__ void load_chunks(Chunks<NV>& c, const void* src, int64_t first_row, int rows,
                                            int rows_valid, int64_t t0, int tile, int64_t L, ark_dtype dt) {
  const int epc = chunk_elems(dt), cpr = tile / epc;
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const ChunkPos<THREADS, ROW_MINOR> p(k, rows, cpr);
    const int64_t t = t0 + int64_t(p.j) * epc;
    c.v[k] = make_uint4(0u, 0u, 0u, 0u);
    if (p.in_tile && p.r < rows_valid && t < L) {
      const int64_t elem = (first_row + p.r) * L + t;
      c.v[k] = __ldg(reinterpret_cast<const uint4*>(static_cast<const char*>(src) + elem * (dt == ARK_FLOAT32 ? 4 : 2)));
    }
  }
}

// ---------------------------------------------------------------- forward

template <class S> struct FwdSmem {
  // Row pitch of `part`: 16-byte aligned, and 4 banks apart for the 8 lanes of a quarter warp.
  static constexpr int PART_PITCH = S::TT + 4;
  static constexpr int PART_FLOATS = S::SMEM_REDUCE ? S::ROWS * S::R * PART_PITCH : 0;
  // dd and y rows carry a gap after every 8 steps (2 float2 / 4 floats), so that the 8 threads of a
  // quarter warp, which stage 8 consecutive chunks of 8 steps of a row with 16-byte stores, hit
  // distinct banks (without the gaps: 4-way conflicts, bench/NOTES.md). Pitches: dd even (two steps
  // with t even are one 16-byte load), y 8 banks apart for the 4 rows of a warp in the step loop.
  static constexpr int DD_PITCH = S::TT + S::TT / 4 + 2;
  static constexpr int Y_PITCH = S::TT + S::TT / 2 + 8;
  __device__ static __forceinline__ int dd_index(int r, int t) { return r * DD_PITCH + t + 2 * (t >> 3); }
  __device__ static __forceinline__ int y_index(int r, int t) { return r * Y_PITCH + t + 4 * (t >> 3); }
  float2* dd;  // (ROWS, DD_PITCH): (delta, delta*u) at dd_index
  float* y;    // (ROWS, Y_PITCH): D*u, then (shuffle reduction) + sum_n C h, at y_index
  float* B;    // (TT, NPP) variable or (ROWS, NPP) constant; B and C both variable: (TT, 2 NPP), PairedBC
  float* C;
  float* part;  // SMEM_REDUCE: (ROWS * R, PART_PITCH): lane l's share of sum_n C h of each step
  int* start;  // (TT)
  int* end;
  static constexpr int floats() {
    return 2 * align4(S::ROWS * DD_PITCH) + align4(S::ROWS * Y_PITCH) +
           2 * align4((S::TT > S::ROWS ? S::TT : S::ROWS) * S::NPP) + PART_FLOATS + 2 * S::TT;
  }
  __device__ explicit FwdSmem(float* base) {
    dd = reinterpret_cast<float2*>(base);
    y = base + 2 * align4(S::ROWS * DD_PITCH);
    B = y + align4(S::ROWS * Y_PITCH);
    C = B + align4((S::TT > S::ROWS ? S::TT : S::ROWS) * S::NPP);
    part = C + align4((S::TT > S::ROWS ? S::TT : S::ROWS) * S::NPP);
    start = reinterpret_cast<int*>(part + PART_FLOATS);
    end = start + S::TT;
  }
  // y of tile row r, step t: D*u, plus (SMEM_REDUCE) the R lanes' shares summed in lane order.
  __device__ __forceinline__ float y_at(int r, int t) const {
    float v = y[y_index(r, t)];
    if constexpr (S::SMEM_REDUCE) {
#pragma unroll
      for (int l = 0; l < S::R; ++l) v += part[(r * S::R + l) * PART_PITCH + t];
    }
    return v;
  }
  // The same for the chunk of steps t .. t+n-1 (n = 4 or 8, t a multiple of n): 16-byte loads.
  __device__ __forceinline__ void y_chunk(int r, int t, int n, float (&v)[8]) const {
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      if (4 * q >= n) break;
      const float4 p = *reinterpret_cast<const float4*>(y + y_index(r, t) + 4 * q);
      v[4 * q] = p.x;
      v[4 * q + 1] = p.y;
      v[4 * q + 2] = p.z;
      v[4 * q + 3] = p.w;
    }
    if constexpr (S::SMEM_REDUCE) {
#pragma unroll
      for (int l = 0; l < S::R; ++l) {
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          if (4 * q >= n) break;
          const float4 p = *reinterpret_cast<const float4*>(part + (r * S::R + l) * PART_PITCH + t + 4 * q);
          v[4 * q] += p.x;
          v[4 * q + 1] += p.y;
          v[4 * q + 2] += p.z;
          v[4 * q + 3] += p.w;
        }
      }
    }
  }
};

// CARRY (the carry kernel): only what the state recurrence reads (delta, delta*u, B).
template <typename T, class S, bool BC_VAR, bool CARRY>
__device__ void stage_fwd(const ark_selective_scan_args& a, const BlockPos& bp, int64_t t0, FwdSmem<S>& sm) {
  for (int e = threadIdx.x; e < S::ROWS * S::TT; e += S::THREADS) {
    const int r = e / S::TT, t = e % S::TT;
    const int64_t tg = t0 + t;
    float dl = 0.f, du = 0.f, y = 0.f;
    if (r < bp.rows_valid && tg < a.seqlen) {
      const int64_t d = bp.d_first + r, i = (bp.b * a.dim + d) * a.seqlen + tg;
      const float u = ld<T>(a.u, i);
      dl = ld<T>(a.delta, i);
      if (a.delta_bias) dl += a.delta_bias[d];
      if (a.delta_softplus) dl = softplus_f32(dl);
      du = dl * u;
      if (a.D) y = a.D[d] * u;
    }
    sm.dd[FwdSmem<S>::dd_index(r, t)] = make_float2(dl, du);
    if constexpr (!CARRY) sm.y[FwdSmem<S>::y_index(r, t)] = y;
  }
  if constexpr (BC_VAR) {
    stage_var_bc<T, S>(a, a.B, bp, t0, S::TT, sm.B, PairedBC<S, 0>{});
    stage_var_bc<T, S>(a, a.C, bp, t0, S::TT, sm.B, PairedBC<S, 1>{});
  } else {
    if (a.B_variable) stage_var_bc<T, S>(a, a.B, bp, t0, S::TT, sm.B);
    if (!CARRY && a.C_variable) stage_var_bc<T, S>(a, a.C, bp, t0, S::TT, sm.C);
  }
}

template <typename T, class S>
__device__ void write_fwd(const ark_selective_scan_args& a, const BlockPos& bp, int64_t t0, const FwdSmem<S>& sm) {
  for (int e = threadIdx.x; e < S::ROWS * S::TT; e += S::THREADS) {
    const int r = e / S::TT, t = e % S::TT;
    const int64_t tg = t0 + t;
    if (r >= bp.rows_valid || tg >= a.seqlen) continue;
    const int64_t i = (bp.b * a.dim + bp.d_first + r) * a.seqlen + tg;
    float y = sm.y_at(r, t);
    if (a.z) {
      if (a.y_pre) st<T>(a.y_pre, i, y);
      y *= silu_f32(ld<T>(a.z, i));
    }
    st<T>(a.out, i, y);
  }
}


// FDT (the forward's last template argument): the element type of u, delta, B, C, z and out at compile
// time, or kFwdRuntimeDtype (read from the arguments). At compile time every chunk position, element
// count and dtype branch of the per-tile code folds (the default forward's instances: kFwdPairedDefault).
constexpr int kFwdRuntimeDtype = -1;
template <int FDT> __device__ __forceinline__ ark_dtype fwd_dtype(const ark_selective_scan_args& a) {
  if constexpr (FDT == kFwdRuntimeDtype) return a.dtype;
  else return ark_dtype(FDT);
}

// Vector staging: u/delta chunks -> (delta, delta*u) and D*u; B/C chunks -> (step, state) layout.
// CARRY: neither D*u nor C.
template <class S, bool BC_VAR, bool CARRY, int FDT>
__device__ void store_staged(const ark_selective_scan_args& a, const BlockPos& bp, int64_t t0, FwdSmem<S>& sm,
                             const Chunks<S::NV_ROWS>& cu, const Chunks<S::NV_ROWS>& cd,
                             const Chunks<S::NV_BC>& cb, const Chunks<S::NV_BC>& cc) {
  const ark_dtype dt = fwd_dtype<FDT>(a);
  const int epc = chunk_elems(dt), cpr = S::TT / epc;
#pragma unroll
  for (int k = 0; k < S::NV_ROWS; ++k) {
    const ChunkPos<S::THREADS> p(k, S::ROWS, cpr);
    if (!p.in_tile) continue;
    float u[8], dl[8];
    unpack(cu.v[k], dt, u);
    unpack(cd.v[k], dt, dl);
    const bool row_ok = p.r < bp.rows_valid;
    const int64_t d = bp.d_first + (row_ok ? p.r : 0);
    const float bias = a.delta_bias ? a.delta_bias[d] : 0.f, Dd = a.D ? a.D[d] : 0.f;
    // The chunk's steps are consecutive in dd and y (a chunk never spans a gap): 16-byte stores.
    float4* ddv = reinterpret_cast<float4*>(sm.dd + FwdSmem<S>::dd_index(p.r, p.j * epc));
    float4* yv = reinterpret_cast<float4*>(sm.y + FwdSmem<S>::y_index(p.r, p.j * epc));
    float x[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {  // constant indices keep u/dl in registers
      if (i >= epc) break;
      x[i] = dl[i] + bias;
      if (a.delta_softplus) x[i] = softplus_f32(x[i]);
      if (!row_ok || t0 + p.j * epc + i >= a.seqlen) x[i] = 0.f;  // padding steps are the identity
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      if (2 * q >= epc) break;
      ddv[q] = make_float4(x[2 * q], x[2 * q] * u[2 * q], x[2 * q + 1], x[2 * q + 1] * u[2 * q + 1]);
      if (!CARRY && q % 2 == 0) yv[q / 2] = make_float4(Dd * u[2 * q], Dd * u[2 * q + 1], Dd * u[2 * q + 2], Dd * u[2 * q + 3]);
    }
  }
#pragma unroll
  for (int k = 0; k < S::NV_BC; ++k) {
    const ChunkPos<S::THREADS, true> p(k, S::NP, cpr);
    if (!p.in_tile) continue;
    float b[8], c[8];
    unpack(cb.v[k], dt, b);
    unpack(cc.v[k], dt, c);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if (i >= epc) break;
      const int t = p.j * epc + i;
      if constexpr (BC_VAR) {
        sm.B[PairedBC<S, 0>{}(t, p.r)] = b[i];
        sm.B[PairedBC<S, 1>{}(t, p.r)] = c[i];
      } else {
        if (a.B_variable) sm.B[t * S::NPP + p.r] = b[i];
        if (!CARRY && a.C_variable) sm.C[t * S::NPP + p.r] = c[i];
      }
    }
  }
}

template <class S, int FDT>
__device__ void write_fwd_vec(const ark_selective_scan_args& a, const BlockPos& bp, int64_t t0, const FwdSmem<S>& sm,
                              const Chunks<S::NV_ROWS>& cz) {
  const ark_dtype dt = fwd_dtype<FDT>(a);
  const int epc = chunk_elems(dt), cpr = S::TT / epc, esize = dt == ARK_FLOAT32 ? 4 : 2;
#pragma unroll
  for (int k = 0; k < S::NV_ROWS; ++k) {
    const ChunkPos<S::THREADS> p(k, S::ROWS, cpr);
    const int64_t t = t0 + int64_t(p.j) * epc;
    if (!p.in_tile || p.r >= bp.rows_valid || t >= a.seqlen) continue;
    float y[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    sm.y_chunk(p.r, p.j * epc, epc, y);
    const int64_t byte = ((bp.b * a.dim + bp.d_first + p.r) * a.seqlen + t) * esize;
    if (a.z) {
      if (a.y_pre) *reinterpret_cast<uint4*>(static_cast<char*>(a.y_pre) + byte) = pack(y, dt);
      float z[8];
      unpack(cz.v[k], dt, z);
#pragma unroll
      for (int i = 0; i < 8; ++i)
        if (i < epc) y[i] *= silu_f32(z[i]);
    }
    *reinterpret_cast<uint4*>(static_cast<char*>(a.out) + byte) = pack(y, dt);
  }
}

// How the R lanes of a channel combine their shares of y (sum_n C h) per step.
enum class FwdReduce : int {
  kShufflePipelined = 0,  // reduce-scatter through shuffles, overlapped with the next group (default)
  kShuffle = 1,           // the same, not overlapped (tuning builds)
  kSmem = 2,              // shares stored to shared memory, summed when the tile is written (S::SMEM_REDUCE)
};

// 256-thread shapes of N <= 16 are held to 128 registers (2 blocks per SM): the compiler's own choice
// for the default K2R8 shape crept from 128 to 174 with the 16-byte staging stores, which halves the
// warps; at 128 it spills 16 bytes outside the step loop. (N = 32 would spill 128+ bytes: not held.)
// BC_VAR: B and C both variable, their staged layout (PairedBC) and strides compile-time, so every
// shared-memory load of the step loop has an immediate offset (loop 210 -> 187 SASS instructions).
// Alone, or with the overlapped reduce-scatter, it ran no faster; with the reduce-scatter not
// overlapped (kShuffle) it was 3-4% faster than either alone (kFwdPairedDefault, bench/NOTES.md).
// CARRY = true: the carry kernel of a time-chunked forward (FwdChunks). Its block for chunk c < chunks - 1
// runs the chunk's state recurrence alone (from zero; chunk 0 from initial_state) with C, y, z and every
// output compiled out, and stores the end state and the chunk's decay product. CARRY = false with
// chunks > 1: the block for chunk c starts from the earlier chunks' carries folded in order.
template <class S>
constexpr FwdReduce FwdDefaultReduce = S::SMEM_REDUCE ? FwdReduce::kSmem : FwdReduce::kShufflePipelined;
// The default forward for N <= 16 with B and C both variable and no packed sequences (kFwdPairedDefault:
// where it applies): paired B/C rows, the reduce-scatter not overlapped, and the element type fixed at
// compile time (FDT, one instance per element type). H100, 12-06, b4 d2048 l4096 bf16, same run: 0.3374 ms
// against 0.3783 / 0.3786 for the generic path timed first and last, 0.3598 for the same form with the
// element type read at run time; b2 d1536 l2048 (6 chunks) 0.1143 against 0.1235 (bench/NOTES.md, session
// 14). Elsewhere the generic path (run-time element type, overlapped reduce-scatter).
template <class S> constexpr bool kFwdPairedDefault = S::NP == 16 && !S::SMEM_REDUCE;

template <class S, bool VARLEN, bool BC_VAR, FwdReduce RED = FwdDefaultReduce<S>, bool CARRY = false,
          int FDT = kFwdRuntimeDtype>
__global__ void __launch_bounds__(S::THREADS, S::THREADS == 256 && S::NP <= 16 ? 2 : 1)
    selective_scan_fwd_kernel(const ark_selective_scan_args a, const FwdChunks ch) {
  constexpr int K = S::K, R = S::R, TT = S::TT;
  static_assert(!(CARRY && BC_VAR), "the carry kernel stages B alone");
  extern __shared__ float4 smem_f4[];
  FwdSmem<S> sm(reinterpret_cast<float*>(smem_f4));
  const int64_t chunk = blockIdx.x / ch.blocks0;
  const BlockPos bp = block_pos(a, S::ROWS, blockIdx.x % ch.blocks0);
  const int row = threadIdx.x / R, lane = threadIdx.x % R, n0 = lane * K;
  const bool row_ok = row < bp.rows_valid;
  const int64_t d = bp.d_first + (row_ok ? row : 0);
  const int64_t N = a.dstate, L = a.seqlen, nck = ceil_div(L, kCk);
  const int64_t state_row = bp.b * a.dim + d, carry_stride = a.batch * a.dim;
  const FwdChunkSteps steps = fwd_chunk_steps(L, TT, ch.chunks, chunk);

  float A2[K], h[K];
#pragma unroll
  for (int k = 0; k < K; ++k) A2[k] = (row_ok && n0 + k < N) ? a.A[d * N + n0 + k] * kLog2e : 0.f;
  if (VARLEN || chunk > 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) h[k] = 0.f;
  } else {
    load_state<K>(a.initial_state, state_row, N, n0, row_ok, h);
  }
  if constexpr (!CARRY) {
    // h at the chunk's start: each earlier chunk maps the state at its start s to P s + H.
    for (int64_t q = 0; q < chunk; ++q) {
      float hq[K], pq[K];
      load_state<K>(ch.carry_h, q * carry_stride + state_row, N, n0, row_ok, hq);
      load_state<K>(ch.carry_p, q * carry_stride + state_row, N, n0, row_ok, pq);
#pragma unroll
      for (int k = 0; k < K; ++k) h[k] = fmaf(pq[k], h[k], hq[k]);
    }
  }
  float delta_sum = 0.f;  // CARRY: the chunk's decay product is ex2(A2 * sum of delta)
  bool cut = false;       // CARRY, VARLEN: a sequence starts inside the chunk (its decay product is 0)
  if (!BC_VAR && !a.B_variable) stage_const_bc<S>(a, static_cast<const float*>(a.B), bp, sm.B);
  if (!BC_VAR && !CARRY && !a.C_variable) stage_const_bc<S>(a, static_cast<const float*>(a.C), bp, sm.C);
  // Generic path: variable B/C indexed by step, constant by channel. BC_VAR: paired rows of 2 NPP.
  const float* Bp = BC_VAR ? sm.B + PairedBC<S, 0>{}(0, n0) : a.B_variable ? sm.B + n0 : sm.B + row * S::NPP + n0;
  const float* Cp = a.C_variable ? sm.C + n0 : sm.C + row * S::NPP + n0;
  const int b_step = a.B_variable ? S::NPP : 0, c_step = a.C_variable ? S::NPP : 0;

  // Vector path: the next tile's chunks are loaded into registers while this tile is computed.
  const bool vec = S::VEC && vec_ok(a);
  Chunks<S::NV_ROWS> cu, cd, cz;
  Chunks<S::NV_BC> cb, cc;
  const int64_t row0 = bp.b * a.dim + bp.d_first, bc_row0 = (bp.b * a.ngroups + bp.g) * N;
  auto prefetch = [&](int64_t t) {
    load_chunks<S::NV_ROWS, S::THREADS>(cu, a.u, row0, S::ROWS, bp.rows_valid, t, TT, L, fwd_dtype<FDT>(a));
    load_chunks<S::NV_ROWS, S::THREADS>(cd, a.delta, row0, S::ROWS, bp.rows_valid, t, TT, L, fwd_dtype<FDT>(a));
    if (a.B_variable) load_chunks<S::NV_BC, S::THREADS, true>(cb, a.B, bc_row0, S::NP, int(N), t, TT, L, fwd_dtype<FDT>(a));
    if (!CARRY && a.C_variable) load_chunks<S::NV_BC, S::THREADS, true>(cc, a.C, bc_row0, S::NP, int(N), t, TT, L, fwd_dtype<FDT>(a));
  };
  if (vec) prefetch(steps.first);

  for (int64_t t0 = steps.first; t0 < steps.end; t0 += TT) {
    __syncthreads();
    if (vec) {
      store_staged<S, BC_VAR, CARRY, FDT>(a, bp, t0, sm, cu, cd, cb, cc);
    } else {
      switch (fwd_dtype<FDT>(a)) {
        case ARK_FLOAT32: stage_fwd<float, S, BC_VAR, CARRY>(a, bp, t0, sm); break;
        case ARK_FLOAT16: stage_fwd<__half, S, BC_VAR, CARRY>(a, bp, t0, sm); break;
        default: stage_fwd<__nv_bfloat16, S, BC_VAR, CARRY>(a, bp, t0, sm); break;
      }
    }
    if (VARLEN) stage_seq_flags(a, t0, TT, sm.start, sm.end);
    __syncthreads();
    if (vec) {
      if (t0 + TT < steps.end) prefetch(t0 + TT);
      if (!CARRY && a.z) load_chunks<S::NV_ROWS, S::THREADS>(cz, a.z, row0, S::ROWS, bp.rows_valid, t0, TT, L, fwd_dtype<FDT>(a));
    }
    // Not unrolled across groups: a fully unrolled tile (stores deferred to its end) measured the
    // same speed with 234 registers instead of ~100, halving the blocks per SM (bench/NOTES.md).
    // Groups of fewer than 4 steps (R < 4) are unrolled to 4 steps per iteration.
    // PIPELINED: the reduce-scatter of group g-1 is issued at the start of group g, in the same basic
    // block as g's arithmetic, so its chain of dependent shuffles (~100 cycles) overlaps g's
    // exponentials instead of stalling the warp at the end of every group (SASS of the unpipelined
    // loop: SHFL -> FADD -> FSEL three times, then LDS/FADD/STS, before the branch back).
    // The first group reduces zeros into the row's padding column TT (never read).
    // kSmem: each lane stores its R shares of a group with R/4 16-byte stores (~0.25 instructions per
    // step instead of ~3.5 for the shuffles, selects and adds); write_fwd* add them up after the tile.
    constexpr bool PIPELINED = !CARRY && RED == FwdReduce::kShufflePipelined;
    static_assert(S::SMEM_REDUCE == (RED == FwdReduce::kSmem), "kSmem needs the shape's shared buffer");
    constexpr int kGroupUnroll = R >= 4 ? 1 : 4 / R;
    float prev[R];
#pragma unroll
    for (int j = 0; j < R; ++j) prev[j] = 0.f;
    int prev_slot = TT;  // y column that prev[] belongs to (TT: the padding column)
#pragma unroll kGroupUnroll
    for (int tt = 0; tt < TT; tt += R) {
      if constexpr (PIPELINED) {
        reduce_scatter<R>(prev, lane);
        sm.y[FwdSmem<S>::y_index(row, prev_slot)] += prev[0];
      }
      float acc[R];
      // The group's (delta, delta*u): two steps per 16-byte load where R is even (tt is then even).
      // Step tt + j sits at dd_index(row, tt) + j + 2 (j / 8): tt is a multiple of R, and R divides 8
      // or is a multiple of it, so the gaps between tt and tt + j are those between 0 and j.
      const float2* ddp = sm.dd + FwdSmem<S>::dd_index(row, tt);
      float2 ddg[R];
#pragma unroll
      for (int j = 0; j < R; ++j) {
        if constexpr (R % 2 == 0) {
          if (j % 2 == 0) {
            const float4 x = *reinterpret_cast<const float4*>(ddp + j + 2 * (j >> 3));
            ddg[j] = make_float2(x.x, x.y);
            ddg[j + 1] = make_float2(x.z, x.w);
          }
        } else {
          ddg[j] = ddp[j];
        }
      }
#pragma unroll
      for (int j = 0; j < R; ++j) {
        const int t = tt + j;
        if (VARLEN) {
          const int s = sm.start[t];
          if (s >= 0) {
            load_state<K>(a.initial_state, s * a.dim + d, N, n0, row_ok, h);
            cut = true;
          }
        }
        const float2 dd = ddg[j];
        float bv[K], cv[K];
        if constexpr (CARRY) {
          load_vec<K>(Bp + t * b_step, bv);
#pragma unroll
          for (int k = 0; k < K; ++k) h[k] = fmaf(ex2(dd.x * A2[k]), h[k], dd.y * bv[k]);
          delta_sum += dd.x;
          continue;
        } else if constexpr (BC_VAR) {
          float bc[2 * K];
          load_vec<2 * K>(Bp + t * (2 * S::NPP), bc);
#pragma unroll
          for (int k = 0; k < K; ++k) {
            bv[k] = bc[k];
            cv[k] = bc[K + k];
          }
        } else {
          load_vec<K>(Bp + t * b_step, bv);
          load_vec<K>(Cp + t * c_step, cv);
        }
        float sum = 0.f;
#pragma unroll
        for (int k = 0; k < K; ++k) {
          h[k] = fmaf(ex2(dd.x * A2[k]), h[k], dd.y * bv[k]);
          sum = fmaf(cv[k], h[k], sum);
        }
        acc[j] = sum;
        if (VARLEN) {
          const int s = sm.end[t];
          if (s >= 0) store_state<K>(a.last_state, s * a.dim + d, N, n0, row_ok, h);
        }
      }
      if constexpr (CARRY) {
        continue;
      } else if constexpr (RED == FwdReduce::kSmem) {
        float* dst = sm.part + (row * R + lane) * FwdSmem<S>::PART_PITCH + tt;
#pragma unroll
        for (int q = 0; q < R / 4; ++q)
          *reinterpret_cast<float4*>(dst + 4 * q) = make_float4(acc[4 * q], acc[4 * q + 1], acc[4 * q + 2], acc[4 * q + 3]);
      } else if constexpr (PIPELINED) {
#pragma unroll
        for (int j = 0; j < R; ++j) prev[j] = acc[j];
        prev_slot = tt + lane;
      } else {
        reduce_scatter<R>(acc, lane);
        sm.y[FwdSmem<S>::y_index(row, tt + lane)] += acc[0];
      }
      if (a.checkpoints && (tt + R) % kCk == 0) {
        const int64_t c = (t0 + tt + R) / kCk - 1;
        if (c < nck) store_state<K>(a.checkpoints, (bp.b * a.dim + d) * nck + c, N, n0, row_ok, h);
      }
    }
    if constexpr (CARRY) continue;
    if constexpr (PIPELINED) {
      reduce_scatter<R>(prev, lane);
      sm.y[FwdSmem<S>::y_index(row, prev_slot)] += prev[0];
    }
    __syncthreads();
    if (vec) {
      write_fwd_vec<S, FDT>(a, bp, t0, sm, cz);
    } else {
      switch (fwd_dtype<FDT>(a)) {
        case ARK_FLOAT32: write_fwd<float, S>(a, bp, t0, sm); break;
        case ARK_FLOAT16: write_fwd<__half, S>(a, bp, t0, sm); break;
        default: write_fwd<__nv_bfloat16, S>(a, bp, t0, sm); break;
      }
    }
  }
  if constexpr (CARRY) {
    float prod[K];
#pragma unroll
    for (int k = 0; k < K; ++k) prod[k] = cut ? 0.f : ex2(delta_sum * A2[k]);
    store_state<K>(ch.carry_h, chunk * carry_stride + state_row, N, n0, row_ok, h);
    store_state<K>(ch.carry_p, chunk * carry_stride + state_row, N, n0, row_ok, prod);
  } else if (!VARLEN) {
    if (chunk == ch.chunks - 1) store_state<K>(a.last_state, state_row, N, n0, row_ok, h);
  } else if (a.last_state && chunk == 0) {
    // Empty sequences have no step that writes their last state: it is their initial state.
    for (int64_t s = 0; s < a.num_seqs; ++s) {
      if (a.cu_seqlens[s] != a.cu_seqlens[s + 1]) continue;
      load_state<K>(a.initial_state, s * a.dim + d, N, n0, row_ok, h);
      store_state<K>(a.last_state, s * a.dim + d, N, n0, row_ok, h);
    }
  }
}

// ---------------------------------------------------------------- backward

// CARRY (the carry kernel): only dd, dy, C and the sequence flags take space (u, sg, B, pB, pC, p1, p2
// are empty), so that many more of its blocks fit on an SM.
template <class S, bool CARRY = false> struct BwdSmem {
  static constexpr int TT = kCk, TS = S::TS, P = TT + 1, X = CARRY ? 0 : 1;
  float2* dd;   // (ROWS, P): (delta, delta*u)
  float* u;     // (ROWS, P)
  float* dy;    // (ROWS, P): dout * silu(z)
  float* sg;    // (ROWS, P): d delta / d raw delta (softplus slope or 1)
  float* B;     // (TT, NPP) variable or (ROWS, NPP) constant
  float* C;
  float* pB;    // (ROWS, TS, NPP): per-channel dB terms of a sub-tile
  float* pC;
  float* p1;    // (ROWS * R, TS + 1): per-lane sum_n dh B
  float* p2;    // (ROWS * R, TS + 1): per-lane sum_n dh h[t-1] a A
  int* start;
  int* end;
  static constexpr int bc() { return align4((TT > S::ROWS ? TT : S::ROWS) * S::NPP); }
  static constexpr int floats() {
    return 2 * align4(S::ROWS * P) + (1 + 2 * X) * align4(S::ROWS * P) + (1 + X) * bc() +
           X * (2 * align4(S::ROWS * TS * S::NPP) + 2 * align4(S::ROWS * S::R * (TS + 1))) + 2 * TT;
  }
  __device__ explicit BwdSmem(float* base) {
    dd = reinterpret_cast<float2*>(base);
    dy = base + 2 * align4(S::ROWS * P);
    u = dy + align4(S::ROWS * P);
    sg = u + X * align4(S::ROWS * P);
    C = sg + X * align4(S::ROWS * P);
    B = C + bc();
    pB = B + X * bc();
    pC = pB + X * align4(S::ROWS * TS * S::NPP);
    p1 = pC + X * align4(S::ROWS * TS * S::NPP);
    p2 = p1 + X * align4(S::ROWS * S::R * (TS + 1));
    start = reinterpret_cast<int*>(p2 + X * align4(S::ROWS * S::R * (TS + 1)));
    end = start + TT;
  }
};

// One element's staged values from its raw inputs: delta (bias, softplus), its slope sg, dy = dout *
// silu(z), and dz. CARRY (the carry kernel): only what the adjoint recurrence needs (delta, dy).
struct BwdElement {
  float dl, sg, dy, dz;
};
template <bool CARRY>
__device__ __forceinline__ BwdElement bwd_element(const ark_selective_scan_args& a, int64_t d, float dl, float dy,
                                                  float zv, float y_pre) {
  BwdElement e{dl, 1.f, dy, 0.f};
  if (a.delta_bias) e.dl += a.delta_bias[d];
  if (a.delta_softplus) {
    if (!CARRY) e.sg = softplus_grad_f32(e.dl);
    e.dl = softplus_f32(e.dl);
  }
  if (a.z) {
    if (!CARRY) e.dz = dy * y_pre * silu_grad_f32(zv);
    e.dy *= silu_f32(zv);
  }
  return e;
}
// Its shared-memory entries (zeros where not `present`: outside the block's rows or the sequence).
template <class S, bool CARRY>
__device__ __forceinline__ void put_bwd_element(BwdSmem<S, CARRY>& sm, int r, int t, bool present, float u,
                                                const BwdElement& e) {
  constexpr int P = kCk + 1;
  sm.dd[r * P + t] = present ? make_float2(e.dl, e.dl * u) : make_float2(0.f, 0.f);
  sm.dy[r * P + t] = present ? e.dy : 0.f;
  if (!CARRY) {
    sm.u[r * P + t] = present ? u : 0.f;
    sm.sg[r * P + t] = present ? e.sg : 0.f;
  }
}
template <typename T, class S, bool CARRY = false>
__device__ __forceinline__ void stage_bwd_element(const ark_selective_scan_args& a, BwdSmem<S, CARRY>& sm, int r, int t,
                                                  int64_t d, int64_t i, bool present, float u, float dl, float dy,
                                                  float zv, float y_pre) {
  BwdElement e{0.f, 0.f, 0.f, 0.f};
  if (present) {
    e = bwd_element<CARRY>(a, d, dl, dy, zv, y_pre);
    if (!CARRY && a.z) st<T>(a.dz, i, e.dz);
  }
  put_bwd_element<S, CARRY>(sm, r, t, present, u, e);
}

template <typename T, class S, bool CARRY = false>
__device__ void stage_bwd(const ark_selective_scan_args& a, const BlockPos& bp, int64_t t0, BwdSmem<S, CARRY>& sm) {
  constexpr int TT = kCk;
  for (int e = threadIdx.x; e < S::ROWS * TT; e += S::THREADS) {
    const int r = e / TT, t = e % TT;
    const int64_t tg = t0 + t;
    const bool present = r < bp.rows_valid && tg < a.seqlen;
    const int64_t d = bp.d_first + r, i = (bp.b * a.dim + d) * a.seqlen + tg;
    float u = 0.f, dl = 0.f, dy = 0.f, zv = 0.f, yp = 0.f;
    if (present) {
      if (!CARRY) u = ld<T>(a.u, i);
      dl = ld<T>(a.delta, i);
      dy = ld<T>(a.dout, i);
      if (a.z) {
        zv = ld<T>(a.z, i);
        if (!CARRY) yp = ld<T>(a.y_pre, i);
      }
    }
    stage_bwd_element<T, S, CARRY>(a, sm, r, t, d, i, present, u, dl, dy, zv, yp);
  }
  if (!CARRY && a.B_variable) stage_var_bc<T, S>(a, a.B, bp, t0, TT, sm.B);
  if (a.C_variable) stage_var_bc<T, S>(a, a.C, bp, t0, TT, sm.C);
}

// 16-byte chunks line up with the backward's rows too (the forward's rule plus dout and dz).
__host__ __device__ inline bool vec_ok_bwd(const ark_selective_scan_args& a) {
  return vec_ok(a) && aligned16(a.dout) && (!a.z || aligned16(a.dz));
}

// stage_bwd through 16-byte chunks (vec_ok_bwd): every global load of the thread (u, delta, dout, z,
// y_pre, B, C) issued before the first is used, dz written as 16-byte vectors. The scalar version
// spent ~120 instructions per element (64-bit index math, one load latency per loop iteration).
template <ark_dtype DT, class S, bool CARRY>
__device__ void stage_bwd_vec_as(const ark_selective_scan_args& a, const BlockPos& bp, int64_t t0, BwdSmem<S, CARRY>& sm) {
  constexpr int TT = kCk, T = S::THREADS, esize = DT == ARK_FLOAT32 ? 4 : 2, epc = 16 / esize, cpr = TT / epc;
  constexpr int NV = (S::ROWS * cpr + T - 1) / T, NVB = (S::NP * cpr + T - 1) / T;
  const ark_dtype dt = DT;
  const int64_t first_row = bp.b * a.dim + bp.d_first, L = a.seqlen;
  const int64_t bc_row = (bp.b * a.ngroups + bp.g) * a.dstate;
  // B/C first (their loads stay in flight while the rows are processed).
  Chunks<NVB> cb, cc;
  if (!CARRY && a.B_variable) load_chunks<NVB, T, true>(cb, a.B, bc_row, S::NP, int(a.dstate), t0, TT, L, dt);
  if (a.C_variable) load_chunks<NVB, T, true>(cc, a.C, bc_row, S::NP, int(a.dstate), t0, TT, L, dt);
  // Rows one chunk at a time (16-bit types: one chunk per thread at 32 rows), all five loads together.
#pragma unroll
  for (int k = 0; k < NV; ++k) {
    const ChunkPos<T> p(k, S::ROWS, cpr);
    if (!p.in_tile) continue;
    const bool row_ok = p.r < bp.rows_valid;
    const int64_t d = bp.d_first + (row_ok ? p.r : 0), tc = t0 + int64_t(p.j) * epc;
    const bool present = row_ok && tc < L;  // L is a multiple of epc: a chunk is all in or all out
    const int64_t byte = ((first_row + p.r) * L + tc) * esize;
    auto load = [&](const void* src) {
      return present ? __ldg(reinterpret_cast<const uint4*>(static_cast<const char*>(src) + byte)) : make_uint4(0u, 0u, 0u, 0u);
    };
    const uint4 vu = CARRY ? make_uint4(0u, 0u, 0u, 0u) : load(a.u), vd = load(a.delta), vg = load(a.dout);
    const uint4 vz = a.z ? load(a.z) : make_uint4(0u, 0u, 0u, 0u);
    const uint4 vy = a.z && !CARRY ? load(a.y_pre) : make_uint4(0u, 0u, 0u, 0u);
    float u[8], dl[8], g[8], zv[8], yp[8], dz[8];
    unpack_as<DT>(vd, dl);
    unpack_as<DT>(vg, g);
    unpack_as<DT>(vu, u);
    unpack_as<DT>(vz, zv);
    unpack_as<DT>(vy, yp);
#pragma unroll
    for (int i = 0; i < epc; ++i) {
      const BwdElement e = bwd_element<CARRY>(a, d, dl[i], g[i], zv[i], yp[i]);
      put_bwd_element<S, CARRY>(sm, p.r, p.j * epc + i, present, u[i], e);
      dz[i] = e.dz;
    }
    if (!CARRY && a.z && present) *reinterpret_cast<uint4*>(static_cast<char*>(a.dz) + byte) = pack_as<DT>(dz);
  }
#pragma unroll
  for (int k = 0; k < NVB; ++k) {
    const ChunkPos<T, true> p(k, S::NP, cpr);
    if (!p.in_tile) continue;
    float b[8], c[8];
    unpack_as<DT>(cb.v[k], b);
    unpack_as<DT>(cc.v[k], c);
#pragma unroll
    for (int i = 0; i < epc; ++i) {
      const int t = p.j * epc + i;
      if (!CARRY && a.B_variable) sm.B[t * S::NPP + p.r] = b[i];
      if (a.C_variable) sm.C[t * S::NPP + p.r] = c[i];
    }
  }
}
template <class S, bool CARRY = false>
__device__ void stage_bwd_vec(const ark_selective_scan_args& a, const BlockPos& bp, int64_t t0, BwdSmem<S, CARRY>& sm) {
  switch (a.dtype) {
    case ARK_FLOAT32: stage_bwd_vec_as<ARK_FLOAT32, S, CARRY>(a, bp, t0, sm); break;
    case ARK_FLOAT16: stage_bwd_vec_as<ARK_FLOAT16, S, CARRY>(a, bp, t0, sm); break;
    default: stage_bwd_vec_as<ARK_BFLOAT16, S, CARRY>(a, bp, t0, sm); break;
  }
}

// stage_bwd with all of the thread's loads (u, delta, dout, z, y_pre, B, C) issued before any is used:
// one memory latency per tile instead of one per loop iteration of the plain version (the backward's
// top stall is waiting on global loads, bench/NOTES.md). Prepared, tuning builds only until measured.
template <typename T, class S>
__device__ void stage_bwd_batched(const ark_selective_scan_args& a, const BlockPos& bp, int64_t t0, BwdSmem<S>& sm) {
  constexpr int TT = kCk, ITER = (S::ROWS * TT + S::THREADS - 1) / S::THREADS;
  float u[ITER], dl[ITER], dy[ITER], zv[ITER], yp[ITER];
#pragma unroll
  for (int m = 0; m < ITER; ++m) {
    const int e = threadIdx.x + m * S::THREADS, r = e / TT, t = e % TT;
    const int64_t tg = t0 + t, i = (bp.b * a.dim + bp.d_first + r) * a.seqlen + tg;
    const bool present = e < S::ROWS * TT && r < bp.rows_valid && tg < a.seqlen;
    u[m] = present ? ld<T>(a.u, i) : 0.f;
    dl[m] = present ? ld<T>(a.delta, i) : 0.f;
    dy[m] = present ? ld<T>(a.dout, i) : 0.f;
    zv[m] = present && a.z ? ld<T>(a.z, i) : 0.f;
    yp[m] = present && a.z ? ld<T>(a.y_pre, i) : 0.f;
  }
  if (a.B_variable) stage_var_bc_batched<T, S, TT>(a, a.B, bp, t0, sm.B);
  if (a.C_variable) stage_var_bc_batched<T, S, TT>(a, a.C, bp, t0, sm.C);
#pragma unroll
  for (int m = 0; m < ITER; ++m) {
    const int e = threadIdx.x + m * S::THREADS, r = e / TT, t = e % TT;
    if (e >= S::ROWS * TT) continue;
    const int64_t tg = t0 + t, d = bp.d_first + r, i = (bp.b * a.dim + d) * a.seqlen + tg;
    stage_bwd_element<T, S>(a, sm, r, t, d, i, r < bp.rows_valid && tg < a.seqlen, u[m], dl[m], dy[m], zv[m], yp[m]);
  }
}

// du and ddelta of the sub-tile's steps, from the per-lane sums; dD and ddelta_bias partial sums.
template <typename T, class S, int M>
__device__ void write_bwd_steps(const ark_selective_scan_args& a, const BlockPos& bp, int64_t t0, int s,
                                const BwdSmem<S>& sm, float (&accD)[M], float (&accBias)[M]) {
  constexpr int TT = kCk, P = TT + 1, TS = S::TS;
#pragma unroll
  for (int m = 0; m < M; ++m) {
    const int e = threadIdx.x + m * S::THREADS;
    if (e >= S::ROWS * TS) continue;
    const int r = e / TS, j = e % TS, t = s * TS + j;
    const int64_t tg = t0 + t;
    if (r >= bp.rows_valid || tg >= a.seqlen) continue;
    float p1 = 0.f, p2 = 0.f;
#pragma unroll
    for (int l = 0; l < S::R; ++l) {
      p1 += sm.p1[(r * S::R + l) * (TS + 1) + j];
      p2 += sm.p2[(r * S::R + l) * (TS + 1) + j];
    }
    const int64_t d = bp.d_first + r, i = (bp.b * a.dim + d) * a.seqlen + tg;
    const float2 dd = sm.dd[r * P + t];
    const float u = sm.u[r * P + t], dy = sm.dy[r * P + t];
    const float ddelta = (u * p1 + p2) * sm.sg[r * P + t];
    st<T>(a.du, i, dd.x * p1 + (a.D ? a.D[d] * dy : 0.f));
    st<T>(a.ddelta, i, ddelta);
    accD[m] = fmaf(dy, u, accD[m]);
    accBias[m] += ddelta;
  }
}

// Variable dB / dC of the sub-tile: the block's channels summed in order, one slice per row block.
template <class S>
__device__ void write_bwd_bc(const ark_selective_scan_args& a, const BlockPos& bp, int64_t t0, int s,
                             const float* part, float* ws_rows, int64_t row_blocks) {
  constexpr int TS = S::TS;
  const int64_t base = ((bp.b * a.ngroups + bp.g) * row_blocks + bp.rb) * a.dstate;
  for (int e = threadIdx.x; e < TS * S::NP; e += S::THREADS) {
    const int j = e % TS, n = e / TS;
    const int64_t tg = t0 + s * TS + j;
    if (n >= a.dstate || tg >= a.seqlen) continue;
    float sum = 0.f;
    for (int r = 0; r < bp.rows_valid; ++r) sum += part[(r * TS + j) * S::NPP + n];
    ws_rows[(base + n) * a.seqlen + tg] = sum;
  }
}

// The vectorised variant of write_bwd_bc (default for N <= 32, knob sscan_bwd_rowsum_vec; see
// launch_bwd for the measured numbers). write_bwd_bc gives each (step, state) to one thread, which
// sums the block's ROWS rows with scalar loads (K4R4: 32 LDS + 32 FADD + loop and address code, per
// buffer and sub-tile). Here an item is (step j, 4 states 4 n4 .. 4 n4 + 3), ITEMS = TS * NP / 4 of them per sub-tile:
// - Q = THREADS / ITEMS threads share an item (Q in {1, 2, 4}; or Q = 1 and IPT = ITEMS / THREADS
//   items per thread). Thread q of an item sums rows q, q + Q, ... with 16-byte loads: RPT = ROWS / Q
//   rows, and IPT * RPT = TS * K / 4 = 8 float4 loads per thread and buffer at every shape.
// - Lanes: q = lane / IPW, item = warp * IPW + lane % IPW (IPW = 32 / Q items per warp), j = item % TS,
//   n4 = item / TS. A 16-byte load is served per quarter warp (8 lanes); IPW >= 8 puts 8 consecutive
//   items of one q (one row) in a quarter warp: 8 consecutive j (TS % 8 == 0) of one n4, at float4
//   offsets j * NPP / 4 + const, distinct mod 8 as NPP / 4 is odd: conflict-free. Lanes of one
//   quarter warp must not differ by row: the row stride TS * NPP floats is 0 mod 32 at K = 2 and 4.
// - A reduce-scatter over the Q lanes of an item (IPW, 2 IPW apart) leaves thread q with states
//   4 n4 + q * 4 / Q + i, i < 4 / Q: the per-state sums, in a fixed order (row partials in row order,
//   then a fixed shuffle tree): deterministic, different from write_bwd_bc only in fp32 summation
//   order. Rows at or past rows_valid are skipped as in write_bwd_bc (no value of an invalid row
//   enters a sum). Full blocks (rows_valid == ROWS, a uniform branch) sum without the per-row
//   predicates (2 instructions per row and buffer) and start from the first row's values instead of
//   +0 (the sum of all -0 rows is then -0, +0 otherwise: equal values).
// - Global stores: lanes of one q hold IPW consecutive steps of one state: 32-byte (Q = 4) or 64-byte
//   runs, as write_bwd_bc's.
// B and C share the index math. SASS of the K4R4 (N = 16) 16-byte-staging kernel, a full block, both
// buffers, per thread and sub-tile: ~327 -> ~181 instructions (64 LDS + 64 FADD + loop code -> 16
// LDS.128 + 62 FADD + 6 SHFL). Prediction: backward kernel -5 to -10% at the headline shapes
// (bench/NOTES.md, Session 2026-12-04; measured -4 to -6% of fwd+bwd, see launch_bwd).
template <class S> struct RowsumVec {
  static constexpr int ITEMS = S::TS * S::NP / 4;
  static constexpr int Q = ITEMS < S::THREADS ? S::THREADS / ITEMS : 1;
  static constexpr int IPT = ITEMS > S::THREADS ? ITEMS / S::THREADS : 1;
  static constexpr int IPW = 32 / Q, RPT = S::ROWS / Q;
  // Where these fail (N <= 8: Q = 8 or 16, lanes of one quarter warp would differ by row; N > 128:
  // K = 8, TS = 4), the launcher keeps write_bwd_bc.
  static constexpr bool kOk = S::NP % 4 == 0 && S::TS % 8 == 0 && (S::NPP / 4) % 2 == 1 &&
                              (Q == 1 || Q == 2 || Q == 4) && Q * ITEMS == IPT * S::THREADS && IPW * Q == 32 &&
                              RPT * Q == S::ROWS && S::THREADS % 32 == 0;
};

// Thread q's partial sums of its item (rows q, q + Q, ... in order). FULL: every row of the block is
// valid; the loads are issued before the adds.
template <class S, bool FULL>
__device__ __forceinline__ void rowsum_vec_rows(const float* part, int q, int rows_valid, float (&v)[4]) {
  using V = RowsumVec<S>;
  constexpr int STRIDE = V::Q * S::TS * S::NPP;  // floats from row r to row r + Q
  if constexpr (FULL) {
    float4 x[V::RPT];
#pragma unroll
    for (int i = 0; i < V::RPT; ++i) x[i] = *reinterpret_cast<const float4*>(part + i * STRIDE);
    v[0] = x[0].x;
    v[1] = x[0].y;
    v[2] = x[0].z;
    v[3] = x[0].w;
#pragma unroll
    for (int i = 1; i < V::RPT; ++i) {
      v[0] += x[i].x;
      v[1] += x[i].y;
      v[2] += x[i].z;
      v[3] += x[i].w;
    }
  } else {
    v[0] = v[1] = v[2] = v[3] = 0.f;
#pragma unroll
    for (int i = 0; i < V::RPT; ++i) {
      if (q + i * V::Q < rows_valid) {
        const float4 x = *reinterpret_cast<const float4*>(part + i * STRIDE);
        v[0] += x.x;
        v[1] += x.y;
        v[2] += x.z;
        v[3] += x.w;
      }
    }
  }
}

template <class S>
__device__ void write_bwd_bc_vec(const ark_selective_scan_args& a, const BlockPos& bp, int64_t t0, int s,
                                 const BwdSmem<S>& sm, float* ws, const ScanWorkspace& w) {
  using V = RowsumVec<S>;
  static_assert(V::kOk, "write_bwd_bc_vec: shape outside the variant's preconditions");
  constexpr int TS = S::TS, Q = V::Q, IPW = V::IPW, PER = 4 / Q;
  const int lane = threadIdx.x % 32, q = lane / IPW;
  const bool full = bp.rows_valid == S::ROWS;
  const int64_t base = ((bp.b * a.ngroups + bp.g) * w.row_blocks + bp.rb) * a.dstate;
#pragma unroll
  for (int m = 0; m < V::IPT; ++m) {
    const int item = m * S::THREADS + (threadIdx.x / 32) * IPW + lane % IPW;
    const int j = item % TS, n4 = item / TS;
    const int off = (q * TS + j) * S::NPP + 4 * n4;  // row q; row q + i Q is i Q TS NPP floats further
    const int64_t tg = t0 + s * TS + j;
#pragma unroll
    for (int buf = 0; buf < 2; ++buf) {
      if (!(buf ? a.C_variable : a.B_variable)) continue;
      const float* part = (buf ? sm.pC : sm.pB) + off;
      float v[4];
      if (full) {
        rowsum_vec_rows<S, true>(part, q, bp.rows_valid, v);
      } else {
        rowsum_vec_rows<S, false>(part, q, bp.rows_valid, v);
      }
      // Level o (q's bit o, partner o * IPW lanes away): the upper thread keeps the upper half.
#pragma unroll
      for (int o = Q / 2; o >= 1; o /= 2) {
        const bool upper = q & o;
#pragma unroll
        for (int i = 0; i < PER * o; ++i) {
          const float send = upper ? v[i] : v[i + PER * o], keep = upper ? v[i + PER * o] : v[i];
          v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o * IPW);
        }
      }
      float* dst = ws + (buf ? w.dC_rows : w.dB_rows);
#pragma unroll
      for (int i = 0; i < PER; ++i) {
        const int n = 4 * n4 + q * PER + i;
        if (n < a.dstate && tg < a.seqlen) dst[(base + n) * a.seqlen + tg] = v[i];
      }
    }
  }
}

// The tiles [first, end) of time chunk `chunk`.
struct ChunkTiles {
  int64_t first, end;
};
__device__ __forceinline__ ChunkTiles chunk_tiles(int64_t nck, int64_t chunks, int64_t chunk) {
  const int64_t per = ceil_div(nck, chunks), first = chunk * per;
  return {first, first + per < nck ? first + per : nck};
}

// The carry kernel: blocks0 blocks per time chunk, for chunks 1 .. chunks - 1 (chunk 0 passes its g
// to nobody). Per chunk: (G_local, P) of the header comment, into ws at carry_g / carry_p.
// Little work per loaded byte, so it needs many warps in flight: small shared memory (BwdSmem CARRY)
// and at most 80 registers where that spills little (N <= 32: 6 blocks of 128 per SM). H200 run
// 2026-12-03: 460 us at b4 d2048 with the main kernel's shared memory (17% occupancy, top stall
// waiting on global loads).
template <class S, bool VARLEN>
__global__ void __launch_bounds__(S::THREADS, S::K <= 4 && S::R <= 8 ? 6 : 1)
    selective_scan_bwd_carry_kernel(const ark_selective_scan_args a, float* ws, ScanWorkspace w, int64_t blocks0,
                                    bool vec) {
  constexpr int K = S::K, R = S::R, TT = kCk, P = TT + 1;
  extern __shared__ float4 smem_f4[];
  BwdSmem<S, true> sm(reinterpret_cast<float*>(smem_f4));
  const int64_t chunk = 1 + blockIdx.x / blocks0;
  const BlockPos bp = block_pos(a, S::ROWS, blockIdx.x % blocks0);
  const int row = threadIdx.x / R, lane = threadIdx.x % R, n0 = lane * K;
  const bool row_ok = row < bp.rows_valid;
  const int64_t d = bp.d_first + (row_ok ? row : 0);
  const int64_t N = a.dstate, state_row = bp.b * a.dim + d;
  const ChunkTiles ct = chunk_tiles(ceil_div(a.seqlen, kCk), w.chunks, chunk);

  float A2[K], g[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    A2[k] = (row_ok && n0 + k < N) ? a.A[d * N + n0 + k] * kLog2e : 0.f;
    g[k] = 0.f;
  }
  if (!a.C_variable) stage_const_bc<S>(a, static_cast<const float*>(a.C), bp, sm.C);
  const float* Cp = a.C_variable ? sm.C + n0 : sm.C + row * S::NPP + n0;
  const int c_step = a.C_variable ? S::NPP : 0;
  float delta_sum = 0.f;  // the chunk's decay product is ex2(A2 * sum of delta)
  bool cut = false;       // a sequence ends inside the chunk: g_end does not reach the chunk's start
  for (int64_t c = ct.end - 1; c >= ct.first; --c) {
    const int64_t t0 = c * TT;
    __syncthreads();
    if (vec) {
      stage_bwd_vec<S, true>(a, bp, t0, sm);
    } else {
      switch (a.dtype) {
        case ARK_FLOAT32: stage_bwd<float, S, true>(a, bp, t0, sm); break;
        case ARK_FLOAT16: stage_bwd<__half, S, true>(a, bp, t0, sm); break;
        default: stage_bwd<__nv_bfloat16, S, true>(a, bp, t0, sm); break;
      }
    }
    if (VARLEN) stage_seq_flags(a, t0, TT, sm.start, sm.end);
    __syncthreads();
#pragma unroll 8
    for (int t = TT - 1; t >= 0; --t) {
      if (VARLEN) {
        const int q = sm.end[t];
        if (q >= 0) {
          load_state<K>(a.dlast_state, q * a.dim + d, N, n0, row_ok, g);
          cut = true;
        }
      }
      const float dl = sm.dd[row * P + t].x, dy = sm.dy[row * P + t];
      float cv[K];
      load_vec<K>(Cp + t * c_step, cv);
#pragma unroll
      for (int k = 0; k < K; ++k) g[k] = ex2(dl * A2[k]) * fmaf(cv[k], dy, g[k]);
      delta_sum += dl;
    }
  }
  float prod[K];
#pragma unroll
  for (int k = 0; k < K; ++k) prod[k] = cut ? 0.f : ex2(delta_sum * A2[k]);
  const int64_t carry_row = chunk * a.batch * a.dim + state_row;
  store_state<K>(ws + w.carry_g, carry_row, N, n0, row_ok, g);
  store_state<K>(ws + w.carry_p, carry_row, N, n0, row_ok, prod);
}

// blocks0 blocks per time chunk; block i works on chunk i / blocks0. Held to 3 blocks per SM (168
// registers; shared memory allows 3 too): left alone, the compiler's choice for K4R4 went from 168 to
// 222 registers with the chunking (2 blocks per SM). Not for K = 8, R = 1 or varlen kernels, which
// would spill hundreds of bytes (compile-time counts, not measured on the GPU).
// How the backward stages a tile (a compile-time choice: each version's registers are its own).
enum class BwdStaging : int {
  kScalar = 0,   // one element per loop iteration (varlen, unaligned rows, knob sscan_bwd_scalar_staging)
  kBatched = 1,  // every load of the tile issued first (tuning builds, knob sscan_bwd_batched_staging)
  kVec = 2,      // 16-byte chunks (non-varlen, rows aligned; the default there)
};
// ROWSUM_VEC: the dB/dC row sums of write_bwd_bc_vec (see launch_bwd for where it is chosen).
template <class S, bool VARLEN, BwdStaging STAGING = BwdStaging::kScalar, bool ROWSUM_VEC = false>
__global__ void __launch_bounds__(S::THREADS, !VARLEN && S::K <= 4 && S::R >= 2 ? 3 : 1)
    selective_scan_bwd_kernel(const ark_selective_scan_args a, float* ws, ScanWorkspace w, int64_t blocks0) {
  constexpr int K = S::K, R = S::R, TT = kCk, TS = S::TS, NS = TT / TS, P = TT + 1;
  constexpr int M = (S::ROWS * TS + S::THREADS - 1) / S::THREADS;
  extern __shared__ float4 smem_f4[];
  BwdSmem<S> sm(reinterpret_cast<float*>(smem_f4));
  const int64_t chunk = blockIdx.x / blocks0;
  const BlockPos bp = block_pos(a, S::ROWS, blockIdx.x % blocks0);
  const int row = threadIdx.x / R, lane = threadIdx.x % R, n0 = lane * K;
  const bool row_ok = row < bp.rows_valid;
  const int64_t d = bp.d_first + (row_ok ? row : 0);
  const int64_t N = a.dstate, L = a.seqlen, nck = ceil_div(L, kCk);
  const int64_t state_row = bp.b * a.dim + d;
  const ChunkTiles ct = chunk_tiles(nck, w.chunks, chunk);
  // This block's partial sums over (chunk, batch row): row acc_row of the per-state workspace.
  const int64_t acc_row = chunk * a.batch * a.dim + state_row;

  float A2[K], Af[K], g[K], dA[K], dBc[K], dCc[K];
#pragma unroll
  for (int k = 0; k < K; ++k) {
    Af[k] = (row_ok && n0 + k < N) ? a.A[d * N + n0 + k] : 0.f;
    A2[k] = Af[k] * kLog2e;
    dA[k] = dBc[k] = dCc[k] = 0.f;
    g[k] = 0.f;
  }
  if (!VARLEN) load_state<K>(a.dlast_state, state_row, N, n0, row_ok, g);
  for (int64_t q = w.chunks - 1; q > chunk; --q) {  // g at this chunk's end, through the later chunks
    float gl[K], pr[K];
    load_state<K>(ws + w.carry_g, q * a.batch * a.dim + state_row, N, n0, row_ok, gl);
    load_state<K>(ws + w.carry_p, q * a.batch * a.dim + state_row, N, n0, row_ok, pr);
#pragma unroll
    for (int k = 0; k < K; ++k) g[k] = fmaf(pr[k], g[k], gl[k]);
  }
  float accD[M], accBias[M];
#pragma unroll
  for (int m = 0; m < M; ++m) accD[m] = accBias[m] = 0.f;
  if (!a.B_variable) stage_const_bc<S>(a, static_cast<const float*>(a.B), bp, sm.B);
  if (!a.C_variable) stage_const_bc<S>(a, static_cast<const float*>(a.C), bp, sm.C);
  const float* Bp = a.B_variable ? sm.B + n0 : sm.B + row * S::NPP + n0;
  const float* Cp = a.C_variable ? sm.C + n0 : sm.C + row * S::NPP + n0;
  const int b_step = a.B_variable ? S::NPP : 0, c_step = a.C_variable ? S::NPP : 0;

  for (int64_t c = ct.end - 1; c >= ct.first; --c) {
    const int64_t t0 = c * TT;
    __syncthreads();
    if constexpr (STAGING == BwdStaging::kBatched) {
      switch (a.dtype) {
        case ARK_FLOAT32: stage_bwd_batched<float, S>(a, bp, t0, sm); break;
        case ARK_FLOAT16: stage_bwd_batched<__half, S>(a, bp, t0, sm); break;
        default: stage_bwd_batched<__nv_bfloat16, S>(a, bp, t0, sm); break;
      }
    } else if constexpr (STAGING == BwdStaging::kVec) {
      stage_bwd_vec<S>(a, bp, t0, sm);
    } else {
      switch (a.dtype) {
        case ARK_FLOAT32: stage_bwd<float, S>(a, bp, t0, sm); break;
        case ARK_FLOAT16: stage_bwd<__half, S>(a, bp, t0, sm); break;
        default: stage_bwd<__nv_bfloat16, S>(a, bp, t0, sm); break;
      }
    }
    if (VARLEN) stage_seq_flags(a, t0, TT, sm.start, sm.end);
    __syncthreads();

    // States at the start of each sub-tile, from the state the forward stored before this tile.
    float hb[NS][K], h[K];
    if (c > 0) {
      load_state<K>(a.checkpoints, state_row * nck + c - 1, N, n0, row_ok, h);
    } else if (VARLEN) {
#pragma unroll
      for (int k = 0; k < K; ++k) h[k] = 0.f;
    } else {
      load_state<K>(a.initial_state, state_row, N, n0, row_ok, h);
    }
#pragma unroll
    for (int s = 0; s < NS; ++s) {
#pragma unroll
      for (int k = 0; k < K; ++k) hb[s][k] = h[k];
#pragma unroll
      for (int j = 0; j < TS; ++j) {
        const int t = s * TS + j;
        if (VARLEN) {
          const int q = sm.start[t];
          if (q >= 0) load_state<K>(a.initial_state, q * a.dim + d, N, n0, row_ok, h);
        }
        const float2 dd = sm.dd[row * P + t];
        float bv[K];
        load_vec<K>(Bp + t * b_step, bv);
#pragma unroll
        for (int k = 0; k < K; ++k) h[k] = fmaf(ex2(dd.x * A2[k]), h[k], dd.y * bv[k]);
      }
    }

#pragma unroll
    for (int s = NS - 1; s >= 0; --s) {
      // Recompute the sub-tile's states and decays.
      float hh[TS][K], aa[TS][K];
#pragma unroll
      for (int k = 0; k < K; ++k) h[k] = hb[s][k];
#pragma unroll
      for (int j = 0; j < TS; ++j) {
        const int t = s * TS + j;
        if (VARLEN) {
          const int q = sm.start[t];
          if (q >= 0) load_state<K>(a.initial_state, q * a.dim + d, N, n0, row_ok, h);
        }
        const float2 dd = sm.dd[row * P + t];
        float bv[K];
        load_vec<K>(Bp + t * b_step, bv);
#pragma unroll
        for (int k = 0; k < K; ++k) {
          aa[j][k] = ex2(dd.x * A2[k]);
          h[k] = fmaf(aa[j][k], h[k], dd.y * bv[k]);
          hh[j][k] = h[k];
        }
      }
      // Adjoint recurrence, newest step first.
#pragma unroll
      for (int j = TS - 1; j >= 0; --j) {
        const int t = s * TS + j;
        if (VARLEN) {
          const int q = sm.end[t];
          if (q >= 0) load_state<K>(a.dlast_state, q * a.dim + d, N, n0, row_ok, g);
        }
        float hp[K];
#pragma unroll
        for (int k = 0; k < K; ++k) hp[k] = j > 0 ? hh[j > 0 ? j - 1 : 0][k] : hb[s][k];
        int q_start = -1;
        if (VARLEN) {
          q_start = sm.start[t];
          if (q_start >= 0) load_state<K>(a.initial_state, q_start * a.dim + d, N, n0, row_ok, hp);
        }
        const float2 dd = sm.dd[row * P + t];
        const float dy = sm.dy[row * P + t];
        float bv[K], cv[K];
        load_vec<K>(Bp + t * b_step, bv);
        load_vec<K>(Cp + t * c_step, cv);
        float p1 = 0.f, p2 = 0.f, pb[K], pc[K];
#pragma unroll
        for (int k = 0; k < K; ++k) {
          const float dh = fmaf(cv[k], dy, g[k]);
          pb[k] = dh * dd.y;
          pc[k] = dy * hh[j][k];
          p1 = fmaf(dh, bv[k], p1);
          const float wgt = dh * hp[k] * aa[j][k];
          p2 = fmaf(wgt, Af[k], p2);
          dA[k] = fmaf(wgt, dd.x, dA[k]);
          g[k] = aa[j][k] * dh;
        }
        if (a.B_variable) {
#pragma unroll
          for (int k = 0; k < K; ++k) sm.pB[(row * TS + j) * S::NPP + n0 + k] = pb[k];
        } else {
#pragma unroll
          for (int k = 0; k < K; ++k) dBc[k] += pb[k];
        }
        if (a.C_variable) {
#pragma unroll
          for (int k = 0; k < K; ++k) sm.pC[(row * TS + j) * S::NPP + n0 + k] = pc[k];
        } else {
#pragma unroll
          for (int k = 0; k < K; ++k) dCc[k] += pc[k];
        }
        sm.p1[(row * R + lane) * (TS + 1) + j] = p1;
        sm.p2[(row * R + lane) * (TS + 1) + j] = p2;
        if (VARLEN && q_start >= 0) store_state<K>(a.dinitial_state, q_start * a.dim + d, N, n0, row_ok, g);
      }
      __syncthreads();
      switch (a.dtype) {
        case ARK_FLOAT32: write_bwd_steps<float, S, M>(a, bp, t0, s, sm, accD, accBias); break;
        case ARK_FLOAT16: write_bwd_steps<__half, S, M>(a, bp, t0, s, sm, accD, accBias); break;
        default: write_bwd_steps<__nv_bfloat16, S, M>(a, bp, t0, s, sm, accD, accBias); break;
      }
      if constexpr (ROWSUM_VEC) {
        write_bwd_bc_vec<S>(a, bp, t0, s, sm, ws, w);
      } else {
        if (a.B_variable) write_bwd_bc<S>(a, bp, t0, s, sm.pB, ws + w.dB_rows, w.row_blocks);
        if (a.C_variable) write_bwd_bc<S>(a, bp, t0, s, sm.pC, ws + w.dC_rows, w.row_blocks);
      }
      __syncthreads();
    }
  }

  if (!VARLEN) {
    if (chunk == 0) store_state<K>(a.dinitial_state, state_row, N, n0, row_ok, g);
  } else if (a.dinitial_state && chunk == 0) {
    for (int64_t q = 0; q < a.num_seqs; ++q) {  // empty sequences pass the final-state gradient through
      if (a.cu_seqlens[q] != a.cu_seqlens[q + 1]) continue;
      load_state<K>(a.dlast_state, q * a.dim + d, N, n0, row_ok, g);
      store_state<K>(a.dinitial_state, q * a.dim + d, N, n0, row_ok, g);
    }
  }
  store_state<K>(ws + w.dA, acc_row, N, n0, row_ok, dA);
  if (!a.B_variable) store_state<K>(ws + w.dB_const, acc_row, N, n0, row_ok, dBc);
  if (!a.C_variable) store_state<K>(ws + w.dC_const, acc_row, N, n0, row_ok, dCc);
  // dD / ddelta_bias: the TS consecutive threads that share a channel add their sums.
#pragma unroll
  for (int m = 0; m < M; ++m) {
#pragma unroll
    for (int o = TS / 2; o >= 1; o /= 2) {
      accD[m] += __shfl_xor_sync(0xffffffffu, accD[m], o);
      accBias[m] += __shfl_xor_sync(0xffffffffu, accBias[m], o);
    }
    const int e = threadIdx.x + m * S::THREADS, r = e / TS;
    if (e % TS == 0 && e < S::ROWS * TS && r < bp.rows_valid) {
      const int64_t at = chunk * a.batch * a.dim + bp.b * a.dim + bp.d_first + r;
      ws[w.dD + at] = accD[m];
      ws[w.ddelta_bias + at] = accBias[m];
    }
  }
}

// out[o, i] = sum_m part[o, m, i], in order (deterministic).
template <typename T>
__global__ void sum_middle_kernel(const float* __restrict__ part, T* __restrict__ out, int64_t O, int64_t M, int64_t I) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= O * I) return;
  const int64_t o = idx / I, i = idx % I;
  float s = 0.f;
  for (int64_t m = 0; m < M; ++m) s += part[(o * M + m) * I + i];
  out[idx] = from_f32<T>(s);
}

ark_status sum_middle(const float* part, void* out, ark_dtype dtype, int64_t O, int64_t M, int64_t I, cudaStream_t st) {
  const int64_t n = O * I;
  if (n == 0) return ARK_SUCCESS;
  const int64_t blocks = (n + 255) / 256;
  switch (dtype) {
    case ARK_FLOAT32: sum_middle_kernel<float><<<blocks, 256, 0, st>>>(part, static_cast<float*>(out), O, M, I); break;
    case ARK_FLOAT16: sum_middle_kernel<__half><<<blocks, 256, 0, st>>>(part, static_cast<__half*>(out), O, M, I); break;
    default: sum_middle_kernel<__nv_bfloat16><<<blocks, 256, 0, st>>>(part, static_cast<__nv_bfloat16*>(out), O, M, I); break;
  }
  return cuda_launch_status("selective_scan", "reduction");
}

// ---------------------------------------------------------------- launch

// Lanes per channel: states padded to K*R, K = 4 normally; K = 2 doubles the threads when the
// problem has too few channels to fill the GPU (fewer than 1.5 blocks of 128 threads per SM at K = 4;
// measured on the H100 with 128-thread blocks: b4 d2048 n16 K=4 0.46 ms vs K=2 0.64; b2 d1536 K=2
// 0.149 vs K=4 0.21). The N = 16 forward has its own rule (below). The backward always uses 128
// threads (its workspace layout follows its rows per block).
struct LaunchShape {
  int K, R, threads;
};
LaunchShape pick_shape(const ark_selective_scan_args& a, bool backward) {
  const int64_t N = a.dstate;
  const int np = N <= 4 ? 4 : N <= 8 ? 8 : N <= 16 ? 16 : N <= 32 ? 32 : N <= 64 ? 64 : N <= 128 ? 128 : 256;
  if (np == 256) return {8, 32, kThreads};
  // N = 16 forward: K = 2, 256 threads at both headline shapes (H200 sweep, bench/NOTES.md: b4 d2048
  // 0.422 ms vs 0.481 for K4 T128; b2 d1536 0.149 vs 0.155 for K2 T128). 128 registers per thread
  // give 2 blocks of 256 per SM, so the 256 blocks of the big shape run in one wave, 16 warps per SM.
  if (!backward && np == 16) return {2, 8, 256};
  int K = 4;
  if (np >= 16 && np <= 64 && a.batch * a.dim / (kThreads / (np / 4)) < 198) K = 2;
  if (np == 4 || np == 8 || np == 128) K = 4;
  const int R = np / K;
  int threads = kThreads;
  if (!backward && np == 32 && K == 2) {
    const int64_t blocks256 = a.batch * a.dim / (256 / R);
    threads = blocks256 >= 4 * 132 ? 256 : kThreads;
  }
  return {K, R, threads};
}

// Blocks of `rows` channels (one chunk of time).
int64_t grid_blocks(const ark_selective_scan_args& a, int64_t rows) {
  return a.batch * a.ngroups * ceil_div(a.dim / a.ngroups, rows);
}
template <class S> int64_t grid_blocks(const ark_selective_scan_args& a) { return grid_blocks(a, S::ROWS); }

// The backward's shape and time chunks. Chunks give the parallelism that K = 2 was for (pick_shape),
// so a chunked backward runs K = 4, and only where pick_shape went to K = 2 for want of channels:
// where the unchunked grid fills the GPU, the carry kernel costs more than the extra blocks gain
// (H200, fwd+bwd: b4 d2048 2.326 ms unchunked vs 2.367 chunked; b8 d1536 1.520 vs 1.633; b2 d1536
// chunked 0.567 vs 0.861 unchunked). The chunk count aims at kBwdBlocksPerSm blocks per SM (3 fit
// by registers and shared memory; several waves keep the SMs busy past the tail) with chunks of at
// least kMinChunkTiles tiles. Knob sscan_bwd_chunks: 1 = the unchunked backward, n = n chunks.
constexpr int64_t kBwdBlocksPerSm = 8, kMinChunkTiles = 4;
struct BwdPlan {
  LaunchShape shape;
  int64_t chunks;
};
BwdPlan pick_bwd(const ark_selective_scan_args& a) {
  const LaunchShape unchunked = pick_shape(a, true);
  const int forced = knob(Knob::SscanBwdChunks);
  if (forced == 1 || (forced == 0 && unchunked.K != 2)) return {unchunked, 1};
  LaunchShape s = unchunked;
  if (s.K == 2) s = {4, s.K * s.R / 4, kThreads};
  const int64_t blocks0 = grid_blocks(a, kThreads / s.R);
  const int64_t nck = ceil_div(a.seqlen, kCk);
  int64_t want = forced > 0 ? forced : ceil_div(kBwdBlocksPerSm * device_sm_count(), blocks0);
  const int64_t most = forced > 0 ? nck : nck / kMinChunkTiles;
  if (want > most) want = most;
  if (want > 0x7fffffffLL / blocks0) want = 0x7fffffffLL / blocks0;
  if (want <= 1) return {unchunked, 1};
  return {s, ceil_div(nck, ceil_div(nck, want))};  // no empty chunk
}

// The forward's shape: pick_shape, or the tuning knobs (common/tuning.hpp) where set; they must
// cover the padded state count (K * R) of these sizes.
ark_status pick_fwd_shape(const ark_selective_scan_args& a, LaunchShape* out) {
  *out = pick_shape(a, false);
  if (const int kr = knob(Knob::SscanFwdShape)) {
    const int K = kr / 100, R = kr % 100;
    if (K * R != out->K * out->R)
      return fail(ARK_ERROR_INVALID_ARGUMENT, "tuning knob sscan_fwd_shape: K * R must be %d for N = %lld, got %d",
                  out->K * out->R, (long long)a.dstate, kr);
    out->K = K;
    out->R = R;
  }
  if (const int t = knob(Knob::SscanFwdThreads)) out->threads = t;
  return ARK_SUCCESS;
}


// The forward's time chunks, for a problem whose channels fill less than half of the GPU's block slots
// (the small headline shape, b2 d1536 n16: 96 blocks of 256 threads for 264 slots; 36 SMs idle).
// Chunks cost a carry pass over all but the last chunk (~0.6 of a main step: B but no C, no y), and
// the per-SM rate at 16 warps is only ~1.45x the rate at 8 (H100: 6.0 against 4.1 exponentials a
// clock), so 2 chunks (192 blocks, 60 SMs with two) gained nothing; what pays is enough chunks to
// spread the main pass over about kFwdChunkWaves waves of blocks (H100, b2 d1536 l2048, K2R8 T256,
// unchunked 0.1450 ms: 2 chunks 0.1444, 3 0.1572, 4 0.1406, 6 0.1294, 8 0.1330; H200: unchunked
// 0.1452, 6 chunks 0.1289, 8 0.1343, 12 0.1370; bench/NOTES.md, session 11). Chunks hold at least
// kMinChunkTiles tiles. Knob sscan_fwd_chunks: 1 = unchunked, n = n chunks. No workspace: unchunked.
constexpr int64_t kFwdWarpsPerSm = 16, kFwdChunkWaves = 2;
struct FwdPlan {
  LaunchShape shape;
  int64_t chunks;
};
ark_status pick_fwd(const ark_selective_scan_args& a, bool have_workspace, FwdPlan* out) {
  ARK_TRY(pick_fwd_shape(a, &out->shape));
  out->chunks = 1;
  const int forced = knob(Knob::SscanFwdChunks);
  if (!have_workspace || forced == 1) return ARK_SUCCESS;
  const LaunchShape& s = out->shape;
  const int64_t ntiles = ceil_div(a.seqlen, fwd_time_tile(s.K * s.R, s.R));
  const int64_t blocks0 = grid_blocks(a, s.threads / s.R);
  const int64_t slots = device_sm_count() * (kFwdWarpsPerSm * 32 / s.threads);
  if (forced == 0 && 2 * blocks0 > slots) return ARK_SUCCESS;
  int64_t want = forced > 0 ? forced : ceil_div(kFwdChunkWaves * slots, blocks0);
  const int64_t most = forced > 0 ? ntiles : ntiles / kMinChunkTiles;
  if (want > most) want = most;
  if (want > 0x7fffffffLL / blocks0) want = 0x7fffffffLL / blocks0;
  if (want > 1) out->chunks = ceil_div(ntiles, ceil_div(ntiles, want));  // no empty chunk
  return ARK_SUCCESS;
}

// `chunks` time chunks (pick_fwd); their carries in `ws` (fwd_workspace_floats).
template <class S>
ark_status launch_fwd(const ark_selective_scan_args& a, int64_t chunks, float* ws, cudaStream_t st) {
#ifdef ARKERNELS_TUNING_VARIANTS
  // The shared-memory reduction, for the N = 16 shapes of 128 and 256 threads (compile time).
  if constexpr (!S::SMEM_REDUCE && S::NP == 16 && S::R % 4 == 0 && S::THREADS >= 128) {
    if (knob(Knob::SscanFwdReduce) == int(FwdReduce::kSmem))
      return launch_fwd<Shape<S::K, S::R, S::THREADS, true>>(a, chunks, ws, st);
  }
#endif
  const size_t smem = size_t(FwdSmem<S>::floats()) * sizeof(float);
  FwdChunks ch;
  ch.chunks = chunks;
  ch.blocks0 = grid_blocks<S>(a);
  const int64_t blocks = ch.blocks0 * chunks;
  if (blocks > 0x7fffffffLL) return fail(ARK_ERROR_INVALID_ARGUMENT, "batch * dim: too large for one launch");
  if (chunks > 1) {
    ch.carry_h = ws;
    ch.carry_p = ws + (chunks - 1) * a.batch * a.dim * a.dstate;
    auto carry = a.cu_seqlens ? selective_scan_fwd_kernel<S, true, false, FwdDefaultReduce<S>, true>
                              : selective_scan_fwd_kernel<S, false, false, FwdDefaultReduce<S>, true>;
    if (cudaFuncSetAttribute(carry, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)) != cudaSuccess)
      return cuda_launch_status("selective_scan", "forward carry (shared memory attribute)");
    carry<<<unsigned(ch.blocks0 * (chunks - 1)), S::THREADS, smem, st>>>(a, ch);
    ARK_TRY(cuda_launch_status("selective_scan", "forward carry"));
  }
  auto kernel = a.cu_seqlens ? selective_scan_fwd_kernel<S, true, false> : selective_scan_fwd_kernel<S, false, false>;
  // Knobs: sscan_fwd_paired_bc 0 = the default (above), -1 = the generic path, 1 = paired rows with the
  // element type read at run time (tuning builds), 2 = the default's instance (with sscan_fwd_reduce set:
  // paired rows with the run-time element type and that reduction); sscan_fwd_reduce 0 = the default,
  // -1 = shuffles overlapped, 1 = not overlapped, 2 = shared memory (tuning builds).
  const int paired_knob = knob(Knob::SscanFwdPairedBc), reduce_knob = knob(Knob::SscanFwdReduce);
  const bool both_var = a.B_variable && a.C_variable;
  if constexpr (kFwdPairedDefault<S>) {
    if (both_var && !a.cu_seqlens && (paired_knob == 0 || paired_knob == 2) && reduce_knob == 0) {
      constexpr FwdReduce kR = FwdReduce::kShuffle;
      kernel = a.dtype == ARK_FLOAT32   ? selective_scan_fwd_kernel<S, false, true, kR, false, ARK_FLOAT32>
               : a.dtype == ARK_FLOAT16 ? selective_scan_fwd_kernel<S, false, true, kR, false, ARK_FLOAT16>
                                        : selective_scan_fwd_kernel<S, false, true, kR, false, ARK_BFLOAT16>;
    }
  }
#ifdef ARKERNELS_TUNING_VARIANTS
  // The run-time-type forms: paired rows (knob 1, or 2 with a reduce knob), overlapped or not.
  const bool bc_var = both_var && (paired_knob == 1 || (paired_knob == 2 && reduce_knob != 0));
  if (bc_var) kernel = a.cu_seqlens ? selective_scan_fwd_kernel<S, true, true> : selective_scan_fwd_kernel<S, false, true>;
  if constexpr (!S::SMEM_REDUCE) {
    const bool unpiped = reduce_knob == 1 || (reduce_knob == 0 && paired_knob == 1);
    if (unpiped && !a.cu_seqlens)
      kernel = bc_var ? selective_scan_fwd_kernel<S, false, true, FwdReduce::kShuffle>
                      : selective_scan_fwd_kernel<S, false, false, FwdReduce::kShuffle>;
  }
#endif
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)) != cudaSuccess)
    return cuda_launch_status("selective_scan", "forward (shared memory attribute)");
  kernel<<<unsigned(blocks), S::THREADS, smem, st>>>(a, ch);
  return cuda_launch_status("selective_scan", "forward");
}

template <class S>
ark_status launch_bwd(const ark_selective_scan_args& a, float* ws, int64_t chunks, cudaStream_t st) {
  const ScanWorkspace w = scan_workspace(a, S::ROWS, chunks);
  const size_t smem = size_t(BwdSmem<S>::floats()) * sizeof(float);
  const int64_t blocks0 = grid_blocks<S>(a);
  if (blocks0 * chunks > 0x7fffffffLL) return fail(ARK_ERROR_INVALID_ARGUMENT, "batch * dim: too large for one launch");
  // 16-byte staging where the rows allow it; knob sscan_bwd_scalar_staging = 1: the scalar staging.
  // 16-byte staging (non-varlen, rows aligned; knob sscan_bwd_scalar_staging = 1: off). It spills ~250
  // bytes at the 168-register bound (ptxas) and still wins: H200 fwd+bwd 2.621 -> 2.326 ms (b4 d2048),
  // 1.650 -> 1.520 (b8 d1536), chunked b2 d1536 0.653 -> 0.567 (bench/NOTES.md).
  const bool vec = !a.cu_seqlens && vec_ok_bwd(a) && knob(Knob::SscanBwdScalarStaging) != 1;
  if (chunks > 1) {
    auto carry = a.cu_seqlens ? selective_scan_bwd_carry_kernel<S, true> : selective_scan_bwd_carry_kernel<S, false>;
    const size_t carry_smem = size_t(BwdSmem<S, true>::floats()) * sizeof(float);
    if (cudaFuncSetAttribute(carry, cudaFuncAttributeMaxDynamicSharedMemorySize, int(carry_smem)) != cudaSuccess)
      return cuda_launch_status("selective_scan", "backward carry (shared memory attribute)");
    carry<<<unsigned(blocks0 * (chunks - 1)), S::THREADS, carry_smem, st>>>(a, ws, w, blocks0, vec);
    ARK_TRY(cuda_launch_status("selective_scan", "backward carry"));
  }
  auto kernel = a.cu_seqlens ? selective_scan_bwd_kernel<S, true> : selective_scan_bwd_kernel<S, false>;
  if (vec) kernel = selective_scan_bwd_kernel<S, false, BwdStaging::kVec>;
  // The vectorised dB/dC row sums (write_bwd_bc_vec), with the staging chosen above: the default for
  // NP <= 32 (N <= 32; measured on the H200, 2026-12-04, fwd+bwd at N = 16: 2.337 -> 2.194 ms at b4
  // d2048, 1.525 -> 1.453 at b8 d1536, 0.561 -> 0.541 at b2 d1536); above that they spill more in the
  // step loops (ptxas) and were not measured: knob sscan_bwd_rowsum_vec = 1 there (tuning builds),
  // -1 = off everywhere. Shapes outside RowsumVec<S>::kOk (N <= 8, N > 128) and varlen calls keep
  // write_bwd_bc: the choice changes speed, never results (beyond fp32 summation order).
  constexpr bool kRowsumCompiled = RowsumVec<S>::kOk && (S::NP <= 32 || kTuningVariants);
  const int rowsum_knob = knob(Knob::SscanBwdRowsumVec);
  const bool rowsum = !a.cu_seqlens && (rowsum_knob == 1 || (rowsum_knob == 0 && S::NP <= 32));
  if constexpr (kRowsumCompiled) {
    if (rowsum)
      kernel = vec ? selective_scan_bwd_kernel<S, false, BwdStaging::kVec, true>
                   : selective_scan_bwd_kernel<S, false, BwdStaging::kScalar, true>;
  }
#ifdef ARKERNELS_TUNING_VARIANTS
  if (knob(Knob::SscanBwdBatchedStaging)) {
    kernel = a.cu_seqlens ? selective_scan_bwd_kernel<S, true, BwdStaging::kBatched>
                          : selective_scan_bwd_kernel<S, false, BwdStaging::kBatched>;
  }
#endif
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)) != cudaSuccess)
    return cuda_launch_status("selective_scan", "backward (shared memory attribute)");
  kernel<<<unsigned(blocks0 * chunks), S::THREADS, smem, st>>>(a, ws, w, blocks0);
  ARK_TRY(cuda_launch_status("selective_scan", "backward"));
  const int64_t per_group = a.batch * a.ngroups, parts = chunks * a.batch;  // per-state sums: (chunk, batch) rows
  if (a.B_variable) ARK_TRY(sum_middle(ws + w.dB_rows, a.dB, a.dtype, per_group, w.row_blocks, a.dstate * a.seqlen, st));
  else ARK_TRY(sum_middle(ws + w.dB_const, a.dB, ARK_FLOAT32, 1, parts, a.dim * a.dstate, st));
  if (a.C_variable) ARK_TRY(sum_middle(ws + w.dC_rows, a.dC, a.dtype, per_group, w.row_blocks, a.dstate * a.seqlen, st));
  else ARK_TRY(sum_middle(ws + w.dC_const, a.dC, ARK_FLOAT32, 1, parts, a.dim * a.dstate, st));
  ARK_TRY(sum_middle(ws + w.dA, a.dA, ARK_FLOAT32, 1, parts, a.dim * a.dstate, st));
  if (a.D) ARK_TRY(sum_middle(ws + w.dD, a.dD, ARK_FLOAT32, 1, parts, a.dim, st));
  if (a.delta_bias) ARK_TRY(sum_middle(ws + w.ddelta_bias, a.ddelta_bias, ARK_FLOAT32, 1, parts, a.dim, st));
  return ARK_SUCCESS;
}

struct FwdLauncher {
  const ark_selective_scan_args& a;
  int64_t chunks;
  float* ws;
  cudaStream_t st;
  template <class S> ark_status run() const { return launch_fwd<S>(a, chunks, ws, st); }
};
struct BwdLauncher {
  const ark_selective_scan_args& a;
  float* ws;
  int64_t chunks;
  cudaStream_t st;
  // The backward always runs 128-thread blocks (pick_shape), so no 256-thread backward is compiled.
  template <class S> ark_status run() const { return launch_bwd<Shape<S::K, S::R>>(a, ws, chunks, st); }
};

// Calls f.run<Shape<K, R, threads>>() for shape `s` (backward: 128 threads only).
template <class F> ark_status with_shape(const LaunchShape& s, const F& f) {
  if (s.threads == 256) {
    switch (s.K * 100 + s.R) {
      case 404: return f.template run<Shape<4, 4, 256>>();
      case 208: return f.template run<Shape<2, 8, 256>>();
      case 216: return f.template run<Shape<2, 16, 256>>();
      default: break;
    }
  } else if (s.threads == kThreads) {
    switch (s.K * 100 + s.R) {
      case 401: return f.template run<Shape<4, 1>>();
      case 402: return f.template run<Shape<4, 2>>();
      case 404: return f.template run<Shape<4, 4>>();
      case 208: return f.template run<Shape<2, 8>>();
      case 408: return f.template run<Shape<4, 8>>();
      case 216: return f.template run<Shape<2, 16>>();
      case 416: return f.template run<Shape<4, 16>>();
      case 232: return f.template run<Shape<2, 32>>();
      case 432: return f.template run<Shape<4, 32>>();
      case 832: return f.template run<Shape<8, 32>>();
      default: break;
    }
  }
  return fail(ARK_ERROR_INVALID_ARGUMENT, "selective_scan: no kernel compiled for K=%d R=%d threads=%d", s.K, s.R,
              s.threads);
}

#ifdef ARKERNELS_TUNING_VARIANTS
// Forward-only shapes for tuning sweeps (bench/native/), compiled only into tuning builds.
template <class F> ark_status with_tuning_shape(const LaunchShape& s, const F& f) {
  switch (s.threads * 10000 + s.K * 100 + s.R) {
    case 64 * 10000 + 404: return f.template run<Shape<4, 4, 64>>();
    case 64 * 10000 + 208: return f.template run<Shape<2, 8, 64>>();
    default: return with_shape(s, f);
  }
}
#endif

}  // namespace

ScanBwdLayout selective_scan_cuda_bwd_layout(const ark_selective_scan_args& a) {
  const BwdPlan p = pick_bwd(a);
  return {kThreads / p.shape.R, p.chunks};
}

size_t selective_scan_cuda_fwd_workspace_floats(const ark_selective_scan_args& a) {
  FwdPlan p;
  if (pick_fwd(a, true, &p) != ARK_SUCCESS || p.chunks == 1) return 0;  // a bad knob fails the launch
  return size_t(2 * (p.chunks - 1) * a.batch * a.dim * a.dstate);
}

ark_status selective_scan_fwd_cuda(const ark_selective_scan_args& a, float* workspace, void* stream) {
  const auto st = static_cast<cudaStream_t>(stream);
  FwdPlan p;
  ARK_TRY(pick_fwd(a, workspace != nullptr, &p));
#ifdef ARKERNELS_TUNING_VARIANTS
  return with_tuning_shape(p.shape, FwdLauncher{a, p.chunks, workspace, st});
#else
  return with_shape(p.shape, FwdLauncher{a, p.chunks, workspace, st});
#endif
}

ark_status selective_scan_bwd_cuda(const ark_selective_scan_args& a, float* workspace, void* stream) {
  const auto st = static_cast<cudaStream_t>(stream);
  const BwdPlan p = pick_bwd(a);
  return with_shape(p.shape, BwdLauncher{a, workspace, p.chunks, st});
}

}  // namespace ark
