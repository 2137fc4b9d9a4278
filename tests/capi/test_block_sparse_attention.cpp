// C API test of block_sparse_attention: links only libarkernels (no torch). Checks the CPU forward
// against a double-precision loop over the visibility each mask is defined by (a level rule or a dense
// bitmap, never the runs), the argument checks, and, where a GPU runs the CUDA forward, the CUDA forward
// against the CPU one. Exit code 0 = pass.
#include <arkernels/arkernels.h>

#include "bsa_layouts.hpp"
#include "capi_test_util.hpp"
// Host float16 / bfloat16 conversion (header-only, torch-free; the same code the CPU kernels use).
#include "../../csrc/common/half_convert.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <utility>
#include <vector>

#ifdef ARKERNELS_TEST_CUDA
#include <cuda_runtime.h>
#endif

using namespace bsa_layouts;  // Rule, MaskDef, Layout, build_layout, the rule makers (shared with native_bench)

namespace {

constexpr int64_t kSlack = 40;  // NaN elements after every buffer: a read or write past the end shows

// ---- tensors: logical (B, H, N, D) through strides, in a NaN-filled buffer ----

enum class Order { kBHND, kBNHD, kPadded, kBroadcastBatch };

struct Tensor4 {
  int64_t B = 0, H = 0, N = 0, D = 0, st[3] = {0, 0, 0};
  std::vector<float> buf;  // gaps between rows and the slack after the last one stay NaN
  double at(int64_t b, int64_t h, int64_t n, int64_t d) const {
    return buf[size_t(b * st[0] + h * st[1] + n * st[2] + d)];
  }
};

// Random values, exact in bf16 (and fp16 for these magnitudes), so every dtype reads the same numbers.
// pad: elements between rows for kPadded (a multiple of 8 keeps the CUDA forward's stride rule).
Tensor4 make_tensor(int64_t B, int64_t H, int64_t N, int64_t D, Order order, std::mt19937& rng, int64_t pad = 3) {
  Tensor4 t;
  t.B = B; t.H = H; t.N = N; t.D = D;
  const int64_t row = order == Order::kPadded ? D + pad : D;
  if (order == Order::kBNHD) {
    t.st[0] = N * H * D; t.st[1] = D; t.st[2] = H * D;
  } else {
    t.st[0] = order == Order::kBroadcastBatch ? 0 : H * N * row; t.st[1] = N * row; t.st[2] = row;
  }
  int64_t last = D;  // one past the largest offset
  if (B > 0 && H > 0 && N > 0) last += (B - 1) * t.st[0] + (H - 1) * t.st[1] + (N - 1) * t.st[2];
  t.buf.assign(size_t(last + kSlack), NAN);
  std::uniform_real_distribution<float> val(-1.0f, 1.0f);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t d = 0; d < D; ++d)
          t.buf[size_t(b * t.st[0] + h * t.st[1] + n * t.st[2] + d)] = bf16_round(val(rng));
  return t;
}

std::vector<uint8_t> encode(const std::vector<float>& v, ark_dtype d) {
  const size_t es = d == ARK_FLOAT32 ? 4 : 2;
  std::vector<uint8_t> b(v.size() * es);
  for (size_t i = 0; i < v.size(); ++i) {
    if (d == ARK_FLOAT32) {
      std::memcpy(&b[i * 4], &v[i], 4);
    } else {
      const uint16_t h =
          d == ARK_BFLOAT16 ? ark::from_float<ark::bf16_bits>(v[i]).x : ark::from_float<ark::fp16_bits>(v[i]).x;
      std::memcpy(&b[i * 2], &h, 2);
    }
  }
  return b;
}
std::vector<float> decode(const std::vector<uint8_t>& b, ark_dtype d) {
  const size_t es = d == ARK_FLOAT32 ? 4 : 2;
  std::vector<float> v(b.size() / es);
  for (size_t i = 0; i < v.size(); ++i) {
    if (d == ARK_FLOAT32) {
      std::memcpy(&v[i], &b[i * 4], 4);
    } else {
      uint16_t h;
      std::memcpy(&h, &b[i * 2], 2);
      v[i] = d == ARK_BFLOAT16 ? ark::to_float(ark::bf16_bits{h}) : ark::to_float(ark::fp16_bits{h});
    }
  }
  return v;
}

// ---- problems, the oracle and the checks ----

struct Problem {
  const char* name;
  int64_t B, Hq, Hkv, L, S, D;
  float scale;
  MaskDef mask;
  Layout lay;
  Tensor4 q, k, v;
};

Problem make_problem(const char* name, int64_t B, int64_t Hq, int64_t Hkv, int64_t D, MaskDef mask, Layout lay,
                     Order qo, Order ko, Order vo, unsigned seed, int64_t pad = 3) {
  std::mt19937 rng(seed);
  Problem p{name, B, Hq, Hkv, mask.L, mask.S, D, float(1.5 / std::sqrt(double(D))), std::move(mask), std::move(lay),
            {}, {}, {}};
  p.q = make_tensor(B, Hq, p.L, D, qo, rng, pad);
  p.k = make_tensor(B, Hkv, p.S, D, ko, rng, pad);
  p.v = make_tensor(B, Hkv, p.S, D, vo, rng, pad);
  return p;
}

// out (B, Hq, L, D) and lse (B, Hq, L) of the header's definition, in double, from the mask definition.
void expected(const Problem& p, std::vector<double>& out, std::vector<double>& lse) {
  out.assign(size_t(p.B * p.Hq * p.L * p.D), 0.0);
  lse.assign(size_t(p.B * p.Hq * p.L), -INFINITY);
  std::vector<double> s(size_t(p.S));
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.Hq; ++h) {
      const int64_t hk = h / (p.Hq / p.Hkv);
      for (int64_t i = 0; i < p.L; ++i) {
        double mx = -INFINITY;
        for (int64_t j = 0; j < p.S; ++j) {
          s[size_t(j)] = -INFINITY;
          if (!p.mask.visible(i, j)) continue;
          double dot = 0;
          for (int64_t d = 0; d < p.D; ++d) dot += p.q.at(b, h, i, d) * p.k.at(b, hk, j, d);
          s[size_t(j)] = p.scale * dot;
          mx = std::max(mx, s[size_t(j)]);
        }
        if (mx == -INFINITY) continue;  // sees no key: out 0, lse -inf
        double sum = 0;
        const size_t o = size_t(((b * p.Hq + h) * p.L + i) * p.D);
        for (int64_t j = 0; j < p.S; ++j) {
          if (s[size_t(j)] == -INFINITY) continue;
          const double e = std::exp(s[size_t(j)] - mx);
          sum += e;
          for (int64_t d = 0; d < p.D; ++d) out[o + size_t(d)] += e * p.v.at(b, hk, j, d);
        }
        for (int64_t d = 0; d < p.D; ++d) out[o + size_t(d)] /= sum;
        lse[size_t((b * p.Hq + h) * p.L + i)] = mx + std::log(sum);
      }
    }
}

struct Outputs {
  ark_status status;
  std::vector<float> out, lse;  // with kSlack poisoned elements after each
};

Outputs run_cpu(const Problem& p, ark_dtype dtype, bool with_lse = true) {
  const std::vector<uint8_t> q = encode(p.q.buf, dtype), k = encode(p.k.buf, dtype), v = encode(p.v.buf, dtype);
  std::vector<uint8_t> out = encode(std::vector<float>(size_t(p.B * p.Hq * p.L * p.D + kSlack), NAN), dtype);
  Outputs r;
  r.lse.assign(size_t(p.B * p.Hq * p.L + kSlack), NAN);
  const ark_block_mask mask = c_mask(p.lay, p.mask);
  r.status = ark_block_sparse_attention_fwd(q.data(), k.data(), v.data(), out.data(), with_lse ? r.lse.data() : nullptr,
                                            p.B, p.Hq, p.Hkv, p.L, p.S, p.D, p.q.st, p.k.st, p.v.st, &mask, p.scale,
                                            dtype, ARK_DEVICE_CPU, nullptr);
  r.out = decode(out, dtype);
  return r;
}

// got against want (out and lse of length n + kSlack / without slack): relative and max-abs error of
// out, max-abs error of lse; rows that see no key exactly 0 / -inf; the slack and, without lse, every
// lse element untouched (NaN).
// Where a failing output goes wrong, to tell kernel bugs apart on the first GPU run: mismatches counted by
// 64-column panel of D (a descriptor / TMA panel error), by accumulator half (row % 16 < 8 or not: a
// fragment-layout error), by column mod 8 and by query tile of 128 (a mask / chunk-walk error), and the
// first few elements.
void describe_mismatch(const Problem& p, const Outputs& got, const std::vector<double>& want_out, double tol) {
  const size_t n = want_out.size();
  int64_t by_panel[8] = {}, by_half[2] = {}, by_col8[8] = {}, total = 0;
  std::vector<int64_t> by_tile(size_t((p.L + 127) / 128 + 1), 0);
  for (size_t i = 0; i < n; ++i) {
    const double w = want_out[i], g = got.out[i];
    if (std::isfinite(g) && std::fabs(g - w) <= 4 * tol + tol * std::fabs(w)) continue;
    const int64_t d = int64_t(i % size_t(p.D)), row = int64_t((i / size_t(p.D)) % size_t(p.L));
    ++total;
    ++by_panel[std::min<int64_t>(d / 64, 7)];
    ++by_half[(row % 16) >= 8];
    ++by_col8[d % 8];
    ++by_tile[size_t(row / 128)];
    if (total <= 5)
      std::printf("    mismatch (b*h %lld, row %lld, d %lld): got %.5g want %.5g\n", (long long)(i / size_t(p.D * p.L)),
                  (long long)row, (long long)d, g, w);
  }
  if (!total) return;
  std::printf("    %lld mismatches; by D panel:", (long long)total);
  for (int64_t i = 0; i < (p.D + 63) / 64 && i < 8; ++i) std::printf(" %lld", (long long)by_panel[i]);
  std::printf("; rows %%16 <8 / >=8: %lld / %lld; by d %% 8:", (long long)by_half[0], (long long)by_half[1]);
  for (int i = 0; i < 8; ++i) std::printf(" %lld", (long long)by_col8[i]);
  std::printf("; by query tile:");
  for (size_t t = 0; t + 1 < by_tile.size(); ++t) std::printf(" %lld", (long long)by_tile[t]);
  std::printf("\n");
}

void check(const char* what, const Problem& p, const Outputs& got, const std::vector<double>& want_out,
           const std::vector<double>& want_lse, double tol, double lse_tol, bool with_lse = true) {
  EXPECT(got.status == ARK_SUCCESS, "%s %s: status %s: %s", p.name, what, ark_status_name(got.status),
         ark_last_error_message());
  if (got.status != ARK_SUCCESS) return;
  const size_t n = want_out.size(), rows = want_lse.size();
  double num = 0, den = 0, max_abs = 0, lse_err = 0;
  bool finite = true, empty_ok = true, slack_ok = true;
  for (size_t i = 0; i < n; ++i) {
    finite = finite && std::isfinite(got.out[i]);
    const double d = double(got.out[i]) - want_out[i];
    num += d * d;
    den += want_out[i] * want_out[i];
    max_abs = std::max(max_abs, std::fabs(d));
  }
  for (size_t r = 0; r < rows; ++r) {
    if (want_lse[r] == -INFINITY) {
      for (int64_t d = 0; d < p.D; ++d) empty_ok = empty_ok && got.out[r * size_t(p.D) + size_t(d)] == 0.0f;
      if (with_lse) empty_ok = empty_ok && got.lse[r] == -INFINITY;
    } else if (with_lse) {
      lse_err = std::max(lse_err, std::isfinite(got.lse[r]) ? std::fabs(got.lse[r] - want_lse[r]) : INFINITY);
    }
    if (!with_lse) slack_ok = slack_ok && std::isnan(got.lse[r]);
  }
  for (int64_t i = 0; i < kSlack; ++i) slack_ok = slack_ok && std::isnan(got.out[n + size_t(i)]) &&
                                                  std::isnan(got.lse[rows + size_t(i)]);
  const double rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  EXPECT(finite && rel <= tol && max_abs <= 4 * tol,
         "%s %s (B=%lld Hq=%lld Hkv=%lld L=%lld S=%lld D=%lld, %dx%d): out relative error %.3e, max abs %.3e "
         "(tolerance %.1e)%s", p.name, what, (long long)p.B, (long long)p.Hq, (long long)p.Hkv, (long long)p.L,
         (long long)p.S, (long long)p.D, p.lay.bq, p.lay.bk, rel, max_abs, tol, finite ? "" : ", non-finite values");
  if (!(finite && rel <= tol && max_abs <= 4 * tol)) describe_mismatch(p, got, want_out, tol);
  EXPECT(lse_err <= lse_tol, "%s %s: lse max abs error %.3e > %.1e", p.name, what, lse_err, lse_tol);
  EXPECT(empty_ok, "%s %s: a query that sees no key must get out = 0 and lse = -inf", p.name, what);
  EXPECT(slack_ok, "%s %s: an element past the end of out / lse (or lse when NULL) was written", p.name, what);
}

void check_cpu(const Problem& p) {
  std::vector<double> want_out, want_lse;
  expected(p, want_out, want_lse);
  check("cpu fp32", p, run_cpu(p, ARK_FLOAT32), want_out, want_lse, 1e-5, 1e-4);
  check("cpu bf16", p, run_cpu(p, ARK_BFLOAT16), want_out, want_lse, 1e-2, 1e-4);
  check("cpu fp16", p, run_cpu(p, ARK_FLOAT16), want_out, want_lse, 2e-3, 1e-4);
  check("cpu fp32, lse NULL", p, run_cpu(p, ARK_FLOAT32, false), want_out, want_lse, 1e-5, 1e-4, false);
}

// A random L x S bitmap: per tile empty, full or a random density, and some rows that see nothing.
MaskDef random_bits_mask(int64_t L, int64_t S, int64_t bq, int64_t bk, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  MaskDef m;
  m.L = L; m.S = S;
  m.dense.resize(size_t(L * S));
  for (int64_t i = 0; i < L; ++i)
    for (int64_t j = 0; j < S; ++j) {
      const int64_t tile = (i / bq) * 131 + (j / bk);
      const double density = tile % 4 == 0 ? 0.0 : tile % 4 == 1 ? 1.0 : 0.1 + 0.2 * double(tile % 3);
      m.dense[size_t(i * S + j)] = i % 37 != 5 && uni(rng) < density;
    }
  return m;
}

// Documents of the given lengths (q side), causal inside each; a query document without keys (the
// k side's documents are ids + 0 except the last one, which is ids + 100) sees nothing.
Rule doc_rule(int64_t L, const std::vector<int64_t>& lengths) {
  Rule r = causal_rule(L, L);
  int32_t id = 0;
  int64_t left = lengths[0];
  for (int64_t i = 0; i < L; ++i) {
    while (left == 0 && size_t(id + 1) < lengths.size()) left = lengths[size_t(++id)];
    r.q_doc.push_back(id);
    r.k_doc.push_back(size_t(id) + 1 == lengths.size() ? id + 100 : id);
    --left;
  }
  return r;
}

// Block-causal levels (level = position / 16) with a 3-level window, documents, and groups that also
// let a query see keys of its own group (position % 7) inside its document.
Rule mixed_rule(int64_t L, int64_t S) {
  Rule r;
  for (int64_t i = 0; i < L; ++i) {
    r.q_level.push_back(int32_t(i / 16));
    r.q_doc.push_back(int32_t(i / 150));
    r.q_group.push_back(int32_t(i % 7));
  }
  for (int64_t j = 0; j < S; ++j) {
    r.k_level.push_back(int32_t(j / 16));
    r.k_doc.push_back(int32_t(j / 150));
    r.k_group.push_back(int32_t(j % 7));
  }
  r.window = 3;
  return r;
}

// The shared rule makers the benchmark's masks come from, against the definitions they are written from
// (builders.py): skip_causal's block formula and block_causal's levels.
void test_rule_makers() {
  const int64_t N = 3, bs = 5;
  const Rule scam = skip_causal_rule(N, bs);
  bool ok = scam.q_level.size() == size_t(2 * N * bs) && scam.k_level.size() == scam.q_level.size();
  for (int64_t i = 0; ok && i < 2 * N * bs; ++i)
    for (int64_t j = 0; j < 2 * N * bs; ++j) {
      const int64_t qb = i / bs, kb = j / bs;
      const bool want = (qb < N && kb < N && qb >= kb) || (qb >= N && kb < N && qb - N > kb) || qb == kb;
      ok = ok && scam.visible(i, j) == want;
    }
  EXPECT(ok, "skip_causal_rule(%lld, %lld) differs from the SCAM block formula", (long long)N, (long long)bs);
  const std::vector<int64_t> scales = {1, 4, 9};
  const Rule var = block_causal_rule(scales);
  ok = var.q_level.size() == 14;
  for (int64_t i = 0; ok && i < 14; ++i)
    for (int64_t j = 0; j < 14; ++j) {
      const auto block = [](int64_t t) { return t < 1 ? 0 : t < 5 ? 1 : 2; };
      ok = ok && var.visible(i, j) == (block(j) <= block(i));
    }
  EXPECT(ok, "block_causal_rule({1, 4, 9}) is not block-causal");
  EXPECT(count_visible(rule_mask(10, 10, causal_rule(10, 10, 3))) == 3 * 10 - 3, "count_visible of a window");
}

void test_cpu_matches_definition() {
  unsigned seed = 1;
  {  // causal at 128 x 32: FULL runs below the diagonal, RULE runs across it; GQA 4 / 2
    const MaskDef m = rule_mask(300, 300, causal_rule(300, 300));
    check_cpu(make_problem("causal", 2, 4, 2, 64, m, build_layout(m, 128, 32, Partial::kRule), Order::kBHND,
                           Order::kBHND, Order::kBHND, seed++));
    // odd head_dim; (B, L, H, D) queries, padded key rows, (B, S, H, D) values
    check_cpu(make_problem("causal D=40", 2, 3, 3, 40, m, build_layout(m, 128, 32, Partial::kRule), Order::kBNHD,
                           Order::kPadded, Order::kBNHD, seed++));
    // one query tile longer than L and S; a batch-broadcast value tensor (stride 0)
    check_cpu(make_problem("causal one tile", 2, 2, 1, 7, m, build_layout(m, 512, 512, Partial::kRule),
                           Order::kBHND, Order::kBNHD, Order::kBroadcastBatch, seed++));
  }
  {  // causal with L != S (bottom-right aligned), a sliding window, head_dim 1
    const MaskDef m = rule_mask(200, 333, causal_rule(200, 333, 57));
    check_cpu(make_problem("window", 1, 2, 1, 1, m, build_layout(m, 64, 48, Partial::kRule), Order::kBHND,
                           Order::kBHND, Order::kBHND, seed++));
    check_cpu(make_problem("window bits", 1, 2, 2, 33, m, build_layout(m, 16, 40, Partial::kBits), Order::kBNHD,
                           Order::kPadded, Order::kPadded, seed++));
  }
  {  // BITS: random bitmaps (2 words per row at block_k 48); empty tiles, full tiles and empty rows
    const MaskDef m = random_bits_mask(257, 301, 64, 48, seed);
    check_cpu(make_problem("bits", 2, 4, 2, 40, m, build_layout(m, 64, 48, Partial::kBits), Order::kBHND,
                           Order::kPadded, Order::kBNHD, seed++));
  }
  {  // an empty query tile (rows 128 .. 255 see nothing) and empty rows elsewhere
    MaskDef m = random_bits_mask(300, 300, 128, 32, seed);
    for (int64_t i = 128; i < 256; ++i) std::fill_n(&m.dense[size_t(i * 300)], 300, uint8_t(0));
    const Layout lay = build_layout(m, 128, 32, Partial::kBits);
    EXPECT(lay.run_ptr[1] == lay.run_ptr[2], "test setup: query tile 1 must have no runs");
    check_cpu(make_problem("empty tile", 1, 2, 2, 64, m, lay, Order::kBHND, Order::kBHND, Order::kBHND, seed++));
  }
  {  // documents (the last one has no keys: its queries see nothing)
    const MaskDef m = rule_mask(300, 300, doc_rule(300, {50, 120, 1, 77, 52}));
    check_cpu(make_problem("docs", 1, 2, 1, 64, m, build_layout(m, 32, 32, Partial::kRule), Order::kBHND,
                           Order::kBNHD, Order::kBHND, seed++));
  }
  {  // window + documents + groups, every kind of run (some FULL tiles as RULE / BITS), L != S
    const MaskDef m = rule_mask(333, 301, mixed_rule(333, 301));
    check_cpu(make_problem("mixed", 2, 4, 1, 24, m, build_layout(m, 32, 64, Partial::kMixed), Order::kBNHD,
                           Order::kBHND, Order::kPadded, seed++));
    check_cpu(make_problem("mixed 100", 1, 2, 2, 16, m, build_layout(m, 100, 100, Partial::kMixed), Order::kBHND,
                           Order::kBHND, Order::kBHND, seed++));
  }
  {  // a causal window over documents: FULL, RULE and BITS runs (FULL tiles also as RULE / BITS)
    Rule r = doc_rule(600, {90, 200, 1, 150, 159});
    r.window = 150;
    const MaskDef m = rule_mask(600, 600, r);
    check_cpu(make_problem("window docs", 1, 2, 1, 32, m, build_layout(m, 64, 32, Partial::kMixed), Order::kBHND,
                           Order::kPadded, Order::kBHND, seed++));
  }
}

// ---- argument checks ----

void test_bad_arguments() {
  float q[64] = {}, k[64] = {}, v[64] = {}, out[64], lse[8];
  const int32_t run_ptr[2] = {0, 1}, runs[4] = {0, 1, kFull, -1}, level[8] = {};
  const int64_t st[3] = {64, 64, 8}, neg[3] = {64, -1, 8};
  const ark_block_mask good{8, 8, run_ptr, runs, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, -1};
  // Every field of one call, so that a case changes exactly one thing.
  struct Call {
    const void *q, *k, *v;
    void* out;
    int64_t batch = 1, q_heads = 1, kv_heads = 1, L = 8, S = 8, D = 8;
    const int64_t *qs, *ks, *vs;
    ark_block_mask mask;
    bool null_mask = false;
    float scale = 0.5f;
    ark_dtype dtype = ARK_FLOAT32;
    ark_device device = ARK_DEVICE_CPU;
    ark_status run() const {
      return ark_block_sparse_attention_fwd(q, k, v, out, nullptr, batch, q_heads, kv_heads, L, S, D, qs, ks, vs,
                                            null_mask ? nullptr : &mask, scale, dtype, device, nullptr);
    }
  };
  const Call base{q, k, v, out, 1, 1, 1, 8, 8, 8, st, st, st, good};
  {
    const ark_status s = base.run();
    EXPECT(s == ARK_SUCCESS, "the valid base call failed: %s", ark_last_error_message());
  }
  struct Case {
    const char* name;  // must appear in the message
    std::function<void(Call&)> change;
  };
  const Case cases[] = {
      {"batch", [](Call& c) { c.batch = -1; }},
      {"q_heads", [](Call& c) { c.q_heads = -2; }},
      {"kv_heads", [](Call& c) { c.kv_heads = -1; }},
      {"kv_heads", [](Call& c) { c.kv_heads = 0; }},
      {"kv_heads", [](Call& c) { c.q_heads = 3; c.kv_heads = 2; }},
      {"L:", [](Call& c) { c.L = -1; }},
      {"S:", [](Call& c) { c.S = -1; }},
      {"head_dim", [](Call& c) { c.D = 0; }},
      {"head_dim", [](Call& c) { c.D = int64_t(1) << 40; }},
      {"scale", [](Call& c) { c.scale = 0.0f; }},
      {"scale", [](Call& c) { c.scale = -1.0f; }},
      {"scale", [](Call& c) { c.scale = NAN; }},
      {"scale", [](Call& c) { c.scale = INFINITY; }},
      {"dtype", [](Call& c) { c.dtype = ark_dtype(7); }},
      {"device", [](Call& c) { c.device = ark_device(5); }},
      {"q_strides", [](Call& c) { c.qs = nullptr; }},
      {"k_strides", [&](Call& c) { c.ks = neg; }},
      {"v_strides", [&](Call& c) { c.vs = neg; }},
      {"q,", [](Call& c) { c.q = nullptr; }},
      {"out", [](Call& c) { c.out = nullptr; }},
      {"k,", [](Call& c) { c.k = nullptr; }},
      {"v:", [](Call& c) { c.v = nullptr; }},
      {"mask", [](Call& c) { c.null_mask = true; }},
      {"mask.block_q", [](Call& c) { c.mask.block_q = 0; }},
      {"mask.block_k", [](Call& c) { c.mask.block_k = -4; }},
      {"mask.q_run_ptr", [](Call& c) { c.mask.q_run_ptr = nullptr; }},
      {"mask.q_runs", [](Call& c) { c.mask.q_runs = nullptr; }},
      {"mask.k_level", [&](Call& c) { c.mask.q_level = level; }},
      {"mask.q_doc", [&](Call& c) { c.mask.q_level = c.mask.k_level = level; c.mask.k_doc = level; }},
      {"mask.k_group", [&](Call& c) { c.mask.q_level = c.mask.k_level = level; c.mask.q_group = level; }},
      {"mask.q_level", [&](Call& c) { c.mask.q_doc = c.mask.k_doc = level; }},
  };
  for (const Case& bad : cases) {
    Call c = base;
    bad.change(c);
    const ark_status s = c.run();
    EXPECT(s == ARK_ERROR_INVALID_ARGUMENT && std::strstr(ark_last_error_message(), bad.name),
           "bad %s: expected ARK_ERROR_INVALID_ARGUMENT naming it, got %s: \"%s\"", bad.name, ark_status_name(s),
           ark_last_error_message());
  }
  // Empty problems succeed without reading anything; L > 0 with S = 0: out = 0 and lse = -inf.
  for (int which = 0; which < 3; ++which) {
    Call c = base;
    c.q = c.k = c.v = nullptr;
    c.out = nullptr;
    c.mask.q_run_ptr = c.mask.q_runs = nullptr;
    (which == 0 ? c.batch : which == 1 ? c.q_heads : c.L) = 0;
    const ark_status s = c.run();
    EXPECT(s == ARK_SUCCESS, "empty problem %d: %s: %s", which, ark_status_name(s), ark_last_error_message());
  }
  {
    std::fill_n(out, 64, NAN);
    std::fill_n(lse, 8, NAN);
    const ark_block_mask m{8, 8, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, -1};
    const ark_status s = ark_block_sparse_attention_fwd(q, nullptr, nullptr, out, lse, 1, 1, 1, 8, 0, 8, st, st, st,
                                                        &m, 0.5f, ARK_FLOAT32, ARK_DEVICE_CPU, nullptr);
    bool ok = s == ARK_SUCCESS;
    for (int i = 0; i < 64; ++i) ok = ok && out[i] == 0.0f;
    for (int i = 0; i < 8; ++i) ok = ok && lse[i] == -INFINITY;
    EXPECT(ok, "S = 0: expected out = 0 and lse = -inf (%s: %s)", ark_status_name(s), ark_last_error_message());
  }
  // CUDA: not compiled, or a configuration the CUDA forward does not run (refused before any launch).
  Call c = base;
  c.device = ARK_DEVICE_CUDA;
  if (!ark_has_cuda()) {
    const ark_status s = c.run();
    EXPECT(s == ARK_ERROR_NOT_COMPILED, "CUDA without a CUDA build: %s", ark_status_name(s));
    EXPECT(!ark_block_sparse_attention_cuda_supported(128, 128, 32, ARK_BFLOAT16), "supported without CUDA");
  } else {
    ark_status s = c.run();  // fp32
    EXPECT(s == ARK_ERROR_INVALID_ARGUMENT && std::strstr(ark_last_error_message(), "dtype"),
           "CUDA fp32: expected a refusal naming dtype, got %s: %s", ark_status_name(s), ark_last_error_message());
    c.dtype = ARK_BFLOAT16;
    c.D = 40;
    s = c.run();
    EXPECT(s == ARK_ERROR_INVALID_ARGUMENT && std::strstr(ark_last_error_message(), "head_dim"),
           "CUDA head_dim 40: expected a refusal naming head_dim, got %s: %s", ark_status_name(s),
           ark_last_error_message());
  }
  EXPECT(!ark_block_sparse_attention_cuda_supported(40, 128, 32, ARK_BFLOAT16), "head_dim 40 supported by CUDA?");
  EXPECT(!ark_block_sparse_attention_cuda_supported(128, 128, 32, ARK_FLOAT32), "fp32 supported by CUDA?");
  EXPECT(!ark_block_sparse_attention_cuda_supported(-1, 128, 32, ARK_BFLOAT16), "head_dim -1 supported by CUDA?");
}

// ---- CUDA against CPU ----

#ifdef ARKERNELS_TEST_CUDA
template <typename E> void* to_device(const std::vector<E>& host) {
  if (host.empty()) return nullptr;
  void* d = nullptr;
  cudaMalloc(&d, host.size() * sizeof(E));
  cudaMemcpy(d, host.data(), host.size() * sizeof(E), cudaMemcpyHostToDevice);
  return d;
}

// The CUDA forward of p (device copies of every buffer and of the layout), outputs poisoned.
// out_offset: out starts that many elements into its buffer (1: off the 16-byte grid the CUDA forward needs).
Outputs run_cuda(const Problem& p, ark_dtype dtype, int out_offset = 0) {
  const std::vector<uint8_t> hq = encode(p.q.buf, dtype), hk = encode(p.k.buf, dtype), hv = encode(p.v.buf, dtype);
  std::vector<uint8_t> hout =
      encode(std::vector<float>(size_t(p.B * p.Hq * p.L * p.D + kSlack + out_offset), NAN), dtype);
  Outputs r;
  r.lse.assign(size_t(p.B * p.Hq * p.L + kSlack), NAN);
  void *q = to_device(hq), *k = to_device(hk), *v = to_device(hv), *out_buf = to_device(hout), *lse = to_device(r.lse);
  void* out = static_cast<uint8_t*>(out_buf) + 2 * out_offset;
  const Rule& ru = p.mask.rule;
  std::vector<void*> arrays = {to_device(p.lay.run_ptr), to_device(p.lay.runs), to_device(p.lay.bits),
                               to_device(ru.q_level),    to_device(ru.k_level),  to_device(ru.q_doc),
                               to_device(ru.k_doc),      to_device(ru.q_group),  to_device(ru.k_group)};
  const auto a = [&](int i) { return static_cast<const int32_t*>(arrays[size_t(i)]); };
  const ark_block_mask mask{p.lay.bq, p.lay.bk, a(0), a(1), a(2), a(3), a(4), a(5), a(6), a(7), a(8), ru.window};
  r.status = ark_block_sparse_attention_fwd(q, k, v, out, static_cast<float*>(lse), p.B, p.Hq, p.Hkv, p.L, p.S, p.D,
                                            p.q.st, p.k.st, p.v.st, &mask, p.scale, dtype, ARK_DEVICE_CUDA, nullptr);
  const cudaError_t err = cudaDeviceSynchronize();
  EXPECT(err == cudaSuccess, "%s: CUDA error: %s", p.name, cudaGetErrorString(err));
  cudaMemcpy(hout.data(), out_buf, hout.size(), cudaMemcpyDeviceToHost);
  cudaMemcpy(r.lse.data(), lse, r.lse.size() * 4, cudaMemcpyDeviceToHost);
  r.out = decode(hout, dtype);
  r.out.erase(r.out.begin(), r.out.begin() + out_offset);
  for (void* ptr : {q, k, v, out_buf, lse}) cudaFree(ptr);
  for (void* ptr : arrays) cudaFree(ptr);
  return r;
}

// The CUDA forward against the CPU forward on the same inputs (rows without keys: exactly 0 / -inf).
void check_cuda(const Problem& p, ark_dtype dtype) {
  const Outputs cpu = run_cpu(p, dtype);
  EXPECT(cpu.status == ARK_SUCCESS, "%s: CPU forward failed: %s", p.name, ark_last_error_message());
  const std::vector<double> want_out(cpu.out.begin(), cpu.out.end() - kSlack),
      want_lse(cpu.lse.begin(), cpu.lse.end() - kSlack);
  check(dtype == ARK_BFLOAT16 ? "cuda bf16 vs cpu" : "cuda fp16 vs cpu", p, run_cuda(p, dtype), want_out, want_lse,
        1e-2, 1e-2);
}

void test_cuda_matches_cpu() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: CUDA path not run\n");
    return;
  }
  unsigned seed = 1000;
  // Under a sanitizer (ARK_TEST_SANITIZER set: scripts/device_kit_run.sh), a reduced set that still runs every kernel
  // instance: 128-key tiles only, bf16 only, and the problems with a rule, a window or bitmaps (racecheck of the full
  // set did not finish in 45 s).
  const bool reduced = std::getenv("ARK_TEST_SANITIZER") != nullptr;
  // Strides the CUDA forward takes (multiples of 8 elements): (B, H, N, D), (B, N, H, D), rows padded by 8.
  // Key tiles: the earlier defaults (32 at D 128, 64 at D 64) and 128, the layout the Python op now builds
  // for every kernel (one 128-key tile per chunk).
  for (const auto& [D, bk] : {std::pair<int64_t, int32_t>{128, 128}, {128, 32}, {64, 128}, {64, 64}}) {
    if (reduced && bk != 128) continue;
    if (!ark_block_sparse_attention_cuda_supported(D, 128, bk, ARK_BFLOAT16)) {
      std::printf("CUDA forward does not run head_dim %lld at 128 x %d on this device: CUDA checks skipped\n",
                  (long long)D, bk);
      continue;
    }
    // Every pair visible (FULL runs only: no mask code runs), one query tile and two chunks: the simplest
    // case, first, so that a wrong MMA layout shows before any mask question.
    Rule all_visible = causal_rule(128, 256);
    std::fill(all_visible.q_level.begin(), all_visible.q_level.end(), 0);
    std::fill(all_visible.k_level.begin(), all_visible.k_level.end(), 0);
    const MaskDef full = rule_mask(128, 256, all_visible);
    const MaskDef causal = rule_mask(300, 300, causal_rule(300, 300));
    const MaskDef window = rule_mask(1000, 1000, causal_rule(1000, 1000, 200));
    const MaskDef docs = rule_mask(1000, 1000, doc_rule(1000, {100, 333, 7, 260, 150, 150}));
    Rule wd = causal_rule(1000, 1000, 300);
    wd.q_doc = docs.rule.q_doc;
    wd.k_doc = docs.rule.k_doc;
    const MaskDef mixed = rule_mask(1000, 1000, wd);
    const MaskDef groups = rule_mask(1000, 1000, mixed_rule(1000, 1000));
    const MaskDef bits = random_bits_mask(1000, 1000, 128, bk, seed);
    const Problem problems[] = {
        make_problem("cuda full", 1, 1, 1, D, full, build_layout(full, 128, bk, Partial::kRule), Order::kBHND,
                     Order::kBHND, Order::kBHND, seed++, 8),
        make_problem("cuda causal", 2, 4, 4, D, causal, build_layout(causal, 128, bk, Partial::kRule), Order::kBHND,
                     Order::kBHND, Order::kBHND, seed++, 8),
        make_problem("cuda causal strided GQA", 2, 4, 2, D, causal, build_layout(causal, 128, bk, Partial::kRule),
                     Order::kBNHD, Order::kPadded, Order::kBNHD, seed++, 8),
        make_problem("cuda window", 1, 2, 2, D, window, build_layout(window, 128, bk, Partial::kRule), Order::kBHND,
                     Order::kBHND, Order::kBHND, seed++, 8),
        make_problem("cuda docs", 1, 4, 1, D, docs, build_layout(docs, 128, bk, Partial::kRule), Order::kBHND,
                     Order::kBHND, Order::kBHND, seed++, 8),
        make_problem("cuda mixed runs GQA", 2, 4, 2, D, mixed, build_layout(mixed, 128, bk, Partial::kMixed),
                     Order::kBNHD, Order::kPadded, Order::kBHND, seed++, 8),
        make_problem("cuda groups", 2, 2, 1, D, groups, build_layout(groups, 128, bk, Partial::kMixed),
                     Order::kBHND, Order::kPadded, Order::kPadded, seed++, 8),
        make_problem("cuda bits", 1, 2, 2, D, bits, build_layout(bits, 128, bk, Partial::kBits), Order::kBHND,
                     Order::kBHND, Order::kBHND, seed++, 8),
    };
    // Every kernel instance: schedule 1 (serial) / 2 (pipelined) / 3 (pipelined, TMA epilogue) / 4 (persistent) x 2 / 3
    // ring slots (tuning knobs). The persistent one also with 1 and 3 CTAs, so that each walks many items (these
    // problems have fewer items than an H100 has SMs): the ring, the Q tile and O's staging tile reused across items.
    struct Instance {
      int schedule, stages, ctas;
    };
    std::vector<Instance> instances;
    for (const int schedule : {1, 2, 3, 4})
      for (const int stages : {2, 3})
        for (const int ctas : {0, 1, 3})
          if (ctas == 0 || schedule == 4) instances.push_back({schedule, stages, ctas});
    for (const Instance& in : instances) {
      ark_tuning_set("bsa_fwd_schedule", in.schedule);
      ark_tuning_set("bsa_fwd_stages", in.stages);
      ark_tuning_set("bsa_fwd_ctas", in.ctas);
      std::printf("CUDA forward, head_dim %lld, 128 x %d tiles, schedule %d, %d slots, CTAs %d:\n", (long long)D, bk,
                  in.schedule, in.stages, in.ctas);
      if (in.schedule == 4 && in.stages == 3 && D == 128) {  // does not fit: refused before any launch
        const Outputs r = run_cuda(problems[0], ARK_BFLOAT16);
        EXPECT(r.status == ARK_ERROR_INVALID_ARGUMENT && std::strstr(ark_last_error_message(), "persistent"),
               "persistent with 3 slots at D 128: %s: %s", ark_status_name(r.status), ark_last_error_message());
        continue;
      }
      const int before = g_failures;
      for (const Problem& p : problems) {
        if (reduced && std::strcmp(p.name, "cuda causal") != 0 && std::strcmp(p.name, "cuda window") != 0 &&
            std::strcmp(p.name, "cuda bits") != 0)
          continue;
        check_cuda(p, ARK_BFLOAT16);
        if (!reduced && ark_block_sparse_attention_cuda_supported(D, 128, bk, ARK_FLOAT16)) check_cuda(p, ARK_FLOAT16);
      }
      std::printf("  %s\n", g_failures == before ? "ok" : "FAILED");
    }
    ark_tuning_set("bsa_fwd_schedule", 0);
    ark_tuning_set("bsa_fwd_stages", 0);
    ark_tuning_set("bsa_fwd_ctas", 0);
    // Refused before any launch: a stride that is not a multiple of 8, a misaligned pointer.
    const Problem& p = problems[0];
    const std::vector<uint8_t> hq = encode(p.q.buf, ARK_BFLOAT16);
    void* buf = to_device(std::vector<uint8_t>(hq.size() + 64));
    const Layout& lay = p.lay;
    void *rp = to_device(lay.run_ptr), *rr = to_device(lay.runs), *ql = to_device(p.mask.rule.q_level),
         *kl = to_device(p.mask.rule.k_level);
    const ark_block_mask mask{lay.bq, lay.bk, static_cast<const int32_t*>(rp), static_cast<const int32_t*>(rr), nullptr,
                              static_cast<const int32_t*>(ql), static_cast<const int32_t*>(kl), nullptr, nullptr,
                              nullptr, nullptr, -1};
    const int64_t odd[3] = {p.q.st[0], p.q.st[1], D + 4};
    ark_status s = ark_block_sparse_attention_fwd(buf, buf, buf, buf, nullptr, 1, 1, 1, 2, 1, D, odd, p.k.st, p.v.st,
                                                  &mask, 1.0f, ARK_BFLOAT16, ARK_DEVICE_CUDA, nullptr);
    EXPECT(s == ARK_ERROR_INVALID_ARGUMENT && std::strstr(ark_last_error_message(), "q_strides"),
           "CUDA stride not a multiple of 8: %s: %s", ark_status_name(s), ark_last_error_message());
    s = ark_block_sparse_attention_fwd(buf, static_cast<char*>(buf) + 2, buf, buf, nullptr, 1, 1, 1, 1, 1, D, p.q.st,
                                       p.k.st, p.v.st, &mask, 1.0f, ARK_BFLOAT16, ARK_DEVICE_CUDA, nullptr);
    EXPECT(s == ARK_ERROR_INVALID_ARGUMENT && std::strstr(ark_last_error_message(), "k:"),
           "CUDA misaligned k: %s: %s", ark_status_name(s), ark_last_error_message());
    const Outputs misaligned_out = run_cuda(problems[1], ARK_BFLOAT16, 1);  // the TMA epilogue could not store there
    EXPECT(misaligned_out.status == ARK_ERROR_INVALID_ARGUMENT && std::strstr(ark_last_error_message(), "out:"),
           "CUDA misaligned out: %s: %s", ark_status_name(misaligned_out.status), ark_last_error_message());
    const int64_t broadcast[3] = {0, p.v.st[1], p.v.st[2]};  // batch 2 with a batch stride of 0
    s = ark_block_sparse_attention_fwd(buf, buf, buf, buf, nullptr, 2, 1, 1, 1, 1, D, p.q.st, p.k.st, broadcast,
                                       &mask, 1.0f, ARK_BFLOAT16, ARK_DEVICE_CUDA, nullptr);
    EXPECT(s == ARK_ERROR_INVALID_ARGUMENT && std::strstr(ark_last_error_message(), "v_strides"),
           "CUDA batch-broadcast v: %s: %s", ark_status_name(s), ark_last_error_message());
    for (void* ptr : {buf, rp, rr, ql, kl}) cudaFree(ptr);
  }
}
#endif

}  // namespace

int main() {
  // Line-buffered: a GPU run cut off by a timeout (a hung kernel) keeps every line printed before it.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  test_rule_makers();
  test_cpu_matches_definition();
  test_bad_arguments();
#ifdef ARKERNELS_TEST_CUDA
  test_cuda_matches_cpu();
#endif
  return finish("block_sparse_attention C API");
}
