"""The tile layout: what the block-sparse attention kernels read for one mask at one tiling.

A mask (arkernels.masks.Mask) is an (L, S) boolean matrix, True where query q may attend to key k,
shared by every batch element and head. It is never stored as an L x S tensor. For a tiling of
block_q x block_k it is described by:

Runs (forward, per query tile).
    Query tile i (queries [i*block_q, (i+1)*block_q) clipped to L) visits the key tiles of the runs
    r in [q_run_ptr[i], q_run_ptr[i+1]). q_runs[r] = (start, end, kind, bits):
        key tiles [start, end) (end exclusive), sorted by start within a row, non-overlapping;
        kind FULL (0): every in-bounds (q, k) pair of those tiles is visible; no mask work;
        kind RULE (1): partial tiles, resolved per token by the level rule (below);
        kind BITS (2): partial tiles, resolved by bitmaps: key tile start + t of the run uses
            tile_bits[bits + t];
        bits is -1 unless kind is BITS.
    Tiles in no run are empty: the kernel never touches them. A run never names a tile past the
    sequence ends; tiles that cross the end of L or S are FULL when every in-bounds pair is visible
    (the kernel bounds-checks rows and columns anyway).

Runs (backward, per key tile): the transpose.
    Key tile j visits the query tiles of the runs r in [k_run_ptr[j], k_run_ptr[j+1]), k_runs[r] =
    (start, end, kind, bits) with query-tile ranges; for kind BITS, query tile start + t of the run
    uses tile_bits[k_tile_bits[bits + t]] (the bitmaps are stored once, in forward order).
    The set of (query tile, key tile, kind) triples equals the forward one.

Level rule (kind RULE), per-token int32 vectors:
    allowed(q, k) = doc_ok and ((k_level[k] <= q_level[q] and q_level[q] - k_level[k] < window)
                                or (q_group[q] == k_group[k]))
    where doc_ok = q_doc[q] == k_doc[k] (True when there are no docs), the window test is dropped when
    window is None, and the group test is False when there are no groups. It covers causal (level =
    position), sliding windows, block-causal / VAR scales (level = block), ACDiT SCAM (level and group,
    see builders) and document packing (docs) and their combinations with documents.

Bitmaps (kind BITS): tile_bits int32 (P, block_q, ceil(block_k / 32)); bit c of word w of row r is
    key (tile start) + 32 w + c for query (tile start) + r, visible when 1.

Everything is int32 on one device; counts stay below 2^31 (checked by validate()).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

FULL, RULE, BITS = 0, 1, 2


def num_tiles(n: int, block: int) -> int:
    return -(-n // block)


@dataclass(frozen=True)
class LevelRule:
    """allowed(q, k) per token; see the module docstring. Vectors are int32, q_* of length L, k_* of S."""

    q_level: torch.Tensor
    k_level: torch.Tensor
    window: int | None = None
    q_doc: torch.Tensor | None = None
    k_doc: torch.Tensor | None = None
    q_group: torch.Tensor | None = None
    k_group: torch.Tensor | None = None

    def allowed(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Visibility of query indices q against key indices k, broadcast together (int64 index tensors)."""
        ql, kl = self.q_level[q].to(torch.int64), self.k_level[k].to(torch.int64)
        ok = kl <= ql
        if self.window is not None:
            ok = ok & (ql - kl < self.window)
        if self.q_group is not None:
            ok = ok | (self.q_group[q] == self.k_group[k])
        if self.q_doc is not None:
            ok = ok & (self.q_doc[q] == self.k_doc[k])
        return ok

    def to(self, device) -> "LevelRule":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return LevelRule(move(self.q_level), move(self.k_level), self.window, move(self.q_doc), move(self.k_doc),
                         move(self.q_group), move(self.k_group))


@dataclass(frozen=True)
class TileLayout:
    """Runs, their transpose and the partial-tile rules of one mask at one tiling (module docstring)."""

    L: int
    S: int
    block_q: int
    block_k: int
    q_run_ptr: torch.Tensor           # int32 (num_q_tiles + 1,)
    q_runs: torch.Tensor              # int32 (R, 4): start, end, kind, bits
    k_run_ptr: torch.Tensor           # int32 (num_k_tiles + 1,)
    k_runs: torch.Tensor              # int32 (R', 4)
    rule: LevelRule | None = None     # needed when any run is RULE
    tile_bits: torch.Tensor | None = None    # int32 (P, block_q, ceil(block_k / 32)), when any run is BITS
    k_tile_bits: torch.Tensor | None = None  # int32 (number of BITS tiles,), the backward's bitmap indices
    stats: dict = field(default_factory=dict, compare=False)

    @property
    def num_q_tiles(self) -> int:
        return num_tiles(self.L, self.block_q)

    @property
    def num_k_tiles(self) -> int:
        return num_tiles(self.S, self.block_k)

    def to(self, device) -> "TileLayout":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TileLayout(self.L, self.S, self.block_q, self.block_k, move(self.q_run_ptr), move(self.q_runs),
                          move(self.k_run_ptr), move(self.k_runs), None if self.rule is None else self.rule.to(device),
                          move(self.tile_bits), move(self.k_tile_bits), dict(self.stats))

    def tile_counts(self) -> dict:
        """Number of full, partial (rule or bits) and empty tiles."""
        runs = self.q_runs.to(torch.int64)
        sizes = runs[:, 1] - runs[:, 0]
        full = int(sizes[runs[:, 2] == FULL].sum())
        partial = int(sizes[runs[:, 2] != FULL].sum())
        return {"full": full, "partial": partial, "empty": self.num_q_tiles * self.num_k_tiles - full - partial}

    # ---- checks and decoding (added with arkernels.masks; the fields above are the contract) ----

    def validate(self, exhaustive: bool | None = None) -> "TileLayout":
        """Check every invariant of the module docstring; raise ValueError naming the broken one.

        The forward/backward consistency check compares per-row and per-column tile counts and column/row
        moments of each kind (O(runs)); with exhaustive=True (default: when there are at most 2^22 nonempty
        tiles) it also compares the two tile sets exactly. BITS tiles are always compared one by one."""
        from arkernels.masks import _validate

        _validate.validate(self, exhaustive)
        return self

    def to_dense(self) -> torch.Tensor:
        """Decode runs + rule + bitmaps into an (L, S) bool tensor (tests and debugging; small masks only)."""
        from arkernels.masks import _validate

        return _validate.decode(self)
