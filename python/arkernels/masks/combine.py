"""and_ / or_ of two masks: tile kinds combine run by run; only the result's partial tiles are evaluated."""
from __future__ import annotations

import torch

from arkernels.masks.bits import evaluate_tiles, tile_runs
from arkernels.masks.layout import FULL, TileLayout
from arkernels.masks.mask import Mask
from arkernels.masks.runs import EMPTY, Runs, assemble, elementary_segments, expand, from_ptr, kind_at, sort_runs

I64 = torch.int64
PARTIAL = -1  # internal: to be evaluated


class CombinedMask(Mask):
    """a AND b or a OR b, elementwise."""

    def __init__(self, op: str, a: Mask, b: Mask):
        super().__init__(a.L, a.S)
        self.op, self.a, self.b = op, a, b

    def _describe(self) -> str:
        return f"{self.a!r} {self.op} {self.b!r}"

    def _allowed(self, q, k):
        x, y = self.a._allowed(q, k), self.b._allowed(q, k)
        return x & y if self.op == "and" else x | y

    def _build_layout(self, block_q: int, block_k: int) -> TileLayout:
        ra = from_ptr(*_pair(self.a.layout(block_q, block_k)))
        rb = from_ptr(*_pair(self.b.layout(block_q, block_k)))
        nk = -(-self.S // block_k)
        row, s, e = elementary_segments(nk, torch.cat([ra.row, ra.row, rb.row, rb.row]),
                                        torch.cat([ra.start, ra.end, rb.start, rb.end]))
        ka, kb = kind_at(ra, nk, row, s), kind_at(rb, nk, row, s)
        fa, fb, ea, eb = ka == FULL, kb == FULL, ka == EMPTY, kb == EMPTY
        if self.op == "and":
            kind = torch.where(ea | eb, EMPTY, torch.where(fa & fb, FULL, PARTIAL))
        else:
            kind = torch.where(fa | fb, FULL, torch.where(ea & eb, EMPTY, PARTIAL))
        certain = kind != PARTIAL
        sure = Runs(row[certain], s[certain], e[certain], kind[certain], torch.full_like(row[certain], -1))
        part = kind == PARTIAL
        _, ti, tj = expand(Runs(row[part], s[part], e[part], kind[part], kind[part]))
        kinds, bits = evaluate_tiles(self._allowed, ti, tj, self.L, self.S, block_q, block_k)
        evaluated = tile_runs(ti, tj, kinds)
        segs = sort_runs(Runs(*(torch.cat(p) for p in zip(sure, evaluated))), nk)
        return assemble(self.L, self.S, block_q, block_k, segs, tile_bits=bits)


def _pair(lay: TileLayout):
    return lay.q_run_ptr, lay.q_runs


def _check_pair(name: str, a, b) -> None:
    for arg, m in (("a", a), ("b", b)):
        if not isinstance(m, Mask):
            raise TypeError(f"{name}: {arg} must be an arkernels.masks.Mask, got {type(m).__name__}")
    if (a.L, a.S) != (b.L, b.S):
        raise ValueError(f"{name}: a and b must have the same L and S, got a: L={a.L}, S={a.S} and b: L={b.L}, S={b.S}")


def and_(a: Mask, b: Mask) -> Mask:
    """Visible where both a and b are. document(cu) AND a level-rule mask m is document(cu, m) (still a level rule)."""
    _check_pair("and_", a, b)
    from arkernels.masks.builders import DocumentMask, document
    from arkernels.masks.levels import LevelRuleMask

    for d, m in ((a, b), (b, a)):
        if isinstance(d, DocumentMask) and d.inner is None and isinstance(m, LevelRuleMask):
            return document(d.cu_seqlens, m)
    return CombinedMask("and", a, b)


def or_(a: Mask, b: Mask) -> Mask:
    """Visible where a or b is."""
    _check_pair("or_", a, b)
    return CombinedMask("or", a, b)
