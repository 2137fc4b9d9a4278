/* Mamba-1 selective scan (S6), forward and backward. Torch-free C API.
 * Math and the derivation of the backward pass: docs/ops/selective_scan.md.
 *
 * Per batch row b (or packed sequence), channel d, state n, with dl = [softplus](delta + delta_bias):
 *   h[t,n] = exp(dl[t] A[d,n]) h[t-1,n] + dl[t] u[t] B[t,n];   y[t] = sum_n C[t,n] h[t,n] + D[d] u[t]
 *   out[t] = y[t] * silu(z[t])  (when z is given)
 * All math is fp32; u, delta, z, out and variable B/C share one dtype; everything else is fp32. */
#ifndef ARKERNELS_SELECTIVE_SCAN_H
#define ARKERNELS_SELECTIVE_SCAN_H

#include <stddef.h>

#include "arkernels/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The forward stores the state every ARK_SELECTIVE_SCAN_CHECKPOINT steps (when asked to); the backward
 * on CUDA restarts its recomputation from those states. */
#define ARK_SELECTIVE_SCAN_CHECKPOINT 32
#define ARK_SELECTIVE_SCAN_MAX_DSTATE 256

/* Every tensor is dense and contiguous (row-major) in the shape given. `dtype` is the dtype of the
 * "itype" tensors (u, delta, z, out, y_pre, du, ddelta, dz, dout and variable B/C/dB/dC).
 * Pointers a direction does not use are ignored; optional pointers may be NULL. */
typedef struct ark_selective_scan_args {
  int64_t batch, dim, seqlen, dstate; /* dstate = N, 1..ARK_SELECTIVE_SCAN_MAX_DSTATE */
  int64_t ngroups;                    /* groups of variable B/C; dim % ngroups == 0 (1 when constant) */
  ark_dtype dtype;
  int B_variable, C_variable;         /* 1: (batch, ngroups, N, L) itype; 0: (dim, N) fp32 */
  int delta_softplus;                 /* 0 or 1 */
  /* cu_seqlens: (num_seqs + 1) int64, non-decreasing from 0 to seqlen, batch must be 1: packed
   * sequences; initial/last states are then per sequence. NULL: one sequence per batch row. */
  const int64_t* cu_seqlens;
  int64_t num_seqs;                   /* states count: num_seqs with cu_seqlens, else batch */

  /* inputs */
  const void* u;            /* (batch, dim, L) */
  const void* delta;        /* (batch, dim, L) */
  const float* A;           /* (dim, N) */
  const void* B;            /* see B_variable */
  const void* C;            /* see C_variable */
  const float* D;           /* (dim,) or NULL */
  const void* z;            /* (batch, dim, L) or NULL */
  const float* delta_bias;  /* (dim,) or NULL */
  const float* initial_state; /* (num_seqs, dim, N) or NULL for zeros */

  /* forward outputs */
  void* out;                /* (batch, dim, L) */
  float* last_state;        /* (num_seqs, dim, N) or NULL */
  float* checkpoints;       /* (batch, dim, ceil(L / CHECKPOINT), N) or NULL; needed by the CUDA backward */
  void* y_pre;              /* (batch, dim, L): y before the z gate, or NULL; needed by the backward when z */

  /* backward inputs (the forward's inputs above, plus) */
  const void* dout;         /* (batch, dim, L) */
  const float* dlast_state; /* (num_seqs, dim, N) or NULL for zeros */

  /* backward outputs */
  void* du; void* ddelta;   /* (batch, dim, L) */
  float* dA;                /* (dim, N) */
  void* dB; void* dC;       /* like B / C */
  float* dD;                /* (dim,), written when D is given */
  float* ddelta_bias;       /* (dim,), written when delta_bias is given */
  void* dz;                 /* (batch, dim, L), written when z is given */
  float* dinitial_state;    /* (num_seqs, dim, N) or NULL */
} ark_selective_scan_args;

/// Forward. Writes out, and last_state / checkpoints / y_pre where not NULL. Runs without scratch memory,
/// which on CUDA means one block per group of channels walking the whole sequence: where batch * dim is
/// small, ark_selective_scan_fwd_with_workspace is faster (it splits time into chunks).
ARK_API ark_status ark_selective_scan_fwd(const ark_selective_scan_args* args, ark_device device, void* stream);

/// Bytes of scratch memory ark_selective_scan_fwd_with_workspace can use on `device` for these sizes
/// (0 where it would not split time: then it is ark_selective_scan_fwd).
ARK_API ark_status ark_selective_scan_fwd_workspace_size(const ark_selective_scan_args* args, ark_device device,
                                                         size_t* bytes);

/// Forward with scratch memory: `workspace` is device memory of at least
/// ark_selective_scan_fwd_workspace_size bytes, or NULL (then it is ark_selective_scan_fwd). On CUDA,
/// problems with few channels run as time chunks: a first kernel carries each chunk's state, the second
/// computes the outputs. Results equal the unchunked forward's up to fp32 rounding.
ARK_API ark_status ark_selective_scan_fwd_with_workspace(const ark_selective_scan_args* args, void* workspace,
                                                         size_t workspace_bytes, ark_device device, void* stream);

/// Bytes of scratch memory ark_selective_scan_bwd needs on `device` for these sizes.
ARK_API ark_status ark_selective_scan_bwd_workspace_size(const ark_selective_scan_args* args, ark_device device,
                                                         size_t* bytes);

/// Backward. Reads the forward inputs, dout, dlast_state, y_pre (when z) and, on CUDA, checkpoints.
/// Reductions over channels and batch run in a fixed order: results are deterministic.
/// `workspace` is device memory of at least ark_selective_scan_bwd_workspace_size bytes.
ARK_API ark_status ark_selective_scan_bwd(const ark_selective_scan_args* args, void* workspace,
                                         size_t workspace_bytes, ark_device device, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* ARKERNELS_SELECTIVE_SCAN_H */
