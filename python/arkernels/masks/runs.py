"""Run lists: normalising per-row tile segments into runs, and transposing runs, in O(runs) work.

A "run list" here is five flat int64 vectors sorted by (row, start): row, start, end, kind, bits
(a row is a query tile in forward order, a key tile in the transposed one). Kinds are the layout's
FULL / RULE / BITS plus EMPTY, which only appears in intermediate segments and is dropped.

Everything is vectorised: no Python loop touches a tile, so a 1M-token causal layout (8192 x 8192
tiles at 128 x 128, but only ~16k runs) is built in about a millisecond.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from arkernels.masks.layout import BITS, RULE, LevelRule, TileLayout

EMPTY = 3  # internal only: a segment of tiles nobody visits
I64 = torch.int64


class Runs(NamedTuple):
    """Flat run list sorted by (row, start); bits is -1 unless kind is BITS."""

    row: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor
    kind: torch.Tensor
    bits: torch.Tensor


def empty_runs() -> Runs:
    z = torch.zeros(0, dtype=I64)
    return Runs(z, z, z, z, z)


def sort_runs(r: Runs, n_cols: int) -> Runs:
    """Sort by (row, start); only needed when segments come from several sources."""
    order = torch.argsort(r.row * (n_cols + 1) + r.start)
    return Runs(*(t[order] for t in r))


def normalize(r: Runs) -> Runs:
    """Drop empty/zero-length segments and merge neighbours of the same kind (input sorted by (row, start)).

    BITS neighbours merge only when their bitmap indices continue (tile t of a run uses bits + t)."""
    keep = (r.kind != EMPTY) & (r.end > r.start)
    r = Runs(*(t[keep] for t in r))
    n = r.row.numel()
    if n == 0:
        return r
    joins = torch.zeros(n, dtype=torch.bool)
    joins[1:] = ((r.row[1:] == r.row[:-1]) & (r.kind[1:] == r.kind[:-1]) & (r.start[1:] == r.end[:-1])
                 & ((r.kind[1:] != BITS) | (r.bits[1:] == r.bits[:-1] + (r.end[:-1] - r.start[:-1]))))
    if not bool(joins.any()):
        return r
    first = torch.nonzero(~joins).squeeze(1)
    last = torch.cat([first[1:] - 1, torch.tensor([n - 1])])
    return Runs(r.row[first], r.start[first], r.end[last], r.kind[first], r.bits[first])


def row_ptr(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """CSR pointer (n_rows + 1,) of a sorted row vector."""
    ptr = torch.zeros(n_rows + 1, dtype=I64)
    torch.cumsum(torch.bincount(rows, minlength=n_rows), 0, out=ptr[1:])
    return ptr.to(torch.int32)


def from_ptr(ptr: torch.Tensor, runs: torch.Tensor) -> Runs:
    """Flat run list of a layout's (ptr, runs) pair."""
    counts = (ptr[1:] - ptr[:-1]).to(I64)
    row = torch.repeat_interleave(torch.arange(counts.numel(), dtype=I64), counts)
    r = runs.to(I64)
    return Runs(row, r[:, 0], r[:, 1], r[:, 2], r[:, 3])


def expand(r: Runs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One entry per tile: (run index, row, column). Cost proportional to the tiles of r."""
    lengths = r.end - r.start
    run = torch.repeat_interleave(torch.arange(lengths.numel(), dtype=I64), lengths)
    offsets = torch.cumsum(lengths, 0) - lengths
    col = r.start[run] + torch.arange(run.numel(), dtype=I64) - offsets[run]
    return run, r.row[run], col


def kind_at(r: Runs, n_cols: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Kind of tile (rows, cols) in run list r (EMPTY where no run covers it)."""
    if r.row.numel() == 0:
        return torch.full_like(rows, EMPTY)
    keys = r.row * (n_cols + 1) + r.start
    idx = torch.searchsorted(keys, rows * (n_cols + 1) + cols, right=True) - 1
    safe = idx.clamp(min=0)
    hit = (idx >= 0) & (r.row[safe] == rows) & (cols < r.end[safe])
    return torch.where(hit, r.kind[safe], torch.full_like(rows, EMPTY))


def elementary_segments(n_cols: int, rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Split each row at the given breakpoints: (row, start, end) of the pieces between consecutive ones."""
    keys = torch.unique(rows * (n_cols + 1) + cols)  # sorted
    if keys.numel() < 2:
        z = torch.zeros(0, dtype=I64)
        return z, z, z
    row, pos = keys // (n_cols + 1), keys % (n_cols + 1)
    same = row[1:] == row[:-1]
    return row[:-1][same], pos[:-1][same], pos[1:][same]


def transpose(r: Runs, n_rows: int, n_cols: int) -> tuple[Runs, torch.Tensor]:
    """Runs of the transposed tile matrix (rows <-> columns) and the backward bitmap indirection.

    Sweep over rows: column c changes kind between row p-1 and row p only inside the elementary
    segments of those two rows' run boundaries, so the events (c, p, new kind) number exactly the
    transposed run boundaries. Sorted by (c, p), consecutive events of one column delimit its runs.
    Returns (transposed runs, k_tile_bits) where k_tile_bits lists forward bitmap indices of the
    BITS tiles in (column, row) order and a transposed BITS run's bits is its offset there."""
    if r.row.numel() == 0:
        return empty_runs(), torch.zeros(0, dtype=I64)
    # Pair p compares row p-1 with row p (rows -1 and n_rows are empty); a run of row i bounds pairs i, i+1.
    seg_row, seg_s, seg_e = elementary_segments(
        n_cols, torch.cat([r.row, r.row, r.row + 1, r.row + 1]), torch.cat([r.start, r.end, r.start, r.end]))
    before = kind_at(r, n_cols, seg_row - 1, seg_s)
    after = kind_at(r, n_cols, seg_row, seg_s)
    changed = before != after
    seg_row, seg_s, seg_e, after = seg_row[changed], seg_s[changed], seg_e[changed], after[changed]
    ev = Runs(seg_row, seg_s, seg_e, after, torch.zeros_like(after))
    idx, ev_row, ev_col = expand(ev)
    ev_kind = after[idx]
    order = torch.argsort(ev_col * (n_rows + 2) + ev_row)
    ev_row, ev_col, ev_kind = ev_row[order], ev_col[order], ev_kind[order]
    # A stretch ends at the next event; each column's last event switches to EMPTY (row n_rows is empty), so the
    # next event of every kept one is in the same column.
    next_row = torch.cat([ev_row[1:], ev_row[-1:]])
    keep = ev_kind != EMPTY
    t_row, t_start, t_end, t_kind = ev_col[keep], ev_row[keep], next_row[keep], ev_kind[keep]

    k_tile_bits = torch.zeros(0, dtype=I64)
    t_bits = torch.full_like(t_row, -1)
    is_bits = r.kind == BITS
    if bool(is_bits.any()):
        b = Runs(*(t[is_bits] for t in r))
        bidx, brow, bcol = expand(b)
        fwd_index = b.bits[bidx] + bcol - b.start[bidx]
        bkey = bcol * n_rows + brow
        border = torch.argsort(bkey)
        bkey, k_tile_bits = bkey[border], fwd_index[border]
        tb = t_kind == BITS
        t_bits[tb] = torch.searchsorted(bkey, t_row[tb] * n_rows + t_start[tb])
    return Runs(t_row, t_start, t_end, t_kind, t_bits), k_tile_bits


def to_i32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.int32)


def assemble(L: int, S: int, block_q: int, block_k: int, fwd: Runs, rule: LevelRule | None = None,
             tile_bits: torch.Tensor | None = None) -> TileLayout:
    """TileLayout from forward segments sorted by (row, start): normalise, transpose, convert to int32."""
    nq, nk = -(-L // block_q), -(-S // block_k)
    fwd = normalize(fwd)
    bwd, k_tile_bits = transpose(fwd, nq, nk)
    has_rule = bool((fwd.kind == RULE).any())
    has_bits = bool((fwd.kind == BITS).any())
    pack = lambda r: to_i32(torch.stack([r.start, r.end, r.kind, r.bits], 1))  # noqa: E731
    return TileLayout(
        L, S, block_q, block_k,
        q_run_ptr=row_ptr(fwd.row, nq), q_runs=pack(fwd),
        k_run_ptr=row_ptr(bwd.row, nk), k_runs=pack(bwd),
        rule=rule if has_rule else None,
        tile_bits=to_i32(tile_bits) if has_bits else None,
        k_tile_bits=to_i32(k_tile_bits) if has_bits else None)
