// Torch ops arkernels::selective_scan and arkernels::_selective_scan_backward on CPU and CUDA,
// through the C API. Autograd and fake kernels: python/arkernels/ops/selective_scan.py.
// Shapes are checked here too (not only in Python): a direct torch.ops call must not read out of bounds.
#include <torch/library.h>

#include "arkernels/selective_scan.h"
#include "torch/torch_utils.hpp"

namespace ark_torch {
namespace {

using OptT = std::optional<at::Tensor>;

void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* name) {
  TORCH_CHECK_VALUE(t.sizes() == expected, name, ": expected shape ", shape_str(expected), ", got ",
                    shape_str(t.sizes()));
}

void check_device(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK_VALUE(t.device() == like.device(), name, ": expected a tensor on ", like.device(), " like u, got ",
                    t.device());
}

// The inputs as the C API wants them (dense, fp32 where the API says so), and the sizes.
struct Inputs {
  at::Tensor u, delta, A, B, C, D, z, delta_bias, h0, cu;
  ark_selective_scan_args args{};
};

at::Tensor f32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

Inputs prepare(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
               const at::Tensor& C, const OptT& D, const OptT& z, const OptT& delta_bias, bool softplus,
               const OptT& initial_state, const OptT& cu_seqlens) {
  TORCH_CHECK_VALUE(u.dim() == 3, "u: expected shape (batch, dim, seqlen), got ", shape_str(u.sizes()));
  const int64_t batch = u.size(0), dim = u.size(1), L = u.size(2);
  TORCH_CHECK_VALUE(A.dim() == 2 && A.size(0) == dim, "A: expected shape (dim, dstate) with dim = ", num_str(dim), ", got ",
                    shape_str(A.sizes()));
  const int64_t N = A.size(1);
  Inputs in;
  const ark_dtype dtype = to_ark_dtype(u, "u");
  check_shape(delta, u.sizes(), "delta");
  TORCH_CHECK_TYPE(delta.scalar_type() == u.scalar_type(), "delta: expected dtype ", u.scalar_type(), ", got ",
                   delta.scalar_type());
  for (auto [t, name] : {std::pair{&delta, "delta"}, {&A, "A"}, {&B, "B"}, {&C, "C"}}) check_device(*t, u, name);
  in.u = u.contiguous();
  in.delta = delta.contiguous();
  in.A = f32(A);
  int64_t groups = 1;
  auto bc = [&](const at::Tensor& x, const char* name, at::Tensor& dst) -> bool {
    if (x.dim() == 2) {
      check_shape(x, {dim, N}, name);
      dst = f32(x);
      return false;
    }
    TORCH_CHECK_VALUE(x.dim() == 3 || x.dim() == 4, name, ": expected (dim, dstate), (batch, dstate, seqlen) or ",
                      "(batch, groups, dstate, seqlen), got ", shape_str(x.sizes()));
    TORCH_CHECK_TYPE(x.scalar_type() == u.scalar_type(), name, ": expected dtype ", u.scalar_type(),
                     " (u's) when input-dependent, got ", x.scalar_type());
    dst = (x.dim() == 3 ? x.unsqueeze(1) : x).contiguous();
    const int64_t g = dst.size(1);
    TORCH_CHECK_VALUE(g >= 1 && dim % g == 0, name, ": expected a group count dividing dim = ", num_str(dim), ", got ", num_str(g));
    check_shape(dst, {batch, g, N, L}, name);
    if (groups != 1 && g != groups)
      TORCH_CHECK_VALUE(false, name, ": expected ", num_str(groups), " groups like B, got ", num_str(g));
    groups = g;
    return true;
  };
  const bool b_var = bc(B, "B", in.B);
  const bool c_var = bc(C, "C", in.C);
  if (b_var && c_var)
    TORCH_CHECK_VALUE(in.B.size(1) == in.C.size(1), "C: expected ", num_str(in.B.size(1)), " groups like B, got ", num_str(in.C.size(1)));
  auto vec = [&](const OptT& x, const char* name) {
    if (!x) return at::Tensor();
    check_device(*x, u, name);
    check_shape(*x, {dim}, name);
    return f32(*x);
  };
  in.D = vec(D, "D");
  in.delta_bias = vec(delta_bias, "delta_bias");
  if (z) {
    check_device(*z, u, "z");
    check_shape(*z, u.sizes(), "z");
    TORCH_CHECK_TYPE(z->scalar_type() == u.scalar_type(), "z: expected dtype ", u.scalar_type(), ", got ",
                     z->scalar_type());
    in.z = z->contiguous();
  }
  int64_t num_seqs = batch;
  if (cu_seqlens) {
    check_device(*cu_seqlens, u, "cu_seqlens");
    TORCH_CHECK_VALUE(cu_seqlens->dim() == 1 && cu_seqlens->size(0) >= 2,
                      "cu_seqlens: expected shape (num_seqs + 1,) with num_seqs >= 1, got ", shape_str(cu_seqlens->sizes()));
    TORCH_CHECK_VALUE(batch == 1, "cu_seqlens: packed sequences need batch == 1, got batch ", num_str(batch));
    in.cu = cu_seqlens->to(at::kLong).contiguous();
    num_seqs = in.cu.size(0) - 1;
    // Out-of-range boundaries would make the kernels index outside u: check them (one device sync).
    const at::Tensor c = in.cu.cpu();
    const int64_t* p = c.data_ptr<int64_t>();
    TORCH_CHECK_VALUE(p[0] == 0 && p[num_seqs] == L, "cu_seqlens: expected to start at 0 and end at seqlen = ", num_str(L),
                      ", got ", num_str(p[0]), " ... ", num_str(p[num_seqs]));
    for (int64_t i = 0; i < num_seqs; ++i)
      TORCH_CHECK_VALUE(p[i] <= p[i + 1], "cu_seqlens: expected non-decreasing values, got ", num_str(p[i]), " before ", num_str(p[i + 1]));
  }
  if (initial_state) {
    check_device(*initial_state, u, "initial_state");
    check_shape(*initial_state, {num_seqs, dim, N}, "initial_state");
    in.h0 = f32(*initial_state);
  }
  ark_selective_scan_args& a = in.args;
  a.batch = batch; a.dim = dim; a.seqlen = L; a.dstate = N; a.ngroups = groups; a.dtype = dtype;
  a.B_variable = b_var; a.C_variable = c_var; a.delta_softplus = softplus;
  a.cu_seqlens = in.cu.defined() ? in.cu.data_ptr<int64_t>() : nullptr;
  a.num_seqs = num_seqs;
  a.u = in.u.data_ptr(); a.delta = in.delta.data_ptr(); a.A = in.A.data_ptr<float>();
  a.B = in.B.data_ptr(); a.C = in.C.data_ptr();
  a.D = in.D.defined() ? in.D.data_ptr<float>() : nullptr;
  a.z = in.z.defined() ? in.z.data_ptr() : nullptr;
  a.delta_bias = in.delta_bias.defined() ? in.delta_bias.data_ptr<float>() : nullptr;
  a.initial_state = in.h0.defined() ? in.h0.data_ptr<float>() : nullptr;
  return in;
}

at::Tensor empty_like_opts(const at::Tensor& u) { return at::empty({0}, u.options()); }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> selective_scan(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
    const OptT& D, const OptT& z, const OptT& delta_bias, bool delta_softplus, const OptT& initial_state,
    const OptT& cu_seqlens, bool save_for_backward) {
#ifdef ARKERNELS_TORCH_CUDA
  const c10::OptionalDeviceGuard guard(u.device());
#endif
  Inputs in = prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens);
  ark_selective_scan_args& a = in.args;
  at::Tensor out = new_output(u.sizes(), u.options());
  at::Tensor last = new_output({a.num_seqs, a.dim, a.dstate}, u.options().dtype(at::kFloat));
  at::Tensor ckpt = save_for_backward
                        ? new_output({a.batch, a.dim, (a.seqlen + ARK_SELECTIVE_SCAN_CHECKPOINT - 1) /
                                                          ARK_SELECTIVE_SCAN_CHECKPOINT, a.dstate},
                                     u.options().dtype(at::kFloat))
                        : at::empty({0}, u.options().dtype(at::kFloat));
  at::Tensor y_pre = save_for_backward && z ? new_output(u.sizes(), u.options()) : empty_like_opts(u);
  a.out = out.data_ptr();
  a.last_state = last.data_ptr<float>();
  a.checkpoints = ckpt.numel() ? ckpt.data_ptr<float>() : nullptr;
  a.y_pre = y_pre.numel() ? y_pre.data_ptr() : nullptr;
  const ark_device device = to_ark_device(u, "u");
  size_t ws_bytes = 0;
  check_status(ark_selective_scan_fwd_workspace_size(&a, device, &ws_bytes), "arkernels::selective_scan");
  // From torch's caching allocator (no device allocation per call); it holds the time chunks' carries.
  const at::Tensor ws = at::empty({int64_t((ws_bytes + 3) / 4)}, u.options().dtype(at::kFloat));
  check_status(ark_selective_scan_fwd_with_workspace(&a, ws_bytes ? ws.data_ptr() : nullptr, ws_bytes, device,
                                                     current_stream(u)),
               "arkernels::selective_scan");
  return {out, last, ckpt, y_pre};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
selective_scan_backward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                        const at::Tensor& C, const OptT& D, const OptT& z, const OptT& delta_bias,
                        bool delta_softplus, const OptT& initial_state, const OptT& cu_seqlens,
                        const at::Tensor& checkpoints, const at::Tensor& y_pre, const at::Tensor& dout,
                        const OptT& dlast_state) {
#ifdef ARKERNELS_TORCH_CUDA
  const c10::OptionalDeviceGuard guard(u.device());
#endif
  Inputs in = prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens);
  ark_selective_scan_args& a = in.args;
  const auto f32_opts = u.options().dtype(at::kFloat);
  check_device(dout, u, "dout");
  check_shape(dout, u.sizes(), "dout");
  const at::Tensor g = dout.to(u.scalar_type()).contiguous();
  at::Tensor g_last;
  if (dlast_state) {
    check_device(*dlast_state, u, "dlast_state");
    check_shape(*dlast_state, {a.num_seqs, a.dim, a.dstate}, "dlast_state");
    g_last = f32(*dlast_state);
  }
  const int64_t nck = (a.seqlen + ARK_SELECTIVE_SCAN_CHECKPOINT - 1) / ARK_SELECTIVE_SCAN_CHECKPOINT;
  check_device(checkpoints, u, "checkpoints");
  if (u.is_cuda() || checkpoints.numel()) check_shape(checkpoints, {a.batch, a.dim, nck, a.dstate}, "checkpoints");
  const at::Tensor ck = checkpoints.to(at::kFloat).contiguous();
  at::Tensor yp;
  if (z) {
    check_device(y_pre, u, "y_pre");
    check_shape(y_pre, u.sizes(), "y_pre");
    yp = y_pre.to(u.scalar_type()).contiguous();
  }
  at::Tensor du = new_output(u.sizes(), u.options()), ddelta = new_output(u.sizes(), u.options());
  at::Tensor dA = new_output({a.dim, a.dstate}, f32_opts);
  at::Tensor dB = a.B_variable ? new_output(in.B.sizes(), u.options()) : new_output({a.dim, a.dstate}, f32_opts);
  at::Tensor dC = a.C_variable ? new_output(in.C.sizes(), u.options()) : new_output({a.dim, a.dstate}, f32_opts);
  at::Tensor dD = D ? new_output({a.dim}, f32_opts) : at::empty({0}, f32_opts);
  at::Tensor dbias = delta_bias ? new_output({a.dim}, f32_opts) : at::empty({0}, f32_opts);
  at::Tensor dz = z ? new_output(u.sizes(), u.options()) : empty_like_opts(u);
  at::Tensor dh0 = new_output({a.num_seqs, a.dim, a.dstate}, f32_opts);
  a.checkpoints = ck.numel() ? ck.data_ptr<float>() : nullptr;
  a.y_pre = yp.defined() ? yp.data_ptr() : nullptr;
  a.dout = g.data_ptr();
  a.dlast_state = g_last.defined() ? g_last.data_ptr<float>() : nullptr;
  a.du = du.data_ptr(); a.ddelta = ddelta.data_ptr(); a.dA = dA.data_ptr<float>();
  a.dB = dB.data_ptr(); a.dC = dC.data_ptr();
  a.dD = dD.numel() ? dD.data_ptr<float>() : nullptr;
  a.ddelta_bias = dbias.numel() ? dbias.data_ptr<float>() : nullptr;
  a.dz = dz.numel() ? dz.data_ptr() : nullptr;
  a.dinitial_state = dh0.data_ptr<float>();
  const ark_device device = to_ark_device(u, "u");
  size_t bytes = 0;
  check_status(ark_selective_scan_bwd_workspace_size(&a, device, &bytes), "arkernels::_selective_scan_backward");
  at::Tensor ws = at::empty({int64_t((bytes + 3) / 4)}, f32_opts);
  check_status(ark_selective_scan_bwd(&a, ws.numel() ? ws.data_ptr() : nullptr, bytes, device, current_stream(u)),
               "arkernels::_selective_scan_backward");
  if (a.B_variable && B.dim() == 3) dB = dB.squeeze(1);
  if (a.C_variable && C.dim() == 3) dC = dC.squeeze(1);
  return {du, ddelta, dA, dB, dC, dD, dbias, dz, dh0};
}

}  // namespace
}  // namespace ark_torch

TORCH_LIBRARY_FRAGMENT(arkernels, m) {
  m.def(
      "selective_scan(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D=None, Tensor? z=None, "
      "Tensor? delta_bias=None, bool delta_softplus=False, Tensor? initial_state=None, Tensor? cu_seqlens=None, "
      "bool save_for_backward=False) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "_selective_scan_backward(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
      "Tensor? delta_bias, bool delta_softplus, Tensor? initial_state, Tensor? cu_seqlens, Tensor checkpoints, "
      "Tensor y_pre, Tensor dout, Tensor? dlast_state) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(arkernels, CPU, m) {
  m.impl("selective_scan", &ark_torch::selective_scan);
  m.impl("_selective_scan_backward", &ark_torch::selective_scan_backward);
}

#ifdef ARKERNELS_TORCH_CUDA
TORCH_LIBRARY_IMPL(arkernels, CUDA, m) {
  m.impl("selective_scan", &ark_torch::selective_scan);
  m.impl("_selective_scan_backward", &ark_torch::selective_scan_backward);
}
#endif
