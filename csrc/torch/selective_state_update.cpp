// Torch ops arkernels::selective_state_update (one token) and arkernels::selective_state_update_tokens
// (k tokens, optional per-token states), on CPU and CUDA, through the C API. Both views map onto the
// C API's unified layout (Mamba-1: H = 1, P = dim) with unsqueezed views, never copies: the state is
// updated in place. Inference only: an Autograd kernel refuses inputs that require grad (there is no
// backward). The fake kernels are registered in python/arkernels/ops/selective_state_update.py.
#include <ATen/MemoryOverlap.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "arkernels/selective_state_update.h"
#include "torch/torch_utils.hpp"

namespace ark_torch {
namespace {

using OptTensor = std::optional<at::Tensor>;

// The shapes of one call, from the state (layout) and x (batch, tokens).
struct Shapes {
  bool mamba2;       // state (Bc, H, P, N); else Mamba-1 (Bc, dim, N)
  bool tokens;       // x has a token axis after the batch axis
  int64_t lead;      // leading axes of x, B, C, z: 1 (b) or 2 (b, k)
  int64_t b, k, N, G;
  at::IntArrayRef channel_shape;  // state.shape[1:-1]: (dim,) or (H, P)
};

std::string joined(std::vector<int64_t> a, at::IntArrayRef b) {
  a.insert(a.end(), b.begin(), b.end());
  return shape_str(a);
}

void check_device(const char* name, const at::Tensor& t, const at::Tensor& state) {
  TORCH_CHECK_VALUE(t.device() == state.device(), name, ": expected a tensor on ", state.device(),
                    " like state, got one on ", t.device());
}

void check_float(const char* name, const at::Tensor& t) { to_ark_dtype(t, name); }

// A, D, dt_bias: float32 or the dtype of x.
void check_param_dtype(const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == x.scalar_type(), name,
                   ": expected dtype float32 or the dtype of x (", x.scalar_type(), "), got ", t.scalar_type());
}

void check_same_dtype_as_x(const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), name, ": expected the dtype of x (", x.scalar_type(),
                   "), got ", t.scalar_type());
}

void check_shape(const char* name, const at::Tensor& t, at::IntArrayRef expected) {
  TORCH_CHECK_VALUE(t.sizes() == expected, name, ": expected shape ", shape_str(expected), ", got ",
                    shape_str(t.sizes()));
}

Shapes check_inputs(const at::Tensor& state, const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
                    const at::Tensor& B, const at::Tensor& C, const OptTensor& D, const OptTensor& z,
                    const OptTensor& dt_bias, const OptTensor& indices, const OptTensor& inter, bool tokens) {
  TORCH_CHECK_VALUE(state.dim() == 3 || state.dim() == 4,
                    "state: expected (batch, dim, dstate) or (batch, nheads, headdim, dstate), got shape ",
                    shape_str(state.sizes()));
  Shapes s;
  s.mamba2 = state.dim() == 4;
  s.tokens = tokens;
  s.lead = tokens ? 2 : 1;
  s.N = state.size(-1);
  s.channel_shape = state.sizes().slice(1, state.dim() - 2);
  check_float("state", state);
  check_float("x", x);
  const int64_t x_rank = s.lead + int64_t(s.channel_shape.size());
  TORCH_CHECK_VALUE(x.dim() == x_rank && x.sizes().slice(s.lead) == s.channel_shape, "x: expected shape ",
                    tokens ? joined({-1, -1}, s.channel_shape) : joined({-1}, s.channel_shape),
                    " (batch", tokens ? ", tokens" : "", ", then the state's channel axes), got ", shape_str(x.sizes()));
  s.b = x.size(0);
  s.k = tokens ? x.size(1) : 1;
  const std::vector<int64_t> lead_shape = x.sizes().slice(0, s.lead).vec();
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor*>{"x", &x}, {"dt", &dt}, {"A", &A}, {"B", &B},
                                {"C", &C}}) {
    check_device(name, *t, state);
  }
  check_shape("dt", dt, x.sizes());
  check_same_dtype_as_x("dt", dt, x);
  check_shape("A", A, state.sizes().slice(1));
  check_param_dtype("A", A, x);
  // B, C: (lead..., N) or (lead..., G, N).
  TORCH_CHECK_VALUE((B.dim() == s.lead + 1 || B.dim() == s.lead + 2) && B.sizes().slice(0, s.lead) == at::IntArrayRef(lead_shape) &&
                        B.size(-1) == s.N,
                    "B: expected shape ", joined(lead_shape, {s.N}), " or ", joined(lead_shape, {-1, s.N}),
                    " (groups), got ", shape_str(B.sizes()));
  s.G = B.dim() == s.lead + 2 ? B.size(-2) : 1;
  const int64_t grouped = s.channel_shape[0];  // the axis B/C groups split: H (Mamba-2) or dim (Mamba-1)
  TORCH_CHECK_VALUE(s.G >= 1 && grouped % s.G == 0, "B: expected a number of groups dividing ",
                    s.mamba2 ? "nheads = " : "dim = ", num_str(grouped), ", got ", num_str(s.G));
  check_same_dtype_as_x("B", B, x);
  check_shape("C", C, B.sizes());
  check_same_dtype_as_x("C", C, x);
  if (D) {
    check_device("D", *D, state);
    check_shape("D", *D, s.channel_shape);
    check_param_dtype("D", *D, x);
  }
  if (dt_bias) {
    check_device("dt_bias", *dt_bias, state);
    check_shape("dt_bias", *dt_bias, s.channel_shape);
    check_param_dtype("dt_bias", *dt_bias, x);
  }
  if (z) {
    check_device("z", *z, state);
    check_shape("z", *z, x.sizes());
    check_same_dtype_as_x("z", *z, x);
  }
  if (indices) {
    check_device("state_batch_indices", *indices, state);
    TORCH_CHECK_TYPE(indices->scalar_type() == at::kInt || indices->scalar_type() == at::kLong,
                     "state_batch_indices: expected dtype int32 or int64, got ", indices->scalar_type());
    check_shape("state_batch_indices", *indices, {s.b});
  } else {
    TORCH_CHECK_VALUE(state.size(0) == s.b, "state: expected ", num_str(s.b),
                      " rows (the batch of x) without state_batch_indices, got ", num_str(state.size(0)));
  }
  if (inter) {
    check_device("intermediate_states", *inter, state);
    TORCH_CHECK_TYPE(inter->scalar_type() == state.scalar_type(), "intermediate_states: expected the dtype of state (",
                     state.scalar_type(), "), got ", inter->scalar_type());
    std::vector<int64_t> inter_shape{s.b, s.k};
    inter_shape.insert(inter_shape.end(), state.sizes().begin() + 1, state.sizes().end());
    check_shape("intermediate_states", *inter, inter_shape);
    TORCH_CHECK_VALUE(at::has_internal_overlap(*inter) != at::MemOverlap::Yes,
                      "intermediate_states: expected a tensor whose elements do not overlap (it is written)");
  }
  TORCH_CHECK_VALUE(at::has_internal_overlap(state) != at::MemOverlap::Yes,
                    "state: expected a tensor whose elements do not overlap (it is updated in place)");
  return s;
}

// The C API's unified layout: (b, k, H, P) for x-like tensors, (b, k, G, N) for B and C, (H, P, N) for
// A, (H, P) for D and dt_bias, (Bc, H, P, N) for the state, (b, k, H, P, N) for intermediate states.
// The layouts' extra axes (k without tokens, H = 1 for Mamba-1, G = 1 without groups) have size 1, so
// their strides are never multiplied by anything but 0: they are written as 0 here, from the tensors'
// own strides, instead of through unsqueezed views (about a dozen view ops per call were half of this
// binding's host time, and a decode step is host-bound).
template <size_t R>
void unified_strides(int64_t (&dst)[R], const at::Tensor& t, std::initializer_list<bool> added) {
  TORCH_INTERNAL_ASSERT(added.size() == R);
  int64_t src = 0;
  size_t i = 0;
  for (const bool unit : added) dst[i++] = unit ? 0 : t.stride(src++);
  TORCH_INTERNAL_ASSERT(src == t.dim());
}

void bkhp_strides(int64_t (&dst)[4], const at::Tensor& t, const Shapes& s) {
  unified_strides(dst, t, {false, !s.tokens, !s.mamba2, false});
}
void bkgn_strides(int64_t (&dst)[4], const at::Tensor& t, const Shapes& s) {
  unified_strides(dst, t, {false, !s.tokens, t.dim() == s.lead + 1, false});
}
void channel_strides(int64_t (&dst)[2], const at::Tensor& t, const Shapes& s) {
  unified_strides(dst, t, {!s.mamba2, false});
}

at::Tensor run(const at::Tensor& state, const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A,
               const at::Tensor& B, const at::Tensor& C, const OptTensor& D, const OptTensor& z,
               const OptTensor& dt_bias, bool dt_softplus, const OptTensor& indices, const OptTensor& inter,
               bool tokens) {
  const Shapes s = check_inputs(state, x, dt, A, B, C, D, z, dt_bias, indices, inter, tokens);
#ifdef ARKERNELS_TORCH_CUDA
  const c10::OptionalDeviceGuard guard(state.device());
#endif
  at::Tensor out = new_output(x.sizes(), x.options());
  ark_selective_state_update_args a{};
  a.batch = s.b;
  a.tokens = s.k;
  a.state_batch = state.size(0);
  a.heads = s.mamba2 ? state.size(1) : 1;
  a.head_dim = s.mamba2 ? state.size(2) : state.size(1);
  a.dstate = s.N;
  a.groups = s.G;
  a.state = state.data_ptr();
  unified_strides(a.state_strides, state, {false, !s.mamba2, false, false});
  a.x = x.data_ptr();
  bkhp_strides(a.x_strides, x, s);
  a.dt = dt.data_ptr();
  bkhp_strides(a.dt_strides, dt, s);
  a.A = A.data_ptr();
  unified_strides(a.A_strides, A, {!s.mamba2, false, false});
  a.A_dtype = to_ark_dtype(A, "A");
  a.B = B.data_ptr();
  bkgn_strides(a.B_strides, B, s);
  a.C = C.data_ptr();
  bkgn_strides(a.C_strides, C, s);
  a.out = out.data_ptr();
  bkhp_strides(a.out_strides, out, s);
  a.D_dtype = a.dt_bias_dtype = ARK_FLOAT32;
  if (D) {
    a.D = D->data_ptr();
    channel_strides(a.D_strides, *D, s);
    a.D_dtype = to_ark_dtype(*D, "D");
  }
  if (dt_bias) {
    a.dt_bias = dt_bias->data_ptr();
    channel_strides(a.dt_bias_strides, *dt_bias, s);
    a.dt_bias_dtype = to_ark_dtype(*dt_bias, "dt_bias");
  }
  if (z) {
    a.z = z->data_ptr();
    bkhp_strides(a.z_strides, *z, s);
  }
  if (indices) {
    a.state_batch_indices = indices->data_ptr();
    a.state_batch_indices_stride = indices->stride(0);
    a.state_batch_indices_int64 = indices->scalar_type() == at::kLong;
  }
  if (inter) {
    a.intermediate_states = inter->data_ptr();
    unified_strides(a.intermediate_states_strides, *inter, {false, false, !s.mamba2, false, false});
  }
  a.dt_softplus = dt_softplus ? 1 : 0;
  a.state_dtype = to_ark_dtype(state, "state");
  a.input_dtype = to_ark_dtype(x, "x");
  const ark_status status = ark_selective_state_update(&a, to_ark_device(state, "state"), current_stream(state));
  check_status(status, tokens ? "arkernels::selective_state_update_tokens" : "arkernels::selective_state_update");
  return out;
}

at::Tensor selective_state_update(const at::Tensor& state, const at::Tensor& x, const at::Tensor& dt,
                                  const at::Tensor& A, const at::Tensor& B, const at::Tensor& C, const OptTensor& D,
                                  const OptTensor& z, const OptTensor& dt_bias, bool dt_softplus,
                                  const OptTensor& state_batch_indices) {
  return run(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, std::nullopt, false);
}

at::Tensor selective_state_update_tokens(const at::Tensor& state, const at::Tensor& x, const at::Tensor& dt,
                                         const at::Tensor& A, const at::Tensor& B, const at::Tensor& C,
                                         const OptTensor& D, const OptTensor& z, const OptTensor& dt_bias,
                                         bool dt_softplus, const OptTensor& state_batch_indices,
                                         const OptTensor& intermediate_states) {
  return run(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, intermediate_states, true);
}

// Autograd kernel of both ops: there is no backward (inference only), so an input that requires grad
// under grad mode is an error here rather than a result silently cut off from the graph.
void refuse_grad(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  if (at::GradMode::is_enabled()) {
    const auto& args = op.schema().arguments();
    const size_t first = stack->size() - args.size();
    for (size_t i = 0; i < args.size(); ++i) {
      const c10::IValue& v = (*stack)[first + i];
      TORCH_CHECK_VALUE(!(v.isTensor() && v.toTensor().requires_grad()), op.schema().name(), ": ", args[i].name(),
                        " requires grad, but this op has no backward (inference only); call it under "
                        "torch.no_grad() or torch.inference_mode(), or pass detached tensors");
    }
  }
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
}

}  // namespace
}  // namespace ark_torch

TORCH_LIBRARY_FRAGMENT(arkernels, m) {
  m.def(
      "selective_state_update(Tensor(a!) state, Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, Tensor? D=None, "
      "Tensor? z=None, Tensor? dt_bias=None, bool dt_softplus=False, Tensor? state_batch_indices=None) -> Tensor");
  m.def(
      "selective_state_update_tokens(Tensor(a!) state, Tensor x, Tensor dt, Tensor A, Tensor B, Tensor C, "
      "Tensor? D=None, Tensor? z=None, Tensor? dt_bias=None, bool dt_softplus=False, "
      "Tensor? state_batch_indices=None, Tensor(b!)? intermediate_states=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(arkernels, CPU, m) {
  m.impl("selective_state_update", &ark_torch::selective_state_update);
  m.impl("selective_state_update_tokens", &ark_torch::selective_state_update_tokens);
}

#ifdef ARKERNELS_TORCH_CUDA
TORCH_LIBRARY_IMPL(arkernels, CUDA, m) {
  m.impl("selective_state_update", &ark_torch::selective_state_update);
  m.impl("selective_state_update_tokens", &ark_torch::selective_state_update_tokens);
}
#endif

TORCH_LIBRARY_IMPL(arkernels, Autograd, m) {
  m.impl("selective_state_update", torch::CppFunction::makeFromBoxedFunction<&ark_torch::refuse_grad>());
  m.impl("selective_state_update_tokens", torch::CppFunction::makeFromBoxedFunction<&ark_torch::refuse_grad>());
}
