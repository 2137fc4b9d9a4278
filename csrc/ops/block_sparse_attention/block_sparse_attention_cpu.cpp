// block_sparse_attention on the CPU: one task per (batch, query head, query tile), spread over OpenMP
// threads. A task walks the runs of its query tile (the layout contract of the C header), loads each
// visited key tile once into fp32 scratch and folds it into every row of the tile with an online
// softmax, so no L x S mask or score matrix is ever built. Also the oracle the C API tests compare the
// CUDA kernel with.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/half_convert.hpp"
#include "ops/block_sparse_attention/block_sparse_attention.cuh"

namespace ark {
namespace {

// Below this many score multiply-adds (dense upper bound) thread start-up costs more than it saves.
constexpr int64_t kParallelMinWork = 1 << 18;
constexpr int kFull = 0, kRule = 1, kBits = 2;

// The level rule of the header for query i and key j.
inline bool rule_visible(const ark_block_mask& m, int64_t i, int64_t j) {
  if (m.q_doc && m.q_doc[i] != m.k_doc[j]) return false;
  // int64: q_level - k_level of two int32 levels can overflow int32.
  const int64_t ql = m.q_level[i], kl = m.k_level[j];
  if (kl <= ql && (m.window < 0 || ql - kl < m.window)) return true;
  return m.q_group && m.q_group[i] == m.k_group[j];
}

// One key tile's visibility for one query row: FULL, the level rule, or its row of a bitmap.
struct TileVisibility {
  const ark_block_mask* m;
  int kind;
  const uint32_t* row_bits;  // BITS: the row's ceil(block_k / 32) words
  int64_t i, key0;           // query index, first key of the tile
  bool operator()(int64_t c) const {  // key key0 + c
    if (kind == kFull) return true;
    if (kind == kRule) return rule_visible(*m, i, key0 + c);
    return (row_bits[c >> 5] >> (c & 31)) & 1u;
  }
};

// rows x D elements of a (row-strided) matrix in fp32.
template <typename T>
void load_rows(const T* src, int64_t row_stride, int64_t rows, int D, float* dst) {
  for (int64_t r = 0; r < rows; ++r)
    for (int d = 0; d < D; ++d) dst[r * D + d] = to_float(src[r * row_stride + d]);
}

template <typename T>
void fwd_tiles(const BlockSparseAttentionFwdParams& p) {
  const ark_block_mask& m = p.mask;
  const int D = p.head_dim, bq = m.block_q, bk = m.block_k;
  const int64_t words = (bk + 31) / 32;  // bitmap words per query row
  const int64_t n_qt = (p.L + bq - 1) / bq;
  const int64_t tasks = p.batch * p.q_heads * n_qt;
  if (tasks == 0) return;
  const int64_t group = p.q_heads / p.kv_heads;  // q heads per kv head (GQA)
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const bool parallel = tasks > 1 && p.batch * p.q_heads * p.L * p.S * D >= kParallelMinWork;
#pragma omp parallel if (parallel)
  {
    // Per-thread scratch: the tile's queries, key and value rows in fp32, one row of scores, and the
    // running max, sum and output of every row of the tile (a tile is never longer than L or S).
    const size_t tq = size_t(std::min<int64_t>(bq, p.L)), tk = size_t(std::min<int64_t>(bk, p.S));
    std::vector<float> qt(tq * D), kt(tk * D), vt(tk * D), s(tk), row_max(tq), row_sum(tq), acc(tq * D);
    // Dynamic: tiles below a causal diagonal do more work than those above it.
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t t = task % n_qt, bh = task / n_qt;
      const int64_t b = bh / p.q_heads, h = bh % p.q_heads, hk = h / group;
      const int64_t i0 = t * bq, rows = std::min<int64_t>(bq, p.L - i0);
      load_rows(static_cast<const T*>(p.q) + b * p.q_strides[0] + h * p.q_strides[1] + i0 * p.q_strides[2],
                p.q_strides[2], rows, D, qt.data());
      // k and v may be NULL when S = 0: no offset is applied to them then.
      const T* kbase = p.S > 0 ? static_cast<const T*>(p.k) + b * p.k_strides[0] + hk * p.k_strides[1] : nullptr;
      const T* vbase = p.S > 0 ? static_cast<const T*>(p.v) + b * p.v_strides[0] + hk * p.v_strides[1] : nullptr;
      std::fill(row_max.begin(), row_max.end(), neg_inf);
      std::fill(row_sum.begin(), row_sum.end(), 0.0f);
      std::fill(acc.begin(), acc.end(), 0.0f);
      // S = 0: no key tile exists (and the layout need not be there).
      const int64_t r_begin = p.S > 0 ? m.q_run_ptr[t] : 0, r_end = p.S > 0 ? m.q_run_ptr[t + 1] : 0;
      for (int64_t r = r_begin; r < r_end; ++r) {
        const int32_t* run = m.q_runs + 4 * r;
        for (int64_t kt_i = run[0]; kt_i < run[1]; ++kt_i) {
          const int64_t j0 = kt_i * bk, keys = std::min<int64_t>(bk, p.S - j0);
          if (keys <= 0) continue;  // a run is never past S; cheap insurance against reading past it
          load_rows(kbase + j0 * p.k_strides[2], p.k_strides[2], keys, D, kt.data());
          load_rows(vbase + j0 * p.v_strides[2], p.v_strides[2], keys, D, vt.data());
          // BITS: this key tile's bitmap is tile_bits[bits + (tile - run start)], (block_q, words).
          const uint32_t* bits =
              run[2] == kBits
                  ? reinterpret_cast<const uint32_t*>(m.tile_bits) + (int64_t(run[3]) + kt_i - run[0]) * bq * words
                  : nullptr;
          for (int64_t qi = 0; qi < rows; ++qi) {
            const TileVisibility vis{&m, run[2], bits ? bits + qi * words : nullptr, i0 + qi, j0};
            const float* qrow = &qt[size_t(qi * D)];
            float tile_max = neg_inf;
            for (int64_t c = 0; c < keys; ++c) {
              if (!vis(c)) {
                s[size_t(c)] = neg_inf;  // exp(-inf - max) = 0 below
                continue;
              }
              const float* krow = &kt[size_t(c * D)];
              float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
              for (int d = 0; d < D; ++d) dot += qrow[d] * krow[d];
              s[size_t(c)] = dot * p.scale;
              tile_max = std::max(tile_max, s[size_t(c)]);
            }
            if (tile_max == neg_inf) continue;  // the row sees no key of this tile
            float* arow = &acc[size_t(qi * D)];
            float& mx = row_max[size_t(qi)];
            if (tile_max > mx) {  // rescale what was summed under the old max (exp(-inf) = 0 at first)
              const float corr = std::exp(mx - tile_max);
              row_sum[size_t(qi)] *= corr;
              for (int d = 0; d < D; ++d) arow[d] *= corr;
              mx = tile_max;
            }
            for (int64_t c = 0; c < keys; ++c) {
              if (s[size_t(c)] == neg_inf) continue;
              const float e = std::exp(s[size_t(c)] - mx);
              row_sum[size_t(qi)] += e;
              const float* vrow = &vt[size_t(c * D)];
              for (int d = 0; d < D; ++d) arow[d] += e * vrow[d];
            }
          }
        }
      }
      // A row that saw no key: out = 0, lse = -inf (row_sum is 0 exactly then).
      const int64_t o0 = bh * p.L + i0;
      T* out = static_cast<T*>(p.out) + o0 * D;
      for (int64_t qi = 0; qi < rows; ++qi) {
        const float sum = row_sum[size_t(qi)];
        const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        for (int d = 0; d < D; ++d) out[qi * D + d] = from_float<T>(acc[size_t(qi * D + d)] * inv);
        if (p.lse) p.lse[o0 + qi] = sum > 0.0f ? row_max[size_t(qi)] + std::log(sum) : neg_inf;
      }
    }
  }
}

}  // namespace

void block_sparse_attention_fwd_cpu(const BlockSparseAttentionFwdParams& p, ark_dtype dtype) {
  switch (dtype) {
    case ARK_FLOAT32: return fwd_tiles<float>(p);
    case ARK_FLOAT16: return fwd_tiles<fp16_bits>(p);
    case ARK_BFLOAT16: return fwd_tiles<bf16_bits>(p);
  }
}

}  // namespace ark
