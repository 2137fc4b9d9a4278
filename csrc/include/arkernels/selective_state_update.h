/* Mamba decode step: advance a selective state-space state by k >= 0 tokens in place and return the
 * outputs. Torch-free C API. Math, layouts and numerics: docs/ops/selective_state_update.md.
 *
 * Both Mamba layouts map onto one unified layout: a state cache (Bc, H, P, N) whose channel
 * c = h * P + p reads B/C group c / (H * P / G). Mamba-1 is H = 1, P = dim; Mamba-2 is (H, P) =
 * (heads, head_dim). Per channel, token and state element n (all arithmetic in fp32):
 *   dt'  = dt + dt_bias                         (dt_bias optional)
 *   dt'  = dt' <= 20 ? log1p(exp(dt')) : dt'    (if dt_softplus)
 *   s[n] = s[n] * exp(dt' * A[n]) + B[n] * (dt' * x)
 *   out  = sum_n s[n] * C[n] + D * x            (D optional)
 *   out *= z * sigmoid(z)                       (z optional)
 * The state is carried in fp32 across the k tokens of one call and written back, rounded to its
 * dtype, once at the end (and after every token into intermediate_states when given).
 */
#ifndef ARKERNELS_SELECTIVE_STATE_UPDATE_H
#define ARKERNELS_SELECTIVE_STATE_UPDATE_H

#include "arkernels/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Every tensor is given by a pointer and element strides (>= 0; stride 0 broadcasts), in the axis
 * order of its comment. Sizes are counts of elements along each axis. */
typedef struct ark_selective_state_update_args {
  int64_t batch;       /* b: batch elements (rows of x) */
  int64_t tokens;      /* k in [0, 2^30]: tokens per batch element (1 for the plain decode step) */
  int64_t state_batch; /* Bc: rows of the state cache; must equal b when state_batch_indices is NULL */
  int64_t heads;       /* H (1 for Mamba-1) */
  int64_t head_dim;    /* P (dim for Mamba-1) */
  int64_t dstate;      /* N in [0, 2^30] */
  int64_t groups;      /* G >= 1 groups of B and C; H * P must be a multiple of G */

  void* state;            /* (Bc, H, P, N), state_dtype, read and written in place; no two elements may alias */
  int64_t state_strides[4];
  const void* x;          /* (b, k, H, P), input_dtype */
  int64_t x_strides[4];
  const void* dt;         /* (b, k, H, P), input_dtype */
  int64_t dt_strides[4];
  const void* A;          /* (H, P, N), A_dtype; a stride of 0 along N is detected (one exp per channel and token) */
  int64_t A_strides[3];
  const void* B;          /* (b, k, G, N), input_dtype */
  int64_t B_strides[4];
  const void* C;          /* (b, k, G, N), input_dtype */
  int64_t C_strides[4];
  const void* D;          /* (H, P), D_dtype, or NULL */
  int64_t D_strides[2];
  const void* z;          /* (b, k, H, P), input_dtype, or NULL */
  int64_t z_strides[4];
  const void* dt_bias;    /* (H, P), dt_bias_dtype, or NULL */
  int64_t dt_bias_strides[2];
  /* (b,) int32 (or int64 when state_batch_indices_int64 != 0), or NULL: batch element i uses state row
   * state_batch_indices[i]. A negative index marks padding: its outputs are 0 and no state is read or
   * written. Non-negative indices must be distinct. On the CPU an index >= Bc or a repeated index is an
   * ARK_ERROR_INVALID_ARGUMENT before anything runs; on CUDA (no host access to the indices) a row with
   * an index >= Bc is skipped and its outputs are NaN, and repeated indices race. */
  const void* state_batch_indices;
  int64_t state_batch_indices_stride;
  int state_batch_indices_int64;
  void* out;              /* (b, k, H, P), input_dtype, written */
  int64_t out_strides[4];
  /* (b, k, H, P, N), state_dtype, or NULL: the state after each token (rows of padding batch elements
   * are not written). */
  void* intermediate_states;
  int64_t intermediate_states_strides[5];

  int dt_softplus;        /* 0 or 1 */
  ark_dtype state_dtype;  /* state and intermediate_states */
  ark_dtype input_dtype;  /* x, dt, B, C, z and out */
  ark_dtype A_dtype;      /* fp32 or input_dtype in the torch op; any ark_dtype here */
  ark_dtype D_dtype;
  ark_dtype dt_bias_dtype;
} ark_selective_state_update_args;

/// Runs the update described by `args` on `device` (`stream`: a cudaStream_t for ARK_DEVICE_CUDA,
/// NULL = default stream; ignored on CPU). Returns ARK_ERROR_INVALID_ARGUMENT (message: which field,
/// expected, given) before touching any memory when an argument is not accepted.
ARK_API ark_status ark_selective_state_update(const ark_selective_state_update_args* args, ark_device device,
                                              void* stream);

#ifdef __cplusplus
}
#endif

#endif /* ARKERNELS_SELECTIVE_STATE_UPDATE_H */
