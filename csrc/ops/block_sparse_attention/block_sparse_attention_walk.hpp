// How the Hopper block_sparse_attention forward walks a tile layout and where each accumulator element
// sits, as plain host/device code: the kernel (block_sparse_attention_sm90.cuh) uses it, and a host test
// (tests/capi/test_block_sparse_attention_walk.cpp) checks it without a GPU: every visible (query, key) pair
// is visited exactly once, nothing invisible is, and the 256 consumer threads' accumulator elements tile
// each 128 x 128 chunk exactly once.
#pragma once

#include <cstdint>

#include "arkernels/block_sparse_attention.h"
#include "ops/block_sparse_attention/block_sparse_attention.cuh"

#if defined(__CUDACC__)
#define ARK_BSA_HD __host__ __device__ __forceinline__
#else
#define ARK_BSA_HD inline
#endif
#if defined(__CUDA_ARCH__)
#define ARK_BSA_UNROLL _Pragma("unroll")  // register arrays indexed by these loops must stay in registers
#else
#define ARK_BSA_UNROLL
#endif

namespace ark {
namespace bsa_walk {

constexpr int BM = kBsaCudaBlockQ;  // query rows per CTA (two consumer warpgroups of 64)
constexpr int BN = kBsaCudaChunk;   // keys per chunk

// What the walk reads: the forward half of the layout and its rule (ark_block_mask), and S.
struct Walk {
  int64_t S;
  ark_block_mask mask;
  int bits_words;  // bitmap words per row: ceil(block_k / 32)
  int bk_shift;    // log2(block_k): block_k divides the 128-key chunk, so it is a power of two
};

inline Walk make_walk(int64_t S, const ark_block_mask& mask) {
  int shift = 0;
  while ((1 << shift) < mask.block_k) ++shift;
  return Walk{S, mask, (mask.block_k + 31) / 32, shift};
}

// The chunk sequence of one query tile: a run of key tiles [start, end) is cut into 128-key chunks from its
// first key; the last one may reach past the run's end (and S), whose keys it must not count.
struct ChunkCursor {
  const int32_t* runs;
  int r, r_end;
  int key, key_end;  // this chunk starts at `key`; the run's keys end at key_end (clipped to S)
  int kind, bits, run_key0;

  ARK_BSA_HD void load_run(const Walk& w) {
    const int start = runs[4 * r], end = runs[4 * r + 1];
    kind = runs[4 * r + 2];
    bits = runs[4 * r + 3];
    run_key0 = start * w.mask.block_k;
    key = run_key0;
    key_end = int(end * int64_t(w.mask.block_k) < w.S ? end * int64_t(w.mask.block_k) : w.S);
  }
  ARK_BSA_HD void init(const Walk& w, int tile) {
    runs = w.mask.q_runs;
    r = w.mask.q_run_ptr[tile];
    r_end = w.mask.q_run_ptr[tile + 1];
    if (r < r_end) load_run(w);
  }
  ARK_BSA_HD bool valid() const { return r < r_end; }
  ARK_BSA_HD void next(const Walk& w) {
    key += BN;
    if (key >= key_end) {
      ++r;
      if (r < r_end) load_run(w);
    }
  }
  // FULL and the whole chunk inside the run: no element needs a test.
  ARK_BSA_HD bool unmasked() const { return kind == 0 && key + BN <= key_end; }
};

// Consumer thread t (0..255) of an m64nNk16 accumulator pair of warpgroups: register i is at row
// acc_row(t, i) of the 128-row query tile and column acc_col(t, i) of the chunk. (Warp w of a warpgroup owns
// rows 16 w .. 16 w + 15; lane l rows l / 4 and l / 4 + 8, columns 8 j + 2 (l % 4) + {0, 1} of every 8-column
// block j, registers 4 j .. 4 j + 3 = (row, c), (row, c + 1), (row + 8, c), (row + 8, c + 1).)
ARK_BSA_HD int acc_row(int t, int i) { return (t / 128) * 64 + ((t / 32) % 4) * 16 + (t % 32) / 4 + 8 * ((i >> 1) & 1); }
ARK_BSA_HD int acc_col(int t, int i) { return 8 * (i >> 2) + 2 * (t % 4) + (i & 1); }

// A query row's rule values (zeros without a rule).
struct RowRule {
  int level = 0, doc = 0, group = 0;
  ARK_BSA_HD void load(const Walk& w, int64_t row, int64_t L) {
    if (w.mask.q_level && row < L) {
      level = w.mask.q_level[row];
      if (w.mask.q_doc) doc = w.mask.q_doc[row];
      if (w.mask.q_group) group = w.mask.q_group[row];
    }
  }
};

// Which of consumer thread t's accumulator elements of this chunk are visible: keep(i, visible) for every
// register i (rows acc_row(t, 0) and + 8 with rule values q[0], q[1]; columns acc_col), in a chunk that needs
// tests (!c.unmasked()). Decided once per chunk by kind, with one key-rule read per column shared by both rows
// and no branch per element: the per-element version's branches and divisions made a masked chunk cost ~8x
// an unmasked one on the GPU. Columns past the run's end (or S) are invisible; reads are clamped inside the
// run. The kernel's keep writes -inf into the scores (no mask word held: registers are at their cap).
template <typename Keep>
ARK_BSA_HD void chunk_visibility(const Walk& w, const ChunkCursor& c, int t, const RowRule (&q)[2], Keep&& keep) {
  const ark_block_mask& m = w.mask;
  const int row0 = acc_row(t, 0), col0 = acc_col(t, 0);
  const int lim = c.key_end - c.key;  // chunk columns at or past lim are outside the run
  if (c.kind == 1) {
    // Key level kl is visible from row h by level iff lo[h] <= kl <= q[h].level: the window's bound
    // q_level - window + 1 taken in int64 (q_level - k_level overflows int32 for far-apart levels) and
    // clamped to int32; no window: INT32_MIN.
    int lo[2];
    ARK_BSA_UNROLL
    for (int h = 0; h < 2; ++h) {
      const int64_t bound = int64_t(q[h].level) - m.window + 1;
      lo[h] = m.window < 0 || bound < INT32_MIN ? INT32_MIN : int(bound);
    }
    if (m.k_group == nullptr && m.k_doc == nullptr) {
      // Levels alone (VAR's scales, causal, sliding windows): one read and two compares per element. The
      // general form below ran ~1800 instructions per warp and masked chunk on VAR's mask, 38% of the
      // forward's instructions (ncu, bench/NOTES.md session 14).
      ARK_BSA_UNROLL
      for (int j = 0; j < BN / 8; ++j) {
        ARK_BSA_UNROLL
        for (int e = 0; e < 2; ++e) {
          const int cc = col0 + 8 * j + e;
          const int kl = m.k_level[c.key + (cc < lim ? cc : lim - 1)];
          ARK_BSA_UNROLL
          for (int h = 0; h < 2; ++h) keep(4 * j + 2 * h + e, kl <= q[h].level && kl >= lo[h] && cc < lim);
        }
      }
      return;
    }
    const bool has_group = m.k_group != nullptr, has_doc = m.k_doc != nullptr;
    ARK_BSA_UNROLL
    for (int j = 0; j < BN / 8; ++j) {
      ARK_BSA_UNROLL
      for (int e = 0; e < 2; ++e) {
        const int cc = col0 + 8 * j + e;
        const int col = c.key + (cc < lim ? cc : lim - 1);
        const int kl = m.k_level[col];
        const int kg = has_group ? m.k_group[col] : 0;
        const int kd = has_doc ? m.k_doc[col] : 0;
        ARK_BSA_UNROLL
        for (int h = 0; h < 2; ++h)
          keep(4 * j + 2 * h + e, ((kl <= q[h].level && kl >= lo[h]) || (has_group && q[h].group == kg)) &&
                                      q[h].doc == kd && cc < lim);
      }
    }
  } else if (c.kind == 2) {
    // Runs start at a tile edge and chunks at run start + 128 n, so chunk column cc is in the run's tile
    // (key - run_key0 + cc) >> bk_shift, at (key - run_key0 + cc) & (block_k - 1) inside it.
    ARK_BSA_UNROLL
    for (int j = 0; j < BN / 8; ++j) {
      ARK_BSA_UNROLL
      for (int e = 0; e < 2; ++e) {
        const int cc = col0 + 8 * j + e;
        const int in_run = c.key - c.run_key0 + (cc < lim ? cc : lim - 1);
        const int tile = c.bits + (in_run >> w.bk_shift), k_in_tile = in_run & (m.block_k - 1);
        ARK_BSA_UNROLL
        for (int h = 0; h < 2; ++h) {
          const int64_t word = (int64_t(tile) * BM + row0 + 8 * h) * w.bits_words + (k_in_tile >> 5);
          keep(4 * j + 2 * h + e, ((m.tile_bits[word] >> (k_in_tile & 31)) & 1) && cc < lim);
        }
      }
    }
  } else {  // FULL: only the run's end and S to respect
    ARK_BSA_UNROLL
    for (int j = 0; j < BN / 8; ++j) {
      ARK_BSA_UNROLL
      for (int e = 0; e < 2; ++e) {
        const bool in = col0 + 8 * j + e < lim;
        keep(4 * j + e, in);
        keep(4 * j + 2 + e, in);
      }
    }
  }
}

}  // namespace bsa_walk
}  // namespace ark
