// Torch op arkernels::ssd_chunk_scan and its backward on the CPU, through the C API.
// Autograd and the fake (meta) kernels are registered in python/arkernels/ops/ssd_chunk_scan.py; the
// CUDA path is the Triton op arkernels::ssd_chunk_scan_triton.
#include <torch/library.h>

#include "arkernels/ssd_chunk_scan.h"
#include "torch/torch_utils.hpp"

namespace ark_torch {
namespace {

using OptT = std::optional<at::Tensor>;

void check_same(const at::Tensor& ref, const char* ref_name, const at::Tensor& t, const char* name, bool dtype) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), name, ": expected device ", ref.device(), " like ", ref_name, ", got ",
                    t.device());
  if (dtype)
    TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), name, ": expected the dtype of ", ref_name, " (",
                     ref.scalar_type(), "), got ", t.scalar_type());
}

void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK_VALUE(t.sizes() == shape, name, ": expected shape ", shape_str(shape), ", got ", shape_str(t.sizes()));
}

void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, ": expected a floating dtype, got ", t.scalar_type());
}

// Validates the inputs (the op is public through torch.ops) and returns the number of states.
int64_t check_inputs(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                     const at::Tensor& C, const OptT& D, const OptT& z, const OptT& dt_bias, const OptT& init,
                     const OptT& seq_idx, const OptT& cu) {
  TORCH_CHECK_VALUE(x.dim() == 4, "x: expected 4 dimensions (b, l, h, p), got shape ", shape_str(x.sizes()));
  to_ark_dtype(x, "x");
  const int64_t b = x.size(0), l = x.size(1), h = x.size(2), p = x.size(3);
  check_shape(dt, "dt", {b, l, h});
  check_float(dt, "dt");
  check_shape(A, "A", {h});
  check_float(A, "A");
  TORCH_CHECK_VALUE(B.dim() == 4 && B.size(0) == b && B.size(1) == l, "B: expected shape (", b, ", ", l,
                    ", g, n), got ", shape_str(B.sizes()));
  const int64_t g = B.size(2), n = B.size(3);
  TORCH_CHECK_VALUE(g >= 1 && h % g == 0, "B: expected a number of groups g that divides h = ", h, ", got g = ", g);
  check_same(x, "x", B, "B", true);
  check_shape(C, "C", B.sizes());
  check_same(x, "x", C, "C", true);
  check_same(x, "x", dt, "dt", false);
  check_same(x, "x", A, "A", false);
  if (D) {
    TORCH_CHECK_VALUE(D->sizes() == at::IntArrayRef({h}) || D->sizes() == at::IntArrayRef({h, p}), "D: expected shape [",
                      h, "] or [", h, ", ", p, "], got ", shape_str(D->sizes()));
    check_float(*D, "D");
    check_same(x, "x", *D, "D", false);
  }
  if (z) {
    check_shape(*z, "z", x.sizes());
    check_same(x, "x", *z, "z", true);
  }
  if (dt_bias) {
    check_shape(*dt_bias, "dt_bias", {h});
    check_float(*dt_bias, "dt_bias");
    check_same(x, "x", *dt_bias, "dt_bias", false);
  }
  int64_t states = b;
  if (cu) {
    TORCH_CHECK_VALUE(cu->dim() == 1 && cu->numel() >= 1, "cu_seqlens: expected a 1-d tensor, got shape ",
                      shape_str(cu->sizes()));
    TORCH_CHECK_TYPE(cu->scalar_type() == at::kInt || cu->scalar_type() == at::kLong,
                     "cu_seqlens: expected dtype int32 or int64, got ", cu->scalar_type());
    TORCH_CHECK_VALUE(b == 1, "cu_seqlens: expected batch size 1, got ", b);
    check_same(x, "x", *cu, "cu_seqlens", false);
    states = cu->numel() - 1;
  }
  if (seq_idx) {
    check_shape(*seq_idx, "seq_idx", {b, l});
    TORCH_CHECK_TYPE(seq_idx->scalar_type() == at::kInt || seq_idx->scalar_type() == at::kLong,
                     "seq_idx: expected dtype int32 or int64, got ", seq_idx->scalar_type());
    check_same(x, "x", *seq_idx, "seq_idx", false);
  }
  if (init) {
    check_shape(*init, "initial_states", {states, h, p, n});
    check_float(*init, "initial_states");
    check_same(x, "x", *init, "initial_states", false);
  }
  return states;
}

// Inputs converted to what the C API reads (dense; dt, A, D, dt_bias, states in fp32; indices int64).
struct Prepared {
  at::Tensor x, dt, A, B, C, D, z, dt_bias, init, seq_idx, cu;
  ark_ssd_chunk_scan_args args;
};

at::Tensor f32(const OptT& t) { return t ? t->to(at::kFloat).contiguous() : at::Tensor(); }

Prepared prepare(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& B,
                 const at::Tensor& C, const OptT& D, const OptT& z, const OptT& dt_bias, const OptT& init,
                 const OptT& seq_idx, const OptT& cu, bool dt_softplus, double dt_min, double dt_max) {
  Prepared pr;
  const int64_t h = x.size(2), p = x.size(3);
  pr.x = x.contiguous();
  pr.dt = dt.to(at::kFloat).contiguous();
  pr.A = A.to(at::kFloat).contiguous();
  pr.B = B.contiguous();
  pr.C = C.contiguous();
  if (D) pr.D = (D->dim() == 1 ? D->reshape({h, 1}).expand({h, p}) : *D).to(at::kFloat).contiguous();
  if (z) pr.z = z->contiguous();
  pr.dt_bias = f32(dt_bias);
  pr.init = f32(init);
  // seq_idx only matters without cu_seqlens (the sequences are then given by cu_seqlens).
  if (seq_idx && !cu) pr.seq_idx = seq_idx->to(at::kLong).contiguous();
  if (cu) {
    pr.cu = cu->to(at::kLong).contiguous();
    const int64_t* c = pr.cu.data_ptr<int64_t>();
    const int64_t ns = pr.cu.numel() - 1;
    TORCH_CHECK_VALUE(c[0] == 0 && c[ns] == x.size(1), "cu_seqlens: expected values from 0 to l = ", x.size(1),
                      ", got ", c[0], " ... ", c[ns]);
    for (int64_t k = 0; k < ns; ++k)
      TORCH_CHECK_VALUE(c[k] <= c[k + 1], "cu_seqlens: expected non-decreasing values, got ", c[k], " then ", c[k + 1]);
  }
  auto ptr = [](const at::Tensor& t) -> const void* { return t.defined() ? t.data_ptr() : nullptr; };
  auto fptr = [](const at::Tensor& t) -> const float* { return t.defined() ? t.data_ptr<float>() : nullptr; };
  ark_ssd_chunk_scan_args& a = pr.args;
  a.batch = x.size(0);
  a.seqlen = x.size(1);
  a.nheads = h;
  a.headdim = p;
  a.ngroups = B.size(2);
  a.dstate = B.size(3);
  a.dtype = to_ark_dtype(x, "x");
  a.x = pr.x.data_ptr();
  a.dt = pr.dt.data_ptr<float>();
  a.A = pr.A.data_ptr<float>();
  a.B = pr.B.data_ptr();
  a.C = pr.C.data_ptr();
  a.D = fptr(pr.D);
  a.z = ptr(pr.z);
  a.dt_bias = fptr(pr.dt_bias);
  a.initial_states = fptr(pr.init);
  a.seq_idx = pr.seq_idx.defined() ? pr.seq_idx.data_ptr<int64_t>() : nullptr;
  a.cu_seqlens = pr.cu.defined() ? pr.cu.data_ptr<int64_t>() : nullptr;
  a.num_seqs = pr.cu.defined() ? pr.cu.numel() - 1 : 0;
  a.dt_softplus = dt_softplus ? 1 : 0;
  a.dt_min = static_cast<float>(dt_min);
  a.dt_max = static_cast<float>(dt_max);
  return pr;
}

std::tuple<at::Tensor, at::Tensor> ssd_chunk_scan(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                                                  const at::Tensor& B, const at::Tensor& C, const OptT& D,
                                                  const OptT& z, const OptT& dt_bias, const OptT& initial_states,
                                                  const OptT& seq_idx, const OptT& cu_seqlens, bool dt_softplus,
                                                  double dt_min, double dt_max) {
  const int64_t states =
      check_inputs(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens);
  Prepared pr = prepare(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dt_softplus, dt_min,
                        dt_max);
  at::Tensor out = new_output(x.sizes(), x.options());
  at::Tensor final_states = new_output({states, x.size(2), x.size(3), B.size(3)}, x.options().dtype(at::kFloat));
  const ark_status st = ark_ssd_chunk_scan_fwd(&pr.args, out.data_ptr(), final_states.data_ptr<float>(),
                                               to_ark_device(x, "x"), current_stream(x));
  check_status(st, "arkernels::ssd_chunk_scan");
  return {out, final_states};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
ssd_chunk_scan_backward(const at::Tensor& grad_out, const OptT& grad_final, const at::Tensor& x, const at::Tensor& dt,
                        const at::Tensor& A, const at::Tensor& B, const at::Tensor& C, const OptT& D, const OptT& z,
                        const OptT& dt_bias, const OptT& initial_states, const OptT& seq_idx, const OptT& cu_seqlens,
                        bool dt_softplus, double dt_min, double dt_max) {
  const int64_t states =
      check_inputs(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens);
  check_shape(grad_out, "grad_out", x.sizes());
  check_same(x, "x", grad_out, "grad_out", true);
  const auto state_shape = std::vector<int64_t>{states, x.size(2), x.size(3), B.size(3)};
  if (grad_final) {
    check_shape(*grad_final, "grad_final", state_shape);
    check_float(*grad_final, "grad_final");
  }
  Prepared pr = prepare(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dt_softplus, dt_min,
                        dt_max);
  const at::Tensor go = grad_out.contiguous(), gf = f32(grad_final);
  const auto f32opt = x.options().dtype(at::kFloat);
  at::Tensor dx = new_output(x.sizes(), x.options());
  at::Tensor ddt = new_output(dt.sizes(), f32opt);
  at::Tensor dA = new_output(A.sizes(), f32opt);
  at::Tensor dB = new_output(B.sizes(), B.options());
  at::Tensor dC = new_output(C.sizes(), C.options());
  at::Tensor dD = D ? new_output({x.size(2), x.size(3)}, f32opt) : at::empty({0}, x.options());
  at::Tensor dz = z ? new_output(z->sizes(), z->options()) : at::empty({0}, x.options());
  at::Tensor ddt_bias = dt_bias ? new_output(dt_bias->sizes(), f32opt) : at::empty({0}, x.options());
  at::Tensor dinit = initial_states ? new_output(state_shape, f32opt) : at::empty({0}, x.options());
  const ark_status st = ark_ssd_chunk_scan_bwd(
      &pr.args, go.data_ptr(), gf.defined() ? gf.data_ptr<float>() : nullptr, dx.data_ptr(), ddt.data_ptr<float>(),
      dA.data_ptr<float>(), dB.data_ptr(), dC.data_ptr(), D ? dD.data_ptr<float>() : nullptr,
      z ? dz.data_ptr() : nullptr, dt_bias ? ddt_bias.data_ptr<float>() : nullptr,
      initial_states ? dinit.data_ptr<float>() : nullptr, to_ark_device(x, "x"), current_stream(x));
  check_status(st, "arkernels::_ssd_chunk_scan_backward");
  // Gradients in the inputs' dtypes and shapes (D of shape (h,) sums over p).
  if (D) dD = (D->dim() == 1 ? dD.sum(1) : dD).to(D->scalar_type());
  if (dt_bias) ddt_bias = ddt_bias.to(dt_bias->scalar_type());
  return {dx, ddt.to(dt.scalar_type()), dA.to(A.scalar_type()), dB, dC, dD, dz, ddt_bias, dinit};
}

}  // namespace
}  // namespace ark_torch

TORCH_LIBRARY_FRAGMENT(arkernels, m) {
  m.def(
      "ssd_chunk_scan(Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, Tensor? dt_bias, "
      "Tensor? initial_states, Tensor? seq_idx, Tensor? cu_seqlens, bool dt_softplus, float dt_min, "
      "float dt_max) -> (Tensor, Tensor)");
  m.def(
      "_ssd_chunk_scan_backward(Tensor grad_out, Tensor? grad_final, Tensor x, Tensor dt, Tensor A, Tensor B, "
      "Tensor C, Tensor? D, Tensor? z, Tensor? dt_bias, Tensor? initial_states, Tensor? seq_idx, "
      "Tensor? cu_seqlens, bool dt_softplus, float dt_min, float dt_max) -> (Tensor, Tensor, Tensor, Tensor, "
      "Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(arkernels, CPU, m) {
  m.impl("ssd_chunk_scan", &ark_torch::ssd_chunk_scan);
  m.impl("_ssd_chunk_scan_backward", &ark_torch::ssd_chunk_scan_backward);
}
