// Properties of the current CUDA device that launch plans read on every call, cached per device ordinal.
#pragma once

#include <cuda_runtime.h>

#include <atomic>

namespace ark {

// Streaming multiprocessors of the current device; 132 (an H100 SXM) if the runtime cannot say.
inline int device_sm_count() {
  constexpr int kCached = 64;
  static std::atomic<int> known[kCached];  // 0: not asked yet
  int dev = 0, n = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 132;
  if (dev >= 0 && dev < kCached && (n = known[dev].load(std::memory_order_relaxed)) > 0) return n;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) return 132;
  if (dev >= 0 && dev < kCached) known[dev].store(n, std::memory_order_relaxed);
  return n;
}

}  // namespace ark
