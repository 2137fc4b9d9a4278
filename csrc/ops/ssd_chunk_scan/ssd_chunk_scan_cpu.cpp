// ssd_chunk_scan on the CPU: the recurrence token by token, one (state sequence, head) pair per
// OpenMP task; fp32 state and accumulators. Also the oracle of the C API test.
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/half_convert.hpp"
#include "ops/ssd_chunk_scan/ssd_chunk_scan.hpp"

namespace ark {
namespace {

// One (state sequence, head) pair: its tokens [t0, t1) of batch row `row`, its state index `k`.
struct Unit {
  int64_t row, t0, t1, k, hh, gg;
};

struct Dims {
  int64_t L, H, P, G, N, heads_per_group, n_states;
  explicit Dims(const ark_ssd_chunk_scan_args& a)
      : L(a.seqlen), H(a.nheads), P(a.headdim), G(a.ngroups), N(a.dstate),
        heads_per_group(a.ngroups > 0 ? a.nheads / a.ngroups : 0),
        n_states(a.cu_seqlens ? a.num_seqs : a.batch) {}
  int64_t units() const { return n_states * H; }
  Unit unit(const ark_ssd_chunk_scan_args& a, int64_t u) const {
    const int64_t k = u / H, hh = u % H;
    if (a.cu_seqlens) return {0, a.cu_seqlens[k], a.cu_seqlens[k + 1], k, hh, hh / heads_per_group};
    return {k, 0, L, k, hh, hh / heads_per_group};
  }
};

float softplus(float u) { return u <= 20.0f ? std::log1p(std::exp(u)) : u; }
float sigmoid(float u) { return 1.0f / (1.0f + std::exp(-u)); }

// Processed dt and its derivative with respect to the raw dt.
struct Dt {
  float dt, grad;
};

Dt process_dt(const ark_ssd_chunk_scan_args& a, int64_t idx, int64_t hh) {
  float u = a.dt[idx] + (a.dt_bias ? a.dt_bias[hh] : 0.0f);
  float s = u, grad = 1.0f;
  if (a.dt_softplus) {
    s = softplus(u);
    grad = u <= 20.0f ? sigmoid(u) : 1.0f;
  }
  if (s < a.dt_min || s > a.dt_max) grad = 0.0f;
  return {std::min(std::max(s, a.dt_min), a.dt_max), grad};
}

// True when the state is reset to zero before token t of `row` (seq_idx changes there).
bool reset_at(const ark_ssd_chunk_scan_args& a, int64_t row, int64_t t) {
  if (!a.seq_idx || a.cu_seqlens || t == 0) return false;
  const int64_t* s = a.seq_idx + row * a.seqlen;
  return s[t] != s[t - 1];
}

template <typename T>
void load_row(const T* src, int64_t count, float* dst) {
  for (int64_t i = 0; i < count; ++i) dst[i] = to_float(src[i]);
}

// Below this many state updates per unit, thread start-up costs more than it saves.
constexpr int64_t kParallelMinWork = 1 << 16;

template <typename T>
void fwd(const ark_ssd_chunk_scan_args& a, T* out, float* final_states) {
  const Dims d(a);
  const T* x = static_cast<const T*>(a.x);
  const T* Bp = static_cast<const T*>(a.B);
  const T* Cp = static_cast<const T*>(a.C);
  const T* z = static_cast<const T*>(a.z);
  const int64_t PN = d.P * d.N;
#pragma omp parallel for schedule(dynamic) if (a.batch * a.seqlen * PN >= kParallelMinWork)
  for (int64_t u = 0; u < d.units(); ++u) {
    const Unit w = d.unit(a, u);
    std::vector<float> S(PN, 0.0f), xs(d.P), bs(d.N), cs(d.N);
    if (a.initial_states) std::copy_n(a.initial_states + (w.k * d.H + w.hh) * PN, PN, S.begin());
    for (int64_t t = w.t0; t < w.t1; ++t) {
      if (reset_at(a, w.row, t)) std::fill(S.begin(), S.end(), 0.0f);
      const int64_t tok = w.row * d.L + t;
      const Dt dt = process_dt(a, tok * d.H + w.hh, w.hh);
      const float decay = std::exp(dt.dt * a.A[w.hh]);
      const int64_t xo = (tok * d.H + w.hh) * d.P;
      load_row(x + xo, d.P, xs.data());
      load_row(Bp + (tok * d.G + w.gg) * d.N, d.N, bs.data());
      load_row(Cp + (tok * d.G + w.gg) * d.N, d.N, cs.data());
      for (int64_t p = 0; p < d.P; ++p) {
        float* Sp = S.data() + p * d.N;
        const float xdt = dt.dt * xs[p];
        float y = 0.0f;
        for (int64_t n = 0; n < d.N; ++n) {
          Sp[n] = decay * Sp[n] + xdt * bs[n];
          y += Sp[n] * cs[n];
        }
        if (a.D) y += a.D[w.hh * d.P + p] * xs[p];
        if (z) {
          const float zv = to_float(z[xo + p]);
          y *= zv * sigmoid(zv);
        }
        out[xo + p] = from_float<T>(y);
      }
    }
    if (final_states) std::copy(S.begin(), S.end(), final_states + (w.k * d.H + w.hh) * PN);
  }
}

// Per-unit partial sums of the backward, reduced over units in a fixed order afterwards.
struct Partials {
  std::vector<float> dB_head, dC_head;  // (batch, seqlen, nheads, dstate)
  std::vector<float> dA, ddt_bias;      // (n_states, nheads)
  std::vector<float> dD;                // (n_states, nheads, headdim)
};

template <typename T>
void bwd(const ark_ssd_chunk_scan_args& a, const SsdChunkScanGrads& g) {
  const Dims d(a);
  const T* x = static_cast<const T*>(a.x);
  const T* Bp = static_cast<const T*>(a.B);
  const T* Cp = static_cast<const T*>(a.C);
  const T* z = static_cast<const T*>(a.z);
  const T* gout = static_cast<const T*>(g.grad_out);
  T* dx = static_cast<T*>(g.dx);
  T* dz = static_cast<T*>(g.dz);
  const int64_t PN = d.P * d.N;
  const int64_t n_tok = a.batch * d.L;
  Partials part;
  part.dB_head.assign(n_tok * d.H * d.N, 0.0f);
  part.dC_head.assign(n_tok * d.H * d.N, 0.0f);
  part.dA.assign(d.units(), 0.0f);
  part.ddt_bias.assign(d.units(), 0.0f);
  part.dD.assign(d.units() * d.P, 0.0f);

#pragma omp parallel for schedule(dynamic) if (a.batch * a.seqlen * PN >= kParallelMinWork)
  for (int64_t u = 0; u < d.units(); ++u) {
    const Unit w = d.unit(a, u);
    const int64_t len = w.t1 - w.t0;
    // Checkpoints: the state before every block of K tokens; a block's states are recomputed from
    // its checkpoint when the reverse sweep reaches it. Memory O((len / K + K) P N) per unit.
    const int64_t K = std::min<int64_t>(256, std::max<int64_t>(16, (int64_t)std::ceil(std::sqrt((double)len))));
    const int64_t n_blocks = (len + K - 1) / K;
    std::vector<float> ckpt(std::max<int64_t>(n_blocks, 1) * PN), S(PN, 0.0f), Gs(PN, 0.0f);
    std::vector<float> block(K * PN), xs(d.P), bs(d.N), cs(d.N), dy(d.P), dxs(d.P);
    std::vector<Dt> dts(K);
    if (a.initial_states) std::copy_n(a.initial_states + (w.k * d.H + w.hh) * PN, PN, S.begin());
    const float A = a.A[w.hh];

    // One forward step from S (in place); also returns the processed dt.
    auto step = [&](int64_t t, float* state) {
      if (reset_at(a, w.row, t)) std::fill(state, state + PN, 0.0f);
      const int64_t tok = w.row * d.L + t;
      const Dt dt = process_dt(a, tok * d.H + w.hh, w.hh);
      const float decay = std::exp(dt.dt * A);
      load_row(x + (tok * d.H + w.hh) * d.P, d.P, xs.data());
      load_row(Bp + (tok * d.G + w.gg) * d.N, d.N, bs.data());
      for (int64_t p = 0; p < d.P; ++p) {
        const float xdt = dt.dt * xs[p];
        float* Sp = state + p * d.N;
        for (int64_t n = 0; n < d.N; ++n) Sp[n] = decay * Sp[n] + xdt * bs[n];
      }
      return dt;
    };

    for (int64_t i = 0; i < n_blocks; ++i) {
      std::copy(S.begin(), S.end(), ckpt.begin() + i * PN);
      for (int64_t t = w.t0 + i * K; t < std::min(w.t1, w.t0 + (i + 1) * K); ++t) step(t, S.data());
    }
    if (g.grad_final) std::copy_n(g.grad_final + (w.k * d.H + w.hh) * PN, PN, Gs.begin());

    float dA_acc = 0.0f, dtb_acc = 0.0f;
    float* dD_acc = part.dD.data() + u * d.P;
    for (int64_t i = n_blocks - 1; i >= 0; --i) {
      const int64_t b0 = w.t0 + i * K, b1 = std::min(w.t1, b0 + K);
      // States after every token of the block.
      std::copy_n(ckpt.begin() + i * PN, PN, S.begin());
      for (int64_t t = b0; t < b1; ++t) {
        dts[t - b0] = step(t, S.data());
        std::copy(S.begin(), S.end(), block.begin() + (t - b0) * PN);
      }
      for (int64_t t = b1 - 1; t >= b0; --t) {
        const int64_t tok = w.row * d.L + t;
        const int64_t xo = (tok * d.H + w.hh) * d.P;
        const float* St = block.data() + (t - b0) * PN;
        const bool reset = reset_at(a, w.row, t);
        const float* Sprev = t > b0 ? block.data() + (t - b0 - 1) * PN : ckpt.data() + i * PN;
        const Dt dt = dts[t - b0];
        const float decay = std::exp(dt.dt * A);
        load_row(x + xo, d.P, xs.data());
        load_row(Bp + (tok * d.G + w.gg) * d.N, d.N, bs.data());
        load_row(Cp + (tok * d.G + w.gg) * d.N, d.N, cs.data());
        // y_t = S_t C_t + D x_t, out = y * silu(z): the gradient reaching y, and dz.
        for (int64_t p = 0; p < d.P; ++p) {
          float go = to_float(gout[xo + p]);
          if (z) {
            float y = 0.0f;
            for (int64_t n = 0; n < d.N; ++n) y += St[p * d.N + n] * cs[n];
            if (a.D) y += a.D[w.hh * d.P + p] * xs[p];
            const float zv = to_float(z[xo + p]), sg = sigmoid(zv);
            dz[xo + p] = from_float<T>(go * y * sg * (1.0f + zv * (1.0f - sg)));
            go *= zv * sg;
          }
          dy[p] = go;
        }
        float* dCh = part.dC_head.data() + (tok * d.H + w.hh) * d.N;
        float* dBh = part.dB_head.data() + (tok * d.H + w.hh) * d.N;
        float ddt = 0.0f, da = 0.0f;
        for (int64_t p = 0; p < d.P; ++p) {
          float* Gp = Gs.data() + p * d.N;
          const float* Sp = St + p * d.N;
          float gb = 0.0f;
          for (int64_t n = 0; n < d.N; ++n) {
            dCh[n] += Sp[n] * dy[p];
            Gp[n] += dy[p] * cs[n];  // G = dL/dS_t
            gb += Gp[n] * bs[n];
            dBh[n] += dt.dt * Gp[n] * xs[p];
          }
          dxs[p] = dt.dt * gb;
          ddt += xs[p] * gb;
          if (a.D) {
            dxs[p] += a.D[w.hh * d.P + p] * dy[p];
            dD_acc[p] += dy[p] * xs[p];
          }
          if (!reset) {
            const float* Sq = Sprev + p * d.N;
            for (int64_t n = 0; n < d.N; ++n) da += Gp[n] * Sq[n];
          }
        }
        for (int64_t p = 0; p < d.P; ++p) dx[xo + p] = from_float<T>(dxs[p]);
        ddt += da * decay * A;
        dA_acc += da * decay * dt.dt;
        const float ddt_raw = ddt * dt.grad;
        g.ddt[tok * d.H + w.hh] = ddt_raw;
        dtb_acc += ddt_raw;
        // dL/dS_{t-1}: through the decay, or nothing across a reset.
        const float carry = reset ? 0.0f : decay;
        for (float& v : Gs) v *= carry;
      }
    }
    if (g.dinit) std::copy(Gs.begin(), Gs.end(), g.dinit + (w.k * d.H + w.hh) * PN);
    part.dA[u] = dA_acc;
    part.ddt_bias[u] = dtb_acc;
  }

  // Fixed-order reductions: over the heads of a group (dB, dC) and over state sequences.
  T* dB = static_cast<T*>(g.dB);
  T* dC = static_cast<T*>(g.dC);
  for (int64_t tok = 0; tok < n_tok; ++tok)
    for (int64_t gg = 0; gg < d.G; ++gg)
      for (int64_t n = 0; n < d.N; ++n) {
        float sb = 0.0f, sc = 0.0f;
        for (int64_t j = 0; j < d.heads_per_group; ++j) {
          const int64_t hh = gg * d.heads_per_group + j;
          sb += part.dB_head[(tok * d.H + hh) * d.N + n];
          sc += part.dC_head[(tok * d.H + hh) * d.N + n];
        }
        dB[(tok * d.G + gg) * d.N + n] = from_float<T>(sb);
        dC[(tok * d.G + gg) * d.N + n] = from_float<T>(sc);
      }
  for (int64_t hh = 0; hh < d.H; ++hh) {
    float sa = 0.0f, sb = 0.0f;
    for (int64_t k = 0; k < d.n_states; ++k) {
      sa += part.dA[k * d.H + hh];
      sb += part.ddt_bias[k * d.H + hh];
    }
    g.dA[hh] = sa;
    if (g.ddt_bias) g.ddt_bias[hh] = sb;
    if (g.dD)
      for (int64_t p = 0; p < d.P; ++p) {
        float s = 0.0f;
        for (int64_t k = 0; k < d.n_states; ++k) s += part.dD[(k * d.H + hh) * d.P + p];
        g.dD[hh * d.P + p] = s;
      }
  }
}

}  // namespace

void ssd_chunk_scan_fwd_cpu(const ark_ssd_chunk_scan_args& a, void* out, float* final_states) {
  switch (a.dtype) {
    case ARK_FLOAT32: return fwd<float>(a, static_cast<float*>(out), final_states);
    case ARK_FLOAT16: return fwd<fp16_bits>(a, static_cast<fp16_bits*>(out), final_states);
    case ARK_BFLOAT16: return fwd<bf16_bits>(a, static_cast<bf16_bits*>(out), final_states);
  }
}

void ssd_chunk_scan_bwd_cpu(const ark_ssd_chunk_scan_args& a, const SsdChunkScanGrads& g) {
  switch (a.dtype) {
    case ARK_FLOAT32: return bwd<float>(a, g);
    case ARK_FLOAT16: return bwd<fp16_bits>(a, g);
    case ARK_BFLOAT16: return bwd<bf16_bits>(a, g);
  }
}

}  // namespace ark
