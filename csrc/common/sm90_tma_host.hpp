// Host side of TMA for Hopper kernels: 4-D tensor maps of (batch, heads, rows, D) tensors (16-bit, or fp32) with a
// unit last stride, boxes of one 128-byte swizzle panel (64 16-bit or 32 fp32 columns) x box_rows rows. The driver's encoder is
// fetched through the runtime (no link against libcuda). Used by the block_sparse_attention forward and the
// sm_90 primitive test.
#pragma once

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/status.hpp"

namespace ark {
namespace sm90 {

inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      return PFN_cuTensorMapEncodeTiled_v12000(nullptr);
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// (D, rows, heads, batch) view of a (batch, heads, rows, D) tensor of `dtype` (bf16, fp16 or fp32); boxes of 128
// bytes of columns x box_rows rows.
inline ark_status make_tensor_map(CUtensorMap* map, const char* name, const void* base, ark_dtype dtype, int D, int64_t rows,
                                  int64_t heads, int64_t batch, const int64_t strides[3], int box_rows) {
  const auto encode = tensor_map_encoder();
  if (!encode) return fail(ARK_ERROR_CUDA, "%s: the driver has no cuTensorMapEncodeTiled (CUDA 12 driver needed)", name);
  // A dimension of size 1 never uses its stride: give it one TMA accepts (a multiple of 16 bytes).
  const int64_t fallback = rows * D;
  const int64_t s_row = rows > 1 ? strides[2] : D;
  const int64_t s_head = heads > 1 ? strides[1] : fallback;
  const int64_t s_batch = batch > 1 ? strides[0] : fallback * heads;
  cuuint64_t dims[4] = {cuuint64_t(D), cuuint64_t(rows), cuuint64_t(heads), cuuint64_t(batch)};
  const cuuint64_t elem = dtype == ARK_FLOAT32 ? 4 : 2;
  cuuint64_t byte_strides[3] = {cuuint64_t(s_row) * elem, cuuint64_t(s_head) * elem, cuuint64_t(s_batch) * elem};
  for (int i = 0; i < 3; ++i)
    if (byte_strides[i] == 0 || byte_strides[i] % 16 != 0 || byte_strides[i] >= (cuuint64_t(1) << 40))
      return fail(ARK_ERROR_INVALID_ARGUMENT,
                  "%s: expected nonzero strides that are multiples of %d elements (TMA: 16 bytes), got (%lld, %lld, %lld)",
                  name, int(16 / elem), (long long)strides[0], (long long)strides[1], (long long)strides[2]);
  cuuint32_t box[4] = {cuuint32_t(128 / elem), cuuint32_t(box_rows), 1, 1};
  cuuint32_t elem_strides[4] = {1, 1, 1, 1};
  const CUtensorMapDataType type = dtype == ARK_FLOAT32    ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32
                                   : dtype == ARK_BFLOAT16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                                           : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const CUresult r = encode(map, type, 4, const_cast<void*>(base), dims, byte_strides, box, elem_strides,
                            CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) return fail(ARK_ERROR_CUDA, "%s: cuTensorMapEncodeTiled failed (CUresult %d)", name, int(r));
  return ARK_SUCCESS;
}

}  // namespace sm90
}  // namespace ark
