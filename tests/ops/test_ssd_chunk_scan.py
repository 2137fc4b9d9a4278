"""arkernels.ssd_chunk_scan (Mamba-2 SSD) against its float64 reference, on every backend, forward and backward.

Contract (docs/ops/ssd_chunk_scan.md): per row and head, S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T,
y_t = S_t C_t + D x_t, out = y * silu(z), with dt processing (+dt_bias, softplus, clamp), initial and
final states, resets where seq_idx changes or at cu_seqlens boundaries (final states per sequence).
Output in x's dtype, fp32 states; gradients for x, dt, A, B, C, D, z, dt_bias, initial_states, also
through the final states.

Every comparison is against the reference in float64 on the same (rounded) inputs: the sequential
definition for small inputs, the chunked form above that (test_references_agree checks that the two
agree). Norm-relative bound numerics.REL_TOL[dtype] plus a max-abs bound; a gradient may be as far
from float64 as twice the reference run in the inputs' dtype. Outputs are NaN-poisoned before every
kernel (autouse fixture), so an element a kernel forgets to write fails.

Test ids name the backend and, for GPU tensors, "cuda" (the GPU script selects with ``-k cuda``).
The Triton kernels run on the CPU in test_ssd_chunk_scan_triton_interpreter.py (TRITON_INTERPRET=1).
"""
from __future__ import annotations

import math

import pytest
import torch

import arkernels
from arkernels import _outputs
from arkernels.ops import _backends
from arkernels.reference import ssd_chunk_scan_chunked_ref, ssd_chunk_scan_ref
from arkernels.testing import inputs
from arkernels.testing.numerics import REL_TOL
from arkernels.testing.ssd_chunk_scan import DIFF_NAMES, Case, assert_close, check, forward_backward, make_leaves

HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
slow = pytest.mark.slow
FP32, BF16, FP16 = torch.float32, torch.bfloat16, torch.float16
# The kernels address tiles with tl.make_block_ptr, which Triton 3.8 marks deprecated (see the kernel file).
pytestmark = pytest.mark.filterwarnings("ignore:tl.make_block_ptr is deprecated")

BACKENDS = [
    pytest.param("cpu", "cpu", id="cpu"),
    pytest.param("reference", "cpu", id="reference-cpu"),
    pytest.param("auto", "cpu", id="auto-cpu"),
    pytest.param("triton", "cuda", id="triton-cuda", marks=gpu),
    pytest.param("auto", "cuda", id="auto-cuda", marks=gpu),
]
FAST_BACKENDS = [BACKENDS[0], BACKENDS[3]]  # the full grid runs on the kernels
DTYPES = [pytest.param(FP32, id="fp32"), pytest.param(BF16, id="bf16"), pytest.param(FP16, id="fp16")]


@pytest.fixture(autouse=True)
def _poisoned_outputs():
    with _outputs.poisoned_outputs():
        yield


def _skip_unless_runnable(backend: str, device: str) -> None:
    if backend == "triton" and not _backends.triton_available():
        pytest.skip("triton is not installed")


def _op(backend, chunk_size=None):
    def fn(*args, **kwargs):
        if chunk_size is not None:
            kwargs["chunk_size"] = chunk_size
        return arkernels.ssd_chunk_scan(*args, backend=backend, **kwargs)

    return fn


def _seqlens(L: int) -> tuple[int, ...]:
    """Packed sequences for a length: several of them, some of length 1 (and an empty one)."""
    table = {1: (1,), 7: (1, 0, 5, 1), 372: (1, 200, 0, 1, 170), 1134: (1, 600, 1, 532)}
    return table.get(L, (1, L // 2, 0, L - L // 2 - 1))


def config(name: str, L: int, dtype) -> Case:
    """The named input configurations: n in {16, 64, 128}, p in {32, 64}, g in {1, 2}."""
    if name == "plain":
        return Case(b=2, l=L, h=2, p=32, g=1, n=16, dtype=dtype)
    if name == "full":
        return Case(b=2, l=L, h=4, p=32, g=2, n=64, dtype=dtype, z=True, D="hp", dt_bias=True, softplus=True,
                    init=True)
    if name == "n128":
        return Case(b=1, l=L, h=2, p=64, g=1, n=128, dtype=dtype, z=True, D="h", softplus=True, init=True,
                    dt_limit=(0.001, 0.2))
    if name == "seq_idx":
        return Case(b=2, l=L, h=4, p=32, g=2, n=16, dtype=dtype, z=True, softplus=True, init=True, seq_idx=True)
    if name == "varlen":
        return Case(b=1, l=L, h=2, p=32, g=1, n=16, dtype=dtype, z=True, D="h", softplus=True, init=True,
                    seqlens=_seqlens(L))
    raise KeyError(name)


CONFIGS = ["plain", "full", "n128", "seq_idx", "varlen"]
LENGTHS = [pytest.param(v, id=f"l{v}") for v in (1, 7, 372, 1134)]


# ---- the references themselves ----

@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("L", LENGTHS)
def test_references_agree(L, name, rng):
    """The chunked reference (the "reference" backend, and the oracle for large inputs) equals the
    sequential definition in float64, forward and every gradient."""
    case = config(name, L, torch.float64)
    # Small state sizes: the sequential reference runs token by token.
    case.h, case.p, case.n = 2, 8, 8
    case.g = 2 if case.g == 2 else 1
    leaves, seq_idx, cu = make_leaves(case, rng)
    leaves = {k: (v.double() if v is not None else None) for k, v in leaves.items()}
    ns = cu.numel() - 1 if cu is not None else case.b
    w_out = inputs.normal((case.b, L, case.h, case.p), generator=rng, dtype=torch.float64)
    w_final = inputs.normal((ns, case.h, case.p, case.n), generator=rng, dtype=torch.float64)
    seq = forward_backward(ssd_chunk_scan_ref, leaves, seq_idx, cu, case, w_out, w_final)
    for chunk in (64, 256):
        chk = forward_backward(ssd_chunk_scan_chunked_ref, leaves, seq_idx, cu, case, w_out, w_final,
                               chunk_size=chunk)
        assert_close(chk[0], seq[0], 1e-12, f"out, chunk {chunk}")
        assert_close(chk[1], seq[1], 1e-12, f"final states, chunk {chunk}")
        for k in DIFF_NAMES:
            if seq[2][k] is not None:
                assert_close(chk[2][k], seq[2][k], 1e-11, f"grad of {k}, chunk {chunk}")


def test_reference_matches_hand_computation():
    """h = p = n = 1: S_t = a_t S_{t-1} + dt_t x_t B_t, y_t = S_t C_t + D x_t, computed by hand."""
    x = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64).view(1, 3, 1, 1)
    dt = torch.tensor([0.5, 1.0, 0.25], dtype=torch.float64).view(1, 3, 1)
    A = torch.tensor([-2.0], dtype=torch.float64)
    B = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64).view(1, 3, 1, 1)
    C = torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64).view(1, 3, 1, 1)
    D = torch.tensor([0.5], dtype=torch.float64)
    S0 = torch.tensor([3.0], dtype=torch.float64).view(1, 1, 1, 1)
    S, ys = 3.0, []
    for t in range(3):
        a = math.exp(dt.flatten()[t].item() * -2.0)
        S = a * S + dt.flatten()[t].item() * x.flatten()[t].item() * B.flatten()[t].item()
        ys.append(S * C.flatten()[t].item() + 0.5 * x.flatten()[t].item())
    out, final = ssd_chunk_scan_ref(x, dt, A, B, C, D=D, initial_states=S0, return_final_states=True)
    torch.testing.assert_close(out.flatten(), torch.tensor(ys, dtype=torch.float64), rtol=1e-14, atol=0)
    torch.testing.assert_close(final.flatten(), torch.tensor([S], dtype=torch.float64), rtol=1e-14, atol=0)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_ssd_chunk_scan_small_example(backend, device, rng):
    """A one-head example every backend must reproduce (fp32, 3 tokens)."""
    _skip_unless_runnable(backend, device)
    x = torch.tensor([1.0, 2.0, -1.0]).view(1, 3, 1, 1)
    dt = torch.tensor([0.5, 1.0, 0.25]).view(1, 3, 1)
    B = torch.tensor([1.0, -1.0, 2.0]).view(1, 3, 1, 1)
    C = torch.tensor([2.0, 1.0, 1.0]).view(1, 3, 1, 1)
    args = [t.to(device) for t in (x, dt, torch.tensor([-2.0]), B, C)]
    out, final = arkernels.ssd_chunk_scan(*args, D=torch.tensor([0.5], device=device),
                                          initial_states=torch.full((1, 1, 1, 1), 3.0, device=device),
                                          return_final_states=True, backend=backend)
    ref_out, ref_final = ssd_chunk_scan_ref(*(a.double().cpu() for a in args), D=torch.tensor([0.5]).double(),
                                            initial_states=torch.full((1, 1, 1, 1), 3.0).double(),
                                            return_final_states=True)
    torch.testing.assert_close(out.cpu().double(), ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(final.cpu().double(), ref_final, rtol=1e-5, atol=1e-6)


# ---- every backend against float64 ----

@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend,device", FAST_BACKENDS)
def test_ssd_chunk_scan_matches_reference(backend, device, dtype, L, name, rng):
    _skip_unless_runnable(backend, device)
    check(_op(backend), config(name, L, dtype), rng, device)


@pytest.mark.parametrize("L,name", [pytest.param(372, "full", id="l372-full"),
                                    pytest.param(1134, "varlen", id="l1134-varlen"),
                                    pytest.param(372, "seq_idx", id="l372-seq_idx")])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend,device", [BACKENDS[1], BACKENDS[2], BACKENDS[4]])
def test_ssd_chunk_scan_other_backends_match_reference(backend, device, dtype, L, name, rng):
    _skip_unless_runnable(backend, device)
    check(_op(backend), config(name, L, dtype), rng, device)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_ssd_chunk_scan_chunk_size_is_a_hint(backend, device, rng):
    """chunk_size sets the reference's chunks; the kernels use their own: results agree up to rounding."""
    _skip_unless_runnable(backend, device)
    case = config("full", 372, FP32)
    leaves, seq_idx, cu = make_leaves(case, rng, device)
    outs = []
    for chunk in (64, 256, 17):
        out, final = _op(backend, chunk)(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"],
                                         D=leaves["D"], z=leaves["z"], dt_bias=leaves["dt_bias"],
                                         initial_states=leaves["initial_states"], return_final_states=True,
                                         **case.kwargs)
        outs.append((out, final))
    for out, final in outs[1:]:
        assert_close(out, outs[0][0], 1e-5, "out across chunk sizes")
        assert_close(final, outs[0][1], 1e-5, "final states across chunk sizes")


@pytest.mark.parametrize("used", ["out_only", "final_only"])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_ssd_chunk_scan_gradient_of_one_output(backend, device, used, rng):
    """Backward when only one of (out, final states) reaches the loss (the other arrives as None)."""
    _skip_unless_runnable(backend, device)
    case = config("full", 150, FP32)
    if used == "out_only":
        check(_op(backend), case, rng, device, use_final=False)
        return
    leaves, _, _ = make_leaves(case, rng, device)

    def grads(fn, src, dtype=None):
        xs = {k: (v.detach().to(dtype or v.dtype).clone().requires_grad_(True) if v is not None else None)
              for k, v in src.items()}
        _, final = fn(xs["x"], xs["dt"], xs["A"], xs["B"], xs["C"], D=xs["D"], z=xs["z"], dt_bias=xs["dt_bias"],
                      initial_states=xs["initial_states"], return_final_states=True, **case.kwargs)
        final.sum().backward()  # an expanded (stride 0) gradient
        return {k: (v.grad if v.grad is not None else torch.zeros_like(v)) for k, v in xs.items() if v is not None}

    ours = grads(_op(backend), leaves)
    ref = grads(ssd_chunk_scan_ref, {k: (v.cpu() if v is not None else None) for k, v in leaves.items()},
                torch.float64)
    for k, r in ref.items():
        assert_close(ours[k], r, 1e-5, f"grad of {k} (final only)")


@pytest.mark.parametrize("init_dtype", [torch.float64, BF16], ids=["init_fp64", "init_bf16"])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_ssd_chunk_scan_initial_states_dtype(backend, device, init_dtype, rng):
    """initial_states may have any floating dtype (used in fp32); its gradient comes back in that dtype."""
    _skip_unless_runnable(backend, device)
    case = config("plain", 20, FP32)
    case.init = True
    leaves, _, _ = make_leaves(case, rng, device)
    leaves["initial_states"] = leaves["initial_states"].to(init_dtype)
    init = leaves["initial_states"].clone().requires_grad_(True)
    args = [leaves[k] for k in ("x", "dt", "A", "B", "C")]
    _, final = arkernels.ssd_chunk_scan(*args, initial_states=init, return_final_states=True, backend=backend)
    final.sum().backward()
    assert init.grad is not None and init.grad.dtype == init_dtype
    init64 = init.detach().double().cpu().requires_grad_(True)
    _, rf = ssd_chunk_scan_ref(*(a.double().cpu() for a in args), initial_states=init64, return_final_states=True)
    rf.sum().backward()
    assert_close(init.grad, init64.grad, max(REL_TOL[FP32], REL_TOL[init_dtype]), "grad of initial_states")


# ---- layouts ----

def _fused_views(fused, dt_t, A1, D1, h, p, g, n):
    """x, z, B, C as slices of one (b, l, width) projection (the Mamba-2 layout), dt transposed, A and D
    broadcast (stride 0)."""
    x = fused[..., :h * p].unflatten(-1, (h, p))
    z = fused[..., h * p:2 * h * p].unflatten(-1, (h, p))
    B = fused[..., 2 * h * p:2 * h * p + g * n].unflatten(-1, (g, n))
    C = fused[..., 2 * h * p + g * n:2 * h * p + 2 * g * n].unflatten(-1, (g, n))
    return x, dt_t.transpose(1, 2), A1.expand(h), B, C, D1.expand(h, p), z


@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[1]])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_ssd_chunk_scan_strided_inputs(backend, device, dtype, rng):
    """Strided views give the results of their contiguous copies, forward and backward (the kernels
    read strided inputs in place; inputs are never written)."""
    _skip_unless_runnable(backend, device)
    b, l, h, p, g, n = 2, 150, 4, 32, 2, 16
    fused = inputs.normal((b, l, 2 * h * p + 2 * g * n + 3), generator=rng, dtype=dtype, device=device)
    dt_t = inputs.uniform((b, h, l), 0.01, 0.3, generator=rng, dtype=dtype, device=device)
    A1 = -inputs.uniform((1,), 0.2, 2.0, generator=rng, device=device)
    D1 = inputs.normal((p,), generator=rng, device=device)
    w = inputs.normal((b, l, h, p), generator=rng, device=device)
    bases = [t.clone().requires_grad_(True) for t in (fused, dt_t, A1, D1)]
    before = [t.detach().clone() for t in bases]
    views = _fused_views(*bases, h, p, g, n)
    assert not views[0].is_contiguous() and not views[1].is_contiguous() and views[2].stride(0) == 0

    def run(x, dt, A, B, C, D, z):
        out, final = arkernels.ssd_chunk_scan(x, dt, A, B, C, D=D, z=z, return_final_states=True, backend=backend)
        return out, final, (out.float() * w).sum() + final.sum()

    out_v, final_v, loss_v = run(*views)
    grads_v = torch.autograd.grad(loss_v, bases)
    copies = [v.detach().contiguous().requires_grad_(True) for v in views]
    out_c, final_c, loss_c = run(*copies)
    grads_c = torch.autograd.grad(loss_c, copies)
    # Scatter the copies' gradients back into the layout of the bases (broadcasts sum).
    bases_zero = [torch.zeros_like(t, requires_grad=True) for t in bases]
    scattered = torch.autograd.grad(_fused_views(*bases_zero, h, p, g, n), bases_zero, grads_c)
    tol = REL_TOL[FP32]
    assert_close(out_v, out_c, tol, "out")
    assert_close(final_v, final_c, tol, "final states")
    for name, gv, gc in zip(("fused", "dt", "A", "D"), grads_v, scattered):
        assert_close(gv, gc, tol, f"grad of {name}")
    for t, t0 in zip(bases, before):
        assert torch.equal(t.detach(), t0)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_ssd_chunk_scan_mixed_dtypes(backend, device, rng):
    """bf16 x, B, C, z with fp32 dt (as Mamba-2 keeps dt in fp32) and fp16 dt_bias."""
    _skip_unless_runnable(backend, device)
    case = config("full", 150, BF16)
    leaves, seq_idx, cu = make_leaves(case, rng, device)
    leaves["dt"] = leaves["dt"].float()
    leaves["dt_bias"] = leaves["dt_bias"].half()
    check(_op(backend), case, rng, device, leaves=(leaves, seq_idx, cu))


# ---- empty inputs ----

@pytest.mark.parametrize("shape", [pytest.param((2, 0), id="l0"), pytest.param((0, 5), id="b0")])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_ssd_chunk_scan_empty(backend, device, shape, rng):
    """No tokens: empty output; the final states are the initial states (zeros without), and their
    gradient is the final states' gradient."""
    _skip_unless_runnable(backend, device)
    b, L = shape
    case = Case(b=b, l=L, h=2, p=16, g=1, n=16, init=True)
    out, final = check(_op(backend), case, rng, device)
    assert out.shape == (b, L, 2, 16) and final.shape == (b, 2, 16, 16)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_ssd_chunk_scan_varlen_empty_sequences(backend, device, rng):
    """cu_seqlens [0, 0, 0]: two empty sequences on an empty row; final states = initial states."""
    _skip_unless_runnable(backend, device)
    case = Case(b=1, l=0, h=2, p=16, g=1, n=16, init=True, seqlens=(0, 0))
    _, final = check(_op(backend), case, rng, device)
    assert final.shape == (2, 2, 16, 16)


# ---- torch.library.opcheck and torch.compile ----

def _op_args(rng, device, dtype=FP32, varlen=False):
    case = config("varlen" if varlen else "full", 70, dtype)
    leaves, seq_idx, cu = make_leaves(case, rng, device)
    for k in DIFF_NAMES:
        if leaves[k] is not None:
            leaves[k].requires_grad_(True)
    init = leaves["initial_states"]
    return (leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], leaves["D"], leaves["z"],
            leaves["dt_bias"], init, seq_idx, cu, True, 0.0, float("inf"))


@pytest.mark.parametrize("varlen", [False, True], ids=["rows", "varlen"])
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[1]])
def test_opcheck_ssd_chunk_scan_cpu(dtype, varlen, rng):
    torch.library.opcheck(torch.ops.arkernels.ssd_chunk_scan.default, _op_args(rng, "cpu", dtype, varlen))


def test_opcheck_ssd_chunk_scan_backward_cpu(rng):
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in _op_args(rng, "cpu")]
    out, final = torch.ops.arkernels.ssd_chunk_scan(*args)
    for g_final in (torch.randn_like(final), None):
        torch.library.opcheck(torch.ops.arkernels._ssd_chunk_scan_backward.default,
                              (torch.randn_like(out), g_final, *args))


class _Mamba2Mixer(torch.nn.Module):
    """A small Mamba-2 style layer as models use the op: one projection to z, x, B, C, dt."""

    def __init__(self, dim: int, h: int, p: int, n: int, backend: str):
        super().__init__()
        self.h, self.p, self.n, self.backend = h, p, n, backend
        self.proj = torch.nn.Linear(dim, 2 * h * p + 2 * n + h)
        self.A_log = torch.nn.Parameter(torch.linspace(-1.0, 1.0, h))
        self.D = torch.nn.Parameter(torch.ones(h))
        self.dt_bias = torch.nn.Parameter(torch.full((h,), -2.0))

    def forward(self, u, init):
        h, p, n = self.h, self.p, self.n
        z, x, B, C, dt = torch.split(self.proj(u), [h * p, h * p, n, n, h], dim=-1)
        out, final = arkernels.ssd_chunk_scan(
            x.unflatten(-1, (h, p)), dt, -torch.exp(self.A_log), B.unsqueeze(2), C.unsqueeze(2), 64, D=self.D,
            z=z.unflatten(-1, (h, p)), dt_bias=self.dt_bias, initial_states=init, dt_softplus=True,
            return_final_states=True, backend=self.backend)
        return out.flatten(2) * 2.0, final


@pytest.mark.parametrize("backend,device", [
    pytest.param("cpu", "cpu", id="cpu"),
    pytest.param("triton", "cuda", id="triton-cuda", marks=gpu),
])
def test_ssd_chunk_scan_torch_compile_fullgraph(backend, device, rng):
    _skip_unless_runnable(backend, device)
    torch._dynamo.reset()
    model = _Mamba2Mixer(16, 2, 16, 16, backend).to(device)
    u = inputs.normal((2, 75, 16), generator=rng, device=device)
    init = inputs.normal((2, 2, 16, 16), generator=rng, device=device)
    w_out = inputs.normal((2, 75, 32), generator=rng, dtype=torch.float64, device=device)
    w_final = inputs.normal((2, 2, 16, 16), generator=rng, dtype=torch.float64, device=device)

    def run(module):
        us, hs = u.clone().requires_grad_(True), init.clone().requires_grad_(True)
        module.zero_grad(set_to_none=True)
        out, final = module(us, hs)
        ((out.double() * w_out).sum() + (final.double() * w_final).sum()).backward()
        return [out.detach(), final.detach(), us.grad, hs.grad] + [q.grad.clone() for q in module.parameters()]

    eager = run(model)
    compiled = run(torch.compile(model, fullgraph=True))
    for i, (c, e) in enumerate(zip(compiled, eager)):
        assert_close(c, e, 1e-5, f"compiled result {i}")


# ---- bad input ----

def _t(*shape, dtype=FP32, device="cpu"):
    if dtype.is_floating_point:
        return torch.rand(shape, dtype=torch.float32, device=device).to(dtype) * 0.1 + 0.01
    return torch.zeros(shape, dtype=dtype, device=device)


def _args(b=1, l=5, h=4, p=8, g=2, n=4, dtype=FP32):
    return [_t(b, l, h, p, dtype=dtype), _t(b, l, h), -_t(h), _t(b, l, g, n, dtype=dtype), _t(b, l, g, n, dtype=dtype)]


def _with(i, value, **kwargs):
    args = _args()
    args[i] = value
    return args, kwargs


# id -> (thunk returning (args, kwargs), exception type, regex: the argument, expected and given)
BAD_INPUTS = {
    "x_not_tensor": (lambda: _with(0, [1.0]), TypeError, r"x.*Tensor.*list"),
    "x_3d": (lambda: _with(0, _t(1, 5, 32)), ValueError, r"x.*4 dimensions.*\(1, 5, 32\)"),
    "x_int": (lambda: _with(0, _t(1, 5, 4, 8, dtype=torch.int32)), TypeError, r"x.*float32.*int32"),
    "x_float64": (lambda: _with(0, _t(1, 5, 4, 8, dtype=torch.float64)), TypeError, r"x.*float64"),
    "dt_shape": (lambda: _with(1, _t(1, 5, 3)), ValueError, r"dt.*\(1, 5, 4\).*\(1, 5, 3\)"),
    "A_shape": (lambda: _with(2, _t(4, 1)), ValueError, r"A.*\(4,\).*\(4, 1\)"),
    "B_shape": (lambda: _with(3, _t(1, 6, 2, 4)), ValueError, r"B.*\(1, 5, g, n\).*\(1, 6, 2, 4\)"),
    "B_groups": (lambda: _with(3, _t(1, 5, 3, 4)), ValueError, r"B.*groups.*h = 4.*g = 3"),
    "B_dtype": (lambda: _with(3, _t(1, 5, 2, 4, dtype=BF16)), TypeError, r"B.*float32.*bfloat16"),
    "C_shape": (lambda: _with(4, _t(1, 5, 2, 5)), ValueError, r"C.*\(1, 5, 2, 4\).*\(1, 5, 2, 5\)"),
    "C_dtype": (lambda: _with(4, _t(1, 5, 2, 4, dtype=FP16)), TypeError, r"C.*float32.*float16"),
    "chunk_size_zero": (lambda: (_args() + [0], {}), ValueError, r"chunk_size.*positive.*0"),
    "chunk_size_float": (lambda: (_args() + [64.0], {}), ValueError, r"chunk_size.*64\.0"),
    "D_shape": (lambda: (_args(), {"D": _t(8)}), ValueError, r"D.*\(4,\).*\(4, 8\).*\(8,\)"),
    "z_shape": (lambda: (_args(), {"z": _t(1, 5, 4, 7)}), ValueError, r"z.*\(1, 5, 4, 8\).*\(1, 5, 4, 7\)"),
    "z_dtype": (lambda: (_args(), {"z": _t(1, 5, 4, 8, dtype=BF16)}), TypeError, r"z.*float32.*bfloat16"),
    "dt_bias_shape": (lambda: (_args(), {"dt_bias": _t(3)}), ValueError, r"dt_bias.*\(4,\).*\(3,\)"),
    "initial_states_shape": (lambda: (_args(), {"initial_states": _t(1, 4, 8, 5)}), ValueError,
                             r"initial_states.*\(1, 4, 8, 4\).*\(1, 4, 8, 5\)"),
    "initial_states_int": (lambda: (_args(), {"initial_states": _t(1, 4, 8, 4, dtype=torch.int64)}), TypeError,
                           r"initial_states.*int64"),
    "seq_idx_shape": (lambda: (_args(), {"seq_idx": _t(1, 4, dtype=torch.int32)}), ValueError,
                      r"seq_idx.*\(1, 5\).*\(1, 4\)"),
    "seq_idx_float": (lambda: (_args(), {"seq_idx": _t(1, 5)}), TypeError, r"seq_idx.*int32.*float32"),
    "cu_seqlens_batch": (lambda: (_args(b=2), {"cu_seqlens": torch.tensor([0, 5], dtype=torch.int32)}), ValueError,
                         r"cu_seqlens.*batch size 1.*2"),
    "cu_seqlens_float": (lambda: (_args(), {"cu_seqlens": torch.tensor([0.0, 5.0])}), TypeError,
                         r"cu_seqlens.*int32.*float32"),
    "cu_seqlens_2d": (lambda: (_args(), {"cu_seqlens": torch.tensor([[0, 5]], dtype=torch.int32)}), ValueError,
                      r"cu_seqlens.*1-d.*\(1, 2\)"),
    "cu_seqlens_start": (lambda: (_args(), {"cu_seqlens": torch.tensor([1, 5], dtype=torch.int32)}), ValueError,
                         r"cu_seqlens.*0 to l = 5.*first 1"),
    "cu_seqlens_end": (lambda: (_args(), {"cu_seqlens": torch.tensor([0, 4], dtype=torch.int32)}), ValueError,
                       r"cu_seqlens.*0 to l = 5.*last 4"),
    "cu_seqlens_decreasing": (lambda: (_args(), {"cu_seqlens": torch.tensor([0, 3, 2, 5], dtype=torch.int32)}),
                              ValueError, r"cu_seqlens.*non-decreasing.*\[0, 3, 2, 5\]"),
    "cu_seqlens_vs_seq_idx": (lambda: (_args(), {"cu_seqlens": torch.tensor([0, 2, 5], dtype=torch.int32),
                                                 "seq_idx": torch.tensor([[0, 0, 0, 1, 1]], dtype=torch.int32)}),
                              ValueError, r"seq_idx.*boundaries \[2\].*\[3\]"),
    "initial_states_varlen_shape": (lambda: (_args(), {"cu_seqlens": torch.tensor([0, 2, 5], dtype=torch.int32),
                                                       "initial_states": _t(3, 4, 8, 4)}), ValueError,
                                    r"initial_states.*\(2, 4, 8, 4\).*\(1, 4, 8, 4\).*\(3, 4, 8, 4\)"),
    "dt_softplus_not_bool": (lambda: (_args(), {"dt_softplus": 1}), TypeError, r"dt_softplus.*bool.*int"),
    "dt_limit_order": (lambda: (_args(), {"dt_limit": (0.5, 0.1)}), ValueError, r"dt_limit.*min <= max.*0\.5, 0\.1"),
    "dt_limit_type": (lambda: (_args(), {"dt_limit": 0.1}), ValueError, r"dt_limit.*pair.*0\.1"),
    "return_final_states_not_bool": (lambda: (_args(), {"return_final_states": "yes"}), TypeError,
                                     r"return_final_states.*bool.*str"),
    "backend_name": (lambda: (_args(), {"backend": "cuda-graph"}), ValueError, r"backend.*'triton'.*'cuda-graph'"),
    "backend_cuda_unavailable": (lambda: (_args(), {"backend": "cuda"}), ValueError, r"backend.*'cuda'"),
    "backend_triton_on_cpu": (lambda: (_args(), {"backend": "triton"}), ValueError, r"backend.*'triton'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_ssd_chunk_scan_bad_input_raises(case):
    if case == "backend_triton_on_cpu" and _backends.triton_interpreted():
        pytest.skip("TRITON_INTERPRET=1: the triton backend runs on CPU tensors")
    thunk, exc, pattern = BAD_INPUTS[case]
    args, kwargs = thunk()
    with pytest.raises(exc, match=pattern):
        arkernels.ssd_chunk_scan(*args, **kwargs)


# The torch op validates too (it is public through torch.ops): TORCH_CHECK_VALUE/TYPE raise
# ValueError/TypeError naming the argument.
BAD_OP_INPUTS = {
    "x_3d": (lambda a: [_t(1, 5, 32)] + a[1:], ValueError, r"x.*4 dimensions"),
    "B_dtype": (lambda a: a[:3] + [a[3].half()] + a[4:], TypeError, r"B.*Float.*Half"),
    "groups": (lambda a: a[:3] + [_t(1, 5, 3, 4), _t(1, 5, 3, 4)] + a[5:], ValueError, r"B.*groups.*h = 4"),
    "dt_shape": (lambda a: [a[0], _t(1, 5, 3)] + a[2:], ValueError, r"dt.*\[1, 5, 4\].*\[1, 5, 3\]"),
    "cu_seqlens_end": (lambda a: a[:10] + [torch.tensor([0, 3], dtype=torch.int32)] + a[11:], ValueError,
                       r"cu_seqlens.*0 to l = 5"),
}


@pytest.mark.parametrize("case", list(BAD_OP_INPUTS))
def test_torch_op_ssd_chunk_scan_bad_input_raises(case):
    base = _args() + [None] * 6 + [False, 0.0, float("inf")]
    make, exc, pattern = BAD_OP_INPUTS[case]
    with pytest.raises(exc, match=pattern):
        torch.ops.arkernels.ssd_chunk_scan(*make(base))


@gpu
@pytest.mark.parametrize("case", ["B_on_cpu", "initial_states_on_cpu", "cu_seqlens_on_cpu", "backend_cpu_on_cuda"])
def test_ssd_chunk_scan_bad_devices_raise_cuda(case):
    args = [a.cuda() for a in _args()]
    kwargs, pattern = {}, None
    if case == "B_on_cpu":
        args[3], pattern = args[3].cpu(), r"B.*cuda.*cpu"
    elif case == "initial_states_on_cpu":
        kwargs, pattern = {"initial_states": _t(1, 4, 8, 4)}, r"initial_states.*cuda.*cpu"
    elif case == "cu_seqlens_on_cpu":
        kwargs, pattern = {"cu_seqlens": torch.tensor([0, 5], dtype=torch.int32)}, r"cu_seqlens.*cuda.*cpu"
    else:
        kwargs, pattern = {"backend": "cpu"}, r"backend.*'cpu'.*cuda"
    with pytest.raises(ValueError, match=pattern):
        arkernels.ssd_chunk_scan(*args, **kwargs)


# ---- GPU: the peer, determinism, long sequences ----

def _peer():
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as err:  # noqa: BLE001  (ImportError, or its triton kernels failing to import)
        pytest.skip(f"mamba_ssm is not importable: {type(err).__name__}: {err}")
    return mamba_chunk_scan_combined


@gpu
@pytest.mark.parametrize("features", ["plain", "full"])
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[1]])
def test_ssd_chunk_scan_matches_peer_cuda(dtype, features, rng):
    """Where mamba-ssm is installed: the same numbers as mamba_chunk_scan_combined, forward and backward
    (seq_idx starting at 0, where the two conventions for initial states agree)."""
    peer = _peer()
    case = Case(b=2, l=1134, h=4, p=64, g=2, n=64, dtype=dtype)
    if features == "full":
        case = Case(b=2, l=1134, h=4, p=64, g=2, n=64, dtype=dtype, z=True, D="h", dt_bias=True, softplus=True,
                    init=True, dt_limit=(0.001, 0.3))
    leaves, _, _ = make_leaves(case, rng, "cuda")
    seq_idx = None
    if features == "full":
        seq_idx = torch.zeros(case.b, case.l, dtype=torch.int32, device="cuda")
        seq_idx[:, 500:] = 1
        seq_idx[:, 900:] = 2
    results = []
    for fn in (lambda *a, **k: arkernels.ssd_chunk_scan(*a, backend="triton", **k), peer):
        xs = {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in leaves.items()}
        out, final = fn(xs["x"], xs["dt"], xs["A"], xs["B"], xs["C"], 256, D=xs["D"], z=xs["z"],
                        dt_bias=xs["dt_bias"], initial_states=xs["initial_states"], seq_idx=seq_idx,
                        dt_softplus=case.softplus, dt_limit=case.dt_limit, return_final_states=True)
        w = torch.randn(out.shape, generator=torch.Generator("cuda").manual_seed(1), device="cuda")
        (out.float() * w).sum().backward()
        results.append([out.detach(), final.detach()] + [xs[k].grad for k in DIFF_NAMES if xs[k] is not None])
    # The peer's fp32 dots run in tf32 (10-bit operands): ~1e-3 from float64, where ours are ~1e-6.
    tol = 5e-3 if dtype == FP32 else 3 * REL_TOL[dtype]
    for i, (ours, theirs) in enumerate(zip(*results)):
        assert_close(ours, theirs, tol, f"result {i} vs mamba_chunk_scan_combined")


@gpu
@pytest.mark.parametrize("seg_chunks", [1, 3, 7])
@pytest.mark.parametrize("name", ["full", "seq_idx", "varlen"])
def test_ssd_chunk_scan_segments_cuda(name, seg_chunks, rng, monkeypatch):
    """The sequential passes cut into segments of 1, 3 and 7 chunks (the GPU default picks them by
    occupancy, only for long inputs): forward, final states and every gradient still match float64."""
    from arkernels.triton_kernels import ssd_chunk_scan as tk

    monkeypatch.setitem(tk._TUNE, "seg_chunks", seg_chunks)
    check(_op("triton"), config(name, 1134, BF16), rng, "cuda")


@gpu
def test_ssd_chunk_scan_backward_is_deterministic_cuda(rng):
    case = config("full", 1134, BF16)
    leaves, seq_idx, cu = make_leaves(case, rng, "cuda")
    runs = []
    for _ in range(2):
        xs = {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in leaves.items()}
        out, final = arkernels.ssd_chunk_scan(xs["x"], xs["dt"], xs["A"], xs["B"], xs["C"], D=xs["D"], z=xs["z"],
                                              dt_bias=xs["dt_bias"], initial_states=xs["initial_states"],
                                              dt_softplus=True, return_final_states=True, backend="triton")
        (out.float().square().sum() + final.sum()).backward()
        runs.append([xs[k].grad for k in DIFF_NAMES if xs[k] is not None])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@gpu
@slow
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[1]])
def test_ssd_chunk_scan_long_sequence_cuda(dtype, rng):
    """l = 70001 (past the ~61K tokens where the peer's int32 offsets wrap), seq_idx and varlen."""
    case = Case(b=1, l=70001, h=8, p=64, g=1, n=64, dtype=dtype, z=True, D="h", softplus=True, init=True,
                seq_idx=True)
    check(_op("triton"), case, rng, "cuda", ref_device="cuda")
    case = Case(b=1, l=70001, h=8, p=64, g=1, n=64, dtype=dtype, softplus=True, init=True,
                seqlens=(1, 65536, 3, 4461))
    check(_op("triton"), case, rng, "cuda", ref_device="cuda")


@gpu
@slow
def test_ssd_chunk_scan_more_than_2pow31_state_elements_cuda(seed):
    """bf16 (1, 540000, 32, 64) with n = 128: the backward's per-chunk state buffers hold more than 2^31
    elements (an int32 offset would wrap). Checked head by head against the float64 chunked reference
    (g = 1: dB and dC sum over all heads, the reference is summed over head blocks)."""
    b, l, h, p, n = 1, 540000, 32, 64, 128
    assert (l // 64) * h * p * n > 2**31
    need = 40 * 2**30
    free, _ = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs ~{need / 2**30:.0f} GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    dev = torch.device("cuda")
    gen = inputs.generator(seed, device=dev)
    x = inputs.normal_on_device((b, l, h, p), dtype=BF16, device=dev, generator=gen)
    dt = inputs.uniform_on_device((b, l, h), 0.001, 0.1, dtype=BF16, device=dev, generator=gen)
    A = -inputs.uniform_on_device((h,), 0.1, 2.0, dtype=FP32, device=dev, generator=gen)
    B = inputs.normal_on_device((b, l, 1, n), dtype=BF16, device=dev, generator=gen)
    C = inputs.normal_on_device((b, l, 1, n), dtype=BF16, device=dev, generator=gen)
    g_out = inputs.normal_on_device((b, l, h, p), dtype=BF16, device=dev, generator=gen)
    leaves = [t.clone().requires_grad_(True) for t in (x, dt, A, B, C)]
    out, final = arkernels.ssd_chunk_scan(*leaves, return_final_states=True, backend="triton")
    out.backward(g_out)
    tol = REL_TOL[BF16]
    dB_ref = torch.zeros(B.shape, dtype=torch.float64, device=dev)
    dC_ref = torch.zeros(C.shape, dtype=torch.float64, device=dev)
    for h0 in range(0, h, 4):
        sl = slice(h0, h0 + 4)
        xr = x[:, :, sl].double().requires_grad_(True)
        dtr = dt[:, :, sl].double().requires_grad_(True)
        Ar = A[sl].double().requires_grad_(True)
        Br, Cr = B.double().requires_grad_(True), C.double().requires_grad_(True)
        o, f = ssd_chunk_scan_chunked_ref(xr, dtr, Ar, Br, Cr, 64, return_final_states=True)
        o.backward(g_out[:, :, sl].double())
        assert_close(out.detach()[:, :, sl], o.detach(), tol, f"out heads {sl}")
        assert_close(final[:, sl], f.detach(), tol, f"final heads {sl}")
        assert_close(leaves[0].grad[:, :, sl], xr.grad, tol, f"dx heads {sl}")
        assert_close(leaves[1].grad[:, :, sl], dtr.grad, tol, f"ddt heads {sl}")
        assert_close(leaves[2].grad[sl], Ar.grad, tol, f"dA heads {sl}")
        dB_ref += Br.grad
        dC_ref += Cr.grad
        del o, f, xr, dtr, Br, Cr
        torch.cuda.empty_cache()
    assert_close(leaves[3].grad, dB_ref, tol, "dB")
    assert_close(leaves[4].grad, dC_ref, tol, "dC")


# ---- last: opcheck of the Triton op (a failing fake kernel can break the CUDA context) ----

@gpu
@pytest.mark.parametrize("varlen", [False, True], ids=["rows", "varlen"])
@pytest.mark.parametrize("dtype", [DTYPES[0], DTYPES[1]])
def test_opcheck_ssd_chunk_scan_triton_cuda(dtype, varlen, rng):
    _skip_unless_runnable("triton", "cuda")
    torch.library.opcheck(torch.ops.arkernels.ssd_chunk_scan_triton.default, _op_args(rng, "cuda", dtype, varlen))

