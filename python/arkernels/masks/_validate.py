"""TileLayout.validate() and TileLayout.to_dense(): the checks and the reference decoder of the layout."""
from __future__ import annotations

import torch

from arkernels.masks.bits import unpack
from arkernels.masks.layout import BITS, FULL, RULE, TileLayout
from arkernels.masks.runs import Runs, expand, from_ptr

I64 = torch.int64
_EXHAUSTIVE_TILES = 1 << 22


def _fail(msg: str):
    raise ValueError(f"invalid TileLayout: {msg}")


def _check_int32(name: str, t, shape: tuple | None = None, ndim: int | None = None):
    if not isinstance(t, torch.Tensor):
        _fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int32:
        _fail(f"{name} must be int32, got {t.dtype}")
    if shape is not None and tuple(t.shape) != shape:
        _fail(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if ndim is not None and t.dim() != ndim:
        _fail(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")


def _check_runs(side: str, ptr: torch.Tensor, runs: torch.Tensor, n_rows: int, n_cols: int, n_bits: int) -> Runs:
    """Shapes, CSR pointer, bounds, kinds, bits fields and per-row order of one direction's runs."""
    _check_int32(f"{side}_run_ptr", ptr, (n_rows + 1,))
    _check_int32(f"{side}_runs", runs, ndim=2)
    if runs.shape[1] != 4:
        _fail(f"{side}_runs must have shape (R, 4), got {tuple(runs.shape)}")
    p = ptr.to(I64)
    if int(p[0]) != 0 or int(p[-1]) != runs.shape[0] or bool((p[1:] < p[:-1]).any()):
        _fail(f"{side}_run_ptr must rise from 0 to the number of runs {runs.shape[0]}, got {ptr.tolist()[:8]}...")
    r = from_ptr(ptr, runs)
    if bool(((r.start < 0) | (r.end <= r.start) | (r.end > n_cols)).any()):
        bad = int(torch.nonzero((r.start < 0) | (r.end <= r.start) | (r.end > n_cols))[0])
        _fail(f"{side}_runs[{bad}] = {runs[bad].tolist()} is not a nonempty tile range inside [0, {n_cols})")
    if bool(((r.kind < FULL) | (r.kind > BITS)).any()):
        _fail(f"{side}_runs kinds must be FULL (0), RULE (1) or BITS (2), got {sorted(set(r.kind.tolist()))}")
    is_bits = r.kind == BITS
    if bool((r.bits[~is_bits] != -1).any()):
        _fail(f"{side}_runs bits must be -1 for FULL and RULE runs")
    if bool(((r.bits[is_bits] < 0) | (r.bits[is_bits] + (r.end - r.start)[is_bits] > n_bits)).any()):
        _fail(f"{side}_runs BITS ranges must lie inside [0, {n_bits})")
    same_row = r.row[1:] == r.row[:-1]
    if bool((same_row & (r.start[1:] < r.end[:-1])).any()):
        bad = int(torch.nonzero(same_row & (r.start[1:] < r.end[:-1]))[0]) + 1
        _fail(f"{side}_runs of row {int(r.row[bad])} are unsorted or overlap at run {bad}")
    return r


def _moments(r: Runs, n_rows: int, n_cols: int, transposed: bool) -> torch.Tensor:
    """Per (kind, row) and per (kind, column): tile count and sum of the other coordinate, in the forward frame.

    From runs (row i, columns [s, e)): row sums are closed-form; column sums use difference arrays."""
    if transposed:  # rows of r are columns of the forward frame
        return _moments(r, n_rows, n_cols, False).flip(0)
    out = torch.zeros(2, 3, 2, max(n_rows, n_cols) + 1, dtype=I64)
    n = r.end - r.start
    col_sum = (r.start + r.end - 1) * n // 2
    for kind in (FULL, RULE, BITS):
        m = r.kind == kind
        out[0, kind, 0].index_add_(0, r.row[m], n[m])
        out[0, kind, 1].index_add_(0, r.row[m], col_sum[m])
        diff_n = torch.zeros(max(n_rows, n_cols) + 2, dtype=I64)
        diff_n.index_add_(0, r.start[m], torch.ones_like(r.start[m]))
        diff_n.index_add_(0, r.end[m], -torch.ones_like(r.end[m]))
        diff_s = torch.zeros_like(diff_n)
        diff_s.index_add_(0, r.start[m], r.row[m])
        diff_s.index_add_(0, r.end[m], -r.row[m])
        out[1, kind, 0] = torch.cumsum(diff_n, 0)[:-1]
        out[1, kind, 1] = torch.cumsum(diff_s, 0)[:-1]
    return out


def _tiles(r: Runs, transposed: bool, n_k_tiles: int) -> torch.Tensor:
    """Sorted keys (row, column, kind) of every tile, in the forward frame."""
    idx, row, col = expand(r)
    if transposed:
        row, col = col, row
    return torch.sort((row * n_k_tiles + col) * 4 + r.kind[idx]).values


def _all_tensors(lay: TileLayout) -> bool:
    """Whether every field can move (anything else fails its own named check below)."""
    fields = (lay.q_run_ptr, lay.q_runs, lay.k_run_ptr, lay.k_runs, lay.tile_bits, lay.k_tile_bits)
    rule = lay.rule
    if rule is not None:
        fields += tuple(getattr(rule, n, None) for n in ("q_level", "k_level", "q_doc", "k_doc", "q_group", "k_group"))
    return all(t is None or isinstance(t, torch.Tensor) for t in fields)


def validate(lay: TileLayout, exhaustive: bool | None) -> None:
    for name in ("L", "S", "block_q", "block_k"):
        v = getattr(lay, name)
        if not isinstance(v, int) or v < (1 if name.startswith("block") else 0):
            _fail(f"{name} must be a {'positive' if name.startswith('block') else 'nonnegative'} int, got {v!r}")
    devices = {t.device for t in (lay.q_run_ptr, lay.q_runs, lay.k_run_ptr, lay.k_runs, lay.tile_bits, lay.k_tile_bits)
               if isinstance(t, torch.Tensor)}
    if len(devices) > 1:
        _fail(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    # The checks below are host-side run arithmetic with many data-dependent branches: on a CUDA layout
    # they would sync per step, and the run helpers build their index vectors on the CPU.
    if devices and next(iter(devices)).type != "cpu" and _all_tensors(lay):
        lay = lay.to("cpu")
    nq, nk = lay.num_q_tiles, lay.num_k_tiles
    if nq * nk >= 2**62 or lay.L >= 2**31 or lay.S >= 2**31:
        _fail(f"sizes must stay below 2^31, got L={lay.L}, S={lay.S}")
    words = -(-lay.block_k // 32)
    n_bits = 0
    if lay.tile_bits is not None:
        _check_int32("tile_bits", lay.tile_bits, ndim=3)
        if tuple(lay.tile_bits.shape[1:]) != (lay.block_q, words):
            _fail(f"tile_bits must have shape (P, {lay.block_q}, {words}), got {tuple(lay.tile_bits.shape)}")
        n_bits = lay.tile_bits.shape[0]
    fwd = _check_runs("q", lay.q_run_ptr, lay.q_runs, nq, nk, n_bits)
    n_k_bits = 0
    if lay.k_tile_bits is not None:
        _check_int32("k_tile_bits", lay.k_tile_bits, ndim=1)
        n_k_bits = lay.k_tile_bits.numel()
        if bool(((lay.k_tile_bits < 0) | (lay.k_tile_bits >= n_bits)).any()):
            _fail(f"k_tile_bits entries must index tile_bits [0, {n_bits})")
    bwd = _check_runs("k", lay.k_run_ptr, lay.k_runs, nk, nq, n_k_bits)
    has_bits = bool((fwd.kind == BITS).any())
    if has_bits and (lay.tile_bits is None or lay.k_tile_bits is None):
        _fail("BITS runs need tile_bits and k_tile_bits")
    if bool((fwd.kind == RULE).any()) or bool((bwd.kind == RULE).any()):
        _check_rule(lay)

    # Forward and backward describe the same (query tile, key tile, kind) triples.
    if not torch.equal(_moments(fwd, nq, nk, False), _moments(bwd, nk, nq, True)):
        _fail("k_runs are not the transpose of q_runs (per-row/column tile counts or moments differ)")
    n_tiles = int((fwd.end - fwd.start).sum())
    if exhaustive or (exhaustive is None and n_tiles <= _EXHAUSTIVE_TILES):
        if not torch.equal(_tiles(fwd, False, nk), _tiles(bwd, True, nk)):
            _fail("k_runs are not the transpose of q_runs (tile sets differ)")
    if has_bits:  # each BITS tile must reach the same bitmap both ways
        fb = Runs(*(t[fwd.kind == BITS] for t in fwd))
        bb = Runs(*(t[bwd.kind == BITS] for t in bwd))
        fi, frow, fcol = expand(fb)
        bi, bcol, brow = expand(bb)
        f_key, f_map = frow * nk + fcol, fb.bits[fi] + fcol - fb.start[fi]
        b_key, b_map = brow * nk + bcol, lay.k_tile_bits.to(I64)[bb.bits[bi] + brow - bb.start[bi]]
        fo, bo = torch.argsort(f_key), torch.argsort(b_key)
        if not (torch.equal(f_key[fo], b_key[bo]) and torch.equal(f_map[fo], b_map[bo])):
            _fail("forward and backward BITS tiles use different bitmaps")


def _check_rule(lay: TileLayout) -> None:
    rule = lay.rule
    if rule is None:
        _fail("RULE runs need a rule")
    for name, n in (("q_level", lay.L), ("k_level", lay.S), ("q_doc", lay.L), ("k_doc", lay.S),
                    ("q_group", lay.L), ("k_group", lay.S)):
        t = getattr(rule, name)
        if t is not None:
            _check_int32(f"rule.{name}", t, (n,))
    for a, b in (("q_doc", "k_doc"), ("q_group", "k_group")):
        if (getattr(rule, a) is None) != (getattr(rule, b) is None):
            _fail(f"rule.{a} and rule.{b} must both be set or both be None")
    if rule.window is not None and (not isinstance(rule.window, int) or rule.window < 1):
        _fail(f"rule.window must be None or a positive int, got {rule.window!r}")


def decode(lay: TileLayout) -> torch.Tensor:
    """(L, S) bool from runs: FULL tiles set, RULE tiles evaluated by the rule, BITS tiles unpacked."""
    out = torch.zeros(lay.num_q_tiles * lay.block_q, lay.num_k_tiles * lay.block_k, dtype=torch.bool)
    r = from_ptr(lay.q_run_ptr.cpu(), lay.q_runs.cpu())
    idx, ti, tj = expand(r)
    kind = r.kind[idx]
    bq, bk = lay.block_q, lay.block_k
    tiles = out.view(lay.num_q_tiles, bq, lay.num_k_tiles, bk).permute(0, 2, 1, 3)  # a view of out
    m = kind == FULL
    tiles[ti[m], tj[m]] = True
    m = kind == RULE
    if bool(m.any()):
        rule = lay.rule.to("cpu")
        q = (ti[m][:, None] * bq + torch.arange(bq)).clamp(max=lay.L - 1)
        k = (tj[m][:, None] * bk + torch.arange(bk)).clamp(max=lay.S - 1)
        tiles[ti[m], tj[m]] = rule.allowed(q[:, :, None], k[:, None, :])
    m = kind == BITS
    if bool(m.any()):
        bit_index = r.bits[idx] + tj - r.start[idx]
        tiles[ti[m], tj[m]] = unpack(lay.tile_bits.cpu()[bit_index[m]], bk)
    return out[:lay.L, :lay.S].clone()
