"""Inputs and the float64 comparison of ssd_chunk_scan, shared by its tests (CPU, GPU, Triton interpreter).

A :class:`Case` names one input set; :func:`make_leaves` draws it (fresh random values from a generator),
:func:`check` runs a backend forward and backward and compares the output, the final states and every
gradient with the float64 reference (sequential for small inputs, the chunked form otherwise; the
tests check that the two agree).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from arkernels.reference.ssd_chunk_scan import ssd_chunk_scan_chunked_ref, ssd_chunk_scan_ref
from arkernels.testing import inputs
from arkernels.testing.numerics import REL_TOL, assert_close_to_reference, relative_error

DIFF_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")
# Max-abs bound, as a multiple of (relative bound x largest reference magnitude): one wrong element
# in a large tensor shows even where the norm-relative error dilutes it.
MAX_ABS_FACTOR = 4.0
# Past this many tokens or (token x state) elements the float64 oracle is the chunked reference (the
# sequential one runs ~10 small torch ops per token: about a second per thousand tokens).
SEQUENTIAL_ORACLE_MAX_L = 512
SEQUENTIAL_ORACLE_MAX = 1 << 21


@dataclass
class Case:
    b: int = 2
    l: int = 37
    h: int = 4
    p: int = 32
    g: int = 2
    n: int = 16
    dtype: torch.dtype = torch.float32
    z: bool = False
    D: str | None = None            # None, "h" (one per head) or "hp" (h, p)
    dt_bias: bool = False
    softplus: bool = False
    dt_limit: tuple = (0.0, float("inf"))
    init: bool = False
    seq_idx: bool = False           # several packed sequences per row
    seqlens: tuple | None = None    # cu_seqlens from these lengths (b must be 1)
    init_per_seq: bool = True       # with seqlens: (num_seqs, h, p, n) initial states, else (1, h, p, n)
    chunk_size: int = 64
    extra: dict = field(default_factory=dict)

    @property
    def kwargs(self) -> dict:
        return {"dt_softplus": self.softplus, "dt_limit": self.dt_limit}


def _seq_idx(b: int, l: int, rng) -> torch.Tensor:
    """Several sequences per row, boundaries drawn at random (some of length 1), ids non-decreasing."""
    rows = []
    for _ in range(b):
        cuts = torch.randint(0, max(l, 1), (max(1, l // 50) + 2,), generator=rng).tolist() + [1, 2, 3]
        starts = torch.zeros(l, dtype=torch.int32)
        for c in cuts:
            if 0 < c < l:
                starts[c] = 1
        rows.append(torch.cumsum(starts, 0).to(torch.int32) + 3)  # ids need not start at 0
    return torch.stack(rows) if rows else torch.zeros((0, l), dtype=torch.int32)


def make_leaves(case: Case, rng: torch.Generator, device="cpu"):
    """(leaves: dict name -> tensor or None for DIFF_NAMES, seq_idx, cu_seqlens). Decays mix short and
    long memories (A in -[0.05, 3]) so that states cross many chunk boundaries."""
    b, l, h, p, g, n, dt_ = case.b, case.l, case.h, case.p, case.g, case.n, case.dtype
    leaves = {
        "x": inputs.normal((b, l, h, p), generator=rng, dtype=dt_, device=device),
        "B": inputs.normal((b, l, g, n), generator=rng, dtype=dt_, device=device),
        "C": inputs.normal((b, l, g, n), generator=rng, dtype=dt_, device=device),
        "A": -inputs.uniform((h,), 0.05, 3.0, generator=rng, device=device),
    }
    if case.softplus:  # raw dt around -3: softplus gives dt in ~[0.01, 0.5]
        leaves["dt"] = inputs.normal((b, l, h), generator=rng, dtype=dt_, device=device, std=1.0) - 3.0
        leaves["dt"] = leaves["dt"].to(dt_)
    else:
        leaves["dt"] = inputs.uniform((b, l, h), 0.005, 0.3, generator=rng, dtype=dt_, device=device)
    leaves["D"] = None
    if case.D == "h":
        leaves["D"] = inputs.normal((h,), generator=rng, device=device)
    elif case.D == "hp":
        leaves["D"] = inputs.normal((h, p), generator=rng, device=device)
    leaves["z"] = inputs.normal((b, l, h, p), generator=rng, dtype=dt_, device=device) if case.z else None
    leaves["dt_bias"] = inputs.normal((h,), generator=rng, device=device, std=0.5) if case.dt_bias else None
    seq_idx = _seq_idx(b, l, rng).to(device) if case.seq_idx else None
    cu = None
    states = b
    if case.seqlens is not None:
        assert b == 1 and sum(case.seqlens) == l
        cu = torch.tensor([0] + list(case.seqlens), dtype=torch.int64).cumsum(0).to(torch.int32).to(device)
        states = len(case.seqlens) if case.init_per_seq else 1
    leaves["initial_states"] = inputs.normal((states, h, p, n), generator=rng, device=device) if case.init else None
    return leaves, seq_idx, cu


def _weights(out_shape, final_shape, rng, device):
    """Random float64 weights of the loss <out, w_out> + <final, w_final> (never all ones: a sum
    would hide a permutation of the gradient)."""
    return (inputs.normal(out_shape, generator=rng, dtype=torch.float64, device=device),
            inputs.normal(final_shape, generator=rng, dtype=torch.float64, device=device))


def forward_backward(fn, leaves, seq_idx, cu, case, w_out, w_final, *, dtype=None, **kwargs):
    """(out, final, grads dict) of fn on fresh copies of the leaves (cast to dtype when given, else their
    own dtype), backpropagating <out, w_out> + <final, w_final>."""
    fresh = {}
    for k, v in leaves.items():
        if v is None:
            fresh[k] = None
            continue
        fresh[k] = v.detach().to(dtype if dtype is not None else v.dtype).clone().requires_grad_(True)
    args = [fresh[k] for k in ("x", "dt", "A", "B", "C")]
    opt = {k: fresh[k] for k in ("D", "z", "dt_bias", "initial_states")}
    out, final = fn(*args, D=opt["D"], z=opt["z"], dt_bias=opt["dt_bias"], initial_states=opt["initial_states"],
                    seq_idx=seq_idx, cu_seqlens=cu, return_final_states=True, **case.kwargs, **kwargs)
    loss = (out.to(torch.float64) * w_out).sum()
    if w_final is not None:
        loss = loss + (final.to(torch.float64) * w_final).sum()
    diff = [v for v in fresh.values() if v is not None]
    grads = torch.autograd.grad(loss, diff, allow_unused=True)
    gdict, i = {}, 0
    for k, v in fresh.items():
        if v is None:
            gdict[k] = None
        else:
            gdict[k] = grads[i] if grads[i] is not None else torch.zeros_like(v)
            i += 1
    return out.detach(), final.detach(), gdict


def oracle(case: Case):
    """The float64 reference used for `case`: sequential when small, chunked otherwise."""
    if case.l <= SEQUENTIAL_ORACLE_MAX_L and case.b * case.l * case.h * case.p * case.n <= SEQUENTIAL_ORACLE_MAX:
        return ssd_chunk_scan_ref
    return lambda *a, **k: ssd_chunk_scan_chunked_ref(*a, chunk_size=64, **k)


def _low_precision_reference(*args, **kwargs):
    return ssd_chunk_scan_chunked_ref(*args, chunk_size=64, **kwargs)


def assert_close(out, ref, rel_tol, name):
    """Norm-relative bound plus a max-abs bound scaled by the reference's largest magnitude; a reference
    that is exactly zero (e.g. dA with one token and no initial state) takes rel_tol as an absolute bound."""
    scale = ref.detach().abs().max().item() if ref.numel() else 0.0
    max_abs = MAX_ABS_FACTOR * rel_tol * scale if scale > 0 else rel_tol
    assert_close_to_reference(out, ref, rel_tol=rel_tol, max_abs=max_abs, name=name)


def check(fn, case: Case, rng: torch.Generator, device="cpu", *, leaves=None, use_final=True, ref_device="cpu",
          **kwargs):
    """The whole contract for one case: output, final states and every gradient of `fn` (the public op
    with its backend bound, or a reference) against float64. Returns (out, final)."""
    if leaves is None:
        leaves, seq_idx, cu = make_leaves(case, rng, device)
    else:
        leaves, seq_idx, cu = leaves
    b, l, h, p, n = case.b, case.l, case.h, case.p, case.n
    ns = cu.numel() - 1 if cu is not None else b
    w_out, w_final = _weights((b, l, h, p), (ns, h, p, n), rng, device)
    if not use_final:
        w_final = None
    out, final, grads = forward_backward(fn, leaves, seq_idx, cu, case, w_out, w_final, **kwargs)

    move = {k: (v.to(ref_device) if v is not None else None) for k, v in leaves.items()}
    sq = seq_idx.to(ref_device) if seq_idx is not None else None
    cr = cu.to(ref_device) if cu is not None else None
    wo, wf = w_out.to(ref_device), (w_final.to(ref_device) if w_final is not None else None)
    ref_out, ref_final, ref_grads = forward_backward(oracle(case), move, sq, cr, case, wo, wf, dtype=torch.float64)

    assert out.shape == (b, l, h, p) and out.dtype == case.dtype and out.device.type == torch.device(device).type
    assert final.shape == (ns, h, p, n) and final.dtype == torch.float32
    tol = REL_TOL[case.dtype]
    assert_close(out, ref_out, tol, "out")
    assert_close(final, ref_final, tol, "final states")
    # Gradients may be as far from float64 as twice the reference run in the inputs' dtype (fp32
    # compute, rounded inputs and outputs) is, gradient by gradient (sums over long axes, e.g. dA).
    _, _, low = forward_backward(_low_precision_reference, move, sq, cr, case, wo, wf)
    for name in DIFF_NAMES:
        leaf, g, r = leaves[name], grads[name], ref_grads[name]
        if leaf is None:
            assert g is None
            continue
        assert g.dtype == leaf.dtype and g.shape == leaf.shape, f"grad of {name}: {g.dtype} {tuple(g.shape)}"
        bound = max(tol, 2 * relative_error(low[name], r))
        assert_close(g, r, bound, f"grad of {name}")
    return out, final
