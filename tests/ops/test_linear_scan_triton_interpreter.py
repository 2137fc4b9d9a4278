"""The Triton kernels of linear_scan on the CPU, through the Triton interpreter (CI has no GPU).

Run separately, with the variable set before triton is imported (scripts/run_tests.sh):
    TRITON_INTERPRET=1 python -m pytest tests/ops/test_linear_scan_triton_interpreter.py
Small sizes only: the interpreter runs every program in numpy. Same contract as test_linear_scan.py:
forward and backward against float64, outputs NaN-poisoned before the kernels run.
"""
from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET", "0") != "1":
    pytest.skip("Triton interpreter tests: run with TRITON_INTERPRET=1 (set before triton is imported)",
                allow_module_level=True)
if torch.cuda.is_available():
    pytest.skip("a GPU is present: the triton backend is tested on it (test_linear_scan.py -k triton)",
                allow_module_level=True)
pytest.importorskip("triton")

import arkernels  # noqa: E402
from arkernels import _outputs  # noqa: E402
from arkernels.reference import linear_scan_ref  # noqa: E402
from arkernels.testing import inputs  # noqa: E402
from arkernels.testing.numerics import REL_TOL, assert_close_to_reference, relative_error  # noqa: E402

BACKEND = "triton"
REVERSE = [pytest.param(False, id="forward"), pytest.param(True, id="reverse")]
WITH_H0 = [pytest.param(False, id="no_h0"), pytest.param(True, id="h0")]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]
MAX_ABS_FACTOR = 4.0


@pytest.fixture(autouse=True)
def _poisoned_outputs():
    with _outputs.poisoned_outputs():
        yield


def _identity(g, t, h):
    return g, t, h


def _forward_backward(fn, leaves, w_out, w_final, *, view=_identity, dtype=None, **kwargs):
    fresh = [None if x is None else x.detach().to(dtype or x.dtype).clone().requires_grad_(True) for x in leaves]
    out, final = fn(*view(*fresh), return_final_state=True, **kwargs)
    ((out.double() * w_out).sum() + (final.double() * w_final).sum()).backward()
    grads = [None if x is None else (x.grad if x.grad is not None else torch.zeros_like(x)) for x in fresh]
    return out.detach(), final.detach(), grads


def _assert_close(out, ref, rel_tol, name):
    scale = ref.detach().abs().max().item() if ref.numel() else 0.0
    assert_close_to_reference(out, ref, rel_tol=rel_tol, max_abs=MAX_ABS_FACTOR * rel_tol * scale + 1e-30, name=name)


def check_triton(leaves, rng, *, reverse, view=_identity):
    """out, final state and gradients of gates, tokens, initial_state against float64."""
    dtype = leaves[0].dtype
    gates, _, _ = view(*leaves)
    w_out = inputs.normal(gates.shape, generator=rng, dtype=torch.float64)
    w_final = inputs.normal(gates.shape[:-1], generator=rng, dtype=torch.float64)
    out, final, grads = _forward_backward(arkernels.linear_scan, leaves, w_out, w_final, view=view,
                                          reverse=reverse, backend=BACKEND)
    ref_out, ref_final, ref_grads = _forward_backward(linear_scan_ref, leaves, w_out, w_final, view=view,
                                                      dtype=torch.float64, reverse=reverse)
    assert out.shape == gates.shape and out.dtype == dtype
    assert final.shape == gates.shape[:-1] and final.dtype == torch.float32
    _assert_close(out, ref_out, REL_TOL[dtype], "out")
    _assert_close(final, ref_final, REL_TOL[torch.float32], "final state")
    tol = REL_TOL[dtype]
    grad_tols = [tol] * 3
    if dtype != torch.float32:  # no worse than 2x the reference run in this dtype, gradient by gradient
        _, _, low = _forward_backward(linear_scan_ref, leaves, w_out, w_final, view=view, reverse=reverse)
        grad_tols = [tol if g is None else max(tol, 2 * relative_error(g, r)) for g, r in zip(low, ref_grads)]
    for name, leaf, g, r, grad_tol in zip(("gates", "tokens", "initial_state"), leaves, grads, ref_grads, grad_tols):
        if r is not None:
            assert g.dtype == leaf.dtype and g.shape == leaf.shape
            _assert_close(g, r, grad_tol, f"grad of {name}")


def _leaves(rng, shapes, dtype, with_h0=True):
    g_shape, t_shape, h_shape = shapes
    return (inputs.uniform(g_shape, 0.5, 1.0, generator=rng, dtype=dtype),
            inputs.normal(t_shape, generator=rng, dtype=dtype),
            inputs.normal(h_shape, generator=rng) if with_h0 else None)


@pytest.mark.parametrize("with_h0", WITH_H0)
@pytest.mark.parametrize("reverse", REVERSE)
@pytest.mark.parametrize("T", [pytest.param(t, id=f"T{t}") for t in (1, 7, 100, 1000)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_interpreted_matches_reference(dtype, T, reverse, with_h0, rng):
    # 3 rows x 2 batches: more rows than one program holds for short T (BLOCK_R > 1), and a partial
    # last block of rows.
    shape = (2, 3, T) if T <= 100 else (3, T)
    check_triton(_leaves(rng, [shape, shape, shape[:-1]], dtype, with_h0), rng, reverse=reverse)


LAYOUTS = {
    # A window of a wider tensor: row stride T + 5, unit time stride (read in place).
    "time_window": (lambda T: [(3, T + 5), (3, T + 4), (6,)],
                    lambda g, t, h: (g[:, 2:-3], t[:, 4:], h[::2])),
    # (T, rows) transposed to (rows, T): time stride != 1 (copied by the op).
    "transposed": (lambda T: [(T, 3), (T, 3), (3,)], lambda g, t, h: (g.t(), t.t(), h)),
    # One row of gates broadcast over the rows: row stride 0.
    "expanded_gates": (lambda T: [(1, T), (4, T), (4,)], lambda g, t, h: (g.expand(4, -1), t, h)),
    "rank1": (lambda T: [(T,), (T,), ()], _identity),
}


@pytest.mark.parametrize("reverse", REVERSE)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_triton_interpreted_layouts(layout, dtype, reverse, rng):
    shapes, view = LAYOUTS[layout]
    leaves = _leaves(rng, shapes(37), dtype)
    if layout != "rank1":
        assert not view(*leaves)[0].is_contiguous()
    check_triton(leaves, rng, reverse=reverse, view=view)


@pytest.mark.parametrize("shape", [pytest.param((0, 7), id="rows0"), pytest.param((3, 0), id="T0")])
def test_triton_interpreted_empty(shape, rng):
    leaves = _leaves(rng, [shape, shape, shape[:-1]], torch.float32)
    check_triton(leaves, rng, reverse=False)
    if shape[-1] == 0:
        _, final = arkernels.linear_scan(*leaves, return_final_state=True, backend=BACKEND)
        torch.testing.assert_close(final, leaves[2], rtol=0, atol=0)


# No opcheck here: under TRITON_INTERPRET=1, torch.library.wrap_triton returns the interpreted kernel
# unchanged (torch/_library/triton.py), so a triton_op cannot be traced with fake tensors in the
# interpreter. opcheck of arkernels::linear_scan_triton runs on the GPU (test_linear_scan.py).
