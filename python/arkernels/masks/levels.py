"""LevelRuleMask: masks given by a LevelRule (causal, windows, block-causal/VAR, SCAM, documents).

Tile classification without visiting tiles. A tile (query tile i, key tile j) is summarised by the
min/max of each rule vector over its in-bounds tokens (lo, hi). With those, exact sufficient
conditions decide it (w = window, or infinity):
    level, some pair visible:  klo_j <= qhi_i  and  qlo_i - khi_j <= w - 1
    level, every pair visible: khi_j <= qlo_i  and  qhi_i - klo_j <= w - 1
    group/doc, some pair equal: the two value ranges meet
    group/doc, every pair equal: both tiles hold the single same value
    FULL  = (level_all  | group_all)  & doc_all
    RULE  = (level_some | group_some) & doc_some, otherwise; EMPTY otherwise.
FULL and EMPTY are always right (the conditions are sufficient / necessary). A RULE tile may still be
all-true or all-false when values inside a tile are not contiguous integers, or when it is full only by
mixing level and group pairs; that costs the kernel a per-token test, never a wrong answer. For causal,
windows, block-causal/VAR, SCAM and documents with the first three, the tests check the classification is
exact (every RULE tile is truly partial); documents AND SCAM can leave a few all-false RULE tiles.

For one row tile every condition selects, among column tiles whose lo/hi sequences are nondecreasing,
a contiguous range found by searchsorted. Key-side vectors of every builder are nondecreasing; query
levels of SCAM are not (noisy blocks restart at -1), so the column tiles are cut into "pieces" where
all sequences are nondecreasing (one or two in practice) and each piece is searched on its own. The
same function, with rows and columns swapped, gives the backward runs directly: both directions apply
the same per-tile predicate, so they agree tile for tile. Cost O((L + S) / block + tiles per row x
breakpoints) per direction: a 1M-token layout is a few milliseconds.
"""
from __future__ import annotations

import torch

from arkernels.masks.layout import FULL, RULE, LevelRule, TileLayout, num_tiles
from arkernels.masks.mask import Mask
from arkernels.masks.runs import EMPTY, Runs, row_ptr

I64 = torch.int64


def tile_min_max(v: torch.Tensor, block: int, monotone: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tile min and max (int64) of v over in-bounds elements; slicing instead of reductions when v is sorted."""
    n = v.numel()
    if monotone:
        last = torch.arange(block - 1, n + block - 1, block).clamp(max=n - 1)
        return v[::block].to(I64), v[last].to(I64)
    whole = n // block
    body = v[:whole * block].view(whole, block)
    lo, hi = body.amin(1), body.amax(1)
    if whole * block < n:
        tail = v[whole * block:]
        lo, hi = torch.cat([lo, tail.min().view(1)]), torch.cat([hi, tail.max().view(1)])
    return lo.to(I64), hi.to(I64)


def _is_sorted(v: torch.Tensor) -> bool:
    return v.numel() < 2 or bool((v[1:] >= v[:-1]).all())


def side_stats(rule: LevelRule, side: str, block: int, sorted_side: bool) -> dict:
    """{"level" | "group" | "doc": (lo, hi) per tile} of the q or k vectors of the rule."""
    out = {}
    for name in ("level", "group", "doc"):
        v = getattr(rule, f"{side}_{name}")
        if v is not None:
            out[name] = tile_min_max(v, block, monotone=sorted_side)
    return out


def _pieces(cols: dict) -> list[tuple[int, int]]:
    """Maximal column-tile ranges on which every lo/hi sequence is nondecreasing."""
    n = cols["level"][0].numel()
    drops = torch.zeros(max(n - 1, 0), dtype=torch.bool)
    for lo, hi in cols.values():
        drops |= (lo[1:] < lo[:-1]) | (hi[1:] < hi[:-1])
    cuts = [0] + (torch.nonzero(drops).squeeze(1) + 1).tolist() + [n]
    return list(zip(cuts[:-1], cuts[1:]))


def search(seq: torch.Tensor, vals: torch.Tensor, right: bool = False) -> torch.Tensor:
    """torch.searchsorted(seq, vals), through a table of the answers for every value when vals span fewer distinct
    integers than there are vals (block, scale, group and document ids): a gather is ~10x cheaper than a search."""
    if vals.numel() > 64:
        lo, hi = int(vals.min()), int(vals.max())
        if hi - lo + 1 < vals.numel() // 2:
            table = torch.searchsorted(seq, torch.arange(lo, hi + 1, dtype=seq.dtype), right=right)
            return table[vals - lo]
    return torch.searchsorted(seq, vals, right=right)


def _range(suffix_seq, suffix_at_least, prefix_seq, prefix_at_most):
    """[lo, hi): columns with suffix_seq >= suffix_at_least and prefix_seq <= prefix_at_most; a bound that is
    None is the piece's start (lo) or end (hi), kept as None so that it adds no breakpoint."""
    lo = None if suffix_at_least is None else search(suffix_seq, suffix_at_least)
    hi = None if prefix_at_most is None else search(prefix_seq, prefix_at_most, right=True)
    return lo, hi


def _piece_ranges(rows: dict, cols: dict, forward: bool, w: int | None):
    """(some ranges, all ranges, doc (some, all) or None) on one piece of nondecreasing column sequences."""
    (rlo, rhi), (clo, chi) = rows["level"], cols["level"]
    if forward:  # rows are query tiles
        some = [_range(chi, None if w is None else rlo - w + 1, clo, rhi)]
        every = [_range(clo, None if w is None else rhi - w + 1, chi, rlo)]
    else:  # rows are key tiles
        some = [_range(chi, rlo, clo, None if w is None else rhi + w - 1)]
        every = [_range(clo, rhi, chi, None if w is None else rlo + w - 1)]

    def equal(name):
        (rlo, rhi), (clo, chi) = rows[name], cols[name]
        lo = search(clo, rlo)
        hi = torch.where(rlo == rhi, search(chi, rlo, right=True), lo)
        return _range(chi, rlo, clo, rhi), (lo, hi)

    if "group" in rows:
        g_some, g_all = equal("group")
        some.append(g_some)
        every.append(g_all)
    return some, every, (equal("doc") if "doc" in rows else None)


def _nested_segments(some, every, docs, n_rows: int, n: int):
    """No groups: nonempty = N = level_some & doc_some and full = F = level_all & doc_all are single ranges with
    F inside N (every pair visible implies some pair visible), so a row is RULE [N.lo, F.lo), FULL [F.lo, F.hi),
    RULE [F.hi, N.hi): three segments, no sort."""
    def bounds(r, d):
        lo = torch.zeros(n_rows, dtype=I64) if r[0] is None else r[0]
        hi = torch.full((n_rows,), n, dtype=I64) if r[1] is None else r[1]
        if d is not None:
            lo, hi = torch.maximum(lo, d[0]), torch.minimum(hi, d[1])
        return lo, hi

    n_lo, n_hi = bounds(some[0], None if docs is None else docs[0])
    n_hi = torch.maximum(n_hi, n_lo)
    f_lo, f_hi = bounds(every[0], None if docs is None else docs[1])
    f_lo = torch.minimum(torch.maximum(f_lo, n_lo), n_hi)
    f_hi = torch.minimum(torch.maximum(f_hi, f_lo), n_hi)
    # An empty F moves to the end of N, so that N stays one RULE segment: no two segments ever need merging.
    f_lo = torch.where(f_hi > f_lo, f_lo, n_hi)
    f_hi = torch.maximum(f_hi, f_lo)
    start, end = torch.stack([n_lo, f_lo, f_hi], 1), torch.stack([f_lo, f_hi, n_hi], 1)
    return start, end, torch.tensor([RULE, FULL, RULE], dtype=I64).expand(n_rows, 3)


def _sorted_segments(some, every, docs, n_rows: int, n: int):
    """With groups, nonempty and full are unions of two ranges: sort all range ends per row and classify the
    pieces between consecutive ones by which ranges hold their start."""
    ranges = some + every + (list(docs) if docs else [])
    bounds = [torch.zeros(n_rows, dtype=I64)] + [t for r in ranges for t in r if t is not None]
    start = torch.sort(torch.stack(bounds, 1), dim=1).values
    end = torch.cat([start[:, 1:], torch.full((n_rows, 1), n, dtype=I64)], 1)

    def inside(r):
        lo, hi = r
        ok = torch.ones_like(start, dtype=torch.bool) if lo is None else lo[:, None] <= start
        return ok if hi is None else ok & (start < hi[:, None])

    is_some = inside(some[0]) | inside(some[1])
    is_all = inside(every[0]) | inside(every[1])
    if docs:
        is_some &= inside(docs[0])
        is_all &= inside(docs[1])
    return start, end, torch.where(is_all, FULL, torch.where(is_some, RULE, EMPTY))


def segments(rows: dict, cols: dict, forward: bool, w: int | None):
    """Per row tile, (start, end, kind) matrices (n_rows, W) of column-tile segments, sorted along each row,
    not overlapping; zero-length and EMPTY segments occur and are dropped by matrix_runs. Also whether
    neighbours of one kind may need merging (not for one piece without groups)."""
    n_rows = rows["level"][0].numel()
    parts = []
    for a, b in _pieces(cols):
        piece = {name: (lo[a:b], hi[a:b]) for name, (lo, hi) in cols.items()}
        some, every, docs = _piece_ranges(rows, piece, forward, w)
        make = _nested_segments if len(some) == 1 else _sorted_segments
        start, end, kind = make(some, every, docs, n_rows, b - a)
        parts.append((start + a, end + a, kind))
    mats = tuple(torch.cat(p, 1) for p in zip(*parts)) if len(parts) > 1 else parts[0]
    return mats, len(parts) > 1 or make is _sorted_segments


def matrix_runs(start: torch.Tensor, end: torch.Tensor, kind: torch.Tensor, merge: bool = True) -> Runs:
    """Runs of segment matrices: drop zero-length and EMPTY segments, merge adjacent neighbours of one kind."""
    W = start.shape[1]
    idx = torch.nonzero(((end > start) & (kind != EMPTY)).flatten()).squeeze(1)
    s, e, k = start.flatten()[idx], end.flatten()[idx], kind.flatten()[idx]
    row = torch.div(idx, W, rounding_mode="floor")
    if not merge:
        return Runs(row, s, e, k, torch.full_like(row, -1))
    joins = (row[1:] == row[:-1]) & (k[1:] == k[:-1]) & (s[1:] == e[:-1])
    no = torch.zeros(1, dtype=torch.bool)
    first = torch.nonzero(~torch.cat([no, joins])).squeeze(1)
    last = torch.nonzero(~torch.cat([joins, no])).squeeze(1)
    return Runs(row[first], s[first], e[last], k[first], torch.full_like(first, -1))


def _row_groups(rows: dict):
    """Consecutive row tiles with identical stats have identical segments (SCAM: the 16 tiles of a 2048-token
    block; VAR: the tiles inside one scale): (first row of each group, group sizes), or None when most rows differ."""
    vecs = [t for pair in rows.values() for t in pair]
    n = vecs[0].numel()
    change = torch.ones(n, dtype=torch.bool)
    if n > 1:
        change[1:] = vecs[0][1:] != vecs[0][:-1]
        for t in vecs[1:]:
            change[1:] |= t[1:] != t[:-1]
    first = torch.nonzero(change).squeeze(1)
    if first.numel() > n // 4:
        return None
    return first, torch.diff(first, append=torch.tensor([n]))


def _replicate(r: Runs, first: torch.Tensor, sizes: torch.Tensor) -> Runs:
    """Runs of group g (rows numbered by group) repeated for each of its sizes[g] rows, first[g] onwards."""
    k = torch.bincount(r.row, minlength=first.numel())  # runs per group
    ptr = torch.cumsum(k, 0) - k
    out = k * sizes
    g = torch.repeat_interleave(torch.arange(first.numel()), out)
    pos = torch.arange(g.numel()) - (torch.cumsum(out, 0) - out)[g]
    kg = k[g]
    rep = torch.div(pos, kg, rounding_mode="floor")
    idx = ptr[g] + pos - rep * kg
    return Runs(first[g] + rep, r.start[idx], r.end[idx], r.kind[idx], r.bits[idx])


def direction_runs(rows: dict, cols: dict, forward: bool, w: int | None) -> Runs:
    """Runs of every row tile against the column tiles, computed once per group of identical row tiles."""
    groups = _row_groups(rows)
    if groups is None:
        mats, merge = segments(rows, cols, forward, w)
        return matrix_runs(*mats, merge=merge)
    first, sizes = groups
    mats, merge = segments({name: (lo[first], hi[first]) for name, (lo, hi) in rows.items()}, cols, forward, w)
    return _replicate(matrix_runs(*mats, merge=merge), first, sizes)


def level_layout(rule: LevelRule, L: int, S: int, bq: int, bk: int, k_sorted: bool) -> TileLayout:
    q_stats = side_stats(rule, "q", bq, sorted_side=False)
    k_stats = side_stats(rule, "k", bk, sorted_side=k_sorted)
    fwd = direction_runs(q_stats, k_stats, True, rule.window)
    bwd = direction_runs(k_stats, q_stats, False, rule.window)
    pack = lambda r: torch.stack([r.start, r.end, r.kind, r.bits], 1).to(torch.int32)  # noqa: E731
    return TileLayout(L, S, bq, bk, row_ptr(fwd.row, num_tiles(L, bq)), pack(fwd),
                      row_ptr(bwd.row, num_tiles(S, bk)), pack(bwd),
                      rule=rule if bool((fwd.kind == RULE).any()) else None)


class LevelRuleMask(Mask):
    """A mask given by a LevelRule (layout.py); partial tiles are RULE tiles resolved by the rule."""

    def __init__(self, rule: LevelRule, L: int, S: int, describe: str = "", k_sorted: bool | None = None):
        """k_sorted: the builder guarantees nondecreasing key-side vectors (skips checks; tile min/max by slicing)."""
        super().__init__(L, S)
        if k_sorted is None:
            _check_rule_vectors(rule, self.L, self.S)
            k_sorted = all(_is_sorted(t) for t in (rule.k_level, rule.k_group, rule.k_doc) if t is not None)
        self._k_sorted = k_sorted
        self.rule = rule
        self._desc = describe

    def _describe(self) -> str:
        return self._desc

    def _allowed(self, q, k):
        return self.rule.allowed(q, k)

    def _build_layout(self, block_q: int, block_k: int) -> TileLayout:
        return level_layout(self.rule, self.L, self.S, block_q, block_k, self._k_sorted)


def _check_rule_vectors(rule: LevelRule, L: int, S: int) -> None:
    """Shapes and dtypes of a user-given rule."""
    for name, n in (("q_level", L), ("k_level", S), ("q_group", L), ("k_group", S), ("q_doc", L), ("k_doc", S)):
        t = getattr(rule, name)
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or tuple(t.shape) != (n,):
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"rule.{name} must be an int32 tensor of shape ({n},), got {got}")
    for a, b in (("q_group", "k_group"), ("q_doc", "k_doc")):
        if (getattr(rule, a) is None) != (getattr(rule, b) is None):
            raise ValueError(f"rule.{a} and rule.{b} must both be given or both be None")
    if rule.window is not None and (isinstance(rule.window, bool) or not isinstance(rule.window, int) or rule.window < 1):
        raise ValueError(f"rule.window must be None or a positive int, got {rule.window!r}")
