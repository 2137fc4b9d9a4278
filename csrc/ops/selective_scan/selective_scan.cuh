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
//   per state / row:   (chunks, batch, dim, N) each for dA, constant dB, constant dC; (chunks, batch, dim)
//                      for dD and ddelta_bias: summed over chunks and the batch
//   carry_g, carry_p:  (chunks, batch, dim, N), time-chunked CUDA backward only: per time chunk, the
//                      state gradient it passes to the chunk before it when the chunk after it passes
//                      none, and the factor (product of the chunk's decays) that chunk after's scales by
// `chunks`: time chunks of the backward (1 on the CPU); each runs as its own blocks.
struct ScanWorkspace {
  int64_t row_blocks = 0, chunks = 1;
  size_t dB_rows = 0, dC_rows = 0, dA = 0, dB_const = 0, dC_const = 0, dD = 0, ddelta_bias = 0;
  size_t carry_g = 0, carry_p = 0;
  size_t floats = 0;
};

inline ScanWorkspace scan_workspace(const ark_selective_scan_args& a, int64_t rows_per_block, int64_t chunks = 1) {
  ScanWorkspace w;
  const int64_t dim_per_group = a.dim / a.ngroups;
  w.row_blocks = ceil_div(dim_per_group, rows_per_block);
  w.chunks = chunks;
  const size_t bc_rows = size_t(a.batch * a.ngroups * w.row_blocks * a.dstate * a.seqlen);
  const size_t per_state = size_t(chunks * a.batch * a.dim * a.dstate), per_row = size_t(chunks * a.batch * a.dim);
  size_t at = 0;
  auto take = [&](size_t n) { const size_t o = at; at += (n + 3) & ~size_t(3); return o; };
  w.dB_rows = take(a.B_variable ? bc_rows : 0);
  w.dC_rows = take(a.C_variable ? bc_rows : 0);
  w.dA = take(per_state);
  w.dB_const = take(a.B_variable ? 0 : per_state);
  w.dC_const = take(a.C_variable ? 0 : per_state);
  w.dD = take(per_row);
  w.ddelta_bias = take(per_row);
  w.carry_g = take(chunks > 1 ? per_state : 0);
  w.carry_p = take(chunks > 1 ? per_state : 0);
  w.floats = at;
  return w;
}

// How a backward splits its work: channels per block (workspace slices) and time chunks.
struct ScanBwdLayout {
  int64_t rows_per_block = 0, chunks = 1;
};

// The CPU kernels treat this many channels as one block of the workspace.
constexpr int64_t kCpuRowsPerBlock = 16;

// CPU kernels (OpenMP). Arguments were validated by the C API.
void selective_scan_fwd_cpu(const ark_selective_scan_args& a);
void selective_scan_bwd_cpu(const ark_selective_scan_args& a, float* workspace);

#ifdef ARKERNELS_WITH_CUDA
// Channels per block and time chunks of the CUDA backward for these sizes, on the current device
// (sets the workspace size).
ScanBwdLayout selective_scan_cuda_bwd_layout(const ark_selective_scan_args& a);
// Floats of scratch memory the CUDA forward uses for its time chunks (0: it runs unchunked).
size_t selective_scan_cuda_fwd_workspace_floats(const ark_selective_scan_args& a);
// workspace: at least that many floats, or NULL (the unchunked forward).
ark_status selective_scan_fwd_cuda(const ark_selective_scan_args& a, float* workspace, void* stream);
ark_status selective_scan_bwd_cuda(const ark_selective_scan_args& a, float* workspace, void* stream);
#endif

}  // namespace ark
