"""arkernels.selective_state_update and arkernels.selective_state_update_tokens: the Mamba decode step.

Advances a selective state-space state (Mamba-1 (batch, dim, dstate) or Mamba-2 (batch, nheads, headdim,
dstate)) by one token, or by k tokens in one launch for speculative decoding, updating it IN PLACE and
returning the output. A drop-in for mamba-ssm's ``selective_state_update`` (same arguments and layouts).

Backends: "cuda" and "cpu" run torch ops ``arkernels::selective_state_update`` / ``_tokens``
(csrc/torch/selective_state_update.cpp, which mutate ``state`` and are registered with ``Tensor(a!)``),
"reference" the pure-PyTorch definition. Inference only: there is no backward; an input that requires
grad under grad mode is refused with a ValueError. Fake kernels are registered here, so both ops work
under torch.compile(fullgraph=True) and pass torch.library.opcheck. Contract: docs/ops/selective_state_update.md.
"""
from __future__ import annotations

import torch

from arkernels import _library
from arkernels.ops import _backends
from arkernels.ops._checks import (
    FLOAT_DTYPES,
    check_bool,
    check_choice,
    check_same_device,
    check_same_dtype,
    check_same_shape,
    check_shape,
    check_tensor,
)
from arkernels.reference.selective_state_update import selective_state_update_ref, selective_state_update_tokens_ref

_OP = "selective_state_update"
_PREFERENCE = {"cuda": ("cuda",), "cpu": ("cpu",)}
_INDEX_DTYPES = (torch.int32, torch.int64)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           state_batch_indices=None, *, backend="auto"):
    """One decode step of a selective SSM; updates ``state`` in place and returns the output.

    Layouts (Mamba-1 / Mamba-2, chosen by ``state.dim()``):
        state: (Bc, dim, dstate) / (Bc, nheads, headdim, dstate), float32, float16 or bfloat16; updated in
            place (math in float32, written back in its own dtype)
        x, dt, z: (batch, dim) / (batch, nheads, headdim), one dtype among float32, float16, bfloat16
        A: (dim, dstate) / (nheads, headdim, dstate), float32 or the dtype of x; any strides (Mamba-2 models
            pass A broadcast over (headdim, dstate) with stride 0: one exp per row and token then)
        B, C: (batch, dstate) or (batch, ngroups, dstate), the dtype of x; ngroups divides dim / nheads
        D, dt_bias: (dim,) / (nheads, headdim), float32 or the dtype of x; optional
        dt_softplus: apply softplus to dt + dt_bias (passed through above 20)
        state_batch_indices: optional (batch,) int32 or int64: batch element i uses state row
            ``state_batch_indices[i]`` (continuous batching); a negative index is padding (its output is 0,
            no state is touched). Non-negative indices must be distinct and < Bc (checked on the CPU; on
            CUDA, checking would need a device sync: an index >= Bc leaves the state alone and gives NaN
            outputs). Without indices Bc must equal batch.
        backend: "auto", "cuda", "cpu" or "reference".

    Returns:
        out, the shape and dtype of x.
    """
    def validate():
        _validate(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, None, tokens=False)

    if _choose(backend, state, dt_softplus, validate) == "reference":
        validate()
        return selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices)
    return _backends.call_native(
        lambda: torch.ops.arkernels.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                                                           state_batch_indices), validate)


def selective_state_update_tokens(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                                  state_batch_indices=None, intermediate_states=None, *, backend="auto"):
    """k decode steps in one launch (speculative decoding); updates ``state`` in place, returns the outputs.

    As :func:`selective_state_update` with a token axis after the batch axis: x, dt, z (batch, k, dim) /
    (batch, k, nheads, headdim); B, C (batch, k, [ngroups,] dstate). The state is read once, carried in
    float32 across the k tokens and written once. ``intermediate_states``, optional, shape
    (batch, k, *state.shape[1:]) and the dtype of state, receives the state after each token (rows of
    padding batch elements are left as they are), so a verifier can roll back to any accepted prefix.

    Returns:
        out, the shape and dtype of x.
    """
    def validate():
        _validate(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, intermediate_states,
                  tokens=True)

    if _choose(backend, state, dt_softplus, validate) == "reference":
        validate()
        return selective_state_update_tokens_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                                                 state_batch_indices, intermediate_states)
    return _backends.call_native(
        lambda: torch.ops.arkernels.selective_state_update_tokens(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
                                                                  state_batch_indices, intermediate_states),
        validate)


def _choose(backend, state, dt_softplus, validate) -> str:
    """The backend for `state`'s device. The arguments are checked by the native op (csrc/torch), or by
    `validate` on the reference path or when the native op raises (_backends.call_native); only what
    the dispatcher lets through is checked here (it passes an int as a bool argument)."""
    if not isinstance(state, torch.Tensor):
        validate()  # raises: state names the device
    check_bool("dt_softplus", dt_softplus)
    device = state.device
    check_choice("backend", backend, _backends.BACKENDS)
    if backend == "triton":
        raise ValueError("backend: 'triton' cannot run here: selective_state_update has no Triton kernel "
                         "(use 'auto', 'cuda', 'cpu' or 'reference')")
    return _backends.resolve(_OP, backend, device, _PREFERENCE.get(device.type, ()))


def _shape_text(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _validate(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, indices, inter, *, tokens: bool) -> None:
    """Every argument check, with the argument's name, what was expected and what was given."""
    check_tensor("state", state)
    if state.dim() not in (3, 4):
        raise ValueError(f"state: expected (batch, dim, dstate) or (batch, nheads, headdim, dstate), got shape "
                         f"{tuple(state.shape)}")
    mamba2 = state.dim() == 4
    channel = tuple(state.shape[1:-1])  # (dim,) or (nheads, headdim)
    N = state.shape[-1]
    lead = 2 if tokens else 1
    lead_names = "(batch, tokens" if tokens else "(batch"
    channel_names = ", nheads, headdim)" if mamba2 else ", dim)"

    check_tensor("x", x)
    if x.dim() != lead + len(channel) or tuple(x.shape[lead:]) != channel:
        raise ValueError(f"x: expected shape {lead_names}{channel_names} with {channel_names[2:-1]} = "
                         f"{channel} from state {tuple(state.shape)}, got {tuple(x.shape)}")
    batch_shape = tuple(x.shape[:lead])
    b = x.shape[0]
    for name, t in (("dt", dt), ("B", B), ("C", C), ("A", A)):
        check_tensor(name, t)
    check_same_shape("x", x, "dt", dt)
    check_same_dtype("x", x, "dt", dt)

    check_shape("A", A, state.shape[1:])
    if B.dim() not in (lead + 1, lead + 2) or tuple(B.shape[:lead]) != batch_shape or B.shape[-1] != N:
        raise ValueError(f"B: expected shape {_shape_text(batch_shape + (N,))} or "
                         f"{_shape_text(batch_shape + ('ngroups', N))}, got {tuple(B.shape)}")
    groups = B.shape[-2] if B.dim() == lead + 2 else 1
    if groups < 1 or channel[0] % groups != 0:
        raise ValueError(f"B: expected a number of groups dividing {'nheads' if mamba2 else 'dim'} = {channel[0]}, "
                         f"got {groups}")
    check_same_dtype("x", x, "B", B)
    check_same_shape("B", B, "C", C)
    check_same_dtype("x", x, "C", C)
    optional = {"D": D, "dt_bias": dt_bias, "z": z}
    for name, t in optional.items():
        if t is not None:
            check_tensor(name, t)
    if z is not None:
        check_same_shape("x", x, "z", z)
        check_same_dtype("x", x, "z", z)
    for name, t in (("A", A), ("D", D), ("dt_bias", dt_bias)):
        if t is None:
            continue
        if name != "A":
            check_shape(name, t, channel)
        if t.dtype not in (torch.float32, x.dtype):
            raise TypeError(f"{name}: expected dtype float32 or the dtype of x ({str(x.dtype).replace('torch.', '')}), "
                            f"got {str(t.dtype).replace('torch.', '')}")
    for name, t in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), *optional.items(),
                    ("state_batch_indices", indices), ("intermediate_states", inter)):
        if t is not None and isinstance(t, torch.Tensor):
            check_same_device("state", state, name, t)

    if indices is not None:
        check_tensor("state_batch_indices", indices, dtypes=_INDEX_DTYPES)
        check_shape("state_batch_indices", indices, (b,))
    elif state.shape[0] != b:
        raise ValueError(f"state: expected {b} rows (the batch of x) without state_batch_indices, got "
                         f"{state.shape[0]} (shape {tuple(state.shape)})")
    if inter is not None:
        check_tensor("intermediate_states", inter, dtypes=FLOAT_DTYPES)
        check_same_dtype("state", state, "intermediate_states", inter)
        check_shape("intermediate_states", inter, batch_shape + tuple(state.shape[1:]))
    check_bool("dt_softplus", dt_softplus)

    if torch.is_grad_enabled():
        for name, t in (("state", state), ("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), *optional.items(),
                        ("intermediate_states", inter)):
            if t is not None and t.requires_grad:
                raise ValueError(f"{name}: requires grad, but selective_state_update has no backward (inference "
                                 "only); call it under torch.no_grad() or torch.inference_mode(), or pass detached "
                                 "tensors")
    if not torch.compiler.is_compiling():
        # Data-dependent or not traceable: checked eagerly only (the C API checks the indices on the CPU too).
        for name, t in (("state", state), ("intermediate_states", inter)):
            if t is not None and torch._debug_has_internal_overlap(t) == 1:
                raise ValueError(f"{name}: expected a tensor whose elements do not overlap (it is written), got "
                                 f"strides {t.stride()} for shape {tuple(t.shape)}")
        if indices is not None and indices.device.type == "cpu" and indices.numel() > 0:
            _check_index_values(indices, state.shape[0])


def _check_index_values(indices: torch.Tensor, rows: int) -> None:
    """On the CPU (no device sync): non-negative indices distinct and < rows."""
    used = indices[indices >= 0].to(torch.int64)
    if used.numel() == 0:
        return
    top = int(used.max())
    if top >= rows:
        pos = int((indices == top).nonzero()[0, 0])
        raise ValueError(f"state_batch_indices: expected values < {rows} (the rows of state), got {top} at "
                         f"position {pos}")
    if torch.unique(used).numel() != used.numel():
        values, counts = torch.unique(used, return_counts=True)
        raise ValueError(f"state_batch_indices: expected distinct non-negative values, got "
                         f"{int(values[counts > 1][0])} more than once")


# ---- fake kernels (shapes only; the state's update is declared by the schema's Tensor(a!)) ----

def _fake(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, state_batch_indices=None):
    # Defaults as in the schema: the dispatcher drops arguments that are at their default.
    return x.new_empty(x.shape)


def _fake_tokens(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, state_batch_indices=None,
                 intermediate_states=None):
    return x.new_empty(x.shape)


if _library.native_available():
    torch.library.register_fake("arkernels::selective_state_update")(_fake)
    torch.library.register_fake("arkernels::selective_state_update_tokens")(_fake_tokens)
