// C API test of ssd_chunk_scan: links only libarkernels (no torch). The CPU forward against a
// double-precision loop, the backward against central finite differences of that loop, seq_idx and
// cu_seqlens resets, and the argument checks. Exit code 0 = pass.
#include <arkernels/arkernels.h>

#include "capi_test_util.hpp"

#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <vector>

namespace {



struct Problem {
  int64_t b, l, h, p, g, n, states;
  std::vector<float> x, dt, A, B, C, D, z, dt_bias, init, w_out, w_final;
  std::vector<int64_t> seq_idx, cu;
  bool softplus = true;
  float dt_min = 0.0f, dt_max = INFINITY;
};

Problem make(int64_t b, int64_t l, int64_t h, int64_t p, int64_t g, int64_t n, std::vector<int64_t> cu, bool seq,
             unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nrm(0.0f, 1.0f);
  std::uniform_real_distribution<float> uni(0.0f, 1.0f);
  Problem q{b, l, h, p, g, n, cu.empty() ? b : int64_t(cu.size()) - 1, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, cu};
  auto fill = [&](std::vector<float>& v, int64_t size, float scale, float shift) {
    v.resize(size);
    for (auto& e : v) e = nrm(rng) * scale + shift;
  };
  fill(q.x, b * l * h * p, 1.0f, 0.0f);
  fill(q.dt, b * l * h, 1.0f, -2.5f);
  q.A.resize(h);
  for (auto& e : q.A) e = -(0.1f + 2.0f * uni(rng));
  fill(q.B, b * l * g * n, 1.0f, 0.0f);
  fill(q.C, b * l * g * n, 1.0f, 0.0f);
  fill(q.D, h * p, 1.0f, 0.0f);
  fill(q.z, b * l * h * p, 1.0f, 0.0f);
  fill(q.dt_bias, h, 0.5f, 0.0f);
  fill(q.init, q.states * h * p * n, 1.0f, 0.0f);
  fill(q.w_out, b * l * h * p, 1.0f, 0.0f);
  fill(q.w_final, q.states * h * p * n, 1.0f, 0.0f);
  if (seq) {
    q.seq_idx.resize(b * l);
    for (int64_t r = 0; r < b; ++r)
      for (int64_t t = 0; t < l; ++t) q.seq_idx[r * l + t] = t < l / 3 ? 0 : (t < l / 2 + r ? 1 : 7);
  }
  return q;
}

// The definition in double precision: returns sum(w_out * out) + sum(w_final * final).
double loss_ref(const Problem& q, std::vector<double>* out = nullptr, std::vector<double>* final = nullptr) {
  const int64_t hpg = q.h / q.g;
  double loss = 0.0;
  if (out) out->assign(q.b * q.l * q.h * q.p, 0.0);
  if (final) final->assign(q.states * q.h * q.p * q.n, 0.0);
  for (int64_t k = 0; k < q.states; ++k)
    for (int64_t hh = 0; hh < q.h; ++hh) {
      const int64_t row = q.cu.empty() ? k : 0, t0 = q.cu.empty() ? 0 : q.cu[k], t1 = q.cu.empty() ? q.l : q.cu[k + 1];
      std::vector<double> S(q.p * q.n);
      for (int64_t i = 0; i < q.p * q.n; ++i) S[i] = q.init[(k * q.h + hh) * q.p * q.n + i];
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t tok = row * q.l + t, gg = hh / hpg;
        if (q.cu.empty() && !q.seq_idx.empty() && t > 0 && q.seq_idx[tok] != q.seq_idx[tok - 1])
          std::fill(S.begin(), S.end(), 0.0);
        double u = double(q.dt[tok * q.h + hh]) + q.dt_bias[hh];
        if (q.softplus && u <= 20.0) u = std::log1p(std::exp(u));
        const double dt = std::min(std::max(u, double(q.dt_min)), double(q.dt_max));
        const double a = std::exp(dt * q.A[hh]);
        for (int64_t pp = 0; pp < q.p; ++pp) {
          const double xv = q.x[(tok * q.h + hh) * q.p + pp];
          double y = 0.0;
          for (int64_t nn = 0; nn < q.n; ++nn) {
            double& s = S[pp * q.n + nn];
            s = a * s + dt * xv * q.B[(tok * q.g + gg) * q.n + nn];
            y += s * q.C[(tok * q.g + gg) * q.n + nn];
          }
          y += q.D[hh * q.p + pp] * xv;
          const double zv = q.z[(tok * q.h + hh) * q.p + pp];
          y *= zv / (1.0 + std::exp(-zv));
          const int64_t o = (tok * q.h + hh) * q.p + pp;
          if (out) (*out)[o] = y;
          loss += q.w_out[o] * y;
        }
      }
      for (int64_t i = 0; i < q.p * q.n; ++i) {
        const int64_t o = (k * q.h + hh) * q.p * q.n + i;
        if (final) (*final)[o] = S[i];
        loss += q.w_final[o] * S[i];
      }
    }
  return loss;
}

ark_ssd_chunk_scan_args args_of(const Problem& q) {
  ark_ssd_chunk_scan_args a{};
  a.batch = q.b; a.seqlen = q.l; a.nheads = q.h; a.headdim = q.p; a.ngroups = q.g; a.dstate = q.n;
  a.dtype = ARK_FLOAT32;
  a.x = q.x.data(); a.dt = q.dt.data(); a.A = q.A.data(); a.B = q.B.data(); a.C = q.C.data();
  a.D = q.D.data(); a.z = q.z.data(); a.dt_bias = q.dt_bias.data(); a.initial_states = q.init.data();
  a.seq_idx = q.seq_idx.empty() ? nullptr : q.seq_idx.data();
  a.cu_seqlens = q.cu.empty() ? nullptr : q.cu.data();
  a.num_seqs = q.cu.empty() ? 0 : int64_t(q.cu.size()) - 1;
  a.dt_softplus = q.softplus ? 1 : 0; a.dt_min = q.dt_min; a.dt_max = q.dt_max;
  return a;
}

double rel_err(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1.0));
}

void check_problem(const char* name, Problem q) {
  ark_ssd_chunk_scan_args a = args_of(q);
  std::vector<float> out(q.x.size()), final(q.init.size());
  EXPECT(ark_ssd_chunk_scan_fwd(&a, out.data(), final.data(), ARK_DEVICE_CPU, nullptr) == ARK_SUCCESS, "%s fwd: %s",
         name, ark_last_error_message());
  std::vector<double> ro, rf;
  loss_ref(q, &ro, &rf);
  EXPECT(rel_err(out, ro) < 1e-5, "%s out: relative error %g", name, rel_err(out, ro));
  EXPECT(rel_err(final, rf) < 1e-5, "%s final: relative error %g", name, rel_err(final, rf));

  std::vector<float> dx(q.x.size()), ddt(q.dt.size()), dA(q.h), dB(q.B.size()), dC(q.C.size()), dD(q.D.size()),
      dz(q.z.size()), dtb(q.h), dinit(q.init.size());
  EXPECT(ark_ssd_chunk_scan_bwd(&a, q.w_out.data(), q.w_final.data(), dx.data(), ddt.data(), dA.data(), dB.data(),
                                dC.data(), dD.data(), dz.data(), dtb.data(), dinit.data(), ARK_DEVICE_CPU,
                                nullptr) == ARK_SUCCESS,
         "%s bwd: %s", name, ark_last_error_message());
  // Central differences of the double loop, a few entries of every input.
  struct Probe { const char* what; std::vector<float>* in; const std::vector<float>* grad; };
  std::vector<Probe> probes = {{"x", &q.x, &dx}, {"dt", &q.dt, &ddt}, {"A", &q.A, &dA}, {"B", &q.B, &dB},
                               {"C", &q.C, &dC}, {"D", &q.D, &dD}, {"z", &q.z, &dz}, {"dt_bias", &q.dt_bias, &dtb},
                               {"init", &q.init, &dinit}};
  for (const Probe& pr : probes) {
    const size_t size = pr.in->size();
    for (size_t i : {size_t(0), size / 3, size / 2 + 1, size - 1}) {
      if (i >= size) continue;
      const float keep = (*pr.in)[i];
      const double eps = 1e-3 * std::max(1.0, std::fabs(double(keep)));
      (*pr.in)[i] = float(keep + eps);
      const double up = loss_ref(q);
      (*pr.in)[i] = float(keep - eps);
      const double down = loss_ref(q);
      (*pr.in)[i] = keep;
      const double fd = (up - down) / (double(float(keep + eps)) - double(float(keep - eps)));
      const double got = (*pr.grad)[i];
      EXPECT(std::fabs(got - fd) <= 2e-3 * std::max(1.0, std::fabs(fd)), "%s grad of %s[%zu]: %g, differences %g",
             name, pr.what, i, got, fd);
    }
  }
}

void check_bad_arguments() {
  Problem q = make(1, 5, 2, 4, 1, 4, {}, false, 3);
  std::vector<float> out(q.x.size()), final(q.init.size());
  ark_ssd_chunk_scan_args a = args_of(q);
  a.ngroups = 3;
  EXPECT(ark_ssd_chunk_scan_fwd(&a, out.data(), final.data(), ARK_DEVICE_CPU, nullptr) == ARK_ERROR_INVALID_ARGUMENT,
         "ngroups 3 of 2 heads accepted");
  a = args_of(q);
  std::vector<int64_t> cu = {0, 3, 2, 5};
  a.cu_seqlens = cu.data();
  a.num_seqs = 3;
  a.initial_states = nullptr;
  EXPECT(ark_ssd_chunk_scan_fwd(&a, out.data(), nullptr, ARK_DEVICE_CPU, nullptr) == ARK_ERROR_INVALID_ARGUMENT,
         "decreasing cu_seqlens accepted");
  a = args_of(q);
  a.dt_min = 1.0f;
  a.dt_max = 0.5f;
  EXPECT(ark_ssd_chunk_scan_fwd(&a, out.data(), final.data(), ARK_DEVICE_CPU, nullptr) == ARK_ERROR_INVALID_ARGUMENT,
         "dt_min > dt_max accepted");
  a = args_of(q);
  a.x = nullptr;
  EXPECT(ark_ssd_chunk_scan_fwd(&a, out.data(), final.data(), ARK_DEVICE_CPU, nullptr) == ARK_ERROR_INVALID_ARGUMENT,
         "NULL x accepted");
  a = args_of(q);
  EXPECT(ark_ssd_chunk_scan_fwd(&a, out.data(), final.data(), ARK_DEVICE_CUDA, nullptr) == ARK_ERROR_NOT_COMPILED,
         "CUDA device did not report NOT_COMPILED");
  EXPECT(ark_ssd_chunk_scan_fwd(nullptr, out.data(), final.data(), ARK_DEVICE_CPU, nullptr) ==
             ARK_ERROR_INVALID_ARGUMENT,
         "NULL args accepted");
}

}  // namespace

int main() {
  check_problem("rows", make(2, 23, 4, 3, 2, 5, {}, false, 1));
  check_problem("seq_idx", make(2, 23, 2, 3, 1, 4, {}, true, 2));
  check_problem("cu_seqlens", make(1, 20, 2, 3, 1, 4, {0, 1, 1, 12, 20}, false, 4));
  check_bad_arguments();
  return finish("ssd_chunk_scan C API");
}
