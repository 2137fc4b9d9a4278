"""Pure-PyTorch definition of arkernels.decode_attention: a few new queries per batch row against that row's
KV cache, the rows holding different numbers of keys.

Row b holds seqlens[b] valid keys in k_cache[b, :, :seqlens[b]] (and values likewise); its last Lq keys are
those of the Lq new tokens whose queries are q[b, :, :Lq]. Query i of row b sees every older key
(j < seqlens[b] - Lq) and the new key seqlens[b] - Lq + c where new_mask[i, c] is True (every new key
when new_mask is None). Per row, this is block_sparse_attention_ref with that (Lq, seqlens[b]) mask.
"""
from __future__ import annotations

import torch

from arkernels.reference.block_sparse_attention import block_sparse_attention_ref


def decode_visibility(Lq: int, seqlen: int, new_mask: torch.Tensor | None) -> torch.Tensor:
    """(Lq, seqlen) bool: the older keys visible to every query, the new ones as new_mask says."""
    vis = torch.ones(Lq, seqlen, dtype=torch.bool)
    if new_mask is not None:
        vis[:, seqlen - Lq:] = new_mask.to(device="cpu", dtype=torch.bool)
    return vis


def decode_attention_ref(q, k_cache, v_cache, seqlens, new_mask=None, scale=None):
    """(out (B, Hq, Lq, D) in q's dtype, lse (B, Hq, Lq) float32 or float64) for q (B, Hq, Lq, D),
    k_cache, v_cache (B, Hkv, S_max, D), seqlens (B,) integers with Lq <= seqlens[b] <= S_max, new_mask
    (Lq, Lq) bool or None."""
    Lq = q.shape[2]
    outs, lses = [], []
    for b, n in enumerate(seqlens.tolist()):
        vis = decode_visibility(Lq, n, new_mask).to(q.device)
        o, lse = block_sparse_attention_ref(q[b:b + 1], k_cache[b:b + 1, :, :n], v_cache[b:b + 1, :, :n], vis, scale)
        outs.append(o)
        lses.append(lse)
    if not outs:
        dt = torch.float64 if q.dtype == torch.float64 else torch.float32
        return q.new_empty(q.shape), torch.empty(q.shape[:3], dtype=dt, device=q.device)
    return torch.cat(outs), torch.cat(lses)
