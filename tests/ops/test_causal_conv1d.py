"""arkernels.causal_conv1d and arkernels.causal_conv1d_update against their float64 reference, on every
backend, forward and backward.

Contract (docs/ops/causal_conv1d.md, ARCHITECTURE.md "Numerics contract" and "Bad input"):
out[b,c,t] = act(bias[c] + sum_k weight[c,k] * xpad[b,c,t+k]), xpad = cat(initial_states or zeros, x);
final states = xpad[..., L:] in x's dtype; gradients reach x, weight, bias and initial_states, also
through the final states; the update op shifts the state in place (or writes a circular buffer).

Every comparison is against the reference evaluated in float64 on the same (rounded) inputs, with the
norm-relative bound of numerics.REL_TOL plus a max-abs bound. Gradients in bf16/fp16 may be as far from
float64 as twice the reference run in that dtype. Outputs are NaN-poisoned before every kernel (autouse
fixture), so an element a kernel forgets to write fails.

Test ids name the backend and, for GPU tensors, "cuda" (the GPU script selects with ``-k cuda``).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import arkernels
from arkernels import _outputs
from arkernels.reference import causal_conv1d_ref, causal_conv1d_update_ref
from arkernels.testing import inputs
from arkernels.testing.numerics import REL_TOL, assert_close_to_reference, relative_error

HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
slow = pytest.mark.slow

# (backend, device of the tensors). "auto" runs on both devices.
BACKENDS = [
    pytest.param("cpu", "cpu", id="cpu"),
    pytest.param("reference", "cpu", id="reference-cpu"),
    pytest.param("auto", "cpu", id="auto-cpu"),
    pytest.param("cuda", "cuda", id="cuda", marks=gpu),
    pytest.param("auto", "cuda", id="auto-cuda", marks=gpu),
]
# The kernels only (the grids that are too large to repeat for "auto" and "reference").
KERNEL_BACKENDS = [BACKENDS[0], BACKENDS[3]]
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float16, id="fp16"),
]
WIDTHS = [pytest.param(w, id=f"W{w}") for w in (2, 3, 4)]
# Odd lengths: shorter than the width, one vector, rows that start off 16-byte boundaries (372, 1134),
# several tiles plus one element (4097).
LENGTHS = [pytest.param(n, id=f"L{n}") for n in (1, 2, 7, 372, 1134, 4097)]
# (batch, dim) per length: odd dims 5 and 37, batch 1 and 3, few elements on the CPU.
SHAPE_FOR_L = {1: (3, 37), 2: (3, 37), 7: (1, 37), 372: (3, 5), 1134: (1, 37), 4097: (3, 5)}

# name -> (bias, activation, initial_states, return_final_states, dtype of weight/bias/initial_states:
# "fp32" or "x" = x's dtype; bias and weight may differ)
FEATURES = {
    "plain": (False, None, False, False, ("fp32", "fp32", "fp32")),
    "bias_silu_final": (True, "silu", False, True, ("x", "x", "fp32")),
    "init_final": (False, None, True, True, ("fp32", "fp32", "x")),
    "all": (True, "swish", True, True, ("x", "fp32", "fp32")),
}
MAX_ABS_FACTOR = 4.0


@pytest.fixture(autouse=True)
def _poisoned_outputs():
    """NaN-fill every output of the C++ kernels before they run (forward and backward)."""
    with _outputs.poisoned_outputs():
        yield


# ---- helpers: inputs, one forward + backward, comparison ----

def _param_dtype(kind: str, dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if kind == "fp32" else dtype


def _conv_inputs(rng, x_shape, width, dtype, device, *, bias=True, init=True, param_kinds=("fp32",) * 3):
    """Leaves (x, weight, bias, initial_states) for x of shape (batch, dim, L); bias/initial_states are
    None when not asked. param_kinds: dtypes of weight, bias, initial_states ("fp32" or "x")."""
    batch, dim, _L = x_shape
    w_kind, b_kind, h_kind = param_kinds
    x = inputs.normal(x_shape, generator=rng, dtype=dtype, device=device)
    weight = inputs.normal((dim, width), generator=rng, dtype=_param_dtype(w_kind, dtype), device=device, std=0.5)
    b = inputs.normal((dim,), generator=rng, dtype=_param_dtype(b_kind, dtype), device=device) if bias else None
    h = (inputs.normal((batch, dim, width - 1), generator=rng, dtype=_param_dtype(h_kind, dtype), device=device)
         if init else None)
    return x, weight, b, h


def _identity(x, w, b, h):
    return x, w, b, h


def _assert_close(out, ref, rel_tol, name):
    scale = ref.detach().abs().max().item() if ref.numel() else 0.0
    assert_close_to_reference(out, ref, rel_tol=rel_tol, max_abs=MAX_ABS_FACTOR * rel_tol * scale + 1e-30, name=name)


def _forward_backward(fn, leaves, w_out, w_final, *, view=_identity, dtype=None, activation=None,
                      return_final=True, **kwargs):
    """Runs fn(*view(*leaves)) on fresh copies of the leaves (cast to `dtype` when given), differentiates
    <out, w_out> + <final, w_final> with torch.autograd.grad and returns out, final (or None) and the
    gradients of the leaves (None for absent leaves; zeros where autograd found no path)."""
    fresh = [None if t is None else t.detach().to(dtype or t.dtype).clone().requires_grad_(True) for t in leaves]
    x, w, b, h = view(*fresh)
    res = fn(x, w, b, h, return_final, activation, **kwargs)
    out, final = res if return_final else (res, None)
    loss = (out.to(torch.float64) * w_out).sum()
    if final is not None:
        loss = loss + (final.to(torch.float64) * w_final).sum()
    present = [t for t in fresh if t is not None]
    grads = iter(torch.autograd.grad(loss, present, allow_unused=True, materialize_grads=True))
    return out.detach(), None if final is None else final.detach(), [None if t is None else next(grads) for t in fresh]


def check_conv(backend, leaves, rng, *, activation, return_final, view=_identity):
    """The whole contract for one input: out, final states and the gradients of every leaf from
    `backend` against float64; returns (out, final) of the backend."""
    x, weight, bias, h = view(*leaves)
    dtype = x.dtype
    width = weight.shape[1]
    fin_shape = (x.shape[0], x.shape[1], width - 1)
    w_out = inputs.normal(x.shape, generator=rng, dtype=torch.float64, device=x.device)
    w_final = inputs.normal(fin_shape, generator=rng, dtype=torch.float64, device=x.device)
    before = [None if t is None else t.clone() for t in leaves]

    out, final, grads = _forward_backward(arkernels.causal_conv1d, leaves, w_out, w_final, view=view,
                                          activation=activation, return_final=return_final, backend=backend)
    ref_out, ref_final, ref_grads = _forward_backward(causal_conv1d_ref, leaves, w_out, w_final, view=view,
                                                      dtype=torch.float64, activation=activation,
                                                      return_final=return_final)
    for t, t0 in zip(leaves, before):  # inputs are read, never written
        assert t is None or torch.equal(t, t0)

    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    tol = REL_TOL[dtype]
    _assert_close(out, ref_out, tol, f"{backend} out")
    if return_final:
        assert final.shape == fin_shape and final.dtype == dtype and final.device == x.device
        # The final states are inputs (x or initial states) rounded to x's dtype: exact.
        torch.testing.assert_close(final, ref_final.to(dtype), rtol=0, atol=0)

    grad_tols = [tol] * 4
    if dtype != torch.float32:
        # A kernel in low precision may be twice as far from float64 as the reference run in that
        # precision (rounded output, output gradient and input gradients) is, gradient by gradient.
        _, _, low = _forward_backward(causal_conv1d_ref, leaves, w_out, w_final, view=view, activation=activation,
                                      return_final=return_final)
        grad_tols = [tol if g is None else max(tol, 2 * relative_error(g, r)) for g, r in zip(low, ref_grads)]
    for name, leaf, g, r, grad_tol in zip(("x", "weight", "bias", "initial_states"), leaves, grads, ref_grads,
                                          grad_tols):
        if leaf is None:
            continue
        assert g.dtype == leaf.dtype and g.shape == leaf.shape, f"grad of {name}: {g.dtype} {tuple(g.shape)}"
        _assert_close(g, r, grad_tol, f"{backend} grad of {name}")
    return out, final


# ---- the reference itself ----

@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("L", [pytest.param(n, id=f"L{n}") for n in (1, 2, 7, 100)])
def test_reference_matches_f_conv1d(L, width, rng):
    """Without initial states the definition is F.conv1d with left padding width-1, first L outputs."""
    x, w, b, _ = _conv_inputs(rng, (3, 5, L), width, torch.float64, "cpu", init=False, param_kinds=("x",) * 3)
    expected = F.conv1d(x, w.unsqueeze(1), b, padding=width - 1, groups=5)[..., :L]
    torch.testing.assert_close(causal_conv1d_ref(x, w, b), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(causal_conv1d_ref(x, w, b, activation="silu"), F.silu(expected), rtol=1e-12, atol=1e-12)


def test_reference_by_hand():
    """x = [1, 2, 3], w = [1, 10, 100], h0 = [4, 5]: out = [1*4 + 10*5 + 100*1, 5 + 10 + 200, 1 + 20 + 300]."""
    x = torch.tensor([[[1.0, 2.0, 3.0]]], dtype=torch.float64)
    w = torch.tensor([[1.0, 10.0, 100.0]], dtype=torch.float64)
    h = torch.tensor([[[4.0, 5.0]]], dtype=torch.float64)
    out, fin = causal_conv1d_ref(x, w, None, h, return_final_states=True)
    assert out.tolist() == [[[154.0, 215.0, 321.0]]]
    assert fin.tolist() == [[[2.0, 3.0]]]


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_causal_conv1d_by_hand(backend, device):
    """The same example on every backend, and L = 1 < width - 1: the final states take an initial state."""
    x = torch.tensor([[[1.0, 2.0, 3.0]]], device=device)
    w = torch.tensor([[1.0, 10.0, 100.0]], device=device)
    h = torch.tensor([[[4.0, 5.0]]], device=device)
    out, fin = arkernels.causal_conv1d(x, w, None, h, return_final_states=True, backend=backend)
    assert out.cpu().tolist() == [[[154.0, 215.0, 321.0]]]
    assert fin.cpu().tolist() == [[[2.0, 3.0]]]
    out, fin = arkernels.causal_conv1d(x[..., :1], w, None, h, return_final_states=True, backend=backend)
    assert out.cpu().tolist() == [[[154.0]]]
    assert fin.cpu().tolist() == [[[5.0, 1.0]]]


# ---- every backend against float64: dtypes x widths x lengths x features ----

@pytest.mark.parametrize("features", list(FEATURES))
@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_causal_conv1d_matches_reference(backend, device, dtype, width, L, features, rng):
    bias, activation, init, final, kinds = FEATURES[features]
    batch, dim = SHAPE_FOR_L[L]
    leaves = _conv_inputs(rng, (batch, dim, L), width, dtype, device, bias=bias, init=init, param_kinds=kinds)
    check_conv(backend, leaves, rng, activation=activation, return_final=final)


@pytest.mark.parametrize("features", ["plain", "all"])
@pytest.mark.parametrize("L", [pytest.param(n, id=f"L{n}") for n in (1, 7, 1134)])
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[1]])
@pytest.mark.parametrize("backend,device", [BACKENDS[1], BACKENDS[2], BACKENDS[4]])
def test_causal_conv1d_other_backends(backend, device, dtype, L, features, rng):
    """"reference" and "auto" on a smaller grid (auto runs the kernels tested above)."""
    bias, activation, init, final, kinds = FEATURES[features]
    batch, dim = SHAPE_FOR_L[L]
    leaves = _conv_inputs(rng, (batch, dim, L), 4, dtype, device, bias=bias, init=init, param_kinds=kinds)
    check_conv(backend, leaves, rng, activation=activation, return_final=final)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("L", [pytest.param(n, id=f"L{n}") for n in (1, 2)])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_final_states_shorter_than_width(backend, device, L, width, rng):
    """L < width - 1: the final states are the tail of [initial_states, x] (zeros without initial states)."""
    x, w, b, h = _conv_inputs(rng, (2, 3, L), width, torch.float32, device)
    _, fin = arkernels.causal_conv1d(x, w, b, h, return_final_states=True, backend=backend)
    torch.testing.assert_close(fin, torch.cat([h, x], dim=-1)[..., -(width - 1):], rtol=0, atol=0)
    _, fin = arkernels.causal_conv1d(x, w, b, None, return_final_states=True, backend=backend)
    torch.testing.assert_close(fin, F.pad(x, (width - 1, 0))[..., -(width - 1):], rtol=0, atol=0)


@pytest.mark.parametrize("used", ["out_only", "final_only"])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradient_of_one_output(backend, device, used, rng):
    """Backward when only one of (out, final states) reaches the loss."""
    leaves = _conv_inputs(rng, (2, 5, 9), 4, torch.float32, device)
    w_out = inputs.normal((2, 5, 9), generator=rng, dtype=torch.float64, device=device)
    w_fin = inputs.normal((2, 5, 3), generator=rng, dtype=torch.float64, device=device)
    if used == "out_only":
        w_fin = torch.zeros_like(w_fin)

    def run(fn, dtype=None, **kw):
        xs = [t.detach().to(dtype or t.dtype).requires_grad_(True) for t in leaves]
        out, fin = fn(*xs, True, "silu", **kw)
        loss = (out.double() * w_out).sum() if used == "out_only" else (fin.double() * w_fin).sum()
        return torch.autograd.grad(loss, xs, allow_unused=True, materialize_grads=True)

    for name, g, r in zip(("x", "weight", "bias", "initial_states"), run(arkernels.causal_conv1d, backend=backend),
                          run(causal_conv1d_ref, torch.float64)):
        _assert_close(g, r, REL_TOL[torch.float32], f"{backend} grad of {name} ({used})")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_return_final_states_false_returns_tensor(backend, device, rng):
    x, w, b, h = _conv_inputs(rng, (2, 5, 40), 4, torch.float32, device)
    out = arkernels.causal_conv1d(x, w, b, h, activation="silu", backend=backend)
    assert isinstance(out, torch.Tensor)
    pair = arkernels.causal_conv1d(x, w, b, h, True, "silu", backend=backend)
    assert isinstance(pair, tuple) and len(pair) == 2
    torch.testing.assert_close(out, pair[0], rtol=0, atol=0)


# ---- layouts: channel-last, strided slices, broadcast, non-contiguous parameters ----

B, D = 2, 5
# name -> (leaf shapes for (L, W): x, weight, initial_states; view from leaves to op inputs; whether x
# is non-contiguous)
LAYOUTS = {
    # (B, L, D) transposed to (B, D, L): channel-last, x.stride(1) == 1 (copied once by the op).
    "channel_last": (lambda L, W: ((B, L, D), (D, W), (B, D, W - 1)),
                     lambda x, w, b, h: (x.transpose(1, 2), w, b, h), True),
    # A window of a longer sequence: unit time stride, row stride L + 5, rows start off 16-byte boundaries.
    "time_slice": (lambda L, W: ((B, D, L + 5), (D, W), (B, D, W - 1)),
                   lambda x, w, b, h: (x[..., 2:-3], w, b, h), True),
    # Every other channel: dim stride 2L.
    "channel_step": (lambda L, W: ((B, 2 * D, L), (D, W), (B, D, W - 1)),
                     lambda x, w, b, h: (x[:, ::2], w, b, h), True),
    # Every other time step: time stride 2 (copied).
    "time_step": (lambda L, W: ((B, D, 2 * L), (D, W), (B, D, W - 1)),
                  lambda x, w, b, h: (x[..., ::2], w, b, h), True),
    # One sequence broadcast over the batch (batch stride 0).
    "expanded_batch": (lambda L, W: ((1, D, L), (D, W), (B, D, W - 1)),
                       lambda x, w, b, h: (x.expand(B, -1, -1), w, b, h), True),
    # weight (W, D) transposed and initial states (B, W-1, D) transposed: non-contiguous parameters.
    "transposed_params": (lambda L, W: ((B, D, L), (W, D), (B, W - 1, D)),
                          lambda x, w, b, h: (x, w.t(), b, h.transpose(1, 2)), False),
}


@pytest.mark.parametrize("width", [WIDTHS[0], WIDTHS[2]])
@pytest.mark.parametrize("L", [pytest.param(n, id=f"L{n}") for n in (7, 1134)])
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[1]])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_causal_conv1d_layouts(backend, device, layout, dtype, L, width, rng):
    shapes, view, non_contiguous = LAYOUTS[layout]
    x_shape, w_shape, h_shape = shapes(L, width)
    x = inputs.normal(x_shape, generator=rng, dtype=dtype, device=device)
    w = inputs.normal(w_shape, generator=rng, dtype=torch.float32, device=device, std=0.5)
    b = inputs.normal((D,), generator=rng, dtype=torch.float32, device=device)
    h = inputs.normal(h_shape, generator=rng, dtype=dtype, device=device)
    vx, vw, _, vh = view(x, w, b, h)
    assert vx.shape == (B, D, L) and vw.shape == (D, width) and vh.shape == (B, D, width - 1)
    if non_contiguous:
        assert not vx.is_contiguous()  # the layout tests what its name says
    if layout == "channel_last":
        assert vx.stride(1) == 1
    check_conv(backend, (x, w, b, h), rng, activation="silu", return_final=True, view=view)


# ---- empty tensors ----

@pytest.mark.parametrize("shape", [pytest.param(s, id="x".join(map(str, s))) for s in
                                   [(2, 3, 0), (0, 3, 5), (2, 0, 5), (0, 0, 0)]])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_causal_conv1d_empty(backend, device, shape, rng):
    """Empty inputs: empty outputs; with L = 0 the final states are the initial states, and the weight
    gradients are zeros (sums over nothing)."""
    leaves = _conv_inputs(rng, shape, 3, torch.float32, device)
    out, fin = check_conv(backend, leaves, rng, activation="silu", return_final=True)
    assert out.shape == shape and fin.shape == (shape[0], shape[1], 2)
    if shape[2] == 0:
        torch.testing.assert_close(fin, leaves[3], rtol=0, atol=0)


# ---- poisoning is active ----

def test_poisoned_outputs_fill_new_outputs_with_nan():
    with _outputs.poisoned_outputs():
        assert torch.isnan(_outputs.new_output((3, 5), dtype=torch.float32, device="cpu")).all()


# ---- decode update ----

def _state_after(seq: torch.Tensor, state_len: int) -> torch.Tensor:
    """The last state_len inputs of a sequence (B, D, n), zero-padded in front when n < state_len."""
    return F.pad(seq, (state_len, 0))[..., -state_len:]


UPDATE_STEPS = [pytest.param(k, id=f"k{k}") for k in ("1_2d", 1, 3, 7)]


@pytest.mark.parametrize("state_extra", [pytest.param(0, id="state_len_W-1"), pytest.param(3, id="state_len_W+2")])
@pytest.mark.parametrize("k", UPDATE_STEPS)
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_update_matches_full_convolution(backend, device, dtype, width, k, state_extra, rng):
    """Decoding a sequence in steps of k tokens (three steps after a prefix of 5) gives the outputs of
    the full convolution over the whole sequence, and the state ends as its last state_len inputs."""
    two_d = k == "1_2d"
    k = 1 if two_d else k
    batch, dim, prefix, steps = 3, 37, 5, 3
    state_len = width - 1 + state_extra
    total = prefix + steps * k
    seq = inputs.normal((batch, dim, total), generator=rng, dtype=dtype, device=device)
    w = inputs.normal((dim, width), generator=rng, dtype=dtype, device=device, std=0.5)
    b = inputs.normal((dim,), generator=rng, dtype=torch.float32, device=device)
    full = causal_conv1d_ref(seq.double(), w.double(), b.double(), activation="silu")
    state = _state_after(seq[..., :prefix], state_len).contiguous()
    for s in range(steps):
        lo = prefix + s * k
        x = seq[..., lo:lo + k]
        x = x[..., 0] if two_d else x
        with torch.no_grad():
            out = arkernels.causal_conv1d_update(x, state, w, b, "silu", backend=backend)
        assert out.shape == x.shape and out.dtype == dtype
        expected = full[..., lo:lo + k]
        _assert_close(out, expected[..., 0] if two_d else expected, REL_TOL[dtype], f"{backend} step {s} out")
        torch.testing.assert_close(state, _state_after(seq[..., :lo + k], state_len), rtol=0, atol=0)


@pytest.mark.parametrize("k", [pytest.param(1, id="k1"), pytest.param(4, id="k4")])
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[1]])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_update_with_state_indices(backend, device, dtype, k, rng):
    """conv_state_indices picks rows of a larger cache (a strided view); -1 marks a padding slot: output
    0, no row touched. Rows nobody names, and memory outside the view, stay as they were."""
    batch, dim, width, state_len, n_state = 4, 5, 4, 6, 7
    indices = torch.tensor([5, -1, 0, 3], dtype=torch.int32, device=device)
    big = inputs.normal((n_state, dim, state_len + 2), generator=rng, dtype=dtype, device=device)
    conv_state = big[..., 1:-1]  # a view: time stride 1, row stride state_len + 2
    before = big.clone()
    x = inputs.normal((batch, dim, k), generator=rng, dtype=dtype, device=device)
    w = inputs.normal((dim, width), generator=rng, dtype=torch.float32, device=device, std=0.5)
    b = inputs.normal((dim,), generator=rng, dtype=torch.float32, device=device)
    with torch.no_grad():
        out = arkernels.causal_conv1d_update(x, conv_state, w, b, None, conv_state_indices=indices, backend=backend)
    for i, r in enumerate(indices.tolist()):
        if r < 0:
            assert torch.equal(out[i], torch.zeros_like(out[i])), "a padding slot's output is 0"
            continue
        old = before[r, :, 1:-1]
        seq = torch.cat([old, x[i]], dim=-1).double()
        expected = causal_conv1d_ref(seq[None], w.double(), b.double())[0, :, -k:]
        _assert_close(out[i], expected, REL_TOL[dtype], f"{backend} out of sequence {i}")
        torch.testing.assert_close(conv_state[r], seq[:, -state_len:].to(dtype), rtol=0, atol=0)
    untouched = [r for r in range(n_state) if r not in indices.tolist()]
    assert torch.equal(big[untouched], before[untouched])
    assert torch.equal(big[..., 0], before[..., 0]) and torch.equal(big[..., -1], before[..., -1])


@pytest.mark.parametrize("k", [pytest.param(1, id="k1"), pytest.param(3, id="k3"), pytest.param(9, id="k9")])
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[1]])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_update_circular_buffer(backend, device, dtype, k, rng):
    """cache_seqlens: the state is a ring whose oldest entry sits at cache_seqlens mod state_len. It must
    give the outputs of the shifting mode on the unrolled ring, and leave the ring equal to the shifted
    state rolled by cache_seqlens + k. k = 9 > state_len wraps more than once."""
    batch, dim, width, state_len = 3, 5, 3, 6
    seqlens = torch.tensor([0, 4, 17], dtype=torch.int32, device=device)
    indices = torch.tensor([2, 0, -1], dtype=torch.int32, device=device)
    ring = inputs.normal((3, dim, state_len), generator=rng, dtype=dtype, device=device)
    x = inputs.normal((batch, dim, k), generator=rng, dtype=dtype, device=device)
    w = inputs.normal((dim, width), generator=rng, dtype=dtype, device=device, std=0.5)
    before = ring.clone()
    with torch.no_grad():
        out = arkernels.causal_conv1d_update(x, ring, w, None, "silu", seqlens, indices, backend=backend)
    for i in range(batch):
        r, q0 = int(indices[i]), int(seqlens[i]) % state_len
        if r < 0:
            assert torch.equal(out[i], torch.zeros_like(out[i]))
            continue
        linear = before[r].roll(-q0, dims=-1)  # oldest first
        seq = torch.cat([linear, x[i]], dim=-1)
        expected = causal_conv1d_ref(seq[None].double(), w.double(), activation="silu")[0, :, -k:]
        _assert_close(out[i], expected, REL_TOL[dtype], f"{backend} out of sequence {i}")
        new_linear = seq[:, -state_len:]
        torch.testing.assert_close(ring[r].roll(-((q0 + k) % state_len), dims=-1), new_linear, rtol=0, atol=0)
    assert torch.equal(ring[1], before[1])  # no sequence uses row 1


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_update_matches_reference_everything(backend, device, rng):
    """Both modes with every argument (indices, bias in x's dtype, 3 tokens) against the reference op."""
    dim, width, state_len = 6, 4, 5
    for seqlens in (None, torch.tensor([3, 9, 1], dtype=torch.int32, device=device)):
        state = inputs.normal((4, dim, state_len), generator=rng, device=device)
        x = inputs.normal((3, dim, 3), generator=rng, device=device)
        w = inputs.normal((dim, width), generator=rng, device=device)
        b = inputs.normal((dim,), generator=rng, device=device)
        idx = torch.tensor([2, -1, 0], dtype=torch.int32, device=device)
        ours, ref_state = state.clone(), state.clone()
        with torch.no_grad():
            out = arkernels.causal_conv1d_update(x, ours, w, b, "silu", seqlens, idx, backend=backend)
            ref = causal_conv1d_update_ref(x.double(), ref_state.double(), w.double(), b.double(), "silu", seqlens, idx)
        _assert_close(out, ref, REL_TOL[torch.float32], "out")
        ref_state2 = state.clone()
        causal_conv1d_update_ref(x, ref_state2, w, b, "silu", seqlens, idx)
        torch.testing.assert_close(ours, ref_state2, rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_update_is_inference_only(backend, device, rng):
    """Grad mode on + an input that requires grad: a clear ValueError; under no_grad it runs."""
    x = inputs.normal((2, 4), generator=rng, device=device).requires_grad_(True)
    state = inputs.normal((2, 4, 3), generator=rng, device=device)
    w = inputs.normal((4, 4), generator=rng, device=device)
    with pytest.raises(ValueError, match=r"x: causal_conv1d_update is inference-only"):
        arkernels.causal_conv1d_update(x, state, w, backend=backend)
    with pytest.raises(ValueError, match=r"weight: .*inference-only"):
        arkernels.causal_conv1d_update(x.detach(), state, w.requires_grad_(True), backend=backend)
    with torch.no_grad():
        out = arkernels.causal_conv1d_update(x, state, w, backend=backend)
    assert out.shape == (2, 4) and not out.requires_grad


# ---- bad input ----

def _t(*shape, dtype=torch.float32, device="cpu"):
    return torch.rand(shape, dtype=dtype, device=device) if dtype.is_floating_point else \
        torch.zeros(shape, dtype=dtype, device=device)


# id -> (thunk returning (args, kwargs), exception type, regex: the argument, expected and given)
BAD_INPUTS = {
    "width_5": (lambda: ((_t(2, 3, 7), _t(3, 5)), {}), ValueError, r"weight.*2, 3 or 4.*5"),
    "width_1": (lambda: ((_t(2, 3, 7), _t(3, 1)), {}), ValueError, r"weight.*2, 3 or 4.*1"),
    "weight_dim_mismatch": (lambda: ((_t(2, 3, 7), _t(4, 4)), {}), ValueError, r"weight.*\(3, width\).*\(4, 4\)"),
    "weight_1d": (lambda: ((_t(2, 3, 7), _t(4)), {}), ValueError, r"weight.*\(4,\)"),
    "x_2d": (lambda: ((_t(3, 7), _t(3, 4)), {}), ValueError, r"x.*\(batch, dim, L\).*\(3, 7\)"),
    "x_integer": (lambda: ((_t(2, 3, 7, dtype=torch.int32), _t(3, 4)), {}), TypeError, r"x.*float32.*int32"),
    "x_float64": (lambda: ((_t(2, 3, 7, dtype=torch.float64), _t(3, 4)), {}), TypeError, r"x.*float64"),
    "weight_fp16_with_bf16_x": (lambda: ((_t(2, 3, 7, dtype=torch.bfloat16), _t(3, 4, dtype=torch.float16)), {}),
                                TypeError, r"weight.*float32 or x's dtype \(bfloat16\).*float16"),
    "bias_shape": (lambda: ((_t(2, 3, 7), _t(3, 4), _t(4)), {}), ValueError, r"bias.*\(3,\).*\(4,\)"),
    "bias_dtype": (lambda: ((_t(2, 3, 7), _t(3, 4), _t(3, dtype=torch.float16)), {}), TypeError, r"bias.*float16"),
    "initial_states_shape": (lambda: ((_t(2, 3, 7), _t(3, 4), None, _t(2, 3, 2)), {}), ValueError,
                             r"initial_states.*\(2, 3, 3\).*\(2, 3, 2\)"),
    "activation_relu": (lambda: ((_t(2, 3, 7), _t(3, 4)), {"activation": "relu"}), ValueError,
                        r"activation.*'silu'.*'relu'"),
    "activation_true": (lambda: ((_t(2, 3, 7), _t(3, 4)), {"activation": True}), ValueError, r"activation.*True"),
    "return_final_states_not_bool": (lambda: ((_t(2, 3, 7), _t(3, 4)), {"return_final_states": 1}), TypeError,
                                     r"return_final_states.*bool.*int"),
    "backend_name": (lambda: ((_t(2, 3, 7), _t(3, 4)), {"backend": "cudnn"}), ValueError, r"backend.*'cudnn'"),
    "backend_triton": (lambda: ((_t(2, 3, 7), _t(3, 4)), {"backend": "triton"}), ValueError,
                       r"backend.*'triton'.*no Triton kernel"),
    "backend_cuda_on_cpu_tensors": (lambda: ((_t(2, 3, 7), _t(3, 4)), {"backend": "cuda"}), ValueError,
                                    r"backend.*'cuda'.*cpu"),
    "x_not_tensor": (lambda: (([1.0, 2.0], _t(3, 4)), {}), TypeError, r"x.*Tensor.*list"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_causal_conv1d_bad_input_raises(case):
    thunk, exc, pattern = BAD_INPUTS[case]
    args, kwargs = thunk()
    with pytest.raises(exc, match=pattern):
        arkernels.causal_conv1d(*args, **kwargs)


BAD_UPDATE_INPUTS = {
    "x_1d": (lambda: ((_t(3), _t(2, 3, 3), _t(3, 4)), {}), ValueError, r"x.*\(batch, dim\).*\(3,\)"),
    "width_5": (lambda: ((_t(2, 3), _t(2, 3, 4), _t(3, 5)), {}), ValueError, r"weight.*2, 3 or 4.*5"),
    "state_too_short": (lambda: ((_t(2, 3), _t(2, 3, 2), _t(3, 4)), {}), ValueError,
                        r"conv_state.*state_len >= 3.*\(2, 3, 2\)"),
    "state_dim": (lambda: ((_t(2, 3), _t(2, 4, 3), _t(3, 4)), {}), ValueError, r"conv_state.*\(n_state, 3"),
    "state_rows": (lambda: ((_t(2, 3), _t(5, 3, 3), _t(3, 4)), {}), ValueError, r"conv_state.*2 rows.*5"),
    "state_dtype": (lambda: ((_t(2, 3), _t(2, 3, 3, dtype=torch.bfloat16), _t(3, 4)), {}), TypeError,
                    r"conv_state.*float32.*bfloat16"),
    "indices_int64": (lambda: ((_t(2, 3), _t(5, 3, 3), _t(3, 4)),
                               {"conv_state_indices": torch.zeros(2, dtype=torch.int64)}), TypeError,
                      r"conv_state_indices.*int32.*int64"),
    "indices_shape": (lambda: ((_t(2, 3), _t(5, 3, 3), _t(3, 4)),
                               {"conv_state_indices": torch.zeros(3, dtype=torch.int32)}), ValueError,
                      r"conv_state_indices.*\(2,\).*\(3,\)"),
    "seqlens_float": (lambda: ((_t(2, 3), _t(2, 3, 3), _t(3, 4)), {"cache_seqlens": _t(2)}), TypeError,
                      r"cache_seqlens.*int32.*float32"),
    "activation_relu": (lambda: ((_t(2, 3), _t(2, 3, 3), _t(3, 4)), {"activation": "relu"}), ValueError,
                        r"activation.*'relu'"),
    "backend_triton": (lambda: ((_t(2, 3), _t(2, 3, 3), _t(3, 4)), {"backend": "triton"}), ValueError,
                       r"backend.*'triton'"),
}


@pytest.mark.parametrize("case", list(BAD_UPDATE_INPUTS))
def test_causal_conv1d_update_bad_input_raises(case):
    thunk, exc, pattern = BAD_UPDATE_INPUTS[case]
    args, kwargs = thunk()
    with torch.no_grad(), pytest.raises(exc, match=pattern):
        arkernels.causal_conv1d_update(*args, **kwargs)


def test_update_python_checks_stay_off_the_eager_success_path(monkeypatch):
    """causal_conv1d_update's tensor checks run only when the native op raises (the binding checks them):
    a valid call must not reach them; a bad one still gets their argument-named message."""
    import sys

    mod = sys.modules["arkernels.ops.causal_conv1d"]
    real = mod._check_update_args

    def refuse(*a, **k):
        raise AssertionError("the Python checks ran on a valid eager call")

    monkeypatch.setattr(mod, "_check_update_args", refuse)
    with torch.no_grad():
        arkernels.causal_conv1d_update(_t(2, 3), _t(2, 3, 3), _t(3, 4), None, "silu")
    monkeypatch.setattr(mod, "_check_update_args", real)
    with torch.no_grad(), pytest.raises(ValueError, match=r"conv_state.*state_len >= 3.*\(2, 3, 2\)"):
        arkernels.causal_conv1d_update(_t(2, 3), _t(2, 3, 2), _t(3, 4))


# The torch ops validate too (they are public through torch.ops): TORCH_CHECK_VALUE/TYPE map to
# ValueError/TypeError.
BAD_OP_INPUTS = {
    "width_5": (lambda: torch.ops.arkernels.causal_conv1d(_t(2, 3, 7), _t(3, 5)), ValueError, r"weight.*width.*5"),
    "x_2d": (lambda: torch.ops.arkernels.causal_conv1d(_t(3, 7), _t(3, 4)), ValueError, r"x.*\[3, 7\]"),
    "initial_states_shape": (lambda: torch.ops.arkernels.causal_conv1d(_t(2, 3, 7), _t(3, 4), None, _t(2, 3, 2)),
                             ValueError, r"initial_states.*\[2, 3, 3\].*\[2, 3, 2\]"),
    "x_integer": (lambda: torch.ops.arkernels.causal_conv1d(_t(2, 3, 7, dtype=torch.int32), _t(3, 4)), TypeError,
                  r"x.*Int"),
    "update_state_dtype": (lambda: torch.ops.arkernels.causal_conv1d_update(_t(2, 3, 1), _t(2, 3, 3, dtype=torch.half),
                                                                            _t(3, 4)), TypeError, r"conv_state.*Half"),
    "update_indices_int64": (lambda: torch.ops.arkernels.causal_conv1d_update(
        _t(2, 3, 1), _t(4, 3, 3), _t(3, 4), None, False, None, torch.zeros(2, dtype=torch.int64)), TypeError,
        r"conv_state_indices.*int32"),
}


@pytest.mark.parametrize("case", list(BAD_OP_INPUTS))
def test_torch_op_causal_conv1d_bad_input_raises(case):
    thunk, exc, pattern = BAD_OP_INPUTS[case]
    with torch.no_grad(), pytest.raises(exc, match=pattern):
        thunk()


@gpu
@pytest.mark.parametrize("case", ["weight", "bias", "initial_states", "conv_state", "conv_state_indices",
                                  "backend_cpu"])
def test_bad_devices_raise_cuda(case):
    dev = "cuda"
    x, w, b, h = _t(2, 3, 7, device=dev), _t(3, 4, device=dev), _t(3, device=dev), _t(2, 3, 3, device=dev)
    if case == "conv_state":
        with torch.no_grad(), pytest.raises(ValueError, match=r"conv_state.*cuda.*cpu"):
            arkernels.causal_conv1d_update(x[..., 0], _t(2, 3, 3), w)
        return
    if case == "conv_state_indices":
        with torch.no_grad(), pytest.raises(ValueError, match=r"conv_state_indices.*cuda.*cpu"):
            arkernels.causal_conv1d_update(x[..., 0], _t(2, 3, 3, device=dev), w, None, None, None,
                                           torch.zeros(2, dtype=torch.int32))
        return
    kwargs = {}
    if case == "weight":
        w = w.cpu()
    elif case == "bias":
        b = b.cpu()
    elif case == "initial_states":
        h = h.cpu()
    else:
        kwargs = {"backend": "cpu"}
    name = "backend" if case == "backend_cpu" else case
    with pytest.raises(ValueError, match=rf"{name}.*(cuda.*cpu|cpu.*cuda)"):
        arkernels.causal_conv1d(x, w, b, h, **kwargs)


# ---- torch.library.opcheck ----

OPCHECK_DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=gpu)]


def _opcheck_conv_args(rng, device, dtype, with_extras, return_final):
    x, w, b, h = _conv_inputs(rng, (2, 5, 37), 4, dtype, device, bias=with_extras, init=with_extras)
    for t in (x, w, b, h):
        if t is not None:
            t.requires_grad_(True)
    return x, w, b, h, return_final, with_extras


@pytest.mark.parametrize("return_final", [pytest.param(False, id="no_final"), pytest.param(True, id="final")])
@pytest.mark.parametrize("with_extras", [pytest.param(False, id="plain"), pytest.param(True, id="bias_init_silu")])
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[1]])
@pytest.mark.parametrize("device", OPCHECK_DEVICES)
def test_opcheck_causal_conv1d(device, dtype, with_extras, return_final, rng):
    torch.library.opcheck(torch.ops.arkernels.causal_conv1d.default,
                          _opcheck_conv_args(rng, device, dtype, with_extras, return_final))


@pytest.mark.parametrize("with_extras", [pytest.param(False, id="plain"), pytest.param(True, id="bias_init_silu")])
@pytest.mark.parametrize("device", OPCHECK_DEVICES)
def test_opcheck_causal_conv1d_backward(device, with_extras, rng):
    x, w, b, h, _, silu = _opcheck_conv_args(rng, device, torch.float32, with_extras, True)
    x, w = x.detach(), w.detach()
    b = None if b is None else b.detach()
    h = None if h is None else h.detach()
    g = inputs.normal(x.shape, generator=rng, device=device)
    for g_fin in (inputs.normal((2, 5, 3), generator=rng, device=device), None):
        torch.library.opcheck(torch.ops.arkernels._causal_conv1d_backward.default, (x, w, b, h, g, g_fin, silu))


@pytest.mark.parametrize("mode", ["shift", "indices", "circular"])
@pytest.mark.parametrize("device", OPCHECK_DEVICES)
def test_opcheck_causal_conv1d_update(device, mode, rng):
    x = inputs.normal((3, 5, 2), generator=rng, device=device)
    state = inputs.normal((4 if mode != "shift" else 3, 5, 4), generator=rng, device=device)
    w = inputs.normal((5, 3), generator=rng, device=device)
    b = inputs.normal((5,), generator=rng, device=device)
    seqlens = torch.tensor([1, 6, 2], dtype=torch.int32, device=device) if mode == "circular" else None
    idx = torch.tensor([3, -1, 0], dtype=torch.int32, device=device) if mode != "shift" else None
    torch.library.opcheck(torch.ops.arkernels.causal_conv1d_update.default, (x, state, w, b, True, seqlens, idx))


# ---- torch.compile ----

class _ShortConvBlock(torch.nn.Module):
    """The Mamba pattern: project, causal depthwise conv with silu over time, project back."""

    def __init__(self, dim: int, width: int, backend: str):
        super().__init__()
        self.proj = torch.nn.Linear(dim, dim)
        self.conv = torch.nn.Conv1d(dim, dim, width, groups=dim, padding=width - 1)
        self.backend = backend

    def forward(self, x, h0):  # x (B, L, D), h0 (B, D, W-1)
        u = self.proj(x).transpose(1, 2)  # (B, D, L), channel-last
        out, fin = arkernels.causal_conv1d(u, self.conv.weight.squeeze(1), self.conv.bias, h0, True, "silu",
                                           backend=self.backend)
        return out.transpose(1, 2) * 2.0, fin


@pytest.mark.parametrize("backend,device", [pytest.param("cpu", "cpu", id="cpu"),
                                            pytest.param("cuda", "cuda", id="cuda", marks=gpu)])
def test_causal_conv1d_torch_compile_fullgraph(backend, device, rng):
    torch._dynamo.reset()
    model = _ShortConvBlock(8, 4, backend).to(device)
    x = inputs.normal((2, 45, 8), generator=rng, device=device)
    h0 = inputs.normal((2, 8, 3), generator=rng, device=device)
    w_out = inputs.normal((2, 45, 8), generator=rng, dtype=torch.float64, device=device)
    w_fin = inputs.normal((2, 8, 3), generator=rng, dtype=torch.float64, device=device)

    def run(module):
        xs, hs = x.clone().requires_grad_(True), h0.clone().requires_grad_(True)
        module.zero_grad(set_to_none=True)
        out, fin = module(xs, hs)
        ((out.double() * w_out).sum() + (fin.double() * w_fin).sum()).backward()
        return [out.detach(), fin.detach(), xs.grad, hs.grad] + [p.grad.clone() for p in module.parameters()]

    eager = run(model)
    compiled = run(torch.compile(model, fullgraph=True))
    for name, c, e in zip(["out", "final", "grad x", "grad h0", "grad proj.w", "grad proj.b", "grad conv.w",
                           "grad conv.b"], compiled, eager):
        _assert_close(c, e, REL_TOL[torch.float32], f"compiled {name}")


@pytest.mark.parametrize("backend,device", [pytest.param("cpu", "cpu", id="cpu"),
                                            pytest.param("cuda", "cuda", id="cuda", marks=gpu)])
def test_causal_conv1d_update_torch_compile_fullgraph(backend, device, rng):
    """The in-place update inside a compiled decode step: the state is mutated as in eager mode."""
    torch._dynamo.reset()
    w = inputs.normal((6, 4), generator=rng, device=device)
    state0 = inputs.normal((3, 6, 3), generator=rng, device=device)
    xs = [inputs.normal((3, 6), generator=rng, device=device) for _ in range(3)]

    def step(x, state):
        return arkernels.causal_conv1d_update(x, state, w, None, "silu", backend=backend) + 1.0

    results = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        state = state0.clone()
        with torch.no_grad():
            outs = [fn(x, state) for x in xs]
        results.append((outs, state))
    for a, b in zip(results[0][0], results[1][0]):
        _assert_close(b, a, REL_TOL[torch.float32], "compiled update out")
    torch.testing.assert_close(results[1][1], results[0][1], rtol=0, atol=0)


# ---- GPU: determinism, the benchmark shapes, more than 2^31 elements ----

@gpu
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[1]])
def test_weight_gradients_are_deterministic_cuda(dtype, rng):
    """dweight/dbias are reduced in a fixed order (no float atomics): bitwise equal over repeated runs."""
    x, w, b, h = _conv_inputs(rng, (8, 64, 3001), 4, dtype, "cuda")
    g = inputs.normal(x.shape, generator=rng, dtype=dtype, device="cuda")
    runs = []
    for _ in range(3):
        leaves = [t.clone().requires_grad_(True) for t in (x, w, b, h)]
        out = arkernels.causal_conv1d(*leaves, activation="silu", backend="cuda")
        runs.append(torch.autograd.grad(out, leaves, g))
    for other in runs[1:]:
        for name, a, c in zip(("x", "weight", "bias", "initial_states"), runs[0], other):
            assert torch.equal(a, c), f"grad of {name} differs between runs"


@gpu
@slow
@pytest.mark.parametrize("shape", [pytest.param((8, 1536, 2048), id="8x1536x2048"),
                                   pytest.param((4, 4096, 4096), id="4x4096x4096")])
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[1]])
def test_causal_conv1d_benchmark_shapes_cuda(dtype, shape, rng):
    """The benchmark's shapes with every feature, forward and backward, against float64."""
    leaves = _conv_inputs(rng, shape, 4, dtype, "cuda", param_kinds=("fp32", "fp32", "x"))
    check_conv("cuda", leaves, rng, activation="silu", return_final=True)
    torch.cuda.empty_cache()


HUGE_SHAPE = (1, 32768, 65537)  # 2,147,516,416 elements > 2^31: the last rows' offsets pass 2^31


@gpu
@slow
def test_causal_conv1d_huge_more_than_2pow31_elements_cuda(seed):
    """bf16 (1, 32768, 65537), forward and backward on CUDA, checked on the first, middle and last rows
    against float64 (an int32 offset in the kernels would wrap there)."""
    numel = HUGE_SHAPE[0] * HUGE_SHAPE[1] * HUGE_SHAPE[2]
    assert numel > 2**31
    need = 4 * numel * 2 + (1 << 30)  # x, out, grad_out, dx
    free, _total = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    dev = torch.device("cuda")
    gen = inputs.generator(seed, device=dev)
    dim = HUGE_SHAPE[1]
    rows = torch.tensor(sorted({0, 1, dim // 2, dim - 2, dim - 1}), device=dev)
    try:
        x = inputs.normal_on_device(HUGE_SHAPE, dtype=torch.bfloat16, device=dev, generator=gen).requires_grad_(True)
        w = inputs.normal_on_device((dim, 4), dtype=torch.float32, device=dev, generator=gen).requires_grad_(True)
        b = inputs.normal_on_device((dim,), dtype=torch.float32, device=dev, generator=gen)
        out, fin = arkernels.causal_conv1d(x, w, b, None, True, "silu", backend="cuda")
        g = inputs.normal_on_device(HUGE_SHAPE, dtype=torch.bfloat16, device=dev, generator=gen)
        dx, dw = torch.autograd.grad(out, (x, w), g)
        sel = lambda t: t.detach()[:, rows]  # noqa: E731
        x64 = sel(x).double().requires_grad_(True)
        w64 = w.detach()[rows].double().requires_grad_(True)
        ref_out, ref_fin = causal_conv1d_ref(x64, w64, b[rows].double(), None, True, "silu")
        ref_dx, ref_dw_rows = torch.autograd.grad(ref_out, (x64, w64), sel(g).double())
        tol = REL_TOL[torch.bfloat16]
        _assert_close(sel(out), ref_out, tol, "out rows")
        torch.testing.assert_close(sel(fin), ref_fin.to(torch.bfloat16), rtol=0, atol=0)
        _assert_close(sel(dx), ref_dx, tol, "grad x rows")
        _assert_close(dw[rows], ref_dw_rows, REL_TOL[torch.float32] * 10, "grad weight rows")
    finally:
        x = w = out = g = dx = None  # noqa: F841
        torch.cuda.empty_cache()
