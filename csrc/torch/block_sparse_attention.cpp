// Torch ops arkernels::block_sparse_attention_fwd (CPU and CUDA, through the C API),
// arkernels::block_sparse_attention_bwd_dkdv (the Hopper dK / dV kernel, CUDA only; the Python op's CUDA backward
// runs it beside the Triton dQ) and the *_cuda_supported queries. The forward takes the argument list of the Python ops
// arkernels::block_sparse_attention_triton / _cpu (q, k, v, the layout's 12 tensors, window, block_q,
// block_k, scale), so the autograd plumbing of python/arkernels/ops/block_sparse_attention.py (which also
// registers this op's fake kernel and its backward: the Triton backward on CUDA, the cpu op's on CPU) fits
// it unchanged. The forward reads only the forward half of the layout: k_run_ptr, k_runs and k_tile_bits
// are accepted and ignored.
#include <torch/library.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "arkernels/block_sparse_attention.h"
#include "torch/torch_utils.hpp"

namespace ark_torch {
namespace {

using OptTensor = std::optional<at::Tensor>;

// The C API refuses an unsupported configuration with ARK_ERROR_INVALID_ARGUMENT and a message naming it:
// that is bad input (ValueError); anything else (a CUDA failure) stays a RuntimeError.
void check_bsa_status(ark_status status, const char* op) {
  TORCH_CHECK_VALUE(status != ARK_ERROR_INVALID_ARGUMENT, op, ": ", ark_last_error_message());
  check_status(status, op);
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

void check_int32(int64_t v, const char* name, int64_t lo) {
  TORCH_CHECK_VALUE(v >= lo && v <= std::numeric_limits<int32_t>::max(), name, ": expected an int32 value >= ",
                    num_str(lo), ", got ", num_str(v));
}

// (batch, head, row) element strides as the C API reads them. A dimension of size 1 is never stepped over,
// so torch may give it any stride (a (1, H, L, D) tensor with an odd batch stride is still "contiguous");
// it gets the stride a dense layout would have, which keeps the CUDA alignment rules meaningful.
std::array<int64_t, 3> strides3(const at::Tensor& t) {
  std::array<int64_t, 3> s{};
  int64_t inner_stride = 1, inner_size = t.size(3);
  for (int d = 2; d >= 0; --d) {
    s[d] = t.size(d) == 1 ? inner_stride * inner_size : t.stride(d);
    inner_stride = s[d];
    inner_size = t.size(d);
  }
  return s;
}

// q, k or v as the C API can read it: unit stride along the head dim (else a contiguous copy); on CUDA,
// every stride a nonzero multiple of 8 elements and the data 16-byte aligned (the kernel's TMA descriptors
// need 16-byte strides and base addresses, and cannot broadcast: an expanded tensor is copied), else a
// contiguous copy.
at::Tensor readable(const at::Tensor& t) {
  if (t.size(3) > 1 && t.stride(3) != 1) return t.contiguous();  // a fresh, aligned allocation
  if (t.is_cuda() && t.numel() > 0) {
    const auto s = strides3(t);
    const bool aligned = s[0] % 8 == 0 && s[1] % 8 == 0 && s[2] % 8 == 0 && s[0] != 0 && s[1] != 0 && s[2] != 0 &&
                         reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
    // clone, not contiguous(): a contiguous view at a misaligned offset would come back unchanged.
    if (!aligned) return t.clone(at::MemoryFormat::Contiguous);
  }
  return t;
}

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK_VALUE(q.dim() == 4, "q: expected 4 dimensions (B, Hq, L, D), got shape ", shape_str(q.sizes()));
  to_ark_dtype(q, "q");
  to_ark_device(q, "q");
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(3);
  TORCH_CHECK_VALUE(D >= 1, "q: expected a head dim D >= 1, got shape ", shape_str(q.sizes()));
  TORCH_CHECK_VALUE(k.dim() == 4 && k.size(0) == B && k.size(3) == D, "k: expected shape (B, Hkv, S, D) = (",
                    num_str(B), ", Hkv, S, ", num_str(D), "), got ", shape_str(k.sizes()));
  TORCH_CHECK_VALUE(k.size(1) >= 1 && Hq % k.size(1) == 0, "k: expected a number of kv heads Hkv that divides Hq = ",
                    num_str(Hq), ", got Hkv = ", num_str(k.size(1)));
  TORCH_CHECK_VALUE(v.sizes() == k.sizes(), "v: expected the shape of k ", shape_str(k.sizes()), ", got ",
                    shape_str(v.sizes()));
  const auto like_q = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK_TYPE(t.scalar_type() == q.scalar_type(), name, ": expected the dtype of q (", q.scalar_type(),
                     "), got ", t.scalar_type());
    TORCH_CHECK_VALUE(t.device() == q.device(), name, ": expected device ", q.device(), " like q, got ", t.device());
  };
  like_q(k, "k");
  like_q(v, "v");
}

// An int32 layout vector on q's device with `numel` elements (-1: any), contiguous.
at::Tensor layout_tensor(const at::Tensor& q, const at::Tensor& t, const char* name, int64_t numel = -1) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kInt, name, ": expected dtype int32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == q.device(), name, ": expected device ", q.device(), " like q, got ", t.device());
  TORCH_CHECK_VALUE(numel < 0 || (t.dim() == 1 && t.numel() == numel), name, ": expected shape [", num_str(numel),
                    "], got ", shape_str(t.sizes()));
  return t.contiguous();
}

const int32_t* ptr_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<int32_t>() : nullptr; }

// A pair of per-token rule vectors (q side of length L, k side of length S): both or neither.
std::pair<at::Tensor, at::Tensor> rule_pair(const at::Tensor& q, const OptTensor& qt, const OptTensor& kt,
                                            const char* q_name, const char* k_name, int64_t L, int64_t S) {
  TORCH_CHECK_VALUE(qt.has_value() == kt.has_value(), q_name, " and ", k_name,
                    ": expected both or neither, got only ", qt ? q_name : k_name);
  if (!qt) return {at::Tensor(), at::Tensor()};
  return {layout_tensor(q, *qt, q_name, L), layout_tensor(q, *kt, k_name, S)};
}

// The layout's tensors, checked and contiguous, and the C API's view of them (valid while this object lives).
struct MaskArgs {
  at::Tensor q_run_ptr, q_runs, tile_bits, k_run_ptr, k_runs, k_tile_bits;
  at::Tensor q_level, k_level, q_doc, k_doc, q_group, k_group;
  ark_block_mask mask{};
  ark_block_mask_keys keys{};
};

// with_keys: also the key half (k_run_ptr, k_runs, k_tile_bits), which only the dK / dV kernel reads.
MaskArgs mask_args(const at::Tensor& q, int64_t L, int64_t S, const at::Tensor& q_run_ptr_in,
                   const at::Tensor& q_runs_in, const at::Tensor& k_run_ptr_in, const at::Tensor& k_runs_in,
                   const OptTensor& tile_bits_in, const OptTensor& k_tile_bits_in, const OptTensor& q_level_in,
                   const OptTensor& k_level_in, const OptTensor& q_doc_in, const OptTensor& k_doc_in,
                   const OptTensor& q_group_in, const OptTensor& k_group_in, int64_t window, int64_t block_q,
                   int64_t block_k, bool with_keys) {
  check_int32(block_q, "block_q", 1);
  check_int32(block_k, "block_k", 1);
  TORCH_CHECK_VALUE(window >= std::numeric_limits<int32_t>::min() && window <= std::numeric_limits<int32_t>::max(),
                    "window: expected an int32 value (< 0: no window), got ", num_str(window));
  MaskArgs m;
  m.q_run_ptr = layout_tensor(q, q_run_ptr_in, "q_run_ptr", cdiv(L, block_q) + 1);
  m.q_runs = layout_tensor(q, q_runs_in, "q_runs");
  TORCH_CHECK_VALUE(m.q_runs.dim() == 2 && m.q_runs.size(1) == 4, "q_runs: expected shape [runs, 4], got ",
                    shape_str(m.q_runs.sizes()));
  if (tile_bits_in) {
    m.tile_bits = layout_tensor(q, *tile_bits_in, "tile_bits");
    const int64_t words = cdiv(block_k, 32);
    TORCH_CHECK_VALUE(m.tile_bits.dim() == 3 && m.tile_bits.size(1) == block_q && m.tile_bits.size(2) == words,
                      "tile_bits: expected shape [tiles, ", num_str(block_q), ", ", num_str(words),
                      "] (block_q, ceil(block_k / 32)), got ", shape_str(m.tile_bits.sizes()));
  }
  std::tie(m.q_level, m.k_level) = rule_pair(q, q_level_in, k_level_in, "q_level", "k_level", L, S);
  std::tie(m.q_doc, m.k_doc) = rule_pair(q, q_doc_in, k_doc_in, "q_doc", "k_doc", L, S);
  std::tie(m.q_group, m.k_group) = rule_pair(q, q_group_in, k_group_in, "q_group", "k_group", L, S);
  TORCH_CHECK_VALUE(m.q_level.defined() || (!m.q_doc.defined() && !m.q_group.defined()),
                    "q_doc / q_group: expected none without q_level and k_level (they belong to the level rule)");
  // The C API wants non-NULL runs even when there is none (an empty mask): it cannot see that without reading
  // the run pointers, which may be in GPU memory. A one-run dummy is never read (the pointers are all 0).
  const auto runs_or_dummy = [](at::Tensor& runs) {
    if (!runs.numel()) runs = at::zeros({1, 4}, runs.options());
    return runs.data_ptr<int32_t>();
  };
  m.mask.block_q = int32_t(block_q);
  m.mask.block_k = int32_t(block_k);
  m.mask.q_run_ptr = m.q_run_ptr.data_ptr<int32_t>();
  m.mask.q_runs = runs_or_dummy(m.q_runs);
  m.mask.tile_bits = m.tile_bits.defined() && m.tile_bits.numel() ? m.tile_bits.data_ptr<int32_t>() : nullptr;
  m.mask.q_level = ptr_or_null(m.q_level);
  m.mask.k_level = ptr_or_null(m.k_level);
  m.mask.q_doc = ptr_or_null(m.q_doc);
  m.mask.k_doc = ptr_or_null(m.k_doc);
  m.mask.q_group = ptr_or_null(m.q_group);
  m.mask.k_group = ptr_or_null(m.k_group);
  m.mask.window = window < 0 ? -1 : int32_t(window);
  if (with_keys) {
    m.k_run_ptr = layout_tensor(q, k_run_ptr_in, "k_run_ptr", cdiv(S, block_k) + 1);
    m.k_runs = layout_tensor(q, k_runs_in, "k_runs");
    TORCH_CHECK_VALUE(m.k_runs.dim() == 2 && m.k_runs.size(1) == 4, "k_runs: expected shape [runs, 4], got ",
                      shape_str(m.k_runs.sizes()));
    if (k_tile_bits_in) m.k_tile_bits = layout_tensor(q, *k_tile_bits_in, "k_tile_bits");
    m.keys.k_run_ptr = m.k_run_ptr.data_ptr<int32_t>();
    m.keys.k_runs = runs_or_dummy(m.k_runs);
    m.keys.k_tile_bits = m.k_tile_bits.defined() && m.k_tile_bits.numel() ? m.k_tile_bits.data_ptr<int32_t>() : nullptr;
  }
  return m;
}

void check_scale_value(double scale) {
  TORCH_CHECK_VALUE(std::isfinite(scale) && scale > 0, "scale: expected a finite number > 0, got ",
                    std::to_string(scale));
}

std::tuple<at::Tensor, at::Tensor> block_sparse_attention_fwd(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& q_run_ptr,
    const at::Tensor& q_runs, const at::Tensor& k_run_ptr, const at::Tensor& k_runs, const OptTensor& tile_bits,
    const OptTensor& k_tile_bits, const OptTensor& q_level, const OptTensor& k_level, const OptTensor& q_doc,
    const OptTensor& k_doc, const OptTensor& q_group, const OptTensor& k_group, int64_t window, int64_t block_q,
    int64_t block_k, double scale) {
  check_qkv(q_in, k_in, v_in);
  const int64_t B = q_in.size(0), Hq = q_in.size(1), L = q_in.size(2), D = q_in.size(3);
  const int64_t Hkv = k_in.size(1), S = k_in.size(2);
  check_scale_value(scale);
  const MaskArgs m = mask_args(q_in, L, S, q_run_ptr, q_runs, k_run_ptr, k_runs, tile_bits, k_tile_bits, q_level,
                               k_level, q_doc, k_doc, q_group, k_group, window, block_q, block_k, false);
#ifdef ARKERNELS_TORCH_CUDA
  const c10::OptionalDeviceGuard guard(q_in.device());
#endif
  at::Tensor out = new_output({B, Hq, L, D}, q_in.options());
  at::Tensor lse = new_output({B, Hq, L}, q_in.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};
  const at::Tensor q = readable(q_in), k = readable(k_in), v = readable(v_in);
  const auto qs = strides3(q), ks = strides3(k), vs = strides3(v);
  const ark_status st = ark_block_sparse_attention_fwd(
      q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr<float>(), B, Hq, Hkv, L, S, D,
      qs.data(), ks.data(), vs.data(), &m.mask, float(scale), to_ark_dtype(q, "q"), to_ark_device(q, "q"),
      current_stream(q));
  check_bsa_status(st, "arkernels::block_sparse_attention_fwd");
  return {out, lse};
}

// dK, dV of the backward through the C API's dK / dV kernel (CUDA only: on CPU tensors the C API refuses,
// which raises ValueError), and with with_dq also dQ, as fp32 (summed by reduce-adds: not deterministic); without
// it the third output has no element. delta = rowsum(dout * out) - dlse, computed by the caller.
std::tuple<at::Tensor, at::Tensor, at::Tensor> block_sparse_attention_bwd_dkdv(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& dout_in,
    const at::Tensor& lse_in, const at::Tensor& delta_in, const at::Tensor& q_run_ptr, const at::Tensor& q_runs,
    const at::Tensor& k_run_ptr, const at::Tensor& k_runs, const OptTensor& tile_bits, const OptTensor& k_tile_bits,
    const OptTensor& q_level, const OptTensor& k_level, const OptTensor& q_doc, const OptTensor& k_doc,
    const OptTensor& q_group, const OptTensor& k_group, int64_t window, int64_t block_q, int64_t block_k,
    double scale, bool with_dq) {
  check_qkv(q_in, k_in, v_in);
  const int64_t B = q_in.size(0), Hq = q_in.size(1), L = q_in.size(2), D = q_in.size(3);
  const int64_t Hkv = k_in.size(1), S = k_in.size(2);
  TORCH_CHECK_VALUE(dout_in.sizes() == q_in.sizes(), "dout: expected the shape of q ", shape_str(q_in.sizes()),
                    ", got ", shape_str(dout_in.sizes()));
  TORCH_CHECK_TYPE(dout_in.scalar_type() == q_in.scalar_type(), "dout: expected the dtype of q (", q_in.scalar_type(),
                   "), got ", dout_in.scalar_type());
  TORCH_CHECK_VALUE(dout_in.device() == q_in.device(), "dout: expected device ", q_in.device(), " like q, got ",
                    dout_in.device());
  const auto row_stats = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, name, ": expected dtype float32, got ", t.scalar_type());
    TORCH_CHECK_VALUE(t.device() == q_in.device(), name, ": expected device ", q_in.device(), " like q, got ",
                      t.device());
    TORCH_CHECK_VALUE(t.dim() == 3 && t.size(0) == B && t.size(1) == Hq && t.size(2) == L, name,
                      ": expected shape (B, Hq, L) = ", shape_str({B, Hq, L}), ", got ", shape_str(t.sizes()));
    return t.contiguous();
  };
  const at::Tensor lse = row_stats(lse_in, "lse"), delta = row_stats(delta_in, "delta");
  check_scale_value(scale);
  const MaskArgs m = mask_args(q_in, L, S, q_run_ptr, q_runs, k_run_ptr, k_runs, tile_bits, k_tile_bits, q_level,
                               k_level, q_doc, k_doc, q_group, k_group, window, block_q, block_k, true);
#ifdef ARKERNELS_TORCH_CUDA
  const c10::OptionalDeviceGuard guard(q_in.device());
#endif
  at::Tensor dk = new_output({B, Hkv, S, D}, k_in.options());
  at::Tensor dv = new_output({B, Hkv, S, D}, k_in.options());
  // The kernel adds into dq: zeros, never poisoned.
  const std::vector<int64_t> dq_shape = with_dq ? std::vector<int64_t>{B, Hq, L, D} : std::vector<int64_t>{0};
  at::Tensor dq = at::zeros(dq_shape, q_in.options().dtype(at::kFloat));
  if (dk.numel() == 0) return {dk, dv, dq};
  const at::Tensor q = readable(q_in), k = readable(k_in), v = readable(v_in), dout = readable(dout_in);
  const auto qs = strides3(q), ks = strides3(k), vs = strides3(v), dos = strides3(dout);
  const ark_status st = ark_block_sparse_attention_bwd_dkdv(
      q.data_ptr(), k.data_ptr(), v.data_ptr(), dout.data_ptr(), lse.data_ptr<float>(), delta.data_ptr<float>(),
      dk.data_ptr(), dv.data_ptr(), with_dq ? dq.data_ptr<float>() : nullptr, B, Hq, Hkv, L, S, D, qs.data(),
      ks.data(), vs.data(), dos.data(), &m.mask, &m.keys, float(scale), to_ark_dtype(q, "q"), to_ark_device(q, "q"),
      current_stream(q));
  check_bsa_status(st, "arkernels::block_sparse_attention_bwd_dkdv");
  return {dk, dv, dq};
}

// Whether a CUDA kernel of the C API (`supported`: its query) runs (head_dim, block_q x block_k, dtype) on
// `device`: false without CUDA in this build (library or torch bindings), for a non-CUDA device, and wherever
// the C API says no.
using SupportedQuery = int (*)(int64_t, int32_t, int32_t, ark_dtype);

bool cuda_supported(SupportedQuery supported, int64_t head_dim, int64_t block_q, int64_t block_k,
                    at::ScalarType dtype, at::Device device) {
#ifdef ARKERNELS_TORCH_CUDA
  if (!device.is_cuda() || !ark_has_cuda()) return false;
  ark_dtype d;
  switch (dtype) {
    case at::kFloat: d = ARK_FLOAT32; break;
    case at::kHalf: d = ARK_FLOAT16; break;
    case at::kBFloat16: d = ARK_BFLOAT16; break;
    default: return false;
  }
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  if (block_q < 1 || block_q > kMax || block_k < 1 || block_k > kMax || head_dim < 1) return false;
  const c10::OptionalDeviceGuard guard(device.has_index() ? std::optional<at::Device>(device) : std::nullopt);
  return supported(head_dim, int32_t(block_q), int32_t(block_k), d) != 0;
#else
  (void)supported, (void)head_dim, (void)block_q, (void)block_k, (void)dtype, (void)device;
  return false;
#endif
}

bool block_sparse_attention_cuda_supported(int64_t head_dim, int64_t block_q, int64_t block_k, at::ScalarType dtype,
                                           at::Device device) {
  return cuda_supported(&ark_block_sparse_attention_cuda_supported, head_dim, block_q, block_k, dtype, device);
}

bool block_sparse_attention_dkdv_cuda_supported(int64_t head_dim, int64_t block_q, int64_t block_k,
                                                at::ScalarType dtype, at::Device device) {
  return cuda_supported(&ark_block_sparse_attention_dkdv_cuda_supported, head_dim, block_q, block_k, dtype, device);
}

}  // namespace
}  // namespace ark_torch

TORCH_LIBRARY_FRAGMENT(arkernels, m) {
  m.def(
      "block_sparse_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor q_run_ptr, Tensor q_runs, Tensor k_run_ptr, "
      "Tensor k_runs, Tensor? tile_bits, Tensor? k_tile_bits, Tensor? q_level, Tensor? k_level, Tensor? q_doc, "
      "Tensor? k_doc, Tensor? q_group, Tensor? k_group, int window, int block_q, int block_k, float scale) "
      "-> (Tensor, Tensor)");
  m.def(
      "block_sparse_attention_bwd_dkdv(Tensor q, Tensor k, Tensor v, Tensor dout, Tensor lse, Tensor delta, "
      "Tensor q_run_ptr, Tensor q_runs, Tensor k_run_ptr, Tensor k_runs, Tensor? tile_bits, Tensor? k_tile_bits, "
      "Tensor? q_level, Tensor? k_level, Tensor? q_doc, Tensor? k_doc, Tensor? q_group, Tensor? k_group, "
      "int window, int block_q, int block_k, float scale, bool with_dq) -> (Tensor, Tensor, Tensor)");
  // No tensor argument: one kernel for every dispatch key (a plain function, callable from Python).
  m.def("block_sparse_attention_cuda_supported(int head_dim, int block_q, int block_k, ScalarType dtype, "
        "Device device) -> bool",
        &ark_torch::block_sparse_attention_cuda_supported);
  m.def("block_sparse_attention_dkdv_cuda_supported(int head_dim, int block_q, int block_k, ScalarType dtype, "
        "Device device) -> bool",
        &ark_torch::block_sparse_attention_dkdv_cuda_supported);
}

// The dK / dV op on CPU tensors reaches the C API, whose refusal names the device (a ValueError, not a missing
// kernel).
TORCH_LIBRARY_IMPL(arkernels, CPU, m) {
  m.impl("block_sparse_attention_fwd", &ark_torch::block_sparse_attention_fwd);
  m.impl("block_sparse_attention_bwd_dkdv", &ark_torch::block_sparse_attention_bwd_dkdv);
}

#ifdef ARKERNELS_TORCH_CUDA
TORCH_LIBRARY_IMPL(arkernels, CUDA, m) {
  m.impl("block_sparse_attention_fwd", &ark_torch::block_sparse_attention_fwd);
  m.impl("block_sparse_attention_bwd_dkdv", &ark_torch::block_sparse_attention_bwd_dkdv);
}
#endif
