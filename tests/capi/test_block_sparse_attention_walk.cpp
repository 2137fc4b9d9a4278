// The Hopper block_sparse_attention forward's chunk walk and accumulator placement
// (csrc/ops/block_sparse_attention/block_sparse_attention_walk.hpp), checked on the host: no GPU needed.
// For layouts of several masks, tilings and encodings (RULE, BITS, mixed), every query tile's chunks are
// walked as the kernel walks them, and every (consumer thread, accumulator register) of every chunk is
// placed with acc_row / acc_col and kept or dropped as the kernel's mask step does. Each visible
// (query, key) pair must be kept exactly once, nothing else ever, and the 256 x 64 accumulator elements must
// tile a 128 x 128 chunk exactly once. The MMAs and TMA themselves are the GPU test's
// (test_block_sparse_attention.cpp); this one fails on the index logic alone.
#include <cstdio>
#include <vector>

#include "bsa_layouts.hpp"
#include "capi_test_util.hpp"
#include "ops/block_sparse_attention/block_sparse_attention_walk.hpp"

namespace {

using namespace bsa_layouts;
namespace walk = ark::bsa_walk;

void test_accumulator_tiles_a_chunk() {
  std::vector<int> hits(walk::BM * walk::BN, 0);
  for (int t = 0; t < 256; ++t)
    for (int i = 0; i < walk::BN / 2; ++i) {
      const int r = walk::acc_row(t, i), c = walk::acc_col(t, i);
      EXPECT(r >= 0 && r < walk::BM && c >= 0 && c < walk::BN, "thread %d register %d at (%d, %d)", t, i, r, c);
      if (r >= 0 && r < walk::BM && c >= 0 && c < walk::BN) ++hits[size_t(r * walk::BN + c)];
    }
  int wrong = 0;
  for (int h : hits) wrong += h != 1;
  EXPECT(wrong == 0, "accumulator placement: %d of %d chunk elements not covered exactly once", wrong,
         walk::BM * walk::BN);
}

// Walks every query tile as the kernel does and counts, per (query, key), how often a score is kept.
void check_walk(const char* name, const MaskDef& m, int32_t bk, Partial how) {
  const Layout lay = build_layout(m, walk::BM, bk, how);
  const walk::Walk w = walk::make_walk(m.S, c_mask(lay, m));
  std::vector<int> kept(size_t(m.L * m.S), 0);
  int64_t chunks = 0, outside = 0;
  const int64_t tiles = (m.L + walk::BM - 1) / walk::BM;
  for (int tile = 0; tile < tiles; ++tile) {
    walk::ChunkCursor c;
    c.init(w, tile);
    for (; c.valid(); c.next(w), ++chunks) {
      for (int t = 0; t < 256; ++t) {
        walk::RowRule q[2];
        const int row0 = walk::acc_row(t, 0);
        for (int h = 0; h < 2; ++h) q[h].load(w, int64_t(tile) * walk::BM + row0 + 8 * h, m.L);
        uint64_t visible = ~uint64_t(0);
        if (!c.unmasked())
          walk::chunk_visibility(w, c, t, q, [&](int i, bool v) { visible &= ~(uint64_t(!v) << i); });
        for (int i = 0; i < walk::BN / 2; ++i) {
          const int row_in_tile = walk::acc_row(t, i);
          const int64_t row = int64_t(tile) * walk::BM + row_in_tile;
          const int col = c.key + walk::acc_col(t, i);
          const bool keep = (visible >> i) & 1;
          if (!keep || row >= m.L) continue;  // rows past L are computed but never stored
          if (col >= m.S) {
            ++outside;
            continue;
          }
          ++kept[size_t(row * m.S + col)];
        }
      }
    }
  }
  int64_t missing = 0, extra = 0, twice = 0;
  for (int64_t i = 0; i < m.L; ++i)
    for (int64_t j = 0; j < m.S; ++j) {
      const int k = kept[size_t(i * m.S + j)];
      const bool vis = m.visible(i, j);
      missing += vis && k == 0;
      extra += !vis && k > 0;
      twice += k > 1;
    }
  EXPECT(missing == 0 && extra == 0 && twice == 0 && outside == 0,
         "%s (L=%lld S=%lld, 128 x %d, encoding %d): %lld visible pairs missed, %lld invisible kept, %lld kept "
         "twice, %lld keys past S kept (%lld chunks)",
         name, (long long)m.L, (long long)m.S, bk, int(how), (long long)missing, (long long)extra, (long long)twice,
         (long long)outside, (long long)chunks);
}

// Levels ~4e9 apart, where q_level - k_level overflows int32: every third key far below all queries (never
// inside the window), the others a window shifted by 5.
Rule far_levels_rule(int64_t L, int64_t S, int32_t window) {
  Rule r;
  const int32_t base = 2000000000;
  for (int64_t i = 0; i < L; ++i) r.q_level.push_back(base + int32_t(i));
  for (int64_t j = 0; j < S; ++j) r.k_level.push_back(j % 3 == 0 ? -base + int32_t(j) : base + int32_t(j) - 5);
  r.window = window;
  return r;
}

// Causal inside documents of the given lengths (the general rule path: documents, no groups).
Rule documents_causal_rule(const std::vector<int64_t>& lengths) {
  Rule r;
  int64_t n = 0;
  for (size_t d = 0; d < lengths.size(); ++d)
    for (int64_t t = 0; t < lengths[d]; ++t, ++n) {
      r.q_level.push_back(int32_t(n));
      r.q_doc.push_back(int32_t(d));
    }
  r.k_level = r.q_level;
  r.k_doc = r.q_doc;
  return r;
}

void test_walks() {
  std::vector<std::pair<const char*, MaskDef>> masks;
  masks.emplace_back("far levels, window 60", rule_mask(300, 300, far_levels_rule(300, 300, 60)));
  masks.emplace_back("far levels, no window", rule_mask(300, 300, far_levels_rule(300, 300, -1)));
  masks.emplace_back("documents 100 1 150 49", rule_mask(300, 300, documents_causal_rule({100, 1, 150, 49})));
  masks.emplace_back("causal 300", rule_mask(300, 300, causal_rule(300, 300)));
  masks.emplace_back("causal L 200 S 333", rule_mask(200, 333, causal_rule(200, 333)));
  masks.emplace_back("window 150", rule_mask(700, 700, causal_rule(700, 700, 150)));
  masks.emplace_back("VAR scales", rule_mask(680, 680, block_causal_rule({1, 4, 9, 16, 25, 36, 64, 100, 169, 256})));
  masks.emplace_back("SCAM 4 x 96", rule_mask(768, 768, skip_causal_rule(4, 96)));
  masks.emplace_back("one query", rule_mask(1, 257, causal_rule(1, 257)));
  for (const auto& [name, m] : masks)
    for (const int32_t bk : {16, 32, 64, 128})
      for (const Partial how : {Partial::kRule, Partial::kBits, Partial::kMixed}) check_walk(name, m, bk, how);
}

}  // namespace

int main() {
  test_accumulator_tiles_a_chunk();
  test_walks();
  return finish("block_sparse_attention chunk walk");
}
