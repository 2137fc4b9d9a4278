"""The Triton kernels of block_sparse_attention on the CPU, through the Triton interpreter (CI has no GPU).

Run separately, with the variable set before triton is imported (scripts/run_tests.sh):
    TRITON_INTERPRET=1 python -m pytest tests/ops/test_block_sparse_attention_triton_interpreter.py
Tiny sizes only (the interpreter runs every program in numpy; its layout tiles are 32 x 32, each kernel
cutting them in 16 x 16 slices, so a few hundred tokens already cross many tiles of every kind), but every feature: each mask kind (FULL, RULE with
window / groups / documents, BITS), edge tiles (L, S not multiples of the tiles), L != S, L = 1, empty
rows and an empty mask, GQA, head dims 16, 40, 64, 128, 256, fp32 and bf16, strided k / v, the lse
output and its gradient. Same contract as test_block_sparse_attention.py (whose `check` runs here):
forward and every gradient against float64, outputs NaN-poisoned.
"""
from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET", "0") != "1":
    pytest.skip("Triton interpreter tests: run with TRITON_INTERPRET=1 (set before triton is imported)",
                allow_module_level=True)
if torch.cuda.is_available():
    pytest.skip("a GPU is present: the triton backend is tested on it (test_block_sparse_attention.py)",
                allow_module_level=True)
pytest.importorskip("triton")

import arkernels  # noqa: E402
from arkernels import _outputs  # noqa: E402
from arkernels.ops.block_sparse_attention import tiling  # noqa: E402
from test_block_sparse_attention import check, check_layout_at_another_tiling_raises, make_mask, run_empty  # noqa: E402,E501

FP32, BF16 = torch.float32, torch.bfloat16


@pytest.fixture(autouse=True)
def _poisoned_outputs():
    with _outputs.poisoned_outputs():
        yield


CASES = {
    # name: (mask, B, Hq, Hkv, L, S, D, dtype)
    "causal": ("causal", 2, 2, 2, 100, 100, 16, FP32),
    "causal_gqa_bf16_d64": ("causal", 1, 4, 2, 70, 70, 64, BF16),
    "sliding_window": ("sliding_window", 1, 2, 1, 130, 130, 16, FP32),
    "block_causal_var": ("block_causal_var", 1, 2, 2, 155, 155, 16, FP32),
    "block_causal_var_bf16_d64": ("block_causal_var", 1, 2, 1, 155, 155, 64, BF16),
    "scam_gqa": ("scam", 1, 4, 2, 120, 120, 32, FP32),
    "document": ("document", 1, 2, 2, 100, 100, 16, FP32),
    "tree_prefix": ("tree", 2, 4, 2, 23, 63, 16, FP32),
    "tree_prefix_bf16_d64": ("tree", 1, 2, 1, 23, 63, 64, BF16),
    "from_dense": ("from_dense", 1, 2, 1, 50, 83, 16, FP32),
    "from_dense_bf16_d40": ("from_dense", 1, 2, 2, 50, 83, 40, BF16),
    "l1": ("all", 2, 4, 2, 1, 77, 64, FP32),
    "empty_mask": ("none", 1, 2, 1, 40, 30, 16, FP32),
    "d128": ("causal", 1, 2, 1, 40, 40, 128, FP32),
    "d256_bf16": ("sliding_window", 1, 2, 1, 40, 40, 256, BF16),
    "far_levels_window": ("far_levels_window", 1, 2, 1, 90, 90, 16, FP32),
}


@pytest.mark.parametrize("name", list(CASES))
def test_triton_interpreted_matches_reference(name, rng):
    mask, B, Hq, Hkv, L, S, D, dtype = CASES[name]
    check("triton", mask, B=B, Hq=Hq, Hkv=Hkv, L=L, S=S, D=D, dtype=dtype, rng=rng)


def _cpu_config(**changes):
    from arkernels.triton_kernels import block_sparse_attention as tk

    return dict(tk.config(16, FP32, "cpu"), **changes)


@pytest.mark.parametrize("mask", ["from_dense", "scam", "sliding_window"])
def test_triton_interpreted_other_tiling(mask, monkeypatch, rng):
    """Tiles 16 x 64 (two bitmap words per row), each kernel cutting them differently: forward 16 rows x
    32-key steps, dK/dV 32 keys x 16-row steps, dQ 16 rows x 16-key steps; the layout is built at the tiling
    config() gives."""
    from arkernels.triton_kernels import block_sparse_attention as tk

    cfg = _cpu_config(BLOCK_M=16, BLOCK_N=64, FWD_M=16, FWD_N=32, DKDV_N=32, DKDV_M=16, DQ_M=16, DQ_N=16)
    monkeypatch.setattr(tk, "config", lambda D, dtype, device: cfg)
    L = {"from_dense": 70, "scam": 120, "sliding_window": 150}[mask]
    check("triton", mask, B=1, Hq=2, Hkv=1, L=L, S=L, D=16, dtype=FP32, rng=rng)


@pytest.mark.parametrize("mask", ["from_dense", "scam", "sliding_window", "document"])
def test_triton_interpreted_dkdv_query_major(mask, monkeypatch, rng):
    """The dK/dV kernel's other orientation (S query-major, dK and dV accumulated transposed: the GPU's choice
    where the key slice is below 64), over bitmaps, groups, windows and documents, with GQA."""
    from arkernels.triton_kernels import block_sparse_attention as tk

    cfg = _cpu_config(DKDV_KEY_MAJOR=False)
    monkeypatch.setattr(tk, "config", lambda D, dtype, device: cfg)
    check("triton", mask, B=1, Hq=2, Hkv=1, L=78, S=78, D=16, dtype=FP32, rng=rng)


@pytest.mark.parametrize("mask", ["from_dense", "causal", "document"])
def test_triton_interpreted_layout_at_another_tiling(mask, rng):
    """A TileLayout at another tiling of powers of two than the default (16 x 64 here, and 64 x 16) gives the
    same results as the Mask laid out by the op: the kernels cut whatever tiles they get."""
    L, D = 90, 16
    m = make_mask(mask, L, L, rng)
    q, k, v = (torch.randn(1, 2, L, D, generator=rng) for _ in range(3))
    want = arkernels.block_sparse_attention(q, k, v, m, backend="triton")
    for tiles in ((16, 64), (64, 16)):
        got = arkernels.block_sparse_attention(q, k, v, m.layout(*tiles, "cpu"), backend="triton")
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("D", [64, 128, 256])
@pytest.mark.parametrize("mask", ["from_dense", "sliding_window", "document"])
def test_triton_interpreted_gpu_config(mask, D, monkeypatch, rng):
    """The GPU's own configuration (128 x 128 layout tiles; 64 x 32 forward, 128-key dK/dV and 128-row dQ
    programs at D <= 128) through the interpreter: the exact slices the GPU runs, on bitmaps, windows and
    documents, L crossing a tile, GQA."""
    from arkernels.triton_kernels import block_sparse_attention as tk

    cfg = tk.config(D, FP32, "cuda")
    monkeypatch.setattr(tk, "config", lambda D_, dtype, device: cfg)
    check("triton", mask, B=1, Hq=2, Hkv=1, L=150, S=150, D=D, dtype=FP32, rng=rng)


@pytest.mark.parametrize("fused_dq", [False, True], ids=["dkdv", "fused"])
@pytest.mark.parametrize("use_dlse", [False, True], ids=["no_dlse", "dlse"])
@pytest.mark.parametrize("mask", ["from_dense", "scam"])
def test_cuda_backward_plumbing(mask, use_dlse, fused_dq, monkeypatch, rng):
    """The backward op of CUDA_BACKWARD "dkdv" / "fused" (Triton preprocess, Triton dQ unless fused, the C++ op)
    with the C++ op replaced by a float64 Python version of the formulas the C API documents (p from lse, dS from
    delta = rowsum(dO * O) - dlse): what the op hands over (lse, delta, the layout's arguments in schema order,
    with_dq) must give the Triton backward's gradients; unfused, dQ must be the Triton one bit for bit."""
    from arkernels.ops.block_sparse_attention import _layout_args

    B, Hq, Hkv, L, D = 1, 4, 2, 90, 16
    m = make_mask(mask, L, L, rng)
    dense = m.to_dense()
    lay = m.layout(*tiling(D, FP32, "cpu"), "cpu")
    q, k, v, g = (torch.randn(b, h, L, D, generator=rng) for b, h in ((B, Hq), (B, Hkv), (B, Hkv), (B, Hq)))
    out, lse = torch.ops.arkernels.block_sparse_attention_triton(q, k, v, *_layout_args(lay), 0.3)
    g_lse = torch.randn(B, Hq, L, generator=rng) if use_dlse else None
    seen = {}

    def backward_float64(q, k, v, dout, lse, delta, *layout_scale_with_dq):
        *layout, scale, with_dq = layout_scale_with_dq
        assert tuple(layout[-3:]) == tuple(_layout_args(lay)[-3:]) and scale == 0.3  # window, block_q, block_k
        assert layout[0] is lay.q_run_ptr and layout[3] is lay.k_runs and with_dq == fused_dq
        seen["called"] = True
        G = Hq // Hkv
        qd, kd, vd, dod = (t.double() for t in (q, k, v, dout))
        kd, vd = kd.repeat_interleave(G, 1), vd.repeat_interleave(G, 1)
        s = qd @ kd.transpose(-1, -2) * scale
        p = torch.where(dense, torch.exp(s - lse.double()[..., None]), 0.0)
        ds = p * (dod @ vd.transpose(-1, -2) - delta.double()[..., None])
        dv = (p.transpose(-1, -2) @ dod).view(B, Hkv, G, L, D).sum(2)
        dk = (ds.transpose(-1, -2) @ qd * scale).view(B, Hkv, G, L, D).sum(2)
        dq = (ds @ kd * scale).float() if with_dq else q.new_empty((0,), dtype=torch.float32)
        seen["dq"] = dq
        return dk.to(k.dtype), dv.to(v.dtype), dq

    monkeypatch.setattr(torch.ops.arkernels, "block_sparse_attention_bwd_dkdv", backward_float64)
    args = (g, g_lse, q, k, v, out, lse, *_layout_args(lay), 0.3)
    got = torch.ops.arkernels._block_sparse_attention_triton_backward(*args, "fused" if fused_dq else "dkdv")
    want = torch.ops.arkernels._block_sparse_attention_triton_backward(*args)
    assert seen.get("called")
    # Fused: dQ is the op's (converted), not the Triton kernel's; unfused: the Triton kernel's, bit for bit.
    assert torch.equal(got[0], seen["dq"].to(q.dtype) if fused_dq else want[0])
    for name, x, y in zip(("dq", "dk", "dv"), got, want):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4, msg=name)


def test_triton_interpreted_strided_kv_scale_no_lse(rng):
    """k, v as slices of one projection (rows strided), an explicit scale, only out reaching the loss
    (lse's gradient arrives as None)."""
    check("triton", "causal", B=1, Hq=2, Hkv=1, L=50, S=50, D=32, dtype=FP32, rng=rng, strided=True, scale=0.3,
          use_lse=False)


def test_triton_interpreted_layout_passed_directly(rng):
    """A TileLayout built at the kernels' tiling is accepted as the mask, with the same results."""
    L, D = 60, 16
    mask = make_mask("sliding_window", L, L, rng)
    lay = mask.layout(*tiling(D, FP32, "cpu"), "cpu")
    q, k, v = (torch.randn(1, 2, L, D, generator=rng) for _ in range(3))
    a = arkernels.block_sparse_attention(q, k, v, mask, backend="triton")
    b = arkernels.block_sparse_attention(q, k, v, lay, backend="triton")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = arkernels.block_sparse_attention(q, k, v, mask, backend="auto")  # auto on CPU: the interpreter
    torch.testing.assert_close(a, c, rtol=0, atol=0)


@pytest.mark.parametrize("L,S", [(0, 20), (20, 0)], ids=["l0", "s0"])
def test_triton_interpreted_empty(L, S):
    run_empty("triton", L, S)


# No opcheck / torch.compile here: under TRITON_INTERPRET=1, torch.library.wrap_triton returns the
# interpreted kernel unchanged, so a triton_op cannot be traced with fake tensors in the interpreter.
# Both run on the GPU (test_block_sparse_attention.py).


def test_layout_at_another_tiling_raises_interpreted():
    check_layout_at_another_tiling_raises("cpu")


def test_direct_eager_backward_matches_the_op(monkeypatch, rng):
    """DIRECT_EAGER_BACKWARD (the op's body called directly in eager backwards) gives the gradients of the op path
    bit for bit, and takes the direct path (not the op) when on."""
    import importlib
    import sys

    bsa_ops = importlib.import_module("arkernels.ops.block_sparse_attention")  # the module, not the function
    mask = make_mask("scam", 96, 96, rng)
    q, k, v = (torch.randn(1, 2, 96, 16, generator=rng) for _ in range(3))
    g = torch.randn(1, 2, 96, 16, generator=rng)
    callers = []  # who called the body: the op's registered function, or _gpu_backward_op directly
    body = bsa_ops._triton_backward

    def spy(*args):
        callers.append(sys._getframe(1).f_code.co_name)
        return body(*args)

    monkeypatch.setattr(bsa_ops, "_triton_backward", spy)
    grads = []
    for direct in (False, True):
        monkeypatch.setattr(bsa_ops, "DIRECT_EAGER_BACKWARD", direct)
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = arkernels.block_sparse_attention(*leaves, mask, backend="triton")
        grads.append(torch.autograd.grad(out, leaves, g))
        assert callers[-1] == ("_gpu_backward_op" if direct else "_block_sparse_attention_triton_backward")
    for a, b in zip(*grads):
        assert torch.equal(a, b)
