// Block-sparse attention masks in C++, shared by the C API test (tests/capi/test_block_sparse_attention.cpp)
// and the native benchmark (bench/native/native_bench.cpp): a mask's definition (a level rule, the header's
// rule written out again, or a dense bitmap), the tile layout built from it (the contract of
// python/arkernels/masks/layout.py, forward half), the rule makers of the common masks and the C view of
// a layout. Header-only, torch-free.
#pragma once

#include <arkernels/block_sparse_attention.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace bsa_layouts {

constexpr int kFull = 0, kRule = 1, kBits = 2;

// ---- masks: the definition the oracle reads, and the tile layout built from it ----

// The level rule of the header, written out again from its definition (the oracle's copy).
struct Rule {
  std::vector<int32_t> q_level, k_level, q_doc, k_doc, q_group, k_group;
  int32_t window = -1;
  bool visible(int64_t i, int64_t j) const {
    const bool doc_ok = q_doc.empty() || q_doc[i] == k_doc[j];
    const bool level_ok = k_level[j] <= q_level[i] && (window < 0 || int64_t(q_level[i]) - k_level[j] < window);
    const bool group_ok = !q_group.empty() && q_group[i] == k_group[j];
    return doc_ok && (level_ok || group_ok);
  }
};

// An (L, S) mask: a level rule (RULE tiles allowed) or an explicit L x S bitmap (BITS tiles only).
struct MaskDef {
  int64_t L = 0, S = 0;
  bool has_rule = false;
  Rule rule;
  std::vector<uint8_t> dense;
  bool visible(int64_t i, int64_t j) const { return has_rule ? rule.visible(i, j) : dense[size_t(i * S + j)] != 0; }
};

inline MaskDef rule_mask(int64_t L, int64_t S, Rule r) {
  MaskDef m;
  m.L = L; m.S = S; m.has_rule = true; m.rule = std::move(r);
  return m;
}

// Visible (query, key) pairs of the mask, counted pair by pair.
inline int64_t count_visible(const MaskDef& m) {
  int64_t n = 0;
  for (int64_t i = 0; i < m.L; ++i)
    for (int64_t j = 0; j < m.S; ++j) n += m.visible(i, j);
  return n;
}

// ---- rule makers (the builders of python/arkernels/masks/builders.py) ----

// Causal (level = position) with an optional sliding window (builders.causal / sliding_window: q sees k iff
// 0 <= (q + S - L) - k < window).
inline Rule causal_rule(int64_t L, int64_t S, int32_t window = -1) {
  Rule r;
  for (int64_t i = 0; i < L; ++i) r.q_level.push_back(int32_t(i + (S - L)));  // bottom-right aligned
  for (int64_t j = 0; j < S; ++j) r.k_level.push_back(int32_t(j));
  r.window = window;
  return r;
}

// Block-causal over consecutive blocks of the given lengths (builders.block_causal): q sees k iff
// block(k) <= block(q), bidirectional inside a block (VAR scales: lengths 1, 4, 9, ...). L = S = the sum.
inline Rule block_causal_rule(const std::vector<int64_t>& lengths) {
  Rule r;
  for (size_t b = 0; b < lengths.size(); ++b)
    for (int64_t t = 0; t < lengths[b]; ++t) r.q_level.push_back(int32_t(b));
  r.k_level = r.q_level;
  return r;
}

// ACDiT SCAM (builders.skip_causal): clean blocks c_0..c_{N-1}, then noisy n_0..n_{N-1}, of block_size
// tokens each (L = S = 2 N block_size). With qb, kb the block indices over all 2N blocks, q sees k iff
// (qb < N and kb < N and qb >= kb) or (qb >= N and kb < N and qb - N > kb) or qb == kb. As a level rule:
// q_level(c_j) = j, q_level(n_j) = j - 1, k_level(c_i) = i, k_level(noisy) = 2^31 - 1 (never by level),
// group = block.
inline Rule skip_causal_rule(int64_t num_blocks, int64_t block_size) {
  Rule r;
  const int64_t N = num_blocks;
  for (int64_t i = 0; i < 2 * N * block_size; ++i) {
    const int64_t block = i / block_size;
    const bool clean = block < N;
    r.q_level.push_back(int32_t(clean ? block : block - N - 1));
    r.k_level.push_back(clean ? int32_t(block) : std::numeric_limits<int32_t>::max());
    r.q_group.push_back(int32_t(block));
  }
  r.k_group = r.q_group;
  return r;
}

// ---- tile layouts ----

struct Layout {
  int32_t bq = 0, bk = 0;
  std::vector<int32_t> run_ptr, runs, bits;
};

// How tiles are encoded: partial tiles as RULE or BITS; kMixed alternates them and also encodes some
// FULL tiles as RULE or BITS (still exact: the rule / an all-ones bitmap gives the same visibility).
enum class Partial { kRule, kBits, kMixed };

// Classifies every tile of the mask (all in-bounds pairs visible: FULL; none: no run; else partial) and
// merges neighbouring tiles of one kind into runs. Bitmap bits of rows past L and keys past S are set:
// the kernel must bounds-check them anyway.
inline Layout build_layout(const MaskDef& m, int32_t bq, int32_t bk, Partial how) {
  Layout lay;
  lay.bq = bq; lay.bk = bk;
  const int64_t n_qt = (m.L + bq - 1) / bq, n_kt = (m.S + bk - 1) / bk, words = (bk + 31) / 32;
  lay.run_ptr.push_back(0);
  for (int64_t t = 0; t < n_qt; ++t) {
    int64_t open_kind = -1;
    for (int64_t u = 0; u < n_kt; ++u) {
      int64_t seen = 0, total = 0;
      for (int64_t i = t * bq; i < std::min<int64_t>((t + 1) * bq, m.L); ++i)
        for (int64_t j = u * bk; j < std::min<int64_t>((u + 1) * bk, m.S); ++j, ++total) seen += m.visible(i, j);
      int kind = seen == 0 ? -1 : seen == total ? kFull : (how == Partial::kBits ? kBits : kRule);
      if (how == Partial::kMixed && kind == kRule && (t * 7 + u * 3) % 2) kind = kBits;
      if (how == Partial::kMixed && kind == kFull && (t + u) % 5 == 1) kind = kRule;
      if (how == Partial::kMixed && kind == kFull && (t + u) % 5 == 3) kind = kBits;
      if (kind != open_kind || kind < 0) {
        if (kind >= 0) lay.runs.insert(lay.runs.end(), {int32_t(u), int32_t(u), kind, -1});
        open_kind = kind;
      }
      if (kind < 0) continue;
      lay.runs[lay.runs.size() - 3] = int32_t(u + 1);  // extend the open run to this tile
      if (kind != kBits) continue;
      if (lay.runs.back() < 0) lay.runs.back() = int32_t(lay.bits.size() / (bq * words));
      for (int64_t r = 0; r < bq; ++r)
        for (int64_t w = 0; w < words; ++w) {
          uint32_t word = 0;
          for (int64_t c = 0; c < 32 && 32 * w + c < bk; ++c) {
            const int64_t i = t * bq + r, j = u * bk + 32 * w + c;
            if (i >= m.L || j >= m.S || m.visible(i, j)) word |= 1u << c;
          }
          lay.bits.push_back(int32_t(word));
        }
    }
    lay.run_ptr.push_back(int32_t(lay.runs.size() / 4));
  }
  return lay;
}

// The C view of a layout and its mask's rule, host pointers (NULL for empty vectors).
inline ark_block_mask c_mask(const Layout& lay, const MaskDef& m) {
  const auto ptr = [](const std::vector<int32_t>& v) { return v.empty() ? nullptr : v.data(); };
  return ark_block_mask{lay.bq, lay.bk, ptr(lay.run_ptr), ptr(lay.runs), ptr(lay.bits),
                        ptr(m.rule.q_level), ptr(m.rule.k_level), ptr(m.rule.q_doc), ptr(m.rule.k_doc),
                        ptr(m.rule.q_group), ptr(m.rule.k_group), m.rule.window};
}

// The transposed half of a layout (k_run_ptr, k_runs, k_tile_bits), as python/arkernels/masks/layout.py builds
// it: per key tile, runs of query tiles of one kind; a BITS run lists the tile_bits index of each of its tiles.
struct Transposed {
  std::vector<int32_t> run_ptr, runs, tile_of;
};

inline Transposed transpose(const Layout& lay, int64_t n_key_tiles) {
  // (kind, bitmap index) of every visited tile, per key tile and query tile.
  std::vector<std::vector<std::pair<int, int>>> col(static_cast<size_t>(n_key_tiles));
  std::vector<std::vector<int>> rows(static_cast<size_t>(n_key_tiles));
  for (size_t t = 0; t + 1 < lay.run_ptr.size(); ++t)
    for (int r = lay.run_ptr[t]; r < lay.run_ptr[t + 1]; ++r)
      for (int u = lay.runs[4 * r]; u < lay.runs[4 * r + 1]; ++u) {
        const int kind = lay.runs[4 * r + 2];
        col[u].push_back({kind, kind == kBits ? lay.runs[4 * r + 3] + (u - lay.runs[4 * r]) : -1});
        rows[u].push_back(int(t));
      }
  Transposed tr;
  tr.run_ptr.push_back(0);
  for (int64_t u = 0; u < n_key_tiles; ++u) {
    for (size_t e = 0; e < rows[u].size(); ++e) {
      const int t = rows[u][e], kind = col[u][e].first;
      const bool extend = e > 0 && rows[u][e - 1] == t - 1 && col[u][e - 1].first == kind;
      if (!extend) tr.runs.insert(tr.runs.end(), {t, t, kind, kind == kBits ? int32_t(tr.tile_of.size()) : -1});
      tr.runs[tr.runs.size() - 3] = t + 1;
      if (kind == kBits) tr.tile_of.push_back(col[u][e].second);
    }
    tr.run_ptr.push_back(int32_t(tr.runs.size() / 4));
  }
  return tr;
}

}  // namespace bsa_layouts
