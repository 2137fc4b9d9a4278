// C API of selective_state_update: validates every argument, then runs the CPU or CUDA kernel.
#include "arkernels/selective_state_update.h"

#include <algorithm>
#include <vector>

#include "common/status.hpp"
#include "ops/selective_state_update/selective_state_update.cuh"

namespace {

constexpr int64_t kMaxTokensOrDstate = int64_t(1) << 30;

// a * b when it fits in int64 (sizes are >= 0), else -1.
int64_t checked_mul(int64_t a, int64_t b) {
  int64_t r;
  return __builtin_mul_overflow(a, b, &r) ? -1 : r;
}

ark_status check_strides(const char* name, const int64_t* strides, int rank) {
  for (int i = 0; i < rank; ++i)
    ARK_REQUIRE(strides[i] >= 0, "%s: expected strides >= 0, got %lld along axis %d", name, (long long)strides[i], i);
  return ARK_SUCCESS;
}

// A tensor that is written must not map two indices to one element. Sufficient test: ordered by
// stride, every axis of size > 1 steps past the whole extent of the axes before it.
ark_status check_no_overlap(const char* name, const int64_t* sizes, const int64_t* strides, int rank) {
  std::vector<std::pair<int64_t, int64_t>> axes;  // (stride, size)
  for (int i = 0; i < rank; ++i) {
    if (sizes[i] == 0) return ARK_SUCCESS;  // no elements
    if (sizes[i] > 1) axes.emplace_back(strides[i], sizes[i]);
  }
  std::sort(axes.begin(), axes.end());
  int64_t extent = 1;  // elements spanned by the axes so far: max offset + 1
  for (const auto& [stride, size] : axes) {
    ARK_REQUIRE(stride >= extent, "%s: expected strides with no two elements at one address (it is written), "
                "got an axis of stride %lld inside an extent of %lld elements", name, (long long)stride,
                (long long)extent);
    extent = stride * (size - 1) + extent;
  }
  return ARK_SUCCESS;
}

ark_status check_sizes(const ark_selective_state_update_args& a) {
  const struct { const char* name; int64_t v; } sizes[] = {
      {"batch", a.batch}, {"tokens", a.tokens}, {"state_batch", a.state_batch},
      {"heads", a.heads}, {"head_dim", a.head_dim}, {"dstate", a.dstate}};
  for (const auto& s : sizes) ARK_REQUIRE(s.v >= 0, "%s: expected >= 0, got %lld", s.name, (long long)s.v);
  ARK_REQUIRE(a.groups >= 1, "groups: expected >= 1, got %lld", (long long)a.groups);
  // The kernels index tokens and state elements with 32-bit integers.
  ARK_REQUIRE(a.tokens <= kMaxTokensOrDstate, "tokens: expected at most 2^30, got %lld", (long long)a.tokens);
  ARK_REQUIRE(a.dstate <= kMaxTokensOrDstate, "dstate: expected at most 2^30, got %lld", (long long)a.dstate);
  const int64_t channels = checked_mul(a.heads, a.head_dim);
  ARK_REQUIRE(channels >= 0, "heads * head_dim: overflows int64 (%lld x %lld)", (long long)a.heads,
              (long long)a.head_dim);
  ARK_REQUIRE(channels == 0 || channels % a.groups == 0,
              "groups: expected a divisor of heads * head_dim = %lld, got %lld", (long long)channels,
              (long long)a.groups);
  const int64_t rows = checked_mul(checked_mul(a.batch, a.tokens), channels);
  const int64_t cache = checked_mul(checked_mul(a.state_batch, channels), a.dstate);
  ARK_REQUIRE(rows >= 0 && cache >= 0 && checked_mul(rows, std::max<int64_t>(a.dstate, 1)) >= 0,
              "sizes: the tensors' element counts overflow int64");
  return ARK_SUCCESS;
}

ark_status check_args(const ark_selective_state_update_args& a, ark_device device) {
  ARK_TRY(check_sizes(a));
  ARK_TRY(ark::check_float_dtype("state_dtype", a.state_dtype));
  ARK_TRY(ark::check_float_dtype("input_dtype", a.input_dtype));
  ARK_TRY(ark::check_float_dtype("A_dtype", a.A_dtype));
  if (a.D) ARK_TRY(ark::check_float_dtype("D_dtype", a.D_dtype));
  if (a.dt_bias) ARK_TRY(ark::check_float_dtype("dt_bias_dtype", a.dt_bias_dtype));
  ARK_REQUIRE(a.dt_softplus == 0 || a.dt_softplus == 1, "dt_softplus: expected 0 or 1, got %d", a.dt_softplus);
  ARK_REQUIRE(a.state_batch_indices_int64 == 0 || a.state_batch_indices_int64 == 1,
              "state_batch_indices_int64: expected 0 or 1, got %d", a.state_batch_indices_int64);
  ARK_TRY(ark::check_device(device));
  if (!a.state_batch_indices)
    ARK_REQUIRE(a.state_batch == a.batch, "state_batch: expected batch = %lld without state_batch_indices, got %lld",
                (long long)a.batch, (long long)a.state_batch);
  ARK_TRY(check_strides("state_strides", a.state_strides, 4));
  ARK_TRY(check_strides("x_strides", a.x_strides, 4));
  ARK_TRY(check_strides("dt_strides", a.dt_strides, 4));
  ARK_TRY(check_strides("A_strides", a.A_strides, 3));
  ARK_TRY(check_strides("B_strides", a.B_strides, 4));
  ARK_TRY(check_strides("C_strides", a.C_strides, 4));
  ARK_TRY(check_strides("D_strides", a.D_strides, 2));
  ARK_TRY(check_strides("z_strides", a.z_strides, 4));
  ARK_TRY(check_strides("dt_bias_strides", a.dt_bias_strides, 2));
  ARK_TRY(check_strides("out_strides", a.out_strides, 4));
  ARK_TRY(check_strides("intermediate_states_strides", a.intermediate_states_strides, 5));
  ARK_REQUIRE(a.state_batch_indices_stride >= 0, "state_batch_indices_stride: expected >= 0, got %lld",
              (long long)a.state_batch_indices_stride);
  const int64_t state_sizes[4] = {a.state_batch, a.heads, a.head_dim, a.dstate};
  const int64_t out_sizes[4] = {a.batch, a.tokens, a.heads, a.head_dim};
  const int64_t inter_sizes[5] = {a.batch, a.tokens, a.heads, a.head_dim, a.dstate};
  ARK_TRY(check_no_overlap("state", state_sizes, a.state_strides, 4));
  ARK_TRY(check_no_overlap("out", out_sizes, a.out_strides, 4));
  if (a.intermediate_states)
    ARK_TRY(check_no_overlap("intermediate_states", inter_sizes, a.intermediate_states_strides, 5));

  const bool work = a.batch > 0 && a.tokens > 0 && a.heads > 0 && a.head_dim > 0;
  if (work) {
    ARK_REQUIRE(a.x && a.dt && a.out, "x, dt, out: expected non-NULL pointers, got x=%p dt=%p out=%p", a.x, a.dt,
                a.out);
    if (a.dstate > 0)
      ARK_REQUIRE(a.state && a.A && a.B && a.C,
                  "state, A, B, C: expected non-NULL pointers for dstate = %lld, got state=%p A=%p B=%p C=%p",
                  (long long)a.dstate, a.state, a.A, a.B, a.C);
  }
  return ARK_SUCCESS;
}

// On the CPU the indices are host memory: reject out-of-range and repeated rows before anything runs.
ark_status check_indices_on_host(const ark_selective_state_update_args& a) {
  if (!a.state_batch_indices || a.batch == 0) return ARK_SUCCESS;
  std::vector<int64_t> first_use(size_t(a.state_batch), -1);
  for (int64_t i = 0; i < a.batch; ++i) {
    const int64_t off = i * a.state_batch_indices_stride;
    const int64_t idx = a.state_batch_indices_int64 ? static_cast<const int64_t*>(a.state_batch_indices)[off]
                                                    : static_cast<const int32_t*>(a.state_batch_indices)[off];
    if (idx < 0) continue;  // padding
    ARK_REQUIRE(idx < a.state_batch, "state_batch_indices: expected values < state_batch = %lld, got %lld at position %lld",
                (long long)a.state_batch, (long long)idx, (long long)i);
    ARK_REQUIRE(first_use[size_t(idx)] < 0,
                "state_batch_indices: expected distinct non-negative values, got %lld at positions %lld and %lld",
                (long long)idx, (long long)first_use[size_t(idx)], (long long)i);
    first_use[size_t(idx)] = i;
  }
  return ARK_SUCCESS;
}

}  // namespace

extern "C" ark_status ark_selective_state_update(const ark_selective_state_update_args* args, ark_device device,
                                                 void* stream) {
  ark::clear_error();
  ARK_REQUIRE(args != nullptr, "args: expected a non-NULL pointer, got NULL");
  const ark_selective_state_update_args& a = *args;
  ARK_TRY(check_args(a, device));
  if (a.batch == 0 || a.tokens == 0 || a.heads == 0 || a.head_dim == 0) return ARK_SUCCESS;  // no output element
  ark::SsuParams p{a, a.heads * a.head_dim / a.groups, a.dstate <= 1 || a.A_strides[2] == 0};
  if (device == ARK_DEVICE_CPU) {
    ARK_TRY(check_indices_on_host(a));
    ark::selective_state_update_cpu(p);
    return ARK_SUCCESS;
  }
#ifdef ARKERNELS_WITH_CUDA
  return ark::selective_state_update_cuda(p, stream);
#else
  (void)stream;
  return ARK_ERROR_NOT_COMPILED;
#endif
}
