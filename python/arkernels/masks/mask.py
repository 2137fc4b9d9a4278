"""Mask: an (L, S) boolean attention mask described by a few numbers, turned into a TileLayout on request."""
from __future__ import annotations

import copy
from contextlib import contextmanager

import torch

from arkernels.masks.layout import FULL, RULE, TileLayout
from arkernels.masks.runs import expand, from_ptr

I64 = torch.int64


def check_int(name: str, value, minimum: int = 1) -> int:
    """A Python int (or 0-d integer tensor) >= minimum; ValueError/TypeError naming the argument otherwise."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point() and value.dtype != torch.bool:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


@contextmanager
def one_thread():
    """Run torch's CPU ops on one thread for the duration (also usable as a decorator).

    Mask and layout builds are sequences of small ops (thousands to a million elements) for which OpenMP's
    fork-join costs more than it saves; on a busy 2-core machine a 1M-token SCAM layout took 122 ms with 2
    threads and 3.6 ms with 1. The setting is process-wide, so torch work in other Python threads runs on
    one thread while a mask is being built."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class Mask:
    """An (L, S) boolean mask, True where query q may attend to key k (same for every batch and head).

    Subclasses describe the mask by a few vectors or a small dense block and implement
    _build_layout(block_q, block_k) -> TileLayout (on the CPU) and _allowed(q, k) -> bool tensor for
    broadcastable int64 index tensors of in-bounds positions (used by to_dense, combinations, FlexAttention)."""

    def __init__(self, L: int, S: int):
        self.L = check_int("L", L)
        self.S = check_int("S", S)
        self._layouts: dict = {}

    # -- what subclasses provide --
    def _build_layout(self, block_q: int, block_k: int) -> TileLayout:
        raise NotImplementedError

    def _allowed(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _describe(self) -> str:
        return ""

    # -- public API --
    def layout(self, block_q: int = 128, block_k: int = 128, device=None) -> TileLayout:
        """The TileLayout at tiling block_q x block_k, built once per (block_q, block_k, device) and cached."""
        block_q, block_k = check_int("block_q", block_q), check_int("block_k", block_k)
        device = torch.device("cpu") if device is None else torch.device(device)
        key = (block_q, block_k, str(device))
        if key not in self._layouts:
            cpu_key = (block_q, block_k, "cpu")
            if cpu_key not in self._layouts:
                with one_thread():
                    self._layouts[cpu_key] = self._build_layout(block_q, block_k)
            if key != cpu_key:
                self._layouts[key] = self._layouts[cpu_key].to(device)
        return self._layouts[key]

    def on(self, device) -> "Mask":
        """A copy whose tensors (rule vectors, grids, bitmaps, nested masks) live on `device`, so that
        allowed() can be evaluated there, e.g. inside a compiled FlexAttention mask_mod on the GPU. Its
        layout cache starts empty (layout() builds on the CPU and moves the result anyway)."""
        from arkernels.masks.layout import LevelRule

        device = torch.device(device)
        out = copy.copy(self)
        out._layouts = {}
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(out, name, value.to(device))
            elif isinstance(value, (Mask, LevelRule)):
                setattr(out, name, value.on(device) if isinstance(value, Mask) else value.to(device))
        return out

    def allowed(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Visibility of query positions q against key positions k (broadcast together)."""
        return self._allowed(torch.as_tensor(q, dtype=I64), torch.as_tensor(k, dtype=I64))

    def to_dense(self) -> torch.Tensor:
        """(L, S) bool tensor, evaluated element by element (tests and debugging; small masks only)."""
        q = torch.arange(self.L, dtype=I64)[:, None]
        k = torch.arange(self.S, dtype=I64)[None, :]
        return self._allowed(q, k).expand(self.L, self.S).clone()

    def dense_on(self, device, dtype: torch.dtype = torch.bool) -> torch.Tensor:
        """to_dense() as `dtype` on `device`, built once per (device, dtype) and cached: for small masks used on
        every call (decode_attention's tree masks), not for masks of long sequences."""
        device = torch.device(device)
        key = ("dense", str(device), dtype)
        if key not in self._layouts:
            self._layouts[key] = self.to_dense().to(device=device, dtype=dtype).contiguous()
        return self._layouts[key]

    def num_visible(self) -> int:
        """Number of visible (q, k) pairs, from the 128 x 128 layout: full tiles by area, partial tiles evaluated."""
        lay = self.layout(128, 128)
        r = from_ptr(lay.q_run_ptr, lay.q_runs)
        bq, bk = lay.block_q, lay.block_k
        rows = (torch.clamp(lay.L - r.row * bq, max=bq))
        cols = torch.clamp(r.end * bk, max=lay.S) - r.start * bk
        total = int((rows * cols)[r.kind == FULL].sum())
        if lay.tile_bits is not None:
            words = lay.tile_bits.to(I64) & 0xFFFFFFFF
            total += int(sum(((words >> s) & 1).sum() for s in range(32)))
        rule_runs = r.kind == RULE
        if bool(rule_runs.any()):
            from arkernels.masks.bits import tile_indices

            idx, ti, tj = expand(type(r)(*(t[rule_runs] for t in r)))
            step = max(1, (1 << 22) // (bq * bk))
            for lo in range(0, ti.numel(), step):
                q, k, q_in, k_in = tile_indices(ti[lo:lo + step], tj[lo:lo + step], lay.L, lay.S, bq, bk)
                vis = lay.rule.allowed(q[:, :, None], k[:, None, :]) & q_in[:, :, None] & k_in[:, None, :]
                total += int(vis.sum())
        return total

    def density(self) -> float:
        """Fraction of the L x S pairs that are visible."""
        return self.num_visible() / (self.L * self.S)

    def __repr__(self) -> str:
        desc = self._describe()
        return f"{type(self).__name__}({desc + ', ' if desc else ''}L={self.L}, S={self.S})"

