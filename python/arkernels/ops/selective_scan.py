"""arkernels.selective_scan: Mamba-1's selective scan (S6), a drop-in for mamba_ssm's selective_scan_fn.

Backends: "cuda" and "cpu" run torch op ``arkernels::selective_scan`` (csrc/torch/selective_scan.cpp),
"reference" the pure-PyTorch definition. Fake kernels and autograd are registered here, so the op
works under torch.compile(fullgraph=True) and passes torch.library.opcheck.
"""
from __future__ import annotations

import torch

from arkernels import _library
from arkernels.ops import _backends
from arkernels.ops._checks import (
    check_bool,
    check_choice,
    check_same_device,
    check_same_dtype,
    check_same_shape,
    check_shape,
    check_tensor,
)
from arkernels.reference.selective_scan import selective_scan_ref

MAX_DSTATE = 256
CHECKPOINT = 32  # steps between the states the forward keeps for the CUDA backward (selective_scan.h)
_PREFERENCE = {"cuda": ("cuda",), "cpu": ("cpu",)}
_ANY_FLOAT = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, initial_state=None, cu_seqlens=None, backend="auto"):
    """Mamba-1 selective scan. Same arguments and results as ``mamba_ssm.selective_scan_fn``, plus:

    Args:
        u, delta: (batch, dim, L), float32/float16/bfloat16, same dtype.
        A: (dim, N) real, N <= 256 (used in float32).
        B, C: constant (dim, N), input-dependent (batch, N, L), or grouped (batch, G, N, L) with G
            dividing dim; input-dependent B/C have u's dtype.
        D, delta_bias: optional (dim,). z: optional (batch, dim, L) gate, out = y * silu(z).
        delta_softplus: apply softplus to delta + delta_bias (passed through above 20).
        return_last_state: also return the state after the last step, float32 (batch, dim, N), or
            (num_seqs, dim, N) with cu_seqlens. Unlike mamba-ssm, its gradient is propagated.
        initial_state: optional (batch, dim, N) state before the first step (per sequence with
            cu_seqlens); differentiable.
        cu_seqlens: optional (num_seqs + 1,) integer tensor of boundaries of packed sequences in L
            (batch must be 1): the state restarts at each boundary. Checked on the host (one sync).
        backend: "auto", "cuda", "cpu" or "reference".
    """
    check_tensor("u", u)
    if u.dim() != 3:
        raise ValueError(f"u: expected shape (batch, dim, L), got {tuple(u.shape)}")
    check_tensor("delta", delta)
    check_same_shape("u", u, "delta", delta)
    check_same_dtype("u", u, "delta", delta)
    check_same_device("u", u, "delta", delta)
    batch, dim, L = u.shape
    if isinstance(A, torch.Tensor) and A.is_complex():
        raise TypeError("A: complex A is not supported (real A only), got dtype " + str(A.dtype).replace("torch.", ""))
    check_tensor("A", A, dtypes=_ANY_FLOAT)
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A: expected shape (dim={dim}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    if not 1 <= N <= MAX_DSTATE:
        raise ValueError(f"A: expected a state size N in 1..{MAX_DSTATE}, got N = {N}")
    check_same_device("u", u, "A", A)
    groups = None
    for name, x in (("B", B), ("C", C)):
        g = _check_bc(name, x, u, dim, N)
        if g is not None:
            if groups is not None and g != groups:
                raise ValueError(f"{name}: expected {groups} groups like B, got {g}")
            groups = g
    for name, x in (("D", D), ("delta_bias", delta_bias)):
        if x is not None:
            check_tensor(name, x, dtypes=_ANY_FLOAT)
            check_shape(name, x, (dim,))
            check_same_device("u", u, name, x)
    if z is not None:
        check_tensor("z", z)
        check_same_shape("u", u, "z", z)
        check_same_dtype("u", u, "z", z)
        check_same_device("u", u, "z", z)
    check_bool("delta_softplus", delta_softplus)
    check_bool("return_last_state", return_last_state)
    num_seqs = batch
    if cu_seqlens is not None:
        num_seqs = _check_cu_seqlens(cu_seqlens, u, batch, L)
    if initial_state is not None:
        check_tensor("initial_state", initial_state, dtypes=_ANY_FLOAT)
        check_shape("initial_state", initial_state, (num_seqs, dim, N))
        check_same_device("u", u, "initial_state", initial_state)
    check_choice("backend", backend, _backends.BACKENDS)
    chosen = _backends.resolve("selective_scan", backend, u.device, _PREFERENCE.get(u.device.type, ()))

    if chosen == "reference":
        out, last = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, True,
                                       initial_state=initial_state, cu_seqlens=cu_seqlens)
        last = last.to(torch.float32) if u.dtype != torch.float64 else last
    else:
        needs_grad = torch.is_grad_enabled() and any(
            isinstance(t, torch.Tensor) and t.requires_grad
            for t in (u, delta, A, B, C, D, z, delta_bias, initial_state))
        out, last, _, _ = torch.ops.arkernels.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                                             initial_state, cu_seqlens, needs_grad)
    return (out, last) if return_last_state else out


def _check_bc(name, x, u, dim, N):
    """Validates B or C; returns its group count when input-dependent, None when constant."""
    check_tensor(name, x, dtypes=_ANY_FLOAT)
    check_same_device("u", u, name, x)
    batch, _, L = u.shape
    if x.dim() == 2:
        check_shape(name, x, (dim, N))
        return None
    if x.dim() not in (3, 4):
        raise ValueError(f"{name}: expected (dim, N), (batch, N, L) or (batch, G, N, L), got {tuple(x.shape)}")
    if x.dtype != u.dtype:
        raise TypeError(f"{name}: expected dtype {u.dtype} (u's) for an input-dependent {name}, got {x.dtype}")
    groups = 1 if x.dim() == 3 else x.shape[1]
    expected = (batch, N, L) if x.dim() == 3 else (batch, groups, N, L)
    check_shape(name, x, expected)
    if groups < 1 or dim % groups:
        raise ValueError(f"{name}: expected a group count dividing dim = {dim}, got {groups}")
    return groups


def _check_cu_seqlens(cu_seqlens, u, batch, L) -> int:
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cu_seqlens: expected an int32 or int64 tensor, got {getattr(cu_seqlens, 'dtype', type(cu_seqlens))}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(f"cu_seqlens: expected shape (num_seqs + 1,) with num_seqs >= 1, got {tuple(cu_seqlens.shape)}")
    check_same_device("u", u, "cu_seqlens", cu_seqlens)
    if batch != 1:
        raise ValueError(f"cu_seqlens: packed sequences need batch == 1, got batch {batch}")
    if not torch.compiler.is_compiling():
        values = cu_seqlens.tolist()
        if values[0] != 0 or values[-1] != L:
            raise ValueError(f"cu_seqlens: expected to start at 0 and end at L = {L}, got {values[0]} ... {values[-1]}")
        for i in range(len(values) - 1):
            if values[i] > values[i + 1]:
                raise ValueError(f"cu_seqlens: expected non-decreasing values, got {values[i]} before {values[i + 1]}")
    return cu_seqlens.shape[0] - 1


# ---- fake kernels and autograd of the native op ----

def _num_seqs(u, cu_seqlens):
    return u.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


def _fake_forward(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None,
                  cu_seqlens=None, save_for_backward=False):
    batch, dim, L = u.shape
    N = A.shape[1]
    f32 = torch.float32
    ckpt = (u.new_empty((batch, dim, -(-L // CHECKPOINT), N), dtype=f32) if save_for_backward
            else u.new_empty((0,), dtype=f32))
    y_pre = u.new_empty(u.shape) if (save_for_backward and z is not None) else u.new_empty((0,))
    return u.new_empty(u.shape), u.new_empty((_num_seqs(u, cu_seqlens), dim, N), dtype=f32), ckpt, y_pre


def _fake_backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens, checkpoints,
                   y_pre, dout, dlast_state):
    dim, N = A.shape
    f32 = torch.float32

    def bc(x):
        return u.new_empty(x.shape) if x.dim() > 2 else u.new_empty((dim, N), dtype=f32)

    vec = lambda x: u.new_empty((dim,) if x is not None else (0,), dtype=f32)  # noqa: E731
    return (u.new_empty(u.shape), u.new_empty(u.shape), u.new_empty((dim, N), dtype=f32), bc(B), bc(C), vec(D),
            vec(delta_bias), u.new_empty(u.shape) if z is not None else u.new_empty((0,)),
            u.new_empty((_num_seqs(u, cu_seqlens), dim, N), dtype=f32))


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, cu_seqlens, _save = inputs
    _out, _last, checkpoints, y_pre = output
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, checkpoints, y_pre)
    ctx.delta_softplus = delta_softplus
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_out, grad_last, _grad_ckpt, _grad_y_pre):
    u, delta, A, B, C, D, z, delta_bias, initial_state, cu_seqlens, checkpoints, y_pre = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(u)
    du, ddelta, dA, dB, dC, dD, dbias, dz, dh0 = torch.ops.arkernels._selective_scan_backward(
        u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, initial_state, cu_seqlens, checkpoints, y_pre,
        grad_out, grad_last)
    cast = lambda g, x: None if x is None else g.to(x.dtype)  # noqa: E731
    return (du, ddelta, cast(dA, A), cast(dB, B), cast(dC, C), cast(dD, D), cast(dz, z), cast(dbias, delta_bias),
            None, cast(dh0, initial_state), None, None)


if _library.native_available():
    torch.library.register_fake("arkernels::selective_scan")(_fake_forward)
    torch.library.register_fake("arkernels::_selective_scan_backward")(_fake_backward)
    torch.library.register_autograd("arkernels::selective_scan", _backward, setup_context=_setup_context)
