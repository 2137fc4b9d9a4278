// Shared by the C API tests: a failure counter with a printf-style EXPECT, and bf16 helpers
// (inputs are made exactly representable in bf16 by truncation, so CPU and GPU read the same values).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

inline int g_failures = 0;

// Launch-shape knobs of libarkernels (csrc/common/tuning.hpp; exported, not in the public headers):
// the CUDA checks run every kernel variant a knob can select, not only the default one.
extern "C" int ark_tuning_set(const char* name, int value);

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

// ||got - want|| / ||want|| in double; infinite when got has a non-finite value where want is finite.
// A NaN in `want` marks an element that must stay NaN in `got` (an output the kernel must not write).
template <class W> double rel_error(const std::vector<float>& got, const std::vector<W>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::isnan(double(want[i]))) {
      if (!std::isnan(got[i])) return INFINITY;
      continue;
    }
    if (!std::isfinite(got[i])) return INFINITY;
    const double d = double(got[i]) - double(want[i]);
    num += d * d;
    den += double(want[i]) * double(want[i]);
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// main()'s last step: the summary line and the exit code (0 = pass).
inline int finish(const char* test) {
  if (g_failures) {
    std::printf("%s: %d check(s) failed\n", test, g_failures);
    return 1;
  }
  std::printf("%s: all checks passed\n", test);
  return 0;
}
