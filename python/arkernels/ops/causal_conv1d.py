"""arkernels.causal_conv1d and arkernels.causal_conv1d_update: the causal depthwise 1-D convolution of
Mamba blocks (width 2-4), for training (forward + backward) and for decoding (in-place state update).

Backends: "cuda" and "cpu" run the torch ops ``arkernels::causal_conv1d`` / ``arkernels::causal_conv1d_update``
(C++/CUDA, csrc/torch/causal_conv1d.cpp); "reference" runs the pure-PyTorch definition
(arkernels.reference.causal_conv1d). There is no Triton kernel. The torch ops have fake kernels and the
forward has autograd registered here, so both work under torch.compile(fullgraph=True) and pass
torch.library.opcheck. Contract and derivation: docs/ops/causal_conv1d.md.
"""
from __future__ import annotations

import torch

from arkernels import _library
from arkernels.ops import _backends
from arkernels.ops._checks import (
    check_bool,
    check_choice,
    check_same_device,
    check_shape,
    check_tensor,
)
from arkernels.reference.causal_conv1d import causal_conv1d_ref, causal_conv1d_update_ref

# Fastest first, per device type (the only fast kernel per device).
_PREFERENCE = {"cuda": ("cuda",), "cpu": ("cpu",)}
ACTIVATIONS = (None, "silu", "swish")
WIDTHS = (2, 3, 4)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _check_param_dtype(name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    """weight, bias and initial_states may be float32 or x's dtype (read in that dtype by the kernels)."""
    if t.dtype not in (torch.float32, x.dtype):
        raise TypeError(f"{name}: expected dtype float32 or x's dtype ({_dtype_name(x.dtype)}), "
                        f"got {_dtype_name(t.dtype)}")


def _check_weight_bias(x: torch.Tensor, weight, bias, dim: int) -> int:
    """Validates weight (dim, width) and bias (dim,); returns the width."""
    check_tensor("weight", weight)
    if weight.dim() != 2 or weight.shape[0] != dim:
        raise ValueError(f"weight: expected shape ({dim}, width) with dim = x.shape[1] = {dim}, "
                         f"got {tuple(weight.shape)}")
    width = weight.shape[1]
    if width not in WIDTHS:
        raise ValueError(f"weight: expected width (weight.shape[1]) 2, 3 or 4, got {width}")
    _check_param_dtype("weight", weight, x)
    check_same_device("x", x, "weight", weight)
    if bias is not None:
        check_tensor("bias", bias)
        check_shape("bias", bias, (dim,))
        _check_param_dtype("bias", bias, x)
        check_same_device("x", x, "bias", bias)
    return width


def _resolve(op: str, backend: str, device: torch.device) -> str:
    check_choice("backend", backend, _backends.BACKENDS)
    if backend == "triton":
        raise ValueError(f"backend: 'triton' cannot run here: arkernels::{op} has no Triton kernel "
                         "(use 'auto', 'cuda', 'cpu' or 'reference')")
    return _backends.resolve(op, backend, device, _PREFERENCE.get(device.type, ()))


def causal_conv1d(x, weight, bias=None, initial_states=None, return_final_states=False, activation=None, *,
                  backend="auto"):
    """Causal depthwise convolution along the last axis of x (batch, dim, L):

        out[b, c, t] = act(bias[c] + sum_k weight[c, k] * xpad[b, c, t + k])

    with xpad = cat(initial_states (zeros if None), x) along time and act = silu or identity.

    Args:
        x: (batch, dim, L), float32, float16 or bfloat16, any strides. A view with unit time stride
            (e.g. a slice) is read in place; other layouts (channel-last x, x.stride(1) == 1) are
            copied once to a contiguous tensor first.
        weight: (dim, width), width 2, 3 or 4; float32 or x's dtype.
        bias: optional (dim,), float32 or x's dtype.
        initial_states: optional (batch, dim, width - 1), float32 or x's dtype: the inputs before x[..., 0].
        return_final_states: also return the last width - 1 inputs of the padded sequence,
            (batch, dim, width - 1) in x's dtype (they include initial states when L < width - 1).
        activation: None, "silu" or "swish" (= silu).
        backend: "auto", "cuda", "cpu" or "reference".

    Returns:
        out (contiguous, shape and dtype of x; accumulated in float32), and the final states if asked.
        Differentiable in x, weight, bias and initial_states, also through the final states.
    """
    check_tensor("x", x)
    if x.dim() != 3:
        raise ValueError(f"x: expected a (batch, dim, L) tensor, got shape {tuple(x.shape)}")
    batch, dim, _L = x.shape
    width = _check_weight_bias(x, weight, bias, dim)
    if initial_states is not None:
        check_tensor("initial_states", initial_states)
        check_shape("initial_states", initial_states, (batch, dim, width - 1))
        _check_param_dtype("initial_states", initial_states, x)
        check_same_device("x", x, "initial_states", initial_states)
    check_bool("return_final_states", return_final_states)
    check_choice("activation", activation, ACTIVATIONS)
    chosen = _resolve("causal_conv1d", backend, x.device)

    if chosen == "reference":
        return causal_conv1d_ref(x, weight, bias, initial_states, return_final_states, activation)
    out, final_states = torch.ops.arkernels.causal_conv1d(x, weight, bias, initial_states, return_final_states,
                                                          activation is not None)
    return (out, final_states) if return_final_states else out


def _check_inference_only(**tensors) -> None:
    if not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.requires_grad:
            raise ValueError(f"{name}: causal_conv1d_update is inference-only (no autograd), but {name} requires "
                             "grad while grad mode is on; call it under torch.no_grad() / torch.inference_mode() "
                             "or pass detached tensors")


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                         conv_state_indices=None, *, backend="auto"):
    """Decode step: convolve new tokens with the cached inputs and update the cache IN PLACE.

    Args:
        x: (batch, dim) one new token, or (batch, dim, k) k new tokens; any strides.
        conv_state: (n_state, dim, state_len), state_len >= width - 1, x's dtype, any strides; the last
            state_len inputs of each sequence, oldest first. Updated in place: shifted left by k with x
            appended (the last state_len of cat(state, x)).
        weight, bias, activation: as in :func:`causal_conv1d`.
        cache_seqlens: optional (batch,) int32: circular-buffer mode. The oldest entry of row b sits at
            cache_seqlens[b] mod state_len; x[..., t] is written at (cache_seqlens[b] + t) mod state_len
            and nothing is shifted. The op does not advance cache_seqlens.
        conv_state_indices: optional (batch,) int32: the row of conv_state that sequence b uses (else
            row b, and n_state must equal batch). A negative index (or one >= n_state) marks a padding
            slot: its output is 0 and no state row is touched. Indices must be distinct.
        backend: "auto", "cuda", "cpu" or "reference".

    Returns:
        The outputs of the new tokens, shape of x (contiguous), x's dtype.

    Inference-only: raises ValueError when grad mode is on and an input requires grad.
    """
    # What the dispatcher and the C++ binding cannot see: the activation's name and autograd (the op has no
    # Autograd kernel). Everything else is checked by the binding, or by _check_update_args where it runs.
    check_choice("activation", activation, ACTIVATIONS)
    _check_inference_only(x=x, conv_state=conv_state, weight=weight, bias=bias)

    def validate():
        _check_update_args(x, conv_state, weight, bias, cache_seqlens, conv_state_indices)

    if not isinstance(x, torch.Tensor):
        validate()  # raises: x names the device
    if _resolve("causal_conv1d_update", backend, x.device) == "reference":
        validate()
        return causal_conv1d_update_ref(x, conv_state, weight, bias, activation, cache_seqlens, conv_state_indices)
    x3 = x.unsqueeze(-1) if x.dim() == 2 else x
    out = _backends.call_native(
        lambda: torch.ops.arkernels.causal_conv1d_update(x3, conv_state, weight, bias, activation is not None,
                                                         cache_seqlens, conv_state_indices), validate)
    return out.squeeze(-1) if x.dim() == 2 else out


def _check_update_args(x, conv_state, weight, bias, cache_seqlens, conv_state_indices) -> None:
    """Every tensor argument of causal_conv1d_update, with the argument's name, expected and given."""
    check_tensor("x", x)
    if x.dim() not in (2, 3):
        raise ValueError(f"x: expected a (batch, dim) or (batch, dim, k) tensor, got shape {tuple(x.shape)}")
    batch, dim = x.shape[:2]
    width = _check_weight_bias(x, weight, bias, dim)
    check_tensor("conv_state", conv_state)
    if conv_state.dim() != 3 or conv_state.shape[1] != dim or conv_state.shape[2] < width - 1:
        raise ValueError(f"conv_state: expected shape (n_state, {dim}, state_len >= {width - 1}), "
                         f"got {tuple(conv_state.shape)}")
    if conv_state.dtype != x.dtype:
        raise TypeError(f"conv_state: expected the dtype of x ({_dtype_name(x.dtype)}), "
                        f"got {_dtype_name(conv_state.dtype)}")
    check_same_device("x", x, "conv_state", conv_state)
    if conv_state_indices is None and conv_state.shape[0] != batch:
        raise ValueError(f"conv_state: expected {batch} rows (the batch of x) when conv_state_indices is None, "
                         f"got {conv_state.shape[0]}")
    for name, t in (("cache_seqlens", cache_seqlens), ("conv_state_indices", conv_state_indices)):
        if t is not None:
            check_tensor(name, t, dtypes=(torch.int32,))
            check_shape(name, t, (batch,))
            check_same_device("x", x, name, t)


# ---- fake kernels and autograd of the native ops ----

def _fake_forward(x, weight, bias=None, initial_states=None, return_final_states=False, silu=False):
    # Defaults as in the schema: the dispatcher drops arguments that are at their default.
    final_shape = (x.shape[0], x.shape[1], weight.shape[1] - 1) if return_final_states else (0,)
    return x.new_empty(x.shape), x.new_empty(final_shape)


def _fake_backward(x, weight, bias, initial_states, grad_out, grad_final_states, silu):
    f32 = torch.float32
    dbias = x.new_empty((x.shape[1],), dtype=f32) if bias is not None else x.new_empty((0,), dtype=f32)
    dinit = (x.new_empty((x.shape[0], x.shape[1], weight.shape[1] - 1), dtype=f32) if initial_states is not None
             else x.new_empty((0,), dtype=f32))
    return x.new_empty(x.shape), x.new_empty(weight.shape, dtype=f32), dbias, dinit


def _fake_update(x, conv_state, weight, bias=None, silu=False, cache_seqlens=None, conv_state_indices=None):
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    x, weight, bias, initial_states, _return_final_states, silu = inputs
    ctx.save_for_backward(x, weight, bias, initial_states)
    ctx.silu = silu
    # An unused output (the final states, usually) then reaches the backward as None, not as zeros.
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, grad_final_states):
    x, weight, bias, initial_states = ctx.saved_tensors
    if grad_out is None:
        grad_out = x.new_zeros(x.shape)
    if grad_final_states is not None and grad_final_states.numel() == 0:
        grad_final_states = None
    dx, dweight, dbias, dinit = torch.ops.arkernels._causal_conv1d_backward(
        x, weight, bias, initial_states, grad_out.to(x.dtype), grad_final_states, ctx.silu)
    return (dx, dweight.to(weight.dtype), None if bias is None else dbias.to(bias.dtype),
            None if initial_states is None else dinit.to(initial_states.dtype), None, None)


if _library.native_available():
    torch.library.register_fake("arkernels::causal_conv1d")(_fake_forward)
    torch.library.register_fake("arkernels::_causal_conv1d_backward")(_fake_backward)
    torch.library.register_fake("arkernels::causal_conv1d_update")(_fake_update)
    torch.library.register_autograd("arkernels::causal_conv1d", _backward, setup_context=_setup_context)
