// Host-side float16 / bfloat16 <-> float32 conversion for the CPU kernels, written out in integer
// arithmetic so that it behaves the same with every host compiler (no _Float16 / __bf16 needed).
// Rounding is round-to-nearest-even, as on the GPU; NaN stays NaN, overflow becomes inf.
#pragma once

#include <cstdint>
#include <cstring>

#include "arkernels/status.h"

namespace ark {

struct bf16_bits { uint16_t x; };
struct fp16_bits { uint16_t x; };

inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float to_float(float v) { return v; }
inline float to_float(bf16_bits v) { return bits_to_float(uint32_t(v.x) << 16); }
inline float to_float(fp16_bits v) {
  const uint32_t sign = uint32_t(v.x & 0x8000u) << 16;
  const uint32_t exp = (v.x >> 10) & 0x1fu;
  uint32_t mant = v.x & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (mant << 13));  // inf / nan
  if (exp != 0) return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return bits_to_float(sign);
  // subnormal half: normalise into a float
  int e = -1;
  do { mant <<= 1; ++e; } while ((mant & 0x400u) == 0);
  return bits_to_float(sign | uint32_t(112 - e) << 23 | ((mant & 0x3ffu) << 13));
}

template <typename T> inline T from_float(float f);
template <> inline float from_float<float>(float f) { return f; }
template <> inline bf16_bits from_float<bf16_bits>(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {uint16_t((u >> 16) | 0x40u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return {uint16_t(u >> 16)};
}
template <> inline fp16_bits from_float<fp16_bits>(float f) {
  const uint32_t u = float_to_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return {uint16_t(sign | 0x7e00u)};  // NaN
  if (a >= 0x477ff000u) return {uint16_t(sign | 0x7c00u)};  // rounds to >= 65520: inf
  if (a >= 0x38800000u) {                                   // normal half
    const uint32_t r = a - 0x38000000u;                     // rebias exponent 127 -> 15
    const uint32_t rounded = r + 0xfffu + ((r >> 13) & 1u);
    return {uint16_t(sign | (rounded >> 13))};
  }
  // subnormal half or zero: value = a as float; half unit 2^-24
  const float mag = bits_to_float(a);
  const float scaled = mag * 16777216.0f;  // in units of 2^-24, exact
  // round half to even on the integer grid
  uint32_t q = uint32_t(scaled);
  const float frac = scaled - float(q);
  if (frac > 0.5f || (frac == 0.5f && (q & 1u))) ++q;
  return {uint16_t(sign | q)};
}

// Element i of a float32 / float16 / bfloat16 array whose dtype is known only at run time (small
// per-channel arrays such as weights, biases and states, read in whatever dtype the caller has).
inline float load_float(const void* p, int64_t i, ark_dtype dtype) {
  switch (dtype) {
    case ARK_FLOAT16: return to_float(static_cast<const fp16_bits*>(p)[i]);
    case ARK_BFLOAT16: return to_float(static_cast<const bf16_bits*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

}  // namespace ark
