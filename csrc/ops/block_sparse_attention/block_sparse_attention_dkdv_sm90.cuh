// Device code of a Hopper (sm_90a) block_sparse_attention dK / dV kernel: the half of the backward with four of
// its five matrix products (all five with DQ), built from the forward's pieces (block_sparse_attention_sm90.cuh).
// The C API launches it (ark_block_sparse_attention_bwd_dkdv; host side in block_sparse_attention_dkdv_cuda.cu);
// the torch op uses it behind the switch ops.block_sparse_attention.CUDA_BACKWARD. History and timings:
// bench/NOTES.md (sessions 7-9).
//
// One CTA per (128-key tile, kv head, batch row); the layout must be at 128 x 128 (one layout key tile per
// CTA, two 64-query steps per layout query tile). A producer warpgroup loads the K and V tiles once (TMA) and,
// for every q head of the GQA group and every 64-query step of the key tile's transposed runs (k_runs), Q and
// dO into rings of STAGES slots (thread 0, TMA) and the step's per-query values (lse in the log2 domain,
// delta = rowsum(dO * O) - dlse, and the rule's query vectors) into the same slot (64 other threads). Two
// consumer warpgroups own 64 keys each:
//   S^T = K Q^T, dP^T = V dO^T            (wgmma, both operands in shared memory, K-major: the forward's QK^T)
//   P^T = exp2(S^T scale log2e - lse2),  dS^T = P^T (dP^T - delta)      (registers; masked on partial steps)
//   dV += P^T dO,  dK += dS^T Q           (wgmma, P^T / dS^T as register A fragments, dO / Q as the MN-major
//                                          B operand: the forward's P V)
// dK and dV stay in fp32 registers over the whole group and are written once (scaled dK; staged in the idle Q / dO
// ring, stored by TMA): deterministic, no atomics. Rows of Q / dO past L read as zeros (TMA bounds) and their lse2
// is +inf, so they add nothing; keys past S are computed but not stored (TMA bounds).
// With DQ (the fused variant), the two consumer warpgroups also add the key tile's share of dQ for the step:
//   dQ[step rows] += scale * dS K     (both warpgroups' dS^T stored to one shared tile as written, [key][query],
//                                      and read as an MN-major A with K = 128 keys; K as the MN-major B; each
//                                      warpgroup takes every other 64-column block of D)
// staged as fp32 in shared memory and added to an fp32 buffer by TMA reduce-adds that one producer thread issues
// (FlashAttention-3's way): one add per dQ element, step and key tile, in an order that is not deterministic. The
// consumers only store to shared memory; per-thread atomics (red.global) clogged their load / store pipe (the
// statistics loads waited behind them). Without DQ, dQ is computed elsewhere (the Triton dQ kernel).
#pragma once

#include <climits>
#include <cstdint>

#include "ops/block_sparse_attention/block_sparse_attention_sm90.cuh"

namespace ark {
namespace bsa_dkdv {

using bsa_sm90::kPanelCols;
using bsa_sm90::kRowBytes;
using bsa_sm90::pack2;
using bsa_sm90::Slot;
using bsa_walk::acc_col;
using bsa_walk::acc_row;

constexpr int KT = 128;  // keys per CTA: the layout's key tile
constexpr int QT = 128;  // the layout's query tile
constexpr int QS = 64;   // queries per step
constexpr int kThreads = 384;
constexpr int kConsumerThreads = 256;
constexpr int kStatThreads = QS;  // producer threads 32 .. 95 stage the per-query values; DQ: thread 96 reduces dQ
constexpr int kProducerRegs = 40, kConsumerRegs = 232;

template <int D, int STAGES, bool DQ = false>
struct Smem {
  static constexpr int kPanels = D / kPanelCols;
  static constexpr uint32_t kTileBytes = KT * D * 2;  // the K or the V tile
  static constexpr uint32_t kStepBytes = QS * D * 2;  // one Q or one dO step
  static constexpr uint32_t kDsBytes = KT * QS * 2;   // one step's dS^T, both warpgroups' halves (DQ only)
  // A slot's per-query values: per column pair k one 16-byte entry {lse2[2k], lse2[2k + 1], delta[2k], delta[2k + 1]}
  // (a consumer thread's 4 values of two columns in one LDS.128), then q_level, q_doc, q_group (4 bytes a query).
  static constexpr int kStatFields = 5;
  static constexpr uint32_t kStatBytes = kStatFields * QS * 4;
  static constexpr uint32_t kK = 0;
  static constexpr uint32_t kV = kK + kTileBytes;
  static constexpr uint32_t kQ = kV + kTileBytes;
  static constexpr uint32_t kDO = kQ + STAGES * kStepBytes;
  static constexpr uint32_t kDs = kDO + STAGES * kStepBytes;  // 1024-aligned: the swizzle atoms of the A operand
  // Two dS^T tiles, alternating by step: a warpgroup may store step n + 1's while the other still reads step n's.
  // Step n + 2 overwrites step n's tile only after its writer has waited for ds_full of step n + 1, which every
  // consumer thread signals after its own wait for the wgmma of step n (each warp's wait covers its share only).
  // DQ: the step's dQ block (fp32) for the TMA reduce: D / 32 boxes of [64 rows][32 columns], 128-byte swizzled.
  static constexpr uint32_t kDqBytes = QS * D * 4;
  static constexpr uint32_t kDqBoxBytes = QS * 128;
  static constexpr uint32_t kDq = kDs + (DQ ? 2 * kDsBytes : 0);
  static constexpr uint32_t kStat = kDq + (DQ ? kDqBytes : 0);
  static constexpr uint32_t kBars = kStat + STAGES * kStatBytes;
  // kv_full; tma_full, stat_full, empty per slot; DQ: ds_full per dS^T tile, dq_full, dq_empty
  static constexpr int kNumBars = 1 + 3 * STAGES + (DQ ? 4 : 0);
  static constexpr uint32_t kBytes = kBars + kNumBars * 8;
  static constexpr uint32_t kLaunchBytes = kBytes + 1024;  // room to align the base to 1024 bytes
  static_assert(2 * kTileBytes <= 2 * STAGES * kStepBytes, "the epilogue stages dK and dV in the Q / dO ring");
};

struct DkdvArgs {
  const float* lse;   // (batch, q_heads, L), natural log, -inf for a row that sees nothing
  const float* delta; // (batch, q_heads, L): rowsum(dO * O) - dlse
  int64_t L, S;
  int Hq, group;  // group: q heads per kv head
  float scale, scale_log2;
  ark_block_mask mask;  // the forward half (rule arrays and tile_bits are read here)
  const int32_t* k_run_ptr;    // ceil(S / 128) + 1
  const int32_t* k_runs;       // 4 per run: query tiles [start, end), kind, first k_tile_bits entry
  const int32_t* k_tile_bits;  // BITS: the tile_bits index of each transposed run's tiles
};

template <int STAGES>
struct Barriers {
  uint64_t* base;
  __device__ uint64_t* kv_full() const { return base; }
  __device__ uint64_t* tma_full(int s) const { return base + 1 + s; }
  __device__ uint64_t* stat_full(int s) const { return base + 1 + STAGES + s; }
  __device__ uint64_t* empty(int s) const { return base + 1 + 2 * STAGES + s; }
  __device__ uint64_t* ds_full(int j) const { return base + 1 + 3 * STAGES + j; }
  __device__ uint64_t* dq_full() const { return base + 3 + 3 * STAGES; }   // the step's dQ block staged (256 arrivals)
  __device__ uint64_t* dq_empty() const { return base + 4 + 3 * STAGES; }  // the reduce has read it (1 arrival)
};

// The 64-query steps of one key tile: its transposed runs of query tiles [start, end) become steps
// [2 start, 2 end), clipped to the steps that hold a query (step < ceil(L / 64)).
struct StepCursor {
  const int32_t* runs;
  int r, r_end, n_steps;
  int step, step_end, kind, bits, start;

  __device__ void load_run() {
    start = runs[4 * r];
    const int end = runs[4 * r + 1];
    kind = runs[4 * r + 2];
    bits = runs[4 * r + 3];
    step = 2 * start;
    step_end = 2 * end < n_steps ? 2 * end : n_steps;
  }
  __device__ void init(const DkdvArgs& a, int key_tile) {
    runs = a.k_runs;
    r = a.k_run_ptr[key_tile];
    r_end = a.k_run_ptr[key_tile + 1];
    n_steps = int((a.L + QS - 1) / QS);
    if (r < r_end) load_run();
  }
  __device__ bool valid() const { return r < r_end; }
  __device__ void next() {
    if (++step >= step_end && ++r < r_end) load_run();
  }
  __device__ int q0() const { return step * QS; }
};

// ---- producer ----

template <int D, int STAGES, bool DQ>
__device__ void produce_tiles(const DkdvArgs& a, uint8_t* smem, const CUtensorMap* tq, const CUtensorMap* tdo,
                              const CUtensorMap* tk, const CUtensorMap* tv, int key_tile, int hk, int b) {
  using L = Smem<D, STAGES, DQ>;
  const Barriers<STAGES> bar{reinterpret_cast<uint64_t*>(smem + L::kBars)};
  sm90::mbar_arrive_expect_tx(bar.kv_full(), 2 * L::kTileBytes);
  for (int p = 0; p < L::kPanels; ++p) {
    sm90::tma_load_4d(smem + L::kK + p * KT * kRowBytes, tk, bar.kv_full(), p * kPanelCols, key_tile * KT, hk, b);
    sm90::tma_load_4d(smem + L::kV + p * KT * kRowBytes, tv, bar.kv_full(), p * kPanelCols, key_tile * KT, hk, b);
  }
  int it = 0;
  for (int hh = 0; hh < a.group; ++hh) {
    const int h = hk * a.group + hh;
    StepCursor c;
    for (c.init(a, key_tile); c.valid(); c.next(), ++it) {
      const Slot<STAGES> slot(it);
      if (it >= STAGES) sm90::mbar_wait(bar.empty(slot.stage), ((it / STAGES) - 1) & 1);
      sm90::mbar_arrive_expect_tx(bar.tma_full(slot.stage), 2 * L::kStepBytes);
      for (int p = 0; p < L::kPanels; ++p) {
        const uint32_t off = slot.stage * L::kStepBytes + p * QS * kRowBytes;
        sm90::tma_load_4d(smem + L::kQ + off, tq, bar.tma_full(slot.stage), p * kPanelCols, c.q0(), h, b);
        sm90::tma_load_4d(smem + L::kDO + off, tdo, bar.tma_full(slot.stage), p * kPanelCols, c.q0(), h, b);
      }
    }
  }
}

// Thread i (0 .. 63) of the staging threads: query q0 + i's values of every step, in the step's slot.
template <int D, int STAGES, bool DQ>
__device__ void produce_stats(const DkdvArgs& a, uint8_t* smem, int key_tile, int hk, int b, int i) {
  using L = Smem<D, STAGES, DQ>;
  const Barriers<STAGES> bar{reinterpret_cast<uint64_t*>(smem + L::kBars)};
  const ark_block_mask& m = a.mask;
  int it = 0;
  for (int hh = 0; hh < a.group; ++hh) {
    const int64_t bh = int64_t(b) * a.Hq + hk * a.group + hh;
    StepCursor c;
    for (c.init(a, key_tile); c.valid(); c.next(), ++it) {
      const Slot<STAGES> slot(it);
      if (it >= STAGES) sm90::mbar_wait(bar.empty(slot.stage), ((it / STAGES) - 1) & 1);
      const int64_t q = c.q0() + i;
      float* st = reinterpret_cast<float*>(smem + L::kStat + slot.stage * L::kStatBytes);
      int32_t* sti = reinterpret_cast<int32_t*>(st);
      float lse2 = INFINITY, dl = 0.f;  // rows past L (and rows that see nothing): p = 0
      if (q < a.L) {
        const float lse = a.lse[bh * a.L + q];
        if (lse != -INFINITY) lse2 = lse * 1.4426950408889634f;
        dl = a.delta[bh * a.L + q];
      }
      st[4 * (i >> 1) + (i & 1)] = lse2;
      st[4 * (i >> 1) + 2 + (i & 1)] = dl;
      const int64_t qc = q < a.L ? q : a.L - 1;
      sti[2 * QS + i] = m.q_level ? m.q_level[qc] : 0;
      sti[3 * QS + i] = m.q_doc ? m.q_doc[qc] : 0;
      sti[4 * QS + i] = m.q_group ? m.q_group[qc] : 0;
      sm90::mbar_arrive(bar.stat_full(slot.stage));
    }
  }
}

// DQ, one thread: per step, once both warpgroups have staged their dQ blocks, adds the staged block to the fp32
// buffer (TMA reduce-add per 32-column box; rows past L are clipped by the map's bounds) and frees the tile once the
// TMA has read it.
template <int D, int STAGES>
__device__ void produce_dq_reductions(const DkdvArgs& a, uint8_t* smem, const CUtensorMap* tdq, int key_tile, int hk,
                                      int b) {
  using L = Smem<D, STAGES, true>;
  const Barriers<STAGES> bar{reinterpret_cast<uint64_t*>(smem + L::kBars)};
  int it = 0;
  for (int hh = 0; hh < a.group; ++hh) {
    const int h = hk * a.group + hh;
    StepCursor c;
    for (c.init(a, key_tile); c.valid(); c.next(), ++it) {
      sm90::mbar_wait(bar.dq_full(), it & 1);
#pragma unroll
      for (int box = 0; box < D / 32; ++box)
        sm90::tma_reduce_add_4d(tdq, smem + L::kDq + box * L::kDqBoxBytes, box * 32, int(c.q0()), h, b);
      sm90::bulk_commit();
      sm90::bulk_wait_read<0>();
      sm90::mbar_arrive(bar.dq_empty());
    }
  }
  sm90::bulk_wait<0>();  // the shared source must outlive the reads; the writes complete before the grid does
}

// ---- consumers ----

// A key row's rule values (zeros without a rule).
struct KeyRule {
  int level = 0, doc = 0, group = 0;
  __device__ void load(const ark_block_mask& m, int64_t key, int64_t S) {
    const int64_t k = key < S ? key : S - 1;
    if (m.k_level) {
      level = m.k_level[k];
      if (m.k_doc) doc = m.k_doc[k];
      if (m.k_group) group = m.k_group[k];
    }
  }
};

// Visibility tests of (query column col of the step, key key_in_tile of this thread) by step kind, each built once
// per step so that the element loop carries no kind branch and only the pointers its kind reads:
struct NoTest {  // FULL (kind 0): every pair; rows past L have lse2 = +inf, keys past S are not stored
  __device__ bool operator()(int, const KeyRule&, int) const { return true; }
};
struct RuleTest {  // kind 1: the level / document / group rule, query values from the slot
  const int32_t* sti;  // the slot's staged values (int view)
  int64_t window;      // INT64_MAX without a window
  bool has_doc, has_group;
  __device__ bool operator()(int col, const KeyRule& k, int) const {
    const int ql = sti[2 * QS + col], qd = sti[3 * QS + col], qg = sti[4 * QS + col];
    // int64: q_level - k_level of two int32 levels can overflow int32.
    const bool level_ok = k.level <= ql && int64_t(ql) - k.level < window;
    const bool group_ok = has_group && qg == k.group;
    return (!has_doc || qd == k.doc) && (level_ok || group_ok);
  }
};
struct BitsTest {  // BITS (kind 2): the step's 64 rows of its forward tile's bitmap (KT / 32 words a row)
  const int32_t* rows;
  __device__ bool operator()(int col, const KeyRule&, int key_in_tile) const {
    return (rows[col * (KT / 32) + (key_in_tile >> 5)] >> (key_in_tile & 31)) & 1;
  }
};

// Issues X^T Y^T-style products of the 64 keys of this warpgroup against the step: acc (64 keys x 64 queries)
// = tile rows (K-major, in 128-row panels) x step rows (K-major, in 64-row panels), over D.
template <typename T, int D>
__device__ __forceinline__ void issue_keys_x_step(float (&acc)[QS / 2], uint32_t tile_base, uint32_t step_base) {
  const sm90::Sw128Desc tile(tile_base, 16, 1024), step(step_base, 16, 1024);
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t off = (kk % 4) * 32;
    sm90::wgmma_ss(T{}, acc, tile.at((kk / 4) * KT * kRowBytes + off), step.at((kk / 4) * QS * kRowBytes + off), kk > 0);
  }
}

// Issues acc (64 keys x D) += frag (64 keys x 64 queries, A fragments) x step (64 queries x D, MN-major B).
template <typename T, int D>
__device__ __forceinline__ void issue_frag_x_step(float (&acc)[D / 2], const uint32_t (&frag)[QS / 16][4],
                                                  uint32_t step_base) {
  const sm90::Sw128Desc step(step_base, QS * kRowBytes, 1024);
#pragma unroll
  for (int kk = 0; kk < QS / 16; ++kk) sm90::wgmma_rs_tb(T{}, acc, frag[kk], step.at(kk * 16 * kRowBytes), 1);
}

// DQ: this warpgroup's 64 rows of the step's dS^T (128 keys x 64 queries, packed pairs as in the A fragments) into
// the shared tile, [key][query] rows of 128 bytes in the 128-byte swizzle (16-byte chunk c of row r at chunk
// c ^ (r % 8)), then visible to the async proxy; the caller signals the tile's barrier. A warp writes 8 rows x
// 4 words per register pair: 8 distinct chunks after the swizzle, no bank conflict.
// Register pair i holds row r0 + 8 h (h = (i >> 1) & 1), columns 8 j + 2 (t % 4) (j = i >> 2): chunk j ^ (r0 % 8)
// (8 rows down keeps r % 8), byte 4 (t % 4) in it. The row bases are made opaque per call so that the compiler
// rebuilds the 16 addresses with one LOP and one IADD each instead of keeping them (it spilled them).
template <typename T>
__device__ __forceinline__ void store_ds_t(uint32_t tile, const uint32_t (&dsf)[QS / 16][4], int t) {
  const int r0 = acc_row(t, 0);
  uint32_t row[2] = {tile + uint32_t(r0) * kRowBytes + 4 * uint32_t(t % 4),
                     tile + uint32_t(r0 + 8) * kRowBytes + 4 * uint32_t(t % 4)};
  asm volatile("" : "+r"(row[0]), "+r"(row[1]));
  const uint32_t swz = uint32_t(r0 & 7) << 4;
#pragma unroll
  for (int i = 0; i < QS / 2; i += 2)
    sm90::st_shared_b32(row[(i >> 1) & 1] + ((uint32_t(i >> 2) << 4) ^ swz), dsf[i / 8][(i / 2) % 4]);
  sm90::fence_async_shared();
}

// DQ: the warpgroup that computes 64-column block nb of the step's dQ: (nb + it) % 2 (one block each per step at
// D 128, every other step's block at D 64).
__device__ __forceinline__ bool owns_dq_block(int nb, int it, int wg) { return ((nb + it) & 1) == wg; }

// DQ: dq (64 queries x 64 columns, accumulator layout) = dS (64 queries x the tile's 128 keys) K (128 keys x block nb
// of D), one K = 128 product (so each dQ element gets one add per step and key tile; a product per warpgroup over
// its own 64 keys sent two). Waits for every wgmma this thread issued before (the step's dV / dK products
// included). The dS^T tile must be complete (both warpgroups' rows).
template <typename T>
__device__ __forceinline__ void dq_block(float (&dq)[32], uint32_t ds_tile, uint32_t k_tile, int nb) {
  const sm90::Sw128Desc ds(ds_tile, 64 * kRowBytes, 1024), k(k_tile + nb * KT * kRowBytes, KT * kRowBytes, 1024);
  sm90::wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < KT / 16; ++kk)
    sm90::wgmma_ss_tt(T{}, dq, ds.at(kk * 16 * kRowBytes), k.at(kk * 16 * kRowBytes), kk > 0);
  sm90::wgmma_commit();
  sm90::wgmma_wait<0>();
  sm90::fence_operands(dq);
}

// DQ: scale * dq (block nb) into the staging tile, laid out for the TMA reduce (boxes of [64 rows][32 columns] fp32,
// 16-byte chunk c of row r at chunk c ^ (r % 8)). Register pair (4 j + 2 h, + 1) holds row r0 + 8 h, columns
// 8 j + 2 (t % 4) + {0, 1}: box 2 nb + j / 4, chunk 2 (j % 4) + (t % 4) / 2, byte 8 ((t % 4) & 1) in it. A warp's
// store writes 8 rows x 32 bytes: 4 distinct 32-byte bank groups twice after the swizzle, the 2 wavefronts 256
// bytes need anyway.
__device__ __forceinline__ void stage_dq_block(uint32_t dq_tile, const float (&dq)[32], float scale, int t, int wg,
                                               int nb) {
  const int r0 = acc_row(t, 0) - 64 * wg, q4 = t % 4;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = r0 + 8 * h;
    uint32_t row = dq_tile + uint32_t(r) * 128 + 8 * uint32_t(q4 & 1) + uint32_t(2 * nb) * (QS * 128);
    asm volatile("" : "+r"(row));  // rebuilt per call: one add per store, no kept addresses
    const uint32_t swz = uint32_t(r & 7);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const uint32_t chunk = uint32_t(2 * (j & 3) + (q4 >> 1));
      sm90::st_shared_v2_f32(row + uint32_t(j >> 2) * (QS * 128) + ((chunk ^ swz) << 4), dq[4 * j + 2 * h] * scale,
                             dq[4 * j + 2 * h + 1] * scale);
    }
  }
}

// P^T and dS^T of a step in place of S^T and dP^T: p = exp2(s scale log2e - lse2), ds = p (dp - delta), p = 0 where
// `visible` says no. An instance per test: the unmasked steps (most of a causal walk) run a short loop with no
// branch per element, and the rule / bitmap tests stay out of it (inline behind a branch per element they made the
// loop ~1300 instructions: instruction-fetch stalls in the profile of session 9).
template <typename Test>
__device__ __forceinline__ void probabilities(float (&s)[QS / 2], float (&dp)[QS / 2], const float* st,
                                              const Test& visible, const KeyRule (&kr)[2], float scale_log2, int t,
                                              int row0) {
#pragma unroll
  for (int j = 0; j < QS / 8; ++j) {
    // lse2 of columns c, c + 1, then delta of c, c + 1 (c = 8 j + 2 (t % 4), this thread's pair of block j).
    const float4 v = *reinterpret_cast<const float4*>(st + 4 * (4 * j + t % 4));
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int i = 4 * j + e, h = e >> 1;  // registers 4 j + e: (row0 + 8 h, c + (e & 1))
      float p = sm90::ex2(fmaf(s[i], scale_log2, -((e & 1) ? v.y : v.x)));
      if (!visible(acc_col(t, i), kr[h], row0 + 8 * h)) p = 0.f;
      s[i] = p;
      dp[i] = p * (dp[i] - ((e & 1) ? v.w : v.z));
    }
  }
}

// Ends with dK (scaled) and dV staged in the Q / dO ring for the TMA stores (store_dkdv), behind a barrier of both
// consumer warpgroups.
template <typename T, int D, int STAGES, bool DQ>
__device__ void consume(const DkdvArgs& a, uint8_t* smem, int key_tile, int hk, int b, int t) {
  using L = Smem<D, STAGES, DQ>;
  const Barriers<STAGES> bar{reinterpret_cast<uint64_t*>(smem + L::kBars)};
  const int wg = t / 128;
  const int row0 = acc_row(t, 0);  // this thread's first key row inside the 128-key tile (and row0 + 8)
  KeyRule kr[2];
  for (int h = 0; h < 2; ++h) kr[h].load(a.mask, int64_t(key_tile) * KT + row0 + 8 * h, a.S);
  const uint32_t k_tile = sm90::smem_addr(smem + L::kK);
  const uint32_t v_base = sm90::smem_addr(smem + L::kV) + wg * 64 * kRowBytes;
  float dk[D / 2] = {}, dv[D / 2] = {}, s[QS / 2], dp[QS / 2];
  uint32_t pf[QS / 16][4], dsf[QS / 16][4];
  sm90::mbar_wait(bar.kv_full(), 0);
  int it = 0;
  for (int hh = 0; hh < a.group; ++hh) {
    StepCursor c;
    for (c.init(a, key_tile); c.valid(); c.next(), ++it) {
      const Slot<STAGES> slot(it);
      const uint32_t q_base = sm90::smem_addr(smem + L::kQ + slot.stage * L::kStepBytes);
      const uint32_t do_base = sm90::smem_addr(smem + L::kDO + slot.stage * L::kStepBytes);
      const float* st = reinterpret_cast<const float*>(smem + L::kStat + slot.stage * L::kStatBytes);
      sm90::mbar_wait(bar.tma_full(slot.stage), slot.parity);
      sm90::mbar_wait(bar.stat_full(slot.stage), slot.parity);
      // Opaque per-step copies of the tile addresses: otherwise the compiler hoists the ~24 loop-invariant
      // descriptors of the K / V tiles out of the step loop and, short of registers, spills them (the DQ build
      // at D 128 had 304 bytes of stack and an LDL before each wgmma); rebuilt per step they cost a few integer ops.
      uint32_t kt = k_tile, vb = v_base;
      asm volatile("" : "+r"(kt), "+r"(vb));
      const uint32_t kb = kt + wg * 64 * kRowBytes;
      sm90::wgmma_fence();
      issue_keys_x_step<T, D>(s, kb, q_base);
      issue_keys_x_step<T, D>(dp, vb, do_base);
      sm90::wgmma_commit();
      sm90::wgmma_wait<0>();
      sm90::fence_operands(s);
      sm90::fence_operands(dp);
      if (c.kind == 0) {
        probabilities(s, dp, st, NoTest{}, kr, a.scale_log2, t, row0);
      } else if (c.kind == 1) {
        const ark_block_mask& m = a.mask;
        const RuleTest rule{reinterpret_cast<const int32_t*>(st), m.window < 0 ? INT64_MAX : int64_t(m.window),
                            m.k_doc != nullptr, m.k_group != nullptr};
        probabilities(s, dp, st, rule, kr, a.scale_log2, t, row0);
      } else {
        // The transposed run names the forward tile of each of its query tiles; the step is its half (step & 1).
        const int tile = a.k_tile_bits[c.bits + ((c.step >> 1) - c.start)];
        const BitsTest bits{a.mask.tile_bits + (int64_t(tile) * QT + (c.step & 1) * QS) * (KT / 32)};
        probabilities(s, dp, st, bits, kr, a.scale_log2, t, row0);
      }
#pragma unroll
      for (int i = 0; i < QS / 2; i += 2) {
        pf[i / 8][(i / 2) % 4] = pack2<T>(s[i], s[i + 1]);
        dsf[i / 8][(i / 2) % 4] = pack2<T>(dp[i], dp[i + 1]);
      }
      const uint32_t ds_tile = sm90::smem_addr(smem + L::kDs + (it & 1) * L::kDsBytes);
      if constexpr (DQ) {
        store_ds_t<T>(ds_tile, dsf, t);
        sm90::mbar_arrive(bar.ds_full(it & 1));
      }
      sm90::wgmma_fence();
      issue_frag_x_step<T, D>(dv, pf, do_base);
      issue_frag_x_step<T, D>(dk, dsf, q_base);
      sm90::wgmma_commit();
      if constexpr (DQ) {
        // The other warpgroup's half of dS^T, while this one's dV / dK products run. Every thread waits, also on
        // a step whose dQ block is the other warpgroup's: the wait is what orders the tile's reuse two steps on.
        sm90::mbar_wait(bar.ds_full(it & 1), (it >> 1) & 1);
        const uint32_t dq_tile = sm90::smem_addr(smem + L::kDq);
#pragma unroll
        for (int nb = 0; nb < D / 64; ++nb) {
          if (!owns_dq_block(nb, it, wg)) continue;
          float dq[32];
          dq_block<T>(dq, ds_tile, kt, nb);
          // The previous step's reduce must have read the staging tile (its completion it - 1). A warpgroup with no
          // block this step (D 64) neither waits nor writes; its arrival below cannot run ahead of the other's
          // (it waited for that warpgroup's dS^T of this step, stored after its previous arrival).
          if (it > 0) sm90::mbar_wait(bar.dq_empty(), (it - 1) & 1);
          stage_dq_block(dq_tile, dq, a.scale, t, wg, nb);
        }
        sm90::fence_async_shared();
        sm90::mbar_arrive(bar.dq_full());
      }
      sm90::wgmma_wait<0>();
      sm90::fence_operands(dv);
      sm90::fence_operands(dk);
      // Every thread arrives (not one per warp after __syncwarp): the staging threads overwrite this slot's
      // statistics with plain stores, and each thread's arrival is what orders its own reads of them before those
      // (racecheck flagged the per-warp form, H100, session 10).
      sm90::mbar_arrive(bar.empty(slot.stage));
    }
  }
  // dK (scaled) and dV through shared memory (the Q / dO ring, idle now: every step's loads have landed and been
  // read) and TMA stores, which clip keys past S: 16-byte-swizzled 4-byte stores, 8 distinct chunks a warp, instead
  // of scattered 4-byte global stores (5 % of the consumers' stall samples, H200 profile of session 9).
  sm90::named_barrier_sync(1, kConsumerThreads);  // both warpgroups done with the ring (their last wgmma waited)
  const uint32_t dk_tile = sm90::smem_addr(smem + L::kQ), dv_tile = dk_tile + L::kTileBytes;
  const float dk_scale[2] = {a.scale, a.scale}, dv_scale[2] = {1.f, 1.f};
  bsa_sm90::stage_accumulator_rows<T, D>(dk_tile, dk, dk_scale, t);  // the K / V tiles' layout (128-row panels)
  bsa_sm90::stage_accumulator_rows<T, D>(dv_tile, dv, dv_scale, t);
  sm90::fence_async_shared();
  sm90::named_barrier_sync(1, kConsumerThreads);
}

// One thread, after consume: the staged dK and dV tiles to global memory (TMA; keys past S clipped). The tensor maps'
// addresses are taken here, after the step loop, so that they hold no registers during it.
template <int D, int STAGES, bool DQ>
__device__ void store_dkdv(uint8_t* smem, const CUtensorMap* tdk, const CUtensorMap* tdv, int key_tile, int hk, int b) {
  using L = Smem<D, STAGES, DQ>;
#pragma unroll
  for (int p = 0; p < L::kPanels; ++p) {
    sm90::tma_store_4d(tdk, smem + L::kQ + p * KT * kRowBytes, p * kPanelCols, key_tile * KT, hk, b);
    sm90::tma_store_4d(tdv, smem + L::kQ + L::kTileBytes + p * KT * kRowBytes, p * kPanelCols, key_tile * KT, hk, b);
  }
  sm90::bulk_commit();
  sm90::bulk_wait_read<0>();  // the shared source must stay until read; the writes complete before the grid does
}

template <typename T, int D, int STAGES, bool DQ>
__global__ void __launch_bounds__(kThreads, 1)
    block_sparse_attention_dkdv_kernel(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tdo,
                                       const __grid_constant__ CUtensorMap tk, const __grid_constant__ CUtensorMap tv,
                                       const __grid_constant__ CUtensorMap tdk, const __grid_constant__ CUtensorMap tdv,
                                       const __grid_constant__ CUtensorMap tdq, const DkdvArgs a) {
#if ARK_SM90A_DEVICE
  using L = Smem<D, STAGES, DQ>;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = sm90::align_smem_1024(smem_raw);
  const int key_tile = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  if (threadIdx.x == 0) {
    uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L::kBars);
    sm90::mbar_init(&bars[0], 1);  // kv_full: one arrival with the K and V bytes
    for (int s = 0; s < STAGES; ++s) {
      sm90::mbar_init(&bars[1 + s], 1);                                // tma_full: one arrival + the Q, dO bytes
      sm90::mbar_init(&bars[1 + STAGES + s], kStatThreads);            // stat_full: every staging thread
      sm90::mbar_init(&bars[1 + 2 * STAGES + s], kConsumerThreads);     // empty: every consumer thread
    }
    if (DQ) {
      for (int j = 0; j < 2; ++j) sm90::mbar_init(&bars[1 + 3 * STAGES + j], kConsumerThreads);  // ds_full: all
      sm90::mbar_init(&bars[3 + 3 * STAGES], kConsumerThreads);  // dq_full: every consumer thread
      sm90::mbar_init(&bars[4 + 3 * STAGES], 1);                 // dq_empty: the reducing thread
    }
    sm90::mbar_init_fence();
  }
  __syncthreads();
  if (threadIdx.x < 128) {
    sm90::regs_release<kProducerRegs>();
    if (threadIdx.x == 0) produce_tiles<D, STAGES, DQ>(a, smem, &tq, &tdo, &tk, &tv, key_tile, hk, b);
    else if (threadIdx.x >= 32 && threadIdx.x < 32 + kStatThreads)
      produce_stats<D, STAGES, DQ>(a, smem, key_tile, hk, b, threadIdx.x - 32);
    else if (DQ && threadIdx.x == 32 + kStatThreads)
      produce_dq_reductions<D, STAGES>(a, smem, &tdq, key_tile, hk, b);
  } else {
    sm90::regs_claim<kConsumerRegs>();
    consume<T, D, STAGES, DQ>(a, smem, key_tile, hk, b, threadIdx.x - 128);
    if (threadIdx.x == 128) store_dkdv<D, STAGES, DQ>(smem, &tdk, &tdv, key_tile, hk, b);
  }
#endif
}

}  // namespace bsa_dkdv
}  // namespace ark
