// Torch ops arkernels::causal_conv1d, its backward and arkernels::causal_conv1d_update (in place), on
// CPU and CUDA, through the C API. Autograd and the fake kernels: python/arkernels/ops/causal_conv1d.py.
#include <torch/library.h>

#include "arkernels/causal_conv1d.h"
#include "torch/torch_utils.hpp"

namespace ark_torch {
namespace {

void check_same_device(const at::Tensor& x, const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device() == x.device(), name, ": expected device ", x.device(), " like x, got ", t.device());
}

// weight (dim, width) and bias (dim,) of a depthwise convolution over `dim` channels. Returns the width.
int check_params(const at::Tensor& x, int64_t dim, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(0) == dim, "weight: expected shape [", num_str(dim), ", width], got ",
                    shape_str(weight.sizes()));
  const int64_t width = weight.size(1);
  TORCH_CHECK_VALUE(width >= 2 && width <= 4, "weight: expected width 2, 3 or 4, got ", num_str(width));
  to_ark_dtype(weight, "weight");
  check_same_device(x, weight, "weight");
  if (bias) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == dim, "bias: expected shape [", num_str(dim), "], got ",
                      shape_str(bias->sizes()));
    to_ark_dtype(*bias, "bias");
    check_same_device(x, *bias, "bias");
  }
  return int(width);
}

// The C API reads weight and bias in one dtype (weight's): a bias of another dtype is converted.
at::Tensor bias_like(const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  if (!bias) return at::Tensor();
  return bias->to(weight.scalar_type()).contiguous();
}

// A view of a (batch, dim, L) tensor with unit time stride, copying only when there is none.
at::Tensor unit_time_stride(const at::Tensor& t) {
  return t.size(2) > 1 && t.stride(2) != 1 ? t.contiguous() : t;
}

void check_states(const at::Tensor& x, const std::optional<at::Tensor>& states, int width, const char* name) {
  if (!states) return;
  const std::vector<int64_t> want{x.size(0), x.size(1), width - 1};
  TORCH_CHECK_VALUE(states->sizes() == at::IntArrayRef(want), name, ": expected shape ", shape_str(want), ", got ",
                    shape_str(states->sizes()));
  to_ark_dtype(*states, name);
  check_same_device(x, *states, name);
}

void check_x(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() == 3, "x: expected a (batch, dim, L) tensor, got shape ", shape_str(x.sizes()));
  to_ark_dtype(x, "x");
}

const void* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr() : nullptr; }

std::tuple<at::Tensor, at::Tensor> causal_conv1d(const at::Tensor& x_in, const at::Tensor& weight_in,
                                                 const std::optional<at::Tensor>& bias,
                                                 const std::optional<at::Tensor>& initial_states,
                                                 bool return_final_states, bool silu) {
  check_x(x_in);
  const int width = check_params(x_in, x_in.size(1), weight_in, bias);
  check_states(x_in, initial_states, width, "initial_states");
#ifdef ARKERNELS_TORCH_CUDA
  const c10::OptionalDeviceGuard guard(x_in.device());
#endif
  const int64_t B = x_in.size(0), D = x_in.size(1), L = x_in.size(2);
  const at::Tensor x = unit_time_stride(x_in), weight = weight_in.contiguous(), b = bias_like(weight, bias);
  const at::Tensor init = initial_states ? initial_states->contiguous() : at::Tensor();
  at::Tensor out = new_output({B, D, L}, x.options());
  at::Tensor final_states = return_final_states ? new_output({B, D, width - 1}, x.options()) : at::empty({0}, x.options());
  const ark_status st = ark_causal_conv1d_fwd(
      x.data_ptr(), weight.data_ptr(), ptr_or_null(b), to_ark_dtype(weight, "weight"), ptr_or_null(init),
      init.defined() ? to_ark_dtype(init, "initial_states") : ARK_FLOAT32, out.data_ptr(),
      return_final_states ? final_states.data_ptr() : nullptr, B, D, L, width, x.stride(0), x.stride(1), silu ? 1 : 0,
      to_ark_dtype(x, "x"), to_ark_device(x, "x"), current_stream(x));
  check_status(st, "arkernels::causal_conv1d");
  return {out, final_states};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> causal_conv1d_backward(
    const at::Tensor& x_in, const at::Tensor& weight_in, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& initial_states, const at::Tensor& grad_out_in,
    const std::optional<at::Tensor>& grad_final_states, bool silu) {
  check_x(x_in);
  const int width = check_params(x_in, x_in.size(1), weight_in, bias);
  check_states(x_in, initial_states, width, "initial_states");
  check_states(x_in, grad_final_states, width, "grad_final_states");
  TORCH_CHECK_VALUE(grad_out_in.sizes() == x_in.sizes(), "grad_out: expected the shape of x ",
                    shape_str(x_in.sizes()), ", got ", shape_str(grad_out_in.sizes()));
  TORCH_CHECK_TYPE(grad_out_in.scalar_type() == x_in.scalar_type(), "grad_out: expected the dtype of x (",
                   x_in.scalar_type(), "), got ", grad_out_in.scalar_type());
  check_same_device(x_in, grad_out_in, "grad_out");
#ifdef ARKERNELS_TORCH_CUDA
  const c10::OptionalDeviceGuard guard(x_in.device());
#endif
  const int64_t B = x_in.size(0), D = x_in.size(1), L = x_in.size(2);
  const at::Tensor x = unit_time_stride(x_in), g = unit_time_stride(grad_out_in);
  const at::Tensor weight = weight_in.contiguous(), b = bias_like(weight, bias);
  const at::Tensor init = initial_states ? initial_states->contiguous() : at::Tensor();
  const at::Tensor gfin = grad_final_states ? grad_final_states->to(x.scalar_type()).contiguous() : at::Tensor();
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor dx = new_output({B, D, L}, x.options());
  at::Tensor dweight = new_output({D, width}, f32);
  at::Tensor dbias = bias ? new_output({D}, f32) : at::empty({0}, f32);
  at::Tensor dinit = initial_states ? new_output({B, D, width - 1}, f32) : at::empty({0}, f32);
  const ark_dtype dtype = to_ark_dtype(x, "x");
  const ark_device device = to_ark_device(x, "x");
  size_t ws_bytes = 0;
  check_status(ark_causal_conv1d_bwd_workspace_bytes(B, D, L, width, dtype, device, &ws_bytes),
               "arkernels::_causal_conv1d_backward");
  const at::Tensor ws = at::empty({int64_t(ws_bytes)}, x.options().dtype(at::kByte));
  const ark_status st = ark_causal_conv1d_bwd(
      x.data_ptr(), weight.data_ptr(), ptr_or_null(b), to_ark_dtype(weight, "weight"), ptr_or_null(init),
      init.defined() ? to_ark_dtype(init, "initial_states") : ARK_FLOAT32, g.data_ptr(), ptr_or_null(gfin),
      dx.data_ptr(), dweight.data_ptr<float>(), bias ? dbias.data_ptr<float>() : nullptr,
      initial_states ? dinit.data_ptr<float>() : nullptr, ws_bytes ? ws.data_ptr() : nullptr, ws_bytes, B, D, L,
      width, x.stride(0), x.stride(1), g.stride(0), g.stride(1), silu ? 1 : 0, dtype, device, current_stream(x));
  check_status(st, "arkernels::_causal_conv1d_backward");
  return {dx, dweight, dbias, dinit};
}

void check_index_vector(const at::Tensor& x, const std::optional<at::Tensor>& t, const char* name) {
  if (!t) return;
  TORCH_CHECK_TYPE(t->scalar_type() == at::kInt, name, ": expected dtype int32, got ", t->scalar_type());
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == x.size(0), name, ": expected shape [", num_str(x.size(0)), "], got ",
                    shape_str(t->sizes()));
  check_same_device(x, *t, name);
}

at::Tensor causal_conv1d_update(const at::Tensor& x, at::Tensor& conv_state, const at::Tensor& weight_in,
                                const std::optional<at::Tensor>& bias, bool silu,
                                const std::optional<at::Tensor>& cache_seqlens,
                                const std::optional<at::Tensor>& conv_state_indices) {
  check_x(x);
  const int width = check_params(x, x.size(1), weight_in, bias);
  TORCH_CHECK_VALUE(conv_state.dim() == 3 && conv_state.size(1) == x.size(1) && conv_state.size(2) >= width - 1,
                    "conv_state: expected shape [batch, ", num_str(x.size(1)), ", state_len >= ", num_str(width - 1), "], got ",
                    shape_str(conv_state.sizes()));
  TORCH_CHECK_VALUE(conv_state_indices || conv_state.size(0) == x.size(0), "conv_state: expected ", num_str(x.size(0)),
                    " rows (the batch of x) without conv_state_indices, got ", num_str(conv_state.size(0)));
  TORCH_CHECK_TYPE(conv_state.scalar_type() == x.scalar_type(), "conv_state: expected the dtype of x (",
                   x.scalar_type(), "), got ", conv_state.scalar_type());
  check_same_device(x, conv_state, "conv_state");
  check_index_vector(x, cache_seqlens, "cache_seqlens");
  check_index_vector(x, conv_state_indices, "conv_state_indices");
#ifdef ARKERNELS_TORCH_CUDA
  const c10::OptionalDeviceGuard guard(x.device());
#endif
  const at::Tensor weight = weight_in.contiguous(), b = bias_like(weight, bias);
  const at::Tensor seqlens = cache_seqlens ? cache_seqlens->contiguous() : at::Tensor();
  const at::Tensor indices = conv_state_indices ? conv_state_indices->contiguous() : at::Tensor();
  at::Tensor out = new_output(x.sizes(), x.options());
  const ark_status st = ark_causal_conv1d_update(
      x.data_ptr(), conv_state.data_ptr(), weight.data_ptr(), ptr_or_null(b), to_ark_dtype(weight, "weight"),
      seqlens.defined() ? seqlens.data_ptr<int32_t>() : nullptr,
      indices.defined() ? indices.data_ptr<int32_t>() : nullptr, out.data_ptr(), x.size(0), x.size(1), x.size(2),
      width, conv_state.size(0), conv_state.size(2), x.stride(0), x.stride(1), x.stride(2), conv_state.stride(0),
      conv_state.stride(1), conv_state.stride(2), silu ? 1 : 0, to_ark_dtype(x, "x"), to_ark_device(x, "x"),
      current_stream(x));
  check_status(st, "arkernels::causal_conv1d_update");
  return out;
}

}  // namespace
}  // namespace ark_torch

TORCH_LIBRARY_FRAGMENT(arkernels, m) {
  m.def(
      "causal_conv1d(Tensor x, Tensor weight, Tensor? bias=None, Tensor? initial_states=None, "
      "bool return_final_states=False, bool silu=False) -> (Tensor, Tensor)");
  m.def(
      "_causal_conv1d_backward(Tensor x, Tensor weight, Tensor? bias, Tensor? initial_states, Tensor grad_out, "
      "Tensor? grad_final_states, bool silu) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "causal_conv1d_update(Tensor x, Tensor(a!) conv_state, Tensor weight, Tensor? bias=None, bool silu=False, "
      "Tensor? cache_seqlens=None, Tensor? conv_state_indices=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(arkernels, CPU, m) {
  m.impl("causal_conv1d", &ark_torch::causal_conv1d);
  m.impl("_causal_conv1d_backward", &ark_torch::causal_conv1d_backward);
  m.impl("causal_conv1d_update", &ark_torch::causal_conv1d_update);
}

#ifdef ARKERNELS_TORCH_CUDA
TORCH_LIBRARY_IMPL(arkernels, CUDA, m) {
  m.impl("causal_conv1d", &ark_torch::causal_conv1d);
  m.impl("_causal_conv1d_backward", &ark_torch::causal_conv1d_backward);
  m.impl("causal_conv1d_update", &ark_torch::causal_conv1d_update);
}
#endif
