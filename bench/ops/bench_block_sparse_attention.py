"""Benchmark of arkernels.block_sparse_attention against FlexAttention (compiled, same mask) and SDPA.

Registered in bench/registry.py before its first GPU run (written without a GPU: its CPU cases ran; the
GPU cases are unchecked).

Providers:
* ``arkernels-triton``: the op with the mask (a Mask; its layout is built once, outside the timing).
* ``arkernels-cuda``: the Hopper CUDA forward (wgmma + TMA; backend "cuda") with the Triton backward, on the
  same layout as the Triton provider's (``cuda_tiling`` = ``tiling``: 128 x 128).
* ``arkernels-cpu``: the cpu backend (PyTorch over query tiles), at the CPU cases.
* ``flex``: ``torch.compile(flex_attention)`` with ``arkernels.masks.to_flex_block_mask(mask, 128)`` (the
  same mask: FULL tiles as full blocks, partial tiles through a mask_mod evaluating our rule).
* ``sdpa``: ``F.scaled_dot_product_attention``: ``is_causal=True`` for the causal case (FlashAttention
  inside), else a dense (L, S) bool ``attn_mask`` (memory-efficient / math kernels).
* ``reference``: the dense PyTorch reference, at the small (CPU) cases only.

Cases (CUDA, bf16, mode fwd and fwd+bwd): VAR (16, 16, 680, 64) (the headline: scale-wise block-causal,
10 scales); SCAM 16 blocks of 256 at (2, 16, 8192, 128); causal (4, 16, 4096, 128); sliding window 1024
at (2, 16, 8192, 128). Shapes are (B, H, L, D), H = Hq = Hkv, L = S.

FLOPs count visible (q, k) pairs only: forward 4 D per pair (QK^T and PV), backward 10 D (five products),
so fwd+bwd = 3.5x forward. Bytes: q, k, v read and out written (fwd); plus dO, O read and dq, dk, dv
written (fwd+bwd).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.common import ms, record_error, run_providers
from bench.registry import MODES, Case, Row
from bench.timing import input_sets, rotating, time_ms

OP = "block_sparse_attention"
PEER = "flex"
SWEEP_AXIS = "L"

PROVIDERS = ("reference", "arkernels-triton", "arkernels-cuda", "arkernels-cpu", PEER, "sdpa")
_BACKEND = {"arkernels-triton": "triton", "arkernels-cuda": "cuda", "arkernels-cpu": "cpu"}

# name -> (B, H, L, D, mask kind, mask parameter)
SHAPES = {
    "cuda": {
        "var": ((16, 16, 680, 64), "var", None),
        "scam": ((2, 16, 8192, 128), "scam", 256),
        "causal": ((4, 16, 4096, 128), "causal", None),
        "sliding_window": ((2, 16, 8192, 128), "sliding_window", 1024),
    },
    "cpu": {
        "var": ((1, 2, 155, 64), "var_small", None),
        "causal": ((1, 2, 256, 64), "causal", None),
    },
}
VAR_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


# ---------------------------------------------------------------- masks

_mask_cache: dict = {}


def make_mask(kind: str, L: int, param):
    key = (kind, L, param)
    if key not in _mask_cache:
        from arkernels import masks

        if kind in ("var", "var_small"):
            ends = [0]
            for p in (VAR_PATCH_NUMS if kind == "var" else VAR_PATCH_NUMS[:7]):
                ends.append(ends[-1] + p * p)
            assert ends[-1] == L
            m = masks.block_causal(ends)
        elif kind == "scam":
            m = masks.skip_causal(L // (2 * param), param)
        elif kind == "causal":
            m = masks.causal(L)
        elif kind == "sliding_window":
            m = masks.sliding_window(param, L)
        else:
            raise ValueError(kind)
        _mask_cache[key] = m
    return _mask_cache[key]


# ---------------------------------------------------------------- providers

def providers(device) -> dict[str, str | None]:
    from arkernels.ops import _backends

    dev = torch.device(device)
    out: dict[str, str | None] = {}
    out["reference"] = None if dev.type == "cpu" else "dense (B, H, L, S) scores: timed at the CPU cases only"
    out["arkernels-triton"] = (_backends.unavailable_reason("block_sparse_attention_triton", "triton", dev)
                               if dev.type == "cuda" else
                               "needs a CUDA device (the Triton interpreter on CPU is for tests, not timings)")
    if dev.type == "cuda":
        from arkernels.ops.block_sparse_attention import _cuda_unavailable_reason

        out["arkernels-cuda"] = _cuda_unavailable_reason(128, torch.bfloat16, dev)  # every GPU case: bf16, D 64/128
    else:
        out["arkernels-cuda"] = "the Hopper CUDA kernel: CUDA tensors only"
    out["arkernels-cpu"] = None if dev.type == "cpu" else "CPU tensors only"
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

        out[PEER] = None if dev.type == "cuda" else "CUDA only here (compiled flex on CPU is not the comparison)"
    except ImportError as err:
        out[PEER] = f"not importable ({err})"
    out["sdpa"] = None
    return out


_flex_compiled: list = []


def _flex():
    if not _flex_compiled:
        from torch.nn.attention.flex_attention import flex_attention

        _flex_compiled.append(torch.compile(flex_attention, dynamic=False))
    return _flex_compiled[0]


def _provider_fn(name: str, case: Case):
    """(q, k, v) -> out of provider `name` for this case's mask."""
    B, H, L, D = case.shape
    kind, param = case.params["mask"], case.params["param"]
    mask = make_mask(kind, L, param)
    dev = torch.device(case.device)
    if name in _BACKEND:
        import arkernels
        from arkernels.ops.block_sparse_attention import backend_tiling

        backend = _BACKEND[name]
        tiles = backend_tiling(backend, D, case.dtype, dev)
        mask.layout(*tiles, dev)  # built (and cached by the Mask) outside the timing
        return lambda q, k, v: arkernels.block_sparse_attention(q, k, v, mask, backend=backend)
    if name == "reference":
        from arkernels.reference import block_sparse_attention_ref

        dense = mask.to_dense().to(dev)
        return lambda q, k, v: block_sparse_attention_ref(q, k, v, dense)[0]
    if name == PEER:
        from arkernels.masks import to_flex_block_mask

        block_mask = to_flex_block_mask(mask, 128, dev)
        flex = _flex()
        return lambda q, k, v: flex(q, k, v, block_mask=block_mask)
    if name == "sdpa":
        import torch.nn.functional as F

        if kind == "causal":
            return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
        dense = mask.to_dense().to(dev)
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    raise ValueError(f"unknown provider {name!r}")


# ---------------------------------------------------------------- cases

def _visible(kind: str, L: int, param) -> int:
    return make_mask(kind, L, param).num_visible()


def cases(device, quick: bool) -> list[Case]:
    dev = torch.device(device)
    table = SHAPES["cuda" if dev.type == "cuda" else "cpu"]
    out: list[Case] = []
    for i, (name, (shape, kind, param)) in enumerate(table.items()):
        if quick and i > 0:
            break
        B, H, L, D = shape
        vis = _visible(kind, L, param)
        es = 2
        io = B * H * L * D * es
        for mode in MODES:
            flops = 4.0 * B * H * D * vis * (1 if mode == "fwd" else 3.5)
            nbytes = 4 * io if mode == "fwd" else 4 * io + 5 * io + 3 * io
            tags = ("headline",) if name == "var" else (name,)
            out.append(Case(op=OP, mode=mode, dtype=torch.bfloat16, shape=shape, device=str(dev), bytes=nbytes,
                            flops=flops, x=L, tags=tags, params={"mask": kind, "param": param, "name": name}))
    return out


# ---------------------------------------------------------------- running one case

@dataclass
class _Inputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g: torch.Tensor | None


def _make_inputs(case: Case) -> _Inputs:
    B, H, L, D = case.shape
    dev, dt = torch.device(case.device), case.dtype
    grad = case.mode != "fwd"
    q, k, v = (torch.randn(B, H, L, D, device=dev).to(dt).requires_grad_(grad) for _ in range(3))
    g = torch.randn(B, H, L, D, device=dev).to(dt) if grad else None
    return _Inputs(q, k, v, g)


def _call(fn, x: _Inputs):
    if x.g is None:
        return lambda: fn(x.q, x.k, x.v)
    return lambda: torch.autograd.grad(fn(x.q, x.k, x.v), (x.q, x.k, x.v), x.g)


def _oracle(case: Case, x: _Inputs) -> list[torch.Tensor]:
    """float64 reference on batch row 0, head 0 (heads are independent without GQA): [out] or
    [out, dq, dk, dv] of that slice."""
    from arkernels.reference import block_sparse_attention_ref

    B, H, L, D = case.shape
    dense = make_mask(case.params["mask"], L, case.params["param"]).to_dense().to(x.q.device)
    q, k, v = (t.detach()[:1, :1].double().requires_grad_(x.g is not None) for t in (x.q, x.k, x.v))
    out, _ = block_sparse_attention_ref(q, k, v, dense)
    if x.g is None:
        return [out.detach()]
    grads = torch.autograd.grad(out, (q, k, v), x.g[:1, :1].double())
    return [out.detach(), *grads]


def _check(name: str, fn, x: _Inputs, oracle) -> float:
    import contextlib

    from arkernels._outputs import poisoned_outputs
    from arkernels.testing import relative_error

    with poisoned_outputs() if name.startswith("arkernels") else contextlib.nullcontext():
        out = fn(x.q, x.k, x.v)
        outs = [out]
        if x.g is not None:
            outs += list(torch.autograd.grad(out, (x.q, x.k, x.v), x.g))
    return max(relative_error(o.detach()[:1, :1], r) for o, r in zip(outs, oracle))


def _skip_reason(name: str, case: Case) -> str | None:
    if name == "reference" and case.device.startswith("cuda"):
        return "dense (B, H, L, S) scores: CPU cases only"
    return None


def run(case: Case, providers: list[str]) -> list[Row]:
    from arkernels.testing.numerics import REL_TOL

    torch.manual_seed(0)

    def prepare():
        sets = [_make_inputs(case) for _ in range(input_sets(case.bytes, torch.device(case.device), max_sets=4))]
        return sets, _oracle(case, sets[0])

    def measure(name, prepared, row):
        sets, oracle = prepared
        skip = _skip_reason(name, case)
        if skip is not None:
            row.status, row.note = "skipped", skip
            return
        fn = _provider_fn(name, case)
        # gradients: twice the output bound, as in the tests
        record_error(row, _check(name, fn, sets[0], oracle), 2 * REL_TOL[case.dtype])
        row.time_ms = time_ms(rotating([_call(fn, x) for x in sets]), case.device)
        row.input_sets = len(sets)

    return run_providers(case, providers, prepare, measure)


# ---------------------------------------------------------------- headline

def headline(rows: list[Row], ceilings) -> list[str]:
    mine = [r for r in rows if r.op == OP]
    if not mine:
        return []
    on_gpu = mine[0].device.startswith("cuda")
    lines = ["## block_sparse_attention: VAR (16, 16, 680, 64), SCAM, causal, sliding window (bf16)", "",
             "TFLOP/s count visible (q, k) pairs only. Speedup = flex time / our time. Targets: >= flex on every "
             "mask, >= 85-90 % of SDPA (FlashAttention) TFLOP/s on dense causal."]
    if not on_gpu:
        lines.append("This is a CPU run: nothing below is a GPU measurement.")
    lines += ["", "| case | mode | provider | ms | TFLOP/s | vs flex |", "|---|---|---|---|---|---|"]
    for r in mine:
        tf = "—" if r.tflops is None else f"{r.tflops:.0f}"
        sp = "—" if r.speedup is None else f"{r.speedup:.2f}x"
        lines.append(f"| {r.shape} {','.join(r.tags)} | {r.mode} | {r.provider} | {ms(r)} | {tf} | {sp} |")
    return lines
