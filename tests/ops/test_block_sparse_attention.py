"""arkernels.block_sparse_attention against its float64 reference: the reference itself, bad input, the cpu
backend, the native op (arkernels::block_sparse_attention_fwd: the C API's CPU kernel here, its Hopper CUDA
kernel behind backend "cuda" on the GPU), and the Triton backend on the GPU (forward and every gradient, outputs
NaN-poisoned).

Contract (docs/ops/block_sparse_attention.md): out = softmax(scale q k^T where the mask allows) v per
(batch row, q head), kv head = q head // (Hq / Hkv); lse (B, Hq, L) float32, natural log; a query that
sees no key has out = 0, lse = -inf, zero gradients. Gradients for q, k, v, also through lse.

Comparisons: the reference evaluated in float64 on the same (rounded) inputs; norm-relative bounds
(fp32 1e-5 exact dots / 2e-3 with tf32 dots on the GPU, bf16 1e-2, fp16 2e-3; gradients twice that).
The Triton kernels run on the CPU in test_block_sparse_attention_triton_interpreter.py (TRITON_INTERPRET=1),
which reuses the mask table and `check` of this file.
"""
from __future__ import annotations

import importlib
import math

import pytest
import torch

import arkernels
from arkernels import _outputs
from arkernels import masks as M
from arkernels.ops import _backends
from arkernels.reference import block_sparse_attention_ref
from arkernels.testing import inputs
from arkernels.testing.numerics import REL_TOL, assert_close_to_reference

HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
# The op's module (its settings such as CUDA_BACKWARD): `from arkernels.ops import block_sparse_attention` gives
# the function of that name, which the package exports.
BSA_OPS = importlib.import_module("arkernels.ops.block_sparse_attention")
FP32, BF16, FP16 = torch.float32, torch.bfloat16, torch.float16
INF = float("inf")


@pytest.fixture(autouse=True)
def _poisoned_outputs():
    with _outputs.poisoned_outputs():
        yield


# ---- the masks of the tests: (Mask, dense (L, S) bool) ----

def var_boundaries(patch_nums=(1, 2, 3, 4, 5, 6, 8)):
    """VAR scale boundaries (cumulative pn^2: unequal blocks); the first 7 scales end at 155 tokens."""
    ends = [0]
    for p in patch_nums:
        ends.append(ends[-1] + p * p)
    return ends


def tree_parents(n: int, rng) -> list[int]:
    """A random tree in BFS order: parent[i] < i, node 0 the root."""
    return [-1] + [int(torch.randint(0, i, (1,), generator=rng)) for i in range(1, n)]


def make_mask(name: str, L: int, S: int, rng):
    """The named mask kinds of the tests at (L, S)."""
    if name == "causal":
        return M.causal(L, S)
    if name == "sliding_window":
        return M.sliding_window(max(2, L // 5), L, S)
    if name == "block_causal_var":
        ends = var_boundaries()
        assert ends[-1] == L == S, "block_causal_var needs L = S = 155"
        return M.block_causal(ends)
    if name == "scam":
        assert L == S and L % 6 == 0, "scam: 3 clean + 3 noisy blocks"
        return M.skip_causal(3, L // 6)
    if name == "document":
        assert L == S
        cu = [0, L // 3, L // 3 + 1, L // 3 + 1 + L // 2, L]  # a document of one token
        return M.document(cu, M.causal(L))
    if name == "tree":
        # S - L cached prefix keys, then L tree nodes (the queries).
        return M.tree(tree_parents(L, rng), prefix=S - L)
    if name == "from_dense":
        dense = torch.rand(L, S, generator=rng) < 0.35
        dense[L // 2] = False  # an empty row
        return M.from_dense(dense)
    if name == "far_levels_window":
        # Levels ~4e9 apart, where q_level - k_level overflows int32: every third key sits far below all queries
        # (never visible by the window); the rest form a sliding window of L // 4 shifted by 5.
        base = 2_000_000_000
        q_level = base + torch.arange(L, dtype=torch.int32)
        j = torch.arange(S, dtype=torch.int32)
        k_level = torch.where(j % 3 == 0, -base + j, base + j - 5)
        return M.from_level_rule(M.LevelRule(q_level, k_level, window=max(2, L // 4)))
    if name == "all":
        return M.from_dense(torch.ones(L, S, dtype=torch.bool))
    if name == "none":
        return M.from_dense(torch.zeros(L, S, dtype=torch.bool))
    raise KeyError(name)


# ---- the check: forward and every gradient against float64 ----

def tolerance(dtype, device) -> float:
    if dtype == FP32:
        return 2e-3 if torch.device(device).type == "cuda" else REL_TOL[FP32]  # tf32 dots on the GPU
    return REL_TOL[dtype]


def check(backend, mask_name, *, B, Hq, Hkv, L, S, D, dtype, rng, device="cpu", use_lse=True, scale=None,
          strided=False, mask=None, run=None):
    """Runs the op on random inputs, compares out, lse, dq, dk, dv with the float64 reference; returns them.
    `run(q, k, v, mask, scale) -> (out, lse)` replaces the public op (e.g. a torch op called directly)."""
    if mask is None:
        mask = make_mask(mask_name, L, S, rng)
    dense = mask.to_dense()
    q = inputs.normal((B, Hq, L, D), generator=rng, dtype=dtype, device=device)
    if strided:  # k, v as halves of one (B, Hkv, S, 2D) projection: last dim contiguous, rows strided
        kv = inputs.normal((B, Hkv, S, 2 * D), generator=rng, dtype=dtype, device=device)
        k, v = kv[..., :D], kv[..., D:]
    else:
        k = inputs.normal((B, Hkv, S, D), generator=rng, dtype=dtype, device=device)
        v = inputs.normal((B, Hkv, S, D), generator=rng, dtype=dtype, device=device)
    w_out = inputs.normal((B, Hq, L, D), generator=rng, dtype=torch.float64)
    w_lse = inputs.normal((B, Hq, L), generator=rng, dtype=torch.float64)

    def loss(out, lse):
        total = (out.double().cpu() * w_out).sum()
        if use_lse:
            lse64 = lse.double().cpu()
            total = total + (torch.where(torch.isinf(lse64), 0.0, lse64) * w_lse).sum()
        return total

    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    if run is None:
        out, lse = arkernels.block_sparse_attention(*leaves, mask, scale=scale, return_lse=True, backend=backend)
    else:
        out, lse = run(*leaves, mask, scale)
    assert out.dtype == dtype and out.shape == (B, Hq, L, D) and out.device == q.device
    assert lse.dtype == FP32 and lse.shape == (B, Hq, L)
    loss(out, lse).backward()

    ref_leaves = [t.detach().cpu().double().requires_grad_(True) for t in (q, k, v)]
    r_out, r_lse = block_sparse_attention_ref(*ref_leaves, dense, scale)
    loss(r_out, r_lse).backward()

    tol = tolerance(dtype, device)
    assert_close_to_reference(out, r_out, rel_tol=tol, name="out")
    empty = torch.isinf(r_lse)
    lse_c = lse.detach().cpu().double()
    assert torch.equal(torch.isneginf(lse_c), empty), "lse: -inf exactly where a query sees no key"
    assert_close_to_reference(lse_c[~empty], r_lse.detach()[~empty], rel_tol=max(tol / 10, 1e-6), name="lse")
    if empty.any():
        assert (out.detach().cpu()[empty] == 0).all(), "out: 0 where a query sees no key"
    for name, a, b in zip(("dq", "dk", "dv"), leaves, ref_leaves):
        assert a.grad.dtype == dtype
        assert_close_to_reference(a.grad, b.grad, rel_tol=2 * tol, name=name)
    if empty.any():
        assert (leaves[0].grad.cpu()[empty] == 0).all(), "dq: 0 where a query sees no key"
    return out, lse, [t.grad for t in leaves]


# ---- the reference against a brute-force float64 definition ----

def _brute_force(q, k, v, dense, scale):
    """Per (b, h, query) loops with the textbook softmax over the visible keys."""
    B, Hq, L, D = q.shape
    G = Hq // k.shape[1]
    out = torch.zeros(B, Hq, L, D, dtype=torch.float64)
    lse = torch.full((B, Hq, L), -INF, dtype=torch.float64)
    for b in range(B):
        for h in range(Hq):
            for i in range(L):
                idx = dense[i].nonzero().flatten()
                if idx.numel() == 0:
                    continue
                s = torch.stack([scale * torch.dot(q[b, h, i], k[b, h // G, j]) for j in idx])
                w = torch.exp(s - s.max())
                out[b, h, i] = (w[:, None] * v[b, h // G, idx]).sum(0) / w.sum()
                lse[b, h, i] = s.max() + torch.log(w.sum())
    return out, lse


@pytest.mark.parametrize("mask_name,L,S", [("causal", 9, 9), ("from_dense", 7, 12), ("tree", 6, 11), ("none", 3, 4)])
def test_reference_matches_brute_force(mask_name, L, S, rng):
    mask = make_mask(mask_name, L, S, rng)
    dense = mask.to_dense()
    q = torch.randn(2, 4, L, 8, generator=rng, dtype=torch.float64)
    k = torch.randn(2, 2, S, 8, generator=rng, dtype=torch.float64)
    v = torch.randn(2, 2, S, 8, generator=rng, dtype=torch.float64)
    out, lse = block_sparse_attention_ref(q, k, v, dense, 0.3)
    b_out, b_lse = _brute_force(q, k, v, dense, 0.3)
    torch.testing.assert_close(out, b_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, b_lse, rtol=1e-12, atol=1e-12)


def test_reference_empty_rows_have_zero_gradients(rng):
    dense = torch.ones(5, 6, dtype=torch.bool)
    dense[2] = False
    q, k, v = (torch.randn(1, 2, n, 8, generator=rng, dtype=torch.float64, requires_grad=True) for n in (5, 6, 6))
    out, lse = block_sparse_attention_ref(q, k, v, dense)
    assert (out[:, :, 2] == 0).all() and torch.isneginf(lse[:, :, 2]).all()
    (out.sum() + torch.where(torch.isinf(lse), 0.0, lse).sum()).backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all() and torch.isfinite(v.grad).all()
    assert (q.grad[:, :, 2] == 0).all()


def test_reference_default_scale(rng):
    q, k, v = (torch.randn(1, 1, 4, 16, generator=rng, dtype=torch.float64) for _ in range(3))
    dense = torch.ones(4, 4, dtype=torch.bool)
    a, _ = block_sparse_attention_ref(q, k, v, dense)
    b, _ = block_sparse_attention_ref(q, k, v, dense, 1 / math.sqrt(16))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("mask_name,L,S", [("causal", 40, 40), ("scam", 36, 36), ("tree", 9, 30)])
def test_reference_backend_matches_reference(mask_name, L, S, rng):
    check("reference", mask_name, B=2, Hq=4, Hkv=2, L=L, S=S, D=16, dtype=FP32, rng=rng)


# ---- the cpu backend (PyTorch over query tiles, walking the layout) ----

CPU_CASES = {
    # name: (mask, B, Hq, Hkv, L, S, D, dtype)
    "causal_gqa": ("causal", 2, 4, 2, 300, 300, 64, FP32),
    "sliding_window_bf16": ("sliding_window", 1, 2, 1, 333, 333, 64, BF16),
    "block_causal_var": ("block_causal_var", 2, 2, 2, 155, 155, 32, FP32),
    "scam_fp16": ("scam", 1, 4, 4, 384, 384, 64, FP16),
    "document": ("document", 1, 2, 1, 260, 260, 128, FP32),
    "tree_prefix": ("tree", 2, 4, 1, 40, 300, 64, BF16),
    "from_dense": ("from_dense", 1, 2, 2, 200, 150, 48, FP32),
    "l1": ("all", 2, 8, 2, 1, 500, 256, FP32),
    "empty_mask": ("none", 1, 2, 1, 50, 70, 16, FP32),
    "far_levels_window": ("far_levels_window", 1, 2, 1, 200, 200, 32, FP32),
}


@pytest.mark.parametrize("name", list(CPU_CASES))
def test_cpu_matches_reference(name, rng):
    mask, B, Hq, Hkv, L, S, D, dtype = CPU_CASES[name]
    check("cpu", mask, B=B, Hq=Hq, Hkv=Hkv, L=L, S=S, D=D, dtype=dtype, rng=rng)


def test_cpu_strided_no_lse_any_tiling(rng):
    """Strided k, v, only out in the loss; a TileLayout at any tiling is accepted (here 48 x 80, BITS with
    three words per row)."""
    check("cpu", "from_dense", B=1, Hq=2, Hkv=1, L=120, S=170, D=32, dtype=FP32, rng=rng, strided=True,
          use_lse=False, scale=0.2)
    mask = make_mask("from_dense", 100, 130, rng)
    q, k, v = (torch.randn(1, 2, n, 16, generator=rng) for n in (100, 130, 130))
    a = arkernels.block_sparse_attention(q, k, v, mask.layout(48, 80), backend="cpu")
    b = arkernels.block_sparse_attention(q, k, v, mask, backend="cpu")
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("L,S", [(0, 20), (20, 0)], ids=["l0", "s0"])
def test_cpu_empty_inputs(L, S):
    run_empty("cpu", L, S)


def _op_args(rng, device, dtype, tiling_):
    L, S, D = 200, 200, 64
    from arkernels.ops.block_sparse_attention import _layout_args

    lay = M.sliding_window(50, L, S).layout(*tiling_, device)
    q = torch.randn(2, 4, L, D, generator=rng).to(device, dtype).requires_grad_(True)
    k = torch.randn(2, 2, S, D, generator=rng).to(device, dtype).requires_grad_(True)
    v = torch.randn(2, 2, S, D, generator=rng).to(device, dtype).requires_grad_(True)
    return (q, k, v, *_layout_args(lay), 0.125)


@pytest.mark.parametrize("dtype", [FP32, BF16], ids=["fp32", "bf16"])
def test_opcheck_block_sparse_attention_cpu(dtype, rng):
    torch.library.opcheck(torch.ops.arkernels.block_sparse_attention_cpu.default, _op_args(rng, "cpu", dtype, (64, 32)))


def test_opcheck_block_sparse_attention_cpu_backward(rng):
    args = [a.detach() if isinstance(a, torch.Tensor) else a for a in _op_args(rng, "cpu", FP32, (64, 32))]
    out, lse = torch.ops.arkernels.block_sparse_attention_cpu(*args)
    for g_lse in (torch.randn_like(lse), None):
        torch.library.opcheck(torch.ops.arkernels._block_sparse_attention_cpu_backward.default,
                              (torch.randn_like(out), g_lse, *args[:3], out, lse, *args[3:]))


def _compile_check(backend, device, rng):
    from arkernels.ops.block_sparse_attention import backend_tiling

    L, D = 300, 64
    tiles = backend_tiling(backend, D, BF16, device)
    lay = M.causal(L).layout(*tiles, device)
    _compiled_matches_eager(lambda q, k, v: arkernels.block_sparse_attention(q, k, v, lay, return_lse=True,
                                                                            backend=backend), L, D, device, rng)


def _compiled_matches_eager(attend, L, D, device, rng):
    """attend(q, k, v) -> (out, lse) under torch.compile(fullgraph=True) against eager: a loss and every gradient."""
    torch._dynamo.reset()
    q, k, v = (torch.randn(2, 4, L, D, generator=rng).to(device, BF16) for _ in range(3))
    w = torch.randn(2, 4, L, D, generator=rng).to(device)

    def f(q, k, v):
        out, lse = attend(q, k, v)
        return (out.float() * w).sum() + lse.sum()

    results = []
    for fn in (f, torch.compile(f, fullgraph=True)):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        y = fn(*leaves)
        y.backward()
        results.append([y.detach()] + [t.grad for t in leaves])
    for a, b in zip(*results):
        assert_close_to_reference(b, a, rel_tol=1e-5, name="compiled vs eager")


def test_cpu_torch_compile_fullgraph(rng):
    _compile_check("cpu", "cpu", rng)


# ---- the native op on CPU tensors (the C API's CPU kernel; autograd: the cpu op's backward) ----

def native_run(tiling_):
    """`run` for check(): arkernels::block_sparse_attention_fwd with the mask's layout at tiling_."""
    from arkernels.ops.block_sparse_attention import _layout_args

    def run(q, k, v, mask, scale):
        lay = mask.layout(*tiling_, q.device)
        s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        return torch.ops.arkernels.block_sparse_attention_fwd(q, k, v, *_layout_args(lay), s)

    return run


NATIVE_CPU_CASES = {
    # name: (mask, B, Hq, Hkv, L, S, D, dtype, (block_q, block_k))
    "causal_gqa_gpu_tiling": ("causal", 2, 4, 2, 300, 300, 64, FP32, (128, 64)),
    "causal_prefix_keys_bf16": ("causal", 1, 2, 1, 257, 400, 64, BF16, (128, 128)),
    "sliding_window_bf16_gqa": ("sliding_window", 1, 4, 2, 333, 333, 32, BF16, (128, 32)),
    "block_causal_var": ("block_causal_var", 2, 2, 1, 155, 155, 48, FP32, (64, 32)),
    "scam_fp16": ("scam", 1, 2, 2, 198, 198, 64, FP16, (128, 64)),
    "document": ("document", 1, 2, 1, 260, 260, 128, FP32, (128, 32)),
    "tree_prefix_bits_bf16": ("tree", 2, 4, 1, 40, 300, 64, BF16, (128, 64)),
    "from_dense_bits_3_words": ("from_dense", 1, 2, 2, 200, 150, 40, FP32, (48, 80)),
    "from_dense_small_tiles_bf16": ("from_dense", 1, 3, 1, 77, 91, 16, BF16, (16, 16)),
    "l1": ("all", 2, 8, 2, 1, 500, 64, FP32, (128, 64)),
    "empty_mask": ("none", 1, 2, 1, 50, 70, 16, FP32, (128, 64)),
    "d256_odd_d": ("causal", 1, 2, 1, 70, 70, 256, FP32, (128, 128)),
    "d7": ("sliding_window", 2, 2, 2, 45, 45, 7, BF16, (32, 16)),
    "far_levels_window": ("far_levels_window", 1, 2, 1, 200, 200, 32, FP32, (128, 64)),
}


@pytest.mark.parametrize("name", list(NATIVE_CPU_CASES))
def test_native_cpu_matches_reference(name, rng):
    """Forward (C++ kernel) and the gradients of its autograd (the cpu op's backward on the same layout)."""
    mask, B, Hq, Hkv, L, S, D, dtype, tiles = NATIVE_CPU_CASES[name]
    check("native", mask, B=B, Hq=Hq, Hkv=Hkv, L=L, S=S, D=D, dtype=dtype, rng=rng, run=native_run(tiles))


def test_native_cpu_strided_no_lse(rng):
    check("native", "from_dense", B=1, Hq=2, Hkv=1, L=120, S=170, D=32, dtype=BF16, rng=rng, strided=True,
          use_lse=False, scale=0.2, run=native_run((128, 64)))


def test_native_cpu_reads_any_strides(rng):
    """q with a strided head dim (copied), k with an odd batch stride on a batch of 1 (read in place), v as a
    slice: the same bits as contiguous inputs."""
    from arkernels.ops.block_sparse_attention import _layout_args

    L, S, D = 90, 130, 24
    lay = M.sliding_window(40, L, S).layout(32, 32)
    q = torch.randn(1, 2, D, L, generator=rng).transpose(2, 3)
    k = torch.randn(2 * S * D + 3, generator=rng)[3:].as_strided((1, 2, S, D), (7, S * D, D, 1))
    v = torch.randn(1, 2, S, 2 * D, generator=rng)[..., D:]
    assert q.stride(-1) != 1 and k.stride(0) == 7 and k.is_contiguous() and not v.is_contiguous()
    run = torch.ops.arkernels.block_sparse_attention_fwd
    a = run(q, k, v, *_layout_args(lay), 0.3)
    b = run(q.contiguous(), k.contiguous(), v.contiguous(), *_layout_args(lay), 0.3)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("L,S", [(0, 20), (20, 0), (0, 0)], ids=["l0", "s0", "l0s0"])
def test_native_cpu_empty_inputs(L, S):
    from arkernels.ops.block_sparse_attention import _layout_args

    q = torch.randn(2, 2, L, 16)
    k, v = torch.randn(2, 1, S, 16), torch.randn(2, 1, S, 16)
    out, lse = torch.ops.arkernels.block_sparse_attention_fwd(q, k, v, *_layout_args(empty_layout(L, S, 32, 16)), 0.25)
    assert out.shape == (2, 2, L, 16) and lse.shape == (2, 2, L)
    assert (out == 0).all() and torch.isneginf(lse).all()


@pytest.mark.parametrize("dtype", [FP32, BF16], ids=["fp32", "bf16"])
def test_opcheck_block_sparse_attention_fwd_cpu(dtype, rng):
    torch.library.opcheck(torch.ops.arkernels.block_sparse_attention_fwd.default, _op_args(rng, "cpu", dtype, (64, 32)))


def test_native_cpu_torch_compile_fullgraph(rng):
    """The native op (fake kernel, autograd) traced whole by torch.compile, forward and backward."""
    from arkernels.ops.block_sparse_attention import _layout_args

    L = 200
    args = _layout_args(M.causal(L).layout(64, 32))
    _compiled_matches_eager(lambda q, k, v: torch.ops.arkernels.block_sparse_attention_fwd(q, k, v, *args, 0.2), L, 32,
                            "cpu", rng)


def _native_bad(**changes):
    """A call of the native op on CPU tensors with one argument replaced (names as in the schema)."""
    from arkernels.ops.block_sparse_attention import _layout_args

    names = ["q", "k", "v", "q_run_ptr", "q_runs", "k_run_ptr", "k_runs", "tile_bits", "k_tile_bits", "q_level",
             "k_level", "q_doc", "k_doc", "q_group", "k_group", "window", "block_q", "block_k", "scale"]
    q, k, v = _qkv(L=40, S=40)
    args = dict(zip(names, (q, k, v, *_layout_args(M.causal(40).layout(16, 16)), 0.25)))
    args.update(changes)
    return lambda: torch.ops.arkernels.block_sparse_attention_fwd(*(args[n] for n in names))


NATIVE_BAD_INPUTS = {
    "q_3d": (lambda: _native_bad(q=torch.randn(4, 40, 16)), ValueError, r"q: expected 4 dimensions.*\[4, 40, 16\]"),
    "q_int": (lambda: _native_bad(q=torch.zeros(1, 4, 40, 16, dtype=torch.int32)), TypeError, r"q: expected dtype"),
    "k_dtype": (lambda: _native_bad(k=torch.randn(1, 2, 40, 16).to(BF16)), TypeError,
                r"k: expected the dtype of q \(Float\), got BFloat16"),
    "k_head_dim": (lambda: _native_bad(k=torch.randn(1, 2, 40, 8)), ValueError, r"k: expected shape.*\[1, 2, 40, 8\]"),
    "k_heads": (lambda: _native_bad(k=torch.randn(1, 3, 40, 16)), ValueError, r"k:.*divides Hq = 4.*Hkv = 3"),
    "v_shape": (lambda: _native_bad(v=torch.randn(1, 2, 39, 16)), ValueError, r"v: expected the shape of k"),
    "q_run_ptr_int64": (lambda: _native_bad(q_run_ptr=torch.zeros(4, dtype=torch.int64)), TypeError,
                        r"q_run_ptr: expected dtype int32, got Long"),
    "q_run_ptr_length": (lambda: _native_bad(q_run_ptr=torch.zeros(5, dtype=torch.int32)), ValueError,
                         r"q_run_ptr: expected shape \[4\], got \[5\]"),
    "q_runs_shape": (lambda: _native_bad(q_runs=torch.zeros(6, 3, dtype=torch.int32)), ValueError,
                     r"q_runs: expected shape \[runs, 4\]"),
    "tile_bits_shape": (lambda: _native_bad(tile_bits=torch.zeros(2, 16, 2, dtype=torch.int32)), ValueError,
                        r"tile_bits: expected shape \[tiles, 16, 1\]"),
    "k_level_missing": (lambda: _native_bad(k_level=None), ValueError,
                        r"q_level and k_level: expected both or neither"),
    "k_level_length": (lambda: _native_bad(k_level=torch.zeros(39, dtype=torch.int32)), ValueError,
                       r"k_level: expected shape \[40\]"),
    "doc_without_level": (lambda: _native_bad(q_level=None, k_level=None, q_doc=torch.zeros(40, dtype=torch.int32),
                                              k_doc=torch.zeros(40, dtype=torch.int32)), ValueError,
                          r"q_doc / q_group: expected none without q_level"),
    "block_q_zero": (lambda: _native_bad(block_q=0), ValueError, r"block_q: expected an int32 value >= 1, got 0"),
    "window_too_large": (lambda: _native_bad(window=2**31), ValueError, r"window: expected an int32 value"),
    "scale_zero": (lambda: _native_bad(scale=0.0), ValueError, r"scale: expected a finite number > 0"),
    "scale_nan": (lambda: _native_bad(scale=float("nan")), ValueError, r"scale: expected a finite number > 0"),
}


@pytest.mark.parametrize("name", list(NATIVE_BAD_INPUTS))
def test_native_bad_input_raises(name):
    make, exc, pattern = NATIVE_BAD_INPUTS[name]
    with pytest.raises(exc, match=pattern):
        make()()


# ---- the dK / dV op (the Hopper kernel through the C API; CUDA only) ----

def _dkdv_args(rng, device, dtype=BF16, **changes):
    """Arguments of arkernels::block_sparse_attention_bwd_dkdv at a 128 x 128 layout (names as in the schema),
    one of them replaced."""
    from arkernels.ops.block_sparse_attention import _layout_args

    names = ["q", "k", "v", "dout", "lse", "delta", "q_run_ptr", "q_runs", "k_run_ptr", "k_runs", "tile_bits",
             "k_tile_bits", "q_level", "k_level", "q_doc", "k_doc", "q_group", "k_group", "window", "block_q",
             "block_k", "scale", "with_dq"]
    B, Hq, Hkv, L, S, D = 2, 4, 2, 200, 230, 64
    q, dout = (torch.randn(B, Hq, L, D, generator=rng).to(device, dtype) for _ in range(2))
    k, v = (torch.randn(B, Hkv, S, D, generator=rng).to(device, dtype) for _ in range(2))
    lse, delta = (torch.randn(B, Hq, L, generator=rng).to(device) for _ in range(2))
    lay = M.sliding_window(70, L, S).layout(128, 128, device)
    args = dict(zip(names, (q, k, v, dout, lse, delta, *_layout_args(lay), 0.125, False)))
    args.update(changes)
    return tuple(args.values())


DKDV_BAD_INPUTS = {
    # name: (changes, exception, message)
    "dout_shape": (lambda: {"dout": torch.randn(2, 4, 199, 64).to(BF16)}, ValueError,
                   r"dout: expected the shape of q \[2, 4, 200, 64\], got \[2, 4, 199, 64\]"),
    "dout_dtype": (lambda: {"dout": torch.randn(2, 4, 200, 64)}, TypeError, r"dout: expected the dtype of q"),
    "lse_dtype": (lambda: {"lse": torch.randn(2, 4, 200).double()}, TypeError, r"lse: expected dtype float32"),
    "delta_shape": (lambda: {"delta": torch.randn(2, 4, 201)}, ValueError,
                    r"delta: expected shape \(B, Hq, L\) = \[2, 4, 200\], got \[2, 4, 201\]"),
    "k_run_ptr_length": (lambda: {"k_run_ptr": torch.zeros(4, dtype=torch.int32)}, ValueError,
                         r"k_run_ptr: expected shape \[3\], got \[4\]"),
    "k_runs_shape": (lambda: {"k_runs": torch.zeros(3, 2, dtype=torch.int32)}, ValueError,
                     r"k_runs: expected shape \[runs, 4\]"),
    "cpu_tensors": (lambda: {}, ValueError,
                    r"block_sparse_attention_bwd_dkdv: device: the dK/dV kernel runs on CUDA devices only"),
}


@pytest.mark.parametrize("name", list(DKDV_BAD_INPUTS))
def test_dkdv_op_bad_input_raises(name, rng):
    changes, exc, pattern = DKDV_BAD_INPUTS[name]
    with pytest.raises(exc, match=pattern):
        torch.ops.arkernels.block_sparse_attention_bwd_dkdv(*_dkdv_args(rng, "cpu", **changes()))


def test_dkdv_kernel_not_taken_on_cpu():
    from arkernels.ops.block_sparse_attention import _dkdv_cuda_runs

    assert not _dkdv_cuda_runs(64, 128, 128, BF16, torch.device("cpu"))


def test_dkdv_kernel_choice_takes_a_symbolic_head_dim():
    """Under dynamic-shape tracing of the backward (opcheck's aot_dispatch_dynamic), the head dim arrives as a SymInt,
    which cannot key the choice's cache: the choice must specialise on it, not raise (it did, on the GPU only)."""
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    from arkernels.ops.block_sparse_attention import _dkdv_cuda_runs

    env = ShapeEnv()
    head_dim = env.create_symintnode(env.create_symbol(64, source=ConstantSource("D")), hint=64)
    assert isinstance(head_dim, torch.SymInt)
    assert not _dkdv_cuda_runs(head_dim, 128, 128, BF16, torch.device("cpu"))


@pytest.mark.parametrize("D,dtype", [(64, FP32), (256, BF16), (64, BF16)], ids=["fp32", "d256", "bf16"])
def test_cuda_backend_on_cpu_tensors_raises(D, dtype, rng):
    """backend="cuda" never falls back: CPU tensors raise, whatever D and dtype (also under TRITON_INTERPRET)."""
    q, k, v = (torch.randn(1, 2, 30, D, generator=rng).to(dtype) for _ in range(3))
    with pytest.raises(ValueError, match=r"backend: 'cuda' cannot run here: the cuda backend needs CUDA tensors, "
                                         r"got tensors on cpu"):
        arkernels.block_sparse_attention(q, k, v, M.causal(30), backend="cuda")


# ---- bad input ----

def _qkv(B=1, Hq=4, Hkv=2, L=8, S=8, D=16, dtype=FP32):
    return [torch.randn(B, Hq, L, D).to(dtype), torch.randn(B, Hkv, S, D).to(dtype),
            torch.randn(B, Hkv, S, D).to(dtype)]


def _call(i=None, value=None, mask=None, **kwargs):
    args = _qkv()
    if i is not None:
        args[i] = value
    mask = M.causal(8, 8) if mask is None else mask
    kwargs.setdefault("backend", "reference")
    return lambda: arkernels.block_sparse_attention(*args, mask, **kwargs)


BAD_INPUTS = {
    "q_not_tensor": (lambda: _call(0, [1.0]), TypeError, r"q.*Tensor.*list"),
    "q_3d": (lambda: _call(0, torch.randn(4, 8, 16)), ValueError, r"q.*4 dimensions.*\(4, 8, 16\)"),
    "q_int": (lambda: _call(0, torch.zeros(1, 4, 8, 16, dtype=torch.int32)), TypeError, r"q.*float32.*int32"),
    "q_float64": (lambda: _call(0, torch.zeros(1, 4, 8, 16, dtype=torch.float64)), TypeError, r"q.*float64"),
    "k_dtype": (lambda: _call(1, torch.randn(1, 2, 8, 16).to(BF16)), TypeError, r"k.*float32.*bfloat16"),
    "k_head_dim": (lambda: _call(1, torch.randn(1, 2, 8, 32)), ValueError, r"k.*\(1, Hkv, S, 16\).*\(1, 2, 8, 32\)"),
    "k_batch": (lambda: _call(1, torch.randn(2, 2, 8, 16)), ValueError, r"k.*\(1, Hkv, S, 16\).*\(2, 2, 8, 16\)"),
    "k_heads": (lambda: _call(1, torch.randn(1, 3, 8, 16)), ValueError, r"k.*divides Hq = 4.*Hkv = 3"),
    "v_shape": (lambda: _call(2, torch.randn(1, 2, 7, 16)), ValueError, r"v.*\(1, 2, 8, 16\).*\(1, 2, 7, 16\)"),
    "v_dtype": (lambda: _call(2, torch.randn(1, 2, 8, 16).to(FP16)), TypeError, r"v.*float32.*float16"),
    "head_dim_too_large": (lambda: lambda: arkernels.block_sparse_attention(
        *_qkv(D=264), M.causal(8, 8), backend="reference"), ValueError, r"q.*\[1, 256\].*D = 264"),
    "mask_type": (lambda: _call(mask=torch.ones(8, 8, dtype=torch.bool)), TypeError,
                  r"mask.*Mask or a TileLayout.*Tensor"),
    "mask_shape": (lambda: _call(mask=M.causal(9, 9)), ValueError, r"mask.*\(L, S\) = \(8, 8\).*\(9, 9\)"),
    "scale_str": (lambda: _call(scale="x"), TypeError, r"scale.*'x'"),
    "scale_nan": (lambda: _call(scale=float("nan")), TypeError, r"scale.*nan"),
    "return_lse_int": (lambda: _call(return_lse=1), TypeError, r"return_lse.*bool.*int"),
    "backend_unknown": (lambda: _call(backend="fast"), ValueError, r"backend.*'auto'.*'fast'"),
    "backend_cuda_on_cpu": (lambda: _call(backend="cuda"), ValueError,
                            r"backend: 'cuda' cannot run here.*CUDA tensors.*cpu"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_raises(name):
    make, exc, pattern = BAD_INPUTS[name]
    with pytest.raises(exc, match=pattern):
        make()()


@gpu
def test_mixed_devices_raise():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"k.*cuda.*cpu|k.*cpu.*cuda"):
        arkernels.block_sparse_attention(q.cuda(), k, v, M.causal(8, 8))


@pytest.mark.skipif(_backends.triton_interpreted(), reason="under TRITON_INTERPRET=1 'auto' on CPU is triton")
def test_auto_on_cpu_is_the_cpu_backend(rng):
    q, k, v = _qkv(L=40, S=40)
    mask = M.causal(40)
    a = arkernels.block_sparse_attention(q, k, v, mask)
    b = arkernels.block_sparse_attention(q, k, v, mask, backend="cpu")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    if not HAS_CUDA:
        with pytest.raises(ValueError, match=r"backend.*'triton' cannot run.*CUDA tensors"):
            arkernels.block_sparse_attention(q, k, v, mask, backend="triton")


@gpu
def test_cpu_backend_on_cuda_raises():
    q, k, v = (t.cuda() for t in _qkv())
    with pytest.raises(ValueError, match=r"backend.*'cpu' cannot run.*CPU tensors.*cuda"):
        arkernels.block_sparse_attention(q, k, v, M.causal(8), backend="cpu")


@pytest.mark.skipif(not _backends.triton_available(), reason="triton not installed")
def test_triton_configs_by_layout_tiling():
    """Every kernel's slices are powers of two >= 16 dividing the layout's tile, for the default tiling and for
    any other tiling of powers of two (slices larger than a tile shrink to it); other tilings are refused. Pure
    Python over the config tables: no GPU needed."""
    from arkernels.triton_kernels import block_sparse_attention as tk

    for device in ("cuda", "cpu"):
        for D in (16, 64, 128, 256):
            for dtype in (FP32, BF16):
                base = tk.config(D, dtype, device)
                for bq, bk in ((base["BLOCK_M"], base["BLOCK_N"]), (16, 16), (16, 256), (256, 32)):
                    cfg = tk.config_for_layout(D, dtype, device, bq, bk)
                    assert (cfg["BLOCK_M"], cfg["BLOCK_N"]) == (bq, bk)
                    for name in tk.SLICES:
                        n, tile = cfg[name], bq if name in ("FWD_M", "DKDV_M", "DQ_M") else bk
                        assert n >= 16 and n & (n - 1) == 0 and tile % n == 0, (device, D, name, n, tile)
                        assert n == min(base[name], tile), (device, D, name)
    for bad in ((48, 32), (8, 16), (64, 0)):
        with pytest.raises(ValueError, match=rf"powers of two >= 16.*got one at \({bad[0]}, {bad[1]}\)"):
            tk.config_for_layout(64, BF16, "cuda", *bad)


def check_layout_at_another_tiling_raises(device):
    """The Triton backend refuses a TileLayout at a tiling that is not of powers of two >= 16, naming the
    default (run on CUDA here and through the interpreter by test_block_sparse_attention_triton_interpreter.py:
    the cpu backend takes any tiling, so plain CPU runs have no backend to check)."""
    q, k, v = (t.to(device) for t in _qkv())
    from arkernels.ops.block_sparse_attention import tiling

    bq, bk = tiling(16, FP32, device)
    for bad in ((bq + 16, bk), (bq, 8)):
        lay = M.causal(8, 8).layout(*bad, device)
        with pytest.raises(ValueError, match=rf"mask.*powers of two >= 16.*got \({bad[0]}, {bad[1]}\).*\({bq}, {bk}\)"):
            arkernels.block_sparse_attention(q, k, v, lay, backend="triton")


@gpu
def test_layout_at_another_tiling_raises_cuda():
    check_layout_at_another_tiling_raises("cuda")


def empty_layout(L, S, block_q, block_k, device="cpu"):
    """A TileLayout with no runs (Masks need L, S >= 1; layouts of empty sequences are built by hand)."""
    z = lambda n: torch.zeros(n, dtype=torch.int32, device=device)  # noqa: E731
    return M.TileLayout(L, S, block_q, block_k, z(-(-L // block_q) + 1), z((0, 4)), z(-(-S // block_k) + 1),
                        z((0, 4)))


def run_empty(backend, L, S, device="cpu"):
    """L = 0 or S = 0: out 0, lse -inf, zero gradients."""
    from arkernels.ops.block_sparse_attention import tiling

    q = torch.randn(1, 2, L, 16, device=device, requires_grad=True)
    k, v = (torch.randn(1, 2, S, 16, device=device, requires_grad=True) for _ in range(2))
    lay = empty_layout(L, S, *tiling(16, FP32, device), device)
    out, lse = arkernels.block_sparse_attention(q, k, v, lay, return_lse=True, backend=backend)
    assert out.shape == (1, 2, L, 16) and (out == 0).all() and torch.isneginf(lse).all()
    out.sum().backward()
    for t in (q, k, v):
        assert (t.grad == 0).all()


@pytest.mark.parametrize("L,S", [(0, 20), (20, 0)], ids=["l0", "s0"])
def test_empty_inputs_reference(L, S):
    run_empty("reference", L, S)


def test_hand_built_layout_is_validated_once(rng):
    """The kernels trust a layout's indices: a hand-built one that names a RULE run without a rule (or a run
    past the tiles) is refused before anything runs, and a valid one is checked only on its first use."""
    from arkernels import masks as M

    q, k, v = (torch.randn(1, 2, 40, 16, generator=rng) for _ in range(3))
    good = M.causal(40).layout(16, 16)  # RULE runs on the diagonal tiles
    bad = M.TileLayout(good.L, good.S, good.block_q, good.block_k, good.q_run_ptr, good.q_runs, good.k_run_ptr,
                       good.k_runs, None)  # RULE runs, no rule
    with pytest.raises(ValueError, match="rule"):
        arkernels.block_sparse_attention(q, k, v, bad, backend="cpu")
    hand = M.TileLayout(good.L, good.S, good.block_q, good.block_k, good.q_run_ptr, good.q_runs, good.k_run_ptr,
                        good.k_runs, good.rule)
    arkernels.block_sparse_attention(q, k, v, hand, backend="cpu")
    assert hand.stats.get("validated") is True


# ---- the Triton kernels compile for the GPU (no GPU needed: triton.compile for an sm_90a target) ----

COMPILE_CASES = [pytest.param(128, BF16, id="d128-bf16"),
                 pytest.param(64, FP16, id="d64-fp16", marks=pytest.mark.slow),
                 pytest.param(256, BF16, id="d256-bf16", marks=pytest.mark.slow),
                 pytest.param(128, FP32, id="d128-fp32", marks=pytest.mark.slow),
                 pytest.param(80, BF16, id="d80-bf16", marks=pytest.mark.slow)]


@pytest.mark.skipif(_backends.triton_interpreted(), reason="compiles for the GPU: run without TRITON_INTERPRET")
@pytest.mark.parametrize("D,dtype", COMPILE_CASES)
@pytest.mark.parametrize("kernel", ["fwd", "preprocess", "dkdv", "dq"])
def test_triton_kernels_compile_for_sm90(kernel, D, dtype):
    """Catches GPU-only compile errors where CI has no GPU (the interpreter accepts more than the compiler);
    the shared memory must fit an H100/H200 block (227 KB)."""
    if not _backends.triton_available():
        pytest.skip("triton is not installed")
    from arkernels.testing.block_sparse_attention_compile import compile_kernel

    assert compile_kernel(kernel, D, dtype).metadata.shared <= 227 * 1024


# ---- the Triton backend on the GPU ----

GPU_CASES = {
    # name: (mask, B, Hq, Hkv, L, S, D, dtype)
    "var_680_bf16": ("var", 16, 16, 16, 680, 680, 64, BF16),
    "scam_bf16_d128": ("scam_gpu", 2, 8, 8, 1024, 1024, 128, BF16),
    "causal_fp16_gqa": ("causal", 2, 8, 2, 1000, 1000, 64, FP16),
    "causal_d256_bf16": ("causal", 1, 4, 2, 700, 700, 256, BF16),
    "causal_d128_fp32": ("causal", 1, 4, 4, 500, 500, 128, FP32),
    "sliding_window_bf16": ("sliding_window", 2, 4, 2, 1100, 1100, 128, BF16),
    "document_bf16_d96": ("document", 1, 4, 2, 900, 900, 96, BF16),
    "tree_prefix_bf16": ("tree", 2, 8, 2, 64, 1064, 128, BF16),
    "from_dense_fp16": ("from_dense", 1, 4, 4, 333, 517, 64, FP16),
    "decode_l1_bf16": ("all", 4, 8, 2, 1, 2048, 128, BF16),
    "far_levels_window_bf16": ("far_levels_window", 1, 4, 2, 700, 700, 64, BF16),
}


def _gpu_mask(name, L, S, rng):
    if name == "var":
        return M.block_causal(var_boundaries((1, 2, 3, 4, 5, 6, 8, 10, 13, 16)))
    if name == "scam_gpu":
        return M.skip_causal(4, L // 8)
    return make_mask(name, L, S, rng)


@gpu
@pytest.mark.parametrize("name", list(GPU_CASES))
def test_triton_cuda_matches_reference(name, rng):
    mask_name, B, Hq, Hkv, L, S, D, dtype = GPU_CASES[name]
    check("triton", mask_name, B=B, Hq=Hq, Hkv=Hkv, L=L, S=S, D=D, dtype=dtype, rng=rng, device="cuda",
          mask=_gpu_mask(mask_name, L, S, rng))


@gpu
def test_triton_cuda_strided_and_auto(rng):
    check("auto", "causal", B=2, Hq=4, Hkv=2, L=300, S=300, D=64, dtype=BF16, rng=rng, device="cuda", strided=True)


@gpu
@pytest.mark.parametrize("mode", ["triton", "dkdv", "fused"])
def test_triton_cuda_backward_is_deterministic(mode, rng, monkeypatch):
    """Two runs give bitwise equal gradients (GQA: dK/dV summed over the group in one program): "triton" and "dkdv"
    always; "fused" (the default; dQ by reductions in no fixed order) under torch.use_deterministic_algorithms,
    where it runs as "dkdv"."""
    monkeypatch.setattr(BSA_OPS, "CUDA_BACKWARD", mode)
    mask = make_mask("block_causal_var", 155, 155, rng)
    q = torch.randn(2, 8, 155, 64, generator=rng).to("cuda", BF16)
    k, v = (torch.randn(2, 2, 155, 64, generator=rng).to("cuda", BF16) for _ in range(2))
    g = torch.randn(2, 8, 155, 64, generator=rng).to("cuda", BF16)
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    if mode == "fused":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        runs = []
        for _ in range(2):
            leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
            runs.append(torch.autograd.grad(arkernels.block_sparse_attention(*leaves, mask), leaves, g))
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@gpu
@pytest.mark.slow
def test_triton_cuda_64bit_offsets():
    """B * H * L * D > 2^31: the last head's last queries (sliding window) against the reference on a slice."""
    B, H, L, D, w, n = 1, 128, 131072 + 128, 128, 128, 512
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (inputs.normal_on_device((B, H, L, D), dtype=BF16, device="cuda", generator=gen) for _ in range(3))
    assert q.numel() > 2**31
    q.requires_grad_(True)
    out = arkernels.block_sparse_attention(q, k, v, M.sliding_window(w, L))
    g = torch.zeros_like(out)
    g[:, -1:, -n:] = inputs.normal_on_device((B, 1, n, D), dtype=BF16, device="cuda", generator=gen)
    (dq,) = torch.autograd.grad(out, (q,), g)
    s0 = L - n - w + 1  # the keys the last n queries see
    qs = q.detach()[:, -1:, -n:].double().requires_grad_(True)
    r_out, _ = block_sparse_attention_ref(qs, k[:, -1:, s0:].double(), v[:, -1:, s0:].double(),
                                          M.sliding_window(w, n, L - s0).to_dense())
    (r_dq,) = torch.autograd.grad(r_out, (qs,), g[:, -1:, -n:].double())
    assert_close_to_reference(out[:, -1:, -n:], r_out, rel_tol=REL_TOL[BF16], name="out")
    assert_close_to_reference(dq[:, -1:, -n:], r_dq, rel_tol=2 * REL_TOL[BF16], name="dq")


@gpu
def test_triton_cuda_empty_mask(rng):
    check("triton", "none", B=1, Hq=2, Hkv=1, L=130, S=70, D=64, dtype=BF16, rng=rng, device="cuda")


@gpu
def test_triton_cuda_torch_compile_fullgraph(rng):
    _compile_check("triton", "cuda", rng)


# ---- backend "cuda" on the GPU: the Hopper CUDA forward, the Triton backward on the same layout ----

HOPPER = HAS_CUDA and torch.cuda.get_device_capability() == (9, 0)
hopper = pytest.mark.skipif(not HOPPER, reason="backend 'cuda' runs on sm_90 GPUs only (H100 / H200)")

CUDA_CASES = {
    # name: (mask, B, Hq, Hkv, L, S, D, dtype)
    "causal_d64_bf16_gqa": ("causal", 2, 8, 2, 1000, 1000, 64, BF16),
    "causal_d128_fp16": ("causal", 1, 4, 4, 700, 700, 128, FP16),
    "causal_prefix_keys_d128_bf16": ("causal", 2, 4, 2, 300, 1100, 128, BF16),
    "causal_prefix_keys_d64_fp16_gqa": ("causal", 1, 8, 1, 77, 777, 64, FP16),
    "sliding_window_d128_bf16_gqa": ("sliding_window", 2, 4, 2, 1100, 1100, 128, BF16),
    "sliding_window_d64_fp16": ("sliding_window", 1, 4, 4, 513, 513, 64, FP16),
    "var_680_d64_bf16": ("var", 4, 8, 8, 680, 680, 64, BF16),
    "var_155_d128_fp16_gqa": ("block_causal_var", 2, 4, 2, 155, 155, 128, FP16),
    "scam_d128_bf16": ("scam_gpu", 2, 8, 8, 1024, 1024, 128, BF16),
    "scam_d64_fp16_gqa": ("scam", 1, 4, 2, 390, 390, 64, FP16),
    "document_d64_bf16_gqa": ("document", 1, 4, 2, 900, 900, 64, BF16),
    "document_d128_fp16": ("document", 1, 2, 1, 333, 333, 128, FP16),
    "tree_prefix_bits_d128_bf16": ("tree", 2, 8, 2, 64, 1064, 128, BF16),
    "tree_prefix_bits_d64_fp16": ("tree", 1, 4, 4, 37, 201, 64, FP16),
    "from_dense_bits_empty_row_d64_fp16": ("from_dense", 1, 4, 4, 333, 517, 64, FP16),
    "from_dense_bits_empty_row_d128_bf16": ("from_dense", 2, 2, 1, 250, 190, 128, BF16),
    "decode_l1_d128_bf16_gqa": ("all", 4, 8, 2, 1, 2048, 128, BF16),
    "decode_l1_d64_fp16": ("all", 2, 4, 1, 1, 300, 64, FP16),
    "empty_mask_d64_bf16": ("none", 1, 2, 1, 130, 70, 64, BF16),
    "far_levels_window_d64_bf16": ("far_levels_window", 1, 4, 2, 700, 700, 64, BF16),
    "far_levels_window_d128_fp16": ("far_levels_window", 1, 2, 1, 333, 333, 128, FP16),
}


@gpu
@hopper
@pytest.mark.parametrize("name", list(CUDA_CASES))
def test_cuda_matches_reference(name, rng):
    mask_name, B, Hq, Hkv, L, S, D, dtype = CUDA_CASES[name]
    check("cuda", mask_name, B=B, Hq=Hq, Hkv=Hkv, L=L, S=S, D=D, dtype=dtype, rng=rng, device="cuda",
          mask=_gpu_mask(mask_name, L, S, rng))


@gpu
@hopper
def test_cuda_batch_broadcast_kv(rng):
    """k, v expanded over the batch (stride 0, which TMA cannot describe): copied by the binding, same result."""
    q = torch.randn(3, 4, 150, 64, generator=rng).to("cuda", BF16)
    k1, v1 = (torch.randn(1, 2, 150, 64, generator=rng).to("cuda", BF16) for _ in range(2))
    k, v = k1.expand(3, -1, -1, -1), v1.expand(3, -1, -1, -1)
    mask = M.causal(150)
    out = arkernels.block_sparse_attention(q, k, v, mask, backend="cuda")
    assert torch.equal(out, arkernels.block_sparse_attention(q, k.contiguous(), v.contiguous(), mask, backend="cuda"))


@gpu
@hopper
def test_cuda_strided_kv_no_lse(rng):
    """k, v as halves of one projection (row stride 2D: read in place), only out in the loss."""
    check("cuda", "causal", B=2, Hq=4, Hkv=2, L=300, S=300, D=64, dtype=BF16, rng=rng, device="cuda", strided=True,
          use_lse=False, scale=0.1)


@gpu
@hopper
def test_cuda_unaligned_inputs_are_copied(rng):
    """Inputs the kernel cannot read with TMA (a base 8 bytes off 16-byte alignment, a row stride not a multiple
    of 8 elements, a strided head dim) are copied by the binding: the same bits as contiguous inputs."""
    B, H, L, D = 1, 2, 200, 64
    n = B * H * L * D
    q = torch.randn(n + 4, generator=rng).to("cuda", BF16)[4:].view(B, H, L, D)
    k = torch.randn(B, H, L, D + 4, generator=rng).to("cuda", BF16)[..., :D]
    v = torch.randn(B, H, D, L, generator=rng).to("cuda", BF16).transpose(2, 3)
    assert q.data_ptr() % 16 != 0 and k.stride(2) % 8 != 0 and v.stride(-1) != 1
    mask = M.causal(L)
    a = arkernels.block_sparse_attention(q, k, v, mask, return_lse=True, backend="cuda")
    b = arkernels.block_sparse_attention(q.contiguous(), k.contiguous(), v.contiguous(), mask, return_lse=True,
                                         backend="cuda")
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@gpu
@hopper
def test_cuda_and_triton_agree(rng):
    """Same layout, same backward: the two forwards agree to bf16 rounding, and so do the gradients."""
    mask = _gpu_mask("var", 680, 680, rng)
    q, k, v = (torch.randn(2, 4, 680, 128, generator=rng).to("cuda", BF16) for _ in range(3))
    g = torch.randn(2, 4, 680, 128, generator=rng).to("cuda", BF16)
    res = []
    for backend in ("cuda", "triton"):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = arkernels.block_sparse_attention(*leaves, mask, backend=backend)
        res.append([out, *torch.autograd.grad(out, leaves, g)])
    for name, a, b in zip(("out", "dq", "dk", "dv"), *res):
        assert_close_to_reference(a, b.double(), rel_tol=REL_TOL[BF16], name=name)


@gpu
@hopper
def test_auto_takes_cuda_at_d128_only(rng):
    """"auto" runs the CUDA forward at D 128, with or without gradients (bit-equal to backend "cuda"), and Triton
    at D 64 (bit-equal to backend "triton"); the two kernels' outputs differ in rounding."""
    mask = _gpu_mask("var", 680, 680, rng)
    for D, grad, want in ((128, False, "cuda"), (128, True, "cuda"), (64, False, "triton"), (64, True, "triton")):
        q, k, v = (torch.randn(1, 2, 680, D, generator=rng).to("cuda", BF16).requires_grad_(grad) for _ in range(3))
        with torch.set_grad_enabled(grad):
            got = {b: arkernels.block_sparse_attention(q, k, v, mask, backend=b) for b in ("auto", "cuda", "triton")}
        other = "triton" if want == "cuda" else "cuda"
        assert torch.equal(got["auto"], got[want]), (D, grad)
        assert not torch.equal(got["auto"], got[other]), (D, grad, "the two backends should round differently")


@pytest.fixture(params=["dkdv", "fused"])
def cuda_backward(request, monkeypatch):
    """The backward of the CUDA forward on the Hopper dK / dV kernel (ops.block_sparse_attention.CUDA_BACKWARD):
    with the Triton dQ ("dkdv") and with dQ by reduce-adds in the same kernel ("fused")."""
    monkeypatch.setattr(BSA_OPS, "CUDA_BACKWARD", request.param)
    return BSA_OPS


@gpu
@hopper
@pytest.mark.parametrize("name", list(CUDA_CASES))
def test_cuda_backward_kernel_matches_reference(name, rng, cuda_backward):
    """The Hopper backward kernel (Triton dQ beside it, or dQ fused) against the float64 reference: every case of
    the CUDA forward, whose 128 x 128 layout it takes."""
    mask_name, B, Hq, Hkv, L, S, D, dtype = CUDA_CASES[name]
    assert cuda_backward._dkdv_cuda_runs(D, 128, 128, dtype, torch.device("cuda")), "the kernel would not be taken"
    check("cuda", mask_name, B=B, Hq=Hq, Hkv=Hkv, L=L, S=S, D=D, dtype=dtype, rng=rng, device="cuda",
          mask=_gpu_mask(mask_name, L, S, rng))


@gpu
@hopper
@pytest.mark.parametrize("name", ["var_680_d64_bf16", "causal_d128_fp16", "tree_prefix_bits_d64_fp16"])
def test_triton_forward_with_cuda_backward_kernel(name, rng, cuda_backward):
    """CUDA_BACKWARD applies behind the Triton forward too (same 128 x 128 layout): forward and every gradient
    against the float64 reference."""
    mask_name, B, Hq, Hkv, L, S, D, dtype = CUDA_CASES[name]
    check("triton", mask_name, B=B, Hq=Hq, Hkv=Hkv, L=L, S=S, D=D, dtype=dtype, rng=rng, device="cuda",
          mask=_gpu_mask(mask_name, L, S, rng))


@gpu
@hopper
def test_cuda_backward_kernel_vs_triton(rng, cuda_backward):
    """dK and dV are deterministic (written once; dQ too with "dkdv", not with "fused": reduce-adds in no fixed order); every gradient
    equals the Triton backward's to bf16 rounding."""
    mask = _gpu_mask("causal", 700, 700, rng)
    q = torch.randn(2, 8, 700, 128, generator=rng).to("cuda", BF16)
    k, v = (torch.randn(2, 2, 700, 128, generator=rng).to("cuda", BF16) for _ in range(2))
    g = torch.randn(2, 8, 700, 128, generator=rng).to("cuda", BF16)

    def grads():
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = arkernels.block_sparse_attention(*leaves, mask, backend="cuda")
        return torch.autograd.grad(out, leaves, g)

    a, b = grads(), grads()
    deterministic = ("dk", "dv") if cuda_backward.CUDA_BACKWARD == "fused" else ("dq", "dk", "dv")
    for name, x, y in zip(("dq", "dk", "dv"), a, b):
        if name in deterministic:
            assert torch.equal(x, y), name
    cuda_backward.CUDA_BACKWARD = "triton"
    t = grads()
    for name, x, y in zip(("dq", "dk", "dv"), a, t):
        assert_close_to_reference(x, y.double(), rel_tol=REL_TOL[BF16], name=name)


def test_cuda_backward_unknown_mode_raises(monkeypatch):
    """The GPU backward checks the CUDA_BACKWARD setting of the op's module before anything runs."""
    monkeypatch.setattr(BSA_OPS, "CUDA_BACKWARD", "fast")
    with pytest.raises(ValueError, match=r"CUDA_BACKWARD: expected one of .*'fused'.*got 'fast'"):
        BSA_OPS._gpu_backward_op(*([None] * 7 + [None] * 12 + [-1, 128, 128, 0.125]))


@pytest.mark.parametrize("mode", ["triton", "dkdv", "fused"])
def test_cuda_backward_mode_under_deterministic_algorithms(mode, monkeypatch):
    """"fused" (dQ by reductions in no fixed order) gives way to "dkdv" while torch's deterministic algorithms are on;
    the other modes are deterministic and stay."""
    monkeypatch.setattr(BSA_OPS, "CUDA_BACKWARD", mode)
    assert BSA_OPS._cuda_backward_mode() == mode
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert BSA_OPS._cuda_backward_mode() == ("dkdv" if mode == "fused" else mode)
    finally:
        torch.use_deterministic_algorithms(previous)


CUDA_UNSUPPORTED = {
    # name: (D, dtype, message)
    "fp32": (64, FP32, r"bfloat16 or float16, got float32"),
    "d256": (256, BF16, r"head dim D = 64 or 128, got D = 256"),
    "d96": (96, FP16, r"head dim D = 64 or 128, got D = 96"),
}


@gpu
@pytest.mark.parametrize("name", list(CUDA_UNSUPPORTED))
def test_cuda_unsupported_cases_raise(name, rng):
    """No silent fallback to Triton: a case the Hopper kernel does not run raises, naming why."""
    D, dtype, pattern = CUDA_UNSUPPORTED[name]
    q, k, v = (torch.randn(1, 2, 64, D, generator=rng).to("cuda", dtype) for _ in range(3))
    with pytest.raises(ValueError, match=r"backend: 'cuda' cannot run here: .*" + pattern):
        arkernels.block_sparse_attention(q, k, v, M.causal(64), backend="cuda")


@gpu
@pytest.mark.skipif(HOPPER, reason="checks the refusal on a GPU other than sm_90")
def test_cuda_backend_on_other_gpus_raises(rng):
    q, k, v = (torch.randn(1, 2, 64, 64, generator=rng).to("cuda", BF16) for _ in range(3))
    with pytest.raises(ValueError, match=r"backend: 'cuda' cannot run here: .*Hopper GPU \(sm_90"):
        arkernels.block_sparse_attention(q, k, v, M.causal(64), backend="cuda")


@gpu
def test_native_op_cuda_refusal_is_a_value_error(rng):
    """The C API's refusal (ARK_ERROR_INVALID_ARGUMENT) reaches Python as a ValueError carrying its message."""
    args = _op_args(rng, "cuda", FP32, (128, 64))
    with pytest.raises(ValueError, match=r"block_sparse_attention_fwd: dtype: the CUDA forward supports ARK_BFLOAT16"):
        torch.ops.arkernels.block_sparse_attention_fwd(*args)


@gpu
@hopper
def test_cuda_torch_compile_fullgraph(rng):
    _compile_check("cuda", "cuda", rng)


# Last: opcheck of the Triton and the native op on CUDA (a failing fake kernel can break the CUDA context).
@gpu
@pytest.mark.parametrize("dtype", [FP32, BF16], ids=["fp32", "bf16"])
def test_opcheck_block_sparse_attention_triton_cuda(dtype, rng):
    from arkernels.ops.block_sparse_attention import tiling

    torch.library.opcheck(torch.ops.arkernels.block_sparse_attention_triton.default,
                          _op_args(rng, "cuda", dtype, tiling(64, dtype, "cuda")))


@gpu
@hopper
def test_opcheck_block_sparse_attention_fwd_cuda(rng):
    from arkernels.ops.block_sparse_attention import cuda_tiling

    torch.library.opcheck(torch.ops.arkernels.block_sparse_attention_fwd.default,
                          _op_args(rng, "cuda", BF16, cuda_tiling(64, BF16, "cuda")))


@gpu
@hopper
@pytest.mark.parametrize("with_dq", [False, True], ids=["dkdv", "fused"])
def test_opcheck_block_sparse_attention_bwd_dkdv_cuda(with_dq, rng):
    torch.library.opcheck(torch.ops.arkernels.block_sparse_attention_bwd_dkdv.default,
                          _dkdv_args(rng, "cuda", with_dq=with_dq))
