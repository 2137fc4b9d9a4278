"""Benchmark of arkernels.decode_attention (new queries against per-row KV caches of different lengths).

Registered in bench/registry.py before its first GPU run (written without a GPU: its CPU cases ran; the GPU
cases are unchecked).

Providers:
* ``arkernels-triton``: the op (split-KV Triton kernels).
* ``sdpa``: ``F.scaled_dot_product_attention`` on the padded cache with a (B, 1, Lq, S_max) bool mask of
  the valid keys and the new-key mask (GQA through ``enable_gqa``): what a user writes without a decode kernel.
* ``reference`` / ``arkernels-cpu``: the PyTorch definition, at the CPU cases only.

Cases (bf16): one token per row with GQA (64 rows, 32 q / 8 kv heads, D 128, caches of 1..4096 keys: the
decode step of an 8B-class model); tree verification (8 rows, 32 nodes of a random tree, same heads, caches
up to 4096); VAR's last scale (16 rows, 256 new tokens against 680 keys, 16 heads, D 64).
Bytes: the valid keys and values read, q read and out written; the roofline is the copy bandwidth.
"""
from __future__ import annotations

import torch

from bench.common import record_error, run_providers
from bench.registry import Case, Row
from bench.timing import time_ms

OP = "decode_attention"
PEER = "sdpa"
SWEEP_AXIS = "S"
PROVIDERS = ("reference", "arkernels-cpu", "arkernels-triton", PEER)

# name -> (B, Hq, Hkv, Lq, S_max, D, mask kind, lengths: "random" (1..S_max, >= Lq) or "full")
SHAPES = {
    "cuda": {
        "decode_gqa": (64, 32, 8, 1, 4096, 128, "none", "random"),
        "tree_verify": (8, 32, 8, 32, 4096, 128, "tree", "random"),
        "var_last_scale": (16, 16, 16, 256, 680, 64, "none", "full"),
    },
    "cpu": {
        "decode_gqa": (4, 8, 2, 1, 512, 64, "none", "random"),
        "tree_verify": (2, 8, 2, 8, 256, 64, "tree", "random"),
    },
}


def providers(device) -> dict[str, str | None]:
    from arkernels.ops import _backends

    dev = torch.device(device)
    return {
        "reference": None if dev.type == "cpu" else "per-row PyTorch definition: CPU cases only",
        "arkernels-cpu": None if dev.type == "cpu" else "CPU tensors only",
        "arkernels-triton": (_backends.unavailable_reason("decode_attention_triton", "triton", dev)
                             if dev.type == "cuda" else "needs a CUDA device"),
        PEER: None,
    }


def cases(device, quick: bool) -> list[Case]:
    dev = torch.device(device)
    out = []
    for i, (name, (B, Hq, Hkv, Lq, S, D, mask, lengths)) in enumerate(SHAPES[dev.type if dev.type == "cuda" else "cpu"]
                                                                      .items()):
        if quick and i > 1:
            break
        mean_len = S if lengths == "full" else (S + Lq) // 2
        es = 2
        nbytes = 2 * B * Hkv * mean_len * D * es + 2 * B * Hq * Lq * D * es
        out.append(Case(op=OP, mode="fwd", dtype=torch.bfloat16, shape=(B, Hq, Hkv, Lq, S, D), device=str(dev),
                        bytes=nbytes, flops=4.0 * B * Hq * Lq * mean_len * D, x=S,
                        tags=("headline",) if name == "decode_gqa" else (name,),
                        params={"mask": mask, "lengths": lengths, "name": name}))
    return out


def _inputs(case: Case):
    B, Hq, Hkv, Lq, S, D = case.shape
    dev, dt = torch.device(case.device), case.dtype
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, Hq, Lq, D, generator=g).to(dt).to(dev)
    k = torch.randn(B, Hkv, S, D, generator=g).to(dt).to(dev)
    v = torch.randn(B, Hkv, S, D, generator=g).to(dt).to(dev)
    if case.params["lengths"] == "full":
        seqlens = torch.full((B,), S, dtype=torch.int32)
    else:  # mean (S + Lq) / 2, every row at least Lq
        seqlens = torch.randint(Lq, S + 1, (B,), generator=g, dtype=torch.int32)
    mask = None
    if case.params["mask"] == "tree":
        from arkernels import masks

        parents = [-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, Lq)]
        mask = masks.tree(parents).to_dense()
    return q, k, v, seqlens.to(dev), None if mask is None else mask.to(dev)


def _sdpa_mask(seqlens, new_mask, Lq: int, S: int):
    """(B, 1, Lq, S) bool: valid keys, and the new-key mask over each row's last Lq keys."""
    pos = torch.arange(S, device=seqlens.device)
    valid = pos[None, :] < seqlens[:, None].long()  # (B, S)
    m = valid[:, None, None, :].expand(-1, 1, Lq, -1).clone()
    if new_mask is not None:
        c = pos[None, :] - (seqlens[:, None].long() - Lq)  # index among the new keys
        is_new = (c >= 0) & valid
        allowed = new_mask[torch.arange(Lq, device=seqlens.device)[:, None, None], c.clamp(0, Lq - 1)[None]]
        m &= (~is_new[:, None, :] | allowed.permute(1, 0, 2))[:, None]
    return m


def _fn(name: str, case: Case, x):
    import arkernels

    q, k, v, seqlens, new_mask = x
    if name in ("arkernels-triton", "arkernels-cpu"):
        backend = "triton" if name == "arkernels-triton" else "cpu"
        return lambda: arkernels.decode_attention(q, k, v, seqlens, new_mask, backend=backend)
    if name == "reference":
        return lambda: arkernels.decode_attention(q, k, v, seqlens, new_mask, backend="reference")
    import torch.nn.functional as F

    Lq, S = case.shape[3], case.shape[4]
    mask = _sdpa_mask(seqlens, new_mask, Lq, S)
    gqa = q.shape[1] != k.shape[1]
    return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def run(case: Case, providers: list[str]) -> list[Row]:
    from arkernels.reference import decode_attention_ref
    from arkernels.testing import relative_error
    from arkernels.testing.numerics import REL_TOL

    def prepare():
        x = _inputs(case)
        q, k, v, seqlens, new_mask = x
        rows = slice(0, 2)  # float64 oracle on two batch rows
        ref, _ = decode_attention_ref(q[rows].double(), k[rows].double(), v[rows].double(), seqlens[rows].cpu(),
                                      None if new_mask is None else new_mask.cpu())
        return x, ref

    def measure(name, prepared, row):
        x, ref = prepared
        fn = _fn(name, case, x)
        with torch.no_grad():
            out = fn()
            record_error(row, relative_error(out[:2], ref), 2 * REL_TOL[case.dtype])
            row.time_ms = time_ms(fn, case.device)

    return run_providers(case, providers, prepare, measure)
