"""The Triton kernels of ssd_chunk_scan on the CPU, through the Triton interpreter (CI has no GPU).

Run separately, with the variable set before triton is imported (scripts/run_tests.sh):
    TRITON_INTERPRET=1 python -m pytest tests/ops/test_ssd_chunk_scan_triton_interpreter.py
Tiny sizes only (the interpreter runs every program in numpy), but every feature: partial chunks and
chunk crossings (the kernels' chunk is 64 tokens), seq_idx, cu_seqlens with sequences of length 0
and 1, z, D, dt processing, initial and final states, groups, odd p and n. Same contract as
test_ssd_chunk_scan.py: forward and every gradient against float64, outputs NaN-poisoned.
"""
from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET", "0") != "1":
    pytest.skip("Triton interpreter tests: run with TRITON_INTERPRET=1 (set before triton is imported)",
                allow_module_level=True)
if torch.cuda.is_available():
    pytest.skip("a GPU is present: the triton backend is tested on it (test_ssd_chunk_scan.py -k triton)",
                allow_module_level=True)
pytest.importorskip("triton")

import arkernels  # noqa: E402
from arkernels import _outputs  # noqa: E402
from arkernels.testing.ssd_chunk_scan import Case, check, make_leaves  # noqa: E402

FP32, BF16, FP16 = torch.float32, torch.bfloat16, torch.float16
# The kernels address tiles with tl.make_block_ptr, which Triton 3.8 marks deprecated (see the kernel file).
pytestmark = pytest.mark.filterwarnings("ignore:tl.make_block_ptr is deprecated")


@pytest.fixture(autouse=True)
def _poisoned_outputs():
    with _outputs.poisoned_outputs():
        yield


def _triton(*args, **kwargs):
    return arkernels.ssd_chunk_scan(*args, backend="triton", **kwargs)


FULL = dict(z=True, D="hp", dt_bias=True, softplus=True, init=True)
CASES = {
    # One token; a partial chunk; two chunks, the second partial (64 + 6).
    "l1": Case(b=2, l=1, h=2, p=16, g=1, n=16, **FULL),
    "l7_plain": Case(b=2, l=7, h=2, p=16, g=2, n=16),
    "l70_full": Case(b=2, l=70, h=4, p=16, g=2, n=16, **FULL),
    "l70_full_bf16": Case(b=2, l=70, h=4, p=16, g=2, n=16, dtype=BF16, **FULL),
    "l70_full_fp16": Case(b=1, l=70, h=2, p=32, g=1, n=32, dtype=FP16, **FULL),
    # Three chunks; odd head count, one group (heads split over programs); D per head.
    "l150_h3": Case(b=1, l=150, h=3, p=16, g=1, n=16, z=True, D="h", softplus=True, init=True),
    # p and n not multiples of 16 (masked tiles), p wider than one tile (two p blocks).
    "odd_pn": Case(b=1, l=40, h=2, p=20, g=1, n=8, D="hp", init=True),
    "p80": Case(b=1, l=20, h=2, p=80, g=2, n=16, z=True, init=True),
    # Clamp active on both sides: gradient masks.
    "dt_limit": Case(b=1, l=70, h=2, p=16, g=1, n=16, dt_bias=True, softplus=True, dt_limit=(0.03, 0.1)),
    "seq_idx": Case(b=2, l=130, h=2, p=16, g=1, n=16, z=True, softplus=True, init=True, seq_idx=True),
    "seq_idx_bf16": Case(b=2, l=70, h=2, p=16, g=2, n=16, dtype=BF16, softplus=True, init=True, seq_idx=True),
    # Sequences of length 0 and 1, one crossing the kernel chunk, per-sequence initial states.
    "varlen": Case(b=1, l=100, h=2, p=16, g=1, n=16, z=True, D="h", softplus=True, init=True,
                   seqlens=(1, 0, 70, 1, 28)),
    "varlen_first_init": Case(b=1, l=30, h=2, p=16, g=1, n=16, init=True, init_per_seq=False, seqlens=(10, 1, 19)),
    "varlen_bf16": Case(b=1, l=75, h=2, p=16, g=1, n=16, dtype=BF16, softplus=True, init=True, seqlens=(5, 69, 1)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_triton_interpreted_matches_reference(name, rng):
    check(_triton, CASES[name], rng)


@pytest.mark.parametrize("used", ["out_only", "final_only"])
def test_triton_interpreted_one_output(used, rng):
    case = Case(b=1, l=70, h=2, p=16, g=1, n=16, z=True, softplus=True, init=True)
    if used == "out_only":
        check(_triton, case, rng, use_final=False)
    else:
        # Only the final state reaches the loss: the output's gradient arrives as None.
        leaves, _, _ = make_leaves(case, rng)
        xs = {k: (v.clone().requires_grad_(True) if v is not None else None) for k, v in leaves.items()}
        _, final = _triton(xs["x"], xs["dt"], xs["A"], xs["B"], xs["C"], z=xs["z"], initial_states=xs["initial_states"],
                           dt_softplus=True, return_final_states=True)
        final.sum().backward()
        ref = {k: (v.clone().double().requires_grad_(True) if v is not None else None) for k, v in leaves.items()}
        from arkernels.reference import ssd_chunk_scan_ref
        _, rf = ssd_chunk_scan_ref(ref["x"], ref["dt"], ref["A"], ref["B"], ref["C"], z=ref["z"],
                                   initial_states=ref["initial_states"], dt_softplus=True, return_final_states=True)
        rf.sum().backward()
        from arkernels.testing.ssd_chunk_scan import assert_close
        for k in ("x", "dt", "A", "B", "initial_states"):
            assert_close(xs[k].grad, ref[k].grad, 1e-5, f"grad of {k}")
        assert xs["C"].grad is None or not xs["C"].grad.any()  # C does not reach the final state


def test_triton_interpreted_strided_inputs(rng):
    """x, B, C, z as slices of one fused projection (the Mamba-2 layout), dt transposed: read in place."""
    b, l, h, p, g, n = 1, 70, 2, 16, 1, 16
    width = 2 * h * p + 2 * g * n
    fused = torch.randn(b, l, width, generator=rng)
    x = fused[..., :h * p].unflatten(-1, (h, p))
    z = fused[..., h * p:2 * h * p].unflatten(-1, (h, p))
    B = fused[..., 2 * h * p:2 * h * p + g * n].unflatten(-1, (g, n))
    C = fused[..., 2 * h * p + g * n:].unflatten(-1, (g, n))
    dt = (torch.rand(b, h, l, generator=rng) * 0.2 + 0.01).transpose(1, 2)
    A = -torch.rand(h, generator=rng) * 2 - 0.1
    assert not x.is_contiguous() and not B.is_contiguous() and not dt.is_contiguous()
    leaves = ({"x": x, "dt": dt, "A": A, "B": B, "C": C, "D": None, "z": z, "dt_bias": None, "initial_states": None},
              None, None)
    check(_triton, Case(b=b, l=l, h=h, p=p, g=g, n=n, z=True), rng, leaves=leaves)


@pytest.mark.parametrize("shape", [pytest.param((2, 0), id="l0"), pytest.param((0, 5), id="b0")])
def test_triton_interpreted_empty(shape, rng):
    b, l = shape
    case = Case(b=b, l=l, h=2, p=16, g=1, n=16, init=True)
    out, final = check(_triton, case, rng)
    assert out.shape == (b, l, 2, 16) and final.shape == (b, 2, 16, 16)


def test_triton_interpreted_varlen_empty_sequences(rng):
    """cu_seqlens [0, 0, 0]: every chunk-table entry is padding; final states = initial states."""
    case = Case(b=1, l=0, h=2, p=16, g=1, n=16, init=True, seqlens=(0, 0))
    _, final = check(_triton, case, rng)
    assert final.shape == (2, 2, 16, 16)


# No opcheck here: under TRITON_INTERPRET=1, torch.library.wrap_triton returns the interpreted kernel
# unchanged, so a triton_op cannot be traced with fake tensors in the interpreter. opcheck of
# arkernels::ssd_chunk_scan_triton runs on the GPU (test_ssd_chunk_scan.py).
