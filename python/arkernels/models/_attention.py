"""Pieces shared by the attention models (VAR-style next-scale transformer, ACDiT-style block): the
attention call of each impl, adaptive layer norm and the MLP.

impl="fast" runs arkernels.block_sparse_attention with an arkernels.masks mask (backend "auto"); impl=
"reference" runs torch's scaled_dot_product_attention with the dense boolean mask that the model writes
from its own definition (VAR: level ids compared; ACDiT: the SCAM predicate), never through
arkernels.masks, so that a test of fast against reference also checks the mask library.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def attend(q, k, v, impl: str, mask, dense_mask):
    """q (B, H, L, Dh), k, v (B, H, S, Dh) -> (B, H, L, Dh) where the mask allows. `mask` is the
    arkernels.masks.Mask of the fast impl, `dense_mask` a callable giving the (L, S) bool tensor for the
    reference impl (built only when that impl runs). Both None: every query sees every key, as in a cached
    step (VAR's next scale, an ACDiT block against its cache): the fast impl then runs decode_attention
    (split-KV over the cache, no mask object, no layout)."""
    if impl == "fast":
        import arkernels

        if mask is None:
            seqlens = torch.full((q.shape[0],), k.shape[2], dtype=torch.int32, device=q.device)
            return arkernels.decode_attention(q, k, v, seqlens)
        return arkernels.block_sparse_attention(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if dense_mask is None else dense_mask().to(q.device))


class AdaLN(nn.Module):
    """LayerNorm without affine parameters, then x * (1 + scale) + shift, with (shift, scale) given per
    sample (B, d) or per token (B, L, d)."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(d, eps=eps, elementwise_affine=False)

    def forward(self, x, shift, scale):
        if shift.dim() == 2:
            shift, scale = shift[:, None], scale[:, None]
        return self.norm(x) * (1 + scale) + shift


class MLP(nn.Module):
    def __init__(self, d: int, ratio: float):
        super().__init__()
        hidden = int(d * ratio)
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class ConditionedBlock(nn.Module):
    """Pre-norm transformer block with adaptive layer norm: x += gate1 * attn(adaln1(x)); x += gate2 *
    mlp(adaln2(x)), the six (shift, scale, gate) vectors from the condition (DiT's adaLN; VAR's AdaLNSelfAttn
    has the same structure). Attention is computed by `attend` with the mask the caller gives; with a KV
    cache (`cache`, a dict) the block appends this call's keys and values to it and attends to all of them."""

    def __init__(self, d: int, n_head: int, mlp_ratio: float, eps: float):
        super().__init__()
        if d % n_head:
            raise ValueError(f"n_head: expected a divisor of d_model = {d}, got {n_head}")
        self.n_head = n_head
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ada = nn.Linear(d, 6 * d)
        self.norm1, self.norm2 = AdaLN(d, eps), AdaLN(d, eps)
        self.mlp = MLP(d, mlp_ratio)

    def forward(self, x, cond, impl: str, mask, dense_mask, cache: dict | None = None):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(cond)).chunk(6, dim=-1)
        if gate1.dim() == 2:
            gate1, gate2 = gate1[:, None], gate2[:, None]
        b, L, d = x.shape
        h = self.norm1(x, shift1, scale1)
        q, k, v = self.qkv(h).view(b, L, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4).unbind(0)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        a = attend(q, k, v, impl, mask, dense_mask)
        x = x + gate1 * self.proj(a.transpose(1, 2).reshape(b, L, d))
        return x + gate2 * self.mlp(self.norm2(x, shift2, scale2))
