"""Pure-PyTorch definition of arkernels.block_sparse_attention: softmax attention under a dense boolean mask.

    s[b, h, q, k] = scale * <q[b, h, q], k[b, h // G, k]>          G = Hq / Hkv (GQA: kv heads repeated)
    p = softmax over the keys k with mask[q, k] True (masked scores are -inf)
    out = p @ v,   lse[b, h, q] = log sum_{k visible} exp(s[b, h, q, k])   (natural log)

A query that sees no key gets out = 0 and lse = -inf, and no gradient (0, never NaN). Math in float32
(float64 when the inputs are float64); out is returned in q's dtype, lse in float32 (float64 for
float64 inputs). Builds the (B, Hq, L, S) scores: a definition and a test oracle, not a fast path.
"""
from __future__ import annotations

import math

import torch


def block_sparse_attention_ref(q, k, v, dense_mask, scale=None):
    """(out, lse) for q (B, Hq, L, D), k, v (B, Hkv, S, D), dense_mask (L, S) bool (True = visible)."""
    hq, hkv = q.shape[1], k.shape[1]
    if hq % hkv != 0:
        raise ValueError(f"k: expected a number of kv heads that divides Hq = {hq}, got {hkv}")
    if tuple(dense_mask.shape) != (q.shape[2], k.shape[2]):
        raise ValueError(f"dense_mask: expected shape (L, S) = ({q.shape[2]}, {k.shape[2]}), "
                         f"got {tuple(dense_mask.shape)}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    qc, kc, vc = q.to(compute), k.to(compute), v.to(compute)
    if hq != hkv:
        kc = kc.repeat_interleave(hq // hkv, dim=1)
        vc = vc.repeat_interleave(hq // hkv, dim=1)
    mask = dense_mask.to(device=q.device, dtype=torch.bool)
    s = torch.matmul(qc, kc.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    # The row maximum only shifts the exponent (the result does not depend on it): no gradient through it,
    # and 0 for rows with no visible key so that exp(-inf - 0) = 0 instead of NaN.
    if s.shape[-1] == 0:  # no keys at all: every query is empty
        m = s.new_zeros((*s.shape[:-1], 1))
    else:
        m = s.detach().amax(dim=-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    e = torch.exp(s - m)
    l = e.sum(dim=-1, keepdim=True)
    seen = l > 0
    l_safe = torch.where(seen, l, torch.ones_like(l))
    out = torch.matmul(e / l_safe, vc)
    lse = torch.where(seen, m + torch.log(l_safe), torch.full_like(l, float("-inf"))).squeeze(-1)
    return out.to(q.dtype), lse
