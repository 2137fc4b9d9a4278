"""Tile bitmaps: packing (P, block_q, block_k) booleans into int32 words, unpacking, and classifying
tiles by evaluating a mask on them (only on the tiles asked for: cost P x block_q x block_k)."""
from __future__ import annotations

from typing import Callable

import torch

from arkernels.masks.layout import BITS, FULL
from arkernels.masks.runs import EMPTY

I64 = torch.int64
_SHIFTS = torch.arange(32, dtype=I64)
# Evaluate at most this many (q, k) pairs at once, so that classifying many tiles stays in bounded memory.
_CHUNK_PAIRS = 1 << 23


def pack(dense: torch.Tensor) -> torch.Tensor:
    """(P, bq, bk) bool -> (P, bq, ceil(bk / 32)) int32; bit c of word w is column 32 w + c."""
    P, bq, bk = dense.shape
    words = -(-bk // 32)
    padded = torch.zeros(P, bq, words * 32, dtype=I64)
    padded[:, :, :bk] = dense
    packed = (padded.view(P, bq, words, 32) << _SHIFTS).sum(-1)
    # Two's complement wrap of bit 31 (an int64 -> int32 cast of values >= 2^31 is not portable).
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def unpack(words: torch.Tensor, block_k: int) -> torch.Tensor:
    """(P, bq, W) int32 -> (P, bq, block_k) bool."""
    P, bq, W = words.shape
    bits = (words.to(I64).unsqueeze(-1) >> _SHIFTS) & 1
    return bits.view(P, bq, W * 32)[:, :, :block_k].bool()


def tile_indices(ti: torch.Tensor, tj: torch.Tensor, L: int, S: int, bq: int, bk: int):
    """Query/key indices of tiles (ti, tj), clamped in bounds, and their in-bounds masks: (P, bq), (P, bk)."""
    q = ti[:, None] * bq + torch.arange(bq, dtype=I64)
    k = tj[:, None] * bk + torch.arange(bk, dtype=I64)
    return q.clamp(max=L - 1), k.clamp(max=S - 1), q < L, k < S


def evaluate_tiles(allowed: Callable, ti: torch.Tensor, tj: torch.Tensor, L: int, S: int, bq: int, bk: int):
    """Classify tiles (ti, tj) by evaluating allowed(q, k) on their in-bounds pairs.

    Returns (kind per tile: FULL / EMPTY / BITS, packed bitmaps of the BITS tiles in input order)."""
    P = ti.numel()
    kinds = torch.full((P,), EMPTY, dtype=I64)
    bitmaps = []
    step = max(1, _CHUNK_PAIRS // (bq * bk))
    for lo in range(0, P, step):  # chunks of tiles, not single tiles: bounded memory for big combines
        q, k, q_in, k_in = tile_indices(ti[lo:lo + step], tj[lo:lo + step], L, S, bq, bk)
        inb = q_in[:, :, None] & k_in[:, None, :]
        vis = allowed(q[:, :, None], k[:, None, :]) & inb
        n_vis = vis.flatten(1).sum(1)
        n_in = q_in.sum(1) * k_in.sum(1)
        kind = torch.where(n_vis == n_in, FULL, torch.where(n_vis == 0, EMPTY, BITS))
        kinds[lo:lo + step] = kind
        bitmaps.append(pack(vis[kind == BITS]))
    words = -(-bk // 32)
    bits = torch.cat(bitmaps) if bitmaps else torch.zeros(0, bq, words, dtype=torch.int32)
    return kinds, bits


def tile_runs(ti: torch.Tensor, tj: torch.Tensor, kinds: torch.Tensor, bits_offset: int = 0):
    """One-tile segments (a runs.Runs) for classified tiles; BITS tiles number their bitmaps from bits_offset
    in input order (the order evaluate_tiles packed them)."""
    from arkernels.masks.runs import Runs

    is_bits = kinds == BITS
    bits = torch.where(is_bits, torch.cumsum(is_bits.to(I64), 0) - 1 + bits_offset, -1)
    return Runs(ti, tj, tj + 1, kinds, bits)
