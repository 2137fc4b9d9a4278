"""Small helpers shared by the op benchmark modules (bench/ops/bench_*.py)."""
from __future__ import annotations

from bench.registry import Row


def error_text(err: BaseException) -> str:
    """One line for a Row's note: the exception type and the first line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def ms(row: Row | None) -> str:
    """A row's time for a headline table, or its status when it has none."""
    if row is None:
        return "—"
    if row.time_ms is None:
        return row.status
    return f"{row.time_ms:.3f}" + (" (FAILED)" if row.status == "FAILED" else "")
