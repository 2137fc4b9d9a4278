"""arkernels.selective_scan against its float64 reference, on every backend, forward and backward.

Contract (docs/ops/selective_scan.md): mamba_ssm.selective_scan_fn's shapes and semantics, plus
initial_state, a differentiable last state and cu_seqlens. Each test draws fresh inputs, computes the
float64 reference once (on the CPU) and checks every backend that can run here against it: forward
output, last state and every gradient. fp32 within REL_TOL-like bounds; bf16/fp16 within
max(REL_TOL[dtype], 2 x the error of the reference run in that dtype). Outputs are NaN-poisoned.
"""
from __future__ import annotations

import subprocess
import sys
import json

import pytest
import torch

import arkernels
from arkernels import _outputs
from arkernels.reference import linear_scan_ref, selective_scan_ref
from arkernels.testing import inputs
from arkernels.testing.numerics import REL_TOL, relative_error, max_abs_error

HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
slow = pytest.mark.slow

DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16"),
          pytest.param(torch.float16, id="fp16")]
# Backends checked in each test: the CPU kernel everywhere, the CUDA kernel where a GPU is present.
RUN_ON = [("cpu", "cpu"), ("auto", "cpu")] + ([("cuda", "cuda"), ("auto", "cuda")] if HAS_CUDA else [])
FP32_OUT_TOL, FP32_GRAD_TOL = 2e-5, 1e-4


@pytest.fixture(autouse=True)
def _poisoned_outputs():
    with _outputs.poisoned_outputs():
        yield


# One case = one combination of features. Together they cover: L in {1, 7, 372, 1134, 4097},
# N in {1, 16, 64, 128, 256}, constant / variable / grouped B and C (and mixed), z, D, softplus with
# bias, initial state, gradient through the last state, packed sequences with lengths 0 and 1. The long
# cases (L >= 1134, packed 1500) run as time chunks in the CUDA forward and backward (few channels).
CASES = {
    "L1_N16_var": dict(batch=2, dim=5, L=1, N=16, bc=("var", "var")),
    "L7_N1_const_D": dict(batch=2, dim=3, L=7, N=1, bc=("const", "const"), D=True),
    "L372_N16_var_z_softplus_h0": dict(batch=2, dim=6, L=372, N=16, bc=("var", "var"), z=True, softplus=True,
                                       bias=True, D=True, h0=True),
    "L1134_N64_grouped_h0": dict(batch=1, dim=8, L=1134, N=64, bc=("grp2", "grp2"), h0=True, D=True),
    "L4097_N16_var_softplus": dict(batch=2, dim=4, L=4097, N=16, bc=("var", "var"), softplus=True, bias=True),
    "L300_N128_mixed_z": dict(batch=2, dim=3, L=300, N=128, bc=("var", "const"), z=True, D=True, h0=True),
    "L100_N256_grouped": dict(batch=1, dim=4, L=100, N=256, bc=("grp2", "grp2"), softplus=True, h0=True),
    "L129_N7_const_var_bias": dict(batch=3, dim=5, L=129, N=7, bc=("const", "var"), bias=True, D=True),
    "varlen_N16": dict(batch=1, dim=5, N=16, bc=("var", "var"), seqlens=[1, 37, 0, 5, 1, 70], h0=True, D=True,
                       softplus=True, bias=True, z=True),
    "varlen_N64_grouped": dict(batch=1, dim=4, N=64, bc=("grp2", "grp2"), seqlens=[33, 1, 64, 0], h0=False),
    # Long enough for the CUDA forward and backward to split time into chunks (few channels): sequences
    # start and end inside chunks, one spans several, one has length 0 at a chunk's edge region.
    "varlen_long_N16": dict(batch=1, dim=3, N=16, bc=("var", "var"), seqlens=[700, 1, 0, 300, 499], h0=True,
                            D=True, softplus=True, bias=True),
}


def make_inputs(case, dtype, rng, device="cpu"):
    """Leaves of one case (all float inputs require grad), and the cu_seqlens tensor or None."""
    c = dict(case)
    batch, dim, N = c["batch"], c["dim"], c["N"]
    cu = None
    if "seqlens" in c:
        lens = c["seqlens"]
        cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32)
        L = int(cu[-1])
    else:
        L = c["L"]
    f = dict(generator=rng)
    u = inputs.normal((batch, dim, L), dtype=dtype, **f)
    raw = (-4.0, -1.0) if c.get("softplus") else (0.01, 0.2)
    delta = inputs.uniform((batch, dim, L), *raw, dtype=dtype, **f)
    A = -inputs.uniform((dim, N), 0.3, 2.0, **f)

    def bc(kind):
        if kind == "const":
            return inputs.normal((dim, N), **f)
        if kind == "var":
            return inputs.normal((batch, N, L), dtype=dtype, **f)
        return inputs.normal((batch, 2, N, L), dtype=dtype, **f)

    B, C = bc(c["bc"][0]), bc(c["bc"][1])
    D = inputs.normal((dim,), **f) if c.get("D") else None
    z = inputs.normal((batch, dim, L), dtype=dtype, **f) if c.get("z") else None
    # Without softplus, delta + bias must stay positive (a negative step makes the state grow).
    bias_range = (-0.5, 0.5) if c.get("softplus") else (0.0, 0.1)
    bias = inputs.uniform((dim,), *bias_range, **f) if c.get("bias") else None
    n_states = batch if cu is None else len(c["seqlens"])
    h0 = inputs.normal((n_states, dim, N), **f) if c.get("h0") else None
    leaves = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias, initial_state=h0)
    leaves = {k: (v.to(device).requires_grad_(True) if v is not None else None) for k, v in leaves.items()}
    return leaves, (cu.to(device) if cu is not None else None), bool(c.get("softplus"))


def run(fn, leaves, cu, softplus, w_out, w_last, **kwargs):
    """Forward + backward of loss = <out, w_out> + <last, w_last>; returns [out, last, grads...]."""
    out, last = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"], leaves["z"],
                   leaves["delta_bias"], softplus, True, initial_state=leaves["initial_state"], cu_seqlens=cu,
                   **kwargs)
    loss = (out.double() * w_out.to(out.device)).sum() + (last.double() * w_last.to(out.device)).sum()
    names = [k for k, v in leaves.items() if v is not None]
    grads = torch.autograd.grad(loss, [leaves[k] for k in names])
    return {"out": out, "last_state": last, **{f"d{k}": g for k, g in zip(names, grads)}}


def to64(leaves, device="cpu"):
    return {k: (v.detach().to(device=device, dtype=torch.float64).requires_grad_(True) if v is not None else None)
            for k, v in leaves.items()}


def moved(leaves, device):
    return {k: (v.detach().to(device).requires_grad_(True) if v is not None else None) for k, v in leaves.items()}


def check_case(case, dtype, rng, run_on=RUN_ON):
    leaves, cu, softplus = make_inputs(case, dtype, rng)
    n_states = leaves["u"].shape[0] if cu is None else cu.numel() - 1
    w_out = inputs.normal(leaves["u"].shape, generator=rng, dtype=torch.float64)
    w_last = inputs.normal((n_states, leaves["u"].shape[1], leaves["A"].shape[1]), generator=rng, dtype=torch.float64)
    ref64 = run(selective_scan_ref, to64(leaves), cu, softplus, w_out, w_last)
    if dtype == torch.float32:
        bounds = {k: (FP32_OUT_TOL if k in ("out", "last_state") else FP32_GRAD_TOL) for k in ref64}
    else:  # the reference run in this dtype sets the bar (ARCHITECTURE.md numerics contract)
        ref_lp = run(selective_scan_ref, moved(leaves, "cpu"), cu, softplus, w_out, w_last)
        bounds = {k: max(REL_TOL[dtype], 2.0 * relative_error(ref_lp[k], ref64[k])) for k in ref64}
    for backend, device in run_on:
        got = run(arkernels.selective_scan, moved(leaves, device), cu.to(device) if cu is not None else None,
                  softplus, w_out, w_last, backend=backend)
        for k, ref in ref64.items():
            assert got[k].shape == ref.shape, f"{backend}/{device} {k}: shape {tuple(got[k].shape)} != {tuple(ref.shape)}"
            rel = relative_error(got[k], ref)
            assert rel <= bounds[k], (f"{backend}/{device} {k}: relative error {rel:.3e} > {bounds[k]:.1e} "
                                      f"(max abs {max_abs_error(got[k], ref):.3e})")
            scale = ref.detach().abs().max().item() if ref.numel() else 0.0
            mae = max_abs_error(got[k], ref)
            assert mae <= 8 * bounds[k] * max(scale, 1e-6) + 1e-6, \
                f"{backend}/{device} {k}: max abs error {mae:.3e} (scale {scale:.3e}, bound {bounds[k]:.1e})"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_selective_scan_matches_reference(case, dtype, rng):
    check_case(CASES[case], dtype, rng)


def test_reference_matches_linear_scan_formulation(rng):
    """Cross-check of the reference with an independent formulation: for each (b, d, n), the state is
    the first-order recurrence h = a h + b with a = exp(delta A), b = delta u B (linear_scan_ref)."""
    case = CASES["L372_N16_var_z_softplus_h0"]
    leaves, cu, softplus = make_inputs(case, torch.float64, rng)
    L64 = {k: (v.detach() if v is not None else None) for k, v in leaves.items()}
    out, last = selective_scan_ref(L64["u"], L64["delta"], L64["A"], L64["B"], L64["C"], L64["D"], L64["z"],
                                   L64["delta_bias"], softplus, True, initial_state=L64["initial_state"])
    dl = torch.nn.functional.softplus(L64["delta"] + L64["delta_bias"][:, None])
    a = torch.exp(dl[:, :, None, :] * L64["A"][None, :, :, None])                 # (b, d, n, L)
    b = (dl * L64["u"])[:, :, None, :] * L64["B"][:, None, :, :]
    h, final = linear_scan_ref(a, b, L64["initial_state"], return_final_state=True)
    y = (h * L64["C"][:, None]).sum(2) + L64["D"][:, None] * L64["u"]
    y = y * torch.nn.functional.silu(L64["z"])
    assert relative_error(out, y) < 1e-12
    assert relative_error(last, final) < 1e-12


@pytest.mark.parametrize("backend,device", [("cpu", "cpu")] + ([("cuda", "cuda")] if HAS_CUDA else []))
def test_selective_scan_varlen_equals_separate_sequences(backend, device, rng):
    """Packed sequences give the same outputs and last states as each sequence run alone."""
    lens = [3, 1, 40, 0, 33]
    dim, N = 4, 16
    cu = torch.tensor([0, 3, 4, 44, 44, 77], dtype=torch.int64, device=device)
    L = 77
    u = inputs.normal((1, dim, L), generator=rng, device=device)
    delta = inputs.uniform((1, dim, L), 0.01, 0.2, generator=rng, device=device)
    A = -inputs.uniform((dim, N), 0.3, 2.0, generator=rng, device=device)
    B = inputs.normal((1, N, L), generator=rng, device=device)
    C = inputs.normal((1, N, L), generator=rng, device=device)
    h0 = inputs.normal((len(lens), dim, N), generator=rng, device=device)
    out, last = arkernels.selective_scan(u, delta, A, B, C, return_last_state=True, initial_state=h0,
                                         cu_seqlens=cu, backend=backend)
    for s, (lo, hi) in enumerate(zip(cu.tolist()[:-1], cu.tolist()[1:])):
        o, l_ = arkernels.selective_scan(u[..., lo:hi], delta[..., lo:hi], A, B[..., lo:hi], C[..., lo:hi],
                                         return_last_state=True, initial_state=h0[s:s + 1], backend=backend)
        assert relative_error(out[..., lo:hi], o) < 1e-6
        assert relative_error(last[s:s + 1], l_) < 1e-6


@pytest.mark.parametrize("backend,device", [("cpu", "cpu")] + ([("cuda", "cuda")] if HAS_CUDA else []))
def test_selective_scan_deterministic(backend, device, rng):
    """Two backward passes give bitwise equal gradients (no float atomics in the reductions)."""
    leaves, cu, softplus = make_inputs(CASES["L1134_N64_grouped_h0"], torch.float32, rng, device)
    w_out = inputs.normal(leaves["u"].shape, generator=rng, dtype=torch.float64)
    w_last = inputs.normal((1, 8, 64), generator=rng, dtype=torch.float64)
    first = run(arkernels.selective_scan, leaves, cu, softplus, w_out, w_last, backend=backend)
    second = run(arkernels.selective_scan, leaves, cu, softplus, w_out, w_last, backend=backend)
    for k in first:
        assert torch.equal(first[k], second[k]), k


@pytest.mark.parametrize("backend,device", [("cpu", "cpu")] + ([("cuda", "cuda")] if HAS_CUDA else []))
def test_selective_scan_no_grad_returns_out_only(backend, device, rng):
    leaves, cu, softplus = make_inputs(CASES["L7_N1_const_D"], torch.float32, rng, device)
    with torch.no_grad():
        out = arkernels.selective_scan(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"],
                                       leaves["D"], backend=backend)
        ref = selective_scan_ref(*(to64({k: leaves[k] for k in ("u", "delta", "A", "B", "C", "D")}).values()))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert relative_error(out, ref) < FP32_OUT_TOL


@pytest.mark.parametrize("backend,device", [("cpu", "cpu")] + ([("cuda", "cuda")] if HAS_CUDA else []))
def test_selective_scan_empty_sequence(backend, device, rng):
    """L = 0: empty output, the last state is the initial state, its gradient passes through."""
    u = torch.zeros((2, 3, 0), device=device)
    A = -torch.ones((3, 4), device=device)
    B = torch.zeros((2, 4, 0), device=device)
    h0 = inputs.normal((2, 3, 4), generator=rng, device=device).requires_grad_(True)
    out, last = arkernels.selective_scan(u, u, A, B, B, return_last_state=True, initial_state=h0, backend=backend)
    assert out.shape == (2, 3, 0)
    assert torch.equal(last, h0.detach())
    (g,) = torch.autograd.grad(last.sum(), [h0])
    assert torch.equal(g, torch.ones_like(g))


# ---- opcheck and torch.compile ----

OPCHECK_DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=gpu)]


@pytest.mark.parametrize("case", ["L372_N16_var_z_softplus_h0", "L129_N7_const_var_bias", "varlen_N16"])
@pytest.mark.parametrize("device", OPCHECK_DEVICES)
def test_opcheck_selective_scan(device, case, rng):
    leaves, cu, softplus = make_inputs(CASES[case], torch.float32, rng, device)
    args = (leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"], leaves["z"],
            leaves["delta_bias"], softplus, leaves["initial_state"], cu, True)
    torch.library.opcheck(torch.ops.arkernels.selective_scan.default, args)


class _MambaLikeLayer(torch.nn.Module):
    """A small layer as Mamba uses the op: x -> (u, delta, B, C, z) projections, scan, gated output."""

    def __init__(self, dim: int, N: int):
        super().__init__()
        self.dim, self.N = dim, N
        self.proj = torch.nn.Linear(dim, 3 * dim + 2 * N)
        self.A_log = torch.nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(dim, 1))
        self.D = torch.nn.Parameter(torch.ones(dim))
        self.dt_bias = torch.nn.Parameter(torch.full((dim,), -2.0))

    def forward(self, x, backend):  # x (b, L, dim)
        u, dt, z, B, C = self.proj(x).split([self.dim, self.dim, self.dim, self.N, self.N], dim=-1)
        out, last = arkernels.selective_scan(u.transpose(1, 2), dt.transpose(1, 2), -torch.exp(self.A_log),
                                             B.transpose(1, 2), C.transpose(1, 2), self.D, z.transpose(1, 2),
                                             self.dt_bias, True, True, backend=backend)
        return out.transpose(1, 2), last


@pytest.mark.parametrize("backend,device", [pytest.param("cpu", "cpu", id="cpu"),
                                            pytest.param("cuda", "cuda", id="cuda", marks=gpu)])
def test_selective_scan_torch_compile_fullgraph(backend, device, rng):
    torch._dynamo.reset()
    model = _MambaLikeLayer(8, 16).to(device)
    x = inputs.normal((2, 45, 8), generator=rng, device=device)
    w = inputs.normal((2, 45, 8), generator=rng, dtype=torch.float64, device=device)
    wl = inputs.normal((2, 8, 16), generator=rng, dtype=torch.float64, device=device)

    def step(fn):
        model.zero_grad(set_to_none=True)
        xs = x.clone().requires_grad_(True)
        out, last = fn(xs, backend)
        ((out.double() * w).sum() + (last.double() * wl).sum()).backward()
        return [out.detach(), last.detach(), xs.grad] + [p.grad.clone() for p in model.parameters()]

    eager = step(model)
    compiled = step(torch.compile(model, fullgraph=True))
    for e, c in zip(eager, compiled):
        assert relative_error(c, e) < 1e-5


# ---- bad input ----

def _args(**over):
    a = dict(u=torch.rand(2, 4, 9), delta=torch.rand(2, 4, 9), A=-torch.rand(4, 16), B=torch.rand(2, 16, 9),
             C=torch.rand(2, 16, 9))
    a.update(over)
    return a


BAD_INPUTS = {
    "u_rank": (dict(u=torch.rand(4, 9), delta=torch.rand(4, 9)), ValueError, r"u.*\(batch, dim, L\).*\(4, 9\)"),
    "delta_shape": (dict(delta=torch.rand(2, 4, 8)), ValueError, r"delta.*\(2, 4, 9\).*\(2, 4, 8\)"),
    "delta_dtype": (dict(delta=torch.rand(2, 4, 9, dtype=torch.float16)), TypeError, r"delta.*float32.*float16"),
    "u_integer": (dict(u=torch.ones(2, 4, 9, dtype=torch.int32)), TypeError, r"u.*int32"),
    "A_shape": (dict(A=torch.rand(5, 16)), ValueError, r"A.*dim=4.*\(5, 16\)"),
    "A_complex": (dict(A=torch.rand(4, 16, dtype=torch.complex64)), TypeError, r"A.*complex"),
    "N_too_large": (dict(A=-torch.rand(4, 257), B=torch.rand(4, 257), C=torch.rand(4, 257)), ValueError,
                    r"A.*1\.\.256.*257"),
    "B_shape": (dict(B=torch.rand(2, 16, 8)), ValueError, r"B.*\(2, 16, 9\).*\(2, 16, 8\)"),
    "B_dtype": (dict(B=torch.rand(2, 16, 9, dtype=torch.bfloat16)), TypeError, r"B.*float32.*bfloat16"),
    "C_groups": (dict(C=torch.rand(2, 3, 16, 9)), ValueError, r"C.*dividing dim = 4.*3"),
    "BC_group_mismatch": (dict(B=torch.rand(2, 2, 16, 9), C=torch.rand(2, 4, 16, 9)), ValueError, r"C.*2 groups.*4"),
    "D_shape": (dict(D=torch.rand(5)), ValueError, r"D.*\(4,\).*\(5,\)"),
    "z_shape": (dict(z=torch.rand(2, 4, 8)), ValueError, r"z.*\(2, 4, 9\).*\(2, 4, 8\)"),
    "h0_shape": (dict(initial_state=torch.rand(2, 4, 15)), ValueError, r"initial_state.*\(2, 4, 16\).*\(2, 4, 15\)"),
    "cu_batch": (dict(cu_seqlens=torch.tensor([0, 9], dtype=torch.int32)), ValueError, r"cu_seqlens.*batch == 1.*2"),
    "cu_float": (dict(cu_seqlens=torch.tensor([0.0, 9.0])), TypeError, r"cu_seqlens.*int32 or int64"),
    "softplus_not_bool": (dict(delta_softplus=1), TypeError, r"delta_softplus.*bool.*int"),
    "backend_name": (dict(backend="triton"), ValueError, r"backend"),
    "backend_cuda_on_cpu": (dict(backend="cuda"), ValueError, r"backend.*'cuda'.*cpu"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_selective_scan_bad_input_raises(case):
    over, exc, pattern = BAD_INPUTS[case]
    with pytest.raises(exc, match=pattern):
        arkernels.selective_scan(**_args(**over))


CU_BAD = {
    "non_monotone": ([0, 5, 3, 9], r"cu_seqlens.*non-decreasing.*5 before 3"),
    "wrong_end": ([0, 5, 8], r"cu_seqlens.*end at L = 9.*8"),
    "wrong_start": ([1, 5, 9], r"cu_seqlens.*start at 0.*1"),
}


@pytest.mark.parametrize("case", list(CU_BAD))
def test_selective_scan_bad_cu_seqlens_raises(case):
    values, pattern = CU_BAD[case]
    a = _args(u=torch.rand(1, 4, 9), delta=torch.rand(1, 4, 9), B=torch.rand(1, 16, 9), C=torch.rand(1, 16, 9),
              cu_seqlens=torch.tensor(values, dtype=torch.int64))
    with pytest.raises(ValueError, match=pattern):
        arkernels.selective_scan(**a)


# The torch op checks shapes itself (it is public through torch.ops); a child process runs the
# calls so that a crash fails these cases instead of killing the test run.
_BAD_OP_CHILD = """
import json, sys, torch, arkernels
r = torch.rand
cases = {
  "u_rank": lambda: torch.ops.arkernels.selective_scan(r(4, 9), r(4, 9), -r(4, 16), r(4, 16), r(4, 16)),
  "B_shape": lambda: torch.ops.arkernels.selective_scan(r(2, 4, 9), r(2, 4, 9), -r(4, 16), r(2, 16, 7), r(2, 16, 9)),
  "cu_out_of_range": lambda: torch.ops.arkernels.selective_scan(r(1, 4, 9), r(1, 4, 9), -r(4, 16), r(1, 16, 9),
      r(1, 16, 9), cu_seqlens=torch.tensor([0, 4, 12])),
  "h0_shape": lambda: torch.ops.arkernels.selective_scan(r(2, 4, 9), r(2, 4, 9), -r(4, 16), r(2, 16, 9), r(2, 16, 9),
      initial_state=r(3, 4, 16)),
  "bwd_checkpoint_shape": lambda: torch.ops.arkernels._selective_scan_backward(r(2, 4, 9), r(2, 4, 9), -r(4, 16),
      r(2, 16, 9), r(2, 16, 9), None, None, None, False, None, None, r(2, 4, 5, 16), r(0), r(2, 4, 9), None),
}
out = {}
for name, fn in cases.items():
    print("start", name, flush=True)
    try:
        fn()
        out[name] = None
    except Exception as err:
        out[name] = type(err).__name__ + ": " + str(err)
print(json.dumps(out), flush=True)
"""

BAD_OP_EXPECT = {
    "u_rank": r"ValueError: u: expected shape \(batch, dim, seqlen\)",
    "B_shape": r"ValueError: B: expected shape \[2, 1, 16, 9\], got \[2, 1, 16, 7\]",
    "cu_out_of_range": r"ValueError: cu_seqlens: expected to start at 0 and end at seqlen = 9",
    "h0_shape": r"ValueError: initial_state: expected shape \[2, 4, 16\]",
    "bwd_checkpoint_shape": r"ValueError: checkpoints: expected shape \[2, 4, 1, 16\]",
}


def test_selective_scan_torch_op_bad_input_raises():
    proc = subprocess.run([sys.executable, "-c", _BAD_OP_CHILD], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (f"child crashed (rc {proc.returncode}) after:\n{proc.stdout[-2000:]}\n"
                                  f"{proc.stderr[-3000:]}")
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    import re
    for name, pattern in BAD_OP_EXPECT.items():
        assert results[name] is not None and re.search(pattern, results[name]), f"{name}: {results[name]}"


# ---- large inputs (GPU) ----

@slow
@gpu
def test_selective_scan_more_than_2_31_elements_cuda():
    """u of more than 2^31 elements, with dim beyond 65535: rows at the end (offsets past 2^31) match
    the float64 reference, forward and backward (du, ddelta, dA of those rows)."""
    batch, dim, L, N = 1, 70000, 30700, 16
    assert batch * dim * L > 2**31
    free, _ = torch.cuda.mem_get_info()
    if free < 40 * 2**30:
        pytest.skip(f"needs 40 GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    dev, dt = "cuda", torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(1)
    u = inputs.normal_on_device((batch, dim, L), dtype=dt, device=dev, generator=gen)
    delta = inputs.uniform_on_device((batch, dim, L), 0.01, 0.1, dtype=dt, device=dev, generator=gen)
    A = -inputs.uniform_on_device((dim, N), 0.3, 2.0, dtype=torch.float32, device=dev, generator=gen)
    B = inputs.normal_on_device((batch, N, L), dtype=dt, device=dev, generator=gen)
    C = inputs.normal_on_device((batch, N, L), dtype=dt, device=dev, generator=gen)
    leaves = [u, delta, A]
    for t in leaves:
        t.requires_grad_(True)
    out = arkernels.selective_scan(u, delta, A, B, C, backend="cuda")
    rows = [0, dim // 2, dim - 2, dim - 1]
    g = torch.zeros_like(out)
    g[:, rows] = 1.0
    du, ddelta, dA = torch.autograd.grad(out, leaves, g)
    ref_leaves = [x.detach()[:, rows].cpu().double().requires_grad_(True) for x in (u, delta)]
    A_rows = A.detach()[rows].cpu().double().requires_grad_(True)
    ref = selective_scan_ref(ref_leaves[0], ref_leaves[1], A_rows, B.detach().cpu().double(), C.detach().cpu().double())
    rdu, rdd, rdA = torch.autograd.grad(ref, ref_leaves + [A_rows], torch.ones_like(ref))
    assert relative_error(out[:, rows], ref) < 1e-2
    assert relative_error(du[:, rows], rdu) < 1e-2
    assert relative_error(ddelta[:, rows], rdd) < 1e-2
    assert relative_error(dA[rows], rdA) < 1e-3
