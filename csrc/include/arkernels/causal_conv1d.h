/* Causal depthwise 1-D convolution (the short convolution of Mamba blocks), its backward and the
 * decode-time state update. Torch-free C API. Math and the backward derivation: docs/ops/causal_conv1d.md.
 *
 * With width W, per channel c of a (batch, dim, L) input x:
 *   out[b,c,t] = act(bias[c] + sum_{k<W} weight[c,k] * xpad[b,c,t+k]),   t in [0, L)
 * where xpad = [initial_states[b,c,0..W-2] (zeros when NULL), x[b,c,0..L-1]] (length L + W - 1) and
 * act is the identity or silu. The final states are xpad[b,c,L..L+W-2], the last W-1 entries. */
#ifndef ARKERNELS_CAUSAL_CONV1D_H
#define ARKERNELS_CAUSAL_CONV1D_H

#include <stddef.h>

#include "arkernels/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/// Forward. Accumulation is fp32 whatever the dtypes; out and final_states are rounded to `dtype`.
/// \param[in]  x               batch x dim x L, dtype `dtype`, element (b, c, t) at
///                             x[b * x_batch_stride + c * x_dim_stride + t] (unit time stride)
/// \param[in]  weight          dim x width, contiguous, dtype `param_dtype`; width in {2, 3, 4}
/// \param[in]  bias            dim, dtype `param_dtype`, or NULL for zeros
/// \param[in]  initial_states  batch x dim x (width-1), contiguous, dtype `states_dtype`, or NULL for zeros
/// \param[out] out             batch x dim x L, contiguous, dtype `dtype`
/// \param[out] final_states    batch x dim x (width-1), contiguous, dtype `dtype`, or NULL
/// \param      silu            1: act = silu; 0: identity
/// \param      stream          a cudaStream_t for ARK_DEVICE_CUDA (NULL = default stream); ignored on CPU
ARK_API ark_status ark_causal_conv1d_fwd(const void* x, const void* weight, const void* bias, ark_dtype param_dtype,
                                         const void* initial_states, ark_dtype states_dtype, void* out,
                                         void* final_states, int64_t batch, int64_t dim, int64_t L, int width,
                                         int64_t x_batch_stride, int64_t x_dim_stride, int silu, ark_dtype dtype,
                                         ark_device device, void* stream);

/// Bytes of scratch memory ark_causal_conv1d_bwd needs on `device` for this problem (0 on the CPU).
/// It holds per-tile partial sums of dweight and dbias, reduced in a fixed order afterwards, so that
/// the weight gradients are bitwise reproducible (no float atomics).
ARK_API ark_status ark_causal_conv1d_bwd_workspace_bytes(int64_t batch, int64_t dim, int64_t L, int width,
                                                         ark_dtype dtype, ark_device device, size_t* bytes);

/// Backward of ark_causal_conv1d_fwd (the forward's pre-activation is recomputed from x).
/// With gpre[t] = grad_out[t] * act'(pre[t]) and gxpad = dL/dxpad:
///   gxpad[s] = sum_k weight[k] * gpre[s-k] (terms with s-k in [0, L)) + grad_final_states[s-L] (s >= L)
///   dx[t] = gxpad[t + W - 1], dinitial_states[i] = gxpad[i] (i < W-1)
///   dweight[c,k] = sum_{b,t} gpre[b,c,t] * xpad[b,c,t+k],  dbias[c] = sum_{b,t} gpre[b,c,t]
/// \param[in]  grad_out           batch x dim x L, dtype `dtype`, strides (g_batch_stride, g_dim_stride, 1)
/// \param[in]  grad_final_states  batch x dim x (width-1), contiguous, dtype `dtype`, or NULL for zeros
/// \param[out] dx                 batch x dim x L, contiguous, dtype `dtype`
/// \param[out] dweight            dim x width, fp32, or NULL when not needed
/// \param[out] dbias              dim, fp32, or NULL when not needed
/// \param[out] dinitial_states    batch x dim x (width-1), fp32, or NULL when not needed
/// \param      workspace          at least ark_causal_conv1d_bwd_workspace_bytes bytes of `device` memory
///                                (NULL when that is 0); 16-byte aligned
ARK_API ark_status ark_causal_conv1d_bwd(const void* x, const void* weight, const void* bias, ark_dtype param_dtype,
                                         const void* initial_states, ark_dtype states_dtype, const void* grad_out,
                                         const void* grad_final_states, void* dx, float* dweight, float* dbias,
                                         float* dinitial_states, void* workspace, size_t workspace_bytes,
                                         int64_t batch, int64_t dim, int64_t L, int width, int64_t x_batch_stride,
                                         int64_t x_dim_stride, int64_t g_batch_stride, int64_t g_dim_stride,
                                         int silu, ark_dtype dtype, ark_device device, void* stream);

/// Decode step: `seqlen` new tokens per sequence, the state updated in place.
/// Row r of conv_state is conv_state_indices[b] (b itself when NULL); a row outside [0, state_batch)
/// (e.g. -1 for a padding slot) gives out = 0 and leaves conv_state untouched. Rows must be distinct.
/// The state holds the last `state_len` (>= width-1) inputs, oldest first:
///  - cache_seqlens NULL: out[t] uses the last width-1 state entries and new tokens before t; then the
///    row is shifted left by seqlen and x appended (the last state_len of [state, x]).
///  - cache_seqlens given: a circular buffer. The oldest entry sits at position
///    q0 = cache_seqlens[b] mod state_len; x[t] is written at (q0 + t) mod state_len; nothing is shifted.
/// \param[in]     x             batch x dim x seqlen, dtype `dtype`, strides (x_batch_stride, x_dim_stride, x_time_stride)
/// \param[in,out] conv_state    state_batch x dim x state_len, dtype `dtype`, strides as named
/// \param[in]     cache_seqlens batch, int32, or NULL
/// \param[in]     conv_state_indices batch, int32, or NULL
/// \param[out]    out           batch x dim x seqlen, contiguous, dtype `dtype`
ARK_API ark_status ark_causal_conv1d_update(const void* x, void* conv_state, const void* weight, const void* bias,
                                            ark_dtype param_dtype, const int32_t* cache_seqlens,
                                            const int32_t* conv_state_indices, void* out, int64_t batch, int64_t dim,
                                            int64_t seqlen, int width, int64_t state_batch, int64_t state_len,
                                            int64_t x_batch_stride, int64_t x_dim_stride, int64_t x_time_stride,
                                            int64_t state_batch_stride, int64_t state_dim_stride,
                                            int64_t state_time_stride, int silu, ark_dtype dtype, ark_device device,
                                            void* stream);

#ifdef __cplusplus
}
#endif

#endif /* ARKERNELS_CAUSAL_CONV1D_H */
