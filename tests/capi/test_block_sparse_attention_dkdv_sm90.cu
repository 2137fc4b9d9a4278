// The Hopper dK / dV kernel of block_sparse_attention (csrc/ops/block_sparse_attention/
// block_sparse_attention_dkdv_sm90.cuh), through the C API (ark_block_sparse_attention_bwd_dkdv), against a
// float64 oracle of the backward on small problems of every mask kind: every pair visible, causal with GQA, a
// sliding window, documents, groups mixed with RULE and BITS tiles, random bitmaps, L != S and lengths that are
// not multiples of the tiles. bf16 inputs (exact in bf16), the oracle's P / dS in float64, so the bound is the
// kernel's rounding of P and dS to bf16 for the products (norm-relative 2e-2). Both instances: dK / dV only, and
// dK / dV with dQ added (TMA reduce-adds) into a zeroed fp32 buffer (which the first must leave untouched). Needs an
// sm_90 GPU: without one it exits 77, which ctest reports as skipped (CI has no GPU), after checking the C API's
// refusals; the kit runs it on the device.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <initializer_list>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "arkernels/block_sparse_attention.h"
#include "bsa_layouts.hpp"
#include "capi_test_util.hpp"

using namespace bsa_layouts;

namespace {

constexpr int kTile = 128;  // the kernel takes layouts at 128 x 128 only

struct Problem {
  const char* name;
  int64_t B, Hq, Hkv, D;
  MaskDef mask;
  Partial how;
};

// Float64 backward of every (b, h): out, lse, delta, dQ, then dK, dV added into the kv head's rows.
void oracle(const Problem& p, const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
            const std::vector<float>& dout, float scale, std::vector<float>& lse, std::vector<float>& delta,
            std::vector<double>& dq, std::vector<double>& dk, std::vector<double>& dv) {
  const int64_t L = p.mask.L, S = p.mask.S, D = p.D, G = p.Hq / p.Hkv;
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.Hq; ++h) {
      const int64_t hk = h / G;
      const float* Q = &q[((b * p.Hq + h) * L) * D];
      const float* dO = &dout[((b * p.Hq + h) * L) * D];
      const float* K = &k[((b * p.Hkv + hk) * S) * D];
      const float* V = &v[((b * p.Hkv + hk) * S) * D];
      double* dQ = &dq[((b * p.Hq + h) * L) * D];
      double* dK = &dk[((b * p.Hkv + hk) * S) * D];
      double* dV = &dv[((b * p.Hkv + hk) * S) * D];
      std::vector<double> s(static_cast<size_t>(S)), P(static_cast<size_t>(S)), o(static_cast<size_t>(D));
      for (int64_t i = 0; i < L; ++i) {
        double mx = -INFINITY;
        for (int64_t j = 0; j < S; ++j) {
          s[j] = -INFINITY;
          if (!p.mask.visible(i, j)) continue;
          double acc = 0;
          for (int64_t d = 0; d < D; ++d) acc += double(Q[i * D + d]) * K[j * D + d];
          s[j] = acc * scale;
          mx = std::max(mx, s[j]);
        }
        const int64_t row = (b * p.Hq + h) * L + i;
        if (mx == -INFINITY) {  // sees nothing: lse -inf, no gradient
          lse[row] = -INFINITY;
          delta[row] = 0.f;
          continue;
        }
        double l = 0;
        for (int64_t j = 0; j < S; ++j) l += (P[j] = s[j] == -INFINITY ? 0.0 : std::exp(s[j] - mx));
        std::fill(o.begin(), o.end(), 0.0);
        for (int64_t j = 0; j < S; ++j) {
          P[j] /= l;
          for (int64_t d = 0; d < D; ++d) o[d] += P[j] * V[j * D + d];
        }
        double dl = 0;
        for (int64_t d = 0; d < D; ++d) dl += o[d] * dO[i * D + d];
        lse[row] = float(mx + std::log(l));
        delta[row] = float(dl);
        for (int64_t j = 0; j < S; ++j) {
          if (P[j] == 0) continue;
          double dpj = 0;
          for (int64_t d = 0; d < D; ++d) dpj += double(dO[i * D + d]) * V[j * D + d];
          const double ds = P[j] * (dpj - dl);
          for (int64_t d = 0; d < D; ++d) {
            dV[j * D + d] += P[j] * dO[i * D + d];
            dK[j * D + d] += scale * ds * Q[i * D + d];
            dQ[i * D + d] += scale * ds * K[j * D + d];
          }
        }
      }
    }
}

template <typename T> T* upload(const std::vector<T>& h) {
  T* d = nullptr;
  if (h.empty()) return nullptr;
  cudaMalloc(&d, h.size() * sizeof(T));
  cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  return d;
}

std::vector<uint16_t> to_bf16(const std::vector<float>& x) {
  std::vector<uint16_t> o(x.size());
  for (size_t i = 0; i < x.size(); ++i) o[i] = bf16_from(x[i]);
  return o;
}

void run(const Problem& p, unsigned seed) {
  const int D = int(p.D);
  const int64_t L = p.mask.L, S = p.mask.S;
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd;
  auto make = [&](int64_t n) {
    std::vector<float> x(static_cast<size_t>(n));
    for (float& e : x) e = bf16_round(nd(gen));
    return x;
  };
  const std::vector<float> q = make(p.B * p.Hq * L * D), k = make(p.B * p.Hkv * S * D), v = make(p.B * p.Hkv * S * D),
                           dout = make(p.B * p.Hq * L * D);
  const float scale = 1.f / std::sqrt(float(D));
  std::vector<float> lse(static_cast<size_t>(p.B * p.Hq * L)), delta(lse.size());
  std::vector<double> want_dq(q.size(), 0.0), want_dk(k.size(), 0.0), want_dv(v.size(), 0.0);
  oracle(p, q, k, v, dout, scale, lse, delta, want_dq, want_dk, want_dv);

  const Layout lay = build_layout(p.mask, kTile, kTile, p.how);
  const int64_t n_key_tiles = (S + kTile - 1) / kTile;
  const Transposed tr = transpose(lay, n_key_tiles);
  const Rule& r = p.mask.rule;
  int32_t *run_ptr = upload(lay.run_ptr), *runs = upload(lay.runs), *bits = upload(lay.bits),
          *k_run_ptr = upload(tr.run_ptr), *k_runs = upload(tr.runs), *tile_of = upload(tr.tile_of),
          *ql = upload(r.q_level), *kl = upload(r.k_level), *qd = upload(r.q_doc), *kd = upload(r.k_doc),
          *qg = upload(r.q_group), *kg = upload(r.k_group);
  uint16_t *gq = upload(to_bf16(q)), *gk_in = upload(to_bf16(k)), *gv_in = upload(to_bf16(v)),
           *gdo = upload(to_bf16(dout));
  float *glse = upload(lse), *gdelta = upload(delta), *gdq = nullptr;
  uint16_t *gk = nullptr, *gv = nullptr;
  cudaMalloc(&gk, k.size() * 2);
  cudaMalloc(&gv, v.size() * 2);
  cudaMalloc(&gdq, q.size() * 4);
  const ark_block_mask mask{kTile, kTile, run_ptr, runs, bits, ql, kl, qd, kd, qg, kg, r.window};
  const ark_block_mask_keys keys{k_run_ptr, k_runs, tile_of};
  const int64_t qs[3] = {p.Hq * L * D, L * D, D}, ks[3] = {p.Hkv * S * D, S * D, D};

  // Both instances: dK / dV only, and with dQ added into a zeroed fp32 buffer.
  for (const bool with_dq : {false, true}) {
    cudaMemset(gk, 0xff, k.size() * 2);  // NaN: every row below S must be written
    cudaMemset(gv, 0xff, v.size() * 2);
    cudaMemset(gdq, 0, q.size() * 4);
    const ark_status st = ark_block_sparse_attention_bwd_dkdv(gq, gk_in, gv_in, gdo, glse, gdelta, gk, gv,
                                                              with_dq ? gdq : nullptr, p.B, p.Hq, p.Hkv, L, S, D, qs,
                                                              ks, ks, qs, &mask, &keys, scale, ARK_BFLOAT16,
                                                              ARK_DEVICE_CUDA, nullptr);
    EXPECT(st == ARK_SUCCESS, "%s (D %d, dq %d): %s", p.name, D, int(with_dq), ark_last_error_message());
    const cudaError_t err = cudaDeviceSynchronize();
    EXPECT(err == cudaSuccess, "%s (D %d, dq %d): launch: %s", p.name, D, int(with_dq), cudaGetErrorString(err));

    std::vector<uint16_t> hk(k.size()), hv(v.size());
    std::vector<float> got_dq(q.size());
    cudaMemcpy(hk.data(), gk, k.size() * 2, cudaMemcpyDeviceToHost);
    cudaMemcpy(hv.data(), gv, v.size() * 2, cudaMemcpyDeviceToHost);
    cudaMemcpy(got_dq.data(), gdq, q.size() * 4, cudaMemcpyDeviceToHost);
    std::vector<float> got_dk(k.size()), got_dv(v.size());
    for (size_t i = 0; i < k.size(); ++i) {
      got_dk[i] = bf16_to(hk[i]);
      got_dv[i] = bf16_to(hv[i]);
    }
    const double e_dk = rel_error(got_dk, want_dk), e_dv = rel_error(got_dv, want_dv);
    // Without dQ the buffer must stay untouched (zeros).
    const double e_dq = with_dq ? rel_error(got_dq, want_dq) : rel_error(got_dq, std::vector<double>(q.size(), 0.0));
    const bool ok = st == ARK_SUCCESS && err == cudaSuccess && e_dk <= 2e-2 && e_dv <= 2e-2 && e_dq <= 2e-2;
    std::printf("  %-28s D %3d %s: dK %.2e  dV %.2e  dQ %.2e  %s\n", p.name, D, with_dq ? "+dQ" : "   ", e_dk, e_dv,
                e_dq, ok ? "ok" : "FAILED");
    EXPECT(ok, "%s (D %d, dq %d): dK error %.3e, dV error %.3e, dQ error %.3e (bound 2e-2)", p.name, D, int(with_dq),
           e_dk, e_dv, e_dq);
  }
  for (void* ptr : std::initializer_list<void*>{(void*)run_ptr, (void*)runs, (void*)bits, (void*)k_run_ptr,
                                                (void*)k_runs, (void*)tile_of, (void*)ql, (void*)kl, (void*)qd,
                                                (void*)kd, (void*)qg, (void*)kg, (void*)gq, (void*)gk_in, (void*)gv_in,
                                                (void*)gdo, (void*)glse, (void*)gdelta, (void*)gk, (void*)gv,
                                                (void*)gdq})
    cudaFree(ptr);
}

MaskDef random_bits(int64_t L, int64_t S, unsigned seed) {
  MaskDef m;
  m.L = L;
  m.S = S;
  m.dense.resize(size_t(L * S));
  std::mt19937 gen(seed);
  for (int64_t i = 0; i < L; ++i)
    for (int64_t j = 0; j < S; ++j) {
      const int64_t tile = (i / 128) * 131 + (j / 128);
      const unsigned kind = unsigned(tile * 2654435761u) % 4;  // empty, full, sparse, dense tiles
      m.dense[size_t(i * S + j)] = kind == 1 || (kind == 2 && gen() % 5 == 0) || (kind == 3 && gen() % 5 != 0);
    }
  for (int64_t j = 0; j < S; ++j) m.dense[size_t(7 * S + j)] = 0;  // an empty row
  return m;
}

// What the C API refuses before any launch (no GPU needed): CPU tensors, a layout at another tiling, fp32. The
// pointers are never read: each refusal comes before the kernel would touch them.
void check_refusals() {
  static int32_t words[8];
  void* buf = words;  // 16-byte aligned, non-NULL
  const int64_t st[3] = {64 * 128, 128 * 64, 64};
  ark_block_mask mask{128, 128, words, words, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, -1};
  const ark_block_mask_keys keys{words, words, nullptr};
  const auto call = [&](ark_dtype dtype, ark_device device) {
    return ark_block_sparse_attention_bwd_dkdv(buf, buf, buf, buf, (const float*)buf, (const float*)buf, buf, buf,
                                               (float*)buf, 1, 1, 1, 128, 128, 64, st, st, st, st, &mask, &keys,
                                               0.125f, dtype, device, nullptr);
  };
  const struct {
    const char* what;
    ark_dtype dtype;
    ark_device device;
    int block_k;
    const char* message;
  } cases[] = {
      {"CPU tensors", ARK_BFLOAT16, ARK_DEVICE_CPU, 128, "CUDA devices only"},
      {"a 128 x 64 layout", ARK_BFLOAT16, ARK_DEVICE_CUDA, 64, "layouts at 128 x 128, got 128 x 64"},
      {"fp32", ARK_FLOAT32, ARK_DEVICE_CUDA, 128, "supports ARK_BFLOAT16 and ARK_FLOAT16, got"},
  };
  for (const auto& c : cases) {
    mask.block_k = c.block_k;
    const ark_status status = call(c.dtype, c.device);
    const char* msg = ark_last_error_message();
    EXPECT(status == ARK_ERROR_INVALID_ARGUMENT && std::strstr(msg, c.message) != nullptr,
           "%s: expected ARK_ERROR_INVALID_ARGUMENT naming \"%s\", got status %d: %s", c.what, c.message, int(status),
           msg);
  }
}

}  // namespace

constexpr int kSkipped = 77;  // SKIP_RETURN_CODE of the ctest entry

int main() {
  check_refusals();
  int devices = 0, major = 0, minor = 0;
  // Without an sm_90 GPU nothing is checked: exit code 77, which ctest reports as skipped (not passed).
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: the dK/dV kernel is not run (skipped)\n");
    return g_failures ? finish("test_block_sparse_attention_dkdv_sm90") : kSkipped;
  }
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0);
  if (major != 9 || minor != 0) {
    std::printf("not an sm_90 GPU (sm_%d%d): the dK/dV kernel is not run (skipped)\n", major, minor);
    return g_failures ? finish("test_block_sparse_attention_dkdv_sm90") : kSkipped;
  }
  Rule all = causal_rule(128, 256);
  std::fill(all.q_level.begin(), all.q_level.end(), 0);
  std::fill(all.k_level.begin(), all.k_level.end(), 0);
  Rule docs = causal_rule(700, 700);
  for (int64_t i = 0; i < 700; ++i) docs.q_doc.push_back(int32_t(i < 100 ? 0 : i < 433 ? 1 : i < 440 ? 2 : 3));
  docs.k_doc = docs.q_doc;
  const Problem problems[] = {
      {"every pair visible", 1, 1, 1, 0, rule_mask(128, 256, all), Partial::kRule},
      {"causal GQA", 2, 4, 2, 0, rule_mask(300, 300, causal_rule(300, 300)), Partial::kRule},
      {"causal S > L", 1, 2, 2, 0, rule_mask(200, 333, causal_rule(200, 333)), Partial::kRule},
      {"sliding window 100", 1, 2, 1, 0, rule_mask(600, 600, causal_rule(600, 600, 100)), Partial::kRule},
      {"documents", 1, 2, 2, 0, rule_mask(700, 700, docs), Partial::kRule},
      {"SCAM (groups), mixed", 1, 2, 1, 0, rule_mask(512, 512, skip_causal_rule(4, 64)), Partial::kMixed},
      {"random bitmaps", 1, 2, 2, 0, random_bits(400, 450, 7), Partial::kBits},
      // No query head: dK and dV are zeros (written, not left poisoned), no launch over an empty q.
      {"no q heads", 1, 0, 1, 0, rule_mask(200, 300, causal_rule(200, 300)), Partial::kRule},
  };
  unsigned seed = 1;
  for (const Problem& p0 : problems) {
    for (const int64_t D : {int64_t(64), int64_t(128)}) {
      Problem p = p0;
      p.D = D;
      run(p, seed++);
    }
  }
  return finish("test_block_sparse_attention_dkdv_sm90");
}
