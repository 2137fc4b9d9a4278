// ssd_chunk_scan: declarations shared by the CPU kernel and the C API (torch-free).
// Math and the derivation of the backward pass: docs/ops/ssd_chunk_scan.md.
#pragma once

#include "arkernels/ssd_chunk_scan.h"

namespace ark {

// Output pointers of the backward pass (see ark_ssd_chunk_scan_bwd).
struct SsdChunkScanGrads {
  const void* grad_out;
  const float* grad_final;
  void* dx;
  float* ddt;
  float* dA;
  void* dB;
  void* dC;
  float* dD;
  void* dz;
  float* ddt_bias;
  float* dinit;
};

// CPU kernels: sequential recurrence per (state sequence, head), OpenMP across those pairs.
// Arguments were validated by the C API.
void ssd_chunk_scan_fwd_cpu(const ark_ssd_chunk_scan_args& a, void* out, float* final_states);
void ssd_chunk_scan_bwd_cpu(const ark_ssd_chunk_scan_args& a, const SsdChunkScanGrads& g);

}  // namespace ark
