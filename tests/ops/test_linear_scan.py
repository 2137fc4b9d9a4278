"""arkernels.linear_scan against its float64 reference, on every backend, forward and backward.

Contract (docs/ops/linear_scan.md, ARCHITECTURE.md "Numerics contract" and "Bad input"):
h[t] = gates[t] * h[t-1] + tokens[t] along the last axis, h[-1] = initial_state (zeros when None);
output in the input dtype, accumulated in fp32; the final state is fp32; gradients reach gates,
tokens and initial_state, also through the final state.

Every comparison is against the reference evaluated in float64 on the same (rounded) input values,
with the norm-relative bound of numerics.REL_TOL plus a max-abs bound. Gradients in bf16/fp16 may be
as far from float64 as twice the reference run in that dtype. Outputs are NaN-poisoned before every
kernel (autouse fixture below), so an element a kernel forgets to write fails.

Test ids name the backend and, for GPU tensors, "cuda" (the GPU script selects with ``-k cuda``).
"""
from __future__ import annotations

import re

import pytest
import torch

import arkernels
from arkernels import _outputs
from arkernels.ops import _backends
from arkernels.reference import linear_scan_ref, linear_scan_ref_logdepth
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
    pytest.param("triton", "cuda", id="triton-cuda", marks=gpu),
    pytest.param("auto", "cuda", id="auto-cuda", marks=gpu),
]
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float16, id="fp16"),
]
REVERSE = [pytest.param(False, id="forward"), pytest.param(True, id="reverse")]
WITH_H0 = [pytest.param(False, id="no_h0"), pytest.param(True, id="h0")]

# Gates in [0.5, 1): long scans stay bounded (the state is a decaying sum of tokens) without
# vanishing after a few steps.
GATE_RANGE = (0.5, 1.0)
# Max-abs bound, as a multiple of (relative bound x largest reference magnitude): catches one wrong
# element in a large tensor, which the norm-relative error can dilute.
MAX_ABS_FACTOR = 4.0
REF_ON_CPU_MAX_NUMEL = 1 << 22


@pytest.fixture(autouse=True)
def _poisoned_outputs():
    """NaN-fill every output of the C++ and Triton kernels before they run (forward and backward)."""
    with _outputs.poisoned_outputs():
        yield


def _skip_unless_runnable(backend: str, device: str) -> None:
    if backend == "triton" and not _backends.triton_available():
        pytest.skip("triton is not installed")


# ---- helpers: inputs, one forward + backward, comparison ----

def _scan_inputs(rng, shapes, dtype, device, with_h0=True):
    """Leaves (gates, tokens, initial_state) with the given shapes; initial_state is fp32 or None."""
    g_shape, t_shape, h_shape = shapes
    gates = inputs.uniform(g_shape, *GATE_RANGE, generator=rng, dtype=dtype, device=device)
    tokens = inputs.normal(t_shape, generator=rng, dtype=dtype, device=device)
    h0 = inputs.normal(h_shape, generator=rng, device=device) if with_h0 else None
    return gates, tokens, h0


def _weights(rng, shape, device):
    """Random float64 weights of the loss <out, w_out> + <final, w_final> (never all ones: a sum
    would hide a permutation of the gradient)."""
    return (inputs.normal(shape, generator=rng, dtype=torch.float64, device=device),
            inputs.normal(shape[:-1], generator=rng, dtype=torch.float64, device=device))


def _identity(g, t, h):
    return g, t, h


def _forward_backward(fn, leaves, w_out, w_final, *, view=_identity, dtype=None, **kwargs):
    """Runs (out, final) = fn(*view(*leaves), **kwargs) on fresh copies of the leaves (cast to `dtype`
    when given), backpropagates <out, w_out> + <final, w_final>, and returns out, final and the leaves'
    gradients (zeros where autograd left none)."""
    fresh = []
    for x in leaves:
        if x is None:
            fresh.append(None)
            continue
        y = x.detach().to(dtype if dtype is not None else x.dtype).clone()
        fresh.append(y.requires_grad_(True))
    out, final = fn(*view(*fresh), return_final_state=True, **kwargs)
    loss = (out.to(torch.float64) * w_out).sum() + (final.to(torch.float64) * w_final).sum()
    loss.backward()
    grads = [None if x is None else (x.grad if x.grad is not None else torch.zeros_like(x)) for x in fresh]
    return out.detach(), final.detach(), grads


def _reference(gates, tokens, h0, *, return_final_state, reverse):
    """The sequential definition where it is cheap; the log-depth reference for long sequences
    (test_references_agree checks that the two agree)."""
    fn = linear_scan_ref if gates.shape[-1] <= 4097 else linear_scan_ref_logdepth
    return fn(gates, tokens, h0, reverse=reverse, return_final_state=return_final_state)


def _assert_close(out, ref, rel_tol, name):
    scale = ref.detach().abs().max().item() if ref.numel() else 0.0
    assert_close_to_reference(out, ref, rel_tol=rel_tol, max_abs=MAX_ABS_FACTOR * rel_tol * scale + 1e-30,
                              name=name)


def check_linear_scan(backend, leaves, rng, *, reverse, view=_identity):
    """The whole contract for one input: out, final state and the gradients of gates, tokens and
    initial_state from `backend` against float64; returns (out, final) of the backend."""
    gates_leaf, tokens_leaf, h0_leaf = leaves
    dtype = gates_leaf.dtype
    gates, tokens, h0 = view(gates_leaf, tokens_leaf, h0_leaf)
    w_out, w_final = _weights(rng, gates.shape, gates.device)

    out, final, grads = _forward_backward(arkernels.linear_scan, leaves, w_out, w_final, view=view,
                                          reverse=reverse, backend=backend)
    # The references run step by step (launch-bound on a GPU): on the CPU unless the input is large.
    ref_device = "cpu" if gates.numel() <= REF_ON_CPU_MAX_NUMEL else gates.device
    leaves = [None if x is None else x.to(ref_device) for x in leaves]
    w_out, w_final = w_out.to(ref_device), w_final.to(ref_device)
    ref_out, ref_final, ref_grads = _forward_backward(_reference, leaves, w_out, w_final, view=view,
                                                      dtype=torch.float64, reverse=reverse)

    # Shapes, dtypes and devices of the contract.
    assert out.shape == gates.shape and out.dtype == dtype and out.device == gates.device
    assert final.shape == gates.shape[:-1] and final.dtype == torch.float32 and final.device == gates.device

    tol = REL_TOL[dtype]
    _assert_close(out, ref_out, tol, f"{backend} out")
    # The state is carried in fp32 whatever the input dtype: fp32 accuracy on the (rounded) inputs.
    _assert_close(final, ref_final, REL_TOL[torch.float32], f"{backend} final state")

    grad_tols = [tol] * 3
    if dtype != torch.float32:
        # A kernel in low precision may be twice as far from float64 as the reference run in that
        # precision (rounded out, grad_out and gradients) is, gradient by gradient.
        _, _, low_grads = _forward_backward(_reference, leaves, w_out, w_final, view=view, reverse=reverse)
        grad_tols = [tol if g is None else max(tol, 2 * relative_error(g, r)) for g, r in zip(low_grads, ref_grads)]
    for name, leaf, g, r, grad_tol in zip(("gates", "tokens", "initial_state"), leaves, grads, ref_grads, grad_tols):
        if r is None:
            continue
        assert g.dtype == leaf.dtype and g.shape == leaf.shape
        _assert_close(g, r, grad_tol, f"{backend} grad of {name}")
    return out, final


# ---- the references themselves ----

@pytest.mark.parametrize("with_h0", WITH_H0)
@pytest.mark.parametrize("reverse", REVERSE)
@pytest.mark.parametrize("T", [pytest.param(t, id=f"T{t}") for t in (1, 7, 1000, 4097)])
def test_references_agree(T, reverse, with_h0, rng):
    """The log-depth reference (the "reference" backend, and the oracle for T > 4097) equals the
    sequential definition in float64, forward and backward."""
    leaves = _scan_inputs(rng, [(3, T), (3, T), (3,)], torch.float64, "cpu", with_h0)
    w_out, w_final = _weights(rng, (3, T), "cpu")
    seq = _forward_backward(linear_scan_ref, leaves, w_out, w_final, reverse=reverse)
    log = _forward_backward(linear_scan_ref_logdepth, leaves, w_out, w_final, reverse=reverse)
    for name, a, b in zip(("out", "final"), seq[:2], log[:2]):
        _assert_close(b, a, 1e-12, f"logdepth {name}")
    for name, a, b in zip(("gates", "tokens", "initial_state"), seq[2], log[2]):
        if a is not None:
            _assert_close(b, a, 1e-12, f"logdepth grad of {name}")


@pytest.mark.parametrize("reverse", REVERSE)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_linear_scan_small_example_by_hand(backend, device, reverse):
    """gates [0.5, 2, 1], tokens [1, 1, 1], h0 = 2: forward h = [2, 5, 6]; reverse h = [4.5, 7, 3]."""
    _skip_unless_runnable(backend, device)
    gates = torch.tensor([[0.5, 2.0, 1.0]], device=device)
    tokens = torch.ones(1, 3, device=device)
    h0 = torch.tensor([2.0], device=device)
    out, final = arkernels.linear_scan(gates, tokens, h0, reverse=reverse, return_final_state=True, backend=backend)
    expected = [4.5, 7.0, 3.0] if reverse else [2.0, 5.0, 6.0]
    assert out.cpu().tolist() == [expected]
    assert final.cpu().tolist() == [expected[0] if reverse else expected[-1]]


# ---- every backend against float64: dtypes x lengths x direction x initial state ----

@pytest.mark.parametrize("with_h0", WITH_H0)
@pytest.mark.parametrize("reverse", REVERSE)
@pytest.mark.parametrize("T", [pytest.param(t, id=f"T{t}") for t in (1, 7, 1000, 4097, 65537)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_linear_scan_matches_reference(backend, device, dtype, T, reverse, with_h0, rng):
    _skip_unless_runnable(backend, device)
    # (B, C, T) as in the models; a few rows only for long T, to keep the CPU run short.
    shape = (2, 3, T) if T <= 4097 else (3, T)
    leaves = _scan_inputs(rng, [shape, shape, shape[:-1]], dtype, device, with_h0)
    check_linear_scan(backend, leaves, rng, reverse=reverse)


@pytest.mark.parametrize("reverse", REVERSE)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_linear_scan_return_final_state_false(backend, device, reverse, rng):
    """return_final_state=False returns just the tensor, equal to the first output of the pair."""
    _skip_unless_runnable(backend, device)
    gates, tokens, h0 = _scan_inputs(rng, [(4, 100), (4, 100), (4,)], torch.float32, device)
    out = arkernels.linear_scan(gates, tokens, h0, reverse=reverse, backend=backend)
    assert isinstance(out, torch.Tensor)
    pair = arkernels.linear_scan(gates, tokens, h0, reverse=reverse, return_final_state=True, backend=backend)
    assert isinstance(pair, tuple) and len(pair) == 2
    torch.testing.assert_close(out, pair[0], rtol=0, atol=0)


@pytest.mark.parametrize("used", ["out_only", "final_only"])
@pytest.mark.parametrize("reverse", REVERSE)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_linear_scan_gradient_of_one_output(backend, device, reverse, used, rng):
    """Backward when only one of (out, final state) reaches the loss: the other's gradient is None."""
    _skip_unless_runnable(backend, device)
    leaves = _scan_inputs(rng, [(3, 50), (3, 50), (3,)], torch.float32, device)
    w_out, w_final = _weights(rng, (3, 50), device)
    if used == "out_only":
        w_final = None
    else:
        w_out = None

    def run(fn, dtype=None):
        xs = [x.detach().to(dtype or x.dtype).requires_grad_(True) for x in leaves]
        out, final = fn(*xs, reverse=reverse, return_final_state=True, **({} if fn is _reference else {"backend": backend}))
        loss = (out.double() * w_out).sum() if w_out is not None else (final.double() * w_final).sum()
        loss.backward()
        return [x.grad if x.grad is not None else torch.zeros_like(x) for x in xs]

    for name, g, r in zip(("gates", "tokens", "initial_state"), run(arkernels.linear_scan), run(_reference, torch.float64)):
        _assert_close(g, r, REL_TOL[torch.float32], f"{backend} grad of {name} ({used})")


@pytest.mark.parametrize("h0_dtype", [torch.float64, torch.bfloat16, torch.float16], ids=["h0_fp64", "h0_bf16", "h0_fp16"])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_linear_scan_initial_state_dtype(backend, device, h0_dtype, rng):
    """initial_state may have any floating dtype (used in fp32); its gradient comes back in that dtype."""
    _skip_unless_runnable(backend, device)
    # T = 9: d final / d h0 (a product of gates) stays a normal fp16 number.
    gates, tokens, _ = _scan_inputs(rng, [(4, 9), (4, 9), (4,)], torch.float32, device, with_h0=False)
    h0 = inputs.normal((4,), generator=rng, dtype=h0_dtype, device=device).requires_grad_(True)
    out, final = arkernels.linear_scan(gates, tokens, h0, return_final_state=True, backend=backend)
    ref_out, ref_final = linear_scan_ref(gates.double(), tokens.double(), h0.detach().double(), return_final_state=True)
    _assert_close(out, ref_out, REL_TOL[torch.float32], "out")
    _assert_close(final, ref_final, REL_TOL[torch.float32], "final state")
    final.sum().backward()
    assert h0.grad is not None and h0.grad.dtype == h0_dtype
    expected = gates.double().prod(-1)  # d final / d h0 = product of all gates
    # Computed in fp32, returned in h0's dtype.
    _assert_close(h0.grad, expected, max(REL_TOL[torch.float32], REL_TOL[h0_dtype]), "grad of initial_state")


# ---- layouts: strided, non-contiguous, broadcast, ranks ----

def _h(h, f):
    return None if h is None else f(h)


B, C = 2, 3
# name -> (leaf shapes for T, view from leaves to op inputs, whether the op's gates are non-contiguous)
LAYOUTS = {
    "contiguous": (lambda T: [(B, C, T), (B, C, T), (B, C)], _identity, False),
    # A window of a wider tensor along T: unit time stride, row stride T + 5.
    "time_window": (lambda T: [(B, C, T + 5), (B, C, T + 3), (B, 2 * C)],
                    lambda g, t, h: (g[..., 2:-3], t[..., 3:], _h(h, lambda x: x[:, ::2])), True),
    # Every other channel: row stride 2T.
    "channel_step": (lambda T: [(B, 2 * C, T), (B, 2 * C, T), (B, C)],
                     lambda g, t, h: (g[:, ::2], t[:, 1::2], h), True),
    # (B, T, C) made (B, C, T) by transpose: time stride C (the op must copy or handle it).
    "transposed": (lambda T: [(B, T, C), (B, T, C), (C, B)],
                   lambda g, t, h: (g.transpose(1, 2), t.transpose(1, 2), _h(h, lambda x: x.t())), True),
    # Every other time step: time stride 2.
    "time_step": (lambda T: [(B, C, 2 * T), (B, C, 2 * T), (B, C)],
                  lambda g, t, h: (g[..., ::2], t[..., 1::2], h), True),
    # One set of gates broadcast over the batch (stride 0), as with per-channel decays.
    "expanded_gates": (lambda T: [(1, C, T), (B, C, T), (B, C)],
                       lambda g, t, h: (g.expand(B, -1, -1), t, h), True),
    # (1, T) gates expanded to (rows, T): a row stride of 0 that a (rows, T) view keeps.
    "expanded_rows_2d": (lambda T: [(1, T), (5, T), (5,)],
                         lambda g, t, h: (g.expand(5, -1), t, h), True),
    # Gates contiguous, tokens transposed, initial state broadcast: every argument its own layout.
    "mixed": (lambda T: [(B, C, T), (B, T, C), (1, C)],
              lambda g, t, h: (g, t.transpose(1, 2), _h(h, lambda x: x.expand(B, C))), False),
    "rank1": (lambda T: [(T,), (T,), ()], _identity, False),
    "rank4": (lambda T: [(2, 3, 2, T), (2, 3, 2, T), (2, 3, 2)], _identity, False),
    "rank4_permuted": (lambda T: [(2, T, 3, 2), (2, T, 3, 2), (2, 3, 2)],
                       lambda g, t, h: (g.permute(0, 2, 3, 1), t.permute(0, 2, 3, 1), h), True),
}


@pytest.mark.parametrize("reverse", REVERSE)
@pytest.mark.parametrize("T", [pytest.param(t, id=f"T{t}") for t in (7, 1000)])
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[1]])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_linear_scan_layouts(backend, device, layout, dtype, T, reverse, rng):
    _skip_unless_runnable(backend, device)
    shapes, view, non_contiguous = LAYOUTS[layout]
    leaves = _scan_inputs(rng, shapes(T), dtype, device)
    gates, tokens, h0 = view(*leaves)
    assert gates.shape == tokens.shape and h0.shape == gates.shape[:-1]
    if non_contiguous:
        assert not gates.is_contiguous()  # the layout tests what its name says
    before = [x.clone() for x in leaves]
    check_linear_scan(backend, leaves, rng, reverse=reverse, view=view)
    for x, y in zip(leaves, before):  # inputs are read, never written
        assert torch.equal(x, y)


# ---- empty tensors ----

EMPTY_SHAPES = [
    pytest.param((0, 7), id="rows0"),
    pytest.param((2, 0, 7), id="rows0_3d"),
    pytest.param((3, 0), id="T0"),
    pytest.param((2, 3, 0), id="T0_3d"),
    pytest.param((0,), id="T0_1d"),
    pytest.param((0, 0), id="rows0_T0"),
]


@pytest.mark.parametrize("with_h0", WITH_H0)
@pytest.mark.parametrize("shape", EMPTY_SHAPES)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_linear_scan_empty(backend, device, shape, with_h0, rng):
    """Empty inputs: empty outputs; with T == 0 the final state is the initial state (zeros without
    one) and the gradient of the initial state is the gradient of the final state."""
    _skip_unless_runnable(backend, device)
    leaves = _scan_inputs(rng, [shape, shape, shape[:-1]], torch.float32, device, with_h0)
    out, final = check_linear_scan(backend, leaves, rng, reverse=False)
    assert out.shape == shape and final.shape == shape[:-1]
    if shape[-1] == 0:
        h0 = leaves[2]
        expected = h0 if h0 is not None else torch.zeros(shape[:-1], device=device)
        torch.testing.assert_close(final, expected, rtol=0, atol=0)
        if h0 is not None:
            # The returned final state is a new tensor, not the caller's initial_state itself (an
            # op's outputs never alias its inputs: writing to one must not change the other).
            gates, tokens = leaves[0], leaves[1]
            _, final = arkernels.linear_scan(gates, tokens, h0, return_final_state=True, backend=backend)
            assert final is not h0 and (final.numel() == 0 or final.data_ptr() != h0.data_ptr())


# ---- poisoning is active ----

def test_poisoned_outputs_fill_new_outputs_with_nan():
    with _outputs.poisoned_outputs():
        assert torch.isnan(_outputs.new_output((3, 5), dtype=torch.float32, device="cpu")).all()
        assert torch.isnan(_outputs.new_output((3,), dtype=torch.bfloat16, device="cpu")).all()
    with _outputs.poisoned_outputs(False):
        assert not _outputs._poison


# ---- torch.library.opcheck ----

OPCHECK_DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=gpu)]


def _opcheck_args(rng, device, dtype, with_h0, reverse):
    gates, tokens, h0 = _scan_inputs(rng, [(2, 3, 37), (2, 3, 37), (2, 3)], dtype, device, with_h0)
    gates.requires_grad_(True)
    tokens.requires_grad_(True)
    if h0 is not None:
        h0.requires_grad_(True)
    return gates, tokens, h0, reverse


@pytest.mark.parametrize("reverse", REVERSE)
@pytest.mark.parametrize("with_h0", WITH_H0)
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[1]])
@pytest.mark.parametrize("device", OPCHECK_DEVICES)
def test_opcheck_linear_scan(device, dtype, with_h0, reverse, rng):
    torch.library.opcheck(torch.ops.arkernels.linear_scan.default, _opcheck_args(rng, device, dtype, with_h0, reverse))


@pytest.mark.parametrize("with_h0", WITH_H0)
@pytest.mark.parametrize("device", OPCHECK_DEVICES)
def test_opcheck_linear_scan_backward(device, with_h0, rng):
    gates, tokens, h0, _ = _opcheck_args(rng, device, torch.float32, with_h0, False)
    h0 = None if h0 is None else h0.detach()
    out, _final = torch.ops.arkernels.linear_scan(gates.detach(), tokens.detach(), h0, False)
    grad_out = torch.randn_like(out)
    grad_final = torch.randn(out.shape[:-1], device=device)
    for g_final in (grad_final, None):
        torch.library.opcheck(torch.ops.arkernels._linear_scan_backward.default,
                              (gates.detach(), out, grad_out, g_final, h0, True))


# ---- torch.compile ----

class _GatedRecurrence(torch.nn.Module):
    """A small layer as models use the op: gates and tokens from one projection, scanned over time."""

    def __init__(self, dim: int, backend: str, reverse: bool):
        super().__init__()
        self.proj = torch.nn.Linear(dim, 2 * dim)
        self.backend, self.reverse = backend, reverse

    def forward(self, x, h0):  # x (B, T, D), h0 (B, D)
        g, v = self.proj(x).chunk(2, dim=-1)
        gates = torch.sigmoid(g).transpose(1, 2)  # (B, D, T), non-contiguous
        out, final = arkernels.linear_scan(gates, v.transpose(1, 2), h0, reverse=self.reverse,
                                           return_final_state=True, backend=self.backend)
        return out.transpose(1, 2) * 2.0, final


@pytest.mark.parametrize("reverse", REVERSE)
@pytest.mark.parametrize("backend,device", [
    pytest.param("cpu", "cpu", id="cpu"),
    pytest.param("cuda", "cuda", id="cuda", marks=gpu),
    pytest.param("triton", "cuda", id="triton-cuda", marks=gpu),
])
def test_linear_scan_torch_compile_fullgraph(backend, device, reverse, rng):
    _skip_unless_runnable(backend, device)
    torch._dynamo.reset()
    model = _GatedRecurrence(8, backend, reverse).to(device)
    x = inputs.normal((2, 45, 8), generator=rng, device=device)
    h0 = inputs.normal((2, 8), generator=rng, device=device)
    w_out = inputs.normal((2, 45, 8), generator=rng, dtype=torch.float64, device=device)
    w_final = inputs.normal((2, 8), generator=rng, dtype=torch.float64, device=device)

    def run(module):
        xs, hs = x.clone().requires_grad_(True), h0.clone().requires_grad_(True)
        module.zero_grad(set_to_none=True)
        out, final = module(xs, hs)
        ((out.double() * w_out).sum() + (final.double() * w_final).sum()).backward()
        return [out.detach(), final.detach(), xs.grad, hs.grad] + [p.grad.clone() for p in module.parameters()]

    eager = run(model)
    compiled = run(torch.compile(model, fullgraph=True))
    names = ["out", "final", "grad x", "grad h0", "grad weight", "grad bias"]
    for name, c, e in zip(names, compiled, eager):
        _assert_close(c, e, REL_TOL[torch.float32], f"compiled {name}")


# ---- bad input ----

def _t(*shape, dtype=torch.float32, device="cpu"):
    return torch.rand(shape, dtype=dtype, device=device) * 0.5 + 0.5 if dtype.is_floating_point else \
        torch.ones(shape, dtype=dtype, device=device)


# id -> (thunk returning (args, kwargs), exception type, regex the message must match: the argument,
# and where there is one, what was expected and what was given)
BAD_INPUTS = {
    "tokens_shape": (lambda: ((_t(2, 7), _t(2, 8)), {}), ValueError, r"tokens.*\(2, 7\).*\(2, 8\)"),
    "tokens_rank": (lambda: ((_t(2, 7), _t(2, 1, 7)), {}), ValueError, r"tokens.*\(2, 7\).*\(2, 1, 7\)"),
    "gates_integer": (lambda: ((_t(2, 7, dtype=torch.int32), _t(2, 7)), {}), TypeError, r"gates.*float32.*int32"),
    "tokens_integer": (lambda: ((_t(2, 7), _t(2, 7, dtype=torch.int64)), {}), TypeError, r"tokens.*int64"),
    "gates_float64": (lambda: ((_t(2, 7, dtype=torch.float64), _t(2, 7, dtype=torch.float64)), {}), TypeError,
                      r"gates.*float32.*float64"),
    "mixed_dtypes": (lambda: ((_t(2, 7), _t(2, 7, dtype=torch.bfloat16)), {}), TypeError,
                     r"tokens.*float32.*bfloat16"),
    "gates_not_tensor": (lambda: (([0.5, 0.5], _t(2)), {}), TypeError, r"gates.*Tensor.*list"),
    "gates_0d": (lambda: ((_t(), _t()), {}), ValueError, r"gates.*0-d"),
    "initial_state_shape": (lambda: ((_t(2, 7), _t(2, 7), _t(3)), {}), ValueError, r"initial_state.*\(2,\).*\(3,\)"),
    "initial_state_rank": (lambda: ((_t(2, 7), _t(2, 7), _t(2, 1)), {}), ValueError,
                           r"initial_state.*\(2,\).*\(2, 1\)"),
    "initial_state_integer": (lambda: ((_t(2, 7), _t(2, 7), _t(2, dtype=torch.int64)), {}), TypeError,
                              r"initial_state.*int64"),
    "reverse_not_bool": (lambda: ((_t(2, 7), _t(2, 7)), {"reverse": 1}), TypeError, r"reverse.*bool.*int"),
    "return_final_state_not_bool": (lambda: ((_t(2, 7), _t(2, 7)), {"return_final_state": "yes"}), TypeError,
                                    r"return_final_state.*bool.*str"),
    "backend_name": (lambda: ((_t(2, 7), _t(2, 7)), {"backend": "cudnn"}), ValueError, r"backend.*'cuda'.*'cudnn'"),
    "backend_cuda_on_cpu_tensors": (lambda: ((_t(2, 7), _t(2, 7)), {"backend": "cuda"}), ValueError,
                                    r"backend.*'cuda'.*cpu"),
    "backend_triton_on_cpu_tensors": (lambda: ((_t(2, 7), _t(2, 7)), {"backend": "triton"}), ValueError,
                                      r"backend.*'triton'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_linear_scan_bad_input_raises(case):
    if case == "backend_triton_on_cpu_tensors" and _backends.triton_interpreted():
        pytest.skip("TRITON_INTERPRET=1: the triton backend runs on CPU tensors")
    thunk, exc, pattern = BAD_INPUTS[case]
    args, kwargs = thunk()
    with pytest.raises(exc, match=pattern):
        arkernels.linear_scan(*args, **kwargs)


# The torch op validates too (it is public through torch.ops): TORCH_CHECK_VALUE/TYPE map to
# ValueError/TypeError. Each case runs in a child process: a crash in the C++ checks (seen: a
# segfault with torch 2.11) then fails that case instead of killing the whole test run.
BAD_OP_INPUTS = {
    "tokens_shape": ("(t(2, 7), t(2, 8), None, False)", ValueError, r"tokens.*\[2, 7\].*\[2, 8\]"),
    "gates_integer": ("(t(2, 7, dtype=torch.int32), t(2, 7, dtype=torch.int32), None, False)", TypeError,
                      r"gates.*Int"),
    "mixed_dtypes": ("(t(2, 7), t(2, 7, dtype=torch.half), None, False)", TypeError, r"tokens.*Float.*Half"),
    "gates_0d": ("(t(), t(), None, False)", ValueError, r"gates.*0-d"),
    "initial_state_shape": ("(t(2, 7), t(2, 7), t(3), False)", ValueError, r"initial_state.*\[2\].*\[3\]"),
}

_BAD_OP_CHILD = """
import json, sys, torch, arkernels
t = lambda *shape, dtype=torch.float32: torch.rand(shape).to(dtype)
for case, expr in json.loads(sys.argv[1]):
    print(json.dumps({"case": case, "started": True}), flush=True)
    try:
        torch.ops.arkernels.linear_scan(*eval(expr))
        result = {"case": case, "exception": None, "message": ""}
    except Exception as err:
        result = {"case": case, "exception": type(err).__name__, "message": str(err)}
    print(json.dumps(result), flush=True)
"""


@pytest.fixture(scope="module")
def bad_op_results():
    """Runs every BAD_OP_INPUTS case in child processes (a new child after a crash); case -> result."""
    import json
    import subprocess
    import sys

    results, todo = {}, list(BAD_OP_INPUTS)
    while todo:
        cases = json.dumps([(c, BAD_OP_INPUTS[c][0]) for c in todo])
        proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", _BAD_OP_CHILD, cases], capture_output=True, text=True,
                              timeout=300)
        lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
        finished = [x for x in lines if "started" not in x]
        for x in finished:
            results[x["case"]] = x
        if len(finished) == len(todo):
            break
        crashed = todo[len(finished)]
        results[crashed] = {"case": crashed, "crash": proc.returncode, "stderr": proc.stderr[-3000:]}
        todo = todo[len(finished) + 1:]
    return results


@pytest.mark.parametrize("case", list(BAD_OP_INPUTS))
def test_torch_op_linear_scan_bad_input_raises(case, bad_op_results):
    _expr, exc, pattern = BAD_OP_INPUTS[case]
    result = bad_op_results[case]
    assert "crash" not in result, (
        f"torch.ops.arkernels.linear_scan crashed the process (exit status {result.get('crash')}) on bad "
        f"input {case!r}:\n{result.get('stderr')}")
    assert result["exception"] == exc.__name__, f"{case}: expected {exc.__name__}, got {result}"
    assert re.search(pattern, result["message"]), f"{case}: message {result['message']!r} does not match {pattern!r}"


@gpu
@pytest.mark.parametrize("case", ["tokens_on_cpu", "initial_state_on_cpu", "backend_cpu_on_cuda_tensors"])
def test_linear_scan_bad_devices_raise_cuda(case):
    gates, tokens, h0 = _t(2, 7, device="cuda"), _t(2, 7, device="cuda"), _t(2, device="cuda")
    kwargs = {}
    if case == "tokens_on_cpu":
        tokens, pattern = tokens.cpu(), r"tokens.*cuda.*cpu"
    elif case == "initial_state_on_cpu":
        h0, pattern = h0.cpu(), r"initial_state.*cuda.*cpu"
    else:
        kwargs, pattern = {"backend": "cpu"}, r"backend.*'cpu'.*cuda"
    with pytest.raises(ValueError, match=pattern):
        arkernels.linear_scan(gates, tokens, h0, **kwargs)


# ---- drop-in for accelerated_scan.scan ----

@pytest.mark.parametrize("T", [pytest.param(t, id=f"T{t}") for t in (7, 1024, 1000)])
@pytest.mark.parametrize("device", [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=gpu)])
def test_linear_scan_drop_in_for_accelerated_scan(device, T, rng):
    """accelerated_scan.scan(gates, tokens): (B, C, T) in, one (B, C, T) tensor out, differentiable in
    both; arkernels.linear_scan(gates, tokens) with no other argument has that contract."""
    gates, tokens, _ = _scan_inputs(rng, [(2, 4, T), (2, 4, T), (2, 4)], torch.float32, device, with_h0=False)
    gates.requires_grad_(True)
    tokens.requires_grad_(True)
    out = arkernels.linear_scan(gates, tokens)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4, T) and out.dtype == gates.dtype
    ref = linear_scan_ref(gates.detach().double(), tokens.detach().double())
    _assert_close(out, ref, REL_TOL[torch.float32], "out")
    out.backward(torch.ones_like(out))
    assert gates.grad is not None and tokens.grad is not None


@pytest.mark.parametrize("T", [pytest.param(t, id=f"T{t}") for t in (7, 1024, 1000)])
def test_linear_scan_matches_accelerated_scan_reference_cpu(T, rng):
    """Where the peer is installed: the same numbers as its pure-PyTorch reference."""
    peer = pytest.importorskip("accelerated_scan.ref")
    gates, tokens, _ = _scan_inputs(rng, [(2, 4, T), (2, 4, T), (2, 4)], torch.float32, "cpu", with_h0=False)
    _assert_close(arkernels.linear_scan(gates, tokens), peer.scan(gates, tokens), REL_TOL[torch.float32], "out")


@gpu
@pytest.mark.parametrize("T", [pytest.param(t, id=f"T{t}") for t in (7, 1024, 4097)])
def test_linear_scan_matches_accelerated_scan_triton_cuda(T, rng):
    """Where the peer is installed: the same numbers as its Triton kernel, forward and backward."""
    peer = pytest.importorskip("accelerated_scan.scalar")
    gates, tokens, _ = _scan_inputs(rng, [(2, 4, T), (2, 4, T), (2, 4)], torch.float32, "cuda", with_h0=False)
    w_out = torch.randn(gates.shape, device="cuda")
    results = []
    for fn in (arkernels.linear_scan, peer.scan):
        g, t = gates.clone().requires_grad_(True), tokens.clone().requires_grad_(True)
        out = fn(g, t)
        (out * w_out).sum().backward()
        results.append((out.detach(), g.grad, t.grad))
    for name, ours, theirs in zip(("out", "grad gates", "grad tokens"), *results):
        _assert_close(ours, theirs, REL_TOL[torch.float32], name)


# ---- GPU: long sequences, and a tensor of more than 2^31 elements ----

@gpu
@slow
@pytest.mark.parametrize("reverse", REVERSE)
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[1]])
@pytest.mark.parametrize("backend", [pytest.param("cuda", id="cuda"), pytest.param("triton", id="triton-cuda")])
def test_linear_scan_T65537_many_rows_cuda(backend, dtype, reverse, rng):
    """T = 65537 (one past a power of two) over a few hundred rows, forward and backward."""
    _skip_unless_runnable(backend, "cuda")
    shape = (2, 128, 65537)
    leaves = _scan_inputs(rng, [shape, shape, shape[:-1]], dtype, "cuda")
    check_linear_scan(backend, leaves, rng, reverse=reverse)
    del leaves
    torch.cuda.empty_cache()


HUGE_SHAPE = (1, 32768, 65537)  # 2,147,516,416 elements > 2^31: the last row's offsets pass 2^31


@gpu
@slow
@pytest.mark.parametrize("reverse", REVERSE)
def test_linear_scan_huge_more_than_2pow31_elements_cuda(reverse, seed):
    """bf16 (1, 32768, 65537) with the cuda backend, forward and backward. Checked on a handful of
    rows against float64: the first rows, the rows around 2^31 bytes, and the last rows, whose element
    offsets exceed 2^31 (an int32 index there wraps and reads or writes elsewhere)."""
    numel = HUGE_SHAPE[0] * HUGE_SHAPE[1] * HUGE_SHAPE[2]
    assert numel > 2**31
    # a, b, h, grad_out, da, db: 6 bf16 tensors of 4.3 GB, plus small ones.
    need = 6 * numel * 2 + (1 << 30)
    free, _total = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    dev = torch.device("cuda")
    gen = inputs.generator(seed, device=dev)
    rows_dim, T = HUGE_SHAPE[1], HUGE_SHAPE[2]
    rows = sorted({0, 1, rows_dim // 2 - 1, rows_dim // 2, rows_dim // 2 + 1, rows_dim - 3, rows_dim - 2, rows_dim - 1})
    assert (rows_dim - 1) * T + T - 1 > 2**31  # the last row crosses 2^31 elements
    try:
        gates = inputs.uniform_on_device(HUGE_SHAPE, *GATE_RANGE, dtype=torch.bfloat16, device=dev, generator=gen)
        tokens = inputs.normal_on_device(HUGE_SHAPE, dtype=torch.bfloat16, device=dev, generator=gen)
        h0 = inputs.normal_on_device(HUGE_SHAPE[:-1], dtype=torch.float32, device=dev, generator=gen)
        gates.requires_grad_(True)
        tokens.requires_grad_(True)
        h0.requires_grad_(True)
        with torch.no_grad():
            # Keep the rows we check, in float64, before anything runs.
            sel = torch.tensor(rows, device=dev)
            a_rows, b_rows, h0_rows = gates[0, sel].double(), tokens[0, sel].double(), h0[0, sel].double()

        out, final = arkernels.linear_scan(gates, tokens, h0, reverse=reverse, return_final_state=True, backend="cuda")
        assert out.shape == HUGE_SHAPE and out.dtype == torch.bfloat16
        assert final.shape == HUGE_SHAPE[:-1] and final.dtype == torch.float32
        out_rows, final_rows = out.detach()[0, sel], final.detach()[0, sel]
        assert torch.isfinite(final).all()

        grad_out = inputs.normal_on_device(HUGE_SHAPE, dtype=torch.bfloat16, device=dev, generator=gen)
        grad_final = inputs.normal_on_device(HUGE_SHAPE[:-1], dtype=torch.float32, device=dev, generator=gen)
        g_rows, gf_rows = grad_out[0, sel].double(), grad_final[0, sel].double()
        torch.autograd.backward([out, final], [grad_out, grad_final])
        del out, final, grad_out, grad_final
        da_rows, db_rows, dh0_rows = gates.grad[0, sel], tokens.grad[0, sel], h0.grad[0, sel]
        gates.grad = tokens.grad = h0.grad = None

        leaves64 = [x.clone().requires_grad_(True) for x in (a_rows, b_rows, h0_rows)]
        ref_out, ref_final = linear_scan_ref_logdepth(*leaves64, reverse=reverse, return_final_state=True)
        ((ref_out * g_rows).sum() + (ref_final * gf_rows).sum()).backward()

        tol = REL_TOL[torch.bfloat16]
        for i, r in enumerate(rows):
            _assert_close(out_rows[i], ref_out[i], tol, f"out row {r}")
            _assert_close(final_rows[i:i + 1], ref_final[i:i + 1].detach(), REL_TOL[torch.float32], f"final state row {r}")
            _assert_close(da_rows[i], leaves64[0].grad[i], tol, f"grad gates row {r}")
            _assert_close(db_rows[i], leaves64[1].grad[i], tol, f"grad tokens row {r}")
            _assert_close(dh0_rows[i:i + 1], leaves64[2].grad[i:i + 1], tol, f"grad initial_state row {r}")
    finally:
        gates = tokens = h0 = out = final = grad_out = grad_final = None  # noqa: F841
        torch.cuda.empty_cache()


# ---- last: opcheck of the Triton op ----
# Kept at the end of the file: opcheck runs the op's fake implementation, and a Triton launch that
# reaches real kernels with fake tensors (kernels not wrapped by torch.library.wrap_triton) ends in an
# illegal memory access that breaks the CUDA context for every later test in the process.

@gpu
@pytest.mark.parametrize("reverse", REVERSE)
@pytest.mark.parametrize("with_h0", WITH_H0)
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[1]])
def test_opcheck_linear_scan_triton_cuda(dtype, with_h0, reverse, rng):
    _skip_unless_runnable("triton", "cuda")
    torch.library.opcheck(torch.ops.arkernels.linear_scan_triton.default,
                          _opcheck_args(rng, "cuda", dtype, with_h0, reverse))
