/* Mamba-2 SSD scan (ssd_chunk_scan). Torch-free C API; math and the backward: docs/ops/ssd_chunk_scan.md.
 *
 * Per state sequence (a batch row, or a cu_seqlens sequence) and head hh in group gg = hh / (nheads / ngroups),
 * with dt = clamp(softplus?(dt_raw + dt_bias), dt_min, dt_max):
 *     S_t = exp(dt_t A[hh]) S_{t-1} + dt_t x_t B_t^T      (S: headdim x dstate, fp32)
 *     y_t = S_t C_t + D[hh] x_t,   out_t = y_t * silu(z_t)
 * S_{-1} = the initial state (zeros when NULL); S is reset to zero before every token whose seq_idx
 * differs from the previous token's. This build has a CPU kernel (sequential, OpenMP across
 * (sequence, head)); the GPU path is the Triton kernel of the Python package. */
#ifndef ARKERNELS_SSD_CHUNK_SCAN_H
#define ARKERNELS_SSD_CHUNK_SCAN_H

#include "arkernels/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/// Inputs of the forward and backward pass. Every tensor is dense row-major (C-contiguous).
typedef struct ark_ssd_chunk_scan_args {
  int64_t batch, seqlen, nheads, headdim, ngroups, dstate;
  ark_dtype dtype;             /* of x, B, C, z (and out, dx, dB, dC, dz) */
  const void* x;               /* (batch, seqlen, nheads, headdim) */
  const float* dt;             /* (batch, seqlen, nheads), raw (before dt_bias, softplus, clamp) */
  const float* A;              /* (nheads) */
  const void* B;               /* (batch, seqlen, ngroups, dstate) */
  const void* C;               /* (batch, seqlen, ngroups, dstate) */
  const float* D;              /* (nheads, headdim), or NULL */
  const void* z;               /* like x, or NULL */
  const float* dt_bias;        /* (nheads), or NULL */
  const float* initial_states; /* (num_states, nheads, headdim, dstate), or NULL for zeros */
  const int64_t* seq_idx;      /* (batch, seqlen), or NULL (ignored with cu_seqlens) */
  const int64_t* cu_seqlens;   /* (num_seqs + 1): 0 <= ... <= seqlen, batch == 1; or NULL */
  int64_t num_seqs;            /* sequences of cu_seqlens (ignored without it) */
  int dt_softplus;             /* 0 or 1: softplus(dt_raw + dt_bias), identity above 20 */
  float dt_min, dt_max;        /* clamp of the processed dt, dt_min <= dt_max */
} ark_ssd_chunk_scan_args;

/// Forward. num_states = num_seqs with cu_seqlens, else batch.
/// \param[out] out           like x, dtype `args->dtype`
/// \param[out] final_states  (num_states, nheads, headdim, dstate) fp32, or NULL
ARK_API ark_status ark_ssd_chunk_scan_fwd(const ark_ssd_chunk_scan_args* args, void* out, float* final_states,
                                          ark_device device, void* stream);

/// Backward: gradients of <out, grad_out> + <final_states, grad_final>. The forward states are
/// recomputed (checkpoints every ~sqrt(seqlen) tokens), nothing is saved from the forward.
/// Sums over tokens and heads are taken in a fixed order (deterministic).
/// \param[in]  grad_out     like x, dtype `args->dtype`
/// \param[in]  grad_final   (num_states, nheads, headdim, dstate) fp32, or NULL for zeros
/// \param[out] dx           like x; ddt: (batch, seqlen, nheads) fp32, w.r.t. the raw dt
/// \param[out] dA           (nheads) fp32; dB, dC like B; dD (nheads, headdim) fp32 or NULL
/// \param[out] dz           like x, or NULL (needs z); ddt_bias (nheads) fp32 or NULL
/// \param[out] dinit        (num_states, nheads, headdim, dstate) fp32, or NULL
ARK_API ark_status ark_ssd_chunk_scan_bwd(const ark_ssd_chunk_scan_args* args, const void* grad_out,
                                          const float* grad_final, void* dx, float* ddt, float* dA, void* dB,
                                          void* dC, float* dD, void* dz, float* ddt_bias, float* dinit,
                                          ark_device device, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* ARKERNELS_SSD_CHUNK_SCAN_H */
