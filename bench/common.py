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


def run_providers(case, providers: list[str], prepare, measure) -> list[Row]:
    """The rows of one case: ``prepare()`` builds what every provider shares (inputs, float64 oracle;
    an error there, e.g. out of memory, goes in every row), then ``measure(name, prepared, row)`` fills
    one provider's row. A provider's exception is recorded in its row, never fatal; on CUDA the device
    is synchronised after each provider, so that an asynchronous kernel error lands in its own row."""
    import torch

    rows: list[Row] = []
    try:
        prepared = prepare()
    except Exception as err:  # noqa: BLE001
        for name in providers:
            row = Row.for_case(case, name)
            row.status, row.note = "error", f"inputs: {error_text(err)}"
            rows.append(row)
        return rows
    for name in providers:
        row = Row.for_case(case, name)
        try:
            measure(name, prepared, row)
            if case.device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
        except Exception as err:  # noqa: BLE001
            row.status, row.note = "error", error_text(err)
        rows.append(row)
    return rows


def record_error(row: Row, rel_err: float, tol: float) -> None:
    """The row's error against its float64 oracle, and FAILED (with both numbers) where it exceeds tol; NaN and
    inf fail too. The row is still timed: a failing provider's time is shown, marked."""
    row.tol, row.rel_err = tol, rel_err
    if not (rel_err <= tol):
        row.status, row.note = "FAILED", f"rel err {rel_err:.2e} > tol {tol:.0e}"
