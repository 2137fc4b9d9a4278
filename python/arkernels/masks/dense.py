"""DenseMask: a mask given by a small dense boolean block (from_dense, tree), optionally after a fully
visible key prefix (a tree's KV cache), so a long cache never becomes a dense tensor."""
from __future__ import annotations

import torch

from arkernels.masks.bits import evaluate_tiles, tile_runs
from arkernels.masks.layout import FULL, TileLayout, num_tiles
from arkernels.masks.mask import Mask, check_int
from arkernels.masks.runs import Runs, assemble, sort_runs

I64 = torch.int64


class DenseMask(Mask):
    """Keys [0, full_prefix) visible to every query; key full_prefix + c visible to query q iff dense[q, c]."""

    def __init__(self, dense: torch.Tensor, full_prefix: int = 0, describe: str = ""):
        super().__init__(dense.shape[0], full_prefix + dense.shape[1])
        self.dense = dense
        self.full_prefix = full_prefix
        self._desc = describe

    def _describe(self) -> str:
        return self._desc

    def _allowed(self, q, k):
        p = self.full_prefix
        return (k < p) | self.dense[q, (k - p).clamp(min=0)]

    def _build_layout(self, block_q: int, block_k: int) -> TileLayout:
        nq, nk = num_tiles(self.L, block_q), num_tiles(self.S, block_k)
        j0 = self.full_prefix // block_k  # key tiles entirely inside the prefix: FULL for every query tile
        rows = torch.arange(nq, dtype=I64)
        prefix = Runs(rows, torch.zeros(nq, dtype=I64), torch.full((nq,), j0, dtype=I64),
                      torch.full((nq,), FULL, dtype=I64), torch.full((nq,), -1, dtype=I64))
        ti = rows.repeat_interleave(nk - j0)
        tj = torch.arange(j0, nk, dtype=I64).repeat(nq)
        kinds, bits = evaluate_tiles(self._allowed, ti, tj, self.L, self.S, block_q, block_k)
        segs = sort_runs(Runs(*(torch.cat(p) for p in zip(prefix, tile_runs(ti, tj, kinds)))), nk)
        return assemble(self.L, self.S, block_q, block_k, segs, tile_bits=bits)


def from_dense(bool_mask: torch.Tensor) -> DenseMask:
    """Any (L, S) bool tensor (True = visible): tiles all-true are FULL, all-false empty, else BITS."""
    if not isinstance(bool_mask, torch.Tensor):
        raise TypeError(f"bool_mask must be a torch.Tensor, got {type(bool_mask).__name__}")
    if bool_mask.dtype != torch.bool:
        raise TypeError(f"bool_mask must have dtype torch.bool, got {bool_mask.dtype}")
    if bool_mask.dim() != 2:
        raise ValueError(f"bool_mask must be 2-D (L, S), got shape {tuple(bool_mask.shape)}")
    check_int("bool_mask.shape[0] (L)", bool_mask.shape[0])
    check_int("bool_mask.shape[1] (S)", bool_mask.shape[1])
    return DenseMask(bool_mask.detach().to("cpu").contiguous().clone(), describe="dense")
