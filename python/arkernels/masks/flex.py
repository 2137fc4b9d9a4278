"""Conversion to and from FlexAttention's BlockMask (torch.nn.attention.flex_attention).

to_flex_block_mask: partial tiles (RULE and BITS) become kv_num_blocks/kv_indices, FULL tiles
full_kv_num_blocks/full_kv_indices, via BlockMask.from_kv_blocks (which builds the q_* transposes); the
mask_mod evaluates our rule per element, so flex applies exactly this mask inside partial blocks.
Note BlockMask metadata is dense, (Q_BLOCKS, KV_BLOCKS) int32 per pair, as in FlexAttention itself.

from_flex_block_mask: reads one (batch, head) of the BlockMask; its partial blocks are resolved by
evaluating its mask_mod (under torch.vmap, as flex does) on those blocks only and stored as BITS.
"""
from __future__ import annotations

import torch

from arkernels.masks.bits import evaluate_tiles, tile_runs
from arkernels.masks.layout import BITS, FULL, TileLayout
from arkernels.masks.mask import Mask, check_int
from arkernels.masks.runs import EMPTY, assemble, expand, from_ptr

I64 = torch.int64


def _block_sizes(block_size) -> tuple[int, int]:
    if isinstance(block_size, (tuple, list)):
        if len(block_size) != 2:
            raise ValueError(f"block_size must be an int or a (q, kv) pair, got {block_size!r}")
        return check_int("block_size[0]", block_size[0]), check_int("block_size[1]", block_size[1])
    b = check_int("block_size", block_size)
    return b, b


def mask_mod_of(mask: Mask):
    """A flex mask_mod(b, h, q_idx, kv_idx) evaluating mask per element (indices outside L x S are masked)."""
    L, S = mask.L, mask.S

    def mask_mod(b, h, q_idx, kv_idx):
        q, k = q_idx.clamp(0, L - 1).to(I64), kv_idx.clamp(0, S - 1).to(I64)
        return mask._allowed(q, k) & (q_idx < L) & (kv_idx < S)

    return mask_mod


def _block_lists(rows: torch.Tensor, cols: torch.Tensor, nq: int, nk: int):
    """(1, 1, nq) counts and (1, 1, nq, nk) column lists (sorted input; unused entries 0) of the given tiles."""
    counts = torch.bincount(rows, minlength=nq)
    first = torch.cumsum(counts, 0) - counts
    indices = torch.zeros(nq, nk, dtype=torch.int32)
    indices[rows, torch.arange(rows.numel()) - first[rows]] = cols.to(torch.int32)
    return counts.to(torch.int32).view(1, 1, nq), indices.view(1, 1, nq, nk)


def _block_mask_class():
    # Imported on use: torch.nn.attention.flex_attention is a heavy import that `import arkernels` should not pay.
    from torch.nn.attention.flex_attention import BlockMask

    return BlockMask


def to_flex_block_mask(mask: Mask, block_size=128, device=None):
    """FlexAttention BlockMask (B = H = 1, broadcast by flex) of mask at block_size (an int or (q, kv) pair)."""
    if not isinstance(mask, Mask):
        raise TypeError(f"mask must be an arkernels.masks.Mask, got {type(mask).__name__}")
    bq, bk = _block_sizes(block_size)
    lay = mask.layout(bq, bk)
    r = from_ptr(lay.q_run_ptr, lay.q_runs)
    idx, ti, tj = expand(r)
    full = r.kind[idx] == FULL
    nq, nk = lay.num_q_tiles, lay.num_k_tiles
    kv_num, kv_idx = _block_lists(ti[~full], tj[~full], nq, nk)
    full_num, full_idx = _block_lists(ti[full], tj[full], nq, nk)
    move = (lambda t: t) if device is None else (lambda t: t.to(device))  # noqa: E731
    return _block_mask_class().from_kv_blocks(move(kv_num), move(kv_idx), move(full_num), move(full_idx), BLOCK_SIZE=(bq, bk),
                                    mask_mod=mask_mod_of(mask if device is None else mask.on(device)),
                                    seq_lengths=(mask.L, mask.S))


class TileGridMask(Mask):
    """A mask given at a native tiling (fq, fk) by a dense tile-kind grid (FULL / EMPTY / BITS) and bitmaps."""

    def __init__(self, L: int, S: int, fq: int, fk: int, grid: torch.Tensor, bits: torch.Tensor, describe: str = ""):
        super().__init__(L, S)
        self.fq, self.fk, self.grid, self._desc = fq, fk, grid, describe
        is_bits = grid == BITS
        self.bit_index = torch.where(is_bits, torch.cumsum(is_bits.flatten(), 0).view_as(grid) - 1, 0)
        # One zero bitmap when there are none, so that _allowed can index unconditionally (vmap-friendly).
        self.bits = bits if bits.shape[0] else torch.zeros(1, fq, -(-fk // 32), dtype=torch.int32)

    def _describe(self) -> str:
        return self._desc

    def _allowed(self, q, k):
        ti, tj = q // self.fq, k // self.fk
        g = self.grid[ti, tj]
        word = self.bits[self.bit_index[ti, tj], q % self.fq, (k % self.fk) // 32].to(I64)
        bit = ((word >> ((k % self.fk) % 32)) & 1) == 1
        return (g == FULL) | ((g == BITS) & bit)

    def _build_layout(self, block_q: int, block_k: int) -> TileLayout:
        """Tiles covering only FULL (EMPTY) native tiles are FULL (empty), found with summed-area tables; the
        others are evaluated. Cost O(tiles of both grids): the grid is dense anyway, like flex metadata."""
        nq, nk = -(-self.L // block_q), -(-self.S // block_k)
        r0 = torch.arange(nq, dtype=I64) * block_q // self.fq
        r1 = (torch.clamp(torch.arange(1, nq + 1, dtype=I64) * block_q, max=self.L) - 1) // self.fq
        c0 = torch.arange(nk, dtype=I64) * block_k // self.fk
        c1 = (torch.clamp(torch.arange(1, nk + 1, dtype=I64) * block_k, max=self.S) - 1) // self.fk

        def count(indicator: torch.Tensor) -> torch.Tensor:
            sat = torch.zeros(indicator.shape[0] + 1, indicator.shape[1] + 1, dtype=I64)
            sat[1:, 1:] = indicator.to(I64).cumsum(0).cumsum(1)
            return (sat[r1[:, None] + 1, c1[None, :] + 1] - sat[r0[:, None], c1[None, :] + 1]
                    - sat[r1[:, None] + 1, c0[None, :]] + sat[r0[:, None], c0[None, :]])

        area = (r1 - r0 + 1)[:, None] * (c1 - c0 + 1)[None, :]
        n_full, n_any = count(self.grid == FULL), count(self.grid != EMPTY)
        kind = torch.where(n_full == area, FULL, torch.where(n_any == 0, EMPTY, BITS)).flatten()
        ti = torch.arange(nq, dtype=I64).repeat_interleave(nk)
        tj = torch.arange(nk, dtype=I64).repeat(nq)
        check = kind == BITS
        kinds, bits = evaluate_tiles(self._allowed, ti[check], tj[check], self.L, self.S, block_q, block_k)
        kind[check] = kinds
        return assemble(self.L, self.S, block_q, block_k, tile_runs(ti, tj, kind), tile_bits=bits)


def _vmapped(mask_mod, b: int, h: int):
    """allowed(q, k) for broadcastable index tensors, evaluating a flex mask_mod under torch.vmap."""
    fn = torch.vmap(mask_mod, in_dims=(None, None, 0, 0))
    b_t, h_t = torch.tensor(b), torch.tensor(h)

    def allowed(q, k):
        q, k = torch.broadcast_tensors(q, k)
        out = fn(b_t, h_t, q.reshape(-1), k.reshape(-1))
        return out.to(torch.bool).expand(q.numel()).reshape(q.shape)

    return allowed


def from_flex_block_mask(block_mask, batch: int = 0, head: int = 0) -> TileGridMask:
    """Mask of one (batch, head) of a FlexAttention BlockMask (default batch 0, head 0; a broadcast dimension of
    size 1 serves every index). Its partial blocks are evaluated with its mask_mod and stored as BITS."""
    if not isinstance(block_mask, _block_mask_class()):
        raise TypeError(f"block_mask must be a torch.nn.attention.flex_attention.BlockMask, got {type(block_mask).__name__}")
    B, H = block_mask.kv_num_blocks.shape[:2]
    batch, head = check_int("batch", batch, 0), check_int("head", head, 0)
    if (B > 1 and batch >= B) or (H > 1 and head >= H):
        raise ValueError(f"batch, head must index the block mask's (B, H) = ({B}, {H}), got ({batch}, {head})")
    bi, hi = min(batch, B - 1), min(head, H - 1)
    L, S = (int(n) for n in block_mask.seq_lengths)
    fq, fk = (int(n) for n in block_mask.BLOCK_SIZE)
    nq, nk = -(-L // fq), -(-S // fk)
    grid = torch.full((nq, nk), EMPTY, dtype=I64)

    def mark(num, indices, kind):
        if num is None:
            return
        num, indices = num[bi, hi, :nq].cpu().to(I64), indices[bi, hi, :nq].cpu().to(I64)
        take = torch.arange(indices.shape[1])[None, :] < num[:, None]
        rows = torch.arange(num.numel())[:, None].expand_as(indices)[take]
        cols = indices[take]
        inside = cols < nk
        grid[rows[inside], cols[inside]] = kind

    mark(block_mask.kv_num_blocks, block_mask.kv_indices, BITS)
    mark(block_mask.full_kv_num_blocks, block_mask.full_kv_indices, FULL)
    ti, tj = torch.nonzero(grid == BITS, as_tuple=True)
    kinds, bits = evaluate_tiles(_vmapped(block_mask.mask_mod, batch, head), ti, tj, L, S, fq, fk)
    grid[ti, tj] = kinds
    # evaluate_tiles packed the BITS tiles in row-major order, which is TileGridMask's bit_index order.
    return TileGridMask(L, S, fq, fk, grid, bits, describe=f"flex block={fq}x{fk}")
