// C API of block_sparse_attention: validates every argument, then runs the CPU or CUDA kernel.
#include "arkernels/block_sparse_attention.h"

#include <climits>
#include <cmath>
#include <cstdint>
#include <initializer_list>

#include "common/status.hpp"
#include "ops/block_sparse_attention/block_sparse_attention.cuh"

namespace {

ark_status check_size(const char* name, int64_t v) {
  ARK_REQUIRE(v >= 0, "%s: expected >= 0, got %lld", name, (long long)v);
  return ARK_SUCCESS;
}

// (batch, head, row) strides in elements; stride 0 broadcasts, negative strides are not supported.
ark_status check_strides(const char* name, const int64_t* strides) {
  ARK_REQUIRE(strides != nullptr, "%s: expected a non-NULL array of 3 strides", name);
  for (int i = 0; i < 3; ++i)
    ARK_REQUIRE(strides[i] >= 0, "%s: expected strides >= 0, got %s[%d] = %lld", name, name, i,
                (long long)strides[i]);
  return ARK_SUCCESS;
}

// Per-token arrays come in pairs (q side, k side): one without the other cannot be evaluated.
ark_status check_pair(const char* q_name, const void* q, const char* k_name, const void* k) {
  ARK_REQUIRE((q == nullptr) == (k == nullptr), "%s, %s: expected both NULL or both non-NULL, got %s=%p %s=%p",
              q_name, k_name, q_name, q, k_name, k);
  return ARK_SUCCESS;
}

ark_status check_mask(const ark_block_mask* mask, bool has_work) {
  ARK_REQUIRE(mask != nullptr, "mask: expected a non-NULL ark_block_mask");
  ARK_REQUIRE(mask->block_q >= 1, "mask.block_q: expected >= 1, got %d", (int)mask->block_q);
  ARK_REQUIRE(mask->block_k >= 1, "mask.block_k: expected >= 1, got %d", (int)mask->block_k);
  // The runs are read only when some query can see some key (L, S, batch and heads all nonzero).
  ARK_REQUIRE(!has_work || mask->q_run_ptr, "mask.q_run_ptr: expected a non-NULL pointer");
  ARK_REQUIRE(!has_work || mask->q_runs, "mask.q_runs: expected a non-NULL pointer");
  ARK_TRY(check_pair("mask.q_level", mask->q_level, "mask.k_level", mask->k_level));
  ARK_TRY(check_pair("mask.q_doc", mask->q_doc, "mask.k_doc", mask->k_doc));
  ARK_TRY(check_pair("mask.q_group", mask->q_group, "mask.k_group", mask->k_group));
  // Documents and groups refine the level rule; without levels no run may be RULE, so they are unused.
  ARK_REQUIRE(mask->q_level || (!mask->q_doc && !mask->q_group),
              "mask.q_level: expected non-NULL when documents or groups are given (they belong to the level rule)");
  return ARK_SUCCESS;
}

#ifdef ARKERNELS_WITH_CUDA
struct StridedOperand {
  const char* name;
  const int64_t* s;
  int64_t sizes[3];
};
struct Operand {
  const char* name;
  const void* ptr;
};

// TMA: rows start on 16-byte boundaries (8 elements of 2 bytes), and a tensor map has no stride 0 (no
// broadcasting). The stride of a dimension of size 1 is never used (the kernels replace it).
ark_status check_tma_operands(const char* kernel, std::initializer_list<StridedOperand> strided,
                              std::initializer_list<Operand> pointers) {
  for (const auto& st : strided)
    for (int i = 0; i < 3; ++i)
      ARK_REQUIRE(st.sizes[i] <= 1 || (st.s[i] != 0 && st.s[i] % 8 == 0),
                  "%s: %s needs strides that are nonzero multiples of 8 elements, got %s[%d] = %lld for a dimension "
                  "of size %lld",
                  st.name, kernel, st.name, i, (long long)st.s[i], (long long)st.sizes[i]);
  for (const auto& a : pointers)
    ARK_REQUIRE((reinterpret_cast<uintptr_t>(a.ptr) & 15u) == 0, "%s: %s needs a 16-byte aligned pointer, got %p",
                a.name, kernel, a.ptr);
  return ARK_SUCCESS;
}

// The CUDA kernel's requirements beyond those of the CPU path (the header lists them).
ark_status check_cuda(const ark::BlockSparseAttentionFwdParams& p, ark_dtype dtype) {
  if (!ark::block_sparse_attention_cuda_supported(p.head_dim, p.mask.block_q, p.mask.block_k, dtype)) {
    // Name the first documented requirement that fails; if all hold, the device itself is the reason.
    ARK_REQUIRE(dtype == ARK_BFLOAT16 || dtype == ARK_FLOAT16,
                "dtype: the CUDA forward supports ARK_BFLOAT16 and ARK_FLOAT16, got %s (use ARK_DEVICE_CPU)",
                ark::dtype_name(dtype));
    ARK_REQUIRE(p.head_dim == 64 || p.head_dim == 128, "head_dim: the CUDA forward supports 64 and 128, got %d",
                p.head_dim);
    ARK_REQUIRE(p.mask.block_q == ark::kBsaCudaBlockQ, "mask.block_q: the CUDA forward supports %d, got %d",
                ark::kBsaCudaBlockQ, (int)p.mask.block_q);
    ARK_REQUIRE(ark::kBsaCudaChunk % p.mask.block_k == 0,
                "mask.block_k: the CUDA forward supports divisors of %d, got %d", ark::kBsaCudaChunk,
                (int)p.mask.block_k);
    return ark::fail(ARK_ERROR_INVALID_ARGUMENT,
                     "device: the CUDA forward does not run head_dim=%d, block_q=%d, block_k=%d, dtype=%s on the "
                     "current device (it needs an sm_90 GPU; see ark_block_sparse_attention_cuda_supported)",
                     p.head_dim, (int)p.mask.block_q, (int)p.mask.block_k, ark::dtype_name(dtype));
  }
  return check_tma_operands("the CUDA forward",
                            {{"q_strides", p.q_strides, {p.batch, p.q_heads, p.L}},
                             {"k_strides", p.k_strides, {p.batch, p.kv_heads, p.S}},
                             {"v_strides", p.v_strides, {p.batch, p.kv_heads, p.S}}},
                            {{"q", p.q}, {"k", p.k}, {"v", p.v}, {"out", p.out}});
}

// The dK / dV kernel's requirements (the header lists them).
ark_status check_dkdv_cuda(const ark::BlockSparseAttentionDkdvParams& p, ark_dtype dtype) {
  if (!ark::block_sparse_attention_dkdv_cuda_supported(p.head_dim, p.mask.block_q, p.mask.block_k, dtype)) {
    ARK_REQUIRE(dtype == ARK_BFLOAT16 || dtype == ARK_FLOAT16,
                "dtype: the CUDA dK/dV kernel supports ARK_BFLOAT16 and ARK_FLOAT16, got %s", ark::dtype_name(dtype));
    ARK_REQUIRE(p.head_dim == 64 || p.head_dim == 128, "head_dim: the CUDA dK/dV kernel supports 64 and 128, got %d",
                p.head_dim);
    ARK_REQUIRE(p.mask.block_q == 128 && p.mask.block_k == 128,
                "mask.block_q, mask.block_k: the CUDA dK/dV kernel supports layouts at 128 x 128, got %d x %d",
                (int)p.mask.block_q, (int)p.mask.block_k);
    return ark::fail(ARK_ERROR_INVALID_ARGUMENT,
                     "device: the CUDA dK/dV kernel does not run head_dim=%d, dtype=%s on the current device (it "
                     "needs an sm_90 GPU; see ark_block_sparse_attention_dkdv_cuda_supported)",
                     p.head_dim, ark::dtype_name(dtype));
  }
  return check_tma_operands("the CUDA dK/dV kernel",
                            {{"q_strides", p.q_strides, {p.batch, p.q_heads, p.L}},
                             {"k_strides", p.k_strides, {p.batch, p.kv_heads, p.S}},
                             {"v_strides", p.v_strides, {p.batch, p.kv_heads, p.S}},
                             {"dout_strides", p.dout_strides, {p.batch, p.q_heads, p.L}}},
                            {{"q", p.q}, {"k", p.k}, {"v", p.v}, {"dout", p.dout}, {"dk", p.dk}, {"dv", p.dv},
                             {"dq_accum", p.dq_accum}});
}
#endif

// The checks every entry point makes of the problem's sizes, scale, dtype, device and input strides.
ark_status check_problem(int64_t batch, int64_t q_heads, int64_t kv_heads, int64_t L, int64_t S, int64_t head_dim,
                         float scale, ark_dtype dtype, ark_device device, const int64_t* q_strides,
                         const int64_t* k_strides, const int64_t* v_strides) {
  ARK_TRY(check_size("batch", batch));
  ARK_TRY(check_size("q_heads", q_heads));
  ARK_TRY(check_size("kv_heads", kv_heads));
  ARK_TRY(check_size("L", L));
  ARK_TRY(check_size("S", S));
  ARK_REQUIRE(q_heads == 0 || kv_heads >= 1, "kv_heads: expected >= 1 when q_heads = %lld > 0, got %lld",
              (long long)q_heads, (long long)kv_heads);
  ARK_REQUIRE(kv_heads == 0 || q_heads % kv_heads == 0,
              "q_heads, kv_heads: expected q_heads to be a multiple of kv_heads, got q_heads=%lld kv_heads=%lld",
              (long long)q_heads, (long long)kv_heads);
  ARK_REQUIRE(head_dim >= 1 && head_dim <= INT_MAX, "head_dim: expected 1 .. %d, got %lld", INT_MAX,
              (long long)head_dim);
  ARK_REQUIRE(std::isfinite(scale) && scale > 0.0f, "scale: expected a finite value > 0, got %g", (double)scale);
  ARK_TRY(ark::check_float_dtype("dtype", dtype));
  ARK_TRY(ark::check_device(device));
  ARK_TRY(check_strides("q_strides", q_strides));
  ARK_TRY(check_strides("k_strides", k_strides));
  ARK_TRY(check_strides("v_strides", v_strides));
  return ARK_SUCCESS;
}

// The answer of a CUDA kernel's "supported" query as the C API gives it (0 for a head_dim out of int range, and
// always 0 in a build without CUDA, where SUPPORTED names no function).
using SupportedFn = bool (*)(int, int, int, ark_dtype);
#ifdef ARKERNELS_WITH_CUDA
#define SUPPORTED(fn) (&fn)
#else
#define SUPPORTED(fn) (SupportedFn(nullptr))
#endif
int supported_answer(SupportedFn supported, int64_t head_dim, int32_t block_q, int32_t block_k, ark_dtype dtype) {
  if (!supported || head_dim < 1 || head_dim > INT_MAX) return 0;
  return supported(int(head_dim), block_q, block_k, dtype) ? 1 : 0;
}

}  // namespace

extern "C" ark_status ark_block_sparse_attention_fwd(const void* q, const void* k, const void* v, void* out, float* lse,
                                                     int64_t batch, int64_t q_heads, int64_t kv_heads, int64_t L,
                                                     int64_t S, int64_t head_dim, const int64_t q_strides[3],
                                                     const int64_t k_strides[3], const int64_t v_strides[3],
                                                     const ark_block_mask* mask, float scale, ark_dtype dtype,
                                                     ark_device device, void* stream) {
  ark::clear_error();
  ARK_TRY(check_problem(batch, q_heads, kv_heads, L, S, head_dim, scale, dtype, device, q_strides, k_strides,
                        v_strides));
  const bool has_rows = batch > 0 && q_heads > 0 && L > 0;  // out (and lse) have elements
  const bool has_work = has_rows && S > 0;                   // q, k, v and the runs are read
  ARK_TRY(check_mask(mask, has_work));
  ARK_REQUIRE(!has_rows || (q && out),
              "q, out: expected non-NULL pointers for %lld x %lld x %lld queries, got q=%p out=%p", (long long)batch,
              (long long)q_heads, (long long)L, q, out);
  ARK_REQUIRE(!has_work || (k && v), "k, v: expected non-NULL pointers for %lld x %lld x %lld keys, got k=%p v=%p",
              (long long)batch, (long long)kv_heads, (long long)S, k, v);
  // No rows: nothing to write. Rows but S = 0: every query sees no key (out 0, lse -inf), which both
  // kernels write.
  if (!has_rows) return ARK_SUCCESS;
  ark::BlockSparseAttentionFwdParams p{};
  p.q = q; p.k = k; p.v = v; p.out = out; p.lse = lse;
  for (int i = 0; i < 3; ++i) {
    p.q_strides[i] = q_strides[i];
    p.k_strides[i] = k_strides[i];
    p.v_strides[i] = v_strides[i];
  }
  p.batch = batch; p.q_heads = q_heads; p.kv_heads = kv_heads; p.L = L; p.S = S;
  p.head_dim = int(head_dim);
  p.scale = scale;
  p.mask = *mask;
  if (device == ARK_DEVICE_CPU) {
    ark::block_sparse_attention_fwd_cpu(p, dtype);
    return ARK_SUCCESS;
  }
#ifdef ARKERNELS_WITH_CUDA
  ARK_TRY(check_cuda(p, dtype));
  return ark::block_sparse_attention_fwd_cuda(p, dtype, stream);
#else
  (void)stream;
  return ARK_ERROR_NOT_COMPILED;
#endif
}

extern "C" int ark_block_sparse_attention_cuda_supported(int64_t head_dim, int32_t block_q, int32_t block_k,
                                                         ark_dtype dtype) {
  return supported_answer(SUPPORTED(ark::block_sparse_attention_cuda_supported), head_dim, block_q, block_k, dtype);
}

extern "C" ark_status ark_block_sparse_attention_bwd_dkdv(
    const void* q, const void* k, const void* v, const void* dout, const float* lse, const float* delta, void* dk,
    void* dv, float* dq_accum, int64_t batch, int64_t q_heads, int64_t kv_heads, int64_t L, int64_t S, int64_t head_dim,
    const int64_t q_strides[3], const int64_t k_strides[3], const int64_t v_strides[3],
    const int64_t dout_strides[3], const ark_block_mask* mask, const ark_block_mask_keys* keys, float scale,
    ark_dtype dtype, ark_device device, void* stream) {
  ark::clear_error();
  ARK_TRY(check_problem(batch, q_heads, kv_heads, L, S, head_dim, scale, dtype, device, q_strides, k_strides,
                        v_strides));
  ARK_TRY(check_strides("dout_strides", dout_strides));
  ARK_REQUIRE(device == ARK_DEVICE_CUDA, "device: the dK/dV kernel runs on CUDA devices only, got ARK_DEVICE_CPU");
  const bool has_out = batch > 0 && kv_heads > 0 && S > 0;  // dk and dv have elements
  const bool has_work = has_out && q_heads > 0 && L > 0;    // the inputs and both halves of the layout are read
  ARK_TRY(check_mask(mask, has_work));
  ARK_REQUIRE(!has_work || keys, "keys: expected a non-NULL ark_block_mask_keys");
  ARK_REQUIRE(!has_work || (keys->k_run_ptr && keys->k_runs),
              "keys.k_run_ptr, keys.k_runs: expected non-NULL pointers");
  ARK_REQUIRE(!has_out || (dk && dv), "dk, dv: expected non-NULL pointers for %lld x %lld x %lld keys, got dk=%p dv=%p",
              (long long)batch, (long long)kv_heads, (long long)S, dk, dv);
  ARK_REQUIRE(!has_work || (q && k && v && dout && lse && delta),
              "q, k, v, dout, lse, delta: expected non-NULL pointers, got %p %p %p %p %p %p", q, k, v, dout,
              (const void*)lse, (const void*)delta);
  if (!has_out) return ARK_SUCCESS;
  ark::BlockSparseAttentionDkdvParams p{};
  p.q = q; p.k = k; p.v = v; p.dout = dout; p.lse = lse; p.delta = delta; p.dk = dk; p.dv = dv;
  p.dq_accum = has_work ? dq_accum : nullptr;  // no query or no key: dq gets nothing added
  for (int i = 0; i < 3; ++i) {
    p.q_strides[i] = q_strides[i];
    p.k_strides[i] = k_strides[i];
    p.v_strides[i] = v_strides[i];
    p.dout_strides[i] = dout_strides[i];
  }
  p.batch = batch; p.q_heads = q_heads; p.kv_heads = kv_heads; p.L = L; p.S = S;
  p.head_dim = int(head_dim);
  p.scale = scale;
  p.mask = *mask;
  if (keys) p.keys = *keys;
#ifdef ARKERNELS_WITH_CUDA
  ARK_TRY(check_dkdv_cuda(p, dtype));
  return ark::block_sparse_attention_dkdv_cuda(p, dtype, stream);
#else
  (void)stream;
  return ARK_ERROR_NOT_COMPILED;
#endif
}

extern "C" int ark_block_sparse_attention_dkdv_cuda_supported(int64_t head_dim, int32_t block_q, int32_t block_k,
                                                              ark_dtype dtype) {
  return supported_answer(SUPPORTED(ark::block_sparse_attention_dkdv_cuda_supported), head_dim, block_q, block_k,
                          dtype);
}
