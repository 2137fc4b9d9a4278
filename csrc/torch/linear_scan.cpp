// Torch op arkernels::linear_scan and its backward, on CPU and CUDA, through the C API.
// Autograd and the fake (meta) kernel are registered in python/arkernels/ops/linear_scan.py.
#include <torch/library.h>

#include "arkernels/linear_scan.h"
#include "torch/torch_utils.hpp"

namespace ark_torch {
namespace {

void check_inputs(const at::Tensor& gates, const at::Tensor& tokens, const std::optional<at::Tensor>& h0) {
  TORCH_CHECK_VALUE(gates.dim() >= 1, "gates: expected a tensor of shape (..., T), got a 0-d tensor");
  TORCH_CHECK_VALUE(gates.sizes() == tokens.sizes(), "tokens: expected the shape of gates ",
                    shape_str(gates.sizes()), ", got ", shape_str(tokens.sizes()));
  TORCH_CHECK_TYPE(gates.scalar_type() == tokens.scalar_type(), "tokens: expected the dtype of gates (",
                   gates.scalar_type(), "), got ", tokens.scalar_type());
  TORCH_CHECK_VALUE(gates.device() == tokens.device(), "tokens: expected device ", gates.device(), " like gates, got ",
                    tokens.device());
  to_ark_dtype(gates, "gates");
  if (h0) {
    const auto state_shape = gates.sizes().slice(0, gates.dim() - 1);
    TORCH_CHECK_VALUE(h0->sizes() == state_shape, "initial_state: expected shape ", shape_str(state_shape),
                      ", got ", shape_str(h0->sizes()));
    TORCH_CHECK_VALUE(h0->device() == gates.device(), "initial_state: expected device ", gates.device(), ", got ",
                      h0->device());
    TORCH_CHECK_TYPE(at::isFloatingType(h0->scalar_type()), "initial_state: expected a floating dtype, got ",
                     h0->scalar_type());
  }
}

at::Tensor state_f32(const std::optional<at::Tensor>& s) {
  return s ? s->to(at::kFloat).contiguous() : at::Tensor();
}

std::tuple<at::Tensor, at::Tensor> linear_scan(const at::Tensor& gates, const at::Tensor& tokens,
                                               const std::optional<at::Tensor>& initial_state, bool reverse) {
  check_inputs(gates, tokens, initial_state);
#ifdef ARKERNELS_TORCH_CUDA
  const c10::OptionalDeviceGuard guard(gates.device());
#endif
  const int64_t T = gates.size(-1);
  const auto state_shape = gates.sizes().slice(0, gates.dim() - 1);
  at::Tensor out = new_output(gates.sizes(), gates.options());
  at::Tensor final_state = new_output(state_shape, gates.options().dtype(at::kFloat));
  const at::Tensor h0 = state_f32(initial_state);
  const at::Tensor a = as_rows(gates), b = as_rows(tokens), h = as_rows(out);
  const ark_status st = ark_linear_scan_fwd(
      a.data_ptr(), b.data_ptr(), h0.defined() ? h0.data_ptr<float>() : nullptr, h.data_ptr(),
      final_state.data_ptr<float>(), a.size(0), T, row_stride(a), row_stride(b), row_stride(h), reverse ? 1 : 0,
      to_ark_dtype(gates, "gates"), to_ark_device(gates, "gates"), current_stream(gates));
  check_status(st, "arkernels::linear_scan");
  return {out, final_state};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_scan_backward(
    const at::Tensor& gates, const at::Tensor& out, const at::Tensor& grad_out,
    const std::optional<at::Tensor>& grad_final_state, const std::optional<at::Tensor>& initial_state, bool reverse) {
  check_inputs(gates, out, initial_state);
  check_inputs(gates, grad_out, std::nullopt);
#ifdef ARKERNELS_TORCH_CUDA
  const c10::OptionalDeviceGuard guard(gates.device());
#endif
  const int64_t T = gates.size(-1);
  const auto state_shape = gates.sizes().slice(0, gates.dim() - 1);
  at::Tensor grad_gates = new_output(gates.sizes(), gates.options());
  at::Tensor grad_tokens = new_output(gates.sizes(), gates.options());
  at::Tensor grad_h0 = new_output(state_shape, gates.options().dtype(at::kFloat));
  const at::Tensor h0 = state_f32(initial_state), g_last = state_f32(grad_final_state);
  if (g_last.defined())
    TORCH_CHECK_VALUE(g_last.sizes() == state_shape, "grad_final_state: expected shape ",
                      shape_str(state_shape), ", got ", shape_str(g_last.sizes()));
  const at::Tensor a = as_rows(gates), h = as_rows(out), g = as_rows(grad_out);
  const ark_status st = ark_linear_scan_bwd(
      a.data_ptr(), h.data_ptr(), g.data_ptr(), h0.defined() ? h0.data_ptr<float>() : nullptr,
      g_last.defined() ? g_last.data_ptr<float>() : nullptr, grad_gates.data_ptr(), grad_tokens.data_ptr(),
      grad_h0.data_ptr<float>(), a.size(0), T, row_stride(a), row_stride(h), row_stride(g), reverse ? 1 : 0,
      to_ark_dtype(gates, "gates"), to_ark_device(gates, "gates"), current_stream(gates));
  check_status(st, "arkernels::_linear_scan_backward");
  return {grad_gates, grad_tokens, grad_h0};
}

}  // namespace
}  // namespace ark_torch

TORCH_LIBRARY_FRAGMENT(arkernels, m) {
  m.def("linear_scan(Tensor gates, Tensor tokens, Tensor? initial_state=None, bool reverse=False) -> (Tensor, Tensor)");
  m.def(
      "_linear_scan_backward(Tensor gates, Tensor out, Tensor grad_out, Tensor? grad_final_state, "
      "Tensor? initial_state, bool reverse) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(arkernels, CPU, m) {
  m.impl("linear_scan", &ark_torch::linear_scan);
  m.impl("_linear_scan_backward", &ark_torch::linear_scan_backward);
}

#ifdef ARKERNELS_TORCH_CUDA
TORCH_LIBRARY_IMPL(arkernels, CUDA, m) {
  m.impl("linear_scan", &ark_torch::linear_scan);
  m.impl("_linear_scan_backward", &ark_torch::linear_scan_backward);
}
#endif
