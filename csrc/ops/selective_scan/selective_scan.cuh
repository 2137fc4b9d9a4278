// selective_scan: internal declarations shared by the CPU kernels, the CUDA kernels and the C API.
// Math and the backward derivation: docs/ops/selective_scan.md.
#pragma once

#include <cstddef>
#include <cstdint>

#include "arkernels/selective_scan.h"

namespace ark {

constexpr int64_t kScanCheckpoint = ARK_SELECTIVE_SCAN_CHECKPOINT;

#ifdef __CUDACC__
#define ARK_HOST_DEVICE __host__ __device__
#else
#define ARK_HOST_DEVICE
#endif

ARK_HOST_DEVICE inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Where the backward's partial sums live in its workspace (floats). Partial sums are reduced in a
// fixed order afterwards, which keeps the backward deterministic (no float atomics).
//   dB_rows / dC_rows: (batch * ngroups, row_blocks, N, L), variable B / C only: one slice per block
//                      of `rows_per_block` channels, summed over row blocks
//   per_row:           (batch, dim, N) each for dA, constant dB, constant dC; (batch, dim) for dD and
//                      ddelta_bias: summed over the batch
struct ScanWorkspace {
  int64_t row_blocks = 0;
  size_t dB_rows = 0, dC_rows = 0, dA = 0, dB_const = 0, dC_const = 0, dD = 0, ddelta_bias = 0;
  size_t floats = 0;
};

inline ScanWorkspace scan_workspace(const ark_selective_scan_args& a, int64_t rows_per_block) {
  ScanWorkspace w;
  const int64_t dim_per_group = a.dim / a.ngroups;
  w.row_blocks = ceil_div(dim_per_group, rows_per_block);
  const size_t bc_rows = size_t(a.batch * a.ngroups * w.row_blocks * a.dstate * a.seqlen);
  const size_t per_state = size_t(a.batch * a.dim * a.dstate), per_row = size_t(a.batch * a.dim);
  size_t at = 0;
  auto take = [&](size_t n) { const size_t o = at; at += (n + 3) & ~size_t(3); return o; };
  w.dB_rows = take(a.B_variable ? bc_rows : 0);
  w.dC_rows = take(a.C_variable ? bc_rows : 0);
  w.dA = take(per_state);
  w.dB_const = take(a.B_variable ? 0 : per_state);
  w.dC_const = take(a.C_variable ? 0 : per_state);
  w.dD = take(per_row);
  w.ddelta_bias = take(per_row);
  w.floats = at;
  return w;
}

// The CPU kernels treat this many channels as one block of the workspace.
constexpr int64_t kCpuRowsPerBlock = 16;

// CPU kernels (OpenMP). Arguments were validated by the C API.
void selective_scan_fwd_cpu(const ark_selective_scan_args& a);
void selective_scan_bwd_cpu(const ark_selective_scan_args& a, float* workspace);

#ifdef ARKERNELS_WITH_CUDA
// Channels per block of the CUDA backward for these sizes (sets the workspace size).
int64_t selective_scan_cuda_rows_per_block(const ark_selective_scan_args& a);
ark_status selective_scan_fwd_cuda(const ark_selective_scan_args& a, void* stream);
ark_status selective_scan_bwd_cuda(const ark_selective_scan_args& a, float* workspace, void* stream);
#endif

}  // namespace ark
