// Vector loads and stores of V consecutive elements of a row, converted to and from fp32 (torch-free).
// One 4-, 8- or 16-byte access per piece when the row is contiguous and aligned; element accesses,
// with the row's stride and a bound, otherwise. For kernels that move rows of a tensor (e.g. a state
// (..., N) whose last axis is usually contiguous) and want wide, coalesced accesses whenever the
// layout allows, without requiring it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/device_math.cuh"

namespace ark {

// Alignment (bytes) one access of V elements of T needs: V * sizeof(T), at most 16.
template <typename T, int V>
constexpr int vec_alignment() {
  return V * int(sizeof(T)) < 16 ? V * int(sizeof(T)) : 16;
}

// True when `p` may be read or written with the vector accesses of load_vec / store_vec.
template <typename T, int V>
__device__ __forceinline__ bool vec_aligned(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & uintptr_t(vec_alignment<T, V>() - 1)) == 0;
}

namespace vec_detail {

template <typename T, int V>
struct Words {
  static constexpr int kBytes = V * int(sizeof(T));
  static_assert(kBytes % 4 == 0 && (kBytes <= 16 ? (kBytes & (kBytes - 1)) == 0 : kBytes % 16 == 0),
                "V elements of T must fill 4, 8 or a multiple of 16 bytes");
  static constexpr int kCount = kBytes / 4;
};

// Element k of V elements held as raw 32-bit words.
template <typename T>
__device__ __forceinline__ float element(const uint32_t* w, int k) {
  if constexpr (sizeof(T) == 4) {
    return __uint_as_float(w[k]);
  } else {
    const uint32_t bits = (w[k / 2] >> (16 * (k & 1))) & 0xffffu;
    if constexpr (std::is_same_v<T, __nv_bfloat16>) return __uint_as_float(bits << 16);
    else return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
  }
}

template <typename T>
__device__ __forceinline__ uint32_t bits_of(float v) {
  if constexpr (sizeof(T) == 4) return __float_as_uint(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat16_as_ushort(__float2bfloat16_rn(v));
  else return __half_as_ushort(__float2half_rn(v));
}

}  // namespace vec_detail

// out[k] = p[k] for k < V, as fp32; p aligned to vec_alignment<T, V>(). NC: read-only data (the
// non-coherent cache path); never for memory this kernel also writes.
template <typename T, int V, bool NC>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[V]) {
  using W = vec_detail::Words<T, V>;
  uint32_t w[W::kCount];
  if constexpr (W::kBytes % 16 == 0) {
#pragma unroll
    for (int i = 0; i < W::kBytes / 16; ++i) {
      const uint4* q = reinterpret_cast<const uint4*>(p) + i;
      const uint4 v = NC ? __ldg(q) : *q;
      w[4 * i] = v.x; w[4 * i + 1] = v.y; w[4 * i + 2] = v.z; w[4 * i + 3] = v.w;
    }
  } else if constexpr (W::kBytes == 8) {
    const uint2* q = reinterpret_cast<const uint2*>(p);
    const uint2 v = NC ? __ldg(q) : *q;
    w[0] = v.x; w[1] = v.y;
  } else {
    const unsigned int* q = reinterpret_cast<const unsigned int*>(p);
    w[0] = NC ? __ldg(q) : *q;
  }
#pragma unroll
  for (int k = 0; k < V; ++k) out[k] = vec_detail::element<T>(w, k);
}

// p[k] = in[k] rounded to T, for k < V; p aligned to vec_alignment<T, V>().
template <typename T, int V>
__device__ __forceinline__ void store_vec(T* p, const float (&in)[V]) {
  using W = vec_detail::Words<T, V>;
  uint32_t w[W::kCount];
  if constexpr (sizeof(T) == 4) {
#pragma unroll
    for (int k = 0; k < V; ++k) w[k] = vec_detail::bits_of<T>(in[k]);
  } else {
#pragma unroll
    for (int i = 0; i < W::kCount; ++i) w[i] = vec_detail::bits_of<T>(in[2 * i]) | (vec_detail::bits_of<T>(in[2 * i + 1]) << 16);
  }
  if constexpr (W::kBytes % 16 == 0) {
#pragma unroll
    for (int i = 0; i < W::kBytes / 16; ++i)
      reinterpret_cast<uint4*>(p)[i] = make_uint4(w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]);
  } else if constexpr (W::kBytes == 8) {
    *reinterpret_cast<uint2*>(p) = make_uint2(w[0], w[1]);
  } else {
    *reinterpret_cast<unsigned int*>(p) = w[0];
  }
}

// Elements n0 .. n0 + V - 1 of a row of N elements with element stride `stride`, as fp32; 0 past N.
// `vec`: stride == 1 and `row` passes vec_aligned<T, V> (then n0 must be a multiple of V).
template <typename T, int V, bool NC>
__device__ __forceinline__ void load_row(const T* row, int64_t n0, int64_t N, int64_t stride, bool vec,
                                         float (&out)[V]) {
  if (vec && n0 + V <= N) {
    load_vec<T, V, NC>(row + n0, out);
    return;
  }
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int64_t n = n0 + k;
    out[k] = 0.f;
    if (n < N) out[k] = to_f32(NC ? __ldg(row + n * stride) : row[n * stride]);
  }
}

// Writes elements n0 .. n0 + V - 1 (those below N) of a row; `vec` as for load_row.
template <typename T, int V>
__device__ __forceinline__ void store_row(T* row, int64_t n0, int64_t N, int64_t stride, bool vec,
                                          const float (&in)[V]) {
  if (vec && n0 + V <= N) {
    store_vec<T, V>(row + n0, in);
    return;
  }
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int64_t n = n0 + k;
    if (n < N) row[n * stride] = from_f32<T>(in[k]);
  }
}

}  // namespace ark
