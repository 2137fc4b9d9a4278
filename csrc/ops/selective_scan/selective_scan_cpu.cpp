// selective_scan on the CPU: each channel's recurrence walked in time order, fp32 math.
// Forward: OpenMP over (sequence, channel) rows. Backward: OpenMP over blocks of kCpuRowsPerBlock
// channels; each block recomputes its rows' states, runs the adjoint recurrence and adds its dB/dC
// terms into its own workspace slice, which are summed in a fixed order afterwards (deterministic).
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/half_convert.hpp"
#include "ops/selective_scan/selective_scan.cuh"

namespace ark {
namespace {

template <typename T> inline float ldf(const void* p, int64_t i) { return to_float(static_cast<const T*>(p)[i]); }
template <typename T> inline void stf(void* p, int64_t i, float v) { static_cast<T*>(p)[i] = from_float<T>(v); }

inline float softplus(float x) { return x <= 20.f ? std::log1p(std::exp(x)) : x; }
inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }
inline float silu(float x) { return x * sigmoid(x); }

// The steps [t_begin, t_end) of batch row `b` that form one sequence, and where its states live.
struct Segment {
  int64_t b, t_begin, t_end, state_row_seq;  // state rows: state_row_seq * dim + d
};

std::vector<Segment> segments(const ark_selective_scan_args& a) {
  std::vector<Segment> out;
  if (a.cu_seqlens) {
    for (int64_t s = 0; s < a.num_seqs; ++s) out.push_back({0, a.cu_seqlens[s], a.cu_seqlens[s + 1], s});
  } else {
    for (int64_t b = 0; b < a.batch; ++b) out.push_back({b, 0, a.seqlen, b});
  }
  return out;
}

// Per-step inputs of one channel, as fp32.
template <typename T> struct RowInputs {
  const ark_selective_scan_args& a;
  int64_t b, d, g;
  int64_t idx(int64_t t) const { return (b * a.dim + d) * a.seqlen + t; }
  float u(int64_t t) const { return ldf<T>(a.u, idx(t)); }
  float raw_delta(int64_t t) const { return ldf<T>(a.delta, idx(t)) + (a.delta_bias ? a.delta_bias[d] : 0.f); }
  float delta(int64_t t) const {
    const float x = raw_delta(t);
    return a.delta_softplus ? softplus(x) : x;
  }
  float B(int64_t n, int64_t t) const { return bc<true>(n, t); }
  float C(int64_t n, int64_t t) const { return bc<false>(n, t); }
  template <bool IS_B> float bc(int64_t n, int64_t t) const {
    const bool variable = IS_B ? a.B_variable : a.C_variable;
    const void* p = IS_B ? a.B : a.C;
    if (!variable) return static_cast<const float*>(p)[d * a.dstate + n];
    return ldf<T>(p, ((b * a.ngroups + g) * a.dstate + n) * a.seqlen + t);
  }
};

template <typename T> void fwd_rows(const ark_selective_scan_args& a) {
  const std::vector<Segment> segs = segments(a);
  const int64_t nseg = int64_t(segs.size()), N = a.dstate, per_group = a.dim / a.ngroups;
  const int64_t nck = ceil_div(a.seqlen, kScanCheckpoint);
#pragma omp parallel for schedule(dynamic)
  for (int64_t job = 0; job < nseg * a.dim; ++job) {
    const Segment& sg = segs[job / a.dim];
    const int64_t d = job % a.dim;
    const RowInputs<T> in{a, sg.b, d, d / per_group};
    std::vector<float> h(N, 0.f);
    const int64_t srow = sg.state_row_seq * a.dim + d;
    if (a.initial_state)
      for (int64_t n = 0; n < N; ++n) h[n] = a.initial_state[srow * N + n];
    for (int64_t t = sg.t_begin; t < sg.t_end; ++t) {
      const float dl = in.delta(t), u = in.u(t);
      float y = a.D ? a.D[d] * u : 0.f;
      for (int64_t n = 0; n < N; ++n) {
        h[n] = std::exp(dl * a.A[d * N + n]) * h[n] + dl * u * in.B(n, t);
        y += in.C(n, t) * h[n];
      }
      if (a.z) {
        if (a.y_pre) stf<T>(a.y_pre, in.idx(t), y);
        y *= silu(ldf<T>(a.z, in.idx(t)));
      }
      stf<T>(a.out, in.idx(t), y);
      // Checkpoints are kept at tile ends (the CUDA backward's restart points; the CPU has no use
      // for them, but writes the same buffer so that both paths fill what they are given).
      if (a.checkpoints && ((t + 1) % kScanCheckpoint == 0 || t + 1 == a.seqlen))
        for (int64_t n = 0; n < N; ++n) a.checkpoints[((sg.b * a.dim + d) * nck + t / kScanCheckpoint) * N + n] = h[n];
    }
    if (a.last_state)
      for (int64_t n = 0; n < N; ++n) a.last_state[srow * N + n] = h[n];
  }
}

template <typename T> void bwd_blocks(const ark_selective_scan_args& a, float* ws) {
  const ScanWorkspace w = scan_workspace(a, kCpuRowsPerBlock);
  const std::vector<Segment> segs = segments(a);
  const int64_t N = a.dstate, L = a.seqlen, per_group = a.dim / a.ngroups;
  const int64_t blocks = a.batch * a.ngroups * w.row_blocks;
#pragma omp parallel for schedule(dynamic)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t rb = blk % w.row_blocks, g = (blk / w.row_blocks) % a.ngroups, b = blk / (w.row_blocks * a.ngroups);
    float* dB_rows = a.B_variable ? ws + w.dB_rows + (blk * N) * L : nullptr;
    float* dC_rows = a.C_variable ? ws + w.dC_rows + (blk * N) * L : nullptr;
    if (dB_rows) std::fill(dB_rows, dB_rows + N * L, 0.f);
    if (dC_rows) std::fill(dC_rows, dC_rows + N * L, 0.f);
    std::vector<float> hist, g_state(N), dA(N), dBc(N), dCc(N);
    for (int64_t d = g * per_group + rb * kCpuRowsPerBlock; d < std::min((g + 1) * per_group, g * per_group + (rb + 1) * kCpuRowsPerBlock); ++d) {
      const RowInputs<T> in{a, b, d, g};
      std::fill(dA.begin(), dA.end(), 0.f);
      std::fill(dBc.begin(), dBc.end(), 0.f);
      std::fill(dCc.begin(), dCc.end(), 0.f);
      float dD = 0.f, dbias = 0.f;
      for (const Segment& sg : segs) {
        if (sg.b != b) continue;
        const int64_t len = sg.t_end - sg.t_begin, srow = sg.state_row_seq * a.dim + d;
        // States h[-1 .. len-1] of this sequence, recomputed.
        hist.assign((len + 1) * N, 0.f);
        if (a.initial_state)
          for (int64_t n = 0; n < N; ++n) hist[n] = a.initial_state[srow * N + n];
        for (int64_t i = 0; i < len; ++i) {
          const int64_t t = sg.t_begin + i;
          const float dl = in.delta(t), du = dl * in.u(t);
          for (int64_t n = 0; n < N; ++n)
            hist[(i + 1) * N + n] = std::exp(dl * a.A[d * N + n]) * hist[i * N + n] + du * in.B(n, t);
        }
        for (int64_t n = 0; n < N; ++n) g_state[n] = a.dlast_state ? a.dlast_state[srow * N + n] : 0.f;
        for (int64_t i = len - 1; i >= 0; --i) {
          const int64_t t = sg.t_begin + i, idx = in.idx(t);
          const float raw = in.raw_delta(t), dl = a.delta_softplus ? softplus(raw) : raw;
          const float slope = a.delta_softplus ? (raw <= 20.f ? sigmoid(raw) : 1.f) : 1.f;
          const float u = in.u(t), du_ = dl * u;
          float dy = ldf<T>(a.dout, idx);
          if (a.z) {
            const float zv = ldf<T>(a.z, idx), s = sigmoid(zv);
            stf<T>(a.dz, idx, dy * ldf<T>(a.y_pre, idx) * s * (1.f + zv * (1.f - s)));
            dy *= zv * s;
          }
          float p1 = 0.f, p2 = 0.f;
          for (int64_t n = 0; n < N; ++n) {
            const float An = a.A[d * N + n], at = std::exp(dl * An);
            const float dh = g_state[n] + in.C(n, t) * dy;
            const float pb = dh * du_, pc = dy * hist[(i + 1) * N + n];
            if (dB_rows) dB_rows[n * L + t] += pb; else dBc[n] += pb;
            if (dC_rows) dC_rows[n * L + t] += pc; else dCc[n] += pc;
            p1 += dh * in.B(n, t);
            const float wgt = dh * hist[i * N + n] * at;
            p2 += wgt * An;
            dA[n] += wgt * dl;
            g_state[n] = at * dh;
          }
          const float ddelta = (u * p1 + p2) * slope;
          stf<T>(a.du, idx, dl * p1 + (a.D ? a.D[d] * dy : 0.f));
          stf<T>(a.ddelta, idx, ddelta);
          dD += dy * u;
          dbias += ddelta;
        }
        if (a.dinitial_state)
          for (int64_t n = 0; n < N; ++n) a.dinitial_state[srow * N + n] = g_state[n];
      }
      const int64_t prow = b * a.dim + d;
      for (int64_t n = 0; n < N; ++n) {
        ws[w.dA + prow * N + n] = dA[n];
        if (!a.B_variable) ws[w.dB_const + prow * N + n] = dBc[n];
        if (!a.C_variable) ws[w.dC_const + prow * N + n] = dCc[n];
      }
      ws[w.dD + prow] = dD;
      ws[w.ddelta_bias + prow] = dbias;
    }
  }
}

// out[o, i] = sum_m part[o, m, i], in order.
template <typename T> void sum_middle(const float* part, void* out, int64_t O, int64_t M, int64_t I) {
#pragma omp parallel for
  for (int64_t idx = 0; idx < O * I; ++idx) {
    const int64_t o = idx / I, i = idx % I;
    float s = 0.f;
    for (int64_t m = 0; m < M; ++m) s += part[(o * M + m) * I + i];
    stf<T>(out, idx, s);
  }
}

template <typename T> void bwd(const ark_selective_scan_args& a, float* ws) {
  bwd_blocks<T>(a, ws);
  const ScanWorkspace w = scan_workspace(a, kCpuRowsPerBlock);
  const int64_t per_group = a.batch * a.ngroups, NL = a.dstate * a.seqlen, DN = a.dim * a.dstate;
  if (a.B_variable) sum_middle<T>(ws + w.dB_rows, a.dB, per_group, w.row_blocks, NL);
  else sum_middle<float>(ws + w.dB_const, a.dB, 1, a.batch, DN);
  if (a.C_variable) sum_middle<T>(ws + w.dC_rows, a.dC, per_group, w.row_blocks, NL);
  else sum_middle<float>(ws + w.dC_const, a.dC, 1, a.batch, DN);
  sum_middle<float>(ws + w.dA, a.dA, 1, a.batch, DN);
  if (a.D) sum_middle<float>(ws + w.dD, a.dD, 1, a.batch, a.dim);
  if (a.delta_bias) sum_middle<float>(ws + w.ddelta_bias, a.ddelta_bias, 1, a.batch, a.dim);
}

}  // namespace

void selective_scan_fwd_cpu(const ark_selective_scan_args& a) {
  switch (a.dtype) {
    case ARK_FLOAT32: fwd_rows<float>(a); break;
    case ARK_FLOAT16: fwd_rows<fp16_bits>(a); break;
    case ARK_BFLOAT16: fwd_rows<bf16_bits>(a); break;
  }
}

void selective_scan_bwd_cpu(const ark_selective_scan_args& a, float* workspace) {
  switch (a.dtype) {
    case ARK_FLOAT32: bwd<float>(a, workspace); break;
    case ARK_FLOAT16: bwd<fp16_bits>(a, workspace); break;
    case ARK_BFLOAT16: bwd<bf16_bits>(a, workspace); break;
  }
}

}  // namespace ark
