// Whether a Hopper (sm_90a) kernel can run: the current device is an sm_90 GPU, and the library holds sm_90a
// code of the kernel (it may be built without 90a, and PTX of another target would JIT to an empty kernel on this
// GPU). Both answers are cached: every call of an op asks.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

namespace ark {
namespace sm90 {

// Answered once per device ordinal.
inline bool device_is_sm90() {
  constexpr int kCached = 64;
  static std::atomic<int8_t> known[kCached];  // 0: not asked yet, 1: sm_90, 2: another GPU
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (dev >= 0 && dev < kCached && known[dev].load(std::memory_order_relaxed)) return known[dev] == 1;
  int major = 0, minor = 0;
  const bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
                  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess;
  if (!ok) return false;
  const bool sm90 = major == 9 && minor == 0;
  if (dev >= 0 && dev < kCached) known[dev].store(sm90 ? 1 : 2, std::memory_order_relaxed);
  return sm90;
}

// `kernel` has sm_90a code in this binary; the caller caches the answer (a property of the binary).
template <typename Kernel>
bool has_sm90a_code(Kernel kernel) {
  cudaFuncAttributes attr{};
  if (cudaFuncGetAttributes(&attr, kernel) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return attr.ptxVersion == 90 && attr.binaryVersion == 90;
}

}  // namespace sm90
}  // namespace ark
