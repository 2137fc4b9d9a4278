// Shared by the C API tests: a failure counter with a printf-style EXPECT, and bf16 helpers
// (inputs are made exactly representable in bf16 by truncation, so CPU and GPU read the same values).
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>

inline int g_failures = 0;

#define EXPECT(cond, ...)                              \
  do {                                                 \
    if (!(cond)) {                                     \
      ++g_failures;                                    \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);                        \
      std::printf("\n");                               \
    }                                                  \
  } while (0)

inline uint16_t bf16_from(float f) { uint32_t u; std::memcpy(&u, &f, 4); return uint16_t(u >> 16); }
inline float bf16_to(uint16_t b) { uint32_t u = uint32_t(b) << 16; float f; std::memcpy(&f, &u, 4); return f; }
inline float bf16_round(float f) { return bf16_to(bf16_from(f)); }
