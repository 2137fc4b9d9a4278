// Launch-shape knobs for tuning runs (bench/native/): a variant benchmark sets a knob, calls the
// public C API and times it, so that every variant it measures runs through the same validated entry
// point and the same launcher as users' calls. 0, the default, leaves the choice to the op's launcher;
// a value a launcher does not know is an ARK_ERROR_INVALID_ARGUMENT from that launcher. Not part of the
// installed C API; process-wide and not for concurrent use (a benchmark sets knobs between calls).
#pragma once

#include "arkernels/status.h"

namespace ark {

enum class Knob : int {
  SsuRows = 0,        // selective_state_update: rows (channels) per lane group, 1, 2 or 4
  SsuPrefetch,        // selective_state_update: 1 = load token t+1's inputs before computing token t
  Conv1dFwdVectors,   // causal_conv1d forward: 16-byte vectors per lane and tile, 1, 2, 4 or 8
  Conv1dFwdWarps,     // causal_conv1d forward: warps per block, 4 or 8
  Conv1dFwdEarlyHalo,  // causal_conv1d forward: 1 = lane 0 loads its halo before the tile (tuning builds)
  SscanFwdShape,      // selective_scan forward: 100 * K + R (states per lane, lanes per channel) ...
  SscanFwdThreads,    // ... and threads per block (128 or 256)
  SscanBwdBatchedStaging,  // selective_scan backward: 1 = a tile's loads issued together (tuning builds)
  SscanFwdReduce,     // selective_scan forward: 1 = shuffles not overlapped, 2 = via shared memory (tuning builds)
  SscanFwdPairedBc,   // selective_scan forward: 1 = paired B/C rows, compile-time strides (BC_VAR; tuning builds)
  SscanBwdChunks,     // selective_scan backward: time chunks (1 = one chunk, the unchunked backward)
  SscanBwdScalarStaging,  // selective_scan backward: 1 = scalar staging where 16-byte chunks would do
  SsuKernel,          // selective_state_update: 1 = the per-row kernel, 2 = the head-tile kernel (VEC layouts)
  Conv1dFwdPersistent,  // causal_conv1d forward: 1 = persistent grid, next tile's loads issued before this tile's math
  Conv1dFwdVecHalo,   // causal_conv1d forward: 1 = the tile's halo read as one 16-byte vector with the tile
  SscanBwdRowsumVec,  // selective_scan backward: 1 = dB/dC row sums with 16-byte shared loads + reduce-scatter
  BsaFwdSchedule,     // block_sparse_attention CUDA forward: 1 = serial (producer warp), 2 = pipelined (ping-pong),
                      // 3 = pipelined + TMA epilogue, 4 = persistent (pipelined + TMA epilogue)
  BsaFwdStages,       // block_sparse_attention CUDA forward: K/V ring slots, 2 or 3
  BsaFwdCtas,         // block_sparse_attention CUDA forward, persistent: CTAs (n > 0: at most n; tests walk many
                      // items per CTA with it)
  SscanFwdChunks,     // selective_scan forward: time chunks (1 = one chunk, the unchunked forward; needs a workspace)
  SsuLean,            // selective_state_update head-tile kernel: -1 = never the 32-bit-offset, fp32-parameter variant
  Count
};

// The knob's value (0: not set).
int knob(Knob k);

}  // namespace ark

extern "C" {
// Sets the knob `name` (the Knob names in snake case: "ssu_rows", "conv1d_fwd_vectors", ...; the list
// is kNames in tuning.cpp) to `value`; returns 1, or 0 for an unknown name.
ARK_API int ark_tuning_set(const char* name, int value);
}
