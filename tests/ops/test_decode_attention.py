"""arkernels.decode_attention: new queries against per-row KV caches of different lengths.

The contract: out and lse against a float64 oracle written here (one query at a time: softmax over the
visible keys), for the cpu / reference backends everywhere and the triton backend on CUDA (the Triton
kernels also run through the interpreter in test_decode_attention_triton_interpreter.py, which reuses
`check`); bad inputs raise naming the argument; outputs NaN-poisoned.
"""
from __future__ import annotations

import math

import pytest
import torch

import arkernels
from arkernels import _outputs, masks
from arkernels.ops import _backends
from arkernels.testing.numerics import REL_TOL, assert_close_to_reference

FP32, BF16, FP16 = torch.float32, torch.bfloat16, torch.float16


@pytest.fixture(autouse=True)
def _poisoned_outputs():
    with _outputs.poisoned_outputs():
        yield


def oracle(q, k, v, seqlens, new_mask, scale):
    """float64, one (row, head) at a time: softmax of each query over its visible keys."""
    B, Hq, Lq, D = q.shape
    G = Hq // k.shape[1]
    out = torch.zeros(B, Hq, Lq, D, dtype=torch.float64)
    lse = torch.full((B, Hq, Lq), float("-inf"), dtype=torch.float64)
    for b in range(B):
        n = int(seqlens[b])
        vis = torch.ones(Lq, n, dtype=torch.bool)  # older keys: every query; the newest Lq: new_mask
        if new_mask is not None:
            vis[:, n - Lq:] = new_mask
        seen = vis.any(1)
        for h in range(Hq):
            kk, vv = k[b, h // G, :n].double(), v[b, h // G, :n].double()
            s = (q[b, h].double() @ kk.T * scale).masked_fill(~vis, float("-inf"))[seen]
            lse[b, h, seen] = torch.logsumexp(s, 1)
            out[b, h, seen] = torch.softmax(s, 1) @ vv
    return out, lse


def make_inputs(rng, B, Hq, Hkv, Lq, S_max, D, dtype, device, seqlens=None, strided=False):
    def randn(*shape):
        return torch.randn(*shape, generator=rng).to(dtype).to(device)

    q = randn(B, Hq, Lq, D)
    if strided:  # k, v as slices of one larger cache (head axis and rows strided)
        kv = randn(B, Hkv, 2, S_max + 5, D)
        k, v = kv[:, :, 0, 3:S_max + 3], kv[:, :, 1, :S_max]
    else:
        k, v = randn(B, Hkv, S_max, D), randn(B, Hkv, S_max, D)
    if seqlens is None:
        seqlens = torch.randint(Lq, S_max + 1, (B,), generator=rng)
    return q, k, v, torch.as_tensor(seqlens, dtype=torch.int32).to(device)


def new_mask_of(kind, Lq, rng):
    if kind == "none":
        return None
    if kind == "causal":
        return masks.causal(Lq)
    if kind == "tree":  # random tree: parent[i] < i
        parents = [-1] + [int(torch.randint(0, i, (1,), generator=rng)) for i in range(1, Lq)]
        return masks.tree(parents)
    if kind == "dense":  # a bool tensor with an empty row
        m = torch.rand(Lq, Lq, generator=rng) < 0.5
        m[0] = False
        return m
    raise ValueError(kind)


def check(backend, *, B, Hq, Hkv, Lq, S_max, D, dtype, rng, mask="none", device="cpu", seqlens=None, strided=False,
          num_splits=None, scale=None):
    q, k, v, sl = make_inputs(rng, B, Hq, Hkv, Lq, S_max, D, dtype, device, seqlens, strided)
    m = new_mask_of(mask, Lq, rng)
    with torch.no_grad():
        out, lse = arkernels.decode_attention(q, k, v, sl, m, scale=scale, return_lse=True, num_splits=num_splits,
                                              backend=backend)
    dense = None if m is None else (m.to_dense() if isinstance(m, masks.Mask) else m)
    ref, ref_lse = oracle(q.cpu(), k.cpu(), v.cpu(), sl.cpu(), None if dense is None else dense.cpu(),
                          1 / math.sqrt(D) if scale is None else scale)
    assert out.dtype == dtype and out.shape == (B, Hq, Lq, D) and lse.dtype == FP32
    tol = REL_TOL[dtype] if dtype != FP32 else 2e-5
    assert_close_to_reference(out, ref, rel_tol=tol, max_abs=8 * tol, name="out")
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse.cpu()), finite), "lse: -inf exactly where a query sees no key"
    assert_close_to_reference(lse.cpu()[finite], ref_lse[finite], rel_tol=1e-5 if dtype == FP32 else 1e-3, name="lse")
    return out


CPU_CASES = {
    "one_query_gqa": dict(B=3, Hq=4, Hkv=2, Lq=1, S_max=37, D=16, dtype=FP32),
    "chunk_causal": dict(B=2, Hq=2, Hkv=2, Lq=5, S_max=40, D=24, dtype=FP32, mask="causal"),
    "tree_bf16": dict(B=2, Hq=4, Hkv=1, Lq=7, S_max=30, D=16, dtype=BF16, mask="tree"),
    "dense_with_empty_row": dict(B=2, Hq=2, Hkv=1, Lq=6, S_max=6, D=16, dtype=FP32, mask="dense", seqlens=[6, 6]),
    "strided_cache": dict(B=2, Hq=2, Hkv=2, Lq=3, S_max=20, D=16, dtype=FP32, strided=True),
}


@pytest.mark.parametrize("backend", ["cpu", "reference", "auto"])
@pytest.mark.parametrize("name", list(CPU_CASES))
def test_cpu_backends_match_oracle(backend, name, rng):
    check(backend, rng=rng, **CPU_CASES[name])


def test_empty_batch_and_scale(rng):
    out = check("cpu", B=0, Hq=2, Hkv=1, Lq=1, S_max=4, D=8, dtype=FP32, rng=rng, seqlens=[])
    assert out.numel() == 0
    check("cpu", B=1, Hq=1, Hkv=1, Lq=2, S_max=9, D=8, dtype=FP32, rng=rng, scale=0.3)


def test_mask_object_is_decoded_once(rng, monkeypatch):
    """A Mask (a speculation tree reused every step) is turned into its dense bytes once, not per call."""
    tree = masks.tree([-1, 0, 0, 1])
    q, k, v, sl = make_inputs(rng, 2, 4, 2, 4, 10, 16, FP32, "cpu", seqlens=[5, 10])
    first = arkernels.decode_attention(q, k, v, sl, mask=tree, backend="cpu")
    monkeypatch.setattr(tree, "to_dense", lambda: pytest.fail("the mask was decoded again"))
    again = arkernels.decode_attention(q, k, v, sl, mask=tree, backend="cpu")
    assert torch.equal(first, again)


def _args(rng, **over):
    q, k, v, sl = make_inputs(rng, 2, 4, 2, 3, 10, 16, FP32, "cpu", seqlens=[5, 10])
    args = dict(q=q, k_cache=k, v_cache=v, seqlens=sl)
    args.update(over)
    return args


BAD = {
    "q_rank": (lambda r: _args(r, q=torch.zeros(2, 4, 16)), ValueError, r"q: expected 4 dimensions"),
    "k_heads": (lambda r: _args(r, k_cache=torch.zeros(2, 3, 10, 16), v_cache=torch.zeros(2, 3, 10, 16)), ValueError,
                r"k_cache: expected a number of kv heads Hkv that divides Hq = 4, got Hkv = 3"),
    "v_shape": (lambda r: _args(r, v_cache=torch.zeros(2, 2, 9, 16)), ValueError, r"v_cache: expected the shape"),
    "k_dtype": (lambda r: _args(r, k_cache=torch.zeros(2, 2, 10, 16, dtype=BF16)), TypeError, r"k_cache.*bfloat16"),
    "seqlens_dtype": (lambda r: _args(r, seqlens=torch.tensor([5.0, 10.0])), TypeError, r"seqlens.*int32, int64"),
    "seqlens_shape": (lambda r: _args(r, seqlens=torch.tensor([5, 6, 7])), ValueError, r"seqlens: expected shape \(2,\)"),
    "seqlens_short": (lambda r: _args(r, seqlens=torch.tensor([2, 10])), ValueError,
                      r"seqlens: expected values in \[Lq, S_max\] = \[3, 10\].*got 2"),
    "seqlens_long": (lambda r: _args(r, seqlens=torch.tensor([5, 11])), ValueError, r"got 11"),
    "mask_shape": (lambda r: _args(r, mask=torch.ones(3, 4, dtype=torch.bool)), ValueError,
                   r"mask: expected shape \(Lq, Lq\) = \(3, 3\)"),
    "mask_dtype": (lambda r: _args(r, mask=torch.ones(3, 3)), TypeError, r"mask: expected None, a bool tensor"),
    "mask_object_shape": (lambda r: _args(r, mask=masks.causal(4)), ValueError, r"mask: expected a mask over the newest"),
    "splits": (lambda r: _args(r, num_splits=0), ValueError, r"num_splits: expected None or an int >= 1"),
    "backend": (lambda r: _args(r, backend="cuda"), ValueError, r"backend: 'cuda' cannot run decode_attention"),
    "head_dim": (lambda r: _args(r, q=torch.zeros(2, 4, 3, 300), k_cache=torch.zeros(2, 2, 10, 300),
                                 v_cache=torch.zeros(2, 2, 10, 300)), ValueError, r"head dim D in \[1, 256\]"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises(case, rng):
    make, exc, pattern = BAD[case]
    with pytest.raises(exc, match=pattern):
        with torch.no_grad():
            arkernels.decode_attention(**make(rng))


def test_requires_grad_is_refused(rng):
    args = _args(rng)
    args["q"].requires_grad_(True)
    with pytest.raises(ValueError, match=r"q: requires grad, but decode_attention has no backward"):
        arkernels.decode_attention(**args)


# ---- CUDA: the Triton kernels ----

GPU_CASES = {
    "decode_gqa_bf16_d128": dict(B=8, Hq=32, Hkv=8, Lq=1, S_max=4097, D=128, dtype=BF16),
    "decode_fp16_d64": dict(B=5, Hq=16, Hkv=16, Lq=1, S_max=1000, D=64, dtype=FP16),
    "tree_bf16_d128": dict(B=4, Hq=16, Hkv=4, Lq=23, S_max=2000, D=128, dtype=BF16, mask="tree"),
    "chunk_causal_d256": dict(B=2, Hq=8, Hkv=2, Lq=16, S_max=700, D=256, dtype=BF16, mask="causal"),
    "var_scale_d64": dict(B=4, Hq=16, Hkv=16, Lq=256, S_max=680, D=64, dtype=BF16, seqlens=[680] * 4),
    "fp32_strided": dict(B=3, Hq=4, Hkv=2, Lq=4, S_max=333, D=64, dtype=FP32, strided=True, mask="dense"),
}


@pytest.mark.gpu
@pytest.mark.parametrize("splits", [None, 1, 7])
@pytest.mark.parametrize("name", list(GPU_CASES))
def test_triton_matches_oracle_cuda(name, splits, rng):
    check("triton", rng=rng, device="cuda", num_splits=splits, **GPU_CASES[name])


@pytest.mark.gpu
@pytest.mark.slow
def test_triton_64bit_offsets_cuda(rng):
    """A cache of more than 2^31 elements: row 1 starts past 2^31 (its short length keeps the oracle cheap)."""
    S, D = (1 << 25) + 3, 64  # (2, 1, S, D) bf16: 2^31 + 192 elements per row, 8.6 GB per tensor
    k = torch.empty(2, 1, S, D, device="cuda", dtype=BF16).normal_()
    v = torch.empty(2, 1, S, D, device="cuda", dtype=BF16).normal_()
    q = torch.randn(2, 2, 3, D, generator=rng).to("cuda", BF16)
    seqlens = torch.tensor([50, 70], dtype=torch.int32, device="cuda")
    with torch.no_grad():
        out = arkernels.decode_attention(q, k, v, seqlens, masks.causal(3), num_splits=1)
    ref, _ = oracle(q.cpu(), k[:, :, :70].cpu(), v[:, :, :70].cpu(), seqlens.cpu(), masks.causal(3).to_dense(),
                    1 / math.sqrt(D))
    assert_close_to_reference(out, ref, rel_tol=REL_TOL[BF16], name="out")


def opcheck_triton_op(device, rng):
    """torch.library.opcheck of arkernels::decode_attention_triton (schema, fake kernel, dispatch), with a
    mask and two splits. CUDA only: under TRITON_INTERPRET=1 opcheck's fake-tensor pass runs the interpreter on
    fake tensors, which it cannot do."""
    q, k, v, sl = make_inputs(rng, 2, 4, 2, 3, 40, 16, FP32, device)
    mask = torch.tril(torch.ones(3, 3, dtype=torch.int8, device=device))
    torch.library.opcheck(torch.ops.arkernels.decode_attention_triton.default, (q, k, v, sl, mask, 0.25, 2))


@pytest.mark.gpu
def test_opcheck_triton_cuda(rng):
    opcheck_triton_op("cuda", rng)


@pytest.mark.gpu
def test_triton_under_torch_compile_cuda(rng):
    q, k, v, sl = make_inputs(rng, 2, 4, 2, 3, 100, 64, BF16, "cuda")
    m = torch.tril(torch.ones(3, 3, dtype=torch.bool, device="cuda"))
    fn = torch.compile(lambda *a: arkernels.decode_attention(*a), fullgraph=True)
    with torch.no_grad():
        eager = arkernels.decode_attention(q, k, v, sl, m)
        compiled = fn(q, k, v, sl, m)
    assert torch.equal(eager, compiled)


# ---- the Triton kernels compile for the GPU (no GPU needed: an sm_90a target) ----

@pytest.mark.skipif(_backends.triton_interpreted(), reason="compiles for the GPU: run without TRITON_INTERPRET")
@pytest.mark.parametrize("D,dtype,has_mask", [(128, BF16, False), (64, FP16, True), (256, BF16, True),
                                              (128, FP32, False)], ids=["d128-bf16", "d64-fp16-mask",
                                                                        "d256-bf16-mask", "d128-fp32"])
def test_triton_kernels_compile_for_sm90(D, dtype, has_mask):
    pytest.importorskip("triton")
    from arkernels.testing.triton_compile import compile_for_sm90
    from arkernels.triton_kernels import decode_attention as tk

    elem = {FP32: "*fp32", BF16: "*bf16", FP16: "*fp16"}[dtype]
    cfg = tk.config(D, "cuda")
    block_d = max(16, 1 << (D - 1).bit_length())
    pointers = dict(Q=elem, K=elem, V=elem, SEQLENS="*i32", NEW_MASK="*i8", OUT=elem, LSE="*fp32",
                    O_PART="*fp32", LSE_PART="*fp32")
    types = {n: pointers.get(n, "fp32" if n == "qk_scale" else "i32") for n in tk._decode_attention_split_kernel.arg_names}
    for direct in (True, False):
        compiled = compile_for_sm90(tk._decode_attention_split_kernel, types, dict(
            HAS_MASK=has_mask, DIRECT=direct, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_D=block_d,
            PREC="ieee" if dtype == FP32 else "tf32"), num_warps=cfg["num_warps"])
        assert compiled.metadata.shared <= 227 * 1024
    combine = tk._decode_attention_combine_kernel
    compile_for_sm90(combine, {n: pointers.get(n, "i32") if n not in ("OUT",) else elem for n in combine.arg_names},
                     dict(BLOCK_D=block_d), num_warps=2)
