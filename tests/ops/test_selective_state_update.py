"""arkernels.selective_state_update / selective_state_update_tokens against their float64 reference.

Contract (docs/ops/selective_state_update.md): per channel, token and state element
    dt' = softplus?(dt + dt_bias);  s = s * exp(dt' * A) + B * (dt' * x);  out = sum_n s * C + D * x;  out *= silu(z)
with the state updated IN PLACE (math in fp32, written back in its own dtype), out in x's dtype.
Mamba-1 layout: state (Bc, dim, n); Mamba-2: state (Bc, h, p, n). state_batch_indices picks state rows,
negative = padding (out 0, state untouched). The multi-token op advances k tokens in one call; its
oracle is the one-token reference applied token after token (in float64).

Every comparison is against the reference evaluated in float64 on the same (rounded) input values,
with the norm-relative bound of numerics.REL_TOL for the output's dtype (the state's dtype for the
state) plus a max-abs bound. State rows the call must not touch are compared bitwise. New outputs are
NaN-poisoned before every kernel (autouse fixture), and intermediate_states start NaN-filled, so an
element a kernel forgets to write fails. Test ids name "cuda" for GPU tensors (select with -k cuda).
"""
from __future__ import annotations

import itertools

import pytest
import torch

import arkernels
from arkernels import _outputs
from arkernels.reference import selective_state_update_ref, selective_state_update_tokens_ref
from arkernels.testing import inputs, peers
from arkernels.testing.numerics import REL_TOL, assert_close_to_reference

gpu = pytest.mark.gpu
slow = pytest.mark.slow

BACKENDS = [
    pytest.param("cpu", "cpu", id="cpu"),
    pytest.param("reference", "cpu", id="reference-cpu"),
    pytest.param("auto", "cpu", id="auto-cpu"),
    pytest.param("cuda", "cuda", id="cuda", marks=gpu),
    pytest.param("reference", "cuda", id="reference-cuda", marks=gpu),
    pytest.param("auto", "cuda", id="auto-cuda", marks=gpu),
]
# Kernel backends only (for tests of kernel-specific paths and bitwise properties).
KERNELS = [pytest.param("cpu", "cpu", id="cpu"), pytest.param("cuda", "cuda", id="cuda", marks=gpu)]
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=gpu)]

# (x dtype, state dtype): the model combinations (fp32 state with any input dtype) and 16-bit states.
DTYPES = [
    pytest.param(torch.float32, torch.float32, id="x_fp32-state_fp32"),
    pytest.param(torch.bfloat16, torch.float32, id="x_bf16-state_fp32"),
    pytest.param(torch.float16, torch.float32, id="x_fp16-state_fp32"),
    pytest.param(torch.bfloat16, torch.bfloat16, id="x_bf16-state_bf16"),
    pytest.param(torch.float16, torch.float16, id="x_fp16-state_fp16"),
]
# Mamba-1 (dim,) with an odd dim; Mamba-2 (nheads, headdim) with an odd headdim.
LAYOUTS = {"mamba1": (37,), "mamba2": (4, 5)}
LAYOUT_IDS = list(LAYOUTS)
MAX_ABS_FACTOR = 4.0


@pytest.fixture(autouse=True)
def _poisoned_outputs():
    """NaN-fill every output of the C++ kernels before they run."""
    with _outputs.poisoned_outputs():
        yield


# ---- inputs ----

def make_inputs(rng, *, channel, N, b=3, k=None, groups=None, x_dtype=torch.float32, state_dtype=torch.float32,
                param_dtype=torch.float32, with_D=True, with_z=True, with_bias=True, softplus=True, tie=False,
                a_const_n=False, indices=None, index_dtype=torch.int64, inter=False, device="cpu", extra_rows=3):
    """Keyword arguments of the op (without backend) for one case.

    channel: (dim,) Mamba-1 or (nheads, headdim) Mamba-2; k: None for the one-token op, else tokens;
    groups: None (B, C without a group axis) or the number of groups; tie: Mamba-2 as models call it,
    A/dt/D/dt_bias broadcast over headdim (and A over dstate) with stride 0; a_const_n: A broadcast over
    dstate only; indices: None, "perm" (a permutation of a larger cache, one padding entry) or "pad"
    (every entry padding); inter: pass NaN-filled intermediate_states (multi-token op).
    """
    lead = (b,) if k is None else (b, k)
    Bc = b + extra_rows if indices is not None else b

    def normal(shape, dtype, std=1.0):
        return inputs.normal(shape, generator=rng, dtype=dtype, device=device, std=std)

    def uniform(shape, lo, hi, dtype):
        return inputs.uniform(shape, lo, hi, generator=rng, dtype=dtype, device=device)

    def dt_values(shape):
        # Raw dt around -1 for softplus (dt' ~ 0.2-0.5), else positive steps.
        if softplus:
            return (normal(shape, torch.float32, 0.5) - 1.0).to(x_dtype)
        return uniform(shape, 0.01, 0.5, x_dtype)

    args = {"state": normal((Bc, *channel, N), state_dtype), "x": normal(lead + channel, x_dtype)}
    if tie:
        assert len(channel) == 2
        H, P = channel
        args["dt"] = dt_values(lead + (H,))[..., None].expand(lead + channel)
        args["A"] = (-uniform((H,), 0.1, 4.0, torch.float32)).to(param_dtype)[:, None, None].expand(H, P, N)
        D = normal((H,), param_dtype)[:, None].expand(channel)
        bias = uniform((H,), -0.5, 0.0, param_dtype)[:, None].expand(channel)
    else:
        args["dt"] = dt_values(lead + channel)
        if a_const_n:
            args["A"] = (-uniform(channel, 0.1, 4.0, torch.float32)).to(param_dtype)[..., None].expand(channel + (N,))
        else:
            args["A"] = (-uniform(channel + (N,), 0.1, 4.0, torch.float32)).to(param_dtype)
        D = normal(channel, param_dtype)
        bias = uniform(channel, -0.5, 0.0, param_dtype)
    bc_shape = lead + ((groups,) if groups is not None else ()) + (N,)
    args["B"] = normal(bc_shape, x_dtype)
    args["C"] = normal(bc_shape, x_dtype)
    args["D"] = D if with_D else None
    args["z"] = normal(lead + channel, x_dtype) if with_z else None
    args["dt_bias"] = bias if with_bias else None
    args["dt_softplus"] = softplus
    if indices == "perm":
        idx = torch.randperm(Bc, generator=rng)[:b]
        if b > 1:
            idx[1] = -1
        args["state_batch_indices"] = idx.to(index_dtype).to(device)
    elif indices == "pad":
        args["state_batch_indices"] = torch.full((b,), -1, dtype=index_dtype, device=device)
    else:
        args["state_batch_indices"] = None
    if k is not None:
        args["intermediate_states"] = (torch.full((b, k, *args["state"].shape[1:]), float("nan"), dtype=state_dtype,
                                                  device=device) if inter else None)
    return args


def _float64(t):
    return t.detach().to(torch.float64) if isinstance(t, torch.Tensor) and t.is_floating_point() else t


def oracle(args, tokens: bool):
    """float64 result of the op on a copy of the state: (out, new state, intermediate states or None).
    The multi-token oracle applies the one-token reference token after token."""
    a = {key: _float64(v) for key, v in args.items() if key != "intermediate_states"}
    a["state"] = args["state"].detach().to(torch.float64).clone()
    if not tokens:
        out = selective_state_update_ref(**a)
        return out, a["state"], None
    k = a["x"].shape[1]
    per_token = ("x", "dt", "B", "C", "z")
    outs, states = [], []
    for t in range(k):
        step = {key: (v[:, t] if key in per_token and v is not None else v) for key, v in a.items()}
        outs.append(selective_state_update_ref(**step))
        states.append(a["state"].clone())
    out = torch.stack(outs, dim=1) if outs else a["x"].new_zeros(a["x"].shape)
    inter = None
    if args.get("intermediate_states") is not None:
        inter = torch.full(args["intermediate_states"].shape, float("nan"), dtype=torch.float64)
        rows = _rows(args)
        for t in range(k):
            for i, r in rows:
                inter[i, t] = states[t][r].cpu()
    return out, a["state"], inter


def _rows(args):
    """(batch element, state row) pairs the call touches."""
    idx = args.get("state_batch_indices")
    b = args["x"].shape[0]
    if idx is None:
        return [(i, i) for i in range(b)]
    return [(i, int(r)) for i, r in enumerate(idx.tolist()) if r >= 0]


def _assert_close(out, ref, rel_tol, name):
    scale = ref.detach().abs().max().item() if ref.numel() else 0.0
    assert_close_to_reference(out, ref, rel_tol=rel_tol, max_abs=MAX_ABS_FACTOR * rel_tol * scale + 1e-30, name=name)


def run_op(backend, args, tokens):
    fn = arkernels.selective_state_update_tokens if tokens else arkernels.selective_state_update
    with torch.no_grad():
        return fn(**args, backend=backend)


def check_case(backend, args, *, tokens):
    """The whole contract for one input: out, the updated state (in place, same storage), untouched rows
    bitwise unchanged, intermediate states; returns out."""
    state = args["state"]
    before = state.clone()
    ptr = state.data_ptr()
    ref_out, ref_state, ref_inter = oracle(args, tokens)

    out = run_op(backend, args, tokens)

    x = args["x"]
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert state.data_ptr() == ptr, "the state must be updated in place"
    _assert_close(out, ref_out, REL_TOL[x.dtype], f"{backend} out")
    rows = _rows(args)
    touched = sorted({r for _, r in rows})
    untouched = [r for r in range(state.shape[0]) if r not in touched]
    if touched:
        sel = torch.tensor(touched, device=state.device)
        _assert_close(state[sel], ref_state[sel.to(ref_state.device)], REL_TOL[state.dtype], f"{backend} state")
    if untouched:
        sel = torch.tensor(untouched, device=state.device)
        assert torch.equal(state[sel], before[sel]), "state rows not named by state_batch_indices changed"
    inter = args.get("intermediate_states")
    if inter is not None:
        written = [i for i, _ in rows]
        if written:
            sel = torch.tensor(written)
            _assert_close(inter.cpu()[sel], ref_inter[sel], REL_TOL[state.dtype], f"{backend} intermediate_states")
        padding = [i for i in range(x.shape[0]) if i not in written]
        if padding:
            assert torch.isnan(inter.cpu()[torch.tensor(padding)]).all(), "intermediate states of padding rows written"
    pad = [i for i, r in enumerate(_index_list(args)) if r < 0]
    if pad:
        assert (out[torch.tensor(pad, device=out.device)] == 0).all(), "padding rows must give out = 0"
    return out


def _index_list(args):
    idx = args.get("state_batch_indices")
    return [] if idx is None else idx.tolist()


# ---- the reference itself ----

@pytest.mark.parametrize("layout", LAYOUT_IDS)
def test_reference_tokens_equals_loop_of_one_token(layout, rng):
    """selective_state_update_tokens_ref (state carried across tokens) equals the one-token reference
    applied token after token, in float64."""
    args = make_inputs(rng, channel=LAYOUTS[layout], N=16, k=5, groups=1, indices="perm", inter=True)
    a = {key: _float64(v) for key, v in args.items()}
    a["state"] = a["state"].clone()
    a["intermediate_states"] = torch.full(a["intermediate_states"].shape, float("nan"), dtype=torch.float64)
    out = selective_state_update_tokens_ref(**a)
    ref_out, ref_state, ref_inter = oracle(args, tokens=True)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a["state"], ref_state, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a["intermediate_states"], ref_inter, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_reference_small_example_by_hand():
    """dim 1, n 2, no softplus: s = [1, 2], dt = 0.5, A = [-2, 0], x = 2, B = [1, 3], C = [1, -1], D = 0.5:
    dA = [e^-1, 1], s' = [e^-1 + 1, 2 + 3] , out = e^-1 + 1 - 5 + 1 = e^-1 - 3."""
    state = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64)
    out = selective_state_update_ref(state, torch.tensor([[2.0]], dtype=torch.float64),
                                     torch.tensor([[0.5]], dtype=torch.float64),
                                     torch.tensor([[-2.0, 0.0]], dtype=torch.float64),
                                     torch.tensor([[1.0, 3.0]], dtype=torch.float64),
                                     torch.tensor([[1.0, -1.0]], dtype=torch.float64),
                                     D=torch.tensor([0.5], dtype=torch.float64))
    e = torch.exp(torch.tensor(-1.0, dtype=torch.float64))
    torch.testing.assert_close(state, torch.stack([e + 1, torch.tensor(5.0, dtype=torch.float64)]).view(1, 1, 2))
    torch.testing.assert_close(out, (e - 3).view(1, 1))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_small_example_by_hand(backend, device):
    """The same numbers through every backend (fp32)."""
    state = torch.tensor([[[1.0, 2.0]]], device=device)
    f = lambda *v: torch.tensor(v, device=device)  # noqa: E731
    out = arkernels.selective_state_update(state, f([2.0]), f([0.5]), f([-2.0, 0.0]), f([1.0, 3.0]), f([1.0, -1.0]),
                                           D=f(0.5), backend=backend)
    e = torch.exp(torch.tensor(-1.0)).item()
    torch.testing.assert_close(state.cpu(), torch.tensor([[[e + 1, 5.0]]]), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.cpu(), torch.tensor([[e - 3]]), rtol=1e-6, atol=1e-6)


# ---- every backend against float64 ----

@pytest.mark.parametrize("N", [pytest.param(n, id=f"n{n}") for n in (1, 16, 37, 64, 128, 256)])
@pytest.mark.parametrize("x_dtype,state_dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUT_IDS)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_matches_reference(backend, device, layout, x_dtype, state_dtype, N, rng):
    """Both layouts, dstate from 1 to 256 (and odd 37), every dtype pair; D, z, dt_bias and softplus on;
    Mamba-2 with grouped B/C and A/dt/D/dt_bias broadcast over headdim (as models call it)."""
    mamba2 = layout == "mamba2"
    args = make_inputs(rng, channel=LAYOUTS[layout], N=N, groups=2 if mamba2 else None, tie=mamba2,
                       x_dtype=x_dtype, state_dtype=state_dtype, device=device)
    check_case(backend, args, tokens=False)


@pytest.mark.parametrize("with_D,with_z,with_bias,softplus", [
    pytest.param(*flags, id="-".join(f"{n}{int(f)}" for n, f in zip(("D", "z", "bias", "softplus"), flags)))
    for flags in itertools.product((False, True), repeat=4)])
@pytest.mark.parametrize("layout", LAYOUT_IDS)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_optional_inputs(backend, device, layout, with_D, with_z, with_bias, softplus, rng):
    args = make_inputs(rng, channel=LAYOUTS[layout], N=16, with_D=with_D, with_z=with_z, with_bias=with_bias,
                       softplus=softplus, device=device)
    check_case(backend, args, tokens=False)


GROUPS = [
    pytest.param((36,), None, id="mamba1-no_group_axis"),
    pytest.param((36,), 1, id="mamba1-g1"),
    pytest.param((36,), 3, id="mamba1-g3"),
    pytest.param((36,), 36, id="mamba1-g36"),
    pytest.param((6, 3), None, id="mamba2-no_group_axis"),
    pytest.param((6, 3), 1, id="mamba2-g1"),
    pytest.param((6, 3), 3, id="mamba2-g3"),
    pytest.param((6, 3), 6, id="mamba2-g6"),
]


@pytest.mark.parametrize("channel,groups", GROUPS)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_groups(backend, device, channel, groups, rng):
    """B/C groups: Mamba-1 channel d reads group d // (dim / g); Mamba-2 head h reads group h // (h / g)."""
    args = make_inputs(rng, channel=channel, N=16, groups=groups, device=device)
    check_case(backend, args, tokens=False)


BROADCASTS = {
    # Mamba-2 as models call it: A (h,) -> (h, p, n), dt (b, h) -> (b, h, p), D/dt_bias (h,) -> (h, p).
    "mamba2_tie_headdim": dict(channel=(4, 8), tie=True),
    # A constant along n only (one exp per row), per-channel dt.
    "mamba2_A_const_n": dict(channel=(4, 8), a_const_n=True),
    "mamba1_A_const_n": dict(channel=(40,), a_const_n=True),
    "mamba2_full_A": dict(channel=(4, 8)),
}


@pytest.mark.parametrize("N", [pytest.param(n, id=f"n{n}") for n in (16, 128)])
@pytest.mark.parametrize("case", list(BROADCASTS))
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_broadcast_parameters(backend, device, case, N, rng):
    """Stride-0 (expanded) A, dt, D, dt_bias: read as given, never copied; the result is the same as
    with materialised tensors."""
    args = make_inputs(rng, N=N, device=device, **BROADCASTS[case])
    if BROADCASTS[case].get("tie") or BROADCASTS[case].get("a_const_n"):
        assert args["A"].stride(-1) == 0  # the case tests what its name says
    dense = {key: (v.contiguous().clone() if isinstance(v, torch.Tensor) else v) for key, v in args.items()}
    out = check_case(backend, args, tokens=False)
    out_dense = run_op(backend, dense, tokens=False)
    torch.testing.assert_close(out, out_dense, rtol=2e-6, atol=2e-6)


# Shapes that CUDA runs with its head-tile kernel (N = 4 * lanes per row, the rows of a block inside
# one B/C group; with tie, the block inside one head): the models' layouts, scaled down.
HEAD_TILE = {
    "mamba1_n16": dict(channel=(256,), N=16),
    "mamba2_tie_n128_g2": dict(channel=(4, 64), N=128, groups=2, tie=True),
    "mamba2_tie_n32": dict(channel=(2, 128), N=32, tie=True),
    "mamba2_A_const_n_n64": dict(channel=(4, 64), N=64, a_const_n=True),
    "mamba2_full_A_n16": dict(channel=(2, 64), N=16, groups=1),
}


@pytest.mark.parametrize("k", [pytest.param(None, id="step"), pytest.param(3, id="k3")])
@pytest.mark.parametrize("x_dtype,state_dtype", [DTYPES[0], DTYPES[1], DTYPES[3]])
@pytest.mark.parametrize("case", list(HEAD_TILE))
@pytest.mark.parametrize("backend,device", KERNELS)
def test_head_tile_shapes(backend, device, case, x_dtype, state_dtype, k, rng):
    """Model-like shapes with state_batch_indices (one padding row) and, for k tokens, intermediate
    states: on CUDA the head-tile kernel, checked against the same contract as every other path."""
    args = make_inputs(rng, device=device, x_dtype=x_dtype, state_dtype=state_dtype, k=k, indices="perm",
                       inter=k is not None, **HEAD_TILE[case])
    check_case(backend, args, tokens=k is not None)


@pytest.mark.parametrize("param_dtype", [pytest.param(torch.bfloat16, id="params_bf16"),
                                         pytest.param(torch.float32, id="params_fp32")])
@pytest.mark.parametrize("layout", LAYOUT_IDS)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_parameters_in_input_dtype(backend, device, layout, param_dtype, rng):
    """A, D and dt_bias may be float32 or the dtype of x (here bf16 inputs)."""
    args = make_inputs(rng, channel=LAYOUTS[layout], N=16, x_dtype=torch.bfloat16, param_dtype=param_dtype,
                       tie=layout == "mamba2", device=device)
    check_case(backend, args, tokens=False)


@pytest.mark.parametrize("index_dtype", [pytest.param(torch.int32, id="int32"), pytest.param(torch.int64, id="int64")])
@pytest.mark.parametrize("kind", ["perm", "pad"])
@pytest.mark.parametrize("layout", LAYOUT_IDS)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_state_batch_indices(backend, device, layout, kind, index_dtype, rng):
    """Rows of a larger cache picked by index (a permutation with one padding entry, or all padding):
    padding rows give out = 0 and no state row outside the indices changes (bitwise)."""
    args = make_inputs(rng, b=5, channel=LAYOUTS[layout], N=16, indices=kind, index_dtype=index_dtype, device=device)
    check_case(backend, args, tokens=False)


@pytest.mark.parametrize("inter", [pytest.param(False, id="no_inter"), pytest.param(True, id="inter")])
@pytest.mark.parametrize("indices", [pytest.param(None, id="no_indices"), pytest.param("perm", id="indices")])
@pytest.mark.parametrize("k", [pytest.param(k, id=f"k{k}") for k in (1, 3, 8)])
@pytest.mark.parametrize("layout", LAYOUT_IDS)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_tokens(backend, device, layout, k, indices, inter, rng):
    """k tokens in one call, with and without intermediate states and state indices."""
    mamba2 = layout == "mamba2"
    args = make_inputs(rng, channel=LAYOUTS[layout], N=16, k=k, groups=2 if mamba2 else None, tie=mamba2,
                       indices=indices, inter=inter, device=device)
    check_case(backend, args, tokens=True)


@pytest.mark.parametrize("x_dtype,state_dtype", [DTYPES[1], DTYPES[3]])
@pytest.mark.parametrize("N", [pytest.param(n, id=f"n{n}") for n in (64, 301, 512)])
@pytest.mark.parametrize("k", [pytest.param(k, id=f"k{k}") for k in (3, 40)])
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_tokens_long_rows(backend, device, k, N, x_dtype, state_dtype, rng):
    """Rows longer than one warp's access (the CUDA kernel walks them in chunks, and completes the
    outputs of 32 tokens at a time): N = 301 (general kernel), 512 (VEC kernel), k up to 40 > 32."""
    args = make_inputs(rng, b=2, channel=(2, 3), N=N, k=k, groups=1, indices="perm", inter=True,
                       x_dtype=x_dtype, state_dtype=state_dtype, device=device)
    check_case(backend, args, tokens=True)


@pytest.mark.parametrize("x_dtype", [pytest.param(torch.float32, id="x_fp32"), pytest.param(torch.bfloat16, id="x_bf16")])
@pytest.mark.parametrize("layout", LAYOUT_IDS)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_tokens_equals_repeated_one_token_op(backend, device, layout, x_dtype, rng):
    """With an fp32 state, the k-token op gives bit for bit the outputs, final state and intermediate
    states of k calls of the one-token op (the same kernel code, the same operations); k = 1 gives the
    one-token op's result."""
    args = make_inputs(rng, channel=LAYOUTS[layout], N=16, k=4, tie=layout == "mamba2", indices="perm", inter=True,
                       x_dtype=x_dtype, device=device)
    one = {key: v for key, v in args.items() if key != "intermediate_states"}
    one["state"] = args["state"].clone()
    outs = []
    for t in range(4):
        step = {key: (v[:, t] if key in ("x", "dt", "B", "C", "z") else v) for key, v in one.items()}
        outs.append(run_op(backend, step, tokens=False))
    out = run_op(backend, args, tokens=True)
    assert torch.equal(out, torch.stack(outs, dim=1))
    assert torch.equal(args["state"], one["state"])
    # k = 1 against the one-token op.
    args1 = make_inputs(rng, channel=LAYOUTS[layout], N=16, k=1, device=device, x_dtype=x_dtype)
    one1 = {key: (v[:, 0] if key in ("x", "dt", "B", "C", "z") else v) for key, v in args1.items()
            if key != "intermediate_states"}
    one1["state"] = args1["state"].clone()
    out1 = run_op(backend, args1, tokens=True)
    assert torch.equal(out1[:, 0], run_op(backend, one1, tokens=False))
    assert torch.equal(args1["state"], one1["state"])


# ---- layouts: strided, sliced and transposed tensors ----

def _strided(args, *, N):
    """The same values in other layouts: the state a slice of a wider cache (rows not contiguous along n
    for the rest of the cache, which must stay untouched), x/dt/z/B/C and A transposed copies."""
    out = dict(args)
    st = args["state"]
    wide = torch.full(st.shape[:-1] + (N + 3,), 7.0, dtype=st.dtype, device=st.device)
    wide[..., 1:N + 1] = st
    out["state"] = wide[..., 1:N + 1]
    out["_wide"] = wide

    def transposed(t):  # same values, last two axes swapped in memory
        if t is None or t.dim() < 2:
            return t
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)

    for key in ("x", "dt", "z", "B", "C", "A"):
        out[key] = transposed(args[key])
    return out


@pytest.mark.parametrize("layout", LAYOUT_IDS)
@pytest.mark.parametrize("backend,device", BACKENDS)
def test_strided_layouts(backend, device, layout, rng):
    """Non-contiguous views everywhere (the CUDA kernel's general path): same results; the cache around
    the state slice is not touched."""
    channel, N = LAYOUTS[layout], 16
    args = make_inputs(rng, channel=channel, N=N, groups=1, indices="perm", device=device)
    strided = _strided(args, N=N)
    wide = strided.pop("_wide")
    assert not strided["state"].is_contiguous() and not strided["x"].is_contiguous()
    check_case(backend, strided, tokens=False)
    assert (wide[..., 0] == 7).all() and (wide[..., N + 1:] == 7).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_strided_tokens_with_intermediate_states(backend, device, rng):
    """The multi-token op with a sliced state and a sliced intermediate_states buffer."""
    args = make_inputs(rng, channel=(3, 4), N=12, k=3, groups=3, indices="perm", inter=True, device=device)
    strided = _strided(args, N=12)
    strided.pop("_wide")
    wide_inter = torch.full(args["intermediate_states"].shape[:-1] + (20,), float("nan"),
                            dtype=args["intermediate_states"].dtype, device=device)
    strided["intermediate_states"] = wide_inter[..., 4:16]
    check_case(backend, strided, tokens=True)
    assert torch.isnan(wide_inter[..., :4]).all() and torch.isnan(wide_inter[..., 16:]).all()


# ---- numerics corners ----

@pytest.mark.parametrize("backend,device", BACKENDS)
def test_softplus_threshold(backend, device):
    """softplus(dt + dt_bias) is passed through above 20 (log1p(exp(.)) below), as in mamba-ssm."""
    raw = torch.tensor([[-30.0, -2.0, 0.0, 19.5, 20.0, 20.5, 25.0, 80.0]], device=device)
    dim = raw.shape[1]
    state = torch.ones(1, dim, 2, device=device)
    A = torch.full((dim, 2), -0.01, device=device)
    ones = torch.ones(1, 2, device=device)
    out = arkernels.selective_state_update(state, torch.ones(1, dim, device=device), raw, A, ones, ones,
                                           dt_softplus=True, backend=backend)
    dt = torch.where(raw <= 20, torch.log1p(torch.exp(raw.double())), raw.double()).cpu()
    expected_state = torch.exp(-0.01 * dt) + dt  # s = 1 * exp(dt A) + 1 * dt * 1
    torch.testing.assert_close(state.cpu()[..., 0].double(), expected_state, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(out.cpu().double(), 2 * expected_state, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_empty(backend, device, rng):
    """batch 0, k = 0, dim 0: empty outputs, nothing touched; dstate 0: out = D * x * silu(z)."""
    for kwargs in (dict(b=0, channel=(5,), N=16), dict(b=2, channel=(0,), N=16), dict(b=2, channel=(2, 0), N=8)):
        args = make_inputs(rng, device=device, **kwargs)
        before = args["state"].clone()
        out = run_op(backend, args, tokens=False)
        assert out.shape == args["x"].shape and torch.equal(args["state"], before)
    args = make_inputs(rng, channel=(5,), N=16, k=0, inter=True, device=device)
    before = args["state"].clone()
    out = run_op(backend, args, tokens=True)
    assert out.shape == args["x"].shape and torch.equal(args["state"], before)
    args = make_inputs(rng, channel=(2, 3), N=0, device=device)
    out = run_op(backend, args, tokens=False)
    x, z = args["x"].double(), args["z"].double()
    _assert_close(out, args["D"].double() * x * torch.nn.functional.silu(z), REL_TOL[torch.float32], "dstate 0")


@gpu
def test_index_beyond_cache_cuda(rng):
    """On CUDA an index >= Bc cannot be checked without a device sync: that row's outputs are NaN
    and no state row changes (the other rows are computed normally)."""
    args = make_inputs(rng, b=3, channel=(4, 8), N=16, indices="perm", device="cuda")
    args["state_batch_indices"][2] = args["state"].shape[0] + 5
    before = args["state"].clone()
    out = run_op("cuda", args, tokens=False)
    assert torch.isnan(out[2]).all()
    assert (out[1] == 0).all()  # padding
    r0 = int(args["state_batch_indices"][0])
    changed = [r for r in range(before.shape[0]) if not torch.equal(before[r], args["state"][r])]
    assert changed == [r0]


# ---- in place, and the inference-only contract ----

@pytest.mark.parametrize("backend,device", BACKENDS)
def test_state_updated_in_place_through_views(backend, device, rng):
    """state may be a view (a batch slice of a larger cache): the writes land in the cache's storage."""
    args = make_inputs(rng, b=3, channel=(4, 8), N=16, device=device)
    cache = torch.randn((7, 4, 8, 16), generator=rng).to(device)
    cache_before = cache.clone()
    cache[2:5] = args["state"]
    args["state"] = cache[2:5]
    check_case(backend, args, tokens=False)
    assert torch.equal(cache[:2], cache_before[:2]) and torch.equal(cache[5:], cache_before[5:])


@pytest.mark.parametrize("name", ["x", "dt", "A", "B", "C", "D", "z", "dt_bias", "state"])
def test_requires_grad_is_refused(name, rng):
    """No backward: an input that requires grad under grad mode raises (the public op and the torch op),
    instead of returning a result silently cut off from the graph; fine under no_grad."""
    args = make_inputs(rng, channel=(6,), N=8)
    if name == "state":
        args["state"] = args["state"].detach().requires_grad_(True)
    else:
        args[name] = args[name].detach().clone().requires_grad_(True)
    with pytest.raises(ValueError, match=rf"{name}: requires grad.*no backward"):
        arkernels.selective_state_update(**args)
    if name != "state":  # a leaf that requires grad cannot be updated in place by torch itself either
        positional = [args[k] for k in ("state", "x", "dt", "A", "B", "C", "D", "z", "dt_bias")]
        with pytest.raises(ValueError, match=rf"{name} requires grad.*no backward"):
            torch.ops.arkernels.selective_state_update(*positional, True, None)
    with torch.no_grad():
        arkernels.selective_state_update(**args)
    with torch.inference_mode():
        args = make_inputs(rng, channel=(6,), N=8)
        arkernels.selective_state_update(**args)


# ---- torch.library.opcheck and torch.compile ----

@pytest.mark.parametrize("layout", LAYOUT_IDS)
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, layout, rng):
    """Schema (state declared mutated, Tensor(a!)), fake kernel and AOT dispatch of both ops."""
    mamba2 = layout == "mamba2"
    args = make_inputs(rng, channel=LAYOUTS[layout], N=8, groups=2 if mamba2 else None, tie=mamba2,
                       indices="perm", device=device)
    order = ("state", "x", "dt", "A", "B", "C", "D", "z", "dt_bias", "dt_softplus", "state_batch_indices")
    torch.library.opcheck(torch.ops.arkernels.selective_state_update.default, tuple(args[k] for k in order))
    targs = make_inputs(rng, channel=LAYOUTS[layout], N=8, k=3, tie=mamba2, indices="perm", inter=True, device=device)
    targs["intermediate_states"].zero_()  # opcheck compares runs: no NaN in the untouched (padding) rows
    torch.library.opcheck(torch.ops.arkernels.selective_state_update_tokens.default,
                          tuple(targs[k] for k in order + ("intermediate_states",)))


class _DecodeStep(torch.nn.Module):
    """A Mamba-2 mixer's decode step as models write it: dt, A, D broadcast over headdim."""

    def __init__(self, heads, headdim, dstate, backend):
        super().__init__()
        self.A_log = torch.nn.Parameter(torch.rand(heads).log(), requires_grad=False)
        self.D = torch.nn.Parameter(torch.randn(heads), requires_grad=False)
        self.dt_bias = torch.nn.Parameter(torch.randn(heads) * 0.1, requires_grad=False)
        self.headdim, self.dstate, self.backend = headdim, dstate, backend

    def forward(self, state, x, dt, B, C, z):  # x, z (b, h*p); dt (b, h); B, C (b, g, n)
        h, p, n = self.A_log.shape[0], self.headdim, self.dstate
        A = (-torch.exp(self.A_log.float()))[:, None, None].expand(h, p, n)
        out = arkernels.selective_state_update(
            state, x.view(x.shape[0], h, p), dt[..., None].expand(-1, h, p), A, B, C,
            D=self.D[:, None].expand(h, p), z=z.view(z.shape[0], h, p), dt_bias=self.dt_bias[:, None].expand(h, p),
            dt_softplus=True, backend=self.backend)
        return out.reshape(x.shape) * 2.0


@pytest.mark.parametrize("backend,device", [pytest.param("cpu", "cpu", id="cpu"),
                                            pytest.param("cuda", "cuda", id="cuda", marks=gpu)])
def test_torch_compile_fullgraph(backend, device, rng):
    """torch.compile(fullgraph=True) of a decode step: the same outputs and the same in-place state
    update as eager, over two steps."""
    torch._dynamo.reset()
    b, h, p, n, g = 2, 3, 4, 8, 1
    model = _DecodeStep(h, p, n, backend).to(device)
    compiled = torch.compile(model, fullgraph=True)
    state_e = torch.randn((b, h, p, n), generator=rng).to(device)
    state_c = state_e.clone()
    for _ in range(2):
        x, z = (torch.randn((b, h * p), generator=rng).to(device) for _ in range(2))
        dt = torch.randn((b, h), generator=rng).to(device)
        B, C = (torch.randn((b, g, n), generator=rng).to(device) for _ in range(2))
        with torch.no_grad():
            out_e = model(state_e, x, dt, B, C, z)
            out_c = compiled(state_c, x, dt, B, C, z)
        torch.testing.assert_close(out_c, out_e, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(state_c, state_e, rtol=1e-6, atol=1e-6)


def test_python_checks_stay_off_the_eager_success_path(monkeypatch, rng):
    """The native backends' Python checks run only when the op raises (the C++ binding checks every argument):
    a valid call must not reach them (they were half of a decode step's host time), a bad one still gets
    their argument-named message, and so does a bad call while torch.compile traces."""
    import sys

    mod = sys.modules["arkernels.ops.selective_state_update"]
    real = mod._validate
    args = make_inputs(rng, b=2, channel=(6,), N=8)

    def refuse(*a, **k):
        raise AssertionError("the Python checks ran on a valid eager call")

    monkeypatch.setattr(mod, "_validate", refuse)
    with torch.no_grad():
        arkernels.selective_state_update(**args)
    monkeypatch.setattr(mod, "_validate", real)
    bad = dict(args, A=torch.zeros(6, 9))
    with pytest.raises(ValueError, match=r"A: expected shape \(6, 8\), got \(6, 9\)"):
        with torch.no_grad():
            arkernels.selective_state_update(**bad)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a: arkernels.selective_state_update(**a), fullgraph=True)
    with pytest.raises(Exception, match=r"A: expected shape \(6, 8\), got \(6, 9\)"):
        with torch.no_grad():
            compiled(bad)


# ---- against the peer (mamba-ssm's Triton kernel), where it is installed ----

@gpu
@pytest.mark.parametrize("case", ["mamba1", "mamba2_tie", "mamba2_indices"])
def test_matches_mamba_ssm_cuda(case, rng):
    """The peer's selective_state_update on the same inputs (fp32 state, bf16 inputs)."""
    peer, why = peers.mamba_ssm_selective_state_update()
    if peer is None:
        pytest.skip(f"mamba-ssm {why}")
    if case == "mamba1":
        args = make_inputs(rng, b=4, channel=(64,), N=16, x_dtype=torch.bfloat16, device="cuda")
    else:
        args = make_inputs(rng, b=4, channel=(8, 16), N=64, groups=2, tie=True, x_dtype=torch.bfloat16,
                           indices="perm" if case == "mamba2_indices" else None, device="cuda")
        if case == "mamba2_indices":
            args["state_batch_indices"] = args["state_batch_indices"].to(torch.int32)
    theirs = dict(args)
    theirs["state"] = args["state"].clone()
    out_peer = peer(**theirs)
    out = run_op("cuda", args, tokens=False)
    _assert_close(out, out_peer, REL_TOL[torch.bfloat16], "out vs mamba-ssm")
    _assert_close(args["state"], theirs["state"], REL_TOL[torch.float32], "state vs mamba-ssm")


# ---- bad input ----

def _bad(rng, **overrides):
    """Valid Mamba-1 arguments (b 2, dim 6, n 8) with some replaced; "_tokens" selects the k-token op."""
    args = make_inputs(rng, b=2, channel=(6,), N=8)
    args.update(overrides)
    return args


BAD_INPUTS = {
    "state_rank": (lambda r: _bad(r, state=torch.zeros(2, 8)), ValueError, r"state: expected \(batch, dim, dstate\)"),
    "state_integer": (lambda r: _bad(r, state=torch.zeros(2, 6, 8, dtype=torch.int32)), TypeError, r"state.*int32"),
    "state_float64": (lambda r: _bad(r, state=torch.zeros(2, 6, 8, dtype=torch.float64)), TypeError,
                      r"state.*float64"),
    "x_shape": (lambda r: _bad(r, x=torch.zeros(2, 7)), ValueError, r"x: expected shape.*\(6,\).*\(2, 7\)"),
    "x_not_tensor": (lambda r: _bad(r, x=[[0.0] * 6] * 2), TypeError, r"x.*Tensor.*list"),
    "dt_shape": (lambda r: _bad(r, dt=torch.zeros(2, 5)), ValueError, r"dt.*\(2, 6\).*\(2, 5\)"),
    "dt_dtype": (lambda r: _bad(r, dt=torch.zeros(2, 6, dtype=torch.bfloat16)), TypeError, r"dt.*float32.*bfloat16"),
    "A_shape": (lambda r: _bad(r, A=torch.zeros(6, 9)), ValueError, r"A: expected shape \(6, 8\), got \(6, 9\)"),
    "A_dtype": (lambda r: _bad(r, A=torch.zeros(6, 8, dtype=torch.float16)), TypeError, r"A.*float32 or the dtype"),
    "B_dstate": (lambda r: _bad(r, B=torch.zeros(2, 9)), ValueError, r"B: expected shape \(2, 8\)"),
    "B_batch": (lambda r: _bad(r, B=torch.zeros(3, 8)), ValueError, r"B: expected shape \(2, 8\)"),
    "B_groups": (lambda r: _bad(r, B=torch.zeros(2, 4, 8), C=torch.zeros(2, 4, 8)), ValueError,
                 r"B: expected a number of groups dividing dim = 6, got 4"),
    "C_shape": (lambda r: _bad(r, C=torch.zeros(2, 1, 8)), ValueError, r"C.*\(2, 8\).*\(2, 1, 8\)"),
    "C_dtype": (lambda r: _bad(r, C=torch.zeros(2, 8, dtype=torch.float16)), TypeError, r"C.*float16"),
    "D_shape": (lambda r: _bad(r, D=torch.zeros(5)), ValueError, r"D: expected shape \(6,\), got \(5,\)"),
    "D_dtype": (lambda r: _bad(r, D=torch.zeros(6, dtype=torch.float64)), TypeError, r"D.*float64"),
    "z_shape": (lambda r: _bad(r, z=torch.zeros(2, 5)), ValueError, r"z.*\(2, 6\).*\(2, 5\)"),
    "dt_bias_shape": (lambda r: _bad(r, dt_bias=torch.zeros(6, 1)), ValueError, r"dt_bias.*\(6,\).*\(6, 1\)"),
    "dt_softplus_not_bool": (lambda r: _bad(r, dt_softplus=1), TypeError, r"dt_softplus.*bool.*int"),
    "batch_mismatch": (lambda r: _bad(r, state=torch.zeros(3, 6, 8)), ValueError,
                       r"state: expected 2 rows.*without state_batch_indices, got 3"),
    "index_dtype": (lambda r: _bad(r, state_batch_indices=torch.zeros(2, dtype=torch.float32)), TypeError,
                    r"state_batch_indices.*int32, int64.*float32"),
    "index_shape": (lambda r: _bad(r, state_batch_indices=torch.zeros(3, dtype=torch.int64)), ValueError,
                    r"state_batch_indices: expected shape \(2,\), got \(3,\)"),
    "index_beyond_cache": (lambda r: _bad(r, state_batch_indices=torch.tensor([0, 2])), ValueError,
                           r"state_batch_indices: expected values < 2.*got 2 at position 1"),
    "index_repeated": (lambda r: _bad(r, state_batch_indices=torch.tensor([1, 1])), ValueError,
                       r"state_batch_indices: expected distinct.*got 1 more than once"),
    "state_overlapping": (lambda r: _bad(r, state=torch.zeros(1, 6, 8).expand(2, 6, 8)), ValueError,
                          r"state: expected a tensor whose elements do not overlap"),
    "backend_name": (lambda r: _bad(r, backend="cudnn"), ValueError, r"backend.*'cudnn'"),
    "backend_triton": (lambda r: _bad(r, backend="triton"), ValueError, r"backend: 'triton'.*no Triton kernel"),
    "backend_cuda_on_cpu_tensors": (lambda r: _bad(r, backend="cuda"), ValueError, r"backend.*'cuda'.*cpu"),
    "tokens_x_rank": (lambda r: _bad(r, _tokens=True), ValueError, r"x: expected shape \(batch, tokens, dim\)"),
    "tokens_inter_shape": (lambda r: dict(make_inputs(r, b=2, channel=(6,), N=8, k=3),
                                          intermediate_states=torch.zeros(2, 2, 6, 8), _tokens=True),
                           ValueError, r"intermediate_states: expected shape \(2, 3, 6, 8\), got \(2, 2, 6, 8\)"),
    "tokens_inter_dtype": (lambda r: dict(make_inputs(r, b=2, channel=(6,), N=8, k=3),
                                          intermediate_states=torch.zeros(2, 3, 6, 8, dtype=torch.bfloat16),
                                          _tokens=True),
                           TypeError, r"intermediate_states.*float32.*bfloat16"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises(case, rng):
    make, exc, pattern = BAD_INPUTS[case]
    args = make(rng)
    tokens = args.pop("_tokens", False)
    fn = arkernels.selective_state_update_tokens if tokens else arkernels.selective_state_update
    state_before = args["state"].clone() if isinstance(args.get("state"), torch.Tensor) else None
    with pytest.raises(exc, match=pattern):
        with torch.no_grad():
            fn(**args)
    if state_before is not None and state_before.dtype.is_floating_point:
        assert torch.equal(args["state"], state_before), "a rejected call changed the state"


# The torch ops validate too (they are public through torch.ops): TORCH_CHECK_VALUE/TYPE map to
# ValueError/TypeError, and nothing runs on a rejected call.
BAD_OP_INPUTS = {
    "x_shape": (dict(x=torch.zeros(2, 7)), ValueError, r"x: expected shape \[-1, 6\].*got \[2, 7\]"),
    "B_groups": (dict(B=torch.zeros(2, 4, 8), C=torch.zeros(2, 4, 8)), ValueError, r"B: expected a number of groups"),
    "A_shape": (dict(A=torch.zeros(6, 9)), ValueError, r"A: expected shape \[6, 8\], got \[6, 9\]"),
    "dt_dtype": (dict(dt=torch.zeros(2, 6, dtype=torch.half)), TypeError, r"dt: expected the dtype of x"),
    "index_dtype": (dict(state_batch_indices=torch.zeros(2)), TypeError, r"state_batch_indices: expected dtype int32"),
    "index_beyond_cache": (dict(state_batch_indices=torch.tensor([0, 5])), RuntimeError,
                           r"state_batch_indices: expected values < state_batch = 2"),
    "batch_mismatch": (dict(state=torch.zeros(3, 6, 8)), ValueError, r"state: expected 2 rows"),
    "state_overlapping": (dict(state=torch.zeros(1, 6, 8).expand(2, 6, 8)), ValueError, r"state: expected a tensor whose"),
}


@pytest.mark.parametrize("case", list(BAD_OP_INPUTS))
def test_torch_op_bad_input_raises(case, rng):
    overrides, exc, pattern = BAD_OP_INPUTS[case]
    args = _bad(rng, **overrides)
    order = ("state", "x", "dt", "A", "B", "C", "D", "z", "dt_bias", "dt_softplus", "state_batch_indices")
    before = args["state"].clone()
    with pytest.raises(exc, match=pattern):
        torch.ops.arkernels.selective_state_update(*(args[k] for k in order))
    assert torch.equal(args["state"], before)


@gpu
@pytest.mark.parametrize("name", ["x", "B", "A", "D", "state_batch_indices", "intermediate_states"])
def test_bad_devices_raise_cuda(name, rng):
    args = make_inputs(rng, b=2, channel=(6,), N=8, k=2, indices="perm", inter=True, device="cuda")
    args[name] = args[name].cpu()
    with pytest.raises(ValueError, match=rf"{name}: expected a tensor on cuda.*cpu"):
        run_op("auto", args, tokens=True)
    args = make_inputs(rng, b=2, channel=(6,), N=8, device="cuda")
    with pytest.raises(ValueError, match=r"backend.*'cpu'.*cuda"):
        run_op("cpu", args, tokens=False)


# ---- GPU: shapes of the models, and offsets past 2^31 ----

@gpu
@pytest.mark.parametrize("k", [pytest.param(None, id="one_token"), pytest.param(4, id="k4")])
@pytest.mark.parametrize("shape", ["mamba1_b64_d4096_n16", "mamba2_b64_h64_p64_n128"])
def test_benchmark_shapes_cuda(shape, k, rng):
    """The benchmark's headline shapes (fp32 state; bf16 inputs for Mamba-2), checked on a few batch rows
    against float64."""
    if shape.startswith("mamba1"):
        args = make_inputs(rng, b=64, channel=(4096,), N=16, k=k, indices="perm", device="cuda")
    else:
        args = make_inputs(rng, b=64, channel=(64, 64), N=128, k=k, tie=True, groups=1, x_dtype=torch.bfloat16,
                           indices="perm", device="cuda")
    check_case("cuda", args, tokens=k is not None)


@gpu
@slow
def test_offsets_beyond_2pow31_cuda(seed):
    """A fp16 state cache of more than 2^31 elements; the rows used sit past element 2^31 (an int32
    offset there wraps and writes elsewhere)."""
    Bc, dim, N = 2050, 4096, 256  # 2,149,580,800 elements, 4.3 GB
    need = Bc * dim * N * 2 + (1 << 30)
    free, _ = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    assert (Bc - 1) * dim * N > 2**31
    gen = inputs.generator(seed, device="cuda")
    state = inputs.normal_on_device((Bc, dim, N), dtype=torch.float16, device="cuda", generator=gen)
    rng = inputs.generator(seed)
    small = make_inputs(rng, b=3, channel=(dim,), N=N, x_dtype=torch.float16, state_dtype=torch.float16,
                        indices="perm", device="cuda")
    idx = torch.tensor([Bc - 1, -1, Bc - 2], device="cuda")
    rows = [Bc - 1, Bc - 2]
    before = state[[0, 1, Bc - 3]].clone()
    ref_args = dict(small, state=state[rows].clone(), state_batch_indices=torch.tensor([0, -1, 1], device="cuda"))
    ref_out, ref_state, _ = oracle(ref_args, tokens=False)
    out = run_op("cuda", dict(small, state=state, state_batch_indices=idx), tokens=False)
    _assert_close(out, ref_out, REL_TOL[torch.float16], "out")
    _assert_close(state[rows], ref_state, REL_TOL[torch.float16], "state rows past 2^31")
    assert torch.equal(state[[0, 1, Bc - 3]], before)
    del state
    torch.cuda.empty_cache()
