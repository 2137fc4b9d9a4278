// selective_state_update: parameters shared by the CPU kernel, the CUDA kernel and the C API (torch-free).
// Math and layouts: csrc/include/arkernels/selective_state_update.h, docs/ops/selective_state_update.md.
#pragma once

#include <cstdint>

#include "arkernels/selective_state_update.h"

namespace ark {

// The validated C API arguments plus what the C API derives from them once.
struct SsuParams {
  ark_selective_state_update_args a;
  int64_t channels_per_group;  // H * P / G: channel c = h * P + p reads group c / channels_per_group
  // A is constant along N (stride 0, or N <= 1): exp(dt' * A) is one scalar per channel and token
  // instead of N of them (Mamba-2 passes A broadcast over (P, N)).
  bool a_const_n;
};

// CPU kernel (OpenMP over the (b, h, p) rows). Arguments were validated by the C API.
void selective_state_update_cpu(const SsuParams& p);

#ifdef ARKERNELS_WITH_CUDA
// CUDA kernel; `stream` is a cudaStream_t. Returns ARK_SUCCESS or ARK_ERROR_CUDA with a message.
ark_status selective_state_update_cuda(const SsuParams& p, void* stream);
#endif

}  // namespace ark
