// Device code of the Hopper (sm_90a) block_sparse_attention forward: TMA-fed warpgroup MMAs over the runs of
// a tile layout. Host side (tensor maps, launch): block_sparse_attention_cuda.cu.
//
// One CTA per (query tile of 128 rows, q head, batch row) (persistent: per SM, below). A producer loads the Q
// tile and, for every 128-key chunk the tile visits, the K and the V chunk into rings of STAGES shared-memory
// slots (TMA, 128-byte swizzle; separate full / empty mbarriers for K and V, so a K slot is refilled as soon as
// S = Q K^T has read it). Two consumer warpgroups own 64 query rows each: S = Q K^T (wgmma, both operands in shared
// memory), the mask on partial chunks, online softmax in fp32 (log2 domain, scale folded into one FFMA),
// O += P V (wgmma, P from registers as the A operand, V as the transposed B operand).
// Two schedules (template parameter PIPELINED), the pipelined one with two epilogues (TMA_OUT: O staged in shared
// memory, in its warpgroup's rows, and stored by TMA; otherwise 4-byte stores from registers) and a persistent form:
//  * serial: a producer warp (288 threads, 168 registers a thread); per chunk a consumer waits for S, does
//    the softmax, then runs P V and waits for it;
//  * pipelined: a producer warpgroup that gives registers back (setmaxnreg) so consumers get 232; per chunk a
//    consumer issues S(j) and P(j-1) V(j-1) together, does the softmax of S(j) while P V runs, and the two
//    warpgroups take turns issuing MMAs (named barriers), so one's softmax runs under the other's MMAs;
//  * persistent (pipelined, TMA epilogue): one CTA per SM walks a list of (query tile, head, batch row) items; Q has
//    its own empty barrier and O its own staging tile, so the producer loads the next item's Q and first chunks
//    while the consumers finish the current one, and the CTA's launch and prologue are paid once per SM, not per
//    tile. Items are handed out statically: 8 % faster on VAR's 680-token sequences, 4-12 % slower on long ones,
//    whose tiles differ more in cost than the static hand-out balances (H100, bench/NOTES.md session 10).
// The chunks are walked from the layout's runs (masks/layout.py): a run of key tiles [start, end) becomes
// ceil(keys / 128) chunks; chunks of FULL runs that lie wholly inside their run do no mask work; the others
// test each element (the run's end and S, the level rule, or the bitmaps). The layout's query tile must be
// 128 rows and its key tile divide 128, so one layout also serves the Triton backward. Rows of Q/K/V past
// the ends read as zeros (TMA bounds); rows of out past L are never written.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstring>
#include <type_traits>

#include "common/sm90_async.cuh"
#include "ops/block_sparse_attention/block_sparse_attention.cuh"
#include "ops/block_sparse_attention/block_sparse_attention_walk.hpp"

namespace ark {
namespace bsa_sm90 {

using bsa_walk::BM;  // query rows per CTA
using bsa_walk::BN;  // keys per chunk
using bsa_walk::ChunkCursor;
constexpr int kPanelCols = 64;      // a 128-byte row of 16-bit elements: one swizzle panel
constexpr uint32_t kRowBytes = 128;
constexpr int kConsumerThreads = 256;

template <bool PIPELINED> struct Schedule {
  static constexpr int kThreads = PIPELINED ? 384 : 288;  // + producer warpgroup / warp
  static constexpr int kProducerRegs = 40, kConsumerRegs = 232;  // pipelined: 40 x 128 + 232 x 256 <= 64 K
};

template <int D, int STAGES>
struct Smem {
  static constexpr int kPanels = D / kPanelCols;
  static constexpr uint32_t kQBytes = BM * D * 2;
  static constexpr uint32_t kChunkBytes = BN * D * 2;  // one K or one V chunk
  static constexpr uint32_t kQ = 0;
  static constexpr uint32_t kK = kQ + kQBytes;
  static constexpr uint32_t kV = kK + STAGES * kChunkBytes;
  static constexpr uint32_t kBars = kV + STAGES * kChunkBytes;
  // q_full, k_full and v_full per slot (one arrival each); q_empty, k_empty and v_empty per slot (8 warps each)
  static constexpr int kNumBars = 2 + 4 * STAGES;
  static constexpr uint32_t kBytes = kBars + kNumBars * 8;
  static constexpr uint32_t kO = (kBytes + 1023) / 1024 * 1024;  // persistent: O's staging tile
  static constexpr uint32_t kPersistentBytes = kO + kQBytes;
  // + room to align the base to 1024 bytes
  static constexpr uint32_t launch_bytes(bool persistent) { return (persistent ? kPersistentBytes : kBytes) + 1024; }
};

struct KernelArgs {
  void* out;
  float* lse;
  int64_t L;
  int tiles, Hq, batch;  // tiles: query tiles per (batch row, head)
  int group;             // q heads per kv head
  float scale_log2, scale;
  bsa_walk::Walk walk;  // the layout, its rule and S
};

template <int STAGES>
struct Barriers {
  uint64_t* base;
  __device__ uint64_t* q_full() const { return base; }
  __device__ uint64_t* k_full(int s) const { return base + 1 + s; }
  __device__ uint64_t* v_full(int s) const { return base + 1 + STAGES + s; }
  __device__ uint64_t* q_empty() const { return base + 1 + 2 * STAGES; }
  __device__ uint64_t* k_empty(int s) const { return base + 2 + 2 * STAGES + s; }
  __device__ uint64_t* v_empty(int s) const { return base + 2 + 3 * STAGES + s; }
};

// One item of work: a query tile of one (batch row, head).
struct Work {
  int tile, h, b;
};

// The items of a persistent CTA (cta of ctas). Item w is tile tiles - 1 - w % tiles (the heaviest tiles of causal-like
// masks first) of head-row w / tiles, so that the CTAs running at once share the K / V of a few heads in L2. Round r
// hands items r ctas .. r ctas + ctas - 1 out, CTA i taking r ctas + (i + r) % ctas: rotated each round, so that a
// CTA does not get the same tile of every head (with ctas a multiple of tiles it would, and the tiles' costs differ).
struct WorkList {
  int64_t total;
  int ctas, cta, round = 0;
  __device__ WorkList(const KernelArgs& a, int ctas_, int cta_)
      : total(int64_t(a.tiles) * a.Hq * a.batch), ctas(ctas_), cta(cta_) {}
  __device__ bool next(const KernelArgs& a, Work& w) {
    for (; int64_t(round) * ctas < total; ++round) {
      const int64_t item = int64_t(round) * ctas + (cta + round) % ctas;
      if (item >= total) continue;
      ++round;
      const int64_t head_row = item / a.tiles;
      w.tile = a.tiles - 1 - int(item % a.tiles);
      w.h = int(head_row % a.Hq);
      w.b = int(head_row / a.Hq);
      return true;
    }
    return false;
  }
};

// Stage and phase parity of the it-th chunk in a ring of STAGES slots.
template <int STAGES> struct Slot {
  int stage;
  uint32_t parity;
  __device__ explicit Slot(int it) : stage(it % STAGES), parity((it / STAGES) & 1) {}
};

// ---- producer ----

// The item's Q tile (its use `q_use` of the Q buffer: from the second on, once the consumers released the previous
// one) and its chunks, into the ring from position `it` on.
template <int D, int STAGES>
__device__ void produce(const KernelArgs& a, uint8_t* smem, const CUtensorMap* tq, const CUtensorMap* tk,
                        const CUtensorMap* tv, const Work& w, int q_use, int& it) {
  using L = Smem<D, STAGES>;
  const Barriers<STAGES> bar{reinterpret_cast<uint64_t*>(smem + L::kBars)};
  const int tile = w.tile, h = w.h, b = w.b;
  const int hk = h / a.group;
  if (q_use > 0) sm90::mbar_wait(bar.q_empty(), (q_use - 1) & 1);
  sm90::mbar_arrive_expect_tx(bar.q_full(), L::kQBytes);
  for (int p = 0; p < L::kPanels; ++p)
    sm90::tma_load_4d(smem + L::kQ + p * BM * kRowBytes, tq, bar.q_full(), p * kPanelCols, tile * BM, h, b);
  ChunkCursor c;
  c.init(a.walk, tile);
  for (; c.valid(); ++it, c.next(a.walk)) {
    const Slot<STAGES> slot(it);
    const uint32_t reuse_parity = ((it / STAGES) - 1) & 1;  // the slot's previous use must be released
    if (it >= STAGES) sm90::mbar_wait(bar.k_empty(slot.stage), reuse_parity);
    sm90::mbar_arrive_expect_tx(bar.k_full(slot.stage), L::kChunkBytes);
    for (int p = 0; p < L::kPanels; ++p)
      sm90::tma_load_4d(smem + L::kK + slot.stage * L::kChunkBytes + p * BN * kRowBytes, tk, bar.k_full(slot.stage),
                        p * kPanelCols, c.key, hk, b);
    if (it >= STAGES) sm90::mbar_wait(bar.v_empty(slot.stage), reuse_parity);
    sm90::mbar_arrive_expect_tx(bar.v_full(slot.stage), L::kChunkBytes);
    for (int p = 0; p < L::kPanels; ++p)
      sm90::tma_load_4d(smem + L::kV + slot.stage * L::kChunkBytes + p * BN * kRowBytes, tv, bar.v_full(slot.stage),
                        p * kPanelCols, c.key, hk, b);
  }
}

// ---- consumer pieces (one thread's share of a warpgroup's 64 rows) ----

// Two floats rounded to T, as the 32-bit register an MMA fragment (or a paired store) takes.
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t bits;
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    memcpy(&bits, &v, 4);
  } else {
    __half2 v = __floats2half2_rn(lo, hi);
    memcpy(&bits, &v, 4);
  }
  return bits;
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// This thread's two accumulator rows (bsa_walk::acc_row: row and row + 8) and their rule values.
struct ThreadRows {
  int t, wg, lane;
  int row_in_tile;  // the first of the two rows, inside the 128-row query tile
  int row;          // its absolute query index
  int col;          // its first column inside each 8-column block (bsa_walk::acc_col)
  bsa_walk::RowRule q[2];

  __device__ ThreadRows(const KernelArgs& a, int tile, int consumer_thread) : t(consumer_thread) {
    wg = t / 128;
    lane = t % 32;
    row_in_tile = bsa_walk::acc_row(t, 0);
    row = tile * BM + row_in_tile;
    col = bsa_walk::acc_col(t, 0);
    for (int h = 0; h < 2; ++h) q[h].load(a.walk, row + 8 * h, a.L);
  }
};

__device__ __forceinline__ void apply_mask(float (&s)[BN / 2], const KernelArgs& a, const ChunkCursor& c,
                                           const ThreadRows& t) {
  if (c.unmasked()) return;
  bsa_walk::chunk_visibility(a.walk, c, t.t, t.q, [&](int i, bool visible) {
    if (!visible) s[i] = -INFINITY;
  });
}

// Issues S = Q K^T (no commit): 16-column k-steps, four per 64-column panel of both operands.
template <typename T, int D>
__device__ __forceinline__ void issue_qk(float (&s)[BN / 2], uint32_t q_base, uint32_t k_base) {
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t off = (kk % 4) * 32;  // byte offset of the k-step inside its 128-byte row
    const uint64_t da = sm90::sw128_desc(q_base + (kk / 4) * BM * kRowBytes + off, 16, 1024);
    const uint64_t db = sm90::sw128_desc(k_base + (kk / 4) * BN * kRowBytes + off, 16, 1024);
    sm90::wgmma_ss(T{}, s, da, db, kk > 0);
  }
}

// Issues O += P V (no commit): V (keys x D) is the MN-major B operand, 16 keys per k-step = 2048 bytes of each
// 64-column panel; the panels are BN rows apart.
template <typename T, int D>
__device__ __forceinline__ void issue_pv(float (&o)[D / 2], const uint32_t (&p)[BN / 16][4], uint32_t v_base) {
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk)
    sm90::wgmma_rs_tb(T{}, o, p[kk], sm90::sw128_desc(v_base + kk * 16 * kRowBytes, BN * kRowBytes, 1024), 1);
}

// Online softmax of a masked chunk: s becomes p = exp2((s - m_new) scale log2e) in place, m and l move to the
// new maximum; returns the factor alpha the previous O must be scaled by, per row.
struct RowState {
  float m[2] = {-INFINITY, -INFINITY};
  float l[2] = {0.f, 0.f};  // this thread's partial row sums (the quad's add up at the end)

  __device__ __forceinline__ void update(float (&s)[BN / 2], float scale_log2, float (&alpha)[2]) {
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], s[i]);
    float neg_base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = quad_max(mx[r]);
      // A row with nothing visible yet keeps m = -inf and uses base 0: its p = exp2(-inf) = 0.
      const float base = mx[r] == -INFINITY ? 0.f : mx[r];
      alpha[r] = sm90::ex2((m[r] - base) * scale_log2);  // m = -inf: 0 (O and l are 0 then anyway)
      neg_base[r] = -base * scale_log2;
      m[r] = mx[r];
      l[r] *= alpha[r];
    }
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) {
      s[i] = sm90::ex2(fmaf(s[i], scale_log2, neg_base[(i >> 1) & 1]));
      l[(i >> 1) & 1] += s[i];
    }
  }
};

// p as the A fragments of the P V MMA: accumulators 8 kk .. 8 kk + 7 hold keys 16 kk .. 16 kk + 15, which is
// k-step kk's fragment, register pair (i / 2) % 4.
template <typename T>
__device__ __forceinline__ void to_fragments(const float (&s)[BN / 2], uint32_t (&p)[BN / 16][4]) {
#pragma unroll
  for (int i = 0; i < BN / 2; i += 2) p[i / 8][(i / 2) % 4] = pack2<T>(s[i], s[i + 1]);
}

template <int D> __device__ __forceinline__ void rescale(float (&o)[D / 2], const float (&alpha)[2]) {
#pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] *= alpha[(i >> 1) & 1];
}

// One arrival per consumer warp (8 in all) frees a slot.
__device__ __forceinline__ void release(uint64_t* empty, int lane) {
  __syncwarp();
  if (lane == 0) sm90::mbar_arrive(empty);
}

// A 128-row x D accumulator of the two consumer warpgroups (this thread: rows acc_row(t, 0) and + 8, columns
// 8 j + 2 (t % 4) + {0, 1}), row r times scale[r], as T, into `tile` laid out as the TMA tiles are (panels of 128 rows
// x 64 columns, 128-byte rows, 16-byte chunk c of row r at chunk c ^ (r % 8)) for a TMA store. A warp's 4-byte store
// covers 8 rows x 16 bytes: 8 distinct chunks after the swizzle, no bank conflict.
template <typename T, int D>
__device__ __forceinline__ void stage_accumulator_rows(uint32_t tile, const float (&acc)[D / 2], const float (&scale)[2],
                                                       int t) {
  const int r0 = bsa_walk::acc_row(t, 0);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = r0 + 8 * h;
    const uint32_t row = tile + uint32_t(r) * kRowBytes + 4 * uint32_t(t % 4), swz = uint32_t(r & 7);
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
      sm90::st_shared_b32(row + uint32_t(j / 8) * (128 * kRowBytes) + ((uint32_t(j % 8) ^ swz) << 4),
                          pack2<T>(acc[4 * j + 2 * h] * scale[h], acc[4 * j + 2 * h + 1] * scale[h]));
  }
}

// The two rows' normalisers 1 / l (0 for a row that saw nothing), and their lse = scale * m + ln(l) (-inf for such a
// row) written for the rows below L, by one lane of each quad.
__device__ __forceinline__ void finish_rows(const KernelArgs& a, const ThreadRows& t, const RowState& rs, int64_t bh,
                                            float (&inv)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float lr = quad_sum(rs.l[r]);
    inv[r] = lr > 0.f ? 1.f / lr : 0.f;
    const int row = t.row + 8 * r;
    if (row < a.L && a.lse && (t.lane % 4) == 0) a.lse[bh * a.L + row] = lr > 0.f ? a.scale * rs.m[r] + logf(lr) : -INFINITY;
  }
}

// Normalise and store from registers (out 0 for a row that saw nothing).
template <typename T, int D>
__device__ void store_rows(const KernelArgs& a, const ThreadRows& t, const float (&o)[D / 2], const RowState& rs,
                           int h, int b) {
  T* out = static_cast<T*>(a.out);
  const int64_t bh = int64_t(b) * a.Hq + h;
  float inv[2];
  finish_rows(a, t, rs, bh, inv);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = t.row + 8 * r;
    if (row < a.L) {
      T* dst = out + (bh * a.L + row) * D + t.col;
#pragma unroll
      for (int j = 0; j < D / 8; ++j)
        *reinterpret_cast<uint32_t*>(dst + 8 * j) =
            pack2<T>(o[4 * j + 2 * r] * inv[r], o[4 * j + 2 * r + 1] * inv[r]);
    }
  }
}

// The same through shared memory (TMA_OUT): this warpgroup's 64 rows of O into its own rows of a staging tile, then one
// thread stores them by TMA (rows past L clipped). Not persistent: the staging tile is the Q tile (only this warpgroup
// reads those rows, and its last S = Q K^T has been waited for), and the store must have read it before the CTA ends.
// Persistent: O's own tile, which the previous item's store must have read first.
template <typename T, int D, int STAGES, bool PERSISTENT>
__device__ void store_rows_tma(const KernelArgs& a, const ThreadRows& t, const float (&o)[D / 2], const RowState& rs,
                               uint8_t* smem, const CUtensorMap* tout, const Work& w) {
  using L = Smem<D, STAGES>;
  uint8_t* staging = smem + (PERSISTENT ? L::kO : L::kQ);
  const bool leader = t.t % 128 == 0;
  float inv[2];
  finish_rows(a, t, rs, int64_t(w.b) * a.Hq + w.h, inv);
  if constexpr (PERSISTENT) {
    if (leader) sm90::bulk_wait_read<0>();
    sm90::named_barrier_sync(3 + t.wg, 128);  // ids 1, 2: the turns
  }
  stage_accumulator_rows<T, D>(sm90::smem_addr(staging), o, inv, t.t);
  sm90::fence_async_shared();
  sm90::named_barrier_sync(3 + t.wg, 128);
  if (leader) {
#pragma unroll
    for (int p = 0; p < L::kPanels; ++p)
      sm90::tma_store_4d(tout, staging + p * BM * kRowBytes + t.wg * 64 * kRowBytes, p * kPanelCols,
                         w.tile * BM + t.wg * 64, w.h, w.b);
    sm90::bulk_commit();
    if constexpr (!PERSISTENT) sm90::bulk_wait_read<0>();
  }
}

// ---- the consumer schedules ----

template <typename T, int D, int STAGES>
__device__ void consume_serial(const KernelArgs& a, uint8_t* smem, const Work& w, int consumer_thread) {
  using L = Smem<D, STAGES>;
  const Barriers<STAGES> bar{reinterpret_cast<uint64_t*>(smem + L::kBars)};
  const ThreadRows t(a, w.tile, consumer_thread);
  const uint32_t q_base = sm90::smem_addr(smem + L::kQ) + t.wg * 64 * kRowBytes;
  sm90::mbar_wait(bar.q_full(), 0);
  ChunkCursor c;
  c.init(a.walk, w.tile);
  float o[D / 2] = {}, s[BN / 2], alpha[2];
  uint32_t p[BN / 16][4];
  RowState rs;
  for (int it = 0; c.valid(); ++it, c.next(a.walk)) {
    const Slot<STAGES> slot(it);
    sm90::mbar_wait(bar.k_full(slot.stage), slot.parity);
    sm90::wgmma_fence();
    issue_qk<T, D>(s, q_base, sm90::smem_addr(smem + L::kK + slot.stage * L::kChunkBytes));
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>();
    sm90::fence_operands(s);
    release(bar.k_empty(slot.stage), t.lane);
    apply_mask(s, a, c, t);
    rs.update(s, a.scale_log2, alpha);
    to_fragments<T>(s, p);
    rescale<D>(o, alpha);
    sm90::mbar_wait(bar.v_full(slot.stage), slot.parity);
    sm90::wgmma_fence();
    issue_pv<T, D>(o, p, sm90::smem_addr(smem + L::kV + slot.stage * L::kChunkBytes));
    sm90::wgmma_commit();
    sm90::wgmma_wait<0>();
    sm90::fence_operands(o);
    release(bar.v_empty(slot.stage), t.lane);
  }
  store_rows<T, D>(a, t, o, rs, w.h, w.b);
}

// Turn-taking of the two consumer warpgroups for issuing MMAs (named barriers 1 and 2): a warpgroup waits
// for its turn, issues, and hands the turn over. Per item, warpgroup 1 hands warpgroup 0 the first turn and skips
// its last hand-over, so every barrier phase has exactly 128 arrivals and 128 waiters.
struct Turns {
  int wg;
  __device__ void wait_mine() const { sm90::named_barrier_sync(1 + wg, kConsumerThreads); }
  __device__ void hand_over() const { sm90::named_barrier_arrive(2 - wg, kConsumerThreads); }
};

// The pipelined schedule's walk over one item's chunks (Q use `q_use`, ring positions from `it` on): O (unnormalised)
// and the row state. Releases the Q tile once its last S = Q K^T has been waited for.
template <typename T, int D, int STAGES>
__device__ void attend_pipelined(const KernelArgs& a, uint8_t* smem, const ThreadRows& t, const Work& w, int q_use,
                                 int& it, float (&o)[D / 2], RowState& rs) {
  using L = Smem<D, STAGES>;
  const Barriers<STAGES> bar{reinterpret_cast<uint64_t*>(smem + L::kBars)};
  const uint32_t q_base = sm90::smem_addr(smem + L::kQ) + t.wg * 64 * kRowBytes;
  const Turns turns{t.wg};
  sm90::mbar_wait(bar.q_full(), q_use & 1);
  ChunkCursor c;
  c.init(a.walk, w.tile);
  float s[BN / 2], alpha[2];
  uint32_t p[BN / 16][4];
  if (c.valid()) {
    if (t.wg == 1) turns.hand_over();
    // Chunk 0: S alone.
    Slot<STAGES> prev(it);
    sm90::mbar_wait(bar.k_full(prev.stage), prev.parity);
    turns.wait_mine();
    sm90::wgmma_fence();
    issue_qk<T, D>(s, q_base, sm90::smem_addr(smem + L::kK + prev.stage * L::kChunkBytes));
    sm90::wgmma_commit();
    turns.hand_over();
    sm90::wgmma_wait<0>();
    sm90::fence_operands(s);
    release(bar.k_empty(prev.stage), t.lane);
    apply_mask(s, a, c, t);
    rs.update(s, a.scale_log2, alpha);
    to_fragments<T>(s, p);
    // Chunk it: S(it) and P(it-1) V(it-1) in flight together; the softmax of S(it) runs under P V.
    ++it;
    for (c.next(a.walk); c.valid(); ++it, c.next(a.walk)) {
      const Slot<STAGES> slot(it);
      sm90::mbar_wait(bar.k_full(slot.stage), slot.parity);
      sm90::mbar_wait(bar.v_full(prev.stage), prev.parity);
      turns.wait_mine();
      sm90::wgmma_fence();
      issue_qk<T, D>(s, q_base, sm90::smem_addr(smem + L::kK + slot.stage * L::kChunkBytes));
      sm90::wgmma_commit();
      issue_pv<T, D>(o, p, sm90::smem_addr(smem + L::kV + prev.stage * L::kChunkBytes));
      sm90::wgmma_commit();
      turns.hand_over();
      sm90::wgmma_wait<1>();  // S (the older group) done, P V may still run
      sm90::fence_operands(s);
      release(bar.k_empty(slot.stage), t.lane);
      apply_mask(s, a, c, t);
      rs.update(s, a.scale_log2, alpha);
      sm90::wgmma_wait<0>();
      sm90::fence_operands(o);
      release(bar.v_empty(prev.stage), t.lane);
      rescale<D>(o, alpha);  // O held the sum under the previous maximum
      to_fragments<T>(s, p);
      prev = slot;
    }
    release(bar.q_empty(), t.lane);  // every S of the item has been waited for
    // The last chunk's P V.
    sm90::mbar_wait(bar.v_full(prev.stage), prev.parity);
    turns.wait_mine();
    sm90::wgmma_fence();
    issue_pv<T, D>(o, p, sm90::smem_addr(smem + L::kV + prev.stage * L::kChunkBytes));
    sm90::wgmma_commit();
    if (t.wg == 0) turns.hand_over();
    sm90::wgmma_wait<0>();
    sm90::fence_operands(o);
    release(bar.v_empty(prev.stage), t.lane);
  } else {
    release(bar.q_empty(), t.lane);
  }
}

template <typename T, int D, int STAGES, bool TMA_OUT>
__device__ void consume_pipelined(const KernelArgs& a, uint8_t* smem, const CUtensorMap* tout, const Work& w,
                                  int consumer_thread) {
  const ThreadRows t(a, w.tile, consumer_thread);
  float o[D / 2] = {};
  RowState rs;
  int it = 0;
  attend_pipelined<T, D, STAGES>(a, smem, t, w, 0, it, o, rs);
  if constexpr (TMA_OUT) store_rows_tma<T, D, STAGES, false>(a, t, o, rs, smem, tout, w);
  else store_rows<T, D>(a, t, o, rs, w.h, w.b);
}

template <typename T, int D, int STAGES>
__device__ void consume_persistent(const KernelArgs& a, uint8_t* smem, const CUtensorMap* tout, WorkList items,
                                   int consumer_thread) {
  int it = 0, q_use = 0;
  for (Work w; items.next(a, w); ++q_use) {
    const ThreadRows t(a, w.tile, consumer_thread);
    float o[D / 2] = {};
    RowState rs;
    attend_pipelined<T, D, STAGES>(a, smem, t, w, q_use, it, o, rs);
    store_rows_tma<T, D, STAGES, true>(a, t, o, rs, smem, tout, w);
  }
  if (consumer_thread % 128 == 0) sm90::bulk_wait<0>();  // the last stores done before the CTA (its smem) ends
}

// ---- the kernel ----

// TMA_OUT (pipelined only): the epilogue through shared memory and TMA; `tout` (out, boxes of 64 rows) is read then.
// PERSISTENT (pipelined, TMA_OUT): the grid is one CTA per SM (or fewer), each walking its WorkList; otherwise one CTA
// per (query tile, head, batch row).
template <typename T, int D, int STAGES, bool PIPELINED, bool TMA_OUT = false, bool PERSISTENT = false>
__global__ void __launch_bounds__(Schedule<PIPELINED>::kThreads, 1)
    block_sparse_attention_fwd_kernel(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tk,
                                      const __grid_constant__ CUtensorMap tv, const __grid_constant__ CUtensorMap tout,
                                      const KernelArgs a) {
  static_assert(!PERSISTENT || (PIPELINED && TMA_OUT), "the persistent form is the pipelined one with the TMA epilogue");
#if ARK_SM90A_DEVICE
  using L = Smem<D, STAGES>;
  using Sch = Schedule<PIPELINED>;
  extern __shared__ uint8_t smem_raw[];
  // 128-byte swizzled tiles must start on 1024-byte boundaries (the descriptors assume base offset 0).
  uint8_t* smem = sm90::align_smem_1024(smem_raw);
  if (threadIdx.x == 0) {
    uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L::kBars);
    for (int i = 0; i < L::kNumBars; ++i)  // full barriers: the producer's one arrival; empty: 8 consumer warps
      sm90::mbar_init(&bars[i], i < 1 + 2 * STAGES ? 1 : kConsumerThreads / 32);
    sm90::mbar_init_fence();
  }
  __syncthreads();
  if constexpr (PERSISTENT) {  // warpgroup 0 produces, 1 and 2 consume
    const WorkList items(a, gridDim.x, blockIdx.x);
    if (threadIdx.x < 128) {
      sm90::regs_release<Sch::kProducerRegs>();
      if (threadIdx.x == 0) {
        WorkList mine = items;
        int it = 0, q_use = 0;
        for (Work w; mine.next(a, w); ++q_use) produce<D, STAGES>(a, smem, &tq, &tk, &tv, w, q_use, it);
      }
    } else {
      sm90::regs_claim<Sch::kConsumerRegs>();
      consume_persistent<T, D, STAGES>(a, smem, &tout, items, threadIdx.x - 128);
    }
    return;
  }
  // Heaviest query tiles (under causal-like masks: the last) first, so the tail of the grid is short.
  const Work w{int(gridDim.x) - 1 - int(blockIdx.x), int(blockIdx.y), int(blockIdx.z)};
  int it = 0;
  if constexpr (PIPELINED) {  // warpgroup 0 produces, 1 and 2 consume
    if (threadIdx.x < 128) {
      sm90::regs_release<Sch::kProducerRegs>();
      if (threadIdx.x == 0) produce<D, STAGES>(a, smem, &tq, &tk, &tv, w, 0, it);
    } else {
      sm90::regs_claim<Sch::kConsumerRegs>();
      consume_pipelined<T, D, STAGES, TMA_OUT>(a, smem, &tout, w, threadIdx.x - 128);
    }
  } else {  // warps 0-7 consume, warp 8 produces
    if (threadIdx.x >= kConsumerThreads) {
      if (threadIdx.x == kConsumerThreads) produce<D, STAGES>(a, smem, &tq, &tk, &tv, w, 0, it);
    } else {
      consume_serial<T, D, STAGES>(a, smem, w, threadIdx.x);
    }
  }
#endif
}

}  // namespace bsa_sm90
}  // namespace ark
